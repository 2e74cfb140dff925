"""Goodness of fit of `sample` on every path, dtype and SIMD level.

For each sampling path, each input dtype (float32, float16, bfloat16) and each SIMD level the
machine has, the tokens drawn by `sample` over N seeds are compared, with a chi-square test at
p = 1e-6, with the probabilities of the kept set computed here in float64 from the rules of
SPEC §4 (independently of `oracle.py`). A token outside the kept set must never be drawn.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import logitkit as lk
from logitkit import _core

N = 4000  # seeds per test
V = 48  # tokens per row
P_VALUE = 1e-6

LEVELS = list(_core.available_simd_levels())
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
PATHS = {
    "temperature": dict(temperature=0.9),
    "top-k": dict(top_k=12),
    "top-p": dict(top_p=0.8),
    "min-p": dict(min_p=0.1),
    "llama.cpp": dict(order="llama.cpp", top_k=40, top_p=0.95, min_p=0.05, temperature=0.8),
}


@pytest.fixture(scope="module", autouse=True)
def restore_level():
    before = _core.simd_level()
    yield
    _core.set_simd_level(before)


def make_row(dtype) -> np.ndarray:
    rng = np.random.default_rng(2024)
    x = rng.normal(0.0, 1.6, V).astype(np.float32)
    x[[5, 17, 30]] = -np.inf  # masked: never drawn
    return x.astype(dtype)


# --- float64 kept sets (SPEC §4 steps 5-8) ------------------------------------------------------


def rank(z: np.ndarray) -> np.ndarray:
    """Ids of the finite entries of z, larger first, ties by lower id."""
    ids = np.flatnonzero(np.isfinite(z))
    return ids[np.lexsort((ids, -z[ids]))]


def only(z: np.ndarray, ids) -> np.ndarray:
    out = np.full_like(z, -np.inf)
    out[ids] = z[ids]
    return out


def keep_top_k(z, k):
    return z if k <= 0 or k >= z.size else only(z, rank(z)[:k])


def keep_top_p(z, top_p, min_keep, margins):
    if top_p >= 1.0:
        return z
    r = rank(z)
    w = np.exp(z[r] - z[r[0]])
    cum = np.cumsum(w) / w.sum()
    i = int(np.searchsorted(cum, top_p, side="left"))  # first prefix with mass >= top_p
    margins.append(min(abs(cum[min(i, r.size - 1)] - top_p), abs(top_p - cum[i - 1]) if i else 1))
    return only(z, r[: min(max(i + 1, min_keep), r.size)])


def keep_min_p(z, min_p, min_keep, margins):
    if min_p <= 0.0:
        return z
    thr = z.max() + math.log(min_p)
    fin = np.isfinite(z)
    margins.append(np.abs(z[fin] - thr).min())
    kept = fin & (z >= thr)
    if kept.sum() < min_keep:
        return only(z, rank(z)[:min_keep])
    return np.where(kept, z, -np.inf)


def kept_probs(row, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, min_keep=1, order="default"):
    """(kept mask, draw probabilities, margins of the top-p / min-p decisions)."""
    x = np.asarray(row, dtype=np.float64)
    margins: list[float] = []
    z = x if order == "llama.cpp" else x / temperature
    z = keep_top_k(z, top_k)
    z = keep_top_p(z, top_p, min_keep, margins)
    z = keep_min_p(z, min_p, min_keep, margins)
    kept = np.isfinite(z)
    logits = np.where(kept, x / temperature, -np.inf)
    p = np.exp(logits - logits[kept].max())
    return kept, p / p.sum(), margins


# --- chi-square ---------------------------------------------------------------------------------


def normal_quantile(p_upper: float) -> float:
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(mid / math.sqrt(2)) > p_upper:
            lo = mid
        else:
            hi = mid
    return lo


Z = normal_quantile(P_VALUE)


def chi_square_critical(df: int) -> float:
    """Upper p = 1e-6 point of chi-square(df), Wilson-Hilferty."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + Z * math.sqrt(a)) ** 3


def chi_square(counts: np.ndarray, expected: np.ndarray) -> tuple[float, int]:
    """Statistic and degrees of freedom, cells with expected < 5 pooled (smallest first)."""
    order = np.argsort(expected, kind="stable")
    bins_o, bins_e, acc_o, acc_e = [], [], 0.0, 0.0
    for i in order:
        acc_o += counts[i]
        acc_e += expected[i]
        if acc_e >= 5.0:
            bins_o.append(acc_o)
            bins_e.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e > 0.0:
        bins_o[-1] += acc_o
        bins_e[-1] += acc_e
    o, e = np.array(bins_o), np.array(bins_e)
    return float(((o - e) ** 2 / e).sum()), len(o) - 1


def fit(path: str, dtype: str, level: str) -> tuple[float, int, float]:
    """Draws N tokens on `level` and returns (statistic, df, critical value)."""
    params = PATHS[path]
    row = make_row(DTYPES[dtype])
    kept, probs, margins = kept_probs(row, **params)
    assert all(m > 1e-4 for m in margins), f"row too close to a filter boundary: {margins}"
    assert kept.sum() >= 5
    _core.set_simd_level(level)
    base = 1_000_003 * (list(PATHS).index(path) + 1) + 7919 * list(DTYPES).index(dtype)
    seeds = np.arange(base, base + N, dtype=np.uint64)
    rows = np.ascontiguousarray(np.broadcast_to(row, (N, V)))
    tokens = lk.sample(rows, seed=seeds, **params)
    for s in (0, N // 2, N - 1):  # the batch is N independent single-row calls
        assert lk.sample(row, seed=int(seeds[s]), **params) == tokens[s]
    counts = np.bincount(tokens, minlength=V)
    assert counts[~kept].sum() == 0, f"removed tokens drawn: {np.flatnonzero(counts * ~kept)}"
    stat, df = chi_square(counts[kept].astype(np.float64), probs[kept] * N)
    return stat, df, chi_square_critical(df)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("path", list(PATHS))
def test_draws_fit_the_kept_distribution(path, dtype, level):
    stat, df, crit = fit(path, dtype, level)
    assert stat < crit, f"chi-square {stat:.1f} >= {crit:.1f} (df {df})"


def test_wilson_hilferty_critical_values():
    # Exact upper 1e-6 points of chi-square (regularised incomplete gamma, computed once).
    # Wilson-Hilferty errs on the safe side (larger) for small df and converges as df grows.
    exact = {1: 23.928, 2: 27.631, 4: 33.377, 10: 46.863, 20: 65.421, 40: 97.653}
    for df, x in exact.items():
        ratio = chi_square_critical(df) / x
        assert 1.0 <= ratio < (1.16 if df < 10 else 1.03), (df, ratio)
