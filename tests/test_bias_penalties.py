"""apply_logit_bias and apply_penalties against the float64 oracle."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import logitkit as lk
import oracle
import strategies as S
from checks import F32_EPS, assert_close, assert_float32_like, check_out_forms, same_bits

repetition_penalties = st.one_of(st.just(1.0), st.floats(0.5, 2.0), st.sampled_from([0.8, 1.3]))
additive_penalties = st.one_of(st.just(0.0), st.floats(-2.0, 2.0))


def bias_atol(ref, bias):
    """Rounding of float32(x + b): a couple of float32 ulps of |x| + |b|."""
    mag = np.abs(oracle.f64(ref)).copy()
    for t, b in bias.items():
        if np.isfinite(b):
            mag[t] += abs(b)
    return 4 * F32_EPS * mag


@given(data=st.data(), inp=S.row_inputs())
def test_bias_one_row_matches_oracle(data, inp):
    bias = data.draw(S.biases(inp.ref.shape[-1]), label="bias")
    kept_bias = copy.deepcopy(bias)
    assume_not_all_banned(inp.ref, bias)
    got = lk.apply_logit_bias(inp.array, bias, **inp.kw)
    assert_float32_like(got, inp.ref.shape)
    want = oracle.apply_logit_bias(inp.ref, bias)
    assert_close(got, want, rtol=0, atol=bias_atol(inp.ref, bias))
    untouched = np.setdiff1d(np.arange(inp.ref.shape[-1]), list(bias))
    assert same_bits(got[untouched], inp.ref[untouched])
    assert bias == kept_bias


def assume_not_all_banned(ref, bias):
    rows = np.atleast_2d(ref)
    banned = [t for t, b in bias.items() if b == -np.inf]
    for r in rows:
        alive = np.isfinite(r)
        alive[banned] = False
        assume(alive.any())


@given(data=st.data(), inp=S.batch_inputs())
def test_bias_per_row_dicts_match_oracle(data, inp):
    b, v = inp.ref.shape
    biases = [data.draw(S.biases(v), label=f"bias[{r}]") for r in range(b)]
    for r in range(b):
        assume_not_all_banned(inp.ref[r], biases[r])
    got = lk.apply_logit_bias(inp.array, biases, **inp.kw)
    assert_float32_like(got, (b, v))
    for r in range(b):
        want = oracle.apply_logit_bias(inp.ref[r], biases[r])
        assert_close(got[r], want, rtol=0, atol=bias_atol(inp.ref[r], biases[r]))
        assert same_bits(got[r], lk.apply_logit_bias(inp.ref[r], biases[r]))


@given(data=st.data(), x=S.batches())
def test_one_dict_applies_to_every_row(data, x):
    bias = data.draw(S.biases(x.shape[-1]), label="bias")
    assume_not_all_banned(x, bias)
    got = lk.apply_logit_bias(x, bias)
    for r in range(x.shape[0]):
        assert same_bits(got[r], lk.apply_logit_bias(x[r], bias))


@given(x=S.logits())
def test_empty_bias_is_identity(x):
    n = 1 if x.ndim == 1 else x.shape[0]
    assert same_bits(lk.apply_logit_bias(x, {}), x)
    if x.ndim == 2:
        assert same_bits(lk.apply_logit_bias(x, [{}] * n), x)


def test_neg_inf_bias_bans_the_token():
    x = np.asarray([1.0, 2.0, 3.0], dtype=np.float32)
    got = lk.apply_logit_bias(x, {2: -np.inf, 0: 0.5})
    np.testing.assert_array_equal(got, [1.5, 2.0, -np.inf])
    assert lk.argmax(got) == 1


@given(data=st.data(), x=S.logits())
def test_bias_out_forms(data, x):
    bias = data.draw(S.biases(x.shape[-1]), label="bias")
    assume_not_all_banned(x, bias)
    check_out_forms(lk.apply_logit_bias, x, bias=bias)


# ---------------------------------------------------------------------------------------------
# Penalties


@st.composite
def penalty_case(draw, batch: bool):
    inp = draw(S.batch_inputs() if batch else S.row_inputs())
    v = inp.ref.shape[-1]
    n = inp.ref.shape[0] if batch else None
    if batch:
        prompt = [draw(S.token_lists(v)) for _ in range(n)]
        output = [draw(S.token_lists(v)) for _ in range(n)]
    else:
        prompt, output = draw(S.token_lists(v)), draw(S.token_lists(v))
    params = {}
    for name, strat in (
        ("repetition_penalty", repetition_penalties),
        ("presence_penalty", additive_penalties),
        ("frequency_penalty", additive_penalties),
    ):
        if batch and draw(st.booleans()):
            params[name] = np.asarray([draw(strat) for _ in range(n)])
        else:
            params[name] = draw(strat)
    return inp, prompt, output, params


def row_params(params, r):
    return {k: (float(v[r]) if np.ndim(v) else v) for k, v in params.items()}


def check_penalised_row(got, ref, prompt, output, params):
    want = oracle.apply_penalties(ref, prompt, output, **params)
    mag = oracle.penalty_magnitude(ref, prompt, output, **params)
    assert_close(got, want, rtol=0, atol=8 * F32_EPS * mag)
    untouched = np.setdiff1d(np.arange(ref.shape[-1]), np.concatenate([prompt, output]))
    assert same_bits(got[untouched], ref[untouched])


@given(case=penalty_case(batch=False))
def test_penalties_one_row_match_oracle(case):
    inp, prompt, output, params = case
    saved = (prompt.copy(), output.copy())
    got = lk.apply_penalties(
        inp.array, prompt_tokens=prompt, output_tokens=output, **params, **inp.kw
    )
    assert_float32_like(got, inp.ref.shape)
    check_penalised_row(got, inp.ref, prompt, output, params)
    np.testing.assert_array_equal(prompt, saved[0])
    np.testing.assert_array_equal(output, saved[1])


@given(case=penalty_case(batch=True))
def test_penalties_batch_match_oracle(case):
    inp, prompt, output, params = case
    got = lk.apply_penalties(
        inp.array, prompt_tokens=prompt, output_tokens=output, **params, **inp.kw
    )
    assert_float32_like(got, inp.ref.shape)
    for r in range(inp.ref.shape[0]):
        p = row_params(params, r)
        check_penalised_row(got[r], inp.ref[r], prompt[r], output[r], p)
        alone = lk.apply_penalties(
            inp.ref[r], prompt_tokens=prompt[r], output_tokens=output[r], **p
        )
        assert same_bits(got[r], alone)


@given(case=penalty_case(batch=True), data=st.data())
def test_penalties_with_logit_bias_are_bias_then_penalties(case, data):
    """``logit_bias=`` is the pipeline's order in one call: the bias, then the penalties."""
    inp, prompt, output, params = case
    v = inp.ref.shape[-1]
    bias = [data.draw(S.biases(v), label=f"bias[{r}]") for r in range(inp.ref.shape[0])]
    for r, b in enumerate(bias):
        assume_not_all_banned(inp.ref[r], b)
    got = lk.apply_penalties(
        inp.array, prompt_tokens=prompt, output_tokens=output, logit_bias=bias, **params, **inp.kw
    )
    biased = lk.apply_logit_bias(inp.array, bias, **inp.kw)
    want = lk.apply_penalties(biased, prompt_tokens=prompt, output_tokens=output, **params)
    assert same_bits(got, want)
    for r in range(inp.ref.shape[0]):
        ref = oracle.apply_penalties(
            oracle.apply_logit_bias(inp.ref[r], bias[r]),
            prompt[r],
            output[r],
            **row_params(params, r),
        )
        mag = oracle.penalty_magnitude(
            np.abs(oracle.f64(inp.ref[r])) + bias_atol(inp.ref[r], bias[r]) / (4 * F32_EPS),
            prompt[r],
            output[r],
            **row_params(params, r),
        )
        assert_close(got[r], ref, rtol=0, atol=8 * F32_EPS * mag)


@given(case=penalty_case(batch=True))
def test_token_lists_as_python_lists(case):
    inp, prompt, output, params = case
    want = lk.apply_penalties(inp.ref, prompt_tokens=prompt, output_tokens=output, **params)
    got = lk.apply_penalties(
        inp.ref,
        prompt_tokens=[p.tolist() for p in prompt],
        output_tokens=[o.tolist() for o in output],
        **params,
    )
    assert same_bits(got, want)


@given(data=st.data(), inp=S.inputs())
def test_neutral_penalties_are_bit_identical(data, inp):
    v = inp.ref.shape[-1]
    ref = inp.ref
    if inp.kind == "float32":
        x = inp.array.copy()
        x[..., :: max(1, v // 3)] = np.where(
            np.isfinite(x[..., :: max(1, v // 3)]), np.float32(-0.0), x[..., :: max(1, v // 3)]
        )
        arr, ref = x, x
    else:
        arr = inp.array
    if ref.ndim == 1:
        prompt, output = data.draw(S.token_lists(v)), data.draw(S.token_lists(v))
    else:
        prompt = [data.draw(S.token_lists(v)) for _ in range(ref.shape[0])]
        output = [data.draw(S.token_lists(v)) for _ in range(ref.shape[0])]
    got = lk.apply_penalties(arr, prompt_tokens=prompt, output_tokens=output, **inp.kw)
    assert same_bits(got, ref)
    got = lk.apply_penalties(
        arr,
        prompt_tokens=prompt,
        output_tokens=output,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        **inp.kw,
    )
    assert same_bits(got, ref)
    assert same_bits(lk.apply_penalties(arr, **inp.kw), ref)


def test_neutral_penalties_keep_negative_zero():
    x = np.asarray([-0.0, 0.0, -0.0, 1.0], dtype=np.float32)
    got = lk.apply_penalties(x, prompt_tokens=np.asarray([0, 1]), output_tokens=np.asarray([2, 2]))
    assert same_bits(got, x)
    assert np.signbit(got[0]) and np.signbit(got[2]) and not np.signbit(got[1])


@pytest.mark.parametrize(
    ("params", "want"),
    [
        pytest.param(dict(repetition_penalty=2.0), [1.0, -4.0, 3.0, 0.0], id="repetition"),
        pytest.param(dict(repetition_penalty=0.5), [4.0, -1.0, 3.0, 0.0], id="repetition-below-1"),
        pytest.param(dict(frequency_penalty=0.5), [1.0, -2.0, 3.0, 0.0], id="frequency"),
        pytest.param(dict(presence_penalty=0.25), [1.75, -2.0, 3.0, 0.0], id="presence"),
        pytest.param(
            dict(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25),
            [-0.25, -4.0, 3.0, 0.0],
            id="all-three",
        ),
    ],
)
def test_penalties_known_values(params, want):
    x = np.asarray([2.0, -2.0, 3.0, 0.0], dtype=np.float32)
    got = lk.apply_penalties(
        x, prompt_tokens=np.asarray([1]), output_tokens=np.asarray([0, 0]), **params
    )
    np.testing.assert_array_equal(got, np.asarray(want, dtype=np.float32))


def test_repetition_counts_each_distinct_token_once():
    x = np.asarray([8.0, -8.0], dtype=np.float32)
    got = lk.apply_penalties(
        x,
        prompt_tokens=np.asarray([0, 0, 1]),
        output_tokens=np.asarray([0, 1, 1, 1]),
        repetition_penalty=2.0,
    )
    np.testing.assert_array_equal(got, [4.0, -16.0])


def test_frequency_and_presence_ignore_the_prompt():
    x = np.asarray([1.0, 1.0], dtype=np.float32)
    got = lk.apply_penalties(
        x, prompt_tokens=np.asarray([0, 0, 0]), frequency_penalty=1.0, presence_penalty=1.0
    )
    np.testing.assert_array_equal(got, x)


def test_masked_tokens_stay_masked():
    x = np.asarray([-np.inf, 1.0], dtype=np.float32)
    got = lk.apply_penalties(
        x,
        output_tokens=np.asarray([0, 0]),
        repetition_penalty=1.5,
        frequency_penalty=-3.0,
        presence_penalty=-1.0,
    )
    np.testing.assert_array_equal(got, [-np.inf, 1.0])


F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize(
    ("fn", "x", "kw", "want"),
    [
        (lk.apply_logit_bias, [3e38, 1.0], {"bias": {0: 3e38}}, [F32_MAX, 1.0]),
        (lk.apply_logit_bias, [-3e38, 1.0], {"bias": {0: -1e300}}, [-F32_MAX, 1.0]),
        (lk.apply_logit_bias, [-np.inf, 1.0], {"bias": {0: 1e300}}, [-np.inf, 1.0]),
        (lk.apply_logit_bias, [2.0, 1.0], {"bias": {0: -np.inf}}, [-np.inf, 1.0]),
        (
            lk.apply_penalties,
            [-np.inf, 1.0],
            {"output_tokens": [0, 0], "frequency_penalty": -1.7e308},
            [-np.inf, 1.0],
        ),
        (
            lk.apply_penalties,
            [5.0, 1.0],
            {"output_tokens": [0, 0], "frequency_penalty": 1.7e308, "presence_penalty": 1e308},
            [-F32_MAX, 1.0],
        ),
        (
            lk.apply_penalties,
            [-3e38, 1.0],
            {"output_tokens": [0], "repetition_penalty": 1e10},
            [-F32_MAX, 1.0],
        ),
        (
            lk.apply_penalties,
            [2.0, 1.0],
            {"output_tokens": [0], "presence_penalty": -1e300},
            [F32_MAX, 1.0],
        ),
    ],
)
def test_results_beyond_float32_saturate(fn, x, kw, want):
    """Valid (finite) but huge parameters never turn a logit into NaN or +inf, and never unmask."""
    a = np.asarray(x, dtype=np.float32)
    got = fn(a, **kw) if fn is lk.apply_penalties else fn(a, kw["bias"])
    np.testing.assert_array_equal(got, np.asarray(want, dtype=np.float32))
    ref = (
        oracle.apply_penalties(a, **kw)
        if fn is lk.apply_penalties
        else oracle.apply_logit_bias(a, kw["bias"])
    )
    np.testing.assert_array_equal(got, ref)


@given(case=penalty_case(batch=False))
def test_penalties_out_forms(case):
    inp, prompt, output, params = case
    check_out_forms(
        lk.apply_penalties, inp.ref.copy(), prompt_tokens=prompt, output_tokens=output, **params
    )


@given(inp=S.inputs())
def test_inputs_are_not_modified(inp):
    before = np.array(inp.array, copy=True)
    v = inp.ref.shape[-1]
    tokens = np.arange(v, dtype=np.int64)
    lists = tokens if inp.ref.ndim == 1 else [tokens] * inp.ref.shape[0]
    lk.apply_penalties(
        inp.array,
        prompt_tokens=lists,
        output_tokens=lists,
        repetition_penalty=1.7,
        presence_penalty=0.3,
        frequency_penalty=0.4,
        **inp.kw,
    )
    lk.apply_logit_bias(inp.array, {0: 1.0}, **inp.kw)
    np.testing.assert_array_equal(np.asarray(inp.array), before)
    np.testing.assert_array_equal(tokens, np.arange(v))


@pytest.mark.parametrize("shape", [(50,), (3, 50)])
def test_in_place_equals_a_new_array(shape):
    # apply_penalties(x, out=x) (the decoding-loop form) gives the bits of the call that
    # returns a new array, with float or integer penalties, a dict bias or none.
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., 7] = -np.inf
    hist = rng.integers(0, 50, size=20)
    hists = hist if len(shape) == 1 else [hist] * shape[0]
    for pens, bias in (
        ((1.3, 0.5, 0.25), {3: 1.5, 7: 2.0, 9: -np.inf}),
        ((1.0, 0.0, 0.0), None),
        ((2, 1, 0), {4: -1.0}),
    ):
        kw = dict(
            prompt_tokens=hists,
            output_tokens=hists,
            repetition_penalty=pens[0],
            presence_penalty=pens[1],
            frequency_penalty=pens[2],
            logit_bias=bias,
        )
        want = lk.apply_penalties(x, **kw)
        y = x.copy()
        assert lk.apply_penalties(y, out=y, **kw) is y
        np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))
