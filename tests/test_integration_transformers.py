"""logitkit.integrations.transformers: the logits processor, alone and inside model.generate.

Opt-in: the tests that need ``torch`` and ``transformers`` are skipped unless both import. The
model is a tiny randomly initialised Llama built here; nothing is downloaded. Run with::

    pip install torch transformers && python -m pytest -q tests/test_integration_transformers.py
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import logitkit as lk
import oracle
from checks import assert_kept_between

try:
    import torch

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False
try:
    import transformers
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    from logitkit.integrations.transformers import (
        NEUTRAL_GENERATE_KWARGS,
        LogitkitLogitsProcessor,
    )

    HAVE_HF = True
except ImportError:
    HAVE_HF = False

needs_hf = pytest.mark.skipif(not HAVE_HF, reason="needs torch and transformers")
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="needs torch")

VOCAB = 128
PARAMS = [
    {},
    {"temperature": 0.5},
    {"temperature": 0.0, "repetition_penalty": 1.5},
    {"top_k": 1},
    {"temperature": 0.7, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.3},
    {"temperature": 1.3, "top_p": 0.5, "min_keep": 3},
    {"temperature": 1.5, "min_p": 0.3, "top_k": 40, "top_p": 0.8, "order": "vllm"},
    {"temperature": 0.4, "top_k": 30, "top_p": 0.8, "min_p": 0.1, "order": "llama.cpp"},
]


def test_import_logitkit_does_not_import_torch_or_transformers() -> None:
    code = (
        "import sys, logitkit, logitkit.integrations\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------------
# The processor on its own


def _reference(x32: np.ndarray, ids: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Float64 oracle for one row: (penalised logits, (must, may) kept sets)."""
    z = oracle.apply_penalties(
        x32, prompt_tokens=ids, repetition_penalty=params.get("repetition_penalty", 1.0)
    )
    t = params.get("temperature", 1.0)
    tol = oracle.tolerance(z, t or 1.0)
    sample_params = {k: v for k, v in params.items() if k != "repetition_penalty"}
    return z, oracle.kept_sets(z, sample_params, tol)


@needs_hf
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_processor_matches_the_oracle(dtype: str, params: dict) -> None:
    gen = torch.Generator().manual_seed(1)
    scores = (torch.randn(4, 200, generator=gen) * 3).to(getattr(torch, dtype))
    scores[1, 7] = -torch.inf  # a token masked by an earlier processor
    input_ids = torch.randint(0, 200, (4, 12), generator=gen)
    before = scores.clone()

    out = LogitkitLogitsProcessor(**params)(input_ids, scores)

    assert torch.equal(scores, before), "scores must not be modified"
    if not params:
        assert out is scores  # nothing to do: the scores themselves
        return
    assert out.dtype == torch.float32 and out.shape == scores.shape
    x32 = scores.float().numpy()
    t = params.get("temperature", 1.0)
    for r in range(4):
        z, (must, may) = _reference(x32[r], input_ids[r].numpy(), params)
        kept = torch.isfinite(out[r]).numpy()
        assert_kept_between(kept, must, may)
        assert not kept[7] or r != 1
        # Kept tokens carry the penalised logits over the temperature (greedy: untempered).
        want = z[kept] / (t if t > 0 else 1.0)
        np.testing.assert_allclose(out[r].numpy()[kept], want, rtol=2e-6, atol=1e-6)
        # logitkit.sample draws from exactly this kept set.
        sample_params = {k: v for k, v in params.items() if k != "repetition_penalty"}
        for u in (0.0, 0.3, 0.77, 0.999):
            tok = lk.sample(z, uniforms=u, **sample_params)
            assert kept[int(tok)], (u, int(tok))


@needs_hf
def test_processor_reads_16_bit_scores_exactly() -> None:
    """A float16 / bfloat16 tensor gives the result of its exact float32 widening."""
    gen = torch.Generator().manual_seed(2)
    scores = torch.randn(3, 300, generator=gen) * 4
    input_ids = torch.randint(0, 300, (3, 20), generator=gen)
    processor = LogitkitLogitsProcessor(
        temperature=0.6, top_k=50, top_p=0.9, min_p=0.02, repetition_penalty=1.2
    )
    for dtype in (torch.float16, torch.bfloat16):
        narrow = scores.to(dtype)
        out = processor(input_ids, narrow)
        wide = processor(input_ids, narrow.float())
        assert torch.equal(out, wide), dtype


@needs_hf
def test_processor_one_row_out_of_vocab_ids_and_validation() -> None:
    scores = torch.tensor([2.0, -1.0, 0.5, 0.25])
    # 1-D scores with a (1, L) input_ids row; id 9 lies outside the 4-token head: not penalised.
    out = LogitkitLogitsProcessor(repetition_penalty=2.0)(torch.tensor([[0, 1, 9]]), scores)
    assert out.tolist() == [1.0, -2.0, 0.5, 0.25]
    out = LogitkitLogitsProcessor(top_k=2)(torch.tensor([[0]]), scores.unsqueeze(0))
    assert out.tolist() == [[2.0, -np.inf, 0.5, -np.inf]]
    with pytest.raises(ValueError, match="top_p"):
        LogitkitLogitsProcessor(top_p=1.5)
    with pytest.raises(ValueError, match="temperature"):
        LogitkitLogitsProcessor(temperature=-1.0)
    with pytest.raises(ValueError, match="order"):
        LogitkitLogitsProcessor(order="greedy")
    with pytest.raises(ValueError, match="row 0"):
        LogitkitLogitsProcessor(top_k=2)(torch.tensor([[0]]), torch.full((1, 4), -np.inf))


@needs_torch
def test_logitkit_reads_torch_tensors() -> None:
    """Any CPU tensor (bf16, fp16, requiring grad) and __dlpack__-only objects are logits."""
    x = torch.randn(2, 50)
    want = lk.mask_top_p(x.numpy(), 0.8)
    for t in (x, x.clone().requires_grad_(True), x.to(torch.bfloat16).float()):
        np.testing.assert_array_equal(lk.mask_top_p(t, 0.8), lk.mask_top_p(t.detach().numpy(), 0.8))
    np.testing.assert_array_equal(lk.mask_top_p(x, 0.8), want)
    bf16 = x.to(torch.bfloat16)
    np.testing.assert_array_equal(lk.mask_top_p(bf16, 0.8), lk.mask_top_p(bf16.float(), 0.8))

    class DLPackOnly:
        def __init__(self, t: torch.Tensor) -> None:
            self._t = t

        def __dlpack__(self, **kwargs: object) -> object:
            return self._t.__dlpack__(**kwargs)

        def __dlpack_device__(self) -> tuple[int, int]:
            return self._t.__dlpack_device__()

    np.testing.assert_array_equal(lk.argmax(DLPackOnly(x)), x.argmax(-1).numpy())
    with pytest.raises(TypeError, match="logits"):
        lk.argmax(DLPackOnly(x.to(torch.int32)))


@needs_torch
def test_lazy_views_and_subclasses_of_tensors_are_read_and_odd_tensors_named() -> None:
    """A tensor with a lazy negation (``.conj().imag`` of a complex one) and a subclass defined
    outside torch read as their values; tensors NumPy cannot hold are a TypeError naming
    logits, never torch's own RuntimeError."""
    x = torch.randn(2, 40)
    lazy = (x * 1j).conj().imag  # -x, with the negative bit set
    assert lazy.is_neg()
    np.testing.assert_array_equal(lk.softmax(lazy), lk.softmax((-x).numpy()))
    np.testing.assert_array_equal(lk.argmax(lazy), lk.argmax((-x).numpy()))

    class Wrapped(torch.Tensor):
        pass

    sub = x.as_subclass(Wrapped)
    np.testing.assert_array_equal(lk.mask_top_k(sub, 3), lk.mask_top_k(x.numpy(), 3))
    np.testing.assert_array_equal(
        lk.softmax(sub.clone().requires_grad_(True)), lk.softmax(x.numpy())
    )
    sub_bf16 = x.to(torch.bfloat16).as_subclass(Wrapped)
    np.testing.assert_array_equal(lk.argmax(sub_bf16), lk.argmax(x.to(torch.bfloat16).float()))
    odd = [x.to_sparse(), torch.empty(2, 40, device="meta")]
    if hasattr(torch, "float8_e4m3fn"):
        odd.append(x.to(torch.float8_e4m3fn))
    for t in odd:
        with pytest.raises(TypeError, match=r"^logits: "):
            lk.softmax(t)
    with pytest.raises(TypeError, match=r"^tokens: "):
        lk.logprobs(x[0], lazy[0])


# ---------------------------------------------------------------------------------------------
# Inside model.generate


@pytest.fixture(scope="module")
def model() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.5,  # spread-out logits, so that top-p and min-p remove tokens
        bos_token_id=None,
        eos_token_id=None,  # no early stop: every sequence has max_new_tokens tokens
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    return torch.randint(1, VOCAB, (3, 6), generator=torch.Generator().manual_seed(3))


def _generate(model, prompts, processor=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    extra = {}
    if processor is not None:
        extra = dict(NEUTRAL_GENERATE_KWARGS, logits_processor=LogitsProcessorList([processor]))
    return model.generate(
        prompts,
        max_new_tokens=16,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
        **extra,
        **kwargs,
    )


@needs_hf
@pytest.mark.parametrize("processor_args", [{"top_k": 1}, {"temperature": 0.0}])
def test_generate_top_k_1_is_greedy(model, prompts, processor_args) -> None:
    greedy = _generate(model, prompts, do_sample=False)
    for seed in range(3):
        out = _generate(
            model, prompts, LogitkitLogitsProcessor(**processor_args), seed, do_sample=True
        )
        assert torch.equal(out.sequences, greedy.sequences)


@needs_hf
def test_generate_tokens_lie_in_independent_top_k_sets(model, prompts) -> None:
    k, penalty = 5, 1.3
    processor = LogitkitLogitsProcessor(temperature=0.9, top_k=k, repetition_penalty=penalty)
    hf_penalty = RepetitionPenaltyLogitsProcessor(penalty)
    for seed in range(3):
        out = _generate(model, prompts, processor, seed, do_sample=True)
        start = prompts.shape[1]
        seq = out.sequences
        assert seq.shape == (3, start + 16)
        for step, raw in enumerate(out.logits):
            pos = start + step
            # The raw logits that generate kept are those of a fresh forward pass.
            with torch.no_grad():
                fresh = model(seq[:, :pos]).logits[:, -1].float()
            torch.testing.assert_close(raw.float(), fresh, rtol=1e-4, atol=1e-4)
            # transformers' own repetition penalty, then torch.topk.
            top = torch.topk(hf_penalty(seq[:, :pos], raw.float().clone()), k).indices
            assert (top == seq[:, pos : pos + 1]).any(dim=-1).all(), (seed, step)
            assert (torch.isfinite(out.scores[step]).sum(-1) == k).all()


@needs_hf
@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.7, "top_k": 20, "top_p": 0.9, "min_p": 0.05, "repetition_penalty": 1.3},
        {"temperature": 1.5, "top_p": 0.8},
        {"temperature": 0.5, "min_p": 0.1, "repetition_penalty": 0.8},
    ],
)
def test_generate_matches_transformers_warpers(model, prompts, params) -> None:
    """Same seed, same draws: logitkit's processor gives transformers' own sequences."""
    for seed in range(3):
        hf_params = {**NEUTRAL_GENERATE_KWARGS, **params}  # transformers' warpers, top_k=0 default
        theirs = _generate(model, prompts, None, seed, do_sample=True, **hf_params)
        ours = _generate(model, prompts, LogitkitLogitsProcessor(**params), seed, do_sample=True)
        assert torch.equal(ours.sequences, theirs.sequences), seed
        for a, b in zip(ours.scores, theirs.scores, strict=True):
            assert torch.equal(torch.isfinite(a), torch.isfinite(b))
            kept = torch.isfinite(a)
            torch.testing.assert_close(a[kept], b[kept], rtol=1e-5, atol=1e-5)


@needs_hf
def test_generate_bf16_model(model, prompts) -> None:
    """A bfloat16 model: scores pass through the processor and the greedy check holds."""
    bf16 = transformers.LlamaForCausalLM(model.config).eval()
    bf16.load_state_dict(model.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    greedy = _generate(bf16, prompts, do_sample=False)
    ours = _generate(bf16, prompts, LogitkitLogitsProcessor(top_k=1), 1, do_sample=True)
    assert torch.equal(ours.sequences, greedy.sequences)
