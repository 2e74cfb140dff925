"""softmax and log_softmax against the float64 oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import logitkit as lk
import oracle
import strategies as S
from checks import F32_EPS, assert_close, assert_float32_like, check_out_forms, same_bits

# Weights below 2^-125 of the maximum's are exactly 0 (logitkit's exp cutoff, about e^-86.6,
# the edge of float32's normal range): a probability below it may be 0.
TINY = 2.0**-125 * 1.01


def softmax_rtol(ref, temperature) -> float:
    """Relative error of a float32 softmax: argument rounding grows with |x| / T."""
    return oracle.tolerance(ref, temperature)


def log_softmax_atol(ref, temperature) -> float:
    """Absolute error of a float32 log_softmax: a few ulps of the largest |x / T|."""
    return oracle.logprob_tolerance(oracle.f64(ref) / temperature)


@given(inp=S.inputs(), temperature=S.temperatures)
def test_softmax_matches_oracle(inp, temperature):
    got = lk.softmax(inp.array, temperature=temperature, **inp.kw)
    assert_float32_like(got, inp.ref.shape)
    want = oracle.softmax(inp.ref, temperature)
    assert_close(got, want, rtol=softmax_rtol(inp.ref, temperature), atol=TINY)
    assert np.all(got[np.isneginf(inp.ref)] == 0.0)
    assert np.all(got >= 0.0)


@given(inp=S.inputs(), temperature=S.temperatures)
def test_softmax_rows_sum_to_one(inp, temperature):
    got = lk.softmax(inp.array, temperature=temperature, **inp.kw)
    sums = got.astype(np.float64).sum(axis=-1)
    v = inp.ref.shape[-1]
    np.testing.assert_allclose(sums, 1.0, rtol=0, atol=1e-6 + 2 * v * F32_EPS)


@given(inp=S.inputs(), temperature=S.temperatures)
def test_log_softmax_matches_oracle(inp, temperature):
    got = lk.log_softmax(inp.array, temperature=temperature, **inp.kw)
    assert_float32_like(got, inp.ref.shape)
    want = oracle.log_softmax(inp.ref, temperature)
    assert_close(got, want, rtol=0, atol=log_softmax_atol(inp.ref, temperature))
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(inp.ref))
    assert np.all(got[np.isfinite(inp.ref)] <= 0.0)


@given(
    x=S.logits(masks=False, elements=st.floats(-1e4, 1e4, width=32)),
    temperature=S.temperatures,
)
def test_log_softmax_finite_for_finite_input(x, temperature):
    got = lk.log_softmax(x, temperature=temperature)
    assert np.all(np.isfinite(got))
    want = oracle.log_softmax(x, temperature)
    assert_close(got, want, rtol=0, atol=log_softmax_atol(x, temperature))


@given(x=S.batches(), temperature=S.temperatures)
def test_rows_are_independent(x, temperature):
    for fn in (lk.softmax, lk.log_softmax):
        whole = fn(x, temperature=temperature)
        for r in range(x.shape[0]):
            assert same_bits(whole[r], fn(x[r], temperature=temperature))
        assert same_bits(whole[::-1], fn(x[::-1].copy(), temperature=temperature))


@given(x=S.logits(), temperature=S.temperatures)
def test_out_forms(x, temperature):
    check_out_forms(lk.softmax, x, temperature=temperature)
    check_out_forms(lk.log_softmax, x, temperature=temperature)


@given(inp=S.inputs(kinds=("float16", "bfloat16", "bfloat16-bits", "float64", "strided")))
def test_out_with_other_input_dtypes(inp):
    out = np.empty(inp.ref.shape, dtype=np.float32)
    assert lk.softmax(inp.array, out=out, **inp.kw) is out
    assert same_bits(out, lk.softmax(inp.ref))
    assert lk.log_softmax(inp.array, out=out, **inp.kw) is out
    assert same_bits(out, lk.log_softmax(inp.ref))


@given(inp=S.inputs())
def test_inputs_are_not_modified(inp):
    before = np.array(inp.array, copy=True)
    lk.softmax(inp.array, temperature=0.7, **inp.kw)
    lk.log_softmax(inp.array, temperature=1.3, **inp.kw)
    np.testing.assert_array_equal(np.asarray(inp.array), before)


@given(x=S.logits())
def test_default_temperature_is_one(x):
    assert same_bits(lk.softmax(x), lk.softmax(x, temperature=1.0))
    assert same_bits(lk.log_softmax(x), lk.log_softmax(x, temperature=1.0))


@pytest.mark.parametrize(
    ("row", "temperature", "probs"),
    [
        pytest.param([0.0, 0.0], 1.0, [0.5, 0.5], id="uniform"),
        pytest.param([0.0, -np.inf], 1.0, [1.0, 0.0], id="masked"),
        pytest.param([-np.inf, 5.0, -np.inf], 0.3, [0.0, 1.0, 0.0], id="single-finite"),
        pytest.param([math.log(3.0), 0.0], 1.0, [0.75, 0.25], id="three-to-one"),
        pytest.param([math.log(9.0), 0.0], 2.0, [0.75, 0.25], id="tempered"),
        pytest.param([1e4, -1e4], 1.0, [1.0, 0.0], id="wide-range"),
    ],
)
def test_known_values(row, temperature, probs):
    x = np.asarray(row, dtype=np.float32)
    np.testing.assert_allclose(lk.softmax(x, temperature=temperature), probs, rtol=1e-6, atol=0)
    with np.errstate(divide="ignore"):
        want = np.log(np.asarray(probs))
    if row == [1e4, -1e4]:
        want = [0.0, -2e4]
    got = lk.log_softmax(x, temperature=temperature)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_one_row_returns_one_row_and_batch_returns_batch():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert lk.softmax(x).shape == (3, 4)
    assert lk.softmax(x[1]).shape == (4,)
    assert lk.log_softmax(x[1]).shape == (4,)


@pytest.mark.parametrize("temperature", [1e40, 1e46, 1e300])
def test_huge_temperature_is_uniform_over_finite_tokens(temperature):
    """The limit of softmax(z / T) as T grows: uniform over the finite tokens, masked ones stay
    masked (also where 1 / T is 0 in float32)."""
    x = np.asarray([[0.0, 1.0, -np.inf, -5.0], [-np.inf, 3.0, -np.inf, 2.0]], dtype=np.float32)
    want_p = np.asarray([[1 / 3, 1 / 3, 0, 1 / 3], [0, 0.5, 0, 0.5]], dtype=np.float32)
    np.testing.assert_allclose(lk.softmax(x, temperature=temperature), want_p, rtol=1e-6)
    got = lk.log_softmax(x, temperature=temperature)
    assert not np.isnan(got).any()
    with np.errstate(divide="ignore"):
        want_log = np.log(want_p.astype(np.float64))
    np.testing.assert_allclose(got, want_log, rtol=1e-6)


@pytest.mark.parametrize("temperature", [3e-39, 1e-300])
def test_tiny_temperatures_use_the_largest_scale_in_every_function(temperature):
    """Below T = 1 / 2.3586574e38 every kernel scales the logits by 2.3586574e38 (the largest
    scale whose exp factor is finite in float32): softmax, log_softmax and top-p agree."""
    z = np.asarray([0.0, 2e-38], dtype=np.float32)
    e = math.exp((float(z[0]) - float(z[1])) * float(np.float32(2.3586574e38)))
    want = np.asarray([e, 1.0]) / (1.0 + e)
    np.testing.assert_allclose(lk.softmax(z, temperature=temperature), want, rtol=1e-5)
    lp = lk.log_softmax(z, temperature=temperature).astype(np.float64)
    np.testing.assert_allclose(np.exp(lp), want, rtol=1e-5)
    # Near a boundary (within 1e-5) rows of up to 1024 tokens are decided again in float64:
    # with the same scale, so padding a row with masked tokens changes nothing.
    padded = np.concatenate([z, np.full(2000, -np.inf, dtype=np.float32)])
    for gap in (1e-4, 3e-6):
        for top_p, kept in ((want[1] - gap, 1), (want[1] + gap, 2)):
            for row in (z, padded):
                got = lk.mask_top_p(row, top_p, temperature=temperature)
                assert np.isfinite(got).sum() == kept, (gap, top_p, len(row))
        for u, token in ((want[0] - gap, 0), (want[0] + gap, 1)):
            for row in (z, padded):
                assert lk.sample(row, temperature=temperature, uniforms=u) == token


@given(
    x=S.logits(masks=True, elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
    temperature=st.one_of(
        st.sampled_from([1e30, 1e37, 1e38, 3.4e38, 1e39, 1e45, 1e300]), st.floats(1e30, 1e308)
    ),
)
def test_huge_temperatures_follow_the_oracle_over_the_whole_float32_range(x, temperature):
    """At a temperature so large that logits more than 3.4e38 apart (a difference that
    overflows float32) still weigh something, every function follows softmax(x / T) in float64."""
    want = oracle.softmax(x, temperature)
    assert_close(lk.softmax(x, temperature=temperature), want, rtol=2e-5, atol=TINY)
    want_log = oracle.log_softmax(x, temperature)
    got_log = lk.log_softmax(x, temperature=temperature)
    assert_close(got_log, want_log, rtol=0, atol=log_softmax_atol(x, temperature))
    for row in x.reshape(-1, x.shape[-1]):
        # Top-p at 0.5 keeps the tokens whose preceding mass (rank order) is below 1/2.
        p = oracle.softmax(row, temperature)
        ranked = oracle.order(row)
        before = np.cumsum(p[ranked]) - p[ranked]
        if np.min(np.abs(before[1:] - 0.5), initial=1.0) > 1e-4:
            kept = np.isfinite(lk.mask_top_p(row, 0.5, temperature=temperature))
            np.testing.assert_array_equal(np.flatnonzero(kept), np.sort(ranked[before < 0.5]))
        cum = np.cumsum(p)
        for u in (0.1, 0.5, 0.9):
            if np.min(np.abs(cum - u)) > 1e-4:
                want_tok = int(np.flatnonzero(cum > u)[0])
                assert lk.sample(row, temperature=temperature, uniforms=u) == want_tok
        params = lk.SamplingParams(temperature=temperature, logprobs=1, logprobs_mode="processed")
        res = lk.sample_batch(row[None], params)
        tok = int(res.tokens[0])
        assert p[tok] > 0
        assert abs(float(res.logprobs[0]) - oracle.log_softmax(row, temperature)[tok]) <= (
            log_softmax_atol(row, temperature)
        )


@given(
    x=S.logits(masks=True, elements=st.floats(width=32, allow_nan=False, allow_infinity=False)),
    temperature=st.sampled_from([1.0, 0.5, 1e-3, 1e-30]),
)
def test_log_softmax_of_finite_logits_is_finite_over_the_whole_float32_range(x, temperature):
    """(z - z_max) / T can leave the float32 range (logits up to 6.8e38 apart, or a small T):
    such log-probabilities saturate at the most negative float32; only masked tokens are -inf."""
    got = lk.log_softmax(x, temperature=temperature)
    finite = np.isfinite(x)
    assert np.isfinite(got[finite]).all()
    assert np.isneginf(got[~finite]).all()
    big = float(np.finfo(np.float32).max)
    with np.errstate(over="ignore", invalid="ignore"):
        z = oracle.f64(x) / temperature
        want = np.maximum(z - z.max(axis=-1, keepdims=True), -big)
    # Far below the maximum the log-softmax is (z - z_max) - log(mass of the maxima) ~ z - z_max.
    far = finite & (want < -1e30)
    np.testing.assert_allclose(got[far], want[far].astype(np.float32), rtol=1e-6)
    if temperature == 1.0:  # logprobs() measures at T = 1
        v = x.shape[-1]
        lp = lk.logprobs(x, np.arange(v) if x.ndim == 1 else [np.arange(v)] * x.shape[0])
        assert np.isfinite(np.asarray(lp.token_logprobs)[finite]).all()
        assert np.isneginf(np.asarray(lp.token_logprobs)[~finite]).all()
