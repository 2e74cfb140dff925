"""sample: the pipeline of SPEC §4 steps 4-9 against the oracle, with explicit uniforms."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import logitkit as lk
import oracle
import strategies as S
from checks import compositions

PARAM_NAMES = ("temperature", "top_k", "top_p", "min_p", "min_keep")


def tol_for(ref, params) -> float:
    t = params.get("temperature", 1.0)
    return oracle.tolerance(ref, t if t > 0 else 1.0)


def acceptable(ref, params, u) -> set[int]:
    return oracle.acceptable_tokens(ref, params, u, tol_for(ref, params))


def assert_token_scalar(got) -> None:
    assert np.ndim(got) == 0
    assert np.asarray(got).dtype == np.int64


def assert_token_array(got, b) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.int64
    assert got.shape == (b,)


@st.composite
def row_case(draw, greedy=True):
    inp = draw(S.row_inputs())
    params = draw(S.sample_params(inp.ref.shape[-1], greedy=greedy))
    return inp, params


@st.composite
def batch_case(draw):
    inp = draw(S.batch_inputs())
    b, v = inp.ref.shape
    rows = [draw(S.sample_params(v)) for _ in range(b)]
    preset = draw(S.orders)
    per_row = {}
    for name in PARAM_NAMES:
        if draw(st.booleans()):
            default = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "min_keep": 1}
            values = [r.get(name, default[name]) for r in rows]
            dtype = np.int64 if name in ("top_k", "min_keep") else np.float64
            per_row[name] = np.asarray(values, dtype=dtype)
        elif name in rows[0]:
            per_row[name] = rows[0][name]
    return inp, per_row, preset


def row_params(per_row, preset, r) -> dict:
    p = {k: (v[r].item() if isinstance(v, np.ndarray) else v) for k, v in per_row.items()}
    p["order"] = preset
    return p


@given(case=row_case(), u=S.uniforms)
def test_row_with_explicit_uniform_matches_oracle(case, u):
    inp, params = case
    got = lk.sample(inp.array, uniforms=u, **params, **inp.kw)
    assert_token_scalar(got)
    ok = acceptable(inp.ref, params, u)
    assert int(got) in ok, (int(got), ok, oracle.sample(inp.ref, u, **params))


@given(
    inp=S.inputs(S.rows(vocab=st.integers(2, 12), elements=st.floats(-5.0, 5.0, width=32))),
    temperature=st.floats(0.2, 3.0),
    top_p=st.floats(0.2, 0.98),
    min_p=st.floats(0.01, 0.6),
    min_keep=S.min_keeps,
    data=st.data(),
    u=S.uniforms,
)
def test_every_preset_matches_oracle(inp, temperature, top_p, min_p, min_keep, data, u):
    v = inp.ref.shape[-1]
    params = dict(temperature=temperature, top_p=top_p, min_p=min_p, min_keep=min_keep)
    if data.draw(st.booleans(), label="with top_k"):
        params["top_k"] = data.draw(S.top_ks(v), label="top_k")
    for preset in oracle.ORDERS:
        p = {**params, "order": preset}
        for w in (u, 0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 0.999):
            got = lk.sample(inp.array, uniforms=w, **p, **inp.kw)
            assert int(got) in acceptable(inp.ref, p, w), (preset, w, int(got))


def test_presets_on_random_rows():
    rng = np.random.default_rng(2024)
    differ = {"vllm": 0, "llama.cpp": 0}
    grid = (0.02, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.97)
    for _ in range(300):
        v = int(rng.integers(3, 13))
        x = (rng.standard_normal(v) * rng.uniform(0.5, 2.5)).astype(np.float32)
        params = dict(
            temperature=float(rng.uniform(0.3, 2.0)),
            top_p=float(rng.uniform(0.3, 0.98)),
            min_p=float(rng.uniform(0.02, 0.5)),
            top_k=int(rng.integers(0, v + 1)),
        )
        kept = {o: oracle.pipeline_kept(x, **params, order=o) for o in oracle.ORDERS}
        for o in differ:
            differ[o] += not np.array_equal(kept[o], kept["default"])
        for preset in oracle.ORDERS:
            p = {**params, "order": preset}
            got = [int(lk.sample(x, uniforms=u, **p)) for u in grid]
            batch = lk.sample(np.tile(x, (len(grid), 1)), uniforms=np.asarray(grid), **p)
            np.testing.assert_array_equal(batch, got)
            for u, g in zip(grid, got, strict=True):
                assert g in acceptable(x, p, u), (x, p, u, g)
    assert min(differ.values()) >= 20, differ


@given(case=batch_case(), data=st.data())
def test_batch_with_per_row_parameters_matches_oracle(case, data):
    inp, per_row, preset = case
    b = inp.ref.shape[0]
    us = np.asarray([data.draw(S.uniforms, label=f"u[{r}]") for r in range(b)])
    got = lk.sample(inp.array, uniforms=us, order=preset, **per_row, **inp.kw)
    assert_token_array(got, b)
    for r in range(b):
        p = row_params(per_row, preset, r)
        assert int(got[r]) in acceptable(inp.ref[r], p, us[r])
        alone = lk.sample(inp.ref[r], uniforms=float(us[r]), **p)
        assert got[r] == alone


@given(x=S.batches(), case=row_case(), seed=S.u64, step=S.u64, data=st.data())
def test_scalar_seed_gives_every_row_uniform_seed_step(x, case, seed, step, data):
    _, params = case
    v = x.shape[-1]
    params = {k: (min(val, v + 1) if k == "top_k" else val) for k, val in params.items()}
    u = oracle.uniform(seed, step)
    got = lk.sample(x, seed=seed, step=step, **params)
    assert_token_array(got, x.shape[0])
    for r in range(x.shape[0]):
        assert int(got[r]) in acceptable(x[r], params, u)
        assert got[r] == lk.sample(x[r], uniforms=u, **params)
        assert got[r] == lk.sample(x[r], seed=seed, step=step, **params)
    perm = np.asarray(data.draw(st.permutations(range(x.shape[0])), label="perm"))
    np.testing.assert_array_equal(lk.sample(x[perm], seed=seed, step=step, **params), got[perm])
    same = np.repeat(x[:1], 3, axis=0)
    np.testing.assert_array_equal(lk.sample(same, seed=seed, step=step, **params), [got[0]] * 3)


@given(case=row_case(), seed=S.u64, step=S.u64)
def test_same_seed_and_step_give_the_same_token(case, seed, step):
    inp, params = case
    first = lk.sample(inp.array, seed=seed, step=step, **params, **inp.kw)
    for _ in range(3):
        assert lk.sample(inp.array, seed=seed, step=step, **params, **inp.kw) == first
    assert int(first) in acceptable(inp.ref, params, oracle.uniform(seed, step))


@given(x=S.batches(), case=row_case(), data=st.data())
def test_per_row_seed_and_step_arrays(x, case, data):
    _, params = case
    b = x.shape[0]
    seeds = [data.draw(S.u64, label=f"seed[{r}]") for r in range(b)]
    steps = [data.draw(S.u64, label=f"step[{r}]") for r in range(b)]
    got = lk.sample(
        x,
        seed=np.asarray(seeds, dtype=np.uint64),
        step=np.asarray(steps, dtype=np.uint64),
        **params,
    )
    assert_token_array(got, b)
    for r in range(b):
        u = oracle.uniform(seeds[r], steps[r])
        assert int(got[r]) in acceptable(x[r], params, u)
        assert got[r] == lk.sample(x[r], seed=seeds[r], step=steps[r], **params)


@given(inp=S.inputs(), case=row_case(), u=S.uniforms, seed=S.u64)
def test_temperature_zero_is_argmax(inp, case, u, seed):
    _, params = case
    params = {**params, "temperature": 0.0}
    params.pop("top_k", None)
    want = lk.argmax(inp.ref)
    np.testing.assert_array_equal(oracle.argmax(inp.ref), want)
    us = u if inp.ref.ndim == 1 else np.full(inp.ref.shape[0], u)
    np.testing.assert_array_equal(lk.sample(inp.array, uniforms=us, **params, **inp.kw), want)
    np.testing.assert_array_equal(lk.sample(inp.array, seed=seed, **params, **inp.kw), want)
    np.testing.assert_array_equal(lk.sample(inp.array, **params, **inp.kw), want)
    np.testing.assert_array_equal(
        lk.sample(inp.array, seed=seed, top_k=1 + seed % 3, **params, **inp.kw), want
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_no_seed_draws_fresh_entropy_for_every_row_and_call(dtype):
    # 8 rows of a uniform distribution over 1000 tokens: with one shared or repeated uniform,
    # every row (or both calls) would give the same token; with fresh entropy the chance of
    # that is about 1e-24.
    x = np.zeros((8, 1000), dtype=dtype)
    a, b = lk.sample(x), lk.sample(x)
    assert len(set(a.tolist())) > 1
    assert not np.array_equal(a, b)
    row = [int(lk.sample(x[0])) for _ in range(8)]
    assert len(set(row)) > 1


def test_none_in_a_list_of_seeds_draws_fresh_entropy_for_that_row():
    # Rows 0 and 2 are seeded (their tokens are those of their seeds); rows 1 and 3 are not:
    # 8 calls giving 8 equal tokens on a uniform 1000-token row has a chance of about 1e-21.
    x = np.zeros((4, 1000), dtype=np.float32)
    seeds = [7, None, 2**64 - 1, None]
    got = np.stack([lk.sample(x, seed=seeds, step=3) for _ in range(8)])
    assert (got[:, 0] == lk.sample(x[0], seed=7, step=3)).all()
    assert (got[:, 2] == lk.sample(x[0], seed=2**64 - 1, step=3)).all()
    assert len(set(got[:, 1].tolist())) > 1 and len(set(got[:, 3].tolist())) > 1
    with pytest.raises(ValueError, match="seed"):
        lk.sample(x, seed=[1, None, -1, None])
    with pytest.raises(ValueError, match="seed"):
        lk.sample(x, seed=[1, None])


@given(case=row_case(greedy=False), seed=st.one_of(st.none(), S.u64), step=S.u64)
def test_sampled_token_is_always_kept(case, seed, step):
    inp, params = case
    _, may = oracle.kept_sets(inp.ref, params, tol_for(inp.ref, params))
    for _ in range(3 if seed is None else 1):
        got = int(lk.sample(inp.array, seed=seed, step=step, **params, **inp.kw))
        assert may[got], (got, np.flatnonzero(may))
        assert np.isfinite(inp.ref[got])


@given(case=row_case(greedy=False), u=S.uniforms)
def test_disabled_filters_equal_no_filters(case, u):
    inp, params = case
    v = inp.ref.shape[-1]
    base = {k: val for k, val in params.items() if k in ("temperature", "order")}
    want = lk.sample(inp.ref, uniforms=u, **base)
    for extra in (
        {"top_k": 0},
        {"top_k": -1},
        {"top_k": v},
        {"top_k": v + 7},
        {"top_p": 1.0},
        {"min_p": 0.0},
        {"min_keep": 1},
    ):
        assert lk.sample(inp.ref, uniforms=u, **base, **extra) == want


@given(x=S.logits(), u=S.uniforms)
def test_default_parameters(x, u):
    us = u if x.ndim == 1 else np.full(x.shape[0], u)
    got = np.atleast_1d(lk.sample(x, uniforms=us))
    for r, row in enumerate(np.atleast_2d(x)):
        assert got[r] == oracle.sample(row, u) or int(got[r]) in acceptable(row, {}, u)


def test_thread_count_does_not_change_results():
    rng = np.random.default_rng(1234)
    x = (rng.standard_normal((96, 3000)) * 3).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = -np.inf
    seeds = np.arange(96, dtype=np.uint64) * 977
    saved = lk.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            lk.set_num_threads(n)
            assert lk.get_num_threads() == n
            results.append(
                (
                    lk.sample(
                        x, temperature=0.8, top_k=40, top_p=0.9, min_p=0.02, seed=seeds, step=5
                    ),
                    lk.softmax(x, temperature=0.7),
                    lk.mask_top_p(x, 0.8),
                )
            )
    finally:
        lk.set_num_threads(saved)
    for tokens, probs, masked in results[1:]:
        np.testing.assert_array_equal(tokens, results[0][0])
        np.testing.assert_array_equal(probs.view(np.uint32), results[0][1].view(np.uint32))
        np.testing.assert_array_equal(masked.view(np.uint32), results[0][2].view(np.uint32))


# ---------------------------------------------------------------------------------------------
# Hand-checked cases

LOG4 = np.log(np.asarray([0.4, 0.3, 0.2, 0.1])).astype(np.float32)


@pytest.mark.parametrize(
    ("u", "token"),
    [
        pytest.param(0.0, 0, id="u-zero"),
        pytest.param(0.2499, 0, id="inside-first"),
        pytest.param(0.25, 1, id="exact-boundary-exceeds"),
        pytest.param(0.2501, 1, id="inside-second"),
        pytest.param(0.5, 2, id="middle-boundary"),
        pytest.param(0.9999999, 3, id="near-one"),
        pytest.param(float(np.nextafter(1.0, 0.0)), 3, id="largest-u"),
    ],
)
def test_draw_scans_ids_in_increasing_order(u, token):
    x = np.zeros(4, dtype=np.float32)
    assert lk.sample(x, uniforms=u) == token
    masked = np.asarray([-np.inf, 0, -np.inf, 0, 0, 0, -np.inf], dtype=np.float32)
    assert lk.sample(masked, uniforms=u) == [1, 3, 4, 5][token]


@pytest.mark.parametrize(
    ("params", "u", "token"),
    [
        pytest.param(dict(min_p=0.3, temperature=0.5, order="default"), 0.99, 0, id="default"),
        pytest.param(dict(min_p=0.3, temperature=0.5, order="vllm"), 0.99, 0, id="vllm"),
        pytest.param(dict(min_p=0.3, temperature=0.5, order="llama.cpp"), 0.99, 1, id="llama.cpp"),
    ],
)
def test_llama_cpp_filters_before_temperature(params, u, token):
    x = np.asarray([2.0, 1.0, 0.0], dtype=np.float32)
    assert lk.sample(x, uniforms=u, **params) == token
    assert oracle.sample(x, u, **params) == token


@pytest.mark.parametrize(
    ("preset", "kept"),
    [
        pytest.param("default", [0, 1, 2], id="default"),
        pytest.param("vllm", [0, 1], id="vllm"),
        pytest.param("llama.cpp", [0, 1, 2], id="llama.cpp"),
    ],
)
def test_vllm_applies_min_p_before_top_p(preset, kept):
    params = dict(top_p=0.75, min_p=0.3, order=preset)
    np.testing.assert_array_equal(np.flatnonzero(oracle.pipeline_kept(LOG4, **params)), kept)
    q = np.zeros(4)
    q[kept] = np.asarray([0.4, 0.3, 0.2, 0.1])[kept]
    cum = np.cumsum(q / q.sum())
    for k in kept:
        u = cum[k] - q[k] / q.sum() / 2
        assert lk.sample(LOG4, uniforms=u, **params) == k
    assert lk.sample(LOG4, uniforms=0.999, **params) == kept[-1]


@pytest.mark.parametrize("preset", oracle.ORDERS)
def test_min_keep_never_revives_a_top_k_removal(preset):
    x = np.asarray([0.0, 3.0, 1.0, 2.0], dtype=np.float32)
    for u in (0.0, 0.5, 0.999):
        assert lk.sample(x, top_k=1, min_keep=3, uniforms=u, order=preset) == 1
        assert lk.sample(x, top_k=1, min_p=1.0, min_keep=3, uniforms=u, order=preset) == 1
    # top-k keeps {1, 3}; p(1) = e^3 / (e^3 + e^2) = 0.731 over that set
    for u, token in ((0.0, 1), (0.7, 1), (0.76, 3), (0.999, 3)):
        assert lk.sample(x, top_k=2, top_p=0.0, min_keep=4, uniforms=u, order=preset) == token
        assert lk.sample(x, top_k=2, min_p=1.0, min_keep=4, uniforms=u, order=preset) == token


@pytest.mark.parametrize("preset", oracle.ORDERS)
def test_top_p_zero_with_min_keep(preset):
    x = np.asarray([0.0, 3.0, 1.0, 2.0], dtype=np.float32)
    kept = [1, 3]
    for u in (0.0, 0.3, 0.6, 0.999):
        got = lk.sample(x, top_p=0.0, min_keep=2, uniforms=u, order=preset)
        assert got in kept
        assert got == oracle.sample(x, u, top_p=0.0, min_keep=2, order=preset)


def test_masked_tokens_are_never_sampled():
    x = np.full(64, -np.inf, dtype=np.float32)
    x[[5, 40]] = [30.0, 29.0]
    # p(5) = 1 / (1 + e^-1) = 0.731
    for u, token in ((0.0, 5), (0.7, 5), (0.75, 40), (float(np.nextafter(1.0, 0.0)), 40)):
        assert lk.sample(x, uniforms=u) == token
        assert lk.sample(x, uniforms=u, top_k=5, top_p=0.99, min_p=0.01) == token


@pytest.mark.parametrize("vocab", [2, 3, 5, 7, 10, 20, 100, 1000, 1024, 1025, 3000, 10000])
def test_equal_logits_keep_the_written_share_of_top_p(vocab):
    # top_p = j / V written as a decimal keeps exactly j of V equal tokens, whichever way the
    # float64 nearest j / V rounds (0.4 is stored above 2/5, 0.3 below 3/10).
    x = np.zeros(vocab, dtype=np.float32)
    rng = np.random.default_rng(vocab)
    js = sorted({1, vocab // 2, vocab - 1, *rng.integers(1, vocab, 12).tolist()} - {0})
    for j in js:
        q = j / vocab
        kept = np.isfinite(lk.mask_top_p(x, q))
        assert kept.sum() == j and kept[:j].all(), (vocab, j, q)
        assert lk.sample(x, top_p=q, uniforms=0.999999) == j - 1
        assert np.isfinite(lk.mask_top_p(x * 0 + 3.0, q, temperature=0.7)).sum() == j


def test_boundaries_of_hand_made_probabilities_follow_the_exact_row():
    # Probabilities in tenths put cumulative sums within float32 rounding of top_p and u, or
    # exactly on them (equal logits: 0.2 + 0.3 of (0.2, 0.3, 0.3, 0.2) is 1/2). The row decides
    # exactly (rational arithmetic on its float64 weights): the crossing token is kept when its
    # prefix has mass >= top_p, and the draw returns the first id whose cumulative probability
    # exceeds u (an equal one does not).
    cases = [probs for parts in (2, 3, 4) for probs in compositions(parts, 10)]
    assert len(cases) == 9 + 36 + 84
    for probs, tenth in itertools.product(cases, range(1, 10)):
        x = np.log(np.asarray(probs) / 10).astype(np.float32)
        w = [Fraction(float(v)) for v in np.exp(x.astype(np.float64) - x.max())]
        q = tenth / 10
        order = [int(i) for i in np.argsort(-x, kind="stable")]
        cum_rank = list(itertools.accumulate(w[i] for i in order))
        reach = (Fraction(q) - Fraction(oracle.TOP_P_SLACK)) * sum(w)
        n = next(j + 1 for j, c in enumerate(cum_rank) if c >= reach)
        kept = sorted(order[:n])
        want = np.full(len(probs), -np.inf, dtype=np.float32)
        want[kept] = x[kept]
        np.testing.assert_array_equal(lk.mask_top_p(x, q), want, err_msg=f"{probs} {q}")

        def first_above(ids, u, w=w):
            total = sum(w[i] for i in ids)
            cum = itertools.accumulate(w[i] for i in ids)
            return next(i for i, c in zip(ids, cum, strict=True) if c > Fraction(u) * total)

        assert lk.sample(x, uniforms=q) == first_above(range(len(probs)), q), (probs, q)
        assert lk.sample(x, top_p=q, uniforms=0.0) == kept[0], (probs, q)
        assert lk.sample(x, top_p=q, uniforms=0.5) == first_above(kept, 0.5), (probs, q)


def test_zero_uniform_returns_the_first_token_of_positive_probability():
    # The exact probability of token 0 is about 3.7e-44 in both rows: more than u = 0.
    assert lk.sample(np.asarray([0.0, 100.0], dtype=np.float32), uniforms=0.0) == 0
    x = np.asarray([-0.1, 0.0], dtype=np.float32)
    assert lk.sample(x, temperature=0.001, uniforms=0.0) == 0


@pytest.mark.parametrize("pad", [0, 1100])
def test_extreme_temperature_limits_do_not_depend_on_the_row_length(pad):
    # README: an inverse temperature that is 0 in float32 is the uniform distribution; logits
    # more than 3.4e38 apart weigh e^((x - x_max) / T) all the same. Short rows (decided
    # exactly near a boundary) and long ones agree.
    def row(*v):
        return np.concatenate([np.asarray(v, dtype=np.float32), np.full(pad, -np.inf, np.float32)])

    x = row(1e38, -1e38)
    assert lk.sample(x, temperature=1e46, uniforms=0.5) == 1
    kept = lk.mask_top_p(x, 0.5 + 1e-6, temperature=1e46)  # past 1/2 and its allowance
    assert np.isfinite(kept[:2]).all()
    y = row(3e38, -1e38)  # 4e38 apart: token 1 has probability 1 / (1 + e^4) at T = 1e38
    p1 = 1.0 / (1.0 + math.exp(4.0))
    assert lk.sample(y, temperature=1e38, uniforms=1.0 - p1 * 1.01) == 0
    assert lk.sample(y, temperature=1e38, uniforms=1.0 - p1 * 0.99) == 1
    assert np.isneginf(lk.mask_top_p(y, 1.0 - p1 * 1.01, temperature=1e38)[1])
    assert np.isfinite(lk.mask_top_p(y, 1.0 - p1 * 0.99, temperature=1e38)[:2]).all()
    # 2^102 more than the float32 range apart, a gap whose float32 difference rounds to 3.4e38:
    # token 0 has probability 0.4157 at T = 1e39.
    a = 2.0**126 - 3 * 2.0**102
    w = row(-(float(np.finfo(np.float32).max) + 2.0**102 - a), a)
    assert lk.sample(w, temperature=1e39, uniforms=0.0) == 0
    assert lk.sample(w, temperature=1e39, uniforms=0.41) == 0
    assert lk.sample(w, temperature=1e39, uniforms=0.42) == 1
    assert np.isfinite(lk.mask_top_p(w, 0.585, temperature=1e39)[:2]).all()
    # 1 / T is 0 in float32 at T = 2e45 but 2 / T is not: the uniform limit holds for a row
    # weighed on a halved copy (logits more than 3.4e38 apart) as for any other.
    for far in (row(3e38, -3e38), row(1.7e38, -1.6e38)):
        assert lk.sample(far, temperature=2e45, uniforms=0.5) == 1
        np.testing.assert_array_equal(lk.softmax(far, temperature=2e45)[:2], [0.5, 0.5])
    z = row(-3.4e38, 3.4e38, 0.0)  # uniform at T = 1e300: one third each
    assert [lk.sample(z, temperature=1e300, uniforms=u) for u in (0.3, 0.6, 0.9)] == [0, 1, 2]


@pytest.mark.parametrize("vocab", [2, 1024, 1025, 128256])
def test_zero_uniform_does_not_depend_on_the_row_length(vocab):
    # Token 0's probability is about 1.7e-48 (> u = 0) however many -inf tokens pad the row.
    x = np.full(vocab, -np.inf, dtype=np.float32)
    x[0], x[1] = -110.0, 0.0
    assert lk.sample(x, uniforms=0.0) == 0
    assert lk.sample(x, uniforms=1e-300) == 0
    assert lk.sample(x, top_k=2, uniforms=0.0) == 0
