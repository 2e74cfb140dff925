"""Logits from the ecosystem: ``__dlpack__`` and ``__array__`` objects, ml_dtypes bfloat16
arrays and lists give the results of the equivalent NumPy array (no torch needed here; the
torch tensor tests are in test_integration_transformers.py)."""

from __future__ import annotations

import warnings

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


@pytest.mark.parametrize("name", list(CALLS))
def test_bfloat16_bits_read_in_place_equal_a_strided_view(name):
    """Contiguous uint16 bits with dtype="bfloat16" are read in place; a strided view of the same
    bits (read through a copy) and the ml_dtypes array with dtype="bfloat16" give the same
    result."""
    call = CALLS[name]
    b = X.astype(ml_dtypes.bfloat16)
    strided = np.zeros((X.shape[0], 2 * X.shape[1]), dtype=np.uint16)[:, ::2]
    strided[...] = b.view(np.uint16)
    assert not strided.flags.c_contiguous
    want = call(strided, dtype="bfloat16")
    np.testing.assert_array_equal(call(b.view(np.uint16), dtype="bfloat16"), want)
    np.testing.assert_array_equal(call(b, dtype="bfloat16"), want)
    if name != "logprobs":  # one row
        np.testing.assert_array_equal(call(b.view(np.uint16)[1], dtype="bfloat16"), want[1])


@pytest.mark.parametrize("name", list(CALLS))
def test_bfloat16_bits_in_either_byte_order(name):
    call = CALLS[name]
    bits = X.astype(ml_dtypes.bfloat16).view(np.uint16)
    want = call(bits, dtype="bfloat16")
    swapped = bits.astype(">u2")
    assert swapped.tobytes() != bits.tobytes()
    np.testing.assert_array_equal(call(swapped, dtype="bfloat16"), want)
    np.testing.assert_array_equal(call(swapped[:, ::-1][:, ::-1], dtype="bfloat16"), want)


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


def test_seed_and_step_lists_take_every_uint64():
    """Python int lists up to 2**64 - 1 (NumPy alone would read [1, 2**64 - 1] as float64)."""
    seeds, steps = [1, 2**64 - 1, 2**63], [0, 2**64 - 1, 5]
    want = [lk.sample(X[r], top_p=0.9, seed=seeds[r], step=steps[r]) for r in range(3)]
    got = lk.sample(X, top_p=0.9, seed=seeds, step=steps)
    assert got.tolist() == want
    got = lk.sample(X, top_p=0.9, seed=np.array(seeds, dtype=np.uint64), step=tuple(steps))
    assert got.tolist() == want


def test_token_lists_as_a_2d_array_or_empty_float_arrays():
    """A (B, n) integer array is B token lists; an empty array of any dtype is no tokens."""
    hist = np.array([[1, 2, 2], [0, 0, 5], [7, 8, 9]])
    kw = dict(repetition_penalty=1.3, frequency_penalty=0.2, presence_penalty=0.1)
    want = lk.apply_penalties(X, output_tokens=[row for row in hist], **kw)
    np.testing.assert_array_equal(lk.apply_penalties(X, output_tokens=hist, **kw), want)
    lp = lk.logprobs(X, hist, top_n=2)
    np.testing.assert_array_equal(lp.ranks, lk.logprobs(X, list(hist), top_n=2).ranks)
    empty = lk.apply_penalties(X[0], output_tokens=np.array([]), **kw)
    np.testing.assert_array_equal(empty, X[0])
    res = lk.sample_batch(X, lk.SamplingParams(seed=1), output_tokens=hist)
    want_tokens = lk.sample_batch(X, lk.SamplingParams(seed=1), output_tokens=list(hist))
    np.testing.assert_array_equal(res.tokens, want_tokens.tokens)


def test_zero_dimensional_uniform_for_one_row():
    assert lk.sample(X[0], uniforms=np.array(0.3)) == lk.sample(X[0], uniforms=0.3)
    assert lk.sample(X[0], uniforms=np.float32(0.3)) == lk.sample(
        X[0], uniforms=float(np.float32(0.3))
    )


def _misaligned(values, dtype=np.float32):
    """A C-contiguous array of ``values`` whose data starts one byte past an aligned address."""
    a = np.asarray(values, dtype=dtype)
    raw = np.zeros(a.nbytes + 1, dtype=np.uint8)
    m = raw[1:].view(dtype).reshape(a.shape)
    m[...] = a
    assert m.flags.c_contiguous and not m.flags.aligned
    return m


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_misaligned_arrays_are_read_and_written(dtype):
    rng = np.random.default_rng(3)
    for shape in ((7,), (3, 7)):
        ref = rng.standard_normal(shape).astype(dtype)
        x = _misaligned(ref, dtype)
        np.testing.assert_array_equal(lk.softmax(x), lk.softmax(ref))
        np.testing.assert_array_equal(lk.argmax(x), lk.argmax(ref))
        want = lk.sample(ref, seed=4, top_k=3)
        np.testing.assert_array_equal(lk.sample(x, seed=4, top_k=3), want)
        out = _misaligned(np.zeros(shape))
        got = lk.log_softmax(x, out=out)
        assert got is out
        np.testing.assert_array_equal(out, lk.log_softmax(ref))
    y = _misaligned([0.5, 1.0, -1.0])
    want = lk.apply_logit_bias(y.copy(), {0: 1.0})
    assert lk.apply_logit_bias(y, {0: 1.0}, out=y) is y
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(
        lk.sample(np.zeros((2, 4), np.float32), uniforms=_misaligned([0.1, 0.9], np.float64)),
        [0, 3],
    )


@pytest.mark.parametrize("kind", ["float16", "bfloat16", "bits"])
def test_half_precision_logits_overlapping_out_are_refused(kind):
    # README: an out that overlaps the logits other than as the same array raises ValueError
    # naming out; a float32 out is never the same array as float16 / bfloat16 logits.
    raw = bytearray(4 * 2 * 64)  # zeros: valid logits in every dtype
    out = np.frombuffer(memoryview(raw), np.float32).reshape(2, 64)
    dtype = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "bits": np.uint16}[kind]
    kw = {"dtype": "bfloat16"} if kind == "bits" else {}
    apart = np.frombuffer(memoryview(raw), dtype, count=128).reshape(2, 64)  # another base
    same_base = out.view(dtype).reshape(-1)[:128].reshape(2, 64)
    calls = (
        lambda x: lk.log_softmax(x, out=out, **kw),
        lambda x: lk.softmax(x, out=out, **kw),
        lambda x: lk.apply_logit_bias(x, {1: 1.0}, out=out, **kw),
        lambda x: lk.apply_penalties(x, repetition_penalty=1.5, out=out, **kw),
        lambda x: lk.mask_top_k(x, 3, out=out, **kw),
    )
    for logits in (apart, same_base):
        for f in calls:
            with pytest.raises(ValueError, match="out: overlaps"):
                f(logits)


def test_the_direct_path_agrees_with_the_general_path_and_declines_the_rest():
    """`sample`'s one-call path (checks in Rust) gives the tokens of the general path (reached
    here through NumPy scalar parameters), and declines every input it does not handle."""
    kw = dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.01, min_keep=1, order="default")
    for x in (X, X[1], X[:1]):
        for seed in (0, 2**64 - 1, np.arange(len(x), dtype=np.uint64) if x.ndim == 2 else 9):
            args = (kw["temperature"], kw["top_k"], kw["top_p"], kw["min_p"], 1, "default")
            got = _core.sample_direct(x, *args, seed, 3)
            assert got is not None
            general = dict(kw, top_k=np.int64(kw["top_k"]))
            want = lk.sample(x, seed=seed, step=3, **general)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(lk.sample(x, seed=seed, step=3, **kw), want)
    greedy = _core.sample_direct(X, 0.0, 0, 1.0, 0.0, 1, "default", None, 0)
    np.testing.assert_array_equal(greedy, X.argmax(axis=1))
    plain = (X, 0.7, 20, 0.9, 0.01, 1, "default", 5, 0)
    declined = {
        0: [
            X.tolist(),
            X[:, ::2],
            X.astype(">f4"),
            X.astype(">f2"),
            X.astype(np.float64),
            X.astype(np.float16).view(np.uint16),
            X.astype(np.float16).view(np.int16),
            X.astype(np.float16)[:, ::2],
            np.empty((2, 0), "f4"),
        ],
        1: [1, np.float64(0.7), True],
        2: [np.int64(20), True, 2**63, 20.0],
        5: [True, 2**63],
        7: [None, -1, 2**64, np.uint64(5), np.array([5, 6, 7]), "5"],
        8: [-1, 2**64, np.int64(0)],
    }
    for at, values in declined.items():
        for v in values:
            args = list(plain)
            args[at] = v
            assert _core.sample_direct(*args) is None, (at, v)
    with pytest.raises(ValueError, match="min_keep"):
        _core.sample_direct(X, 0.7, 20, 0.9, 0.01, 0, "default", 5, 0)
    # float16 and bfloat16 (once the Python layer has seen the dtype) are read in place: the
    # tokens of the same bits passed as uint16 with dtype=, through the general path.
    for x in (X, X[1]):
        h = x.astype(np.float16)
        want = lk.sample(h, seed=5, step=0, **dict(kw, top_k=np.int64(20)))
        np.testing.assert_array_equal(_core.sample_direct(h, *plain[1:]), want)
        b = x.astype(ml_dtypes.bfloat16)
        want = lk.sample(b.view(np.uint16), dtype="bfloat16", seed=5, step=0, **kw)
        np.testing.assert_array_equal(lk.sample(b, seed=5, step=0, **kw), want)
        np.testing.assert_array_equal(_core.sample_direct(b, *plain[1:]), want)
    with pytest.raises(ValueError, match="order"):
        _core.sample_direct(X, 0.7, 20, 0.9, 0.01, 1, "nope", 5, 0)


class Broken:
    """An array-like whose conversion fails."""

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("no data")


@pytest.mark.parametrize("wrap", [DlpackOnly, ArrayOnly])
def test_token_lists_may_be_array_likes(wrap):
    """Token ids in __array__ / __dlpack__ objects (a CPU torch tensor, say) read as arrays."""
    ids = [np.array([1, 5, 5, 200]), np.array([0, 3], dtype=np.int32), np.array([7])]
    wrapped = [wrap(a) for a in ids]
    got = lk.logprobs(X, wrapped, top_n=2)
    want = lk.logprobs(X, ids, top_n=2)
    for g, w in zip(got, want, strict=True):
        for gr, wr in zip(g, w, strict=True):
            np.testing.assert_array_equal(gr, wr)
    pen = dict(repetition_penalty=1.3, frequency_penalty=0.2)
    np.testing.assert_array_equal(
        lk.apply_penalties(X, output_tokens=wrapped, prompt_tokens=wrapped, **pen),
        lk.apply_penalties(X, output_tokens=ids, prompt_tokens=ids, **pen),
    )
    params = lk.SamplingParams(repetition_penalty=1.5, seed=3)
    assert (
        lk.sample_batch(X, params, output_tokens=wrapped).tokens.tolist()
        == lk.sample_batch(X, params, output_tokens=ids).tokens.tolist()
    )
    # 1-D logits take one array-like
    np.testing.assert_array_equal(
        lk.logprobs(X[0], wrap(ids[0])).token_logprobs, lk.logprobs(X[0], ids[0]).token_logprobs
    )


def test_token_list_array_likes_of_bad_ids_name_the_parameter():
    with pytest.raises(ValueError, match=r"tokens.*(out of range|outside)"):
        lk.logprobs(X[0], ArrayOnly(np.array([1, 257])))
    with pytest.raises(TypeError, match="tokens"):
        lk.logprobs(X[0], ArrayOnly(np.array([1.0, 2.0])))
    with pytest.raises(TypeError, match="output_tokens"):
        lk.apply_penalties(X, output_tokens=[Broken()] * 3, repetition_penalty=1.2)


def test_float64_beyond_the_float32_range_saturates():
    """Finite logits stay finite when rounded to float32 (no overflow to +-inf, no warning)."""
    big = np.finfo(np.float32).max
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lk.softmax(np.array([1e39, 0.0])).tolist() == [1.0, 0.0]
        assert int(lk.argmax(np.array([-1e300, -np.inf]))) == 0
        assert int(lk.sample(np.array([-1e39, -np.inf, -np.inf]), seed=1)) == 0
        lp = lk.log_softmax(np.array([[-1e39, 0.0], [1e300, 1e300]]))
        assert np.isfinite(lp).all() and lp[1].tolist() == [float(np.float32(np.log(0.5)))] * 2
        got = lk.mask_top_k(np.array([2e38, 5e38, -7e38, -np.inf]), 4)
        assert got.tolist() == [np.float32(2e38), big, -big, -np.inf]
    with pytest.raises(ValueError, match="index 1"):
        lk.softmax(np.array([0.0, np.inf]))


def test_strided_and_misaligned_seed_arrays_on_the_fast_path():
    """A uint64 seed array that is a column view or misaligned gives the contiguous result (with
    every other parameter a plain scalar, the call takes the one-call native path)."""
    x = np.random.default_rng(0).normal(size=(2, 50)).astype(np.float32)
    want = lk.sample(x, seed=np.array([3, 4], dtype=np.uint64))
    column = np.array([[3, 9], [4, 9]], dtype=np.uint64)[:, 0]
    raw = np.zeros(17, dtype=np.uint8)
    misaligned = raw[1:].view(np.uint64)
    misaligned[:] = [3, 4]
    assert not column.flags.c_contiguous and not misaligned.flags.aligned
    for seed in (column, misaligned):
        assert lk.sample(x, seed=seed).tolist() == want.tolist()
        assert (
            lk.sample(x, seed=seed, top_k=5).tolist() == lk.sample(x, seed=[3, 4], top_k=5).tolist()
        )


def test_lists_of_python_ints_beyond_uint64_are_numbers():
    assert int(lk.argmax([2**64, 1])) == 0
    assert int(lk.argmax([1, 10**30, -(10**30)])) == 1
    assert lk.softmax([10**39, 0]).tolist() == [1.0, 0.0]
    assert int(lk.argmax([1, 10**400])) == 1 and int(lk.argmax([-(10**400), 1])) == 1
    for bad in ([1, "2"], [2**70, "5"], [2**70, b"7"], [2**70, None]):
        with pytest.raises(TypeError, match="logits"):
            lk.argmax(bad)


ONE_STEP = {
    # name: (call with plain Python scalars, the same call with NumPy scalars, which takes the
    # general path)
    "mask_top_k": (lambda x: lk.mask_top_k(x, 7), lambda x: lk.mask_top_k(x, np.int64(7))),
    "mask_top_k_all": (
        lambda x: lk.mask_top_k(x, 10**30),
        lambda x: lk.mask_top_k(x, np.uint64(2**64 - 1)),
    ),
    "mask_top_p": (
        lambda x: lk.mask_top_p(x, 0.8, temperature=0.7, min_keep=3),
        lambda x: lk.mask_top_p(x, np.float64(0.8), temperature=0.7, min_keep=np.int64(3)),
    ),
    "mask_min_p": (
        lambda x: lk.mask_min_p(x, 0.05, temperature=1.3),
        lambda x: lk.mask_min_p(x, np.float64(0.05), temperature=np.float64(1.3)),
    ),
    "top_k": (lambda x: lk.top_k(x, 5), lambda x: lk.top_k(x, np.int64(5))),
    "logprobs": (
        lambda x: lk.logprobs(x, [4, 0, 9], top_n=3),
        lambda x: lk.logprobs(x, [4, 0, 9], top_n=np.int64(3)),
    ),
    "apply_penalties": (
        lambda x: lk.apply_penalties(
            x,
            prompt_tokens=[[1, 2]] * len(x) if x.ndim == 2 else [1, 2],
            output_tokens=[[2, 5, 5]] * len(x) if x.ndim == 2 else [2, 5, 5],
            repetition_penalty=1.3,
            presence_penalty=0.5,
            frequency_penalty=0.25,
            logit_bias={3: 2.5, 7: -np.inf},
        ),
        lambda x: lk.apply_penalties(
            x,
            prompt_tokens=[[1, 2]] * len(x) if x.ndim == 2 else [1, 2],
            output_tokens=[[2, 5, 5]] * len(x) if x.ndim == 2 else [2, 5, 5],
            repetition_penalty=np.float64(1.3),
            presence_penalty=0.5,
            frequency_penalty=0.25,
            logit_bias={3: 2.5, 7: -np.inf},
        ),
    ),
    "apply_logit_bias": (
        lambda x: lk.apply_logit_bias(x, {3: 2.5, 7: -np.inf}),
        lambda x: lk.apply_logit_bias(x, MappingProxy({3: 2.5, 7: -np.inf})),
    ),
}


class MappingProxy(dict):
    """A dict subclass: a mapping that the one-step paths leave to the general path."""


@pytest.mark.parametrize(
    ("name", "rows"),
    [(n, r) for n in ONE_STEP for r in (None, 1, 3) if n != "logprobs" or r is None],
)
def test_one_step_paths_agree_with_the_general_path(name, rows, monkeypatch):
    """The masks, `top_k`, one-row `logprobs`, `apply_logit_bias` and `apply_penalties` (into a
    new array here) take contiguous float32
    logits and plain scalars in one call to the extension: same results as the general path,
    and the logits untouched."""
    from logitkit import _api

    fast, general = ONE_STEP[name]
    x = X[1] if rows is None else X[:rows]
    before = x.copy()
    want = general(x)
    with monkeypatch.context() as m:
        m.setattr(_api, "_logits", None)  # the general path starts there
        got = fast(x)
    with monkeypatch.context() as m:
        m.setattr(_api, "_logits", None)
        with pytest.raises(TypeError):
            general(x)  # the general path was the one taken
    np.testing.assert_array_equal(x, before)
    for g, w in zip(got, want, strict=True) if isinstance(got, tuple) else [(got, want)]:
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def test_one_step_paths_check_their_parameters():
    x = X[0]
    with pytest.raises(ValueError, match="k"):
        lk.mask_top_k(x, 0)
    with pytest.raises(ValueError, match=r"k: must be in \[1, 257\]"):
        lk.top_k(x, 258)
    with pytest.raises(ValueError, match="top_p"):
        lk.mask_top_p(x, 1.5)
    with pytest.raises(ValueError, match="min_p"):
        lk.mask_min_p(x, float("nan"))
    with pytest.raises(ValueError, match="temperature"):
        lk.mask_top_p(x, 0.5, temperature=0.0)
    with pytest.raises(ValueError, match="min_keep"):
        lk.mask_min_p(x, 0.5, min_keep=0)
    with pytest.raises(ValueError, match="top_n"):
        lk.logprobs(x, [1], top_n=258)
    with pytest.raises(ValueError, match="tokens"):
        lk.logprobs(x, [257])
    with pytest.raises(ValueError, match="bias"):
        lk.apply_logit_bias(x, {257: 1.0})
    bad = x.copy()
    bad[100] = np.nan
    for call in (
        lambda a: lk.mask_top_p(a, 0.5),
        lambda a: lk.top_k(a, 2),
        lambda a: lk.logprobs(a, [0]),
        lambda a: lk.apply_logit_bias(a, {}),
    ):
        with pytest.raises(ValueError, match="100"):
            call(bad)


def test_apply_logit_bias_in_place_matches_a_new_array():
    x = X.copy()
    want = lk.apply_logit_bias(x, {3: 2.5, 7: -np.inf})
    np.testing.assert_array_equal(x, X)
    assert lk.apply_logit_bias(x, {3: 2.5, 7: -np.inf}, out=x) is x
    np.testing.assert_array_equal(x, want)
    read_only = X.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        lk.apply_logit_bias(read_only, {}, out=read_only)


@pytest.mark.parametrize("shape", [(7,), (3, 7), (40, 4000)])
def test_in_place_forms_give_the_bits_of_a_new_array(shape):
    """out=logits (float parameters: one call to the extension; integer ones: the general path)
    writes the bits of the call that returns a new array, and returns the logits."""
    x = np.random.default_rng(11).normal(0.0, 2.0, shape).astype(np.float32)
    x[..., 2] = -np.inf
    calls = [
        (lambda a, **kw: lk.softmax(a, **kw), {"temperature": 0.7}, {"temperature": 1}),
        (lambda a, **kw: lk.log_softmax(a, **kw), {"temperature": 1.0}, {"temperature": 1}),
        (lambda a, **kw: lk.mask_top_k(a, **kw), {"k": 3}, {"k": np.int64(3)}),
        (lambda a, **kw: lk.mask_top_p(a, 0.8, **kw), {"min_keep": 2}, {"min_keep": np.int64(2)}),
        (lambda a, **kw: lk.mask_min_p(a, 0.2, **kw), {"temperature": 2.0}, {"temperature": 2}),
    ]
    for fn, fast, general in calls:
        for kw in (fast, general):
            want = fn(x, **kw)
            y = x.copy()
            assert fn(y, out=y, **kw) is y
            np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32))
