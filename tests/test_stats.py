"""Goodness of fit of sample's draws over many seeds, for each pipeline path and preset."""

from __future__ import annotations

import numpy as np
import pytest

import logitkit as lk
import oracle

N = 20_000


def fixed_row(v: int = 24, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.0, 2.0, v).astype(np.float32)
    x[[3, 11]] = -np.inf
    return x


ROW = fixed_row()

PATHS = [
    pytest.param(dict(temperature=1.0), id="temperature-1"),
    pytest.param(dict(temperature=0.6), id="temperature-0.6"),
    pytest.param(dict(temperature=1.7), id="temperature-1.7"),
    pytest.param(dict(top_k=6), id="top-k"),
    pytest.param(dict(top_p=0.7), id="top-p"),
    pytest.param(dict(min_p=0.3), id="min-p"),
    pytest.param(dict(top_p=0.0, min_keep=4), id="top-p-0-min-keep"),
    *[
        pytest.param(
            dict(temperature=0.8, top_k=12, top_p=0.85, min_p=0.15, min_keep=2, order=o),
            id=f"combined-{o}",
        )
        for o in oracle.ORDERS
    ],
    *[
        pytest.param(dict(temperature=2.5, top_p=0.6, min_p=0.4, order=o), id=f"hot-{o}")
        for o in oracle.ORDERS
    ],
]


def expected_probs(params) -> tuple[np.ndarray, np.ndarray]:
    must, may = oracle.kept_sets(ROW, params, oracle.tolerance(ROW, params.get("temperature", 1)))
    np.testing.assert_array_equal(must, may)
    kept = must
    z = np.where(kept, oracle.f64(ROW) / params.get("temperature", 1.0), -np.inf)
    return kept, oracle.softmax(z)


def check_fit(tokens: np.ndarray, kept: np.ndarray, probs: np.ndarray) -> None:
    counts = np.bincount(tokens, minlength=ROW.shape[-1])
    assert counts[~kept].sum() == 0, f"removed tokens drawn: {np.flatnonzero(counts * ~kept)}"
    expected = probs[kept] * len(tokens)
    assert expected.min() >= 5
    if kept.sum() == 1:
        assert counts[kept][0] == len(tokens)
        return
    stat = oracle.chi_square(counts[kept], expected)
    crit = oracle.chi_square_critical(int(kept.sum()) - 1)
    assert stat < crit, (stat, crit, counts[kept], expected.round(1))


@pytest.mark.parametrize("params", PATHS)
def test_draws_over_seeds_follow_the_kept_distribution(params):
    kept, probs = expected_probs(params)
    rows = np.broadcast_to(ROW, (N, ROW.shape[-1]))
    tokens = lk.sample(rows, seed=np.arange(N, dtype=np.uint64), step=0, **params)
    check_fit(tokens, kept, probs)
    for s in range(0, N, N // 25):
        assert lk.sample(ROW, seed=s, **params) == tokens[s]


@pytest.mark.parametrize("params", PATHS[:1] + PATHS[-6:-3])
def test_draws_over_steps_follow_the_kept_distribution(params):
    kept, probs = expected_probs(params)
    rows = np.broadcast_to(ROW, (N, ROW.shape[-1]))
    tokens = lk.sample(rows, seed=12345, step=np.arange(N, dtype=np.uint64), **params)
    check_fit(tokens, kept, probs)


def test_fresh_entropy_without_seed_follows_the_distribution():
    params = dict(temperature=0.8, top_k=10)
    kept, probs = expected_probs(params)
    rows = np.broadcast_to(ROW, (N, ROW.shape[-1]))
    check_fit(lk.sample(rows, **params), kept, probs)
    singles = {int(lk.sample(ROW, **params)) for _ in range(200)}
    assert len(singles) > 1
    assert singles <= set(np.flatnonzero(kept))


def test_every_kept_token_is_reachable():
    params = dict(temperature=1.0)
    kept, _ = expected_probs(params)
    rows = np.broadcast_to(ROW, (N, ROW.shape[-1]))
    tokens = lk.sample(rows, seed=np.arange(N, dtype=np.uint64) + 10**6)
    np.testing.assert_array_equal(np.bincount(tokens, minlength=ROW.shape[-1]) > 0, kept)
