"""argmax, top_k and mask_top_k: order-based, so equal to the oracle exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import logitkit as lk
import oracle
import strategies as S
from checks import assert_float32_like, check_out_forms, same_bits


def assert_int64(got, shape) -> None:
    arr = np.asarray(got)
    assert arr.dtype == np.int64
    assert arr.shape == tuple(shape)


@given(inp=S.inputs())
def test_argmax_matches_oracle(inp):
    got = lk.argmax(inp.array, **inp.kw)
    assert_int64(got, inp.ref.shape[:-1])
    np.testing.assert_array_equal(got, oracle.argmax(inp.ref))


@given(x=S.logits(max_v=12, elements=st.sampled_from([-1.0, 0.0, 2.5])))
def test_argmax_ties_take_lowest_index(x):
    got = np.atleast_1d(lk.argmax(x))
    rows = x.reshape(-1, x.shape[-1])
    for r, t in enumerate(got):
        best = rows[r].max()
        assert t == np.flatnonzero(rows[r] == best)[0]


@given(data=st.data(), inp=S.inputs())
def test_top_k_matches_oracle(data, inp):
    v = inp.ref.shape[-1]
    k = data.draw(st.integers(1, v), label="k")
    got = lk.top_k(inp.array, k, **inp.kw)
    assert isinstance(got, lk.TopK)
    values, indices = got
    assert got.values is values and got.indices is indices
    assert_float32_like(values, (*inp.ref.shape[:-1], k))
    assert_int64(indices, (*inp.ref.shape[:-1], k))
    want_values, want_indices = oracle.top_k(inp.ref, k)
    np.testing.assert_array_equal(indices, want_indices)
    assert same_bits(values, want_values.astype(np.float32))


@given(data=st.data(), inp=S.inputs())
def test_mask_top_k_matches_oracle(data, inp):
    v = inp.ref.shape[-1]
    k = data.draw(st.integers(1, v + 3), label="k")
    got = lk.mask_top_k(inp.array, k, **inp.kw)
    assert_float32_like(got, inp.ref.shape)
    assert same_bits(got, oracle.mask_top_k(inp.ref, k))


@given(data=st.data(), x=S.logits())
def test_mask_top_k_only_adds_neg_inf(data, x):
    k = data.draw(st.integers(1, x.shape[-1]), label="k")
    got = lk.mask_top_k(x, k)
    changed = ~same_bits_mask(got, x)
    assert np.all(np.isneginf(got[changed]))
    finite_per_row = np.isfinite(got).sum(axis=-1)
    np.testing.assert_array_equal(finite_per_row, np.minimum(k, np.isfinite(x).sum(axis=-1)))


def same_bits_mask(a, b):
    return a.view(np.uint32) == b.view(np.uint32)


@given(data=st.data(), x=S.logits())
def test_mask_top_k_out_forms(data, x):
    k = data.draw(st.integers(1, x.shape[-1] + 1), label="k")
    check_out_forms(lk.mask_top_k, x, k=k)


@given(data=st.data(), x=S.batches())
def test_rows_are_independent(data, x):
    k = data.draw(st.integers(1, x.shape[-1]), label="k")
    am, tk, mk = lk.argmax(x), lk.top_k(x, k), lk.mask_top_k(x, k)
    for r in range(x.shape[0]):
        assert am[r] == lk.argmax(x[r])
        np.testing.assert_array_equal(tk.indices[r], lk.top_k(x[r], k).indices)
        assert same_bits(mk[r], lk.mask_top_k(x[r], k))


@given(inp=S.inputs())
def test_inputs_are_not_modified(inp):
    before = np.array(inp.array, copy=True)
    lk.argmax(inp.array, **inp.kw)
    lk.top_k(inp.array, 1, **inp.kw)
    lk.mask_top_k(inp.array, 1, **inp.kw)
    np.testing.assert_array_equal(np.asarray(inp.array), before)


@pytest.mark.parametrize(
    ("row", "k", "indices"),
    [
        pytest.param([1.0, 3.0, 3.0, 2.0], 2, [1, 2], id="tie-lower-first"),
        pytest.param([5.0, 5.0, 5.0], 2, [0, 1], id="all-equal"),
        pytest.param([-np.inf, 0.0, -np.inf], 3, [1, 0, 2], id="masked-last"),
        pytest.param([0.0, -0.0, 1.0], 3, [2, 0, 1], id="signed-zeros-tie"),
        pytest.param([-30.0, 30.0], 1, [1], id="largest"),
    ],
)
def test_top_k_known_values(row, k, indices):
    x = np.asarray(row, dtype=np.float32)
    got = lk.top_k(x, k)
    np.testing.assert_array_equal(got.indices, indices)
    np.testing.assert_array_equal(got.values, x[indices])
    assert lk.argmax(x) == indices[0]
