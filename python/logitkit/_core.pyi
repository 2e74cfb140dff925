"""Type stubs of ``logitkit._core``, the native extension module (``rust/python.rs``).

These functions are the low-level layer under :mod:`logitkit`: they take 2-D C-contiguous
arrays with a ``kind`` code and write into caller-allocated outputs. Use the public API in
:mod:`logitkit` instead; it validates arguments and allocates results.

Logits arrays are ``(B, V)`` and C-contiguous, with ``kind`` 0 = float32, 1 = float16 bits,
2 = bfloat16 bits (both as ``uint16``, read in place).
"""

from collections.abc import Sequence
from typing import Any, Final, TypeAlias, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_THREADS",
    "RowParams",
    "__version__",
    "_after_fork_in_child",
    "_after_fork_in_parent",
    "_before_fork",
    "argmax",
    "argmax_row",
    "argmax_rows",
    "available_simd_levels",
    "bias_and_penalties",
    "build_profile",
    "empty_f32",
    "exp_sum_floor",
    "get_num_threads",
    "logprobs",
    "mask",
    "mask_new",
    "philox4x32_10",
    "register_bfloat16",
    "sample",
    "sample_batch",
    "sample_direct",
    "sample_fast",
    "set_num_threads",
    "set_simd_level",
    "simd_level",
    "softmax",
    "softmax_new",
    "top_k",
    "top_k_new",
    "uniform",
    "uniforms",
    "unreadable_environment",
]

_LogitsArray: TypeAlias = npt.NDArray[np.float32] | npt.NDArray[np.uint16]
"""``(B, V)`` C-contiguous logits: float32 (kind 0) or uint16 bits of float16 / bfloat16."""
_F32: TypeAlias = npt.NDArray[np.float32]
_F64: TypeAlias = npt.NDArray[np.float64]
_I32: TypeAlias = npt.NDArray[np.int32]
_I64: TypeAlias = npt.NDArray[np.int64]
_U64: TypeAlias = npt.NDArray[np.uint64]
_TokenList: TypeAlias = npt.ArrayLike
"""One 1-D list of token ids: an integer array or a sequence of ints (checked at run time)."""
_TokenLists: TypeAlias = _TokenList | Sequence[_TokenList]
"""One token list (for a single row) or a sequence of B of them."""
_PerRowFloat: TypeAlias = float | _F64
_PerRowInt: TypeAlias = int | _I64
_PerRowU64: TypeAlias = int | _U64
_Bias: TypeAlias = dict[int, float] | Sequence[dict[int, float]]

__version__: Final[str]
build_profile: Final[str]
"""``"release"`` or ``"debug"``: how the extension was compiled."""

def softmax(x: _LogitsArray | None, kind: int, temperature: float, log: bool, out: _F32) -> None:
    """Writes ``softmax(x / temperature)`` (``log_softmax`` when ``log``) into ``out``; with
    ``x=None``, of ``out`` itself (in place)."""

def softmax_new(
    x: npt.NDArray[np.float32], temperature: float, log: bool
) -> npt.NDArray[np.float32]:
    """``softmax`` of a C-contiguous float32 ``(V,)`` or ``(B, V)`` array into a new array."""

def empty_f32(shape: Sequence[int]) -> npt.NDArray[np.float32]:
    """A new C-contiguous float32 array, contents unspecified; from 16 MiB on, it reuses the
    memory of a freed large output that fits, when there is one."""

def argmax_row(x: _F32) -> int:
    """``argmax`` of one C-contiguous float32 row."""

def argmax_rows(x: _F32) -> _I64:
    """``argmax`` of every row of a C-contiguous float32 ``(B, V)`` array, as a new array."""

def argmax(x: _LogitsArray, kind: int, out: _I64) -> None:
    """Writes each row's argmax (ties: lowest index) into ``out`` (shape ``(B,)``)."""

def top_k(x: _LogitsArray, kind: int, k: int, values: _F32, indices: _I64) -> None:
    """Writes each row's ``k`` largest logits and their indices into ``(B, k)`` arrays."""

def top_k_new(x: _F32, k: int) -> tuple[_F32, _I64]:
    """``top_k`` of a C-contiguous float32 ``(V,)`` or ``(B, V)`` array into new ``(..., k)``
    arrays of values and indices."""

def mask(
    x: _LogitsArray | None,
    kind: int,
    which: str,
    value: float,
    temperature: float,
    min_keep: int,
    out: _F32,
) -> None:
    """Writes ``x`` with the tokens that the ``which`` filter removes set to ``-inf``.

    ``which`` is ``"top_k"`` (``value`` = k), ``"top_p"`` or ``"min_p"``. With ``x=None``, the
    mask of ``out`` itself (in place).
    """

def mask_new(
    x: npt.NDArray[np.float32], which: str, value: float, temperature: float, min_keep: int
) -> npt.NDArray[np.float32]:
    """``mask`` of a C-contiguous float32 ``(V,)`` or ``(B, V)`` array into a new array."""

def bias_and_penalties(
    x: _LogitsArray | None,
    kind: int,
    out: _F32,
    one_row: bool,
    bias: _Bias | None = None,
    prompt_tokens: _TokenLists | None = None,
    output_tokens: _TokenLists | None = None,
    repetition_penalty: _PerRowFloat | None = None,
    presence_penalty: _PerRowFloat | None = None,
    frequency_penalty: _PerRowFloat | None = None,
) -> None:
    """Writes biased and penalised logits into ``out`` (``x=None``: ``out`` in place).

    The three penalties are given together or not at all. Errors in ``bias`` name
    ``logit_bias`` when penalties are given (``apply_penalties``), else ``bias``.
    """

def sample(
    x: _LogitsArray,
    kind: int,
    temperature: _PerRowFloat,
    top_k: _PerRowInt,
    top_p: _PerRowFloat,
    min_p: _PerRowFloat,
    min_keep: _PerRowInt,
    order: str,
    seed: _PerRowU64,
    step: _PerRowU64,
    uniforms: _F64 | None,
    out: _I64,
) -> None:
    """Writes one sampled token per row into ``out``; ``uniforms`` overrides seed and step."""

def sample_fast(
    x: _LogitsArray,
    kind: int,
    temperature: float,
    top_k: int,
    top_p: float,
    min_p: float,
    min_keep: int,
    order: str,
    seed: int | _U64,
    step: int,
    out: _I64 | None = None,
) -> int:
    """:func:`sample` for a C-contiguous row or batch (``kind`` as above) with scalar parameters.

    Returns the token of a 1-D row; for a batch, fills ``out`` and returns 0.
    """

def register_bfloat16(dtype: np.dtype[Any]) -> None:
    """Marks ``dtype`` (2-byte elements) as the bfloat16 dtype that :func:`sample_direct` reads
    in place; the first one registered is kept."""

def sample_direct(
    logits: object,
    temperature: object,
    top_k: object,
    top_p: object,
    min_p: object,
    min_keep: object,
    order: object,
    seed: object,
    step: object,
) -> int | _I64 | None:
    """:func:`sample` when its fast path applies (float32, native float16 or registered bfloat16
    logits, exact scalar types, an integer or uint64-array seed, or None for a greedy call), else
    None.

    Returns the token of a 1-D row, or the int64 tokens of a batch.
    """

def uniforms(seed: _PerRowU64, step: _PerRowU64, rows: int) -> _F64:
    """One Philox uniform per row from per-row (or shared) seeds and steps."""

def uniform(seed: int, step: int) -> float:
    """The Philox4x32-10 uniform in ``[0, 1)`` for ``(seed, step)``."""

def philox4x32_10(ctr: Sequence[int], key: Sequence[int]) -> list[int]:
    """One Philox4x32-10 block: 4 counter words and 2 key words in, 4 words out."""

def logprobs(
    x: _LogitsArray, kind: int, tokens: _TokenLists, one_row: bool, top_n: int
) -> tuple[_F32, _I64, _I64, _I64, _F32]:
    """Flat results: token log-probs, ranks, row offsets into them, top ids, top log-probs."""

@final
class RowParams:
    """The parsed, validated sampling parameters of one request (built per SamplingParams)."""

    def __new__(
        cls,
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float,
        min_keep: int,
        order: str,
        repetition_penalty: float,
        presence_penalty: float,
        frequency_penalty: float,
        bias_ids: Sequence[int],
        bias_values: Sequence[float],
        allowed_token_ids: Sequence[int] | None,
        stop_token_ids: Sequence[int],
        min_tokens: int,
        seed: int | None,
        logprobs: int | None,
        processed: bool,
    ) -> RowParams: ...

def sample_batch(
    x: _LogitsArray,
    kind: int,
    params: Sequence[RowParams],
    prompt_tokens: Sequence[_TokenList] | None,
    output_tokens: Sequence[_TokenList] | None,
    steps: _PerRowU64 | None,
    bitmask: _I32 | None,
) -> tuple[_I64, tuple[_F32, _I64, _I64, _F32, int] | None]:
    """One continuous-batching step: tokens and, when a row asked for them, (log-probs, ranks,
    top ids, top log-probs, ``n``)."""

def exp_sum_floor(x: _F32, maxes: _F32) -> _F64:
    """Benchmark floor: ``sum(exp(x - maxes[r]))`` of every float32 row, one thread."""

def simd_level() -> str:
    """The SIMD level in use: ``"avx512"``, ``"avx2"``, ``"neon"`` or ``"scalar"``."""

def available_simd_levels() -> list[str]:
    """The SIMD levels this CPU supports, best first."""

def set_simd_level(name: str) -> None:
    """Forces a SIMD level; ``ValueError`` for an unknown name or one the CPU lacks."""

MAX_THREADS: int
"""The most threads ``set_num_threads`` takes."""

def unreadable_environment() -> list[tuple[str, str]]:
    """``(name, value)`` of each logitkit environment variable that is set, not empty, and
    that logitkit cannot read (and so ignores)."""

def set_num_threads(n: int) -> None:
    """Sets the number of threads used for batches."""

def get_num_threads() -> int:
    """The number of threads used for batches."""

def _before_fork() -> None:
    """Holds the thread pool's state lock across a fork (registered by ``logitkit``)."""

def _after_fork_in_parent() -> None:
    """Releases the state lock in the parent after a fork (registered by ``logitkit``)."""

def _after_fork_in_child() -> None:
    """Forgets the inherited thread pool in a forked child (registered by ``logitkit``)."""
