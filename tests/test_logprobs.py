"""logprobs: values, ranks and the top-n of the given tokens under log_softmax(logits)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import logitkit as lk
import oracle
import strategies as S
from checks import assert_close


def check_row(ref, tokens, top_n, token_lp, ranks, top_ids, top_lp) -> None:
    """One row's results against the oracle, allowing float32 rounding of near-equal logits."""
    tol = oracle.logprob_tolerance(ref)
    want_lp, _, want_ids, want_top = oracle.logprobs(ref, tokens, top_n)
    assert_close(token_lp, want_lp, rtol=0, atol=tol)
    lo, hi = oracle.rank_bounds(ref, tokens, tol)
    assert np.all((lo <= ranks) & (ranks <= hi)), (ranks, lo, hi)

    assert top_ids.shape == (top_n,) and top_lp.shape == (top_n,)
    assert len(set(top_ids.tolist())) == top_n
    assert np.all((top_ids >= 0) & (top_ids < ref.shape[-1]))
    assert_close(top_lp, want_top, rtol=0, atol=tol)
    x = oracle.f64(ref)
    # position by position, the ids hold the same logit as the oracle's, up to rounding
    assert_close(x[top_ids], x[want_ids], rtol=0, atol=tol)
    # exact ties: lower id first, and never skipped for a higher id
    for i, t in enumerate(top_ids):
        tied = np.flatnonzero(x == x[t])
        assert set(tied[tied < t].tolist()) <= set(top_ids[:i].tolist())
    # values are sorted, largest first
    assert np.all(top_lp[:-1] >= top_lp[1:])


@st.composite
def row_case(draw):
    inp = draw(S.row_inputs())
    v = inp.ref.shape[-1]
    tokens = draw(S.token_lists(v, max_len=8))
    top_n = draw(st.integers(0, min(v, 6)))
    return inp, tokens, top_n


@given(case=row_case())
def test_one_row_matches_oracle(case):
    inp, tokens, top_n = case
    got = lk.logprobs(inp.array, tokens, top_n=top_n, **inp.kw)
    assert isinstance(got, lk.LogProbs)
    n = len(tokens)
    assert got.token_logprobs.dtype == np.float32 and got.token_logprobs.shape == (n,)
    assert got.ranks.dtype == np.int64 and got.ranks.shape == (n,)
    assert got.top_ids.dtype == np.int64 and got.top_logprobs.dtype == np.float32
    check_row(inp.ref, tokens, top_n, *got)


@given(data=st.data(), inp=S.batch_inputs())
def test_batch_with_equal_lengths_matches_oracle(data, inp):
    b, v = inp.ref.shape
    n = data.draw(st.integers(0, 5), label="n")
    top_n = data.draw(st.integers(0, min(v, 5)), label="top_n")
    tokens = [
        np.asarray(
            data.draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n)), dtype=np.int64
        )
        for _ in range(b)
    ]
    got = lk.logprobs(inp.array, tokens, top_n=top_n, **inp.kw)
    assert got.token_logprobs.shape == (b, n) and got.token_logprobs.dtype == np.float32
    assert got.ranks.shape == (b, n) and got.ranks.dtype == np.int64
    assert got.top_ids.shape == (b, top_n) and got.top_logprobs.shape == (b, top_n)
    for r in range(b):
        check_row(
            inp.ref[r],
            tokens[r],
            top_n,
            got.token_logprobs[r],
            got.ranks[r],
            got.top_ids[r],
            got.top_logprobs[r],
        )
        alone = lk.logprobs(inp.ref[r], tokens[r], top_n=top_n)
        for a, w in zip(alone, got, strict=True):
            np.testing.assert_array_equal(a, w[r])


@given(data=st.data(), x=S.batches(max_b=4))
def test_batch_with_ragged_lengths(data, x):
    b, v = x.shape
    tokens = [data.draw(S.token_lists(v, max_len=6), label=f"tokens[{r}]") for r in range(b)]
    top_n = data.draw(st.integers(0, min(v, 4)), label="top_n")
    got = lk.logprobs(x, tokens, top_n=top_n)
    assert got.top_ids.shape == (b, top_n)
    for r in range(b):
        assert len(got.token_logprobs[r]) == len(tokens[r])
        assert len(got.ranks[r]) == len(tokens[r])
        check_row(
            x[r],
            tokens[r],
            top_n,
            np.asarray(got.token_logprobs[r]),
            np.asarray(got.ranks[r]),
            got.top_ids[r],
            got.top_logprobs[r],
        )


def test_top_n_by_position_or_keyword():
    # SPEC §8 writes logprobs(logits, tokens, top_n); §3 passes top_n by keyword.
    x = np.asarray([0.5, 2.0, -1.0, 2.0], dtype=np.float32)
    by_pos = lk.logprobs(x, np.array([2]), 2)
    by_kw = lk.logprobs(x, np.array([2]), top_n=2)
    assert by_pos.top_ids.tolist() == by_kw.top_ids.tolist() == [1, 3]
    np.testing.assert_array_equal(by_pos.token_logprobs, by_kw.token_logprobs)
    assert by_pos.ranks.tolist() == [4]


@given(x=S.logits())
def test_top_n_zero_gives_empty_top(x):
    tokens = np.asarray([0], dtype=np.int64)
    lists = tokens if x.ndim == 1 else [tokens] * x.shape[0]
    got = lk.logprobs(x, lists)
    assert got.top_ids.shape == (*x.shape[:-1], 0)
    assert got.top_logprobs.shape == (*x.shape[:-1], 0)


@given(x=S.rows())
def test_agrees_with_log_softmax(x):
    """The values are those of log_softmax(logits), bit for bit."""
    tokens = np.arange(x.shape[-1])
    got = lk.logprobs(x, tokens, top_n=x.shape[-1])
    ls = lk.log_softmax(x)
    np.testing.assert_array_equal(got.token_logprobs.view(np.uint32), ls.view(np.uint32))
    np.testing.assert_array_equal(got.top_logprobs.view(np.uint32), ls[got.top_ids].view(np.uint32))
    assert_close(got.top_logprobs, np.sort(ls)[::-1], rtol=0, atol=oracle.logprob_tolerance(x))
    assert sorted(got.top_ids.tolist()) == list(range(x.shape[-1]))
    assert got.ranks.min() == 1


@given(inp=S.inputs())
def test_inputs_are_not_modified(inp):
    before = np.array(inp.array, copy=True)
    tokens = np.asarray([0], dtype=np.int64)
    lists = tokens if inp.ref.ndim == 1 else [tokens] * inp.ref.shape[0]
    lk.logprobs(inp.array, lists, top_n=1, **inp.kw)
    np.testing.assert_array_equal(np.asarray(inp.array), before)
    np.testing.assert_array_equal(tokens, [0])


@pytest.mark.parametrize(
    ("row", "tokens", "ranks"),
    [
        pytest.param([1.0, 3.0, 3.0, 2.0], [1, 2, 3, 0], [1, 1, 3, 4], id="ties-share-rank"),
        pytest.param([0.0, -np.inf, 5.0], [1, 2, 0], [3, 1, 2], id="masked-ranks-last"),
        pytest.param([2.0, 2.0, 2.0], [2, 0], [1, 1], id="all-equal"),
    ],
)
def test_known_ranks(row, tokens, ranks):
    x = np.asarray(row, dtype=np.float32)
    got = lk.logprobs(x, np.asarray(tokens), top_n=len(row))
    np.testing.assert_array_equal(got.ranks, ranks)
    np.testing.assert_array_equal(got.top_ids, oracle.order(x))
    want = oracle.log_softmax(x)[tokens]
    np.testing.assert_allclose(got.token_logprobs, want, rtol=1e-6, atol=1e-6)


def test_masked_token_has_neg_inf_logprob():
    x = np.asarray([0.0, -np.inf, 0.0], dtype=np.float32)
    got = lk.logprobs(x, np.asarray([1, 0]), top_n=3)
    assert got.token_logprobs[0] == -np.inf
    np.testing.assert_allclose(got.token_logprobs[1], np.log(0.5), rtol=1e-6)
    np.testing.assert_array_equal(got.top_ids, [0, 2, 1])
    assert got.top_logprobs[2] == -np.inf


@pytest.mark.parametrize("n", [63, 64, 500])
def test_ranks_of_many_tokens_of_a_row(n):
    """Ranks of many tokens of one row (counted per token, or read from one sorted copy of the
    row) are 1 + the number of strictly larger logits, ties and signed zeros included."""
    rng = np.random.default_rng(n)
    x = rng.integers(-4, 5, 700).astype(np.float32)
    x[rng.integers(0, 700, 50)] = -np.inf
    x[rng.integers(0, 700, 50)] = -0.0
    tokens = rng.integers(0, 700, n)
    got = lk.logprobs(x, tokens)
    want = [1 + int(np.count_nonzero(x > x[t])) for t in tokens]
    np.testing.assert_array_equal(got.ranks, want)
    np.testing.assert_allclose(got.token_logprobs, lk.log_softmax(x)[tokens], rtol=1e-6)
