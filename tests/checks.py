"""Assertions and hand-made cases shared by the tests."""

from __future__ import annotations

import numpy as np

F32_EPS = 2.0**-24


def assert_float32_like(got, shape) -> None:
    """A float32 ndarray of the given shape."""
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.float32
    assert got.shape == tuple(shape)


def assert_close(got, want, rtol, atol) -> None:
    """|got - want| <= rtol * |want| + atol elementwise; infinities must match exactly."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf])
    assert np.all(np.isfinite(got[~inf])), got
    err = np.abs(got[~inf] - want[~inf])
    bound = rtol * np.abs(want[~inf]) + (atol[~inf] if np.ndim(atol) else atol)
    bad = err > bound
    assert not bad.any(), (
        f"max error {err.max()} exceeds tolerance at {np.flatnonzero(bad)[:5]}: "
        f"got {got[~inf][bad][:5]}, want {want[~inf][bad][:5]}"
    )


def assert_kept_between(kept, must, may) -> None:
    """must ⊆ kept ⊆ may."""
    kept, must, may = (np.asarray(a, dtype=bool) for a in (kept, must, may))
    missing = np.flatnonzero(must & ~kept)
    extra = np.flatnonzero(kept & ~may)
    assert missing.size == 0, f"tokens {missing} must be kept"
    assert extra.size == 0, f"tokens {extra} must be removed"


def same_bits(a, b) -> bool:
    """Equal float32 arrays bit for bit (so -0.0 differs from 0.0)."""
    a, b = np.asarray(a), np.asarray(b)
    return (
        a.dtype == b.dtype == np.float32
        and a.shape == b.shape
        and np.array_equal(a.view(np.uint32), b.view(np.uint32))
    )


def check_out_forms(fn, x: np.ndarray, **kw) -> None:
    """fn(x, out=...) for float32 x: writes into out and returns it, equals fn(x); out=x is the
    in-place form; a non-contiguous out is written correctly or refused naming "out"; without
    out= the input is never modified."""
    before = x.copy()
    want = fn(x, **kw)
    assert same_bits(x, before), "input modified without out="

    out = np.full_like(x, 123.0)
    got = fn(x, out=out, **kw)
    assert got is out
    assert same_bits(out, want)
    assert same_bits(x, before)

    y = x.copy()
    got = fn(y, out=y, **kw)
    assert got is y
    assert same_bits(y, want)

    big = np.full((*x.shape[:-1], 2 * x.shape[-1]), 7.0, dtype=np.float32)
    strided = big[..., ::2]
    try:
        got = fn(x, out=strided, **kw)
    except (ValueError, TypeError) as e:
        assert "out" in str(e)
    else:
        assert got is strided
        assert same_bits(np.ascontiguousarray(strided), want)
        assert np.all(big[..., 1::2] == 7.0)


def compositions(parts: int, total: int) -> list[tuple[int, ...]]:
    """Every way to split ``total`` into ``parts`` positive integers, in lexicographic order
    (probabilities in tenths or twentieths, built by hand)."""
    if parts == 1:
        return [(total,)]
    return [(a, *rest) for a in range(1, total) for rest in compositions(parts - 1, total - a)]
