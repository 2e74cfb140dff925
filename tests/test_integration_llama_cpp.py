"""logitkit.integrations.llama_cpp: the logits processor and ``sample_next``.

The processor is plain NumPy, so its tests on synthetic scores always run. The tests with a
model are opt-in: they need ``llama_cpp`` (llama-cpp-python) and ``gguf`` and are skipped
without them. The model is a tiny random llama-architecture GGUF (1 block, 32-dim embeddings,
a 299-token SentencePiece-style vocabulary) written here with ``gguf``; nothing is downloaded.
Run with::

    pip install llama-cpp-python gguf && python -m pytest -q tests/test_integration_llama_cpp.py
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import logitkit as lk
from logitkit.integrations.llama_cpp import (
    NEUTRAL_COMPLETION_KWARGS,
    NEUTRAL_GENERATE_KWARGS,
    LogitkitLogitsProcessor,
    next_logits,
    sample_next,
)

PARAMS: list[dict[str, Any]] = [
    {},
    {"temperature": 0.5},
    {"temperature": 0.0, "repetition_penalty": 1.5, "logit_bias": {3: 4.0}},
    {"top_k": 1},
    {"temperature": 0.7, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.3},
    {"temperature": 1.3, "top_p": 0.5, "min_keep": 3, "frequency_penalty": 0.4},
    {"temperature": 1.5, "min_p": 0.3, "top_k": 40, "top_p": 0.8, "order": "vllm"},
    {"temperature": 0.4, "top_k": 30, "top_p": 0.8, "min_p": 0.1, "order": "llama.cpp"},
    {"temperature": 1.2, "top_p": 0.95, "presence_penalty": 0.7, "order": "llama.cpp"},
    {"allowed_token_ids": [5, 6, 7, 8, 250], "top_k": 3, "logit_bias": {6: -np.inf}},
    {"stop_token_ids": [0, 1, 2], "min_tokens": 10, "top_p": 0.9},
]

VOCAB = 299


def _scores(seed: int, vocab: int = VOCAB) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).normal(0.0, 2.0, vocab).astype(np.float32)


def test_import_does_not_import_llama_cpp() -> None:
    code = (
        "import sys, logitkit, logitkit.integrations.llama_cpp\n"
        "assert 'llama_cpp' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# The processor on synthetic scores (no llama_cpp needed)


@pytest.mark.parametrize("fields", PARAMS, ids=[str(i) for i in range(len(PARAMS))])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_processor_is_the_distribution_sample_batch_draws_from(
    fields: dict[str, Any], seed: int
) -> None:
    """The processor's output, as a distribution, is ``sample_batch``'s "processed" one."""
    rng = np.random.default_rng(100 + seed)
    prompt = rng.integers(0, VOCAB, 12)
    output = rng.integers(0, VOCAB, 5)
    scores = _scores(seed)
    proc = LogitkitLogitsProcessor(lk.SamplingParams(**fields), prompt_len=prompt.size)
    z = proc(np.concatenate([prompt, output]), scores)
    assert z.dtype == np.float32 and z.shape == (VOCAB,)
    params = lk.SamplingParams(**fields, logprobs=VOCAB, logprobs_mode="processed", seed=seed)
    res = lk.sample_batch(scores[None, :], params, prompt_tokens=[prompt], output_tokens=[output])
    assert res.top_ids is not None and res.top_logprobs is not None
    processed = np.full(VOCAB, -np.inf)
    listed = res.top_ids[0] >= 0  # removed tokens are listed as id -1, log-prob -inf
    processed[res.top_ids[0][listed]] = res.top_logprobs[0][listed]
    kept = np.isfinite(z)
    np.testing.assert_array_equal(kept, np.isfinite(processed))
    assert kept[res.tokens[0]]
    if fields.get("temperature") == 0.0:
        assert kept.sum() == 1
        return
    zk = z[kept].astype(np.float64)
    log_p = zk - zk.max() - np.log(np.exp(zk - zk.max()).sum())
    np.testing.assert_allclose(log_p, processed[kept], rtol=0, atol=2e-5)


def test_processor_first_call_fixes_the_prompt_and_reset_forgets_it() -> None:
    scores = np.zeros(8, dtype=np.float32)
    proc = LogitkitLogitsProcessor(frequency_penalty=0.5, presence_penalty=0.25)
    assert proc.prompt_len is None
    np.testing.assert_array_equal(proc(np.array([1, 2, 2]), scores), scores)  # all prompt
    assert proc.prompt_len == 3
    z = proc(np.array([1, 2, 2, 5, 5, 2]), scores)
    want = scores.copy()
    want[5] -= 2 * 0.5 + 0.25
    want[2] -= 1 * 0.5 + 0.25
    np.testing.assert_array_equal(z, want)
    proc.reset()
    np.testing.assert_array_equal(proc(np.array([1, 2, 2, 5, 5, 2]), scores), scores)
    fixed = LogitkitLogitsProcessor(frequency_penalty=0.5, prompt_len=0)
    np.testing.assert_array_equal(fixed(np.array([4]), scores)[4], -0.5)


def test_processor_reads_the_logit_field_of_a_token_array() -> None:
    """llama-cpp-python passes the strided ``logit`` field of its (id, logit, p) array."""
    arr = np.zeros(VOCAB, dtype=np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]))
    arr["id"] = np.arange(VOCAB)
    arr["logit"] = _scores(5)
    before = arr.copy()
    proc = LogitkitLogitsProcessor(temperature=0.8, top_k=10, repetition_penalty=1.2)
    got = proc(np.array([1, 2, 3]), arr["logit"])
    want = LogitkitLogitsProcessor(proc.params)(np.array([1, 2, 3]), arr["logit"].copy())
    np.testing.assert_array_equal(got, want)
    assert got.flags.c_contiguous and np.isfinite(got).sum() == 10
    np.testing.assert_array_equal(arr, before)


def test_processor_masks() -> None:
    scores = np.arange(10, dtype=np.float32)
    allowed = LogitkitLogitsProcessor(allowed_token_ids=[1, 3, 4], logit_bias={4: -np.inf})
    assert np.flatnonzero(np.isfinite(allowed([0], scores))).tolist() == [1, 3]
    stop = LogitkitLogitsProcessor(stop_token_ids=[9, 8], min_tokens=2, prompt_len=1)
    assert np.isinf(stop([0, 5], scores)[[8, 9]]).all()  # 1 output token < min_tokens
    assert np.isfinite(stop([0, 5, 6], scores)).all()  # 2 output tokens: stop allowed
    greedy = LogitkitLogitsProcessor(temperature=0.0)
    assert np.flatnonzero(np.isfinite(greedy([0], np.ones(4, np.float32)))).tolist() == [0]


def test_processor_errors() -> None:
    with pytest.raises(TypeError, match="params"):
        LogitkitLogitsProcessor(lk.SamplingParams(), top_k=3)
    with pytest.raises(ValueError, match="top_p"):
        LogitkitLogitsProcessor(top_p=1.5)
    with pytest.raises(ValueError, match="prompt_len"):
        LogitkitLogitsProcessor(prompt_len=-1)
    proc = LogitkitLogitsProcessor(allowed_token_ids=[20])
    with pytest.raises(ValueError, match="allowed_token_ids"):
        proc([0], np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="input_ids"):
        LogitkitLogitsProcessor()([10], np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="scores"):
        LogitkitLogitsProcessor()([0], np.zeros((2, 10), np.float32))


# ---------------------------------------------------------------------------------------------
# With a model (opt-in)


def _build_tiny_llama(path: Path, seed: int = 0) -> int:
    """Writes a random 1-block llama GGUF with a 299-token SPM vocabulary; returns V."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(seed)
    n_embd, n_head, n_ff, n_ctx = 32, 2, 64, 256
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    words = ("the", "a", "of", "and", "to", "in", "is", "it", "that", "was")
    pieces = ["\u2581" + w for w in words] + list("abcdefghijklmnopqrstuvwxyz0123")
    tokens += [w.encode() for w in pieces]
    types += [gguf.TokenType.NORMAL] * len(pieces)
    scores = [0.0] * 3 + [-1000.0] * 256 + [-float(i) for i in range(len(pieces))]
    vocab = len(tokens)

    def weight(*shape: int, scale: float = 0.3) -> npt.NDArray[np.float32]:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("logitkit-tiny-llama")
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_file_type(0)  # all float32
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    # numpy shapes are (rows, cols) = ggml's (ne1, ne0): an (out, in) matrix per projection.
    w.add_tensor("token_embd.weight", weight(vocab, n_embd, scale=1.0))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("output.weight", weight(vocab, n_embd, scale=1.0))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.0.{name}.weight", weight(n_embd, n_embd))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("blk.0.ffn_gate.weight", weight(n_ff, n_embd))
    w.add_tensor("blk.0.ffn_up.weight", weight(n_ff, n_embd))
    w.add_tensor("blk.0.ffn_down.weight", weight(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return vocab


@pytest.fixture(scope="module")
def llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory, llama_cpp: Any) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    assert _build_tiny_llama(path) == VOCAB
    return path


@pytest.fixture(scope="module")
def llm(model_path: Path, llama_cpp: Any) -> Iterator[Any]:
    model = llama_cpp.Llama(str(model_path), n_ctx=256, n_batch=256, seed=1, verbose=False)
    assert model.n_vocab() == VOCAB
    yield model
    model.close()


PROMPT = b"the cat sat on a mat"


def _recording(
    proc: LogitkitLogitsProcessor,
) -> tuple[Callable[[Any, Any], Any], list[tuple[Any, Any, Any]]]:
    """``proc`` wrapped to record ``(input_ids, scores, result)`` copies of every call."""
    calls: list[tuple[Any, Any, Any]] = []

    def call(input_ids: Any, scores: Any) -> Any:
        result = proc(input_ids, scores)
        calls.append((np.array(input_ids), np.array(scores), result.copy()))
        return result

    return call, calls


def _decode(llm: Any, params: lk.SamplingParams, n: int) -> list[int]:
    """``n`` tokens of a logitkit decoding loop from ``PROMPT``."""
    llm.reset()
    llm.eval(llm.tokenize(PROMPT))
    out: list[int] = []
    for _ in range(n):
        out.append(sample_next(llm, params, output_tokens=out))
        llm.eval([out[-1]])
    return out


def test_next_logits_are_the_models_scores(model_path: Path, llama_cpp: Any, llm: Any) -> None:
    full = llama_cpp.Llama(
        str(model_path), n_ctx=256, n_batch=256, logits_all=True, seed=1, verbose=False
    )
    try:
        tokens = full.tokenize(PROMPT)
        full.eval(tokens)
        got = next_logits(full)
        np.testing.assert_array_equal(got, full.scores[full.n_tokens - 1])
        llm.reset()
        llm.eval(tokens)
        view = next_logits(llm, copy=False)
        assert view.shape == (VOCAB,) and not view.flags.writeable
        np.testing.assert_allclose(view, got, rtol=1e-4, atol=1e-4)
    finally:
        full.close()


def test_greedy_sample_next_is_llamas_argmax(llm: Any) -> None:
    params = lk.SamplingParams(temperature=0.0)
    llm.reset()
    llm.eval(llm.tokenize(PROMPT))
    out: list[int] = []
    for _ in range(8):
        logits = next_logits(llm)
        out.append(sample_next(llm, params, output_tokens=out))
        assert out[-1] == int(np.argmax(logits))
        llm.eval([out[-1]])
    kwargs = {**NEUTRAL_GENERATE_KWARGS, "temp": 0.0}
    gen = llm.generate(llm.tokenize(PROMPT), **kwargs)
    assert [next(gen) for _ in range(8)] == out


def test_sample_next_is_reproducible_and_inside_the_filters(llm: Any) -> None:
    params = lk.SamplingParams(
        temperature=0.9,
        top_k=5,
        top_p=0.9,
        min_p=0.05,
        repetition_penalty=1.3,
        frequency_penalty=0.2,
        seed=11,
        order="llama.cpp",
    )
    first = _decode(llm, params, 12)
    assert _decode(llm, params, 12) == first
    prompt = llm.tokenize(PROMPT)
    llm.reset()
    llm.eval(prompt)
    proc = LogitkitLogitsProcessor(params, prompt_len=len(prompt))
    for i, tok in enumerate(first):
        logits = next_logits(llm)
        evaluated = np.asarray(llm.input_ids[: llm.n_tokens])
        kept = np.flatnonzero(np.isfinite(proc(evaluated, logits)))
        assert tok in kept and kept.size <= 5
        want = lk.sample_batch(
            logits[None, :], params, prompt_tokens=[prompt], output_tokens=[first[:i]]
        ).tokens[0]
        assert tok == want
        llm.eval([tok])


def test_sample_next_errors(llm: Any) -> None:
    llm.reset()
    with pytest.raises(ValueError, match="llm"):
        sample_next(llm, lk.SamplingParams())
    llm.eval(llm.tokenize(PROMPT))
    with pytest.raises(ValueError, match="output_tokens"):
        sample_next(llm, lk.SamplingParams(), output_tokens=[7])
    with pytest.raises(ValueError, match="allowed_token_ids"):
        sample_next(llm, lk.SamplingParams(allowed_token_ids=[VOCAB]))


def test_processor_in_generate_keeps_llama_inside_top_k(llm: Any) -> None:
    proc = LogitkitLogitsProcessor(temperature=0.8, top_k=3, repetition_penalty=1.2)
    call, calls = _recording(proc)
    gen = llm.generate(llm.tokenize(PROMPT), logits_processor=[call], **NEUTRAL_GENERATE_KWARGS)
    tokens = [next(gen) for _ in range(10)]
    assert len(calls) == len(tokens)
    prompt_len = len(llm.tokenize(PROMPT))
    assert proc.prompt_len == prompt_len
    for i, (input_ids, scores, result) in enumerate(calls):
        assert input_ids.tolist() == llm.tokenize(PROMPT) + tokens[:i]
        kept = np.flatnonzero(np.isfinite(result))
        penalised = lk.apply_penalties(scores, prompt_tokens=input_ids, repetition_penalty=1.2)
        assert set(kept.tolist()) == set(lk.top_k(penalised, 3).indices.tolist())
        assert tokens[i] in kept


def test_processor_greedy_in_generate_is_llamas_greedy(llm: Any) -> None:
    prompt = llm.tokenize(PROMPT)
    gen = llm.generate(prompt, **{**NEUTRAL_GENERATE_KWARGS, "temp": 0.0})
    plain = [next(gen) for _ in range(8)]
    proc = LogitkitLogitsProcessor(temperature=0.0)
    gen = llm.generate(prompt, logits_processor=[proc], **NEUTRAL_GENERATE_KWARGS)
    assert [next(gen) for _ in range(8)] == plain


def test_processor_in_create_completion_keeps_allowed_tokens(llm: Any) -> None:
    allowed = list(range(259, VOCAB))  # the word pieces
    proc = LogitkitLogitsProcessor(allowed_token_ids=allowed, temperature=1.5)
    call, calls = _recording(proc)
    out = llm.create_completion(
        PROMPT.decode(),
        max_tokens=8,
        logits_processor=[call],
        seed=3,
        **NEUTRAL_COMPLETION_KWARGS,
    )
    assert out["usage"]["completion_tokens"] == 8 == len(calls)
    generated = calls[-1][0][len(calls[0][0]) :].tolist()
    assert len(generated) == 7 and set(generated) <= set(allowed)
    assert all(np.flatnonzero(np.isfinite(r)).tolist() == allowed for _, _, r in calls)
