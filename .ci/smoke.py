"""Smoke test of an installed logitkit wheel, run from outside the checkout.

python smoke.py WHEEL CARGO_TOML
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

import logitkit as lk

wheel, cargo_toml = Path(sys.argv[1]), Path(sys.argv[2])
version = re.search(r'(?m)^version = "([^"]+)"', cargo_toml.read_text()).group(1)

assert "site-packages" in lk.__file__, f"imported the checkout, not the wheel: {lk.__file__}"
assert lk.__version__ == version, (lk.__version__, version)
abi3 = re.search(r"-cp310-abi3-manylinux[^/]*\.whl$", wheel.name)
assert abi3, f"not an abi3 manylinux wheel: {wheel.name}"
assert lk.simd_level() in lk._core.available_simd_levels()

rng = np.random.default_rng(0)
x = rng.normal(0.0, 2.0, size=(8, 32000)).astype(np.float32)
assert (lk.argmax(x) == x.argmax(axis=-1)).all()
assert np.allclose(lk.softmax(x).sum(axis=-1), 1.0, atol=1e-5)
tok = lk.sample(x, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=1)
assert tok.shape == (8,) and np.isfinite(lk.mask_top_k(x, 40)[np.arange(8), tok]).all()
step = lk.sample_batch(x, lk.SamplingParams(temperature=0.0, logprobs=2))
assert (step.tokens == x.argmax(axis=-1)).all()
try:
    lk.sample(np.full(4, np.nan, dtype=np.float32))
except ValueError as e:
    assert "row 0" in str(e) and "index 0" in str(e), e
else:
    raise AssertionError("NaN row accepted")
print(f"smoke: {wheel.name} ok (logitkit {lk.__version__}, SIMD {lk.simd_level()})")
