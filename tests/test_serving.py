"""The serving layer (SPEC §7): SamplingParams, from_openai and sample_batch."""

import copy
import dataclasses
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import logitkit as lk


def _rows(seed: int, b: int, v: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 2.0, (b, v)).astype(np.float32)


def _log_softmax64(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    out = np.full(z.shape, -np.inf)
    fin = np.isfinite(z)
    m = z[fin].max()
    out[fin] = z[fin] - m - np.log(np.exp(z[fin] - m).sum())
    return out


# ---------------------------------------------------------------------------------------------
# SamplingParams


def test_defaults():
    p = lk.SamplingParams()
    assert p.logprobs is None
    assert p.allowed_token_ids is None
    assert len(p.logit_bias) == 0 and len(p.stop_token_ids) == 0
    assert p.min_tokens == 0
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.min_keep) == (1.0, 0, 1.0, 0.0, 1)
    assert p.logprobs_mode == "raw" and p.order == "default" and p.seed is None


def test_frozen_and_replace_revalidates():
    p = lk.SamplingParams(temperature=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 1.0  # type: ignore[misc]
    q = dataclasses.replace(p, top_k=5)
    assert (q.temperature, q.top_k) == (0.5, 5)
    with pytest.raises(ValueError, match="top_p"):
        dataclasses.replace(p, top_p=2.0)


def test_container_fields_are_read_only_copies():
    """A frozen SamplingParams holds read-only copies: a change would show in the field (and
    the hash) but not in what is sampled, so none is allowed; they still compare, print and
    serialise as the dict and lists they were given as."""
    bias, stop = {1: 5.0}, [3]
    p = lk.SamplingParams(temperature=0.0, logit_bias=bias, stop_token_ids=stop,
                          allowed_token_ids=[1, 2])  # fmt: skip
    bias[2], stop[0] = 100.0, 0  # the caller's own containers stay theirs
    assert p.logit_bias == {1: 5.0} and p.stop_token_ids == [3]
    attempts = [
        lambda: p.logit_bias.__setitem__(2, 100.0),
        lambda: p.logit_bias.update({2: 100.0}),
        lambda: p.logit_bias.pop(1),
        lambda: p.logit_bias.clear(),
        lambda: p.stop_token_ids.append(0),
        lambda: p.stop_token_ids.__setitem__(0, 1),
        lambda: p.allowed_token_ids.extend([3]),
        lambda: p.allowed_token_ids.sort(),
        lambda: p.logit_bias.__init__({9: 1.0}),
        lambda: p.stop_token_ids.__init__([9]),
    ]
    for attempt in attempts:
        with pytest.raises(TypeError, match=r"dataclasses\.replace"):
            attempt()
    assert p.logit_bias == {1: 5.0} and p.allowed_token_ids == [1, 2]
    x = np.zeros((1, 4), dtype=np.float32)
    assert lk.sample_batch(x, p).tokens.tolist() == [1]
    q = dataclasses.replace(p, logit_bias={**p.logit_bias, 2: 100.0})
    assert lk.sample_batch(x, q).tokens.tolist() == [2]
    assert repr(p).endswith("logit_bias={1: 5.0}, allowed_token_ids=[1, 2], stop_token_ids=[3], "
                            "min_tokens=0, seed=None, logprobs=None, logprobs_mode='raw', "
                            "order='default')")  # fmt: skip
    assert isinstance(p.logit_bias, dict) and isinstance(p.stop_token_ids, list)
    assert (
        type(copy.copy(p.logit_bias)) is dict
        and type(pickle.loads(pickle.dumps(p.stop_token_ids))) is list
    )
    # asdict / astuple give plain containers that a server may go on to change.
    d = dataclasses.asdict(p)
    assert type(d["logit_bias"]) is dict and type(d["stop_token_ids"]) is list
    d["logit_bias"][2] = 1.0
    d["stop_token_ids"].append(4)
    assert type(dataclasses.astuple(p)[8]) is dict


def test_params_pickle_and_copy_to_equal_working_params():
    """Servers move params between processes (pickle) and copy them (copy, deepcopy)."""
    p = lk.SamplingParams(
        temperature=0.7, top_k=5, top_p=0.9, logit_bias={3: -1.5}, stop_token_ids=[2],
        allowed_token_ids=[1, 2, 3], min_tokens=1, seed=9, logprobs=2, order="vllm",
    )  # fmt: skip
    x = np.random.default_rng(0).normal(0, 2, (2, 50)).astype(np.float32)
    want = lk.sample_batch(x, p, output_tokens=[[1], [3]])
    for q in (pickle.loads(pickle.dumps(p)), copy.copy(p), copy.deepcopy(p)):
        assert q == p and type(q) is lk.SamplingParams
        got = lk.sample_batch(x, q, output_tokens=[[1], [3]])
        assert got.tokens.tolist() == want.tokens.tolist()
        assert np.array_equal(got.top_logprobs, want.top_logprobs)


BAD_FIELDS = [
    ("temperature", -0.1),
    ("temperature", float("nan")),
    ("temperature", float("inf")),
    ("top_k", 1.5),
    ("top_k", "5"),
    ("top_p", 1.01),
    ("top_p", -0.01),
    ("min_p", 1.5),
    ("min_p", float("nan")),
    ("min_keep", 0),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", float("inf")),
    ("presence_penalty", float("nan")),
    ("frequency_penalty", float("-inf")),
    ("logit_bias", {1: float("nan")}),
    ("logit_bias", {1: float("inf")}),
    ("logit_bias", {-1: 1.0}),
    ("logit_bias", [1, 2]),
    ("allowed_token_ids", [-3]),
    ("allowed_token_ids", []),
    ("stop_token_ids", [1.5]),
    ("stop_token_ids", np.array(1)),
    ("allowed_token_ids", np.array([[1, 2]])),
    ("min_tokens", -1),
    ("seed", -1),
    ("seed", 2**64),
    ("logprobs", -1),
    ("logprobs_mode", "final"),
    ("logprobs_mode", np.array([1, 2])),
    ("order", "hf"),
    ("order", np.array(["vllm"])),
    ("order", np.array([1, 2])),
    ("order", None),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_invalid_field_raises_value_error_naming_it(field, value):
    with pytest.raises(ValueError, match=field):
        lk.SamplingParams(**{field: value})


def test_bias_of_minus_inf_is_valid():
    lk.SamplingParams(logit_bias={3: float("-inf")})


def test_none_bias_and_stop_ids_mean_empty():
    p = lk.SamplingParams(logit_bias=None, stop_token_ids=None)  # type: ignore[arg-type]
    assert p == lk.SamplingParams() and p.logit_bias == {} and p.stop_token_ids == []


def test_params_hash_by_their_fields():
    a = lk.SamplingParams(logit_bias={3: -1.5, 1: 2.0}, stop_token_ids=[2, 5], seed=1)
    b = lk.SamplingParams(logit_bias={"1": 2, 3: -1.5}, stop_token_ids=(2, 5), seed=1)
    assert a == b and hash(a) == hash(b)
    groups = {a: "a", lk.SamplingParams(): "default"}
    assert groups[b] == "a" and groups[lk.SamplingParams(temperature=1)] == "default"
    assert len({a, b, dataclasses.replace(a, stop_token_ids=[5, 2])}) == 2


# ---------------------------------------------------------------------------------------------
# from_openai


def test_from_openai_logprobs_rules():
    assert lk.SamplingParams.from_openai({"logprobs": True, "top_logprobs": 4}).logprobs == 4
    assert lk.SamplingParams.from_openai({"logprobs": True}).logprobs == 0
    assert lk.SamplingParams.from_openai({"logprobs": False}).logprobs is None
    assert lk.SamplingParams.from_openai({}).logprobs is None


def test_from_openai_reads_sampling_keys_and_ignores_the_rest():
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 12,
        "stop": ["\n"],
        "n": 1,
        "stream": False,
        "user": "u",
        "temperature": 0.3,
        "top_p": 0.8,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "seed": 99,
        "logit_bias": {"17": -100, "4": 2.5},
        "top_k": 20,
        "min_p": 0.1,
        "repetition_penalty": 1.2,
        "min_tokens": 3,
        "stop_token_ids": [2],
    }
    p = lk.SamplingParams.from_openai(body)
    assert (p.temperature, p.top_p, p.top_k, p.min_p) == (0.3, 0.8, 20, 0.1)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.5, 0.25, 1.2)
    assert p.seed == 99 and p.min_tokens == 3 and list(p.stop_token_ids) == [2]
    assert dict(p.logit_bias) == {17: -100.0, 4: 2.5}


def test_from_openai_null_means_default_and_bad_values_name_the_field():
    assert lk.SamplingParams.from_openai({"temperature": None}).temperature == 1.0
    with pytest.raises(ValueError, match="top_p"):
        lk.SamplingParams.from_openai({"top_p": 3})
    with pytest.raises(ValueError, match="logit_bias"):
        lk.SamplingParams.from_openai({"logit_bias": {"abc": 1}})
    with pytest.raises(ValueError, match="typical_p"):
        lk.SamplingParams.from_openai({"typical_p": 0.9})
    # Only integers and integer strings are token ids; values that are not numbers are named.
    for key in (1.5, 2.0, True, "1.5", "²", "--5", "4_2", "٤", " 1", "1 ", "\t1", "1\n", "", "+"):
        with pytest.raises(ValueError, match="logit_bias"):
            lk.SamplingParams(logit_bias={key: 1.0})
        with pytest.raises(ValueError, match="logit_bias"):
            lk.SamplingParams.from_openai({"logit_bias": {key: 1.0}})
    for name in ("presence_penalty", "repetition_penalty", "temperature"):
        with pytest.raises(ValueError, match=name):
            lk.SamplingParams.from_openai({name: np.array([1.0, 2.0]), "repeat_last_n": 64})


def test_from_openai_accepts_unsupported_features_that_are_off():
    """A body dumped with another engine's defaults: features that are off are accepted."""
    off = {
        "typical_p": 1.0, "tfs_z": 1.0, "top_a": 0.0, "mirostat": 0, "mirostat_tau": 5.0,
        "mirostat_eta": 0.1, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "dry_multiplier": 0.0,
        "dry_base": 1.75, "dry_allowed_length": 2, "dry_sequence_breakers": ["\\n"],
        "xtc_probability": 0.0, "xtc_threshold": 0.1, "top_n_sigma": -1.0,
        "use_beam_search": False, "length_penalty": 1.0, "bad_words": [], "guided_json": None,
        "dynatemp_range": 0.0, "repeat_penalty": 1.0, "repeat_last_n": 64,
        "no_repeat_ngram_size": 0, "temperature": 0.5, "rep_pen": 1.0, "tfs": 1.0,
        "typical": 1.0, "nsigma": 0.0, "smoothing_factor": 0.0, "do_sample": True,
        "temperature_last": False, "suppress_tokens": [], "bad_words_ids": [],
        "sequence_bias": {}, "encoder_repetition_penalty": 1.0, "rep_pen_range": 320,
        "repetition_penalty_range": 1024, "samplers": ["top_k", "temperature"],
    }  # fmt: skip
    assert lk.SamplingParams.from_openai(off) == lk.SamplingParams(temperature=0.5)
    for key, on in [
        ("typical_p", 0.95), ("mirostat", 2), ("top_n_sigma", 1.5), ("use_beam_search", True),
        ("bad_words", ["x"]), ("logits_processors", ["m.f"]), ("repeat_penalty", 1.1),
        ("dry_multiplier", 0.8), ("xtc_probability", 0.5), ("tfs_z", 0.9), ("rep_pen", 1.1),
        ("tfs", 0.9), ("typical", 0.9), ("nsigma", 1.0), ("smoothing_factor", 0.3),
        ("do_sample", False), ("temperature_last", True), ("suppress_tokens", [5]),
        ("bad_words_ids", [[5]]), ("sequence_bias", {"5": -1.0}),
        ("encoder_repetition_penalty", 1.2),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=key):
            lk.SamplingParams.from_openai({**off, key: on})
    # structured output arrives as sample_batch's token_bitmask: its keys are not read here
    constrained = {
        "response_format": {"type": "json_object"}, "guided_json": {"type": "object"},
        "guided_regex": "a+", "guided_choice": ["a", "b"], "structured_outputs": {"regex": "a"},
        "grammar": 'root ::= "a"', "json_schema": {}, "temperature": 0.5,
    }  # fmt: skip
    assert lk.SamplingParams.from_openai(constrained) == lk.SamplingParams(temperature=0.5)
    # a penalty window is refused only while a penalty is on (-1 is the whole context)
    with pytest.raises(ValueError, match="repeat_last_n"):
        lk.SamplingParams.from_openai({"repeat_last_n": 64, "frequency_penalty": 0.5})
    p = lk.SamplingParams.from_openai({"repeat_last_n": -1, "frequency_penalty": 0.5})
    assert p.frequency_penalty == 0.5
    for key, window in [
        ("repetition_penalty_range", 1024),
        ("rep_pen_range", 320),
        ("rep_pen_range", 0),
    ]:
        with pytest.raises(ValueError, match=key):
            lk.SamplingParams.from_openai({key: window, "repetition_penalty": 1.1})
    p = lk.SamplingParams.from_openai({"repetition_penalty_range": 0, "repetition_penalty": 1.1})
    assert p.repetition_penalty == 1.1


# ---------------------------------------------------------------------------------------------
# sample_batch against per-row sample


def test_matches_sample_row_by_row_with_default_steps():
    x = _rows(0, 6, 300)
    outs = [list(range(i)) for i in range(6)]
    params = [
        lk.SamplingParams(temperature=0.0),
        lk.SamplingParams(temperature=0.7, top_k=20, seed=11),
        lk.SamplingParams(top_p=0.8, seed=12),
        lk.SamplingParams(min_p=0.1, temperature=1.3, seed=13, order="vllm"),
        lk.SamplingParams(top_k=40, top_p=0.95, min_p=0.05, temperature=0.8, seed=14,
                          order="llama.cpp"),
        lk.SamplingParams(seed=15, min_keep=3, top_p=0.0),
    ]  # fmt: skip
    got = lk.sample_batch(x, params, output_tokens=outs).tokens
    for r, p in enumerate(params):
        want = lk.sample(x[r], temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                         min_p=p.min_p, min_keep=p.min_keep, order=p.order,
                         seed=p.seed or 0, step=len(outs[r]))  # fmt: skip
        assert got[r] == want, r


@given(seed=st.integers(0, 2**32), b=st.integers(1, 5), v=st.integers(2, 200))
def test_bias_and_penalties_then_sample(seed, b, v):
    x = _rows(seed, b, v)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, v, rng.integers(0, 6)) for _ in range(b)]
    outs = [rng.integers(0, v, rng.integers(0, 6)) for _ in range(b)]
    bias = {int(rng.integers(0, v)): float(rng.normal(0, 3))}
    p = lk.SamplingParams(repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2,
                          logit_bias=bias, temperature=0.9, top_k=10, seed=seed)  # fmt: skip
    got = lk.sample_batch(x, p, prompt_tokens=prompts, output_tokens=outs).tokens
    z = lk.apply_penalties(lk.apply_logit_bias(x, bias), prompt_tokens=prompts,
                           output_tokens=outs, repetition_penalty=1.3, presence_penalty=0.4,
                           frequency_penalty=0.2)  # fmt: skip
    for r in range(b):
        assert got[r] == lk.sample(z[r], temperature=0.9, top_k=10, seed=seed, step=len(outs[r]))


def test_row_results_do_not_depend_on_batch_composition_or_threads():
    x = _rows(3, 16, 5000)
    p = lk.SamplingParams(temperature=0.8, top_p=0.9, seed=5)
    alone = [int(lk.sample_batch(x[r : r + 1], p).tokens[0]) for r in range(16)]
    for threads in (1, 2):
        lk.set_num_threads(threads)
        assert lk.sample_batch(x, p).tokens.tolist() == alone
        assert lk.sample_batch(x[::-1].copy(), p).tokens.tolist() == alone[::-1]


def test_steps_override_and_reproducibility():
    x = _rows(4, 3, 1000)
    p = lk.SamplingParams(seed=77)
    a = lk.sample_batch(x, p, steps=np.array([5, 6, 7])).tokens
    b = lk.sample_batch(x, p, output_tokens=[[0] * 5, [0] * 6, [0] * 7]).tokens
    assert a.tolist() == b.tolist()
    for r, s in enumerate((5, 6, 7)):
        assert a[r] == lk.sample(x[r], seed=77, step=s)


# ---------------------------------------------------------------------------------------------
# Masks


def test_allowed_ids_stop_ids_and_min_tokens():
    v = 50
    x = np.zeros((2, v), dtype=np.float32)
    x[:, 7] = 20.0  # token 7 dominates
    p = lk.SamplingParams(stop_token_ids=[7], min_tokens=2, seed=1)
    early = lk.sample_batch(x, p, output_tokens=[[1], [1, 2]]).tokens
    assert early[0] != 7 and early[1] == 7
    q = lk.SamplingParams(allowed_token_ids=[3, 4], seed=2)
    for s in range(30):
        assert lk.sample_batch(x, q, steps=s).tokens[0] in (3, 4)


@given(seed=st.integers(0, 2**32), v=st.integers(1, 130))
def test_bitmask_is_respected_and_bits_beyond_v_are_ignored(seed, v):
    rng = np.random.default_rng(seed)
    words = -(-v // 32)
    allowed = rng.random(v) < 0.3
    allowed[rng.integers(0, v)] = True
    bits = np.zeros(words * 32, dtype=bool)
    bits[:v] = allowed
    bits[v:] = True  # must be ignored
    mask = np.packbits(bits.reshape(words, 32)[:, ::-1], axis=-1, bitorder="big")
    mask = mask.view(">u4").astype(np.uint32).view(np.int32).reshape(1, words)
    x = _rows(seed, 1, v)
    p = lk.SamplingParams(temperature=1.5, seed=seed)
    for s in range(5):
        tok = int(lk.sample_batch(x, p, token_bitmask=mask, steps=s).tokens[0])
        assert 0 <= tok < v and allowed[tok]
    greedy = lk.sample_batch(x, lk.SamplingParams(temperature=0.0), token_bitmask=mask).tokens[0]
    masked = np.where(allowed, x[0], -np.inf)
    assert greedy == int(np.argmax(masked))


def test_bitmask_words_in_either_byte_order_read_alike():
    x = np.random.default_rng(5).normal(0, 2, (2, 70)).astype(np.float32)
    mask = np.random.default_rng(6).integers(-(2**31), 2**31, (2, 3)).astype(np.int32)
    p = lk.SamplingParams(seed=3)
    want = lk.sample_batch(x, p, token_bitmask=mask).tokens
    for m in (mask.astype(">i4"), mask.view(np.uint32).astype(">u4")):
        np.testing.assert_array_equal(lk.sample_batch(x, p, token_bitmask=m).tokens, want)


def test_raw_logprobs_depend_on_the_logits_alone():
    """Raw log-probabilities of a row are the same bits whatever its temperature, filters,
    penalties or (all-ones) bitmask, and equal logprobs()'s; so a request's raw log-probs do
    not change with the other requests of its batch (a grammar request adds a bitmask)."""
    rng = np.random.default_rng(0)
    v = 50000
    x = rng.normal(0, 2, (1, v)).astype(np.float32)
    x[0, 40000] = 12.0
    ones = np.full((1, -(-v // 32)), -1, dtype=np.int32)
    variants = [
        {}, {"top_k": 40}, {"temperature": 0.5}, {"temperature": 0.0}, {"top_p": 0.9},
        {"min_p": 0.1, "temperature": 2.0}, {"temperature": 0.7, "order": "llama.cpp"},
    ]  # fmt: skip
    variants.append({"repetition_penalty": 1.3, "logit_bias": {5: 2.0}})
    results = []
    for kw in variants:
        p = lk.SamplingParams(seed=1, logprobs=3, **kw)
        for mask in (None, ones):
            r = lk.sample_batch(x, p, token_bitmask=mask, output_tokens=[[40000, 7]])
            results.append((r.top_ids.tolist(), r.top_logprobs.tobytes()))
    assert all(r == results[0] for r in results), "raw log-probs changed with the parameters"
    ref = lk.logprobs(x[0], np.array([40000]), top_n=3)
    assert results[0] == (ref.top_ids.reshape(1, 3).tolist(), ref.top_logprobs.tobytes())


def test_bad_bitmask_and_empty_rows():
    x = _rows(5, 2, 64)
    p = lk.SamplingParams(seed=0)
    with pytest.raises(ValueError, match="token_bitmask"):
        lk.sample_batch(x, p, token_bitmask=np.zeros((2, 3), dtype=np.int32))
    with pytest.raises(TypeError, match="token_bitmask"):
        lk.sample_batch(x, p, token_bitmask=np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="row 1"):
        lk.sample_batch(x, p, token_bitmask=np.array([[1, 0], [0, 0]], dtype=np.int32))
    with pytest.raises(ValueError, match="allowed_token_ids"):
        lk.sample_batch(x, lk.SamplingParams(allowed_token_ids=[64]))
    with pytest.raises(ValueError, match="output_tokens"):
        lk.sample_batch(x, p, output_tokens=[[0], [64]])
    with pytest.raises(ValueError, match="params"):
        lk.sample_batch(x, [p])
    with pytest.raises(ValueError, match="logits"):
        lk.sample_batch(x[0], p)
    bad = x.copy()
    bad[1, 9] = np.nan
    with pytest.raises(ValueError, match=r"row 1.*index 9"):
        lk.sample_batch(bad, p)


# ---------------------------------------------------------------------------------------------
# Logprobs


@given(seed=st.integers(0, 2**32), n=st.integers(0, 5))
def test_raw_logprobs_match_the_oracle(seed, n):
    x = _rows(seed, 3, 97)
    p = lk.SamplingParams(temperature=0.7, top_k=5, seed=seed, logprobs=n)
    res = lk.sample_batch(x, p)
    assert res.top_ids is not None and res.top_ids.shape == (3, n)
    for r in range(3):
        ref = _log_softmax64(x[r])
        t = res.tokens[r]
        assert res.logprobs[r] == pytest.approx(ref[t], abs=2e-5)
        assert res.ranks[r] == 1 + int((ref > ref[t]).sum())
        order = np.lexsort((np.arange(97), -ref))[:n]
        assert res.top_ids[r].tolist() == order.tolist()
        np.testing.assert_allclose(res.top_logprobs[r], ref[order], atol=2e-5)


@given(seed=st.integers(0, 2**32))
def test_processed_logprobs_are_over_the_kept_tempered_set(seed):
    x = _rows(seed, 2, 120)
    t = 0.6
    p = lk.SamplingParams(temperature=t, top_k=7, seed=seed, logprobs=10,
                          logprobs_mode="processed")  # fmt: skip
    res = lk.sample_batch(x, p)
    for r in range(2):
        kept = np.argsort(-x[r], kind="stable")[:7]
        z = np.full(120, -np.inf)
        z[kept] = x[r, kept].astype(np.float64) / t
        ref = _log_softmax64(z)
        tok = res.tokens[r]
        assert tok in kept
        assert res.logprobs[r] == pytest.approx(ref[tok], abs=2e-5)
        assert res.ranks[r] == 1 + int((ref > ref[tok]).sum())
        assert res.top_ids[r, :7].tolist() == kept.tolist()
        # The row asked for 10: the top 10 of the processed distribution holds 3 removed tokens
        # (log-probability -inf), ties in increasing id order.
        assert res.top_ids[r, 7:].tolist() == [t for t in range(120) if t not in kept][:3]
        assert np.isneginf(res.top_logprobs[r, 7:]).all()
        np.testing.assert_allclose(res.top_logprobs[r, :7], ref[kept], atol=2e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.9, 1e-3, 1e3, 1e35])
@pytest.mark.parametrize("big", [False, True])
def test_log_probabilities_are_the_values_of_log_softmax(temperature, big):
    """ "raw": log_softmax(logits); "processed" with nothing removed: log_softmax(logits, T); bit
    for bit, as logprobs() gives them (the top entries too)."""
    x = _rows(5, 3, 700) * (np.float32(1e31) if big else np.float32(1))
    x[1, ::5] = -np.inf
    bits = lambda a: np.asarray(a, dtype=np.float32).view(np.uint32)  # noqa: E731
    for mode, t in [("raw", 1.0), ("processed", temperature)]:
        p = lk.SamplingParams(temperature=temperature, seed=3, logprobs=6, logprobs_mode=mode)
        res = lk.sample_batch(x, p)
        ls = lk.log_softmax(x, temperature=t)
        for r in range(3):
            tok = res.tokens[r]
            assert bits(res.logprobs[r]) == bits(ls[r, tok]), (mode, r)
            np.testing.assert_array_equal(bits(res.top_logprobs[r]), bits(ls[r, res.top_ids[r]]))
            if mode == "raw":
                one = lk.logprobs(x[r], [tok], top_n=6)
                assert bits(one.token_logprobs[0]) == bits(res.logprobs[r])


@pytest.mark.parametrize("temperature", [1e-40, 1e-300])
def test_processed_logprobs_at_a_clamped_scale_are_log_softmax(temperature):
    """Below T = 1 / 2.3586574e38 the weights and the log-probabilities use the same scale."""
    x = np.asarray([[0.0, -1e-38]], dtype=np.float32)
    p = lk.SamplingParams(temperature=temperature, logprobs=2, logprobs_mode="processed", seed=1)
    got = lk.sample_batch(x, p).top_logprobs[0]
    np.testing.assert_allclose(got, lk.log_softmax(x[0], temperature=temperature), rtol=1e-5)
    assert abs(np.exp(got.astype(np.float64)).sum() - 1.0) < 1e-5


def test_logprob_fields_are_none_unless_requested_and_padded_per_row():
    x = _rows(9, 2, 40)
    res = lk.sample_batch(x, lk.SamplingParams(seed=1))
    assert res.logprobs is None and res.ranks is None and res.top_ids is None
    res = lk.sample_batch(x, [lk.SamplingParams(seed=1, logprobs=3),
                              lk.SamplingParams(seed=1, logprobs=1)])  # fmt: skip
    assert res.top_ids.shape == (2, 3)
    assert res.top_ids[1, 1:].tolist() == [-1, -1]
    assert res.tokens.dtype == np.int64 and res.logprobs.dtype == np.float32


@pytest.mark.parametrize("temperature", [1e-310, 1e-45, 1e-30])
def test_processed_logprobs_at_tiny_temperature_are_a_point_mass(temperature):
    """T -> 0 is greedy in the limit: the maximum has log-probability 0; every other kept token
    has (z - z_max) / T (with 1 / T clamped to 2.3586574e38, the scale of every kernel),
    saturated at the most negative float32 once it leaves the float32 range (finite logits keep
    finite log-probabilities; never NaN, also where 1 / T overflows)."""
    x = np.asarray([[0.0, 1.0, -np.inf, 0.5]], dtype=np.float32)
    p = lk.SamplingParams(temperature=temperature, logprobs=3, logprobs_mode="processed", seed=1)
    got = lk.sample_batch(x, p)
    assert got.tokens[0] == 1 and got.logprobs[0] == 0.0 and got.ranks[0] == 1
    assert got.top_ids[0, 0] == 1 and got.top_logprobs[0, 0] == 0.0
    assert got.top_ids[0].tolist() == [1, 3, 0]
    # log_softmax(z / T) is (z - z_max) / T minus log(1) here, saturated below float32's range
    d = x[0, [1, 3, 0]].astype(np.float64) - 1.0
    with np.errstate(over="ignore"):
        exact = d / temperature if 1 / temperature < 2.3586574e38 else d * 2.3586574e38
    want = np.maximum(exact, -float(np.finfo(np.float32).max)).astype(np.float32)
    np.testing.assert_array_equal(got.top_logprobs[0], want)


def test_fields_hold_the_validated_values():
    """String bias keys become ids, numbers plain Python numbers, containers private copies."""
    bias = {"5": 1, 7: -np.inf}
    allowed = [1, 2, 5]
    p = lk.SamplingParams(temperature=np.float32(0.5), top_k=np.int64(3), logit_bias=bias,
                          allowed_token_ids=allowed, stop_token_ids=np.array([4]))  # fmt: skip
    assert p.logit_bias == {5: 1.0, 7: -np.inf}
    assert p == lk.SamplingParams(temperature=0.5, top_k=3, logit_bias={5: 1.0, 7: -np.inf},
                                  allowed_token_ids=[1, 2, 5], stop_token_ids=[4])  # fmt: skip
    assert type(p.temperature) is float and type(p.top_k) is int
    assert p.stop_token_ids == [4] and type(p.stop_token_ids[0]) is int
    bias["5"] = np.nan
    allowed.append(9)
    assert p.logit_bias[5] == 1.0 and p.allowed_token_ids == [1, 2, 5]
    with pytest.raises(ValueError, match="logit_bias"):
        lk.SamplingParams(logit_bias={"5": 1.0, 5: 2.0})
    q = lk.SamplingParams(order=np.str_("vllm"), logprobs_mode=np.str_("processed"))
    assert type(q.order) is str and type(q.logprobs_mode) is str
    assert q == lk.SamplingParams(order="vllm", logprobs_mode="processed")


@pytest.mark.parametrize("mode", ["raw", "processed"])
def test_top_logprobs_list_masked_tokens_before_padding(mode):
    # SPEC §7/§8: the top n, ties to the lower id; padding only for rows that asked for fewer.
    x = np.asarray([[3, 1, 3, -np.inf, 2], [0, 0, 0, 0, 0]], dtype=np.float32)
    p5 = lk.SamplingParams(logprobs=5, top_k=2, seed=1, logprobs_mode=mode)
    res = lk.sample_batch(x, [p5, lk.SamplingParams(logprobs=2, seed=1, logprobs_mode=mode)])
    want = [0, 2, 4, 1, 3] if mode == "raw" else [0, 2, 1, 3, 4]
    assert res.top_ids[0].tolist() == want
    assert np.isneginf(res.top_logprobs[0, 2 if mode == "processed" else 4 :]).all()
    assert np.isfinite(res.top_logprobs[0, :2]).all()
    assert res.top_ids[1].tolist() == [0, 1, -1, -1, -1]
    if mode == "raw":
        np.testing.assert_array_equal(res.top_ids[0], lk.logprobs(x[0], [0], top_n=5).top_ids)


@pytest.mark.parametrize("n", [6, 2**40, 2**63, 2**70])
def test_logprobs_beyond_the_vocabulary_list_every_token_once(n):
    x = np.asarray([[0.5, 1, 0, -np.inf, 2]], dtype=np.float32)
    res = lk.sample_batch(x, lk.SamplingParams(logprobs=n, seed=3))
    assert res.top_ids.shape == (1, 5)
    assert res.top_ids[0].tolist() == [4, 1, 0, 2, 3]
    assert res.top_logprobs[0, 4] == -np.inf


def test_huge_integer_parameters_are_clamped_or_named():
    x = np.asarray([[0.5, 1, 0, 2]], dtype=np.float32)
    base = lk.sample_batch(x, lk.SamplingParams(seed=5)).tokens
    for kw in ({"top_k": 2**63}, {"top_k": -(2**70)}, {"min_tokens": 2**70}):
        got = lk.sample_batch(x, lk.SamplingParams(seed=5, **kw)).tokens
        np.testing.assert_array_equal(got, base)
    wide = lk.sample_batch(x, lk.SamplingParams(seed=5, top_p=0.0, min_keep=4)).tokens
    huge = lk.sample_batch(x, lk.SamplingParams(seed=5, top_p=0.0, min_keep=2**70)).tokens
    np.testing.assert_array_equal(huge, wide)
    for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty"):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            lk.SamplingParams(**{name: 10**400})
    with pytest.raises(ValueError, match="logit_bias"):
        lk.SamplingParams(logit_bias={1: 10**400})
    with pytest.raises(ValueError, match="temperature"):
        lk.SamplingParams.from_openai({"temperature": 10**400})


def test_from_openai_refuses_a_token_id_given_twice_and_negative_top_logprobs():
    with pytest.raises(ValueError, match=r"logit_bias.*token id 5 twice"):
        lk.SamplingParams.from_openai({"logit_bias": {"5": 1, 5: 2}})
    with pytest.raises(ValueError, match=r"logit_bias.*token id 5 twice"):
        lk.SamplingParams(logit_bias={"5": 1.0, "+05": 2.0})
    with pytest.raises(ValueError, match="top_logprobs"):
        lk.SamplingParams.from_openai({"logprobs": True, "top_logprobs": -1})
