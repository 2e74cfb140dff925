"""A fully annotated tour of the public API: ``mypy --strict`` checks it, pytest runs it.

Every public function of ``logitkit`` is called here with typical arguments, its result bound
to an annotated name and checked. ``mypy`` (configured in ``pyproject.toml``) reads this file
together with ``python/logitkit`` and the ``_core.pyi`` stubs, so a change to a public
signature that breaks typed user code fails type checking; ``test_mypy_strict`` runs that check
from pytest when mypy is installed.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

import logitkit as lk
from logitkit import _core

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _batch(rows: int = 4, vocab: int = 64, seed: int = 0) -> F32:
    rng = np.random.default_rng(seed)
    x: F32 = rng.normal(0.0, 2.0, size=(rows, vocab)).astype(np.float32)
    return x


def test_version_and_runtime() -> None:
    version: str = lk.__version__
    assert version == _core.__version__
    assert version.count(".") >= 2

    level: str = lk.simd_level()
    levels: list[str] = _core.available_simd_levels()
    assert level in levels
    profile: str = _core.build_profile
    assert profile in ("release", "debug")

    before: int = lk.get_num_threads()
    lk.set_num_threads(2)
    assert lk.get_num_threads() == 2
    lk.set_num_threads(before)
    assert lk.get_num_threads() == before


def test_softmax_family() -> None:
    x = _batch()
    probs: F32 = lk.softmax(x, temperature=0.7)
    assert probs.dtype == np.float32 and probs.shape == x.shape
    assert np.allclose(probs.sum(axis=-1), 1.0, atol=1e-5)

    logp: F32 = lk.log_softmax(x)
    assert np.allclose(np.exp(logp), lk.softmax(x), atol=1e-6)

    out: F32 = np.empty_like(x)
    same: F32 = lk.softmax(x, out=out)
    assert same is out


def test_selection() -> None:
    x = _batch()
    greedy: I64 = lk.argmax(x)
    assert (greedy == x.argmax(axis=-1)).all()
    one: np.int64 = lk.argmax(x[0])
    assert int(one) == int(greedy[0])

    best: lk.TopK = lk.top_k(x[0], 5)
    values: F32 = best.values
    indices: I64 = best.indices
    assert int(indices[0]) == int(greedy[0])
    assert (np.diff(values) <= 0).all()


def test_masks() -> None:
    x = _batch()
    top: F32 = lk.mask_top_k(x, 8)
    assert (np.isfinite(top).sum(axis=-1) == 8).all()

    nucleus: F32 = lk.mask_top_p(x, 0.9, temperature=0.7, min_keep=2)
    assert (np.isfinite(nucleus).sum(axis=-1) >= 2).all()

    minp: F32 = lk.mask_min_p(x, 0.1)
    kept = np.isfinite(minp)
    assert kept[np.arange(x.shape[0]), x.argmax(axis=-1)].all()


def test_bias_and_penalties() -> None:
    x = _batch()
    bias: dict[int, float] = {3: 5.0, 4: -math.inf}
    biased: F32 = lk.apply_logit_bias(x, bias)
    assert biased[0, 4] == -np.inf
    assert np.isclose(biased[0, 3], x[0, 3] + 5.0)

    outputs: Sequence[I64] = [np.array([1, 2, 2], dtype=np.int64)] * x.shape[0]
    penalised: F32 = lk.apply_penalties(
        x, output_tokens=outputs, repetition_penalty=1.1, frequency_penalty=0.3
    )
    assert penalised.shape == x.shape
    assert (penalised[:, 5] == x[:, 5]).all()


def test_sample_and_uniform() -> None:
    x = _batch()
    tokens: I64 = lk.sample(x, temperature=0.8, top_k=40, top_p=0.95, seed=1234, step=0)
    assert tokens.dtype == np.int64 and tokens.shape == (x.shape[0],)

    u: float = lk.uniform(1234, 0)
    assert 0.0 <= u < 1.0
    again: I64 = lk.sample(x, temperature=0.8, top_k=40, top_p=0.95, uniforms=np.full(4, u))
    assert (again == tokens).all()

    greedy: np.int64 = lk.sample(x[0], temperature=0.0)
    assert int(greedy) == int(x[0].argmax())

    # The documented draw, rebuilt from the raw Philox4x32-10 block.
    seed, step = 1234, 5
    words: list[int] = _core.philox4x32_10(
        [step & 0xFFFFFFFF, step >> 32, 0, 0], [seed & 0xFFFFFFFF, seed >> 32]
    )
    rebuilt = ((words[0] >> 5) * 2**26 + (words[1] >> 6)) / 2**53
    assert rebuilt == lk.uniform(seed, step) == _core.uniform(seed, step)


def test_logprobs() -> None:
    x = _batch()
    row: lk.LogProbs = lk.logprobs(x[0], np.array([0, 1]), top_n=3)
    top_ids: I64 = row.top_ids
    top_logprobs: F32 = row.top_logprobs
    assert top_ids.shape == (3,) and top_logprobs.shape == (3,)
    assert np.allclose(row.token_logprobs, lk.log_softmax(x[0])[[0, 1]], atol=1e-6)

    batch: lk.LogProbs = lk.logprobs(x, [np.array([t]) for t in range(x.shape[0])], top_n=2)
    assert batch.top_ids.shape == (x.shape[0], 2)


def test_serving() -> None:
    x = _batch()
    params: list[lk.SamplingParams] = [
        lk.SamplingParams(temperature=0.0),
        lk.SamplingParams(temperature=0.7, top_p=0.9, seed=7, logprobs=2),
        lk.SamplingParams.from_openai({"model": "m", "logit_bias": {"5": 100}, "max_tokens": 8}),
        lk.SamplingParams(allowed_token_ids=[10, 11, 12], seed=3),
    ]
    colder: lk.SamplingParams = dataclasses.replace(params[1], temperature=0.5)
    assert colder.temperature == 0.5

    outputs: list[list[int]] = [[], [5, 6], [], [1]]
    step: lk.BatchResult = lk.sample_batch(x, params, output_tokens=outputs)
    tokens: I64 = step.tokens
    assert int(tokens[0]) == int(x[0].argmax())
    assert int(tokens[2]) == 5 and int(tokens[3]) in (10, 11, 12)
    assert step.top_ids is not None and step.top_ids.shape == (4, 2)
    assert step.logprobs is not None and math.isnan(float(step.logprobs[0]))

    words = -(-x.shape[1] // 32)
    bitmask: npt.NDArray[np.int32] = np.zeros((x.shape[0], words), dtype=np.int32)
    bitmask[:, 0] = 1 << 7
    masked: lk.BatchResult = lk.sample_batch(x, lk.SamplingParams(seed=0), token_bitmask=bitmask)
    assert (masked.tokens == 7).all() and masked.logprobs is None


def test_mypy_strict() -> None:
    """``mypy --strict`` accepts the package, its stubs and this file."""
    api = pytest.importorskip("mypy.api")
    config = str(ROOT / "pyproject.toml")
    package = str(ROOT / "python" / "logitkit")
    stdout, stderr, status = api.run(["--config-file", config, "--strict", package, __file__])
    assert status == 0, stdout + stderr
