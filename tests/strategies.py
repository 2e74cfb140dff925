"""Hypothesis strategies for logits, their dtype and layout variants, and parameters."""

from __future__ import annotations

from typing import NamedTuple

import ml_dtypes
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import oracle

LOGIT_MIN, LOGIT_MAX = -30.0, 30.0

finite_logits = st.floats(LOGIT_MIN, LOGIT_MAX, width=32)


def vocab_sizes(max_v: int = 40) -> st.SearchStrategy[int]:
    """Mostly small vocabularies, sometimes large enough to cover several SIMD lanes."""
    return st.one_of(
        st.integers(1, max_v),
        st.sampled_from([7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65]),
        st.integers(100, 260),
    )


@st.composite
def logits(
    draw,
    ndim: int | None = None,
    max_b: int = 5,
    max_v: int = 40,
    masks: bool = True,
    ties: bool = True,
    elements: st.SearchStrategy[float] = finite_logits,
    min_v: int = 1,
    vocab: st.SearchStrategy[int] | None = None,
) -> np.ndarray:
    """A float32 (V,) or (B, V) array: finite values, sometimes -inf masks (every row keeps at
    least one finite entry), sometimes duplicated values (exact ties)."""
    ndim = draw(st.sampled_from([1, 2])) if ndim is None else ndim
    v = draw(vocab_sizes(max_v).filter(lambda n: n >= min_v) if vocab is None else vocab)
    shape = (v,) if ndim == 1 else (draw(st.integers(1, max_b)), v)
    x = draw(hnp.arrays(np.float32, shape, elements=elements))
    rows = x.reshape(-1, v)
    if ties and draw(st.booleans()):
        pool = np.asarray(draw(st.lists(elements, min_size=1, max_size=3)), dtype=np.float32)
        picks = draw(hnp.arrays(np.int8, shape, elements=st.integers(-1, len(pool) - 1)))
        picks = picks.reshape(-1, v)
        rows[picks >= 0] = pool[picks[picks >= 0]]
    if masks and draw(st.booleans()):
        masked = draw(hnp.arrays(np.bool_, shape)).reshape(-1, v)
        for r in range(rows.shape[0]):
            if masked[r].all():
                masked[r, draw(st.integers(0, v - 1))] = False
        rows[masked] = -np.inf
    return x


def rows(**kw) -> st.SearchStrategy[np.ndarray]:
    """One (V,) float32 row."""
    return logits(ndim=1, **kw)


def batches(**kw) -> st.SearchStrategy[np.ndarray]:
    """One (B, V) float32 batch."""
    return logits(ndim=2, **kw)


class Input(NamedTuple):
    """What is passed to logitkit (``array`` and extra keyword arguments ``kw``) and the
    float32 values logitkit reads from it (``ref``)."""

    array: object
    kw: dict
    ref: np.ndarray
    kind: str


VARIANTS = (
    "float32",
    "float16",
    "bfloat16",
    "bfloat16-bits",
    "float64",
    "strided",
    "reversed",
    "fortran",
    "list",
)


def make_input(x: np.ndarray, kind: str) -> Input:
    """The float32 array x presented as one dtype or layout variant."""
    if kind == "float32":
        return Input(x, {}, x, kind)
    if kind == "float16":
        a = x.astype(np.float16)
        return Input(a, {}, a.astype(np.float32), kind)
    if kind == "bfloat16":
        a = x.astype(ml_dtypes.bfloat16)
        return Input(a, {}, a.astype(np.float32), kind)
    if kind == "bfloat16-bits":
        a = x.astype(ml_dtypes.bfloat16)
        return Input(a.view(np.uint16), {"dtype": "bfloat16"}, a.astype(np.float32), kind)
    if kind == "float64":
        a = x.astype(np.float64) * (1.0 + 2.0**-30)
        return Input(a, {}, a.astype(np.float32), kind)
    if kind == "strided":
        big = np.full((*x.shape[:-1], 2 * x.shape[-1]), 99.0, dtype=np.float32)
        big[..., ::2] = x
        return Input(big[..., ::2], {}, x, kind)
    if kind == "reversed":
        flipped = np.ascontiguousarray(x[::-1])
        return Input(flipped[::-1], {}, x, kind)
    if kind == "fortran":
        return Input(np.asfortranarray(x), {}, x, kind)
    if kind == "list":
        return Input(x.tolist(), {}, x, kind)
    raise AssertionError(kind)


@st.composite
def inputs(draw, base: st.SearchStrategy[np.ndarray] | None = None, kinds=VARIANTS) -> Input:
    """Logits in one of the dtype / layout variants."""
    x = draw(logits() if base is None else base)
    return make_input(x, draw(st.sampled_from(kinds)))


def row_inputs(**kw) -> st.SearchStrategy[Input]:
    return inputs(rows(**kw))


def batch_inputs(**kw) -> st.SearchStrategy[Input]:
    return inputs(batches(**kw))


# ---------------------------------------------------------------------------------------------
# Parameters

temperatures = st.one_of(st.sampled_from([1.0, 0.5, 2.0]), st.floats(0.1, 4.0))
top_ps = st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.95, 1.0]), st.floats(0.0, 1.0))
min_ps = st.one_of(st.sampled_from([0.0, 0.05, 0.1, 0.5, 1.0]), st.floats(0.0, 1.0))
min_keeps = st.one_of(st.just(1), st.integers(1, 5))
orders = st.sampled_from(oracle.ORDERS)
uniforms = st.floats(0.0, 1.0, exclude_max=True)
u64 = st.one_of(
    st.integers(0, 1000),
    st.sampled_from([0, 2**32 - 1, 2**32, 2**63, 2**64 - 1]),
    st.integers(0, 2**64 - 1),
)


def top_ks(v: int) -> st.SearchStrategy[int]:
    """top_k values for sample: disabled (<= 0, >= V) or a real cut."""
    return st.one_of(st.just(0), st.integers(-2, v + 2), st.integers(1, max(1, v // 2)))


@st.composite
def sample_params(draw, v: int, greedy: bool = True) -> dict:
    """Keyword arguments of sample (without seed / uniforms) for a row of V tokens."""
    t = draw(st.one_of(st.just(0.0), temperatures)) if greedy else draw(temperatures)
    p = {"temperature": t}
    if draw(st.booleans()):
        p["top_k"] = draw(top_ks(v))
    if draw(st.booleans()):
        p["top_p"] = draw(top_ps)
    if draw(st.booleans()):
        p["min_p"] = draw(min_ps)
    if draw(st.booleans()):
        p["min_keep"] = draw(min_keeps)
    p["order"] = draw(orders)
    return p


@st.composite
def token_lists(draw, v: int, max_len: int = 12) -> np.ndarray:
    """A 1-D int64 array of token ids in [0, V), repeats allowed."""
    return np.asarray(draw(st.lists(st.integers(0, v - 1), max_size=max_len)), dtype=np.int64)


@st.composite
def biases(draw, v: int) -> dict:
    """A {token_id: value} logit bias: finite values or -inf (a ban)."""
    values = st.one_of(st.floats(-10.0, 10.0), st.just(-np.inf))
    return draw(st.dictionaries(st.integers(0, v - 1), values, max_size=min(v, 6)))
