"""Logits from the ecosystem: ``__dlpack__`` and ``__array__`` objects, ml_dtypes bfloat16
arrays and lists give the results of the equivalent NumPy array (no torch needed here; the
torch tensor tests are in test_integration_transformers.py)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import logitkit as lk
from logitkit import _core


class DlpackOnly:
    """An object that offers only the DLPack protocol (as a CPU tensor library would)."""

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()


class ArrayOnly:
    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)


X = np.random.default_rng(11).normal(0.0, 2.0, (3, 257)).astype(np.float32)
CALLS = {
    "softmax": lambda x, **kw: lk.softmax(x, temperature=0.7, **kw),
    "argmax": lambda x, **kw: lk.argmax(x, **kw),
    "mask_top_p": lambda x, **kw: lk.mask_top_p(x, 0.8, **kw),
    "sample": lambda x, **kw: lk.sample(x, top_k=20, top_p=0.9, seed=5, **kw),
    "logprobs": lambda x, **kw: lk.logprobs(x, [np.arange(3)] * 3, top_n=2, **kw).top_ids,
}


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("wrap", [DlpackOnly, ArrayOnly, lambda a: a.tolist()])
def test_wrapped_float32_gives_the_array_result(name, wrap):
    call = CALLS[name]
    np.testing.assert_array_equal(call(wrap(X)), call(X))


@pytest.mark.parametrize("name", list(CALLS))
def test_ml_dtypes_bfloat16_equals_its_bits(name):
    call = CALLS[name]
    b = X.astype(ml_dtypes.bfloat16)
    want = call(b.view(np.uint16), dtype="bfloat16")
    np.testing.assert_array_equal(call(b), want)
    np.testing.assert_array_equal(call(DlpackOnly(b.view(np.uint16)), dtype="bfloat16"), want)
    # and the bf16 values widened exactly to float32 give the same answer
    np.testing.assert_array_equal(call(b.astype(np.float32)), want)


def test_integer_dlpack_is_a_type_error():
    with pytest.raises(TypeError, match="logits"):
        lk.softmax(DlpackOnly(np.arange(8, dtype=np.int32)))


@pytest.mark.parametrize("half", [np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("seed", [5, np.array([1, 2, 3], dtype=np.uint64)])
def test_half_precision_sample_is_the_widened_float32_sample_on_every_call(half, seed):
    # The first call of a dtype takes the general path, later ones the fast path: all agree with
    # the exactly widened float32 logits and with explicit uniforms.
    h = X.astype(half)
    w = h.astype(np.float32)
    kw = dict(temperature=0.9, top_k=30, top_p=0.9, min_p=0.02, order="llama.cpp")
    want = lk.sample(w, seed=seed, step=4, **kw)
    for _ in range(3):
        np.testing.assert_array_equal(lk.sample(h, seed=seed, step=4, **kw), want)
    u = _core.uniforms(seed, 4, 3)
    np.testing.assert_array_equal(lk.sample(h, uniforms=u, **kw), want)
    for r in range(3):
        s = seed if isinstance(seed, int) else int(seed[r])
        assert lk.sample(h[r], seed=s, step=4, **kw) == lk.sample(w[r], seed=s, step=4, **kw)
