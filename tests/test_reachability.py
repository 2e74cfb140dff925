"""Every token of a 152064-token vocabulary is reachable, exactly where the spec says.

The row's logits lie in a narrow range, so every token has a non-zero probability. For each
token to test, the uniform is the midpoint of that token's interval of the cumulative
distribution (float64, kept tokens in increasing id order, SPEC §4 step 9), passed with
`uniforms=`; `sample` must return exactly that token. The interval half-widths (~3e-6) are ten
times the float32 kernels' error on a cumulative sum, so a wrong token means a wrong draw.

Cost: every row costs a pass over V, so all V tokens means V passes. Temperature-only and min-p
test every token; top-p 0.999 (the nucleus search costs ~10x more per row, ~300x on bf16 rows,
whose many ties take the sorted path) tests the tokens nearest the cut plus a seeded sample,
unless LOGITKIT_REACH_FULL=1 (then every kept token: ~1 min for float32, ~20 min for bfloat16).
"""

from __future__ import annotations

import math
import os

import ml_dtypes
import numpy as np
import pytest

import logitkit as lk

V = 152_064  # Qwen2 vocabulary
CHUNK = 256  # rows per call: one (CHUNK, V) buffer of the row, reused for every call
FULL = os.environ.get("LOGITKIT_REACH_FULL") == "1"
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
TOP_P = 0.999  # (adjusted per row by < 1e-5, see the test)
MIN_P = 0.94  # keeps logits within ln(1/0.94) = 0.062 of the maximum: ~60% of the row


def make_row(dtype) -> np.ndarray:
    rng = np.random.default_rng(152064)
    return rng.uniform(-0.05, 0.05, V).astype(np.float32).astype(dtype)


def midpoints(x: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Midpoint of every kept token's interval of the cumulative distribution (float64)."""
    z = np.where(kept, x, -np.inf)
    p = np.exp(z - z[kept].max())
    p /= p.sum()
    cum = np.cumsum(p)
    return cum - p / 2


def draw(row: np.ndarray, u: np.ndarray, **params) -> np.ndarray:
    buf = np.empty((min(CHUNK, u.size), V), dtype=row.dtype)
    buf[:] = row
    out = np.empty(u.size, dtype=np.int64)
    for s in range(0, u.size, CHUNK):
        n = min(CHUNK, u.size - s)
        out[s : s + n] = lk.sample(buf[:n], uniforms=u[s : s + n], **params)
    return out


def check_reachable(row, kept, ids, **params):
    x = row.astype(np.float64)
    mid = midpoints(x, kept)
    assert kept[ids].all()
    got = draw(row, mid[ids], **params)
    wrong = np.flatnonzero(got != ids)
    assert wrong.size == 0, (
        f"{wrong.size} of {ids.size} tokens not drawn at their midpoint, e.g. "
        f"token {ids[wrong[0]]} (u = {mid[ids[wrong[0]]]!r}) gave {got[wrong[0]]}"
    )


def rank(x: np.ndarray) -> np.ndarray:
    ids = np.arange(x.size)
    return ids[np.lexsort((ids, -x))]


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_token_reachable_temperature_only(dtype):
    row = make_row(DTYPES[dtype])
    kept = np.ones(V, dtype=bool)
    check_reachable(row, kept, np.arange(V))


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_kept_token_reachable_min_p(dtype):
    row = make_row(DTYPES[dtype])
    x = row.astype(np.float64)
    d = x - x.max()
    ln = math.log(MIN_P)
    kept = d >= ln  # SPEC §4 step 8: z >= z_max + ln(min_p)
    assert np.abs(d - ln).min() > 1e-7, "a logit sits on the min-p threshold"
    assert 0.5 * V < kept.sum() < V
    np.testing.assert_array_equal(np.isfinite(lk.mask_min_p(row, MIN_P)), kept)
    check_reachable(row, kept, np.flatnonzero(kept), min_p=MIN_P)


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_kept_tokens_reachable_top_p(dtype):
    row = make_row(DTYPES[dtype])
    x = row.astype(np.float64)
    r = rank(x)  # probability order, ties by lower id
    p = np.exp(x[r] - x[r[0]])
    cum = np.cumsum(p) / p.sum()
    # top_p ~ 0.999, moved (by < 1e-5) to the middle of the crossing token's step so that the cut
    # is 3e-6 away from any rounding question.
    i = int(np.searchsorted(cum, TOP_P, side="left"))
    top_p = float((cum[i - 1] + cum[i]) / 2)
    n = int(np.searchsorted(cum, top_p, side="left")) + 1  # shortest prefix with mass >= top_p
    assert n == i + 1 and min(cum[n - 1] - top_p, top_p - cum[n - 2]) > 1e-6
    kept = np.zeros(V, dtype=bool)
    kept[r[:n]] = True
    assert V - 1000 < n < V
    np.testing.assert_array_equal(np.isfinite(lk.mask_top_p(row, top_p)), kept)
    if FULL:
        ids = np.flatnonzero(kept)
    else:
        near_cut = r[max(0, n - (512 if dtype == "float32" else 64)) : n]
        others = np.random.default_rng(7).choice(
            np.flatnonzero(kept), 8192 if dtype == "float32" else 192, replace=False
        )
        ids = np.unique(np.concatenate([near_cut, others, np.flatnonzero(kept)[[0, -1]]]))
    check_reachable(row, kept, ids, top_p=top_p)
