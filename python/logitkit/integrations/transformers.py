"""logitkit's penalties and filters inside Hugging Face ``transformers``' ``model.generate``.

:class:`LogitkitLogitsProcessor` replaces the repetition-penalty, temperature, top-k, top-p
and min-p processors of ``generate``: it applies logitkit's repetition penalty (to every token
of each row of ``input_ids``, prompt and output), then temperature, top-k, top-p and min-p in
logitkit's order, and returns the tempered scores with every removed token at ``-inf``, the
form ``generate`` samples from. Pass :data:`NEUTRAL_GENERATE_KWARGS` to ``generate`` so that
it adds none of its own warpers (its default ``top_k=50`` would otherwise run after logitkit).

This module imports ``torch`` and ``transformers``; ``import logitkit`` does not import it.

Example::

    from transformers import LogitsProcessorList
    from logitkit.integrations.transformers import (
        NEUTRAL_GENERATE_KWARGS,
        LogitkitLogitsProcessor,
    )

    processor = LogitkitLogitsProcessor(temperature=0.7, top_k=40, top_p=0.95, min_p=0.05,
                                        repetition_penalty=1.1)
    out = model.generate(input_ids, do_sample=True, max_new_tokens=32,
                         logits_processor=LogitsProcessorList([processor]),
                         **NEUTRAL_GENERATE_KWARGS)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import torch
from transformers import LogitsProcessor

import logitkit as lk

__all__ = ["NEUTRAL_GENERATE_KWARGS", "LogitkitLogitsProcessor"]

NEUTRAL_GENERATE_KWARGS: Final[dict[str, Any]] = {
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": None,
    "repetition_penalty": 1.0,
}
"""``generate`` keyword arguments that turn off the processors logitkit replaces."""

_F32 = npt.NDArray[np.float32]
# One filter: (logits, dtype, out) -> filtered float32 logits. ``out=None`` on the first step
# (which reads the caller's scores in place and allocates the result), ``out=logits`` after.
_Step = Callable[[Any, str | None, _F32 | None], _F32]


def _scores_array(scores: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """``scores`` as a NumPy array over the same CPU memory and the ``dtype`` to read it with.

    float32 and float16 tensors are read as they are; bfloat16 as a uint16 view of its bits
    (``dtype="bfloat16"``). A tensor on another device is copied to the CPU, another float
    dtype converted to float32, once.
    """
    t = scores.detach().cpu()
    if t.dtype == torch.bfloat16:
        bits: np.ndarray = t.view(torch.int16).numpy().view(np.uint16)
        return bits, "bfloat16"
    if t.dtype not in (torch.float32, torch.float16):
        t = t.float()
    a: np.ndarray = t.numpy()
    return a, None


def _widen(x: np.ndarray, dtype: str | None) -> _F32:
    """A new float32 copy of ``x`` (float32, float16, or bfloat16 bits with ``dtype``)."""
    if dtype == "bfloat16":
        wide: _F32 = (x.astype(np.uint32) << np.uint32(16)).view(np.float32)
        return wide
    return x.astype(np.float32)


def _token_rows(input_ids: torch.Tensor, vocab: int, rows: int | None) -> Any:
    """The rows of ``input_ids`` as logitkit token lists, ids outside ``[0, vocab)`` dropped.

    ``rows=None`` is a single ``(V,)`` row: one 1-D array. Otherwise a list of ``rows`` 1-D
    arrays (views of ``input_ids``, no copies unless an id has to be dropped).
    """
    ids = input_ids.detach().cpu().numpy()
    in_range = ids.size == 0 or (ids.min() >= 0 and ids.max() < vocab)
    if rows is None:
        ids = ids.reshape(-1)
        return ids if in_range else ids[(ids >= 0) & (ids < vocab)]
    if ids.ndim == 1:
        ids = ids.reshape(rows, -1)
    if ids.shape[0] != rows:
        raise ValueError(f"input_ids: has {ids.shape[0]} rows for {rows} rows of scores")
    return list(ids) if in_range else [row[(row >= 0) & (row < vocab)] for row in ids]


class LogitkitLogitsProcessor(LogitsProcessor):
    """logitkit's repetition penalty, temperature, top-k, top-p and min-p for ``generate``.

    Per row of ``scores``: the repetition penalty on every distinct token of that row of
    ``input_ids`` (``z / r`` if ``z > 0`` else ``z * r``), then, in logitkit's ``order``
    (``"default"``: top-k, top-p, min-p on ``z / temperature``, as in ``transformers``;
    ``"vllm"``: min-p before top-k; ``"llama.cpp"``: the filters on untempered logits), the
    filters.
    The result is ``z / temperature`` with every removed token at ``-inf``, as float32; the
    kept set is the one :func:`logitkit.sample` draws from for the same row and parameters.
    ``temperature=0`` keeps only the best token (greedy, ties to the lowest id).

    Scores may be float32, float16 or bfloat16 tensors; CPU tensors are read in place (the
    result is one new float32 tensor; ``scores`` itself is never modified). Tensors on another
    device are processed on the CPU and the result moved back. Ids in ``input_ids`` outside the
    scores' vocabulary (an embedding larger than the output head) are not penalised.

    Turn off ``generate``'s own warpers with :data:`NEUTRAL_GENERATE_KWARGS`.

    Args:
        temperature: Finite and >= 0; 0 is greedy.
        top_k: Keep the ``top_k`` best tokens; ``<= 0`` (or ``>= V``) turns top-k off.
        top_p: Nucleus mass in ``[0, 1]``; 1 turns top-p off.
        min_p: In ``[0, 1]``: keep tokens with ``p >= min_p * p_max``; 0 turns min-p off.
        min_keep: At least this many tokens survive top-p and min-p.
        repetition_penalty: Finite and > 0; 1 turns it off.
        order: ``"default"``, ``"vllm"`` or ``"llama.cpp"``.

    Raises:
        ValueError: A parameter out of range, naming it (checked by
            :class:`logitkit.SamplingParams`).

    Example:
        >>> import torch
        >>> from logitkit.integrations.transformers import LogitkitLogitsProcessor
        >>> p = LogitkitLogitsProcessor(top_k=2)
        >>> p(torch.tensor([[0, 1]]), torch.tensor([[1.0, 3.0, 2.0]])).tolist()
        [[-inf, 3.0, 2.0]]
    """

    def __init__(
        self,
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        min_keep: int = 1,
        repetition_penalty: float = 1.0,
        order: str = "default",
    ) -> None:
        self.params = lk.SamplingParams(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            min_keep=min_keep,
            repetition_penalty=repetition_penalty,
            order=order,
        )
        self._steps = _filters(self.params)

    def __repr__(self) -> str:
        p = self.params
        return (
            f"{type(self).__name__}(temperature={p.temperature}, top_k={p.top_k}, "
            f"top_p={p.top_p}, min_p={p.min_p}, min_keep={p.min_keep}, "
            f"repetition_penalty={p.repetition_penalty}, order={p.order!r})"
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """Penalised, filtered, tempered scores: removed tokens at ``-inf``, float32.

        Args:
            input_ids: ``(B, L)`` token ids so far (prompt and output) of every row.
            scores: ``(B, V)`` next-token logits.

        Returns:
            A new ``(B, V)`` float32 tensor on ``scores``' device; ``scores`` itself when every
            step is turned off (``temperature=1`` and neutral parameters).
        """
        if scores.dim() not in (1, 2):
            raise ValueError(f"scores: must be (V,) or (B, V), got shape {tuple(scores.shape)}")
        p = self.params
        x, dtype = _scores_array(scores)
        z: _F32 | None = None
        if p.repetition_penalty != 1.0:
            rows = None if x.ndim == 1 else x.shape[0]
            z = lk.apply_penalties(
                x,
                prompt_tokens=_token_rows(input_ids, x.shape[-1], rows),
                repetition_penalty=p.repetition_penalty,
                dtype=dtype,
            )
        for step in self._steps:
            z = step(x, dtype, None) if z is None else step(z, None, z)
        if p.temperature not in (0.0, 1.0):
            if z is None:
                z = _widen(x, dtype)
            np.divide(z, np.float32(p.temperature), out=z)
        if z is None:
            return scores
        result = torch.from_numpy(z)
        return result if scores.device.type == "cpu" else result.to(scores.device)


def _filters(p: lk.SamplingParams) -> list[_Step]:
    """The active filters of ``p`` in its order, each ``(logits, dtype, out) -> logits``."""
    if p.temperature == 0.0:
        return [lambda x, dt, out: lk.mask_top_k(x, 1, dtype=dt, out=out)]
    # llama.cpp filters untempered logits and tempers only the draw.
    t = 1.0 if p.order == "llama.cpp" else p.temperature
    top_k: list[_Step] = []
    top_p: list[_Step] = []
    min_p: list[_Step] = []
    if p.top_k > 0:
        top_k.append(lambda x, dt, out: lk.mask_top_k(x, p.top_k, dtype=dt, out=out))
    if p.top_p < 1.0:
        top_p.append(
            lambda x, dt, out: lk.mask_top_p(
                x, p.top_p, temperature=t, min_keep=p.min_keep, dtype=dt, out=out
            )
        )
    if p.min_p > 0.0:
        min_p.append(
            lambda x, dt, out: lk.mask_min_p(
                x, p.min_p, temperature=t, min_keep=p.min_keep, dtype=dt, out=out
            )
        )
    if p.order == "vllm":
        return min_p + top_k + top_p
    return top_k + top_p + min_p
