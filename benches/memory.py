"""Memory behaviour of logitkit (Linux: reads /proc/self/status).

(a) Resident memory before and after 100 000 calls of each public function on small inputs:
    a leak of even a few bytes per call shows up as growth (the column "growth" should be ~0).
(b) Peak resident memory of one `sample_batch` call at B=64, V=262144 float32, measured in a
    fresh subprocess as VmHWM after the call minus VmHWM just before it (the input already
    allocated and touched), next to the size of the input and of the outputs: the difference is
    the per-thread scratch, which should be a few row-sized buffers, not a copy of the batch.

    python benches/memory.py [--calls N] [--skip-calls]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np

import logitkit as lk

KIB = 1024


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def small_calls() -> dict:
    """name -> zero-argument callable, each one small public call."""
    rng = np.random.default_rng(0)
    row = rng.normal(0.0, 2.0, 256).astype(np.float32)
    batch = rng.normal(0.0, 2.0, (4, 256)).astype(np.float32)
    out = np.empty_like(batch)
    toks = np.array([1, 2, 2, 7])
    hist = [toks] * 4
    params = [
        lk.SamplingParams(temperature=0.0),
        lk.SamplingParams(temperature=0.8, top_p=0.9, seed=1, logprobs=2),
        lk.SamplingParams(temperature=1.0, logit_bias={5: 2.0}, repetition_penalty=1.1, seed=2),
        lk.SamplingParams(
            allowed_token_ids=[10, 11, 12], seed=3, logprobs=1, logprobs_mode="processed"
        ),
    ]
    bitmask = np.full((4, 8), -1, dtype=np.int32)
    return {
        "softmax": lambda: lk.softmax(batch, temperature=0.7),
        "softmax(out=)": lambda: lk.softmax(batch, out=out),
        "log_softmax": lambda: lk.log_softmax(row),
        "argmax": lambda: lk.argmax(batch),
        "top_k": lambda: lk.top_k(row, 5),
        "mask_top_k": lambda: lk.mask_top_k(batch, 20),
        "mask_top_p": lambda: lk.mask_top_p(batch, 0.9, temperature=0.8),
        "mask_min_p": lambda: lk.mask_min_p(row, 0.1),
        "apply_logit_bias": lambda: lk.apply_logit_bias(row, {3: 1.5, 9: -np.inf}),
        "apply_penalties": lambda: lk.apply_penalties(
            batch,
            prompt_tokens=hist,
            output_tokens=hist,
            repetition_penalty=1.2,
            frequency_penalty=0.3,
            presence_penalty=0.1,
        ),
        "sample": lambda: lk.sample(
            batch,
            temperature=0.8,
            top_k=40,
            top_p=0.95,
            min_p=0.05,
            order="llama.cpp",
            seed=7,
            step=3,
        ),
        "sample(seed=None)": lambda: lk.sample(row, top_p=0.9),
        "sample(uniforms=)": lambda: lk.sample(batch, uniforms=np.full(4, 0.5)),
        "logprobs": lambda: lk.logprobs(batch, hist, top_n=3),
        "uniform": lambda: lk.uniform(1234, 5),
        "SamplingParams": lambda: lk.SamplingParams(temperature=0.7, top_p=0.9, logit_bias={1: 2}),
        "SamplingParams.from_openai": lambda: lk.SamplingParams.from_openai(
            {
                "model": "m",
                "temperature": 0.5,
                "logit_bias": {"5": 10},
                "logprobs": True,
                "top_logprobs": 2,
            }
        ),
        "sample_batch": lambda: lk.sample_batch(
            batch, params, output_tokens=hist, token_bitmask=bitmask
        ),
        "simd_level": lk.simd_level,
        "get_num_threads": lk.get_num_threads,
        "error path (ValueError)": _raises(lambda: lk.softmax(np.full(8, np.nan, np.float32))),
    }


def _raises(fn):
    def call():
        with contextlib.suppress(ValueError):
            fn()

    return call


def measure_calls(n: int) -> list[tuple[str, int, int, int, float]]:
    rows = []
    for name, fn in small_calls().items():
        for _ in range(min(n, 2000)):  # warm-up: caches, pools, allocator arenas
            fn()
        gc.collect()
        before = status_kib("VmRSS")
        mid = before
        t0 = time.perf_counter()
        for i in range(n):
            fn()
            if i == n // 2:
                mid = status_kib("VmRSS")
        dt = time.perf_counter() - t0
        gc.collect()
        after = status_kib("VmRSS")
        rows.append((name, before, mid, after, dt / n * 1e6))
    return rows


CHILD = r"""
import json, sys
import numpy as np

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

def reset_peak():
    try:  # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

import logitkit as lk
B, V, warm = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "warm"
x = np.random.default_rng(0).standard_normal((B, V), dtype=np.float32)  # touched: written
params = [lk.SamplingParams(temperature=0.8, top_p=0.95, min_p=0.02, seed=r, logprobs=5,
                            repetition_penalty=1.1, logit_bias={r: 1.0},
                            logprobs_mode="processed" if r % 2 else "raw")
          for r in range(B)]
out_tok = [np.arange(r % 7) for r in range(B)]
if warm:
    lk.sample_batch(x, params, output_tokens=out_tok)
can_reset = reset_peak()
base_rss, base_hwm = kib("VmRSS"), kib("VmHWM")
res = lk.sample_batch(x, params, output_tokens=out_tok)
peak, after = kib("VmHWM"), kib("VmRSS")
outs = sum(a.nbytes for a in (res.tokens, res.logprobs, res.ranks, res.top_ids, res.top_logprobs)
           if a is not None)
print(json.dumps(dict(input=x.nbytes, outputs=outs, base_rss_kib=base_rss,
                      base_hwm_kib=base_hwm, peak_kib=peak, after_rss_kib=after,
                      reset=can_reset, threads=lk.get_num_threads())))
"""


def peak_of_batch(b: int, v: int, warm: bool) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(b), str(v), "warm" if warm else "cold"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--skip-calls", action="store_true")
    args = ap.parse_args()
    print(
        f"logitkit {lk.__version__}, SIMD {lk.simd_level()}, {lk.get_num_threads()} threads, "
        f"pid {os.getpid()}"
    )

    if not args.skip_calls:
        print(f"\n(a) VmRSS around {args.calls} calls per function (KiB)")
        print(
            f"{'function':30s} {'before':>9s} {'half-way':>9s} {'after':>9s} {'growth':>7s} "
            f"{'us/call':>8s}"
        )
        for name, before, mid, after, us in measure_calls(args.calls):
            print(f"{name:30s} {before:9d} {mid:9d} {after:9d} {after - before:7d} {us:8.2f}")

    b, v = 64, 262_144
    print(
        f"\n(b) one sample_batch call, B={b}, V={v} float32, fresh subprocess (MiB); params: "
        "top-p + min-p + repetition penalty + bias (so every row is copied into scratch), "
        "5 log-probs, raw and processed"
    )
    for warm in (False, True):
        m = peak_of_batch(b, v, warm)
        extra = (m["peak_kib"] - m["base_hwm_kib"]) / KIB
        what = "second call (warm)" if warm else "first call (cold: pool start)"
        note = "" if m["reset"] else "  (VmHWM could not be reset: baseline is the earlier peak)"
        kept = (m["after_rss_kib"] - m["base_rss_kib"]) / KIB
        print(
            f"{what:30s} input {m['input'] / 2**20:5.1f}  outputs {m['outputs'] / 2**20:6.4f}  "
            f"baseline RSS {m['base_rss_kib'] / KIB:6.1f}  peak {m['peak_kib'] / KIB:6.1f}  "
            f"peak - baseline {extra:5.2f}  still resident after {kept:5.2f}  "
            f"({m['threads']} threads){note}"
        )


if __name__ == "__main__":
    main()
