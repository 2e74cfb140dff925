"""Every bad input named by the contract raises ValueError or TypeError with a useful message."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import logitkit as lk

V = 4
X1 = np.asarray([0.5, 1.0, -1.0, 2.0], dtype=np.float32)
X2 = np.asarray([[0.5, 1.0, -1.0, 2.0], [3.0, -2.0, 0.0, 1.5]], dtype=np.float32)
T1 = np.asarray([0, 1], dtype=np.int64)
T2 = [T1, T1]
U2 = np.asarray([0.1, 0.2])


def with_value(x, index, value):
    y = x.copy()
    y[index] = value
    return y


def tokens_for(x):
    return T1 if np.ndim(x) == 1 else [T1] * np.shape(x)[0]


# Every function that reads logits, as a call on one logits argument.
READERS = {
    "softmax": lambda x: lk.softmax(x),
    "log_softmax": lambda x: lk.log_softmax(x),
    "argmax": lambda x: lk.argmax(x),
    "top_k": lambda x: lk.top_k(x, 1),
    "mask_top_k": lambda x: lk.mask_top_k(x, 1),
    "mask_top_p": lambda x: lk.mask_top_p(x, 0.9),
    "mask_min_p": lambda x: lk.mask_min_p(x, 0.1),
    "apply_logit_bias": lambda x: lk.apply_logit_bias(x, {}),
    "apply_penalties": lambda x: lk.apply_penalties(x, repetition_penalty=1.2),
    "sample": lambda x: lk.sample(x, seed=0),
    "sample-uniforms": lambda x: lk.sample(
        x, uniforms=np.full(np.shape(x)[0], 0.5) if np.ndim(x) == 2 else 0.5
    ),
    "logprobs": lambda x: lk.logprobs(x, tokens_for(x), top_n=1),
}

BAD_LOGITS = [
    ("nan-1d", with_value(X1, 2, np.nan), ValueError, ("logits", "index 2")),
    ("posinf-1d", with_value(X1, 3, np.inf), ValueError, ("logits", "index 3")),
    ("nan-2d", with_value(X2, (1, 3), np.nan), ValueError, ("logits", "row 1", "index 3")),
    ("posinf-2d", with_value(X2, (1, 0), np.inf), ValueError, ("logits", "row 1", "index 0")),
    ("nan-row-0", with_value(X2, (0, 1), np.nan), ValueError, ("logits", "row 0", "index 1")),
    ("all-masked-1d", np.full(V, -np.inf, dtype=np.float32), ValueError, ("logits", "row 0")),
    ("all-masked-2d", with_value(X2, 1, -np.inf), ValueError, ("logits", "row 1")),
    (
        "nan-float16",
        with_value(X2, (1, 2), np.nan).astype(np.float16),
        ValueError,
        ("row 1", "index 2"),
    ),
    ("int32", X2.astype(np.int32), TypeError, "logits"),
    ("int64", X1.astype(np.int64), TypeError, "logits"),
    ("uint8", X1.astype(np.uint8), TypeError, "logits"),
    ("uint16-without-dtype", X1.astype(np.uint16), TypeError, "logits"),
    ("bool", X1 > 0, TypeError, "logits"),
    ("complex64", X1.astype(np.complex64), TypeError, "logits"),
    ("complex128", X2.astype(np.complex128), TypeError, "logits"),
    ("object", X1.astype(object), TypeError, "logits"),
    ("ndim-0", np.float32(1.0), ValueError, "logits"),
    ("ndim-3", np.zeros((2, 2, V), dtype=np.float32), ValueError, "logits"),
    ("empty-1d", np.zeros(0, dtype=np.float32), ValueError, "logits"),
    ("empty-2d", np.zeros((2, 0), dtype=np.float32), ValueError, "logits"),
]

LOGITS_CASES = [
    pytest.param((lambda fn=fn, x=x: fn(x)), exc, msg, id=f"{name}-{case}")
    for case, x, exc, msg in BAD_LOGITS
    for name, fn in READERS.items()
    if not (name == "logprobs" and case.startswith(("ndim", "empty")))
]

RO = X2.copy()
RO.flags.writeable = False
BUF = np.zeros(2 * V + 2, dtype=np.float32)
OVERLAP_IN = BUF[: 2 * V].reshape(2, V)
OVERLAP_OUT = BUF[2:].reshape(2, V)
BIG = np.zeros((3, V), dtype=np.float32)

OUT_WRITERS = {
    "softmax": lambda x, out: lk.softmax(x, out=out),
    "log_softmax": lambda x, out: lk.log_softmax(x, out=out),
    "mask_top_k": lambda x, out: lk.mask_top_k(x, 2, out=out),
    "mask_top_p": lambda x, out: lk.mask_top_p(x, 0.9, out=out),
    "mask_min_p": lambda x, out: lk.mask_min_p(x, 0.1, out=out),
    "apply_logit_bias": lambda x, out: lk.apply_logit_bias(x, {0: 1.0}, out=out),
    "apply_penalties": lambda x, out: lk.apply_penalties(x, presence_penalty=1.0, out=out),
}

BAD_OUT = [
    ("float64", lambda: (X2, np.zeros((2, V))), (TypeError, ValueError)),
    ("float16", lambda: (X2, np.zeros((2, V), dtype=np.float16)), (TypeError, ValueError)),
    ("int32", lambda: (X2, np.zeros((2, V), dtype=np.int32)), (TypeError, ValueError)),
    ("wrong-shape", lambda: (X2, np.zeros((2, V + 1), dtype=np.float32)), ValueError),
    ("wrong-batch", lambda: (X2, np.zeros((3, V), dtype=np.float32)), ValueError),
    ("one-row-for-batch", lambda: (X2, np.zeros(V, dtype=np.float32)), ValueError),
    ("batch-for-one-row", lambda: (X1, np.zeros((1, V), dtype=np.float32)), ValueError),
    ("read-only", lambda: (X2, RO), ValueError),
    ("read-only-in-place", lambda: (RO, RO), ValueError),
    ("partial-overlap", lambda: (OVERLAP_IN, OVERLAP_OUT), ValueError),
    ("list", lambda: (X1, [0.0] * V), (TypeError, ValueError)),
]

OUT_CASES = [
    pytest.param((lambda fn=fn, make=make: fn(*make())), exc, "out", id=f"{name}-out-{case}")
    for case, make, exc in BAD_OUT
    for name, fn in OUT_WRITERS.items()
]

ANY = (TypeError, ValueError)
MASKED_ROW_1 = with_value(X2, (1, 0), -np.inf)


def P(call, exc, msg, id):
    return pytest.param(call, exc, msg, id=id)


PARAM_CASES = [
    # temperature
    *[
        P(
            lambda t=t: lk.sample(X1, temperature=t, uniforms=0.5),
            ValueError,
            "temperature",
            f"sample-temperature-{t}",
        )
        for t in (-1.0, -1e-9, np.nan, np.inf, -np.inf)
    ],
    *[
        P(
            lambda f=f, t=t: f(X2, temperature=t),
            ValueError,
            "temperature",
            f"{f.__name__}-temperature-{t}",
        )
        for f in (lk.softmax, lk.log_softmax)
        for t in (0.0, -1.0, np.nan, np.inf)
    ],
    *[
        P(
            lambda f=f, t=t: f(X2, 0.5, temperature=t),
            ValueError,
            "temperature",
            f"{f.__name__}-temperature-{t}",
        )
        for f in (lk.mask_top_p, lk.mask_min_p)
        for t in (0.0, -1.0, np.nan, np.inf)
    ],
    # top_p / min_p
    *[
        P(
            lambda v=v: lk.sample(X1, top_p=v, uniforms=0.5),
            ValueError,
            "top_p",
            f"sample-top_p-{v}",
        )
        for v in (-0.1, 1.1, np.nan, np.inf)
    ],
    *[
        P(lambda v=v: lk.mask_top_p(X1, v), ValueError, "top_p", f"mask_top_p-top_p-{v}")
        for v in (-0.1, 1.1, np.nan)
    ],
    *[
        P(
            lambda v=v: lk.sample(X1, min_p=v, uniforms=0.5),
            ValueError,
            "min_p",
            f"sample-min_p-{v}",
        )
        for v in (-0.1, 1.1, np.nan, np.inf)
    ],
    *[
        P(lambda v=v: lk.mask_min_p(X1, v), ValueError, "min_p", f"mask_min_p-min_p-{v}")
        for v in (-0.1, 1.1, np.nan)
    ],
    # min_keep
    *[
        P(
            lambda v=v: lk.sample(X1, min_keep=v, uniforms=0.5),
            ValueError,
            "min_keep",
            f"sample-min_keep-{v}",
        )
        for v in (0, -1)
    ],
    *[
        P(
            lambda f=f, v=v: f(X1, 0.5, min_keep=v),
            ValueError,
            "min_keep",
            f"{f.__name__}-min_keep-{v}",
        )
        for f in (lk.mask_top_p, lk.mask_min_p)
        for v in (0, -3)
    ],
    P(lambda: lk.sample(X1, top_k=1.5, uniforms=0.5), ANY, "top_k", "sample-top_k-float"),
    # penalties
    *[
        P(
            lambda v=v: lk.apply_penalties(X1, repetition_penalty=v),
            ValueError,
            "repetition_penalty",
            f"repetition_penalty-{v}",
        )
        for v in (0.0, -1.0, np.inf, np.nan)
    ],
    *[
        P(lambda n=n, v=v: lk.apply_penalties(X1, **{n: v}), ValueError, n, f"{n}-{v}")
        for n in ("presence_penalty", "frequency_penalty")
        for v in (np.nan, np.inf, -np.inf)
    ],
    # logit bias
    *[
        P(lambda b=b: lk.apply_logit_bias(X1, b), ValueError, "bias", f"bias-{label}")
        for label, b in (
            ("nan", {0: np.nan}),
            ("posinf", {1: np.inf}),
            ("id-V", {V: 1.0}),
            ("id-negative", {-1: 1.0}),
            ("id-huge", {2**40: 1.0}),
        )
    ],
    P(lambda: lk.apply_logit_bias(X2, [{0: 1.0}]), ValueError, "bias", "bias-list-too-short"),
    P(lambda: lk.apply_logit_bias(X2, [{}, {}, {}]), ValueError, "bias", "bias-list-too-long"),
    P(lambda: lk.apply_logit_bias(X2, [{0: 1.0}, {V: 1.0}]), ValueError, "bias", "bias-row-1-id-V"),
    # seed / step
    *[
        P(lambda s=s: lk.sample(X1, seed=s), ValueError, "seed", f"sample-seed-{s}")
        for s in (-1, 2**64, 2**70)
    ],
    *[
        P(lambda s=s: lk.sample(X1, seed=0, step=s), ValueError, "step", f"sample-step-{s}")
        for s in (-1, 2**64)
    ],
    *[
        P(lambda s=s: lk.uniform(s, 0), ValueError, "seed", f"uniform-seed-{s}")
        for s in (-1, 2**64)
    ],
    *[
        P(lambda s=s: lk.uniform(0, s), ValueError, "step", f"uniform-step-{s}")
        for s in (-1, 2**64)
    ],
    P(lambda: lk.uniform(1.5, 0), TypeError, "seed", "uniform-seed-float"),
    P(lambda: lk.uniform(0, 2.0), TypeError, "step", "uniform-step-float"),
    P(lambda: lk.uniform("1", 0), TypeError, "seed", "uniform-seed-str"),
    # uniforms
    *[
        P(lambda u=u: lk.sample(X1, uniforms=u), ValueError, "uniforms", f"uniforms-{u}")
        for u in (1.0, -0.1, 1.5, np.nan, np.inf)
    ],
    P(
        lambda: lk.sample(X2, uniforms=np.asarray([0.1, 1.0])),
        ValueError,
        "uniforms",
        "uniforms-row-1-is-1",
    ),
    P(
        lambda: lk.sample(X2, uniforms=np.asarray([0.1])),
        ValueError,
        "uniforms",
        "uniforms-too-short",
    ),
    P(
        lambda: lk.sample(X2, uniforms=np.asarray([0.1, 0.2, 0.3])),
        ValueError,
        "uniforms",
        "uniforms-too-long",
    ),
    # order
    *[
        P(lambda o=o: lk.sample(X1, order=o, uniforms=0.5), ValueError, "order", f"order-{o!r}")
        for o in ("hf", "", "llama", "VLLM")
    ],
    # k / top_n
    *[P(lambda k=k: lk.top_k(X1, k), ValueError, "k", f"top_k-k-{k}") for k in (0, -1, V + 1)],
    P(lambda: lk.top_k(X1, 1.5), TypeError, "k", "top_k-k-float"),
    *[P(lambda k=k: lk.mask_top_k(X1, k), ValueError, "k", f"mask_top_k-k-{k}") for k in (0, -2)],
    *[
        P(lambda n=n: lk.logprobs(X1, T1, top_n=n), ValueError, "top_n", f"logprobs-top_n-{n}")
        for n in (-1, V + 1)
    ],
    # token ids
    *[
        P(lambda n=n, t=t: lk.apply_penalties(X1, **{n: np.asarray(t)}), ValueError, n, f"{n}-{t}")
        for n in ("prompt_tokens", "output_tokens")
        for t in ([V], [-1], [0, 2**40])
    ],
    *[
        P(
            lambda n=n: lk.apply_penalties(X2, **{n: [T1, np.asarray([V])]}),
            ValueError,
            n,
            f"{n}-row-1-out-of-range",
        )
        for n in ("prompt_tokens", "output_tokens")
    ],
    *[
        P(lambda n=n: lk.apply_penalties(X2, **{n: [T1]}), ValueError, n, f"{n}-too-few-rows")
        for n in ("prompt_tokens", "output_tokens")
    ],
    *[
        P(
            lambda n=n: lk.apply_penalties(X1, **{n: np.asarray([0.0, 1.0])}),
            TypeError,
            n,
            f"{n}-float-array",
        )
        for n in ("prompt_tokens", "output_tokens")
    ],
    *[
        P(lambda t=t: lk.logprobs(X1, np.asarray(t)), ValueError, "tokens", f"logprobs-tokens-{t}")
        for t in ([V], [-1])
    ],
    P(
        lambda: lk.logprobs(X2, [T1, np.asarray([V])]),
        ValueError,
        "tokens",
        "logprobs-tokens-row-1",
    ),
    P(lambda: lk.logprobs(X2, [T1]), ValueError, "tokens", "logprobs-tokens-too-few-rows"),
    # per-row parameter arrays of the wrong length
    *[
        P(
            lambda n=n, a=a: lk.sample(X2, **{n: a}, uniforms=U2),
            ValueError,
            n,
            f"sample-{n}-length-{len(a)}",
        )
        for n, a in (
            ("temperature", np.ones(3)),
            ("temperature", np.ones(1)),
            ("top_k", np.ones(3, dtype=np.int64)),
            ("top_p", np.full(1, 0.5)),
            ("min_p", np.full(3, 0.1)),
            ("min_keep", np.ones(3, dtype=np.int64)),
        )
    ],
    *[
        P(lambda n=n, a=a: lk.sample(X2, **{n: a}), ValueError, n, f"sample-{n}-length-{len(a)}")
        for n, a in (("seed", np.zeros(3, dtype=np.uint64)), ("step", np.zeros(1, dtype=np.uint64)))
    ],
    *[
        P(
            lambda n=n: lk.apply_penalties(X2, **{n: np.full(3, 1.5)}),
            ValueError,
            n,
            f"apply_penalties-{n}-length-3",
        )
        for n in ("repetition_penalty", "presence_penalty", "frequency_penalty")
    ],
    # per-row parameter arrays with a bad entry
    P(
        lambda: lk.sample(X2, temperature=np.asarray([1.0, -1.0]), uniforms=U2),
        ValueError,
        "temperature",
        "sample-temperature-row-1-negative",
    ),
    P(
        lambda: lk.sample(X2, top_p=np.asarray([0.5, 1.5]), uniforms=U2),
        ValueError,
        "top_p",
        "sample-top_p-row-1-above-1",
    ),
    P(
        lambda: lk.apply_penalties(X2, repetition_penalty=np.asarray([1.0, 0.0])),
        ValueError,
        "repetition_penalty",
        "apply_penalties-repetition_penalty-row-1-zero",
    ),
    # dtype
    P(lambda: lk.softmax(X1, dtype="float8"), ANY, "dtype", "softmax-dtype-unknown"),
    P(
        lambda: lk.sample(X1.astype(np.uint16), dtype="float8", seed=0),
        ANY,
        "dtype",
        "sample-dtype-unknown",
    ),
    # dtype="bfloat16" reads uint16 bits (or a bfloat16 array), nothing else
    P(lambda: lk.sample(X1, dtype="bfloat16", seed=0), TypeError, "logits", "sample-bf16-of-f32"),
    P(
        lambda: lk.argmax(X2.astype(np.float16), dtype="bfloat16"),
        TypeError,
        "logits",
        "argmax-bf16-of-f16",
    ),
    P(
        lambda: lk.softmax(X2.astype(np.int16), dtype="bfloat16"),
        TypeError,
        "logits",
        "softmax-bf16-of-int16",
    ),
    # ragged nested lists and other unreadable arrays name the parameter
    P(lambda: lk.softmax([[1.0, 2.0], [3.0]]), ValueError, "logits", "softmax-ragged-list"),
    P(
        lambda: lk.sample(X2, temperature=[[1.0], [2.0, 3.0]], seed=0),
        ValueError,
        "temperature",
        "sample-ragged-temperature",
    ),
    P(
        lambda: lk.sample(X2, uniforms=[[0.1], [0.2, 0.3]]),
        ValueError,
        "uniforms",
        "sample-ragged-uniforms",
    ),
    P(
        lambda: lk.apply_penalties(X2, repetition_penalty=[[1.0], [2.0, 3.0]]),
        ValueError,
        "repetition_penalty",
        "apply_penalties-ragged-penalty",
    ),
    P(
        lambda: lk.sample_batch(X2, lk.SamplingParams(), steps=[[1], [2, 3]]),
        ValueError,
        "steps",
        "sample_batch-ragged-steps",
    ),
    P(
        lambda: lk.sample_batch(X2, lk.SamplingParams(), token_bitmask=[[1], [2, 3]]),
        ValueError,
        "token_bitmask",
        "sample_batch-ragged-bitmask",
    ),
    P(lambda: lk.apply_logit_bias(X2, [1, 2]), TypeError, "bias", "apply_logit_bias-list-of-ints"),
    P(lambda: lk.logprobs(X1, None), TypeError, "tokens", "logprobs-tokens-none"),
    P(lambda: lk.sample(X2, seed=[1, -1]), ValueError, "seed", "sample-seed-list-negative"),
    P(lambda: lk.sample(X2, seed=[1, 2**64]), ValueError, "seed", "sample-seed-list-2**64"),
    # masks that empty a row before the draw
    P(
        lambda: lk.sample_batch(MASKED_ROW_1, lk.SamplingParams(allowed_token_ids=[0])),
        ValueError,
        "row 1",
        "sample_batch-allowed-ids-empty-row-1",
    ),
    P(
        lambda: lk.sample_batch(X2, lk.SamplingParams(logit_bias={t: -np.inf for t in range(V)})),
        ValueError,
        "row 0",
        "sample_batch-bias-bans-everything",
    ),
]

TABLE = LOGITS_CASES + OUT_CASES + PARAM_CASES


@pytest.mark.parametrize(("call", "exc", "msg"), TABLE)
def test_bad_input_raises(call, exc, msg):
    with pytest.raises(exc) as info:
        call()
    text = str(info.value)
    for part in (msg,) if isinstance(msg, str) else msg:
        assert part in text, f"{part!r} not in {text!r}"


def test_failed_out_is_left_unchanged_and_input_too():
    x = with_value(X2, (1, 2), np.nan)
    out = np.full((2, V), 5.0, dtype=np.float32)
    with pytest.raises(ValueError):
        lk.softmax(x, out=out)
    assert np.isnan(x[1, 2]) and x[0, 0] == 0.5


def test_integers_beyond_int64_mean_their_limit_or_are_named():
    x = np.asarray([0.5, 1.0, 0.0, 2.0], dtype=np.float32)
    xb = np.stack([x, x])
    for logits in (x, xb):
        for how in ({"seed": 7}, {"uniforms": 0.3 if logits.ndim == 1 else np.full(2, 0.3)}):
            off = lk.sample(logits, **how)
            for k in (2**63, 2**70, -(2**63) - 1):
                np.testing.assert_array_equal(lk.sample(logits, top_k=k, **how), off)
            keep_all = lk.sample(logits, top_p=0.0, min_keep=4, **how)
            huge = lk.sample(logits, top_p=0.0, min_keep=2**70, **how)
            np.testing.assert_array_equal(huge, keep_all)
    np.testing.assert_array_equal(
        lk.mask_top_p(x, 0.0, min_keep=2**70), lk.mask_top_p(x, 0.0, min_keep=4)
    )
    calls = {
        "temperature": [lambda: lk.sample(x, seed=1, temperature=10**400),
                        lambda: lk.softmax(x, temperature=10**400),
                        lambda: lk.log_softmax(x, temperature=10**400)],
        "top_p": [lambda: lk.mask_top_p(x, 10**400), lambda: lk.sample(x, seed=1, top_p=10**400)],
        "repetition_penalty": [lambda: lk.apply_penalties(x, repetition_penalty=10**400)],
        "presence_penalty": [lambda: lk.apply_penalties(x, presence_penalty=-(10**400))],
        "uniforms": [lambda: lk.sample(x, uniforms=10**400),
                     lambda: lk.sample(x, uniforms=-(10**400))],
    }  # fmt: skip
    for name, fs in calls.items():
        for f in fs:
            with pytest.raises(ValueError, match=name):
                f()


def test_per_row_integers_beyond_int64_mean_their_limit():
    x = np.asarray([[0.5, 1.0, 0.0, 2.0]] * 3, dtype=np.float32)
    u = np.asarray([0.1, 0.5, 0.95])
    off = lk.sample(x, uniforms=u)
    for ks in ([2**64] * 3, [2**63, 2**70, 0], np.full(3, 2**64 - 1, dtype=np.uint64)):
        np.testing.assert_array_equal(lk.sample(x, top_k=ks, uniforms=u), off)
    np.testing.assert_array_equal(
        lk.sample(x, top_k=np.asarray([2**63, 1, 2**64 - 1], dtype=np.uint64), uniforms=u),
        [off[0], 3, off[2]],
    )
    keep_all = lk.sample(x, top_p=0.0, min_keep=4, uniforms=u)
    for mk in ([2**64, 2**70, 4], np.full(3, 2**63, dtype=np.uint64)):
        np.testing.assert_array_equal(lk.sample(x, top_p=0.0, min_keep=mk, uniforms=u), keep_all)
    with pytest.raises(ValueError, match="min_keep"):
        lk.sample(x, min_keep=[1, 0, 2**64], uniforms=u)


# A parameter of the wrong type is a ValueError (the contract's rule for parameters) and a
# TypeError (Python's convention) at once: logitkit.ParameterTypeError.
WRONG_TYPES = [
    ("top_k", lambda: lk.sample(X1, top_k=1.5, seed=0)),
    ("top_k", lambda: lk.sample(X2, top_k=np.asarray([1.5, 2.0]), seed=0)),
    ("top_k", lambda: lk.sample(X1, top_k="3", seed=0)),
    ("min_keep", lambda: lk.sample(X1, min_keep=2.0, seed=0)),
    ("min_keep", lambda: lk.mask_top_p(X1, 0.5, min_keep=1.5)),
    ("temperature", lambda: lk.sample(X1, temperature="hot", seed=0)),
    ("temperature", lambda: lk.softmax(X1, temperature=None)),
    ("top_p", lambda: lk.mask_top_p(X1, "0.5")),
    ("min_p", lambda: lk.sample(X1, min_p=np.asarray(["0.1"]), seed=0)),
    ("seed", lambda: lk.sample(X1, seed=1.5)),
    ("seed", lambda: lk.uniform(1.5, 0)),
    ("step", lambda: lk.uniform(0, 2.0)),
    ("step", lambda: lk.sample(X1, seed=0, step=2.0)),
    ("uniforms", lambda: lk.sample(X1, uniforms="0.5")),
    ("k", lambda: lk.top_k(X1, 1.5)),
    ("k", lambda: lk.mask_top_k(X1, 2.0)),
    ("repetition_penalty", lambda: lk.apply_penalties(X1, repetition_penalty="1.1")),
    ("bias", lambda: lk.apply_logit_bias(X1, {1: "2.0"})),
    ("bias", lambda: lk.apply_logit_bias(X1, {1.5: 2.0})),
    ("dtype", lambda: lk.softmax(X1, dtype=np.array([1, 2]))),
    ("dtype", lambda: lk.sample(X1, dtype=np.array([1, 2]), seed=0)),
    ("dtype", lambda: lk.sample_batch(X2, lk.SamplingParams(), dtype=np.array([1, 2]))),
    ("dtype", lambda: lk.argmax(X1.view(np.uint16), dtype=np.dtype("float32"))),
    ("order", lambda: lk.sample(X1, order=np.array(["vllm"]), seed=0)),
]


@pytest.mark.parametrize(
    ("name", "call"), WRONG_TYPES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(WRONG_TYPES)]
)
def test_parameters_of_the_wrong_type_are_value_and_type_errors(name, call):
    with pytest.raises(lk.ParameterTypeError, match=name) as info:
        call()
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_wrong_logits_types_stay_plain_type_errors():
    with pytest.raises(TypeError) as info:
        lk.softmax(X1.astype(np.int32))
    assert not isinstance(info.value, ValueError)


@pytest.mark.parametrize("order", [None, 5, b"vllm", np.array(["vllm"]), np.array([1, 2])])
def test_order_of_the_wrong_type_is_named(order):
    x = np.asarray([[0.5, 1.0]], dtype=np.float32)
    for logits, how in ((x[0], {"seed": 1}), (x, {"seed": 1}), (x[0], {"uniforms": 0.5})):
        with pytest.raises((ValueError, TypeError), match="order"):
            lk.sample(logits, order=order, **how)


@pytest.mark.parametrize("n", [0, -1, 1025, 2**64, 10**30])
def test_thread_counts_out_of_range_are_named(n):
    before = lk.get_num_threads()
    with pytest.raises(ValueError, match="n: must be in"):
        lk.set_num_threads(n)
    assert lk.get_num_threads() == before


def test_token_ids_beyond_int64_are_out_of_range():
    x = np.asarray([0.5, 1.0, 0.0], dtype=np.float32)
    with pytest.raises(ValueError, match="tokens"):
        lk.logprobs(x, [2**63])
    with pytest.raises(ValueError, match="18446744073709551615"):
        lk.logprobs(x, np.array([2**64 - 1], dtype=np.uint64))
    with pytest.raises(ValueError, match="output_tokens"):
        lk.apply_penalties(x, output_tokens=[1, 2**70], repetition_penalty=1.1)
    with pytest.raises(ValueError, match="bias"):
        lk.apply_logit_bias(x, {2**63: 1.0})


def test_an_out_whose_elements_share_memory_is_refused():
    """No result can be written correctly into a view whose rows (or elements) overlap."""
    from numpy.lib.stride_tricks import as_strided

    base = np.zeros(8, dtype=np.float32)
    rows_alias = as_strided(base, shape=X2.shape, strides=(0, 4), writeable=True)
    half_overlap = as_strided(base, shape=X2.shape, strides=(8, 4), writeable=True)
    for out in (rows_alias, half_overlap):
        for call in (
            lambda o: lk.softmax(X2, out=o),
            lambda o: lk.mask_top_k(X2, 2, out=o),
            lambda o: lk.apply_penalties(X2, repetition_penalty=1.2, out=o),
        ):
            with pytest.raises(ValueError, match=r"^out: "):
                call(out)
    assert not base.any()
    # Interleaved strides whose elements are all distinct are written correctly.
    wide = np.zeros(16, dtype=np.float32)
    interleaved = as_strided(wide, shape=X2.shape, strides=(4, 8), writeable=True)
    np.testing.assert_array_equal(lk.softmax(X2, out=interleaved), lk.softmax(X2))


def test_seed_and_step_are_checked_when_uniforms_decide_the_draw():
    x = np.asarray([[0.5, 1.0], [1.0, 0.5]], dtype=np.float32)
    u = np.asarray([0.1, 0.9])
    for kw in ({"seed": -1}, {"seed": 2**64}, {"step": -5}, {"seed": np.array([1, 2, 3])}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            lk.sample(x, uniforms=u, **kw)
    for kw in ({"seed": "abc"}, {"step": 1.5}):
        with pytest.raises(lk.ParameterTypeError, match=next(iter(kw))):
            lk.sample(x, uniforms=u, **kw)
    with pytest.raises(ValueError, match="seed"):
        lk.sample(x[0], seed=-1, uniforms=0.5)
    valid = lk.sample(x, uniforms=u, seed=np.array([1, 2], dtype=np.uint64), step=3)
    np.testing.assert_array_equal(valid, lk.sample(x, uniforms=u))


def test_zero_dimensional_integer_seeds_are_integers():
    x = np.asarray([0.5, 1.0, 0.0], dtype=np.float32)
    want = lk.sample(x, seed=5, step=2)
    for seed in (np.array(5, np.uint64), np.array(5), np.uint64(5), np.int8(5)):
        assert lk.sample(x, seed=seed, step=2) == want


def test_bools_are_not_token_ids():
    x = np.asarray([0.5, 1.0, 0.0], dtype=np.float32)
    with pytest.raises(TypeError, match=r"^tokens: "):
        lk.logprobs(x, [True])
    with pytest.raises(TypeError, match=r"^output_tokens: "):
        lk.apply_penalties(x, output_tokens=[0, False], repetition_penalty=1.1)
    with pytest.raises(TypeError, match=r"^prompt_tokens: "):
        lk.sample_batch(x[None], lk.SamplingParams(), prompt_tokens=[[True]])
    with pytest.raises(TypeError, match=r"^tokens: "):
        lk.logprobs(x, np.array([True]))
    with pytest.raises(TypeError, match="bias"):
        lk.apply_logit_bias(x, {True: 1.0})
    with pytest.raises(TypeError, match="bias"):
        lk.apply_logit_bias(x, {1: True})


@pytest.mark.parametrize("bool_", [True, np.bool_(False)])
@pytest.mark.parametrize(
    "name", ["temperature", "top_k", "top_p", "min_p", "min_keep", "seed", "step", "uniforms"]
)
def test_a_bool_in_a_per_row_list_is_refused(name, bool_):
    # As a scalar bool and a bool array are: NumPy alone would read [True, 0.5] as [1.0, 0.5].
    x = np.zeros((2, 3), dtype=np.float32)
    ok = {"uniforms": 0.5, "top_p": 0.5, "min_p": 0.5}.get(name, 1)
    for per_row in ([bool_, ok], (ok, bool_)):
        with pytest.raises(lk.ParameterTypeError, match=rf"^{name}: must hold .*got a bool"):
            lk.sample(x, **{name: per_row})
    lk.sample(x, **{name: [ok, ok]})
    with pytest.raises(lk.ParameterTypeError, match=r"^steps: must hold .*got a bool"):
        lk.sample_batch(x, lk.SamplingParams(), steps=[1, bool_])


@pytest.mark.parametrize("value", [True, np.bool_(True), np.bool_(False)])
def test_a_bool_bias_value_is_refused_in_every_function(value):
    x = np.asarray([0.5, 1.0, 0.0], dtype=np.float32)
    with pytest.raises(lk.ParameterTypeError, match=r"^bias: value for token 1 is a bool"):
        lk.apply_logit_bias(x, {1: value})
    with pytest.raises(lk.ParameterTypeError, match=r"^logit_bias: value for token 1 is a bool"):
        lk.apply_penalties(x, logit_bias={1: value})
    inplace = x.copy()
    with pytest.raises(lk.ParameterTypeError, match=r"^logit_bias: "):
        lk.apply_penalties(inplace, logit_bias={1: value}, out=inplace)
    np.testing.assert_array_equal(inplace, x)
    with pytest.raises(ValueError, match="logit_bias"):
        lk.SamplingParams(logit_bias={1: value})


def test_apply_penalties_names_its_logit_bias_parameter():
    x = np.asarray([0.5, 1.0, 0.0], dtype=np.float32)
    bad = [
        ("x", TypeError),
        ({9: 1.0}, ValueError),
        ({0: float("nan")}, ValueError),
        ({0: float("inf")}, ValueError),
        ({0: "a"}, TypeError),
        ({"a": 1.0}, TypeError),
    ]
    for bias, error in bad:
        with pytest.raises(error, match=r"^logit_bias: "):
            lk.apply_penalties(x, logit_bias=bias)
        inplace = x.copy()
        with pytest.raises(error, match=r"^logit_bias: "):
            lk.apply_penalties(inplace, logit_bias=bias, out=inplace)
        with pytest.raises(error, match=r"^bias: "):
            lk.apply_logit_bias(x, bias)
    with pytest.raises(ValueError, match=r"^logit_bias: has 1 dicts for 2 rows"):
        lk.apply_penalties(np.stack([x, x]), logit_bias=[{0: 1.0}])


def test_zero_dimensional_arrays_are_scalars_in_every_function():
    x = np.asarray([[0.5, 1.0, -1.0, 2.0]], dtype=np.float32)
    a = np.array
    pairs = [
        (lambda v: lk.softmax(x, temperature=v), 0.5, a(0.5)),
        (lambda v: lk.log_softmax(x, temperature=v), 0.5, a(0.5, np.float32)),
        (lambda v: lk.mask_top_p(x, v), 0.5, a(0.5)),
        (lambda v: lk.mask_top_p(x, 0.1, min_keep=v), 2, a(2)),
        (lambda v: lk.mask_min_p(x, v), 0.1, a(0.1)),
        (lambda v: lk.mask_top_k(x, v), 2, a(2, np.uint8)),
        (lambda v: lk.top_k(x, v).indices, 2, a(2)),
        (lambda v: lk.logprobs(x, [[0]], top_n=v).top_ids, 2, a(2)),
        (lambda v: lk.sample(x, temperature=v, seed=1), 0.5, a(0.5)),
        (lambda v: lk.sample(x, top_k=v, seed=1), 2, a(2)),
    ]
    for f, scalar, zero_d in pairs:
        np.testing.assert_array_equal(f(zero_d), f(scalar))
    with pytest.raises(lk.ParameterTypeError, match=r"^k: "):
        lk.top_k(x, a(True))
    with pytest.raises(lk.ParameterTypeError, match=r"^k: "):
        lk.top_k(x, a(2.0))
    with pytest.raises(lk.ParameterTypeError, match=r"^temperature: "):
        lk.softmax(x, temperature=a("a"))


def test_zero_dimensional_arrays_are_scalars_in_sampling_params():
    a = np.array
    fields = {
        "temperature": (0.5, a(0.5)),
        "top_k": (3, a(3, np.int32)),
        "top_p": (0.9, a(0.9, np.float32)),
        "min_p": (0.1, a(0.1)),
        "min_keep": (2, a(2)),
        "repetition_penalty": (1.1, a(1.1)),
        "presence_penalty": (0.5, a(0.5)),
        "frequency_penalty": (1, a(1)),
        "min_tokens": (4, a(4, np.uint16)),
        "seed": (7, a(7, np.uint64)),
        "logprobs": (2, a(2)),
    }
    for name, (scalar, zero_d) in fields.items():
        got = lk.SamplingParams(**{name: zero_d})
        assert got == lk.SamplingParams(**{name: zero_d[()]}), name
        assert type(getattr(got, name)) is type(getattr(lk.SamplingParams(**{name: scalar}), name))
    assert lk.SamplingParams(logit_bias={3: a(1.5)}).logit_bias == {3: 1.5}
    for name, bad in [("top_k", a(3.0)), ("temperature", a(True)), ("seed", a("7"))]:
        with pytest.raises(ValueError, match=f"^{name}: "):
            lk.SamplingParams(**{name: bad})


def test_messages_show_floats_and_keys_as_written():
    """A float in a message is short (``-1e-300``, not 300 digits) and a key that is not a
    token id is quoted."""
    x = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError, match=r"^uniforms: .*got -1e-300\b"):
        lk.sample(x, uniforms=-1e-300)
    with pytest.raises(ValueError, match=r"^top_p: .*got -1e-300$"):
        lk.mask_top_p(x, -1e-300)
    with pytest.raises(ValueError, match=r"^temperature: .*got -1e-300$"):
        lk.softmax(x, temperature=-1e-300)
    # ... as Python writes them, in the kernels' checks as in the Python layer's
    with pytest.raises(ValueError, match=r"^temperature: .*got nan$"):
        lk.sample(x, temperature=float("nan"))
    with pytest.raises(ValueError, match=r"^temperature: .*got nan$"):
        lk.SamplingParams(temperature=float("nan"))
    with pytest.raises(ValueError, match=r"^min_p: .*got 1e\+300$"):
        lk.mask_min_p(x, 1e300)
    with pytest.raises(ValueError, match=r"^repetition_penalty: .*got -1e-05$"):
        lk.apply_penalties(x, repetition_penalty=-1e-5)
    with pytest.raises(lk.ParameterTypeError, match=r"^bias: token id '1' is not an integer$"):
        lk.apply_logit_bias(x, {"1": 1.0})

    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    for call in (
        lambda b: lk.apply_logit_bias(x, b),
        lambda b: lk.apply_logit_bias(x[::-1], b),
        lambda b: lk.apply_penalties(x, logit_bias=b),
    ):
        with pytest.raises(lk.ParameterTypeError, match="token id <unprintable> is not an"):
            call({Unprintable(): 1.0})
    for field, value in [
        ("logit_bias", {Unprintable(): 1.0}),
        ("logit_bias", {1: Unprintable()}),
        ("temperature", Unprintable()),
        ("seed", Unprintable()),
        ("stop_token_ids", Unprintable()),
    ]:
        with pytest.raises(ValueError, match=f"^{field}: .*<unprintable>"):
            lk.SamplingParams(**{field: value})


@pytest.mark.parametrize("dtype", [">i8", ">i4", ">u4", ">u8", ">i2", "<i2", "u1"])
def test_token_arrays_of_any_integer_dtype_and_byte_order_are_read(dtype):
    x = np.asarray([[0.5, 1.0, 0.0, 2.0]], dtype=np.float32)
    ids = np.array([3, 1, 1], dtype=dtype)
    want = lk.logprobs(x[0], [3, 1, 1])
    got = lk.logprobs(x[0], ids)
    np.testing.assert_array_equal(got.ranks, want.ranks)
    np.testing.assert_array_equal(
        lk.apply_penalties(x, output_tokens=[ids], frequency_penalty=0.5),
        lk.apply_penalties(x, output_tokens=[[3, 1, 1]], frequency_penalty=0.5),
    )


def test_bias_keys_and_values_beyond_their_range_are_named_as_such():
    x = np.asarray([0.5, 1.0, 0.0], dtype=np.float32)
    with pytest.raises(ValueError, match="bias: token id 18446744073709551615 is outside"):
        lk.apply_logit_bias(x, {np.uint64(2**64 - 1): 1.0})
    with pytest.raises(ValueError, match="bias: value for token 1 is beyond the float64 range"):
        lk.apply_logit_bias(x, {1: 10**400})
    with pytest.raises(ValueError, match=r"^tokens: token id 18446744073709551615 is out of range"):
        lk.logprobs(x, [np.uint64(2**64 - 1)])


def test_a_stand_in_torch_module_changes_nothing(monkeypatch):
    """Logits are told from torch tensors through sys.modules['torch'] (never imported by
    logitkit); a stand-in module there without a Tensor type is not consulted."""
    import types

    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    np.testing.assert_array_equal(lk.softmax([1.0, 2.0]), lk.softmax(np.array([1.0, 2.0])))


def test_a_token_list_that_shares_memory_with_out_is_named():
    """Token lists and per-row arrays are read while out= is written: one that shares memory
    with out is refused, and the message says so."""
    z = np.zeros(4, np.float32)
    tok = z.view(np.int32)[:1]
    with pytest.raises(ValueError, match=r"^output_tokens: shares memory"):
        lk.apply_penalties(z, output_tokens=tok, frequency_penalty=1.0, out=z)


@pytest.mark.parametrize(
    "value", [np.complex128(0.5 + 3j), np.complex64(2 + 0j), np.array(0.5 + 1j), np.clongdouble(1)]
)
def test_a_complex_bias_value_is_refused_in_every_function(value):
    """NumPy complex scalars read as floats to Python (dropping the imaginary part, with only a
    warning); a bias value is a real number, so they are refused as a Python complex is."""
    x = np.asarray([0.5, 1.0, 0.0], dtype=np.float32)
    with pytest.raises(lk.ParameterTypeError, match=r"^bias: value for token 1 is complex"):
        lk.apply_logit_bias(x, {1: value})
    with pytest.raises(lk.ParameterTypeError, match=r"^bias: value for token 1 is complex"):
        lk.apply_logit_bias(np.stack([x, x]), [{}, {1: value}])
    with pytest.raises(lk.ParameterTypeError, match=r"^logit_bias: value for token 1 is complex"):
        lk.apply_penalties(x, logit_bias={1: value})
    with pytest.raises(lk.ParameterTypeError, match=r"^bias: "):
        lk.apply_logit_bias(x, {1: complex(value)})
    with pytest.raises(ValueError, match="logit_bias"):
        lk.SamplingParams(logit_bias={1: value})


HUGE = 10**5000  # more digits than Python's str() of an int accepts (4300)


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("k", lambda x: lk.top_k(x, HUGE)),
        ("k", lambda x: lk.mask_top_k(x, -HUGE)),
        ("seed", lambda x: lk.uniform(HUGE, 0)),
        ("step", lambda x: lk.uniform(0, HUGE)),
        ("seed", lambda x: lk.sample(x, seed=HUGE)),
        ("seed", lambda x: lk.sample(np.stack([x, x]), seed=[1, HUGE])),
        ("step", lambda x: lk.sample(x, seed=1, step=-HUGE)),
        ("min_keep", lambda x: lk.mask_top_p(x, 0.5, min_keep=-HUGE)),
        ("min_keep", lambda x: lk.sample(x, seed=1, min_keep=-HUGE)),
        ("min_keep", lambda x: lk.sample(np.stack([x, x]), seed=1, min_keep=[1, -HUGE])),
        (
            "min_keep",
            lambda x: lk.sample(np.stack([x, x]), uniforms=[0.5, 0.5], min_keep=[-HUGE, 1]),
        ),
        ("top_n", lambda x: lk.logprobs(x, [1], top_n=HUGE)),
        ("tokens", lambda x: lk.logprobs(x, [HUGE])),
        ("n", lambda x: lk.set_num_threads(HUGE)),
        ("bias", lambda x: lk.apply_logit_bias(x, {HUGE: 1.0})),
        ("bias", lambda x: lk.apply_logit_bias(np.stack([x, x]), [{}, {-HUGE: 1.0}])),
        ("output_tokens", lambda x: lk.apply_penalties(x, output_tokens=[HUGE])),
        ("prompt_tokens", lambda x: lk.apply_penalties(x, prompt_tokens=[-HUGE])),
        ("logit_bias", lambda x: lk.apply_penalties(x, logit_bias={HUGE: 1.0})),
        ("seed", lambda x: lk.SamplingParams(seed=HUGE)),
        ("min_tokens", lambda x: lk.SamplingParams(min_tokens=-HUGE)),
        ("logprobs", lambda x: lk.SamplingParams(logprobs=-HUGE)),
        ("min_keep", lambda x: lk.SamplingParams(min_keep=-HUGE)),
        ("logit_bias", lambda x: lk.SamplingParams(logit_bias={HUGE: 1.0})),
        ("logit_bias", lambda x: lk.SamplingParams(logit_bias={"1" * 5000: 1.0})),
        ("stop_token_ids", lambda x: lk.SamplingParams(stop_token_ids=[HUGE])),
        ("allowed_token_ids", lambda x: lk.SamplingParams(allowed_token_ids=[-HUGE])),
        (
            "top_logprobs",
            lambda x: lk.SamplingParams.from_openai({"logprobs": True, "top_logprobs": -HUGE}),
        ),
        (
            "steps",
            lambda x: lk.sample_batch(np.stack([x, x]), lk.SamplingParams(), steps=[0, HUGE]),
        ),
        (
            "output_tokens",
            lambda x: lk.sample_batch(
                np.stack([x, x]), lk.SamplingParams(), output_tokens=[[HUGE], []]
            ),
        ),
    ],
)
def test_an_integer_too_long_to_print_is_named_by_its_parameter(name, call, capfd):
    """Python refuses to print an int of more than 4300 digits; such a parameter still gets the
    ValueError that names it (the value described by its size), and nothing is printed."""
    x = np.asarray([0.5, 1.0, 0.0, 2.0], dtype=np.float32)
    with pytest.raises(ValueError, match=rf"^{name}: .*integer of 16610 bits>|^{name}: key of"):
        call(x)
    assert capfd.readouterr().err == ""


def test_a_long_bias_key_string_is_read_or_named():
    assert lk.SamplingParams(logit_bias={"0" * 5000 + "5": 1.0}).logit_bias == {5: 1.0}
    assert lk.SamplingParams(logit_bias={"-" + "0" * 30: 1.0}).logit_bias == {0: 1.0}
    with pytest.raises(ValueError, match=r"^logit_bias: key of 21 digits is out of range"):
        lk.SamplingParams(logit_bias={"+" + "9" * 21: 1.0})
    with pytest.raises(ValueError, match=r"^logit_bias: token id -1 is out of range"):
        lk.SamplingParams(logit_bias={"-0001": 1.0})


def test_the_sign_of_an_integer_too_long_to_print_is_given():
    x = np.asarray([0.5, 1.0, 0.0, 2.0], dtype=np.float32)
    with pytest.raises(ValueError, match=r"^k: .*got <a negative integer of 16610 bits>$"):
        lk.mask_top_k(x, -HUGE)
    with pytest.raises(
        ValueError, match=r"^min_keep: .*got <a negative integer of 16610 bits> \(row 1\)"
    ):
        lk.sample(np.stack([x, x]), seed=1, min_keep=[1, -HUGE])
    with pytest.raises(
        ValueError, match=r"^tokens: token id <a negative integer of 16610 bits> is"
    ):
        lk.logprobs(x, [-HUGE])
    with pytest.raises(ValueError, match=r"^bias: token id <an integer of 16610 bits> is outside"):
        lk.apply_logit_bias(x, {HUGE: 1.0})


def test_sampling_params_store_integers_beyond_int64_at_their_limit():
    """They mean the same there (top-k off, keep everything), and the params can be printed."""
    p = lk.SamplingParams(top_k=HUGE, min_keep=HUGE, min_tokens=HUGE, logprobs=HUGE)
    assert (p.top_k, p.min_keep, p.min_tokens, p.logprobs) == (2**63 - 1,) * 4
    assert "top_k=9223372036854775807" in repr(p)
    assert lk.SamplingParams(top_k=-HUGE).top_k == -(2**63)
    x = np.asarray([[0.5, 1.0, 0.0, 2.0]], dtype=np.float32)
    off = lk.sample_batch(x, lk.SamplingParams(seed=3, logprobs=4))
    huge = lk.sample_batch(x, lk.SamplingParams(seed=3, top_k=HUGE, logprobs=HUGE))
    np.testing.assert_array_equal(huge.tokens, off.tokens)
    np.testing.assert_array_equal(huge.top_ids, off.top_ids)
