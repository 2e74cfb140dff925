"""logitkit's sampling pipeline for models run with llama-cpp-python (``llama_cpp.Llama``).

Two ways in:

- :class:`LogitkitLogitsProcessor` is a ``logits_processor`` for ``Llama.generate``,
  ``Llama.create_completion`` (``llm(...)``) and ``Llama.sample``: it applies logitkit's masks
  (``allowed_token_ids``, ``stop_token_ids`` before ``min_tokens``), logit bias, penalties,
  temperature and the top-k / top-p / min-p filters of a :class:`logitkit.SamplingParams`, and
  returns the tempered logits with every removed token at ``-inf``. llama.cpp then draws from
  them; pass :data:`NEUTRAL_GENERATE_KWARGS` (``generate``) or
  :data:`NEUTRAL_COMPLETION_KWARGS` (``create_completion``) so that llama.cpp's own sampler
  chain (top-k 40, top-p 0.95, min-p 0.05, temperature 0.8 by default) changes nothing more.
- :func:`sample_next` draws the next token with logitkit itself, from the logits of the last
  token the model evaluated (read in place from llama.cpp's output buffer), reproducibly:
  ``uniform(seed, step)`` with ``step = len(output_tokens)`` unless given.

Neither needs ``import llama_cpp`` at import time; :func:`next_logits` and :func:`sample_next`
import it when called, and ``import logitkit`` never imports this module.

Example::

    import llama_cpp
    import logitkit as lk
    from logitkit.integrations.llama_cpp import (
        NEUTRAL_GENERATE_KWARGS,
        LogitkitLogitsProcessor,
        sample_next,
    )

    llm = llama_cpp.Llama("model.gguf")
    params = lk.SamplingParams(temperature=0.7, top_p=0.9, repetition_penalty=1.1, seed=7)

    # logitkit filters, llama.cpp draws:
    processor = LogitkitLogitsProcessor(params)
    for token in llm.generate(llm.tokenize(b"Hello"), logits_processor=[processor],
                              **NEUTRAL_GENERATE_KWARGS):
        ...

    # logitkit filters and draws (reproducible token by token):
    llm.reset()
    llm.eval(llm.tokenize(b"Hello"))
    out: list[int] = []
    for _ in range(16):
        out.append(sample_next(llm, params, output_tokens=out))
        llm.eval([out[-1]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

import logitkit as lk

if TYPE_CHECKING:
    from llama_cpp import Llama

__all__ = [
    "NEUTRAL_COMPLETION_KWARGS",
    "NEUTRAL_GENERATE_KWARGS",
    "LogitkitLogitsProcessor",
    "next_logits",
    "sample_next",
]

NEUTRAL_GENERATE_KWARGS: Final[dict[str, Any]] = {
    "temp": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
}
"""``Llama.generate`` keyword arguments that make llama.cpp's own samplers change nothing."""

NEUTRAL_COMPLETION_KWARGS: Final[dict[str, Any]] = {
    ("temperature" if k == "temp" else k): v for k, v in NEUTRAL_GENERATE_KWARGS.items()
}
"""The same for ``Llama.create_completion`` / ``Llama.__call__`` (which say ``temperature``)."""

_F32 = npt.NDArray[np.float32]
_I64 = npt.NDArray[np.int64]


def _ids(values: npt.ArrayLike, vocab: int, name: str) -> _I64:
    """``values`` as int64 ids, each checked to lie in ``[0, vocab)``."""
    ids = np.asarray(values, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        bad = int(ids[(ids < 0) | (ids >= vocab)][0])
        raise ValueError(f"{name}: token id {bad} is outside [0, {vocab})")
    return ids


class LogitkitLogitsProcessor:
    """logitkit's pipeline as a llama-cpp-python ``logits_processor``.

    Called as ``processor(input_ids, scores)`` with every token id evaluated so far (prompt
    and output) and the ``(V,)`` float32 logits of the next token, it returns a new float32
    array: the logits after, in this order, the masks (``allowed_token_ids``;
    ``stop_token_ids`` while fewer than ``min_tokens`` tokens were generated), the logit bias,
    the penalties (repetition over prompt and output, frequency and presence over the output),
    then greedy (``temperature == 0``: only the best token stays) or the temperature and the
    top-k / top-p / min-p filters in ``params.order``, divided by the temperature, every
    removed token at ``-inf``. Its kept set is the one :func:`logitkit.sample_batch` draws
    from for the same row, parameters and tokens.

    The prompt is the ``input_ids`` of the first call (llama-cpp-python calls the processor
    first right after evaluating the prompt) unless ``prompt_len`` says otherwise; the tokens
    after it are the output. Use one processor per request, or call :meth:`reset` between
    requests. The processor never draws, so ``params.seed`` and ``params.logprobs`` play no
    part here (llama.cpp's ``dist`` sampler draws).

    Args:
        params: The sampling parameters; or give :class:`logitkit.SamplingParams` fields as
            keyword arguments instead.
        prompt_len: How many leading ``input_ids`` are the prompt; ``None``: those of the
            first call.
        **fields: :class:`logitkit.SamplingParams` fields, when ``params`` is not given.

    Raises:
        TypeError: Both ``params`` and fields given.
        ValueError: An invalid field (from :class:`logitkit.SamplingParams`), or, when
            called, ``scores`` not 1-D or a token id outside the vocabulary.

    Example:
        >>> import numpy as np
        >>> from logitkit.integrations.llama_cpp import LogitkitLogitsProcessor
        >>> p = LogitkitLogitsProcessor(top_k=2)
        >>> p(np.array([0, 1]), np.array([1.0, 3.0, 2.0], dtype=np.float32)).tolist()
        [-inf, 3.0, 2.0]
    """

    def __init__(
        self,
        params: lk.SamplingParams | None = None,
        *,
        prompt_len: int | None = None,
        **fields: Any,
    ) -> None:
        if params is not None and fields:
            raise TypeError("params: give a SamplingParams or its fields, not both")
        if params is None:
            params = lk.SamplingParams(**fields)
        elif not isinstance(params, lk.SamplingParams):
            raise TypeError(f"params: must be a SamplingParams, got {type(params).__name__}")
        if prompt_len is not None and (not isinstance(prompt_len, int) or prompt_len < 0):
            raise ValueError(f"prompt_len: must be an integer >= 0, got {prompt_len!r}")
        self.params: lk.SamplingParams = params
        self._fixed_prompt_len = prompt_len
        self.prompt_len: int | None = prompt_len
        """The prompt length in use (``None`` until the first call when not given)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r}, prompt_len={self.prompt_len})"

    def reset(self) -> None:
        """Forgets the prompt length taken from the first call (for the next request)."""
        self.prompt_len = self._fixed_prompt_len

    def __call__(self, input_ids: npt.ArrayLike, scores: npt.ArrayLike) -> _F32:
        """The processed logits (see the class docstring).

        Args:
            input_ids: Every token id evaluated so far, prompt then output.
            scores: The ``(V,)`` logits of the next token (any float dtype, any strides; the
                logit field of llama.cpp's token array is read as it is).

        Returns:
            A new C-contiguous ``(V,)`` float32 array; ``scores`` is never modified.
        """
        p = self.params
        z = np.array(scores, dtype=np.float32, order="C", copy=True)
        if z.ndim != 1:
            raise ValueError(f"scores: must be a (V,) row, got shape {z.shape}")
        vocab = z.shape[0]
        ids = _ids(input_ids, vocab, "input_ids")
        if self.prompt_len is None:
            self.prompt_len = ids.size
        cut = min(self.prompt_len, ids.size)
        prompt, output = ids[:cut], ids[cut:]

        if p.allowed_token_ids is not None:
            allowed = np.zeros(vocab, dtype=bool)
            allowed[_ids(p.allowed_token_ids, vocab, "allowed_token_ids")] = True
            z[~allowed] = -np.inf
        if p.stop_token_ids and output.size < p.min_tokens:
            z[_ids(p.stop_token_ids, vocab, "stop_token_ids")] = -np.inf
        if p.logit_bias:
            lk.apply_logit_bias(z, dict(p.logit_bias), out=z)
        if (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) != (1.0, 0.0, 0.0):
            lk.apply_penalties(
                z,
                prompt_tokens=prompt,
                output_tokens=output,
                repetition_penalty=p.repetition_penalty,
                presence_penalty=p.presence_penalty,
                frequency_penalty=p.frequency_penalty,
                out=z,
            )
        if p.temperature == 0.0:
            return lk.mask_top_k(z, 1, out=z)
        _filter(z, p)
        if p.temperature != 1.0:
            np.divide(z, np.float32(p.temperature), out=z)
        return z


def _filter(z: _F32, p: lk.SamplingParams) -> None:
    """Top-k, top-p and min-p of ``p`` in its order, in place on the untempered ``z``.

    The temperature only decides which tokens top-p and min-p keep (the masks keep original
    logits); ``order="llama.cpp"`` filters at temperature 1, as llama.cpp does.
    """
    t = 1.0 if p.order == "llama.cpp" else p.temperature
    vocab = z.shape[0]

    def top_k() -> None:
        if 0 < p.top_k < vocab:
            lk.mask_top_k(z, p.top_k, out=z)

    def top_p() -> None:
        if p.top_p < 1.0:
            lk.mask_top_p(z, p.top_p, temperature=t, min_keep=p.min_keep, out=z)

    def min_p() -> None:
        if p.min_p > 0.0:
            lk.mask_min_p(z, p.min_p, temperature=t, min_keep=p.min_keep, out=z)

    steps = (min_p, top_k, top_p) if p.order == "vllm" else (top_k, top_p, min_p)
    for step in steps:
        step()


def next_logits(llm: Llama, *, copy: bool = True) -> _F32:
    """The ``(V,)`` float32 logits of the last token ``llm`` evaluated.

    Read from llama.cpp's output buffer (``llama_get_logits_ith(ctx, -1)``), so it works
    whether or not the model was created with ``logits_all=True`` (``llm.scores`` is filled
    only then).

    Args:
        llm: A ``llama_cpp.Llama`` that has evaluated at least one token.
        copy: ``False`` returns a read-only view of llama.cpp's buffer, valid only until the
            next ``eval`` / ``generate`` / ``reset``.

    Raises:
        ValueError: ``llm`` has not evaluated any token yet, or has no logits for it.
    """
    import llama_cpp

    if llm.n_tokens <= 0:
        raise ValueError("llm: has not evaluated any token yet (call llm.eval(tokens) first)")
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    if not ptr:
        raise ValueError("llm: llama.cpp has no logits for the last evaluated token")
    view: _F32 = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))
    if copy:
        return view.copy()
    view.flags.writeable = False
    return view


def sample_next(
    llm: Llama,
    params: lk.SamplingParams,
    *,
    output_tokens: Sequence[int] | None = None,
    step: int | None = None,
    token_bitmask: npt.ArrayLike | None = None,
) -> int:
    """Samples the next token of ``llm`` with logitkit (:func:`logitkit.sample_batch`).

    The logits are those of the last evaluated token, read in place. The evaluated tokens
    (``llm.input_ids[:llm.n_tokens]``) end with ``output_tokens``; what precedes them is the
    prompt. Penalties, masks and ``min_tokens`` see them as :func:`logitkit.sample_batch`
    does, and the draw is ``uniform(params.seed, step)`` with ``step = len(output_tokens)``
    unless given, so a seeded generation is reproducible token by token.

    Args:
        llm: A ``llama_cpp.Llama`` that has evaluated the prompt (and the output so far).
        params: The sampling parameters.
        output_tokens: The tokens generated so far (already evaluated); ``None``: none.
        step: The draw's counter; ``None``: ``len(output_tokens)``.
        token_bitmask: An optional int32 ``(1, ceil(V/32))`` grammar bitmask.

    Returns:
        The token id.

    Raises:
        ValueError: Nothing evaluated yet, ``output_tokens`` is not the tail of the evaluated
            tokens, or a parameter is invalid for this vocabulary.
    """
    logits = next_logits(llm, copy=False)
    evaluated = np.asarray(llm.input_ids[: llm.n_tokens], dtype=np.int64)
    out = np.asarray([] if output_tokens is None else output_tokens, dtype=np.int64).reshape(-1)
    n_prompt = evaluated.size - out.size
    if n_prompt < 0 or not np.array_equal(evaluated[n_prompt:], out):
        raise ValueError(
            "output_tokens: must be the last tokens llm evaluated "
            "(evaluate each sampled token with llm.eval([token]) before sampling the next)"
        )
    result = lk.sample_batch(
        logits.reshape(1, -1),
        params,
        prompt_tokens=[evaluated[:n_prompt]],
        output_tokens=[out],
        steps=None if step is None else step,
        token_bitmask=token_bitmask,
    )
    return int(result.tokens[0])
