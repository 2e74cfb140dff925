"""Every SIMD level this CPU has gives the bits of the scalar level, through the public API."""

import ml_dtypes
import numpy as np
import pytest

import logitkit as lk
from logitkit import _core

LEVELS = list(_core.available_simd_levels())


@pytest.fixture
def restore_level():
    before = _core.simd_level()
    yield
    _core.set_simd_level(before)


def _inputs():
    rng = np.random.default_rng(2024)
    for v in (1, 17, 64, 1000, 32000):
        x = rng.normal(0, 3, (3, v)).astype(np.float32)
        x[0, rng.integers(0, v)] = -np.inf if v > 1 else x[0, 0]
        yield x, None
        yield x.astype(np.float16), None
        yield x.astype(ml_dtypes.bfloat16), None


def _results(x, dtype):
    out = []
    for t in (0.3, 1.0, 2.5):
        out.append(lk.softmax(x, temperature=t, dtype=dtype).tobytes())
        out.append(lk.log_softmax(x, temperature=t, dtype=dtype).tobytes())
        out.append(lk.mask_top_p(x, 0.8, temperature=t, dtype=dtype).tobytes())
        out.append(lk.mask_min_p(x, 0.05, temperature=t, dtype=dtype).tobytes())
    out.append(lk.argmax(x, dtype=dtype).tobytes())
    k = min(5, x.shape[-1])
    out.append(lk.top_k(x, k, dtype=dtype).indices.tobytes())
    out.append(lk.mask_top_k(x, k, dtype=dtype).tobytes())
    for kwargs in (
        {"temperature": 0.8},
        {"temperature": 0.8, "top_k": 40},
        {"top_p": 0.9},
        {"min_p": 0.05},
        {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "order": "llama.cpp"},
    ):
        for seed in range(8):
            out.append(lk.sample(x, seed=seed, dtype=dtype, **kwargs).tobytes())
    lp = lk.logprobs(
        x, [np.arange(min(3, x.shape[-1]))] * 3, top_n=min(2, x.shape[-1]), dtype=dtype
    )
    out.append(lp.token_logprobs.tobytes())
    return out


@pytest.mark.skipif(len(LEVELS) < 2, reason="this CPU has a single SIMD level")
@pytest.mark.usefixtures("restore_level")
def test_every_level_matches_scalar_bits():
    for x, dtype in _inputs():
        _core.set_simd_level("scalar")
        want = _results(x, dtype)
        for level in LEVELS:
            _core.set_simd_level(level)
            assert _results(x, dtype) == want, (level, x.dtype, x.shape)


def test_simd_level_reports_an_available_level():
    assert lk.simd_level() in LEVELS
    assert "scalar" in LEVELS


@pytest.mark.usefixtures("restore_level")
def test_unknown_or_unsupported_level_is_refused():
    with pytest.raises(ValueError, match="level"):
        _core.set_simd_level("sse9")
