"""The serving layer's costs: per-request parameters in one batch, and the cost of a call.

(a) ``sample_batch`` on one (B, V) step (default B=64, V=128256, the bench's synthetic logits)
    with every row's parameters different (its own temperature, top-k, top-p, min-p and seed),
    against the same call with 64 identical ``SamplingParams``, and against ``sample`` on the
    same rows with scalar parameters. The ratios are the point: per-request parameters should
    cost next to nothing (target: both ratios <= 1.2).
(b) The cost of one call on a tiny row (V=32): ``sample_batch`` at B=1 (target < 5 us),
    ``sample`` (target < 2 us), and ``argmax`` for scale.
(c) The cost of token histories (``--history N`` tokens per row, a third of them output): the
    call of (a) with every row's parameters different, given no history, the histories as NumPy
    int64 arrays, and as Python lists of ints, with neutral penalties (the histories only give
    the steps) and with a repetition penalty of 1.1 and presence / frequency penalties.

Every variant is checked before it is timed: each row's token is one its own parameters keep.
Single thread by default (``--threads``), medians over interleaved rounds so that a noisy
neighbour slows every variant alike.

    python benches/serving.py [--vocab V] [--batch B] [--history N] [--threads N] [--rounds R]
                              [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import logitkit as lk
from logitkit import _bench


def median_us(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def per_row_params(b: int, rng: np.random.Generator) -> list[lk.SamplingParams]:
    """B different requests around the llama.cpp defaults (same work per row on average)."""
    return [
        lk.SamplingParams(
            temperature=float(rng.uniform(0.6, 1.0)),
            top_k=int(rng.choice([20, 40, 64])),
            top_p=float(rng.uniform(0.9, 0.98)),
            min_p=float(rng.uniform(0.02, 0.08)),
            seed=int(rng.integers(0, 2**63)),
        )
        for _ in range(b)
    ]


def kept_by(row: np.ndarray, p: lk.SamplingParams) -> np.ndarray:
    """The ids that ``p`` keeps in ``row`` (logitkit's own masks, the default order)."""
    z = lk.mask_top_k(row, p.top_k) if p.top_k > 0 else row
    z = lk.mask_top_p(z, p.top_p, temperature=p.temperature)
    z = lk.mask_min_p(z, p.min_p, temperature=p.temperature)
    return np.flatnonzero(np.isfinite(z))


def check(tokens: np.ndarray, x: np.ndarray, params: list[lk.SamplingParams]) -> None:
    for r, (t, p) in enumerate(zip(tokens.tolist(), params, strict=True)):
        if t not in set(kept_by(x[r], p).tolist()):
            raise SystemExit(f"row {r}: token {t} is not kept by {p}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--history", type=int, default=1500, help="tokens per row in (c)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if lk._core.build_profile != "release":
        print("refusing to benchmark a debug build", file=sys.stderr)
        return 2
    lk.set_num_threads(a.threads)

    w = _bench.make_workload(a.batch, a.vocab, _bench.Params())
    x = w.logits
    rng = np.random.default_rng(7)
    varied = per_row_params(a.batch, rng)
    same = [varied[0]] * a.batch
    p0 = varied[0]
    scalar = dict(temperature=p0.temperature, top_k=p0.top_k, top_p=p0.top_p, min_p=p0.min_p)

    variants: dict[str, Callable[[], Any]] = {
        "sample_batch, every row its own parameters": lambda: lk.sample_batch(x, varied),
        "sample_batch, identical parameters": lambda: lk.sample_batch(x, same),
        "sample, scalar parameters": lambda: lk.sample(x, **scalar, seed=p0.seed),
    }
    check(lk.sample_batch(x, varied).tokens, x, varied)
    check(lk.sample_batch(x, same).tokens, x, same)
    check(lk.sample(x, **scalar, seed=p0.seed), x, same)

    tiny = np.random.default_rng(1).normal(0, 2, (1, 32)).astype(np.float32)
    tp = lk.SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=1)
    calls: dict[str, Callable[[], Any]] = {
        "sample_batch, B=1, V=32 (chain, seeded)": lambda: lk.sample_batch(tiny, tp),
        "sample, V=32 (chain, seeded)": lambda: lk.sample(
            tiny[0], temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=1
        ),
        "argmax, V=32": lambda: lk.argmax(tiny[0]),
    }

    # (c): prompt and output tokens of every row, as arrays and as lists.
    n_out = a.history // 3
    hist = [rng.integers(0, a.vocab, a.history) for _ in range(a.batch)]
    prompt_a, output_a = [h[n_out:] for h in hist], [h[:n_out] for h in hist]
    prompt_l, output_l = [h.tolist() for h in prompt_a], [h.tolist() for h in output_a]
    penalised = [
        dataclasses.replace(p, repetition_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.3)
        for p in varied
    ]
    for pp in (varied, penalised):
        got = lk.sample_batch(x, pp, prompt_tokens=prompt_l, output_tokens=output_l).tokens
        want = lk.sample_batch(x, pp, prompt_tokens=prompt_a, output_tokens=output_a).tokens
        if not np.array_equal(got, want):
            raise SystemExit("histories as lists and as arrays gave different tokens")
    histories: dict[str, Callable[[], Any]] = {
        "no history": lambda: lk.sample_batch(x, varied),
        "arrays, neutral penalties": lambda: lk.sample_batch(
            x, varied, prompt_tokens=prompt_a, output_tokens=output_a
        ),
        "lists, neutral penalties": lambda: lk.sample_batch(
            x, varied, prompt_tokens=prompt_l, output_tokens=output_l
        ),
        "arrays, penalties": lambda: lk.sample_batch(
            x, penalised, prompt_tokens=prompt_a, output_tokens=output_a
        ),
        "lists, penalties": lambda: lk.sample_batch(
            x, penalised, prompt_tokens=prompt_l, output_tokens=output_l
        ),
    }

    big: dict[str, list[float]] = {k: [] for k in variants}
    hist_us: dict[str, list[float]] = {k: [] for k in histories}
    small: dict[str, list[float]] = {k: [] for k in calls}
    names = list(variants)
    for i in range(a.rounds):
        for k in names[i % len(names) :] + names[: i % len(names)]:  # rotate the order
            big[k].append(median_us(variants[k], 7) / a.batch)
        for k, fn in calls.items():
            small[k].append(median_us(fn, 2000))
        for k, fn in histories.items():
            hist_us[k].append(median_us(fn, 3) / a.batch)
    res = {
        "cpu": _bench.cpu_model(),
        "simd": lk.simd_level(),
        "threads": a.threads,
        "B": a.batch,
        "V": a.vocab,
        "per_row_us": {k: statistics.median(v) for k, v in big.items()},
        "per_call_us": {k: statistics.median(v) for k, v in small.items()},
        "history": a.history,
        "history_per_row_us": {k: statistics.median(v) for k, v in hist_us.items()},
    }
    pr = res["per_row_us"]
    res["ratio_varied_to_identical"] = pr[names[0]] / pr[names[1]]
    res["ratio_varied_to_sample"] = pr[names[0]] / pr[names[2]]

    print(f"CPU {res['cpu']}, SIMD {res['simd']}, {a.threads} thread(s), B={a.batch}, V={a.vocab}")
    print("\n| variant | µs per row |\n|---|---:|")
    for k, v in pr.items():
        print(f"| {k} | {v:.1f} |")
    print(
        f"\nvaried / identical: {res['ratio_varied_to_identical']:.3f}   "
        f"varied / sample: {res['ratio_varied_to_sample']:.3f}   (targets <= 1.2)"
    )
    print("\n| call on a tiny row | µs per call |\n|---|---:|")
    for k, v in res["per_call_us"].items():
        print(f"| {k} | {v:.2f} |")
    print(f"\n| histories of {a.history} tokens per row | µs per row |\n|---|---:|")
    for k, v in res["history_per_row_us"].items():
        print(f"| {k} | {v:.1f} |")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
