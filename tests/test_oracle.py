"""The reference itself: the tolerant sets collapse to the exact rules at zero tolerance and
contain them at any tolerance."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

import oracle
import strategies as S


@st.composite
def row_and_params(draw):
    x = draw(S.rows())
    return x, draw(S.sample_params(x.shape[-1]))


@given(case=row_and_params(), u=S.uniforms)
def test_negligible_tolerance_is_the_exact_pipeline(case, u):
    x, params = case
    tiny = 1e-12
    must, may = oracle.kept_sets(x, params, tiny)
    # a mass exactly on a top-p / min-p boundary is decided by float64 rounding
    assume(np.array_equal(must, may))
    np.testing.assert_array_equal(must, oracle.pipeline_kept(x, **params))
    ok = oracle.acceptable_tokens(x, params, u, tiny)
    assume(len(ok) == 1)
    assert ok == {oracle.sample(x, u, **params)}


@given(case=row_and_params(), u=S.uniforms)
def test_tolerant_sets_contain_the_exact_answer(case, u):
    x, params = case
    tol = oracle.tolerance(x, params["temperature"] or 1.0)
    exact = oracle.pipeline_kept(x, **params)
    must, may = oracle.kept_sets(x, params, tol)
    assert np.all(must <= exact) and np.all(exact <= may)
    assert may.any()
    assert oracle.sample(x, u, **params) in oracle.acceptable_tokens(x, params, u, tol)
    assert np.all(np.isfinite(x[may]))


@given(x=S.rows(), top_p=S.top_ps, min_p=S.min_ps, t=S.temperatures, mk=S.min_keeps)
def test_masks_agree_with_the_pipeline(x, top_p, min_p, t, mk):
    kept = np.isfinite(oracle.mask_top_p(x, top_p, t, mk))
    np.testing.assert_array_equal(
        kept, oracle.pipeline_kept(x, temperature=t, top_p=top_p, min_keep=mk)
    )
    kept = np.isfinite(oracle.mask_min_p(x, min_p, t, mk))
    np.testing.assert_array_equal(
        kept, oracle.pipeline_kept(x, temperature=t, min_p=min_p, min_keep=mk)
    )


def test_separated_values_are_unambiguous():
    x = np.log(np.asarray([0.4, 0.3, 0.2, 0.1], dtype=np.float64)).astype(np.float32)
    for params in (dict(top_p=0.5), dict(min_p=0.6), dict(top_k=2), dict(top_p=0.8, min_p=0.3)):
        must, may = oracle.kept_sets(x, params, oracle.tolerance(x))
        np.testing.assert_array_equal(must, may)
    assert oracle.acceptable_tokens(x, {}, 0.5, oracle.tolerance(x)) == {1}
    assert oracle.acceptable_tokens(x, {}, 0.4, oracle.tolerance(x)) == {0, 1}
