"""mask_top_p and mask_min_p: kept sets between the oracle's must-keep and may-keep sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import logitkit as lk
import oracle
import strategies as S
from checks import (
    assert_float32_like,
    assert_kept_between,
    check_out_forms,
    compositions,
    same_bits,
)


def rows_of(a):
    a = np.asarray(a)
    return a.reshape(-1, a.shape[-1])


def check_mask(got, ref, sets) -> None:
    """got is float32 with ref's shape; per row, the kept tokens lie between must and may and
    keep their original (untempered) float32 value; every other token is -inf."""
    assert_float32_like(got, ref.shape)
    for g, r in zip(rows_of(got), rows_of(ref), strict=True):
        kept = np.isfinite(g)
        must, may = sets(r)
        assert_kept_between(kept, must, may)
        assert same_bits(g[kept], r[kept])
        assert np.all(np.isneginf(g[~kept]))


@given(inp=S.inputs(), top_p=S.top_ps, temperature=S.temperatures, min_keep=S.min_keeps)
def test_mask_top_p_matches_oracle(inp, top_p, temperature, min_keep):
    got = lk.mask_top_p(inp.array, top_p, temperature=temperature, min_keep=min_keep, **inp.kw)
    check_mask(
        got,
        inp.ref,
        lambda r: oracle.mask_top_p_sets(
            r, top_p, temperature, min_keep, oracle.tolerance(r, temperature)
        ),
    )


@given(
    x=S.rows(vocab=st.integers(129, 1100)),
    top_p=S.top_ps,
    temperature=S.temperatures,
    min_keep=S.min_keeps,
)
def test_mask_top_p_of_longer_rows_matches_oracle(x, top_p, temperature, min_keep):
    """Past 128 candidates the nucleus is searched in buckets of logits, split again where it
    crosses, and a run of ties it ends in is kept in id order."""
    got = lk.mask_top_p(x, top_p, temperature=temperature, min_keep=min_keep)
    check_mask(
        got,
        x,
        lambda r: oracle.mask_top_p_sets(
            r, top_p, temperature, min_keep, oracle.tolerance(r, temperature)
        ),
    )


@given(inp=S.inputs(), min_p=S.min_ps, temperature=S.temperatures, min_keep=S.min_keeps)
def test_mask_min_p_matches_oracle(inp, min_p, temperature, min_keep):
    got = lk.mask_min_p(inp.array, min_p, temperature=temperature, min_keep=min_keep, **inp.kw)
    check_mask(
        got,
        inp.ref,
        lambda r: oracle.mask_min_p_sets(
            r, min_p, temperature, min_keep, oracle.tolerance(r, temperature)
        ),
    )


@given(x=S.logits(), temperature=S.temperatures)
def test_top_p_one_and_min_p_zero_keep_everything(x, temperature):
    assert same_bits(lk.mask_top_p(x, 1.0, temperature=temperature), x)
    assert same_bits(lk.mask_min_p(x, 0.0, temperature=temperature), x)


@given(x=S.logits(), temperature=S.temperatures, min_keep=S.min_keeps)
def test_top_p_zero_keeps_the_min_keep_most_probable(x, temperature, min_keep):
    got = lk.mask_top_p(x, 0.0, temperature=temperature, min_keep=min_keep)
    for g, r in zip(rows_of(got), rows_of(x), strict=True):
        n = min(min_keep, int(np.isfinite(r).sum()))
        assert same_bits(g, oracle.mask_top_k(r, n))


@given(x=S.logits(), temperature=S.temperatures, min_keep=S.min_keeps)
def test_min_p_one_keeps_the_maxima_and_min_keep(x, temperature, min_keep):
    got = lk.mask_min_p(x, 1.0, temperature=temperature, min_keep=min_keep)
    for g, r in zip(rows_of(got), rows_of(x), strict=True):
        kept = np.isfinite(g)
        n_max = int((r == r.max()).sum())
        n = min(max(min_keep, n_max), int(np.isfinite(r).sum()))
        assert kept.sum() == n
        assert np.all(kept[r == r.max()])
        assert same_bits(g, oracle.mask_top_k(r, n))


@given(x=S.logits(), top_p=S.top_ps, min_p=S.min_ps, temperature=S.temperatures)
def test_min_keep_at_least_vocab_keeps_every_finite_token(x, top_p, min_p, temperature):
    v = x.shape[-1]
    assert same_bits(lk.mask_top_p(x, top_p, temperature=temperature, min_keep=v), x)
    assert same_bits(lk.mask_min_p(x, min_p, temperature=temperature, min_keep=v + 5), x)


@given(x=S.logits(), top_p=S.top_ps, min_p=S.min_ps, min_keep=S.min_keeps)
def test_masks_only_add_neg_inf_and_keep_the_maximum(x, top_p, min_p, min_keep):
    for got in (
        lk.mask_top_p(x, top_p, min_keep=min_keep),
        lk.mask_min_p(x, min_p, min_keep=min_keep),
    ):
        changed = got.view(np.uint32) != x.view(np.uint32)
        assert np.all(np.isneginf(got[changed]))
        np.testing.assert_array_equal(lk.argmax(got), lk.argmax(x))
        n_finite = np.isfinite(x).sum(axis=-1)
        assert np.all(np.isfinite(got).sum(axis=-1) >= np.minimum(min_keep, n_finite))


@given(x=S.logits(), top_p=S.top_ps, min_p=S.min_ps, temperature=S.temperatures)
def test_mask_out_forms(x, top_p, min_p, temperature):
    check_out_forms(lk.mask_top_p, x, top_p=top_p, temperature=temperature)
    check_out_forms(lk.mask_min_p, x, min_p=min_p, temperature=temperature, min_keep=2)


@given(x=S.batches(), top_p=S.top_ps, min_p=S.min_ps, temperature=S.temperatures)
def test_rows_are_independent(x, top_p, min_p, temperature):
    tp = lk.mask_top_p(x, top_p, temperature=temperature)
    mp = lk.mask_min_p(x, min_p, temperature=temperature)
    for r in range(x.shape[0]):
        assert same_bits(tp[r], lk.mask_top_p(x[r], top_p, temperature=temperature))
        assert same_bits(mp[r], lk.mask_min_p(x[r], min_p, temperature=temperature))


@given(inp=S.inputs(), top_p=S.top_ps, min_p=S.min_ps)
def test_inputs_are_not_modified(inp, top_p, min_p):
    before = np.array(inp.array, copy=True)
    lk.mask_top_p(inp.array, top_p, temperature=0.5, **inp.kw)
    lk.mask_min_p(inp.array, min_p, temperature=2.0, **inp.kw)
    np.testing.assert_array_equal(np.asarray(inp.array), before)


LOG4 = np.log(np.asarray([0.4, 0.3, 0.2, 0.1])).astype(np.float32)


@pytest.mark.parametrize(
    ("row", "top_p", "temperature", "min_keep", "kept"),
    [
        pytest.param(LOG4, 0.5, 1.0, 1, [0, 1], id="crossing-token-kept"),
        pytest.param(LOG4, 0.35, 1.0, 1, [0], id="first-token-crosses"),
        pytest.param(LOG4, 0.75, 1.0, 1, [0, 1, 2], id="three-tokens"),
        pytest.param(LOG4, 0.0, 1.0, 1, [0], id="top-p-zero"),
        pytest.param(LOG4, 0.0, 1.0, 3, [0, 1, 2], id="top-p-zero-min-keep-3"),
        pytest.param(LOG4, 0.5, 0.01, 1, [0], id="cold-temperature"),
        pytest.param(LOG4, 0.9, 100.0, 1, [0, 1, 2, 3], id="hot-temperature"),
        pytest.param([1.0, 2.0, 2.0, 0.0], 0.1, 1.0, 1, [1], id="tie-lower-id-first"),
        pytest.param([1.0, 2.0, 2.0, -np.inf], 0.0, 1.0, 4, [0, 1, 2], id="min-keep-never-revives"),
    ],
)
def test_mask_top_p_known_values(row, top_p, temperature, min_keep, kept):
    x = np.asarray(row, dtype=np.float32)
    got = lk.mask_top_p(x, top_p, temperature=temperature, min_keep=min_keep)
    np.testing.assert_array_equal(np.flatnonzero(np.isfinite(got)), kept)
    np.testing.assert_array_equal(got[kept], x[kept])


@pytest.mark.parametrize(
    ("row", "min_p", "temperature", "min_keep", "kept"),
    [
        pytest.param(LOG4, 0.45, 1.0, 1, [0, 1, 2], id="below-half-of-max"),
        pytest.param(LOG4, 0.8, 1.0, 1, [0], id="above-second"),
        pytest.param(LOG4, 0.8, 1.0, 2, [0, 1], id="min-keep-2"),
        pytest.param([0.0, -math.log(2.0), -math.log(4.0)], 0.3, 1.0, 1, [0, 1], id="ratios"),
        pytest.param([0.0, -math.log(2.0), -math.log(4.0)], 0.3, 0.5, 1, [0], id="tempered"),
        pytest.param([2.0, 2.0, 1.0, 3.0], 1.0, 1.0, 1, [3], id="min-p-one"),
        pytest.param([3.0, 1.0, 3.0, -np.inf], 1.0, 1.0, 1, [0, 2], id="min-p-one-tie"),
        pytest.param([3.0, -np.inf, 1.0], 0.9, 1.0, 3, [0, 2], id="min-keep-never-revives"),
    ],
)
def test_mask_min_p_known_values(row, min_p, temperature, min_keep, kept):
    x = np.asarray(row, dtype=np.float32)
    got = lk.mask_min_p(x, min_p, temperature=temperature, min_keep=min_keep)
    np.testing.assert_array_equal(np.flatnonzero(np.isfinite(got)), kept)
    np.testing.assert_array_equal(got[kept], x[kept])


def test_min_p_equality_is_kept():
    x = np.asarray([0.0, -math.log(4.0)], dtype=np.float64)
    p = oracle.softmax(x.astype(np.float32))
    ratio = float(p[1] / p[0])
    got = lk.mask_min_p(np.asarray([0.0, 0.0], dtype=np.float32), 1.0)
    np.testing.assert_array_equal(np.isfinite(got), [True, True])
    got = lk.mask_min_p(x.astype(np.float32), ratio * (1 - 1e-6))
    np.testing.assert_array_equal(np.isfinite(got), [True, True])
    got = lk.mask_min_p(x.astype(np.float32), min(1.0, ratio * (1 + 1e-4)))
    np.testing.assert_array_equal(np.isfinite(got), [True, False])


def _decimal_distributions():
    """Probability vectors of 3 to 5 distinct multiples of 0.05 (in a shuffled order)."""
    rng = np.random.default_rng(8)
    return [rng.permutation(c) for n in (3, 4, 5) for c in compositions(n, 20) if len(set(c)) == n]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_min_p_equality_holds_for_logits_written_as_logs_of_decimals(dtype):
    """log(p) rounded to float32 (or float64, read as float32): a token whose written
    probability is exactly min_p * p_max is kept, one below it is not, in every order."""
    for counts in _decimal_distributions()[::7]:
        x = np.log(counts / 20.0).astype(dtype)
        for c in sorted(set(counts.tolist()))[:-1]:
            min_p = c / counts.max()
            want = counts >= c
            np.testing.assert_array_equal(np.isfinite(lk.mask_min_p(x, min_p)), want, (counts, c))
            for order in ("default", "vllm", "llama.cpp"):
                # u near 1 draws the last kept id
                tok = lk.sample(x, min_p=min_p, order=order, uniforms=0.99999)
                assert tok == np.flatnonzero(want).max(), (counts, c, order)
            # the token just below is removed: min_p a little above the written ratio
            np.testing.assert_array_equal(
                np.isfinite(lk.mask_min_p(x, min_p * (1 + 1e-6))), counts > c, (counts, c)
            )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_p_equality_holds_for_logits_written_as_logs_of_decimals(dtype):
    """log(p) rounded to float32: top_p equal to a written prefix mass keeps that prefix (the
    crossing token is kept), in the masks and in every order of sample."""
    for counts in _decimal_distributions()[::5]:
        x = np.log(counts / 20.0).astype(dtype)
        rank = np.argsort(-counts, kind="stable")
        for n in range(1, counts.size):
            top_p = counts[rank[:n]].sum() / 20
            want = np.zeros(counts.size, dtype=bool)
            want[rank[:n]] = True
            np.testing.assert_array_equal(np.isfinite(lk.mask_top_p(x, top_p)), want, counts)
            for order in ("default", "vllm", "llama.cpp"):
                tok = lk.sample(x, top_p=top_p, order=order, uniforms=0.99999)
                assert tok == np.flatnonzero(want).max(), (counts, top_p, order)


def test_top_p_allowance_is_float32_epsilon_of_the_mass():
    """A prefix short of top_p by less than 2**-23 of the mass reaches it; by 3e-7, not."""
    x = np.array([0.0, -1.0], dtype=np.float32)
    p0 = 1.0 / (1.0 + math.exp(-1.0))
    for short, kept in [(0.5e-7, 1), (1.1e-7, 1), (3e-7, 2), (1e-6, 2)]:
        got = np.isfinite(lk.mask_top_p(x, p0 + short)).sum()
        assert got == kept, (short, got)


@given(
    xmax=st.floats(-60.0, 60.0, width=32),
    min_p=st.floats(1e-4, 1.0),
    steps=st.lists(st.integers(-3, 3), min_size=1, max_size=6),
)
def test_min_p_band_matches_the_oracle_at_the_threshold(xmax, min_p, steps):
    """Rows of the float32 values around z_max + ln(min_p) (a few ulps either way): the kept
    set is exactly the oracle's (equality at float32 precision, README)."""
    t = np.float32(xmax + math.log(min_p))
    vals = [xmax]
    for k in steps:
        v = t
        for _ in range(abs(k)):
            v = np.nextafter(v, np.float32(np.inf if k > 0 else -np.inf))
        vals.append(min(float(v), xmax))
    x = np.asarray(vals, dtype=np.float32)
    np.testing.assert_array_equal(
        np.isfinite(lk.mask_min_p(x, min_p)), np.isfinite(oracle.mask_min_p(x, min_p))
    )


def test_min_p_float32_equality_band_is_one_ulp():
    """z_max = 0, min_p = 0.5: float32(log 0.5) lies 1.9e-9 below log 0.5 and is kept; the next
    float32 down lies 6.1e-8 below (more than one ulp at 0.69, 6.0e-8) and is not; with
    min_p = 1 a token one ulp below the maximum is removed."""
    half = np.float32(math.log(0.5))
    assert float(half) < math.log(0.5)
    below = np.nextafter(half, np.float32(-1))
    x = np.array([0.0, half, below], dtype=np.float32)
    np.testing.assert_array_equal(np.isfinite(lk.mask_min_p(x, 0.5)), [True, True, False])
    np.testing.assert_array_equal(np.isfinite(oracle.mask_min_p(x, 0.5)), [True, True, False])
    y = np.array([1.0, np.nextafter(np.float32(1), np.float32(0))], dtype=np.float32)
    np.testing.assert_array_equal(np.isfinite(lk.mask_min_p(y, 1.0)), [True, False])


@pytest.mark.parametrize("temperature", [1e280, 1e300, 1.7e308])
def test_min_p_one_at_huge_temperature(temperature):
    """min_p = 1 keeps the tokens whose tempered logit equals the maximum's; at a huge T every
    finite token within ~T * 1e-308 of the maximum ties with it (found by bisection, at once)."""
    x = np.asarray([0.0, -1e-30, -3.0, -np.inf, 1e-40], dtype=np.float32)
    got = lk.mask_min_p(x, 1.0, temperature=temperature)
    np.testing.assert_array_equal(
        np.isfinite(got), np.isfinite(oracle.mask_min_p(x, 1.0, temperature))
    )
    tok = lk.sample(x, temperature=temperature, min_p=1.0, seed=3)
    assert np.isfinite(got[tok])


def _long_tied_rows() -> list[tuple[str, np.ndarray]]:
    """Rows of 100 003 tokens whose nucleus ends inside a run of thousands of equal logits (p * V
    is not a whole number for the top-p values below, so no nucleus of the all-equal row ends
    exactly on its target)."""
    rng = np.random.default_rng(7)
    v = 100_003
    spikes = np.zeros(v, dtype=np.float32)
    spikes[rng.choice(v, 10, replace=False)] = 1.0
    grid = np.round(rng.normal(0.0, 1.0, v) * 4.0).astype(np.float32) / 4.0
    return [("all-equal", np.zeros(v, dtype=np.float32)), ("ten-spikes", spikes), ("grid", grid)]


@pytest.mark.parametrize(("name", "x"), [pytest.param(*r, id=r[0]) for r in _long_tied_rows()])
@pytest.mark.parametrize("top_p", [0.25, 0.5, 0.9])
def test_long_runs_of_ties_at_the_nucleus_boundary(name, x, top_p):
    """The nucleus ends inside a run of equal logits (ties kept in increasing id order) in a
    long row: the mask, a draw and the processed log-probabilities agree with the oracle."""
    want = oracle.mask_top_p(x, top_p)
    got = lk.mask_top_p(x, top_p)
    kept = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), kept)
    assert same_bits(got[kept], x[kept])
    for u in (0.0, 0.37, 0.999):
        assert lk.sample(x, top_p=top_p, uniforms=u) == oracle.draw(x, kept, 1.0, u)
    p = lk.SamplingParams(top_p=top_p, seed=3, logprobs=20, logprobs_mode="processed")
    res = lk.sample_batch(x[None, :], p)
    ref = oracle.log_softmax(np.where(kept, x, -np.inf))
    top = np.lexsort((np.arange(x.size), -ref))[:20]
    assert kept[res.tokens[0]]
    assert res.top_ids[0].tolist() == top.tolist()
    np.testing.assert_allclose(res.top_logprobs[0], ref[top], rtol=0, atol=2e-5)
    assert res.ranks[0] == 1 + int((ref > ref[res.tokens[0]]).sum())
