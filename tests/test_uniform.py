"""uniform(seed, step): Philox4x32-10 as SPEC §6 defines it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

import logitkit as lk
import oracle
import strategies as S

M = 0xFFFFFFFF

# Known-answer vectors of Random123 (kat_vectors: philox4x32 10).
PHILOX_KAT = [
    pytest.param(
        (0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8), id="zeros"
    ),
    pytest.param((M, M, M, M), (M, M), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD), id="ones"),
    pytest.param(
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        id="pi",
    ),
]


@pytest.mark.parametrize(("counter", "key", "want"), PHILOX_KAT)
def test_reference_philox_matches_random123(counter, key, want):
    assert oracle.philox4x32_10(counter, key) == want


def words_to_uniform(o0: int, o1: int) -> float:
    return ((o0 >> 5) * 2**26 + (o1 >> 6)) / 2**53


@pytest.mark.parametrize(
    ("seed", "step", "words"),
    [
        pytest.param(0, 0, (0x6627E8D5, 0xE169C58D), id="seed-0-step-0"),
        pytest.param(2**64 - 1, (M << 32) | M, None, id="all-ones"),
        pytest.param(0x299F31D0A4093822, 0x85A308D3243F6A88, None, id="pi-key"),
    ],
)
def test_uniform_known_answers(seed, step, words):
    if words is None:
        o = oracle.philox4x32_10((step & M, step >> 32, 0, 0), (seed & M, seed >> 32))
        words = o[:2]
    want = words_to_uniform(*words)
    assert oracle.uniform(seed, step) == want
    got = lk.uniform(seed, step)
    assert type(got) is float
    assert got == want


def test_uniform_zero_zero_literal():
    assert lk.uniform(0, 0) == (0x6627E8D5 >> 5) * 2**26 / 2**53 + (0xE169C58D >> 6) / 2**53


@given(seed=S.u64, step=S.u64)
def test_uniform_matches_reference(seed, step):
    got = lk.uniform(seed, step)
    assert type(got) is float
    assert got == oracle.uniform(seed, step)
    assert 0.0 <= got < 1.0


@pytest.mark.parametrize(
    ("seed", "step"),
    [
        (0, 0),
        (1, 0),
        (0, 1),
        (2**32 - 1, 2**32 - 1),
        (2**32, 2**32),
        (2**32 + 1, 7),
        (7, 2**32 + 1),
        (2**63, 2**63),
        (2**64 - 1, 0),
        (0, 2**64 - 1),
        (2**64 - 1, 2**64 - 1),
        (123456789012345678, 987654321098765432),
    ],
)
def test_uniform_boundaries(seed, step):
    assert lk.uniform(seed, step) == oracle.uniform(seed, step)


def test_seed_and_step_words_are_not_interchangeable():
    values = {
        lk.uniform(1, 0),
        lk.uniform(0, 1),
        lk.uniform(2**32, 0),
        lk.uniform(0, 2**32),
        lk.uniform(0, 0),
    }
    assert len(values) == 5


def test_uniform_is_uniform_over_seeds_and_steps():
    n, bins = 40_000, 40
    for draws in (
        [lk.uniform(s, 0) for s in range(n)],
        [lk.uniform(99, t) for t in range(n)],
        [lk.uniform(2**64 - 1 - s, 2**40 + s) for s in range(n)],
    ):
        u = np.asarray(draws)
        assert np.all((u >= 0) & (u < 1))
        counts = np.bincount((u * bins).astype(int), minlength=bins)
        stat = oracle.chi_square(counts, np.full(bins, n / bins))
        assert stat < oracle.chi_square_critical(bins - 1)
        assert len(np.unique(u)) == n


@given(seed=S.u64, step=S.u64, x=S.rows())
def test_sample_draws_with_uniform_seed_step(seed, step, x):
    u = lk.uniform(seed, step)
    assert lk.sample(x, seed=seed, step=step) == lk.sample(x, uniforms=u)
    assert lk.sample(x, seed=seed, step=step, temperature=0.5, top_p=0.9) == lk.sample(
        x, uniforms=u, temperature=0.5, top_p=0.9
    )


def test_default_step_is_zero():
    x = np.linspace(-1, 1, 50, dtype=np.float32)
    for seed in range(50):
        assert lk.sample(x, seed=seed) == lk.sample(x, seed=seed, step=0)
        assert lk.sample(x, seed=seed) == lk.sample(x, uniforms=oracle.uniform(seed, 0))
