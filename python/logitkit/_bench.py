"""``python -m logitkit bench``: logitkit against NumPy, PyTorch and llama.cpp on the CPU.

Every operation runs on the same seeded synthetic float32 logits (``B x V``). Before an
operation is timed on a workload, its result is checked against a float64 NumPy reference:

- ``softmax`` / ``log_softmax``: ``allclose`` (rtol 1e-4; atol 1e-6 for probabilities, 1e-3 for
  log-probabilities);
- ``greedy``: equal to ``argmax``;
- sampling ops: the sampled id lies in the float64 kept set of the op (or is a token that sits
  within float rounding of a top-p or min-p boundary). logitkit is also called with explicit
  ``uniforms=`` and its token compared with the float64 inverse CDF of the documented draw;
  a draw that differs by more than rounding is flagged ``WARN`` (the token is still valid);
- ``penalties``: ``allclose`` (rtol 1e-5, atol 1e-4).

A failed check is printed in the table (and makes the command exit with status 1); it is never
hidden. Peers (NumPy always, PyTorch and llama-cpp-python when importable) get the same checks
with the tolerances of the shared peers harness.

Timing: warm-up calls, then ``time.perf_counter`` around each call with the garbage collector
off, until at least ``--min-reps`` calls and ``--min-time`` seconds (capped per measurement);
the median call time divided by B is reported as µs per row. Ops that overwrite their input
(penalties, llama.cpp's token arrays) restore it in an untimed step before every call.

Two floors are measured by this command on the same buffers. The read floor is one read
pass, ``np.max(x, axis=-1)`` (NumPy's vectorised max reduction; for bfloat16 rows the same
bytes viewed as uint16): it bounds threshold-class work (argmax, top-k candidate scans, min-p,
the top-k chains, penalties) from below. The exp floor is one SIMD ``sum(exp(x - max))`` pass
with the row maxima given (logitkit's own exp-and-sum primitive over every element, one
thread): the work that softmax, log_softmax, sampling from the full vocabulary and top-p alone
cannot avoid. Each op is compared with the floor of its class.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

import logitkit as lk

_T = TypeVar("_T")
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

DEFAULT_VOCABS = (32000, 128256, 262144)
DEFAULT_BATCHES = (1, 8, 64)
QUICK_VOCABS = (32000, 128256)
QUICK_BATCHES = (1, 64)
PLOT_WORKLOAD = (128256, 1)  # (V, B) of the bar chart

# Tolerances of the checks (see the module docstring).
LK_TOL = {"softmax": (1e-4, 1e-6), "log_softmax": (1e-4, 1e-3), "penalties": (1e-5, 1e-4)}
PEER_TOL = {"softmax": (1e-3, 1e-7), "log_softmax": (1e-5, 1e-3), "penalties": (1e-5, 1e-4)}
# A token whose float64 exclusive cumulative probability lies within CUM_TOL of a top-p
# threshold may be kept or dropped by a float32 implementation; so may a logit within
# MINP_TOL (relative) of a min-p threshold.
CUM_TOL = 2e-3
MINP_TOL = 1e-5
# A draw is "exact" when it equals the float64 inverse CDF, or when u lies within DRAW_TOL of
# the cumulative-probability step between the two tokens.
DRAW_TOL = 1e-4
N_SPIKES = 8
MIN_VOCAB = 128  # the history of a workload draws from 128 distinct ids


# --------------------------------------------------------------------------------------------
# Parameters, operations and workloads


@dataclass(frozen=True)
class Params:
    """Sampling parameters shared by every op (the values of the shared peers harness)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95  # with top-k and in the llama.cpp-order chain
    top_p_only: float = 0.9  # top-p alone (a full sort in NumPy and PyTorch)
    min_p: float = 0.05
    repetition_penalty: float = 1.1
    presence_penalty: float = 0.5
    frequency_penalty: float = 0.3
    history_len: int = 512
    n_bias: int = 50
    seed: int = 1234


@dataclass(frozen=True)
class Op:
    """One benchmarked operation: what it returns and, for sampling ops, its filter steps."""

    kind: str  # probs | logprobs | ids | sample | logits
    text: str
    steps: tuple[tuple[str, float], ...] = ()
    bf16: bool = False


def make_ops(p: Params) -> dict[str, Op]:
    """The operations, in table order. ``steps`` is the float64 reference pipeline."""
    t, k, tp, mp = p.temperature, float(p.top_k), p.top_p, p.min_p
    chain = (("top_k", k), ("top_p", tp), ("min_p", mp), ("temp", t))
    return {
        "greedy": Op("ids", "argmax"),
        "softmax": Op("probs", "softmax over V (T=1)"),
        "log_softmax": Op("logprobs", "log_softmax over V (T=1)"),
        "temp_sample": Op("sample", f"T={t}, sample from the whole vocabulary", (("temp", t),)),
        "topk_sample": Op(
            "sample", f"T={t} -> top-k {p.top_k} -> sample", (("temp", t), ("top_k", k))
        ),
        "topk_topp_sample": Op(
            "sample",
            f"T={t} -> top-k {p.top_k} -> top-p {tp} -> sample",
            (("temp", t), ("top_k", k), ("top_p", tp)),
        ),
        "topp_sample": Op(
            "sample", f"top-p {p.top_p_only} alone (T=1)", (("top_p", p.top_p_only),)
        ),
        "minp_sample": Op("sample", f"min-p {mp} alone (T=1)", (("min_p", mp),)),
        "llama_chain": Op(
            "sample",
            f"llama.cpp order: top-k {p.top_k} -> top-p {tp} -> min-p {mp} -> T={t}",
            chain,
        ),
        "llama_chain_bf16": Op("sample", "llama_chain on bfloat16 logits", chain, bf16=True),
        "penalties": Op(
            "logits",
            f"logit bias ({p.n_bias} ids) -> repetition {p.repetition_penalty} / presence "
            f"{p.presence_penalty} / frequency {p.frequency_penalty} over {p.history_len} ids, "
            "in place",
        ),
    }


@dataclass
class Workload:
    """Seeded synthetic logits and token histories for one (B, V)."""

    B: int
    V: int
    seed: int
    logits: F32  # (B, V) float32, C-contiguous
    history: I64  # (B, history_len) token ids
    bias_ids: I64  # (n_bias,) distinct ids
    bias_vals: F32  # (n_bias,)
    bf16: Any = None  # (B, V) ml_dtypes.bfloat16 array, or uint16 bits
    bf16_bits: npt.NDArray[np.uint16] | None = None
    bf16_as_f32: F32 | None = None  # the bfloat16 values, widened exactly

    @property
    def name(self) -> str:
        return f"V={self.V} B={self.B}"


def make_workload(batch: int, vocab: int, p: Params) -> Workload:
    """N(0, 2^2) logits plus 8 spikes per row, generated exactly as the shared peers harness.

    The spikes sit above the log-mass of the bulk, ``log(e^2 V)``, by a per-row level spread
    evenly over (1, 7) (shuffled), then at decreasing gaps: most rows are confident (top-1
    probability about 0.7) and about one row in eight has a long top-p tail. Each row's token
    history is 512 Zipf-like draws from a pool of 128 ids that holds two of the spikes.
    """
    seed = p.seed + 1_000_003 * batch + vocab
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, vocab), dtype=np.float32)
    x *= np.float32(2.0)
    bulk = math.log(math.exp(2.0) * vocab)
    levels = 1.0 + 6.0 * (np.arange(batch) + 0.5) / batch
    rng.shuffle(levels)
    zipf = 1.0 / np.arange(1, 129)
    history = np.empty((batch, p.history_len), dtype=np.int64)
    for b in range(batch):
        spikes = rng.choice(vocab, size=N_SPIKES, replace=False)
        gaps = np.concatenate([[0.0], np.cumsum(rng.uniform(0.5, 2.0, N_SPIKES - 1))])
        x[b, spikes] = (bulk + levels[b] - gaps).astype(np.float32)
        pool = rng.choice(vocab, size=128, replace=False)
        pool[:2] = spikes[1:3]
        history[b] = rng.choice(pool, size=p.history_len, p=zipf / zipf.sum())
    bias_ids = rng.choice(vocab, size=p.n_bias, replace=False).astype(np.int64)
    bias_vals = rng.uniform(-5.0, 5.0, p.n_bias).astype(np.float32)
    bias_vals[:5] = -100.0  # a few bans
    return Workload(batch, vocab, seed, np.ascontiguousarray(x), history, bias_ids, bias_vals)


def bf16_bits_of(x: F32) -> npt.NDArray[np.uint16]:
    """float32 -> bfloat16 bit patterns, rounding to nearest even (finite inputs)."""
    u = x.view(np.uint32)
    return (
        (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    ).astype(np.uint16)


def widen_bf16_bits(bits: npt.NDArray[np.uint16]) -> F32:
    """bfloat16 bit patterns -> the float32 values they denote (exact)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def bf16_type() -> Any:
    """``ml_dtypes.bfloat16`` when importable, else None (then uint16 bits are used)."""
    try:
        import ml_dtypes
    except Exception:
        return None
    return ml_dtypes.bfloat16


def add_bf16(w: Workload) -> None:
    """Attach the bfloat16 copy of the logits: an ml_dtypes array if possible, else bits."""
    if w.bf16 is not None:
        return
    bits = bf16_bits_of(w.logits)
    bt = bf16_type()
    w.bf16_bits = bits
    w.bf16 = bits.view(bt) if bt is not None else bits
    w.bf16_as_f32 = widen_bf16_bits(bits)


def op_input(w: Workload, op: Op) -> F32:
    """The float32 values an op reads (the bfloat16 values, widened, for bf16 ops)."""
    if op.bf16:
        add_bf16(w)
        assert w.bf16_as_f32 is not None
        return w.bf16_as_f32
    return w.logits


# --------------------------------------------------------------------------------------------
# float64 reference


@dataclass
class KeptSet:
    """The float64 outcome of a sampling op's filters on one row."""

    ids: I64  # kept ids, increasing
    cdf: F64  # cumulative draw probabilities over ``ids`` (id order)
    near: set[int]  # ids that float rounding may legitimately keep or drop


def _softmax64(z: F64) -> F64:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    p: F64 = e / e.sum(axis=-1, keepdims=True)
    return p


def reference_filter(row: F32, steps: Sequence[tuple[str, float]]) -> KeptSet:
    """Apply the filter steps to one row in float64 (ties: lower id first)."""
    ids = np.arange(row.shape[0], dtype=np.int64)
    z = row.astype(np.float64)
    near: set[int] = set()
    for kind, val in steps:
        if kind == "temp":
            z = z / val
        elif kind == "top_k":
            k = min(int(val), z.shape[0])
            kth = np.partition(z, z.shape[0] - k)[z.shape[0] - k]
            cand = np.flatnonzero(z >= kth)
            order = cand[np.lexsort((ids[cand], -z[cand]))][:k]
            ids, z = ids[order], z[order]
        elif kind == "top_p":
            order = np.lexsort((ids, -z))
            ids, z = ids[order], z[order]
            prob = _softmax64(z)
            excl = np.cumsum(prob) - prob
            near.update(int(i) for i in ids[np.abs(excl - val) <= CUM_TOL])
            n = max(1, int(np.count_nonzero(excl < val)))
            ids, z = ids[:n], z[:n]
        elif kind == "min_p":
            thr = z.max() + math.log(val)
            near.update(int(i) for i in ids[np.abs(z - thr) <= MINP_TOL * max(1.0, abs(thr))])
            keep = z >= thr
            ids, z = ids[keep], z[keep]
        else:
            raise ValueError(f"unknown filter step {kind!r}")
    order = np.argsort(ids, kind="stable")
    return KeptSet(ids[order], np.cumsum(_softmax64(z[order])), near)


def reference_penalties(w: Workload, p: Params) -> F64:
    """Logit bias, then repetition once per distinct id, then frequency and presence."""
    y = w.logits.astype(np.float64)
    y[:, w.bias_ids] += w.bias_vals
    for b in range(w.B):
        uniq, counts = np.unique(w.history[b], return_counts=True)
        z = y[b, uniq]
        z = np.where(z > 0, z / p.repetition_penalty, z * p.repetition_penalty)
        z -= counts * p.frequency_penalty + p.presence_penalty
        y[b, uniq] = z
    return y


class Reference:
    """Lazily computed float64 results for one workload."""

    def __init__(self, w: Workload, p: Params, ops: dict[str, Op]) -> None:
        self.w, self.p, self.ops = w, p, ops
        self._cache: dict[str, Any] = {}
        self.uniforms = np.random.default_rng(w.seed + 17).random(w.B)

    def _get(self, key: str, fn: Callable[[], _T]) -> _T:
        if key not in self._cache:
            self._cache[key] = fn()
        value: _T = self._cache[key]
        return value

    def softmax(self) -> F64:
        return self._get("softmax", lambda: _softmax64(self.w.logits.astype(np.float64)))

    def log_softmax(self) -> F64:
        def f() -> F64:
            z = self.w.logits.astype(np.float64)
            z -= z.max(axis=-1, keepdims=True)
            lp: F64 = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
            return lp

        return self._get("log_softmax", f)

    def greedy(self) -> I64:
        return self._get("greedy", lambda: np.argmax(self.w.logits, axis=-1))

    def kept(self, name: str) -> list[KeptSet]:
        op = self.ops[name]
        x = op_input(self.w, op)
        return self._get("kept:" + name, lambda: [reference_filter(r, op.steps) for r in x])

    def penalties(self) -> F64:
        return self._get("penalties", lambda: reference_penalties(self.w, self.p))

    def forget(self, name: str) -> None:
        """Drop an op's kept sets once every implementation has been checked."""
        self._cache.pop("kept:" + name, None)


# --------------------------------------------------------------------------------------------
# checks


@dataclass
class Check:
    """The outcome of a check: ``ok`` False is a failure, ``warn`` a flagged deviation."""

    ok: bool
    text: str  # short, for the table
    detail: str
    warn: bool = False


def _as_numpy(out: Any) -> np.ndarray:
    if hasattr(out, "detach"):  # a torch tensor
        return np.asarray(out.detach().cpu().numpy())
    return np.asarray(out)


def check_close(out: Any, ref: F64, rtol: float, atol: float) -> Check:
    """``allclose`` of a float array against the float64 reference."""
    a = _as_numpy(out)
    if a.shape != ref.shape:
        return Check(False, "FAIL: shape", f"shape {a.shape}, expected {ref.shape}")
    fin = np.isfinite(ref)
    if not np.array_equal(np.isfinite(a), fin):
        bad = int(np.count_nonzero(np.isfinite(a) != fin))
        return Check(False, "FAIL: inf/nan", f"{bad} entries finite in one and not the other")
    a64 = a.astype(np.float64)
    err = np.abs(a64[fin] - ref[fin])
    rel = err / np.maximum(np.abs(ref[fin]), 1e-30)
    big = np.abs(ref[fin]) > 1e-6
    detail = (
        f"max abs err {float(err.max()):.1e}, max rel err (|ref| > 1e-6) "
        f"{float(rel[big].max()) if big.any() else 0.0:.1e}; rtol {rtol:g}, atol {atol:g}"
    )
    ok = bool(np.allclose(a64[fin], ref[fin], rtol=rtol, atol=atol))
    return Check(ok, "ok" if ok else "FAIL: not close", detail)


def check_ids(out: Any, ref: I64) -> Check:
    """Exact equality of argmax ids."""
    a = _as_numpy(out).reshape(-1)
    if a.shape != ref.shape:
        return Check(False, "FAIL: shape", f"shape {a.shape}, expected {ref.shape}")
    bad = np.flatnonzero(a != ref)
    if bad.size == 0:
        return Check(True, "ok", "argmax equal")
    b = int(bad[0])
    return Check(
        False,
        f"FAIL: {bad.size}/{ref.size} differ",
        f"argmax differs in {bad.size} rows (row {b}: got {int(a[b])}, expected {int(ref[b])})",
    )


def check_sample(out: Any, kept: list[KeptSet], uniforms: F64 | None) -> Check:
    """Sampled ids must lie in the float64 kept sets; with ``uniforms``, the draw is compared
    with the float64 inverse CDF (first kept id, in id order, whose cumulative probability
    exceeds u)."""
    ids = _as_numpy(out).reshape(-1)
    if ids.shape[0] != len(kept):
        return Check(False, "FAIL: shape", f"{ids.shape[0]} ids for {len(kept)} rows")
    outside: list[str] = []
    n_boundary = n_step = 0
    draw_off: list[str] = []
    for b, ks in enumerate(kept):
        t = int(ids[b])
        pos = int(np.searchsorted(ks.ids, t))
        in_kept = pos < ks.ids.size and int(ks.ids[pos]) == t
        if not in_kept:
            if t in ks.near:
                n_boundary += 1
            else:
                outside.append(f"row {b}: id {t}")
            continue
        if uniforms is None:
            continue
        u = float(uniforms[b])
        want = min(int(np.searchsorted(ks.cdf, u, side="right")), ks.ids.size - 1)
        if want == pos:
            continue
        if ks.near:
            n_boundary += 1  # the kept set itself may differ by a boundary token
            continue
        lo = float(ks.cdf[pos - 1]) if pos > 0 else 0.0
        hi = float(ks.cdf[pos])
        gap = max(lo - u, u - hi, 0.0)
        if gap <= DRAW_TOL:
            n_step += 1
        else:
            draw_off.append(
                f"row {b}: u={u:.6f} gave id {t} (cdf [{lo:.6f}, {hi:.6f})), "
                f"expected id {int(ks.ids[want])}"
            )
    n = len(kept)
    notes = [f"{n - len(outside)}/{n} sampled ids in the float64 kept set"]
    if n_boundary:
        notes.append(f"{n_boundary} rows at a top-p/min-p boundary (membership only)")
    if uniforms is not None:
        notes.append(
            f"draws equal to the float64 inverse CDF in {n - len(outside) - len(draw_off)}/{n} "
            f"rows ({n_step} with u within {DRAW_TOL:g} of a cdf step)"
        )
    if outside:
        notes.append("OUTSIDE: " + "; ".join(outside[:3]))
        return Check(False, f"FAIL: {len(outside)}/{n} outside kept set", "; ".join(notes))
    if draw_off:
        notes.append("draw differs: " + "; ".join(draw_off[:3]))
        return Check(True, f"WARN: {len(draw_off)}/{n} draws ≠ f64 CDF", "; ".join(notes), True)
    return Check(True, "ok", "; ".join(notes))


def check_op(name: str, op: Op, out: Any, ref: Reference, lk_tol: bool, uniforms: Any) -> Check:
    """Check one op's output against the float64 reference."""
    tol = LK_TOL if lk_tol else PEER_TOL
    if op.kind == "probs":
        return check_close(out, ref.softmax(), *tol["softmax"])
    if op.kind == "logprobs":
        return check_close(out, ref.log_softmax(), *tol["log_softmax"])
    if op.kind == "ids":
        return check_ids(out, ref.greedy())
    if op.kind == "logits":
        return check_close(out, ref.penalties(), *tol["penalties"])
    if op.kind == "sample":
        return check_sample(out, ref.kept(name), uniforms)
    raise ValueError(op.kind)


# --------------------------------------------------------------------------------------------
# peers


class Peer:
    """An implementation under test: ``op_<name>(st)`` runs one op on a prepared workload;
    ``setup_<name>(st)``, when present, runs untimed before every call."""

    name = "peer"
    note = ""

    def available(self) -> str | None:
        """None when usable, else why not."""
        return None

    def versions(self) -> dict[str, str]:
        return {}

    def enter(self) -> None:
        """Called before every op (e.g. to set a thread count)."""

    def prepare(self, w: Workload, p: Params) -> Any:
        return SimpleNamespace(w=w, x=w.logits)

    def teardown(self, st: Any) -> None:
        """Release what ``prepare`` allocated outside Python."""

    def has(self, op: str) -> bool:
        return callable(getattr(self, "op_" + op, None))

    def call(self, op: str, st: Any) -> Any:
        setup = getattr(self, "setup_" + op, None)
        if setup is not None:
            setup(st)
        return getattr(self, "op_" + op)(st)


class LogitkitPeer(Peer):
    """logitkit's public API. Sampling ops draw with one seed per row (``seed=`` array, step 0)
    when timed and with explicit ``uniforms=`` when checked (``st.draw``)."""

    name = "logitkit"

    def versions(self) -> dict[str, str]:
        return {"logitkit": str(getattr(lk, "__version__", "?"))}

    def prepare(self, w: Workload, p: Params) -> Any:
        st = SimpleNamespace(w=w, p=p, x=w.logits, work=np.empty_like(w.logits))
        st.seeds = np.arange(w.B, dtype=np.uint64) + np.uint64(p.seed)  # one request per row
        st.draw = {"seed": st.seeds}
        st.bias = {int(t): float(v) for t, v in zip(w.bias_ids, w.bias_vals, strict=True)}
        st.history = [w.history[b] for b in range(w.B)]
        return st

    def _sample(self, st: Any, x: Any, **kw: Any) -> Any:
        return lk.sample(x, **kw, **st.draw)

    def op_greedy(self, st: Any) -> Any:
        return lk.argmax(st.x)

    def op_softmax(self, st: Any) -> Any:
        return lk.softmax(st.x)

    def op_log_softmax(self, st: Any) -> Any:
        return lk.log_softmax(st.x)

    def op_temp_sample(self, st: Any) -> Any:
        return self._sample(st, st.x, temperature=st.p.temperature)

    def op_topk_sample(self, st: Any) -> Any:
        return self._sample(st, st.x, temperature=st.p.temperature, top_k=st.p.top_k)

    def op_topk_topp_sample(self, st: Any) -> Any:
        p = st.p
        return self._sample(st, st.x, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)

    def op_topp_sample(self, st: Any) -> Any:
        return self._sample(st, st.x, top_p=st.p.top_p_only)

    def op_minp_sample(self, st: Any) -> Any:
        return self._sample(st, st.x, min_p=st.p.min_p)

    def _chain(self, st: Any, x: Any, **kw: Any) -> Any:
        p = st.p
        return self._sample(
            st,
            x,
            temperature=p.temperature,
            top_k=p.top_k,
            top_p=p.top_p,
            min_p=p.min_p,
            order="llama.cpp",
            **kw,
        )

    def op_llama_chain(self, st: Any) -> Any:
        return self._chain(st, st.x)

    def op_llama_chain_bf16(self, st: Any) -> Any:
        w = st.w
        if w.bf16.dtype == np.uint16:
            return self._chain(st, w.bf16, dtype="bfloat16")
        return self._chain(st, w.bf16)

    def setup_penalties(self, st: Any) -> None:
        np.copyto(st.work, st.x)

    def op_penalties(self, st: Any) -> Any:
        p = st.p
        return lk.apply_penalties(
            st.work,
            output_tokens=st.history,
            repetition_penalty=p.repetition_penalty,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            logit_bias=st.bias,
            out=st.work,
        )


# -- NumPy: what a Python user writes by hand (float32 throughout)


def _draw_rows(weights: F32, counts: Any, rng: np.random.Generator) -> I64:
    """Inverse-CDF draw of one position per row from the first ``counts[b]`` (unnormalised)
    weights of row b."""
    cum = np.cumsum(weights, axis=-1)
    rows: int = weights.shape[0]
    u = rng.random(rows)
    out = np.empty(weights.shape[0], dtype=np.int64)
    for b in range(weights.shape[0]):
        n = int(counts[b])
        i = int(np.searchsorted(cum[b, :n], u[b] * cum[b, n - 1], side="right"))
        out[b] = min(i, n - 1)
    return out


def _top_k_sorted(x: F32, k: int) -> tuple[I64, F32]:
    """The k largest of each row by ``argpartition``, then sorted, largest first."""
    idx = np.argpartition(x, -k, axis=-1)[:, -k:]
    val = np.take_along_axis(x, idx, axis=-1)
    order = np.argsort(-val, axis=-1, kind="stable")
    return np.take_along_axis(idx, order, -1), np.take_along_axis(val, order, -1)


def _nucleus_len(prob: F32, top_p: float) -> I64:
    """Per row: the length of the shortest prefix of sorted probabilities with mass >= top_p."""
    excl = np.cumsum(prob, axis=-1) - prob
    n: I64 = np.maximum(np.count_nonzero(excl < top_p, axis=-1), 1)
    return n


def _softmax_sorted(v: F32) -> F32:
    e = np.exp(v - v[:, :1])
    p: F32 = e / e.sum(axis=-1, keepdims=True)
    return p


class NumpyPeer(Peer):
    """Hand-written NumPy: exp/sum softmax, argmax, argpartition top-k, argsort top-p,
    inverse-CDF draws with a ``numpy.random.Generator``, ``np.unique`` penalties."""

    name = "numpy"

    def versions(self) -> dict[str, str]:
        return {"numpy": np.__version__}

    def prepare(self, w: Workload, p: Params) -> Any:
        return SimpleNamespace(
            w=w,
            p=p,
            x=w.logits,
            work=np.empty_like(w.logits),
            rng=np.random.default_rng(w.seed + 7),
        )

    def op_greedy(self, st: Any) -> Any:
        return np.argmax(st.x, axis=-1)

    def op_softmax(self, st: Any) -> Any:
        e = np.exp(st.x - st.x.max(axis=-1, keepdims=True))
        e /= e.sum(axis=-1, keepdims=True)
        return e

    def op_log_softmax(self, st: Any) -> Any:
        z = st.x - st.x.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    def op_temp_sample(self, st: Any) -> Any:
        z = st.x / np.float32(st.p.temperature)
        z -= z.max(axis=-1, keepdims=True)
        np.exp(z, out=z)
        return _draw_rows(z, np.full(z.shape[0], z.shape[1]), st.rng)

    def op_topk_sample(self, st: Any) -> Any:
        idx, v = _top_k_sorted(st.x, st.p.top_k)
        w = np.exp((v - v[:, :1]) / np.float32(st.p.temperature))
        pos = _draw_rows(w, np.full(w.shape[0], w.shape[1]), st.rng)
        return idx[np.arange(idx.shape[0]), pos]

    def op_topk_topp_sample(self, st: Any) -> Any:
        idx, v = _top_k_sorted(st.x, st.p.top_k)
        prob = _softmax_sorted(v / np.float32(st.p.temperature))
        pos = _draw_rows(prob, _nucleus_len(prob, st.p.top_p), st.rng)
        return idx[np.arange(idx.shape[0]), pos]

    def op_topp_sample(self, st: Any) -> Any:
        order = np.argsort(-st.x, axis=-1)  # a full sort
        prob = _softmax_sorted(np.take_along_axis(st.x, order, axis=-1))
        pos = _draw_rows(prob, _nucleus_len(prob, st.p.top_p_only), st.rng)
        return order[np.arange(order.shape[0]), pos]

    def op_minp_sample(self, st: Any) -> Any:
        x = st.x
        top = x.max(axis=-1)
        keep = x >= (top + np.float32(math.log(st.p.min_p)))[:, None]
        u = st.rng.random(x.shape[0])
        out = np.empty(x.shape[0], dtype=np.int64)
        for b in range(x.shape[0]):
            ids = np.flatnonzero(keep[b])
            cum = np.cumsum(np.exp(x[b, ids] - top[b]))
            out[b] = ids[min(int(np.searchsorted(cum, u[b] * cum[-1], side="right")), ids.size - 1)]
        return out

    def _chain(self, st: Any, x: F32) -> Any:
        p = st.p
        idx, v = _top_k_sorted(x, p.top_k)
        n = np.minimum(
            _nucleus_len(_softmax_sorted(v), p.top_p),
            np.count_nonzero(v >= v[:, :1] + np.float32(math.log(p.min_p)), axis=-1),
        )
        w = np.exp((v - v[:, :1]) / np.float32(p.temperature))
        return idx[np.arange(idx.shape[0]), _draw_rows(w, n, st.rng)]

    def op_llama_chain(self, st: Any) -> Any:
        return self._chain(st, st.x)

    def op_llama_chain_bf16(self, st: Any) -> Any:
        xb = st.w.bf16
        x = widen_bf16_bits(xb) if xb.dtype == np.uint16 else xb.astype(np.float32)
        return self._chain(st, x)

    def setup_penalties(self, st: Any) -> None:
        np.copyto(st.work, st.x)

    def op_penalties(self, st: Any) -> Any:
        y, w, p = st.work, st.w, st.p
        y[:, w.bias_ids] += w.bias_vals
        r = np.float32(p.repetition_penalty)
        for b in range(w.B):
            uniq, counts = np.unique(w.history[b], return_counts=True)
            z = y[b, uniq]
            z = np.where(z > 0, z / r, z * r)
            z -= (counts * p.frequency_penalty + p.presence_penalty).astype(np.float32)
            y[b, uniq] = z
        return y


# -- PyTorch (CPU): the library's own kernels and torch.multinomial


class TorchPeer(Peer):
    """PyTorch CPU: softmax, argmax, topk, a sort-based top-p, torch.multinomial; penalties
    by gather/scatter. Runs with the same thread count as logitkit (1 by default)."""

    name = "torch"

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def available(self) -> str | None:
        try:
            import torch  # noqa: F401
        except Exception as e:
            return f"import torch failed ({type(e).__name__})"
        return None

    def versions(self) -> dict[str, str]:
        import torch

        return {"torch": str(torch.__version__)}

    def enter(self) -> None:
        import torch

        torch.set_num_threads(self.threads)

    def prepare(self, w: Workload, p: Params) -> Any:
        import torch

        x = torch.from_numpy(w.logits)
        st = SimpleNamespace(w=w, p=p, x=x, work=x.clone(), torch=torch)
        st.gen = torch.Generator().manual_seed(w.seed + 11)
        st.hist = torch.from_numpy(w.history)
        st.bias_ids = torch.from_numpy(w.bias_ids)
        st.bias_vals = torch.from_numpy(w.bias_vals)
        st.neg_freq = torch.full(st.hist.shape, -p.frequency_penalty, dtype=torch.float32)
        st.ln_min_p = math.log(p.min_p)
        if w.bf16_bits is not None:
            st.xb = torch.from_numpy(w.bf16_bits.view(np.int16)).view(torch.bfloat16)
        return st

    def _draw(self, st: Any, prob: Any) -> Any:
        return st.torch.multinomial(prob, 1, generator=st.gen).squeeze(1)

    def op_greedy(self, st: Any) -> Any:
        return st.torch.argmax(st.x, dim=-1)

    def op_softmax(self, st: Any) -> Any:
        return st.torch.softmax(st.x, dim=-1)

    def op_log_softmax(self, st: Any) -> Any:
        return st.torch.log_softmax(st.x, dim=-1)

    def op_temp_sample(self, st: Any) -> Any:
        return self._draw(st, st.torch.softmax(st.x / st.p.temperature, dim=-1))

    def op_topk_sample(self, st: Any) -> Any:
        v, i = st.torch.topk(st.x, st.p.top_k, dim=-1)
        j = self._draw(st, st.torch.softmax(v / st.p.temperature, dim=-1))
        return i.gather(1, j.unsqueeze(1)).squeeze(1)

    def op_topk_topp_sample(self, st: Any) -> Any:
        torch = st.torch
        v, i = torch.topk(st.x, st.p.top_k, dim=-1)
        prob = torch.softmax(v / st.p.temperature, dim=-1)
        prob = prob.masked_fill(torch.cumsum(prob, dim=-1) - prob >= st.p.top_p, 0.0)
        return i.gather(1, self._draw(st, prob).unsqueeze(1)).squeeze(1)

    def op_topp_sample(self, st: Any) -> Any:
        torch = st.torch
        s, i = torch.sort(st.x, dim=-1, descending=True)
        prob = torch.softmax(s, dim=-1)
        prob = prob.masked_fill(torch.cumsum(prob, dim=-1) - prob >= st.p.top_p_only, 0.0)
        return i.gather(1, self._draw(st, prob).unsqueeze(1)).squeeze(1)

    def op_minp_sample(self, st: Any) -> Any:
        torch = st.torch
        thr = st.x.amax(dim=-1, keepdim=True) + st.ln_min_p
        return self._draw(st, torch.softmax(st.x.masked_fill(st.x < thr, -math.inf), dim=-1))

    def _chain(self, st: Any, x: Any) -> Any:
        torch, p = st.torch, st.p
        v, i = torch.topk(x, p.top_k, dim=-1)
        prob = torch.softmax(v, dim=-1)
        keep = (torch.cumsum(prob, dim=-1) - prob < p.top_p) & (v >= v[:, :1] + st.ln_min_p)
        z = (v / p.temperature).masked_fill(~keep, -math.inf)
        return i.gather(1, self._draw(st, torch.softmax(z, dim=-1)).unsqueeze(1)).squeeze(1)

    def op_llama_chain(self, st: Any) -> Any:
        return self._chain(st, st.x)

    def op_llama_chain_bf16(self, st: Any) -> Any:
        return self._chain(st, st.xb.float())

    def setup_penalties(self, st: Any) -> None:
        st.work.copy_(st.x)

    def op_penalties(self, st: Any) -> Any:
        torch, p, y, h = st.torch, st.p, st.work, st.hist
        y[:, st.bias_ids] += st.bias_vals
        g = y.gather(1, h)
        y.scatter_(1, h, torch.where(g > 0, g / p.repetition_penalty, g * p.repetition_penalty))
        y.scatter_(1, h, y.gather(1, h) - p.presence_penalty)  # once per distinct id
        y.scatter_add_(1, h, st.neg_freq)  # once per occurrence
        return y


# -- llama.cpp's samplers through llama-cpp-python's low-level ctypes API (no model)


class LlamaCppPeer(Peer):
    """llama.cpp's sampler chains applied to one ``llama_token_data_array`` per row. The
    arrays (id, logit, p) are refilled from the logits in an untimed step before every call,
    as the shared peers harness does; llama.cpp's own ``llama_sampler_sample`` would pay that
    fill (a C++ loop over V) on top."""

    name = "llama.cpp"
    TOKEN = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
    NEEDED = (
        "llama_token_data",
        "llama_token_data_array",
        "llama_token_data_p",
        "llama_sampler_chain_default_params",
        "llama_sampler_chain_init",
        "llama_sampler_chain_add",
        "llama_sampler_apply",
        "llama_sampler_free",
        "llama_sampler_init_greedy",
        "llama_sampler_init_dist",
        "llama_sampler_init_temp",
        "llama_sampler_init_top_k",
        "llama_sampler_init_top_p",
        "llama_sampler_init_min_p",
    )

    def __init__(self) -> None:
        self.L: Any = None

    def available(self) -> str | None:
        try:
            self.L = importlib.import_module("llama_cpp")
        except Exception as e:
            return f"import llama_cpp failed ({type(e).__name__})"
        missing = [n for n in self.NEEDED if not hasattr(self.L, n)]
        if missing:
            return "llama_cpp has no low-level sampler API (" + ", ".join(missing[:3]) + ")"
        if ctypes.sizeof(self.L.llama_token_data) != self.TOKEN.itemsize:
            return "unexpected llama_token_data layout"
        return None

    def versions(self) -> dict[str, str]:
        return {"llama-cpp-python": str(getattr(self.L, "__version__", "?"))}

    def _chain(self, samplers: list[Any]) -> Any:
        L = self.L
        params = L.llama_sampler_chain_default_params()
        with contextlib.suppress(AttributeError):
            params.no_perf = True
        ch = L.llama_sampler_chain_init(params)
        for s in samplers:
            L.llama_sampler_chain_add(ch, s)
        return ch

    def prepare(self, w: Workload, p: Params) -> Any:
        L = self.L
        st = SimpleNamespace(w=w, p=p, chains={}, pen_chains=[])
        st.arr = np.zeros((w.B, w.V), dtype=self.TOKEN)
        st.ids = np.arange(w.V, dtype=np.int32)
        st.cur = []
        for b in range(w.B):
            c = L.llama_token_data_array()
            c.data = ctypes.cast(st.arr[b].ctypes.data, L.llama_token_data_p)
            c.size, c.selected, c.sorted = w.V, -1, False
            st.cur.append(c)
        st.refs = [ctypes.byref(c) for c in st.cur]
        seed = (w.seed * 2654435761) % (2**32 - 1)
        t, k, tp, mp = p.temperature, p.top_k, p.top_p, p.min_p
        specs: dict[str, list[Callable[[], Any]]] = {
            "greedy": [L.llama_sampler_init_greedy],
            "temp_sample": [lambda: L.llama_sampler_init_temp(t)],
            "topk_sample": [
                lambda: L.llama_sampler_init_top_k(k),
                lambda: L.llama_sampler_init_temp(t),
            ],
            "topk_topp_sample": [
                lambda: L.llama_sampler_init_top_k(k),
                lambda: L.llama_sampler_init_temp(t),
                lambda: L.llama_sampler_init_top_p(tp, 1),
            ],
            "topp_sample": [lambda: L.llama_sampler_init_top_p(p.top_p_only, 1)],
            "minp_sample": [lambda: L.llama_sampler_init_min_p(mp, 1)],
            "llama_chain": [
                lambda: L.llama_sampler_init_top_k(k),
                lambda: L.llama_sampler_init_top_p(tp, 1),
                lambda: L.llama_sampler_init_min_p(mp, 1),
                lambda: L.llama_sampler_init_temp(t),
            ],
        }
        try:
            for op, makers in specs.items():
                tail = [] if op == "greedy" else [L.llama_sampler_init_dist(seed)]
                st.chains[op] = self._chain([m() for m in makers] + tail)
            st.pen_chains = self._penalty_chains(w, p)
        except Exception:
            self.teardown(st)
            raise
        return st

    def _penalty_chains(self, w: Workload, p: Params) -> list[Any]:
        """One [logit bias, penalties] chain per row (each row has its own history), or none
        when this llama-cpp-python lacks those samplers."""
        L = self.L
        if not (hasattr(L, "llama_sampler_init_penalties") and hasattr(L, "llama_logit_bias")):
            return []
        n = len(w.bias_ids)
        bias = (L.llama_logit_bias * n)(
            *[
                L.llama_logit_bias(int(t), float(v))
                for t, v in zip(w.bias_ids, w.bias_vals, strict=True)
            ]
        )
        chains = []
        for b in range(w.B):
            try:  # llama.cpp >= b4000: (last_n, repeat, freq, present)
                pen = L.llama_sampler_init_penalties(
                    p.history_len, p.repetition_penalty, p.frequency_penalty, p.presence_penalty
                )
            except TypeError:  # older: (n_vocab, last_n, repeat, freq, present)
                pen = L.llama_sampler_init_penalties(
                    w.V,
                    p.history_len,
                    p.repetition_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                )
            for t in w.history[b]:
                L.llama_sampler_accept(pen, int(t))
            chains.append(self._chain([L.llama_sampler_init_logit_bias(w.V, n, bias), pen]))
        return chains

    def teardown(self, st: Any) -> None:
        for ch in [*st.chains.values(), *st.pen_chains]:
            self.L.llama_sampler_free(ch)
        st.chains, st.pen_chains = {}, []

    def has(self, op: str) -> bool:
        return op in (
            "greedy",
            "temp_sample",
            "topk_sample",
            "topk_topp_sample",
            "topp_sample",
            "minp_sample",
            "llama_chain",
            "penalties",
        )

    def call(self, op: str, st: Any) -> Any:
        self._fill(st)  # untimed when called through measure(): see setup()
        return self.run(op, st)

    def _fill(self, st: Any) -> None:
        st.arr["id"] = st.ids
        st.arr["logit"] = st.w.logits
        st.arr["p"] = 0.0
        for c in st.cur:
            c.size, c.selected, c.sorted = st.w.V, -1, False

    def run(self, op: str, st: Any) -> Any:
        apply = self.L.llama_sampler_apply
        if op == "penalties":
            if not st.pen_chains:
                raise RuntimeError("llama_cpp has no penalties / logit-bias samplers")
            for ch, r in zip(st.pen_chains, st.refs, strict=True):
                apply(ch, r)
            return st.arr["logit"]  # bias and penalties keep the id order
        ch = st.chains[op]
        for r in st.refs:
            apply(ch, r)
        return np.array([st.arr[b]["id"][c.selected] for b, c in enumerate(st.cur)], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# timing


@dataclass
class Limits:
    """How long one measurement runs."""

    min_reps: int = 20
    min_time: float = 0.2
    max_time: float = 0.6
    max_reps: int = 10_000


def measure(fn: Callable[[], Any], setup: Callable[[], Any] | None, lim: Limits) -> dict[str, Any]:
    """Median of timed calls (``setup`` untimed before each), after one or two warm-up calls."""
    for i in range(2):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        if i == 0 and time.perf_counter() - t0 > 0.25 * lim.max_time:
            break
    times: list[float] = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        while True:
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            n = len(times)
            if n >= lim.max_reps or (n >= lim.min_reps and sum(times) >= lim.min_time):
                break
            if n >= 3 and time.perf_counter() - start >= lim.max_time:
                break
    finally:
        if gc_was:
            gc.enable()
    times.sort()
    n = len(times)
    return {
        "median_us": statistics.median(times) * 1e6,
        "p10_us": times[int(0.1 * (n - 1))] * 1e6,
        "p90_us": times[int(0.9 * (n - 1))] * 1e6,
        "reps": n,
    }


# --------------------------------------------------------------------------------------------
# environment


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def build_profile() -> str:
    """``logitkit._core.build_profile`` ("release" when the extension does not say)."""
    try:
        core = importlib.import_module("logitkit._core")
    except Exception:
        return "release"
    return str(getattr(core, "build_profile", "release"))


def _call_or(name: str, default: Any) -> Any:
    fn = getattr(lk, name, None)
    if fn is None:
        return default
    try:
        return fn()
    except Exception:
        return default


# --------------------------------------------------------------------------------------------
# report


def fmt_us(v: float | None) -> str:
    """µs with three significant digits or so."""
    if v is None:
        return "-"
    if v >= 1e4:
        return f"{v / 1e3:,.1f} ms"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_ratio(num: float | None, den: float | None) -> str:
    """``num / den`` as a speed-up factor."""
    if not num or not den:
        return "-"
    r = num / den
    if r >= 100:
        return f"{r:,.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    return f"{r:.2f}x"


def _find(
    records: list[dict[str, Any]], peer: str, op: str, v: int, b: int
) -> dict[str, Any] | None:
    for r in records:
        if r["peer"] == peer and r["op"] == op and r["V"] == v and r["B"] == b:
            return r
    return None


def markdown(report: dict[str, Any]) -> str:
    """The header, the table and the check notes."""
    meta, records = report["meta"], report["records"]
    peers = [p for p in meta["peers"] if p != "logitkit"]
    lines = ["# logitkit benchmark", ""]
    lines.append(f"- CPU: {meta['cpu']} ({meta['cpus']} logical CPUs), {meta['platform']}")
    lines.append(
        f"- logitkit {meta['logitkit_version']}: {meta['build_profile']} build, SIMD "
        f"{meta['simd_level']}, {meta['threads']} thread(s); bfloat16 input as {meta['bf16_input']}"
    )
    lines.append("- " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    if meta["skipped"]:
        lines.append("- not run: " + "; ".join(f"{k} ({v})" for k, v in meta["skipped"].items()))
    lim = meta["limits"]
    lines.append(
        f"- timing: median of >= {lim['min_reps']} calls and >= {lim['min_time']} s per cell "
        f"(capped at {lim['max_time']} s or {lim['max_reps']} calls) after warm-up; "
        "time.perf_counter, GC off; µs/row = median call time / B"
    )
    lines.append(
        "- floor, measured here on the same buffers: for "
        + ", ".join(sorted(EXP_OPS))
        + " one SIMD sum(exp(x - max)) pass with the maxima given (exp floor); for the other "
        "ops one read pass, np.max(x, axis=-1) (uint16 view for bfloat16; read floor)"
    )
    lines.append("")
    cols = ["op", "V", "B", "logitkit µs/row"]
    for p in peers:
        cols += [f"{p} µs/row", f"speed-up vs {p}"]
    cols += ["floor µs/row", "logitkit / floor", "check"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|---|---:|---:|" + "---:|" * (len(cols) - 4) + "---|")
    notes: list[str] = []
    for op in meta["ops"]:
        for v, b in meta["workloads"]:
            mine = _find(records, "logitkit", op, v, b)
            if mine is None:
                continue
            lk_us = mine.get("per_row_us")
            cells = [op, str(v), str(b), fmt_us(lk_us)]
            for p in peers:
                r = _find(records, p, op, v, b)
                if r is None:
                    cells += ["-", "-"]
                    continue
                us = r.get("per_row_us")
                c = fmt_us(us) if "error" not in r else "error"
                chk: Any = r.get("check")
                if chk and not chk["ok"]:
                    c += " ✗"
                if (chk and (not chk["ok"] or chk.get("warn"))) or "error" in r:
                    notes.append(f"{p} {op} V={v} B={b}: " + (r.get("error") or chk["detail"]))
                cells += [c, fmt_ratio(us, lk_us)]
            fl = _find(records, "floor", floor_kind(op), v, b)
            fus = fl.get("per_row_us") if fl else None
            cells += [fmt_us(fus), fmt_ratio(lk_us, fus)]
            chk = mine.get("check")
            if "error" in mine:
                cells.append("error")
                notes.append(f"logitkit {op} V={v} B={b}: {mine['error']}")
            elif chk is None:
                cells.append("not checked")
            else:
                cells.append(chk["text"])
                if not chk["ok"] or chk.get("warn"):
                    notes.append(f"logitkit {op} V={v} B={b}: {chk['detail']}")
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "speed-up vs peer = peer time / logitkit time (above 1: logitkit is faster); "
        "logitkit / floor = logitkit time / floor time; ✗ = the peer failed its check."
    )
    if notes:
        lines += ["", "## Check notes", ""]
        lines += [f"- {n}" for n in notes]
    lines.append("")
    return "\n".join(lines)


def write_plot(report: dict[str, Any], path: str) -> str | None:
    """A log-scale bar chart of µs/row per op for one workload; None when written, else why
    not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return "--plot needs matplotlib (pip install matplotlib)"
    meta, records = report["meta"], report["records"]
    wls = [tuple(w) for w in meta["workloads"]]
    v, b = PLOT_WORKLOAD if PLOT_WORKLOAD in wls else wls[0]
    ops = [o for o in meta["ops"] if _find(records, "logitkit", o, v, b)]
    series = [*meta["peers"], "floor"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(ops) + 2), 4.5))
    width = 0.8 / len(series)
    for j, name in enumerate(series):
        ys: list[float] = []
        for o in ops:
            if name == "floor":
                r = _find(records, "floor", floor_kind(o), v, b)
            else:
                r = _find(records, name, o, v, b)
            ys.append(float(r["per_row_us"]) if r and r.get("per_row_us") else float("nan"))
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(ops))]
        ax.bar(xs, ys, width, label="floor of the op's class" if name == "floor" else name)
    ax.set_yscale("log")
    ax.set_xticks(range(len(ops)))
    ax.set_xticklabels(ops, rotation=30, ha="right")
    ax.set_ylabel("µs per row (log scale, lower is better)")
    ax.set_title(f"V={v}, B={b}: {meta['cpu']}, logitkit {meta['logitkit_version']}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------------------------
# main


class Progress:
    """A one-line progress indicator on stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.tty = sys.stderr.isatty()
        self.width = 0

    def show(self, text: str) -> None:
        msg = f"[{self.done:>{len(str(self.total))}}/{self.total}] {text}"
        if self.tty:
            pad = max(0, self.width - len(msg))
            sys.stderr.write("\r" + msg + " " * pad)
            self.width = len(msg)
        else:
            sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: a comma-separated list of integers") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"{what}: positive integers")
    return vals


def _writable(path: str) -> bool:
    """Whether ``open(path, "w")`` can succeed: an existing file (or device) that may be written,
    or a new name in a folder that may be written."""
    if os.path.exists(path):
        return not os.path.isdir(path) and os.access(path, os.W_OK)
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)


def build_parser(prog: str = "python -m logitkit bench") -> argparse.ArgumentParser:
    """The options of ``python -m logitkit bench``."""
    ops = list(make_ops(Params()))
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Time logitkit against NumPy (and PyTorch, llama-cpp-python when "
        "installed) on seeded synthetic logits, after checking every result against a float64 "
        "NumPy reference. The markdown table goes to stdout, progress to stderr.",
    )
    ap.add_argument("--vocabs", help="comma list of V (default 32000,128256,262144)")
    ap.add_argument("--batches", help="comma list of B (default 1,8,64)")
    ap.add_argument("--ops", help="comma list of ops (default: all): " + ", ".join(ops))
    ap.add_argument(
        "--peers",
        help="comma list of peers to run besides logitkit "
        "(default: every one available): numpy, torch, llama.cpp",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="V=32000,128256 and B=1,64 (unless given), fewer and shorter reps",
    )
    ap.add_argument(
        "--min-time",
        type=float,
        default=None,
        help="seconds of timed calls per cell, at least (default 0.2; quick 0.05)",
    )
    ap.add_argument(
        "--min-reps",
        type=int,
        default=None,
        help="timed calls per cell, at least (default 20; quick 5)",
    )
    ap.add_argument(
        "--max-time",
        type=float,
        default=None,
        help="stop a cell after this many seconds once it has 3 calls (default 0.6)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="logitkit.set_num_threads(N) and torch.set_num_threads(N) "
        "(default 1; 0 keeps logitkit's default and gives torch the same count)",
    )
    ap.add_argument("--plot", metavar="FILE", help="write a PNG bar chart (needs matplotlib)")
    ap.add_argument("--json", metavar="FILE", help="write every record as JSON")
    return ap


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by parsed options; returns the exit status."""
    ap = build_parser()
    profile = build_profile()
    if profile == "debug":
        print(
            "logitkit bench: this logitkit is a debug build (logitkit._core.build_profile == "
            "'debug'); its timings would mislead. Rebuild with `maturin develop --release`.",
            file=sys.stderr,
        )
        return 2
    P = Params()
    all_ops = make_ops(P)
    try:
        vocabs = _ints(args.vocabs, "--vocabs") if args.vocabs else None
        batches = _ints(args.batches, "--batches") if args.batches else None
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    if vocabs and min(vocabs) < MIN_VOCAB:
        ap.error(f"--vocabs: at least {MIN_VOCAB} (the workloads' history pool), got {min(vocabs)}")
    vocabs = vocabs or list(QUICK_VOCABS if args.quick else DEFAULT_VOCABS)
    batches = batches or list(QUICK_BATCHES if args.quick else DEFAULT_BATCHES)
    op_names = [s.strip() for s in args.ops.split(",") if s.strip()] if args.ops else list(all_ops)
    unknown = [o for o in op_names if o not in all_ops]
    if unknown:
        ap.error(f"unknown op(s) {', '.join(unknown)}; known: {', '.join(all_ops)}")
    op_names = [o for o in all_ops if o in op_names]  # table order
    lim = Limits(5, 0.05, 0.3, 2_000) if args.quick else Limits()
    if args.min_time is not None:
        lim.min_time = args.min_time
    if args.min_reps is not None:
        lim.min_reps = max(1, args.min_reps)
    if args.max_time is not None:
        lim.max_time = args.max_time
    max_threads = getattr(getattr(lk, "_core", None), "MAX_THREADS", 1024)
    if not 0 <= args.threads <= max_threads:
        ap.error(f"--threads: 0 to {max_threads}, got {args.threads}")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path and not _writable(path):  # refused before the run, not after it
            ap.error(f"{flag}: cannot write {path!r}")
    if args.threads > 0:
        lk.set_num_threads(args.threads)
    threads = int(_call_or("get_num_threads", args.threads or 1))

    candidates: list[Peer] = [NumpyPeer(), TorchPeer(threads), LlamaCppPeer()]
    if args.peers:
        want = {s.strip() for s in args.peers.split(",") if s.strip()}
        known = {p.name for p in candidates}
        if want - known:
            ap.error(
                f"unknown peer(s) {', '.join(sorted(want - known))}; known: {', '.join(known)}"
            )
        candidates = [p for p in candidates if p.name in want]
    peers: list[Peer] = [LogitkitPeer()]
    skipped: dict[str, str] = {}
    for p in candidates:
        why = p.available()
        if why:
            skipped[p.name] = why
        else:
            peers.append(p)

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for p in peers:
        with contextlib.suppress(Exception):
            versions.update(p.versions())
    versions.pop("logitkit", None)
    bt = bf16_type()
    meta = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "platform": f"{platform.system()} {platform.machine()}",
        "logitkit_version": str(getattr(lk, "__version__", "?")),
        "build_profile": profile,
        "simd_level": str(_call_or("simd_level", "?")),
        "threads": threads,
        "bf16_input": "ml_dtypes.bfloat16" if bt is not None else 'uint16 + dtype="bfloat16"',
        "versions": versions,
        "skipped": skipped,
        "peers": [p.name for p in peers],
        "ops": op_names,
        "op_text": {o: all_ops[o].text for o in op_names},
        "workloads": [[v, b] for v in vocabs for b in batches],
        "params": asdict(P),
        "limits": asdict(lim),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    records: list[dict[str, Any]] = []
    prog = Progress(len(vocabs) * len(batches) * len(op_names))
    need_bf16 = any(all_ops[o].bf16 for o in op_names)
    for v in vocabs:
        for b in batches:
            w = make_workload(b, v, P)
            if need_bf16:
                add_bf16(w)
            ref = Reference(w, P, all_ops)
            prog.show(f"floor V={v} B={b}")
            records.append(_floor_record("read_f32", w, w.logits, lim))
            if any(o in EXP_OPS for o in op_names):
                records.append(_floor_record("expsum_f32", w, w.logits, lim))
            if need_bf16:
                assert w.bf16_bits is not None
                records.append(_floor_record("read_bf16", w, w.bf16_bits, lim))
            states: dict[str, Any] = {}
            try:
                for p in peers:
                    try:
                        states[p.name] = p.prepare(w, P)
                    except Exception as e:
                        skipped.setdefault(p.name, f"prepare failed on {w.name}: {e}")
                for name in op_names:
                    prog.done += 1
                    for p in peers:
                        if p.name in states and p.has(name):
                            prog.show(f"{name} V={v} B={b} ({p.name})")
                            records.append(
                                _run_cell(p, states[p.name], name, all_ops[name], ref, lim)
                            )
                    ref.forget(name)
            finally:
                for p in peers:
                    if p.name in states:
                        with contextlib.suppress(Exception):
                            p.teardown(states[p.name])
            del ref, w, states
            gc.collect()
    prog.close()

    report = {"meta": meta, "records": records}
    print(markdown(report))
    status = 0
    failed = [
        r for r in records if r["peer"] == "logitkit" and ("error" in r or not r["check"]["ok"])
    ]
    if failed:
        print(
            f"logitkit bench: {len(failed)} logitkit check(s) failed (see the table)",
            file=sys.stderr,
        )
        status = 1
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, default=_json_default)
    if args.plot:
        why = write_plot(report, args.plot)
        if why:
            print(why, file=sys.stderr)
    return status


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return str(o)


# Ops that must exponentiate every logit: compared with the exp-and-sum floor.
EXP_OPS = frozenset({"softmax", "log_softmax", "temp_sample", "topp_sample"})


def floor_kind(op: str) -> str:
    """The floor record an op is compared with."""
    if op in EXP_OPS:
        return "expsum_f32"
    return "read_bf16" if op.endswith("_bf16") else "read_f32"


def _floor_record(kind: str, w: Workload, buf: np.ndarray, lim: Limits) -> dict[str, Any]:
    if kind == "expsum_f32":
        maxes = np.max(buf, axis=-1)
        m = measure(lambda: lk._core.exp_sum_floor(buf, maxes), None, lim)
    else:
        m = measure(lambda: np.max(buf, axis=-1), None, lim)
    return {
        "peer": "floor",
        "op": kind,
        "V": w.V,
        "B": w.B,
        **m,
        "per_row_us": m["median_us"] / w.B,
    }


def _run_cell(
    peer: Peer, st: Any, name: str, op: Op, ref: Reference, lim: Limits
) -> dict[str, Any]:
    """Check, then time, one (peer, op, workload)."""
    rec: dict[str, Any] = {"peer": peer.name, "op": name, "V": ref.w.V, "B": ref.w.B}
    is_lk = isinstance(peer, LogitkitPeer)
    wall = time.perf_counter()
    try:
        peer.enter()
        uniforms = None
        if is_lk and op.kind == "sample":
            uniforms = ref.uniforms
            st.draw = {"uniforms": uniforms}
        try:
            out = peer.call(name, st)
        finally:
            if is_lk:
                st.draw = {"seed": st.seeds}
        chk = check_op(name, op, out, ref, is_lk, uniforms)
        rec["check"] = asdict(chk)
        del out
        setup = getattr(peer, "setup_" + name, None)
        if isinstance(peer, LlamaCppPeer):
            m = measure(lambda: peer.run(name, st), lambda: peer._fill(st), lim)
        else:
            m = measure(
                lambda: getattr(peer, "op_" + name)(st),
                (lambda: setup(st)) if setup is not None else None,
                lim,
            )
        rec.update(m)
        rec["per_row_us"] = m["median_us"] / ref.w.B
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}"
        rec.setdefault("check", asdict(Check(False, "error", rec["error"])))
    rec["wall_s"] = time.perf_counter() - wall  # check + warm-up + timing
    return rec


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m logitkit bench``."""
    return run(build_parser().parse_args(argv))


__all__ = ["Params", "cpu_model", "main", "make_workload", "run"]
