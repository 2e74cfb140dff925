"""Fuzzing the Python API: random dtypes, shapes, strides, values and parameters.

Every call either returns a well-formed result or raises ValueError / TypeError; nothing else
escapes, nothing crashes, and the caller's array is never modified.
"""

import ml_dtypes
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import logitkit as lk

FLOATS = st.one_of(
    st.floats(-40, 40, width=32),
    st.sampled_from([float("-inf"), float("inf"), float("nan"), 0.0, -0.0, 3e38, -3e38]),
)
DTYPES = ["float32", "float16", "bfloat16", "bf16bits", "float64", "int32", "bool", "uint16"]


def _cast(base, kind):
    if kind == "bfloat16":
        return base.astype(ml_dtypes.bfloat16)
    if kind == "bf16bits":
        return base.astype(ml_dtypes.bfloat16).view(np.uint16)
    if kind in ("int32", "uint16"):
        return np.nan_to_num(base, posinf=1, neginf=-1).astype(kind)
    return base.astype(kind)


@st.composite
def arrays(draw):
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim)))
    n = int(np.prod(shape)) if shape else 1
    vals = np.array(draw(st.lists(FLOATS, min_size=n, max_size=n)), dtype=np.float64)
    base = vals.reshape(shape)
    kind = draw(st.sampled_from(DTYPES))
    with np.errstate(over="ignore", invalid="ignore"):
        x = _cast(base, kind)
    if ndim >= 1 and draw(st.booleans()):
        x = x[..., ::-1] if draw(st.booleans()) else x[..., ::2]
    if ndim == 2 and draw(st.booleans()):
        x = x.T
    dtype = "bfloat16" if kind == "bf16bits" or draw(st.integers(0, 9)) == 0 else None
    return x, dtype


PARAM = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 10**6),
    st.sampled_from([None, "x", True, -1, 0, 1, 2**64, 0.5]),
)


def _calls(draw, x, dtype):
    p = draw(PARAM)
    q = draw(PARAM)
    k = draw(st.integers(-2, 12))
    seed = draw(st.one_of(st.integers(-1, 2**65), st.none()))
    toks = draw(st.lists(st.integers(-2, 12), max_size=4))
    batch_toks = [np.array(toks)] * (x.shape[0] if x.ndim == 2 else 1)
    tk = np.array(toks) if x.ndim == 1 else batch_toks
    return [
        lambda: lk.softmax(x, temperature=p, dtype=dtype),
        lambda: lk.log_softmax(x, temperature=p, dtype=dtype),
        lambda: lk.argmax(x, dtype=dtype),
        lambda: lk.top_k(x, k, dtype=dtype),
        lambda: lk.mask_top_k(x, k, dtype=dtype),
        lambda: lk.mask_top_p(x, p, temperature=q, dtype=dtype),
        lambda: lk.mask_min_p(x, p, min_keep=k, dtype=dtype),
        lambda: lk.apply_logit_bias(
            x, {k: p} if x.ndim < 2 else [{k: p}] * x.shape[0], dtype=dtype
        ),
        lambda: lk.apply_penalties(
            x, output_tokens=tk, repetition_penalty=p, frequency_penalty=q, dtype=dtype
        ),
        lambda: lk.sample(x, temperature=p, top_k=k, top_p=q, seed=seed, dtype=dtype),
        lambda: lk.sample(x, min_p=p, min_keep=k, uniforms=q, dtype=dtype),
        lambda: lk.logprobs(x, tk, top_n=k, dtype=dtype),
        lambda: lk.sample_batch(x, lk.SamplingParams(seed=0), output_tokens=tk, dtype=dtype),
    ]


@settings(max_examples=400)
@given(data=st.data(), arr=arrays())
def test_api_never_escapes_value_or_type_error(data, arr):
    x, dtype = arr
    before = x.copy()
    for call in _calls(data.draw, x, dtype):
        try:
            res = call()
        except (ValueError, TypeError):
            continue
        for part in res if isinstance(res, tuple) else (res,):
            if isinstance(part, np.ndarray):
                assert part.dtype in (np.float32, np.int64), part.dtype
                if part.dtype == np.float32 and part.size:
                    assert not np.isnan(part).any()
    assert before.tobytes() == x.tobytes()
