"""The typed public API: coerce inputs once, check arguments, call the native kernels.

No arithmetic on logits happens here; every pass over a row runs in Rust with the GIL released.
"""

from __future__ import annotations

import operator
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypeGuard, cast

import numpy as np
import numpy.typing as npt

from . import _core
from ._errors import ParameterTypeError, shown

__all__ = [
    "LogProbs",
    "TopK",
    "apply_logit_bias",
    "apply_penalties",
    "argmax",
    "get_num_threads",
    "log_softmax",
    "logprobs",
    "mask_min_p",
    "mask_top_k",
    "mask_top_p",
    "sample",
    "set_num_threads",
    "simd_level",
    "softmax",
    "top_k",
    "uniform",
]

ArrayLike = Any
"""Anything `numpy.asarray` accepts, a CPU `torch.Tensor`, or an `ml_dtypes.bfloat16` array."""
FloatParam = float | npt.ArrayLike
IntParam = int | npt.ArrayLike
TokenIds = npt.ArrayLike | Sequence[npt.ArrayLike] | None

_F32, _F16, _BF16 = 0, 1, 2
_U64_MAX = 2**64 - 1
_ORDERS = ("default", "vllm", "llama.cpp")


class TopK(NamedTuple):
    """The `k` largest logits per row, largest first (ties: lower index first)."""

    values: npt.NDArray[np.float32]
    indices: npt.NDArray[np.int64]


class LogProbs(NamedTuple):
    """Log-probabilities of requested tokens, their ranks, and the most probable tokens."""

    token_logprobs: Any
    ranks: Any
    top_ids: npt.NDArray[np.int64]
    top_logprobs: npt.NDArray[np.float32]


class _Logits(NamedTuple):
    array: np.ndarray  # 2-D, C-contiguous: float32, or uint16 bits of float16 / bfloat16
    kind: int
    shape: tuple[int, ...]  # the caller's shape
    source: np.ndarray | None  # the caller's float32 array when it was used in place


def _torch_array(x: Any) -> tuple[np.ndarray, str | None] | None:
    """A torch tensor as a NumPy array and the ``dtype`` to read it with; None for non-tensors.

    A CPU tensor is read in place (``detach`` shares its memory, gradients or not); a bfloat16
    tensor becomes a uint16 view of its bits, read with ``dtype="bfloat16"``. A tensor on
    another device, or with a lazy negation or conjugation, is materialised on the CPU once.
    Tensors NumPy cannot hold (sparse, meta, float8) are a ``TypeError`` naming ``logits``.
    """
    # A tensor exists only once torch is imported (the module may also be a stand-in).
    tensor = getattr(sys.modules.get("torch"), "Tensor", None)
    if not isinstance(tensor, type) or not isinstance(x, tensor):
        return None
    import torch

    tensor_x: Any = x
    try:
        t = tensor_x.detach()
        if t.layout != torch.strided:
            raise TypeError(f"a {t.layout} tensor (convert it with .to_dense())")
        t = t.cpu().resolve_conj().resolve_neg()
        if t.dtype == torch.bfloat16:
            bits: np.ndarray = t.view(torch.int16).numpy().view(np.uint16)
            return bits, "bfloat16"
        a: np.ndarray = t.numpy()
    except (RuntimeError, TypeError, ValueError, NotImplementedError, AttributeError) as e:
        raise TypeError(f"logits: cannot read this torch.Tensor as an array ({e})") from e
    return a, None


def _from_dlpack(x: Any) -> np.ndarray | None:
    """An object that offers only ``__dlpack__`` (no ``__array__``) as a NumPy array, else None."""
    if not hasattr(x, "__dlpack__") or any(
        hasattr(x, name) for name in ("__array__", "__array_interface__", "__array_struct__")
    ):
        return None
    try:
        return np.from_dlpack(x)
    except (BufferError, RuntimeError, TypeError, ValueError) as e:
        raise TypeError(f"logits: cannot read this __dlpack__ object on the CPU ({e})") from e


_F32_DTYPE = np.dtype(np.float32)
_U16_DTYPE = np.dtype(np.uint16)

# id(dtype) -> (dtype, kind) of float32 and of the float16 and bfloat16 dtypes seen so far, so
# that a call recognises them by identity (comparing an ml_dtypes dtype costs microseconds).
_FAST_DTYPES: dict[int, tuple[np.dtype[Any], int]] = {id(_F32_DTYPE): (_F32_DTYPE, _F32)}


def _plain_f32(x: Any) -> TypeGuard[np.ndarray]:
    """Whether ``x`` is a C-contiguous, aligned float32 ndarray of shape ``(V,)`` or ``(B, V)``
    with ``V >= 1``: the form the fast paths hand to the kernels as it is."""
    return bool(
        type(x) is np.ndarray
        and x.dtype is _F32_DTYPE
        and 0 < x.ndim <= 2
        and x.shape[-1]
        and (flags := x.flags).c_contiguous
        and flags.aligned
    )


def _fast_kind(dt: np.dtype[Any], dtype: str | None = None) -> int | None:
    """The kind of an array dtype in `_FAST_DTYPES` (``dtype=None``), or ``_BF16`` for the
    native uint16 dtype or a bfloat16 one seen before with ``dtype="bfloat16"``; else None (the
    general path then decides, and names any error)."""
    known = _FAST_DTYPES.get(id(dt))
    kind = known[1] if known is not None and known[0] is dt else None
    if dtype is None:
        return kind
    if type(dtype) is str and dtype == "bfloat16" and (dt is _U16_DTYPE or kind == _BF16):
        return _BF16
    return None


def _logits(logits: ArrayLike, dtype: str | None) -> _Logits:
    # Fast path: a C-contiguous float32 (or float16 / bfloat16 seen before, or uint16 bits with
    # dtype="bfloat16") ndarray, the common case in a decoding loop.
    if type(logits) is np.ndarray:
        shape = logits.shape
        flags = logits.flags
        if flags.c_contiguous and flags.aligned and shape and shape[-1] and len(shape) <= 2:
            dt = logits.dtype
            kind = _fast_kind(dt, dtype)
            if kind is not None:
                a = logits if kind == _F32 or dt is _U16_DTYPE else logits.view(np.uint16)
                source = logits if kind == _F32 else None
                return _Logits(a if len(shape) == 2 else a.reshape(1, -1), kind, shape, source)
    return _logits_any(logits, dtype)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _as_f64(v: Any) -> float:
    try:
        return float(v)
    except OverflowError:
        return sys.float_info.max if v > 0 else -sys.float_info.max


def _rounded_to_f32(a: np.ndarray) -> np.ndarray:
    """Wider float logits rounded to float32 once. A finite value beyond the float32 range
    saturates to +-3.4028235e38 (as bias and penalties do), so finite logits stay finite: a
    logit of -1e300 is not masked, and 1e300 is not reported as ``+inf``."""
    with np.errstate(over="ignore"):
        b = a.astype(np.float32)
    over = np.isinf(b) & np.isfinite(a)
    if over.any():
        b[over] = np.copysign(np.finfo(np.float32).max, a[over])
    return b


def _logits_any(logits: ArrayLike, dtype: str | None) -> _Logits:
    if dtype is not None:
        if not isinstance(dtype, str):
            raise ParameterTypeError(
                f"dtype: must be None or 'bfloat16', got {type(dtype).__name__}"
            )
        if dtype != "bfloat16":
            raise ValueError(f"dtype: must be None or 'bfloat16', got {shown(dtype)}")
    if isinstance(logits, np.ndarray):
        a = logits
    else:
        from_torch = _torch_array(logits)
        from_dlpack = None if from_torch is not None else _from_dlpack(logits)
        if from_torch is not None:
            a, hint = from_torch
            dtype = hint or dtype
        elif from_dlpack is not None:
            a = from_dlpack
        else:
            a = _asarray(logits, "logits")
            if isinstance(logits, (list, tuple)):
                if a.dtype.kind in "iu":
                    a = a.astype(np.float32)
                elif a.dtype == object and all(_is_real(v) for v in a.flat):
                    # Python ints beyond uint64 (NumPy keeps them as objects) are numbers too;
                    # beyond the float64 range they saturate like any value beyond float32.
                    a = np.asarray([_as_f64(v) for v in a.flat], dtype=np.float64).reshape(a.shape)
    dt = a.dtype
    if dtype == "bfloat16":
        if dt == np.uint16 or (dt.name == "bfloat16" and dt.itemsize == 2):
            kind = _BF16
        elif dt.kind == "u" and dt.itemsize == 2:  # uint16 bits in the other byte order
            a = a.astype(np.uint16)
            kind = _BF16
        else:
            raise TypeError(
                "logits: dtype='bfloat16' needs a uint16 array of bfloat16 bits or an "
                f"ml_dtypes.bfloat16 array, got dtype {dt}"
            )
    elif dt == np.float32:
        kind = _F32
    elif dt == np.float16:
        kind = _F16
        _FAST_DTYPES.setdefault(id(dt), (dt, kind))
    elif dt.name == "bfloat16" and dt.itemsize == 2:
        kind = _BF16
        if id(dt) not in _FAST_DTYPES:
            _FAST_DTYPES[id(dt)] = (dt, kind)
            _core.register_bfloat16(dt)
    elif dt.kind == "f":
        a = _rounded_to_f32(a)
        kind = _F32
    elif dt == np.uint16:
        raise TypeError(
            "logits: a uint16 array is an integer array; pass dtype='bfloat16' to read it as "
            "bfloat16 bits"
        )
    else:
        raise TypeError(f"logits: must be a float32, float16, bfloat16 or float64 array, got {dt}")
    shape = a.shape
    if a.ndim not in (1, 2):
        raise ValueError(f"logits: must be 1-D (V,) or 2-D (B, V), got ndim {a.ndim}")
    if shape[-1] == 0:
        raise ValueError("logits: the vocabulary (last axis) is empty")
    source = a if kind == _F32 else None
    if not (a.flags.c_contiguous and a.flags.aligned):
        a = a.copy(order="C")  # a copy is contiguous and aligned
    if kind != _F32 and a.dtype != np.uint16:
        a = a.view(np.uint16)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    return _Logits(a, kind, shape, source)


def _asarray(value: Any, name: str) -> np.ndarray:
    """``np.asarray(value)``, with NumPy's conversion errors (ragged nested lists, ...) raised
    as the same exception type naming the parameter."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{name}: cannot be read as an array ({e})") from e
    except (RuntimeError, NotImplementedError) as e:  # e.g. a torch tensor NumPy cannot view
        raise TypeError(f"{name}: cannot be read as an array ({e})") from e


def _same_buffer(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
        and a.strides == b.strides
        and a.shape == b.shape
        and a.dtype == b.dtype
    )


class _Out(NamedTuple):
    target: np.ndarray  # 2-D C-contiguous float32 that the kernel writes
    result: np.ndarray  # what the function returns
    in_place: bool  # out is the caller's logits array itself


def _out(out: np.ndarray | None, x: _Logits) -> _Out:
    if out is None:
        o = _core.empty_f32(x.shape)  # large outputs reuse freed memory
        return _Out(o.reshape(x.array.shape), o, False)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out: must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != np.float32:
        raise TypeError(f"out: must have dtype float32, got {out.dtype}")
    if out.shape != x.shape:
        raise ValueError(f"out: must have shape {x.shape}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("out: is read-only")
    if not _direct(out) and _overlaps_itself(out):
        raise ValueError("out: its elements overlap one another in memory")
    src = x.source
    in_place = out is src  # out=logits, the common in-place form
    if not in_place and src is not None and np.may_share_memory(out, src):
        if _same_buffer(out, src):
            in_place = True
        elif np.shares_memory(out, src):
            raise ValueError("out: overlaps logits without being the same array")
    elif src is None and np.may_share_memory(out, x.array) and np.shares_memory(out, x.array):
        # float16 / bfloat16 logits read in place: a float32 out can never be the same array.
        raise ValueError("out: overlaps the float16 / bfloat16 logits")
    if _direct(out):
        return _Out(out.reshape(x.array.shape), out, in_place)
    return _Out(_core.empty_f32(x.array.shape), out, in_place)


def _overlaps_itself(a: np.ndarray) -> bool:
    """Whether two elements of ``a`` share memory (a view made with zero or overlapping
    strides), where no result could be written correctly."""
    dims = sorted((abs(s), n) for s, n in zip(a.strides, a.shape, strict=True) if n > 1)
    if len({s for s, _ in dims}) < len(dims) or any(s == 0 for s, _ in dims):
        return True  # a zero stride, or two axes with one step: (1, 0) meets (0, 1) or (1, 1)
    span = a.itemsize
    for stride, n in dims:
        if stride < span:
            break
        span = stride * (n - 1) + span
    else:
        return False  # each axis steps over the whole extent of the smaller ones
    # Strides that interleave: compare the byte offsets of the elements themselves.
    offsets = np.zeros((), dtype=np.int64)
    for stride, n in zip(a.strides, a.shape, strict=True):
        offsets = np.add.outer(offsets, np.arange(n, dtype=np.int64) * stride)
    starts = np.sort(offsets.ravel())
    return bool(np.any(np.diff(starts) < a.itemsize))


def _direct(out: np.ndarray) -> bool:
    """Whether kernels write ``out`` itself (else a scratch array, copied into it after)."""
    flags = out.flags
    return bool(flags.c_contiguous and flags.aligned)


def _finish(o: _Out) -> np.ndarray:
    if o.target.base is not o.result and o.target is not o.result and not _direct(o.result):
        o.result[...] = o.target.reshape(o.result.shape)
    return o.result


def _input_for(x: _Logits, o: _Out) -> np.ndarray | None:
    """The array the kernel reads, or None where it writes that array itself (``out=logits``,
    float32 and written directly): the kernel then reads each row from a copy of its own."""
    if o.in_place and _direct(o.result):
        return None
    return x.array


def _zero_d(value: Any, kinds: str) -> Any:
    """The element of a 0-d array of one of the dtype ``kinds`` (a NumPy scalar), else ``value``."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in kinds:
        return value[()]
    return value


def _check_int(value: Any, name: str) -> int:
    value = _zero_d(value, "iu")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ParameterTypeError(f"{name}: must be an integer, got {type(value).__name__}")
    return operator.index(value)


def _check_choice(
    value: Any,
    name: str,
    choices: tuple[str, ...],
    wrong_type: type[Exception] = ParameterTypeError,
) -> str:
    """``value`` if it is one of the strings ``choices``, else an error naming ``name``
    (``wrong_type`` when it is not a string)."""
    if not isinstance(value, str):
        raise wrong_type(f"{name}: must be a str, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name}: must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _check_float(value: Any, name: str) -> float:
    value = _zero_d(value, "fiu")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ParameterTypeError(f"{name}: must be a number, got {type(value).__name__}")
    return _float(value, name)


def _float(value: Any, name: str) -> float:
    """``float(value)``; an integer beyond the float64 range is a ValueError naming ``name``."""
    try:
        return float(value)
    except OverflowError:
        message = "must be finite, got an integer beyond the float64 range"
        raise ValueError(f"{name}: {message}") from None


_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _clamp_i64(v: int) -> int:
    """Integer parameters beyond int64 (``top_k``, ``min_keep``, ``min_tokens``, ``logprobs``)
    mean the same as the int64 limit (top-k off, keep everything, ...): clamped so that they
    reach the kernels."""
    return v if _I64_MIN <= v <= _I64_MAX else (_I64_MAX if v > 0 else _I64_MIN)


def _int_param(v: int, name: str, least: int | None, row: int | None = None) -> int:
    """An integer parameter for the kernels: refused below ``least`` (when given) with its own
    value, which ``_clamp_i64`` would hide, then clamped."""
    if least is not None and v < least:
        where = "" if row is None else f" (row {row})"
        raise ValueError(f"{name}: must be >= {least}, got {shown(v)}{where}")
    return _clamp_i64(v)


def _refuse_bools(value: Any, name: str, what: str = "numbers") -> None:
    """Refuses a list or tuple that holds a bool: a per-row value is a number, as a scalar one
    is (NumPy alone would read ``[True, 2]`` as ``[1, 2]``)."""
    if isinstance(value, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in value):
        raise ParameterTypeError(f"{name}: must hold {what}, got a bool")


def _int_list(value: Any) -> bool:
    """Whether ``value`` is a list or tuple of integers (Python ints of any size, no bools)."""
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    )


def _per_row(value: Any, name: str, integer: bool, least: int | None = None) -> Any:
    """A scalar as a Python number, or a 1-D array as a contiguous float64 / int64 array.
    Python integers below ``least`` are refused here (an int64 array's are by the kernel)."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return _int_param(_check_int(value, name), name, least) if integer else _float(value, name)
    _refuse_bools(value, name)
    if integer and _int_list(value):
        # Python ints of any size, each taken at its meaning as a scalar would be.
        ints = [_int_param(int(v), name, least, r) for r, v in enumerate(value)]
        return np.array(ints, dtype=np.int64)
    a = _asarray(value, name)
    if a.ndim == 0:
        if a.dtype.kind not in ("iu" if integer else "fiu"):
            raise ParameterTypeError(
                f"{name}: must be a number or a 1-D array, got {type(value).__name__}"
            )
        return int(a) if integer else float(a)
    if a.ndim != 1:
        raise ValueError(f"{name}: must be a scalar or a 1-D array, got ndim {a.ndim}")
    if integer:
        if a.dtype.kind not in "iu":
            raise ParameterTypeError(f"{name}: must hold integers, got dtype {a.dtype}")
        if a.dtype.kind == "u" and a.size and a.max() > _I64_MAX:
            a = np.minimum(a, np.uint64(_I64_MAX))  # beyond int64: as the int64 limit
        return np.require(a, np.int64, ["C", "A"])
    if a.dtype.kind not in "fiu":
        raise ParameterTypeError(f"{name}: must hold numbers, got dtype {a.dtype}")
    return np.require(a, np.float64, ["C", "A"])


def _u64(value: Any, name: str) -> Any:
    """A seed or step: an int in [0, 2**64), or a 1-D integer array of them (as uint64)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        v = int(value)
        if not 0 <= v <= _U64_MAX:
            raise ValueError(f"{name}: must be an integer in [0, 2**64), got {shown(v)}")
        return v
    if isinstance(value, (float, bool, np.floating, np.bool_, str, bytes)):
        raise ParameterTypeError(
            f"{name}: must be an integer in [0, 2**64), got {type(value).__name__}"
        )
    _refuse_bools(value, name, "integers in [0, 2**64)")
    if _int_list(value):
        # Python ints up to 2**64 - 1 (NumPy alone would turn a mix of large and small ones
        # into float64).
        ints = [int(v) for v in value]
        bad = [v for v in ints if not 0 <= v <= _U64_MAX]
        if bad:
            raise ValueError(f"{name}: must be in [0, 2**64), got {shown(bad[0])}")
        return np.array(ints, dtype=np.uint64)
    a = _asarray(value, name)
    if a.ndim == 0:
        if a.dtype.kind not in "iu":
            raise ParameterTypeError(
                f"{name}: must be an integer in [0, 2**64), got {type(value).__name__}"
            )
        return _u64(int(a), name)
    if a.dtype.kind not in "iu" or a.ndim != 1:
        raise ParameterTypeError(
            f"{name}: must be an integer or a 1-D integer array, got {a.dtype}"
        )
    if a.dtype.kind == "i" and a.size and a.min() < 0:
        raise ValueError(f"{name}: must be in [0, 2**64), got {a.min()}")
    return np.require(a, np.uint64, ["C", "A"])


# Token ids 0, 1, ... as an int64 array: indexing it gives the np.int64 scalar of an id several
# times faster than np.int64(id) (the one-row fast paths return one per call).
_IDS = np.arange(0, dtype=np.int64)
_IDS_MAX = 1 << 20


def _id_scalar(token: int, vocab: int) -> np.int64:
    """``np.int64(token)`` for ``0 <= token < vocab``."""
    global _IDS
    ids = _IDS
    if vocab > _IDS_MAX:
        return np.int64(token)  # no table for rows longer than any tokenizer's vocabulary
    if ids.shape[0] < vocab:
        ids = _IDS = np.arange(max(vocab, 2 * ids.shape[0]), dtype=np.int64)
    return ids[token]  # type: ignore[no-any-return]


def _scalar_or_rows(x: _Logits, result: np.ndarray) -> Any:
    return result[0] if len(x.shape) == 1 else result


# ---------------------------------------------------------------------------------------------
# Stateless kernels


def softmax(
    logits: ArrayLike,
    *,
    temperature: float = 1.0,
    dtype: str | None = None,
    out: np.ndarray | None = None,
) -> npt.NDArray[np.float32]:
    """Probabilities ``softmax(logits / temperature)`` along the last axis.

    Args:
        logits: ``(V,)`` or ``(B, V)``; float32, float16 and bfloat16 are read in place.
        temperature: Finite and > 0.
        dtype: ``"bfloat16"`` to read a uint16 array as bfloat16 bits.
        out: Optional float32 array of the logits' shape to write into (``out=logits`` works).

    Returns:
        float32 probabilities; ``-inf`` logits get exactly 0.

    Raises:
        ValueError: NaN/``+inf`` logits, an all ``-inf`` row, or a bad ``temperature``.

    >>> import numpy as np, logitkit
    >>> logitkit.softmax(np.array([0.0, 0.0], dtype=np.float32)).tolist()
    [0.5, 0.5]
    """
    return _softmax(logits, temperature, dtype, out, log=False)


def log_softmax(
    logits: ArrayLike,
    *,
    temperature: float = 1.0,
    dtype: str | None = None,
    out: np.ndarray | None = None,
) -> npt.NDArray[np.float32]:
    """Log-probabilities ``z - logsumexp(z)`` with ``z = logits / temperature``.

    Finite logits give finite results; ``-inf`` logits give ``-inf``. Arguments as in
    :func:`softmax`.

    >>> import numpy as np, logitkit
    >>> [round(float(v), 4) for v in logitkit.log_softmax(np.array([0.0, 0.0], dtype=np.float32))]
    [-0.6931, -0.6931]
    """
    return _softmax(logits, temperature, dtype, out, log=True)


def _softmax(
    logits: ArrayLike, temperature: float, dtype: str | None, out: Any, log: bool
) -> npt.NDArray[np.float32]:
    if type(temperature) is float:
        if out is None and dtype is None and _plain_f32(logits):
            return _core.softmax_new(logits, temperature, log)  # the common call, in one step
        if (target := _in_place(logits, dtype, out)) is not None:
            _core.softmax(None, _F32, temperature, log, target)
            return cast("npt.NDArray[np.float32]", logits)
    x = _logits(logits, dtype)
    t = _check_float(temperature, "temperature")
    o = _out(out, x)
    _core.softmax(_input_for(x, o), x.kind, t, log, o.target)
    return _finish(o)


def argmax(logits: ArrayLike, *, dtype: str | None = None) -> Any:
    """Index of the largest logit (ties: the lowest index), as int64.

    Returns a scalar for ``(V,)`` logits and a ``(B,)`` array for ``(B, V)``.

    >>> import numpy as np, logitkit
    >>> int(logitkit.argmax(np.array([1.0, 3.0, 3.0], dtype=np.float32)))
    1
    """
    if dtype is None and _plain_f32(logits):  # a decoding loop
        if logits.ndim == 1:
            return _id_scalar(_core.argmax_row(logits), logits.shape[0])
        return _core.argmax_rows(logits)
    x = _logits(logits, dtype)
    res = np.empty(x.array.shape[0], dtype=np.int64)
    _core.argmax(x.array, x.kind, res)
    return _scalar_or_rows(x, res)


def top_k(logits: ArrayLike, k: int, *, dtype: str | None = None) -> TopK:
    """The ``k`` largest logits and their indices, largest first (ties: lower index first).

    Args:
        logits: ``(V,)`` or ``(B, V)``.
        k: ``1 <= k <= V``.

    Returns:
        ``TopK(values, indices)``, float32 and int64, each of shape ``(..., k)``.

    >>> import numpy as np, logitkit
    >>> logitkit.top_k(np.array([1.0, 3.0, 2.0], dtype=np.float32), 2).indices.tolist()
    [1, 2]
    """
    if dtype is None and type(k) is int and _plain_f32(logits) and 1 <= k <= logits.shape[-1]:
        return TopK(*_core.top_k_new(logits, k))  # the common call, in one step
    x = _logits(logits, dtype)
    kk = _check_int(k, "k")
    vocab = x.shape[-1]
    if not 1 <= kk <= vocab:
        raise ValueError(f"k: must be in [1, {vocab}], got {shown(kk)}")
    rows = x.array.shape[0]
    values = np.empty((rows, kk), dtype=np.float32)
    indices = np.empty((rows, kk), dtype=np.int64)
    _core.top_k(x.array, x.kind, kk, values, indices)
    if len(x.shape) == 1:
        return TopK(values[0], indices[0])
    return TopK(values, indices)


def mask_top_k(
    logits: ArrayLike, k: int, *, dtype: str | None = None, out: np.ndarray | None = None
) -> npt.NDArray[np.float32]:
    """Logits with every token outside the ``k`` largest set to ``-inf``.

    Ties at the boundary go to the lower index, so exactly ``min(k, finite tokens)`` tokens
    stay. ``k >= 1``; ``k >= V`` keeps every token.

    >>> import numpy as np, logitkit
    >>> logitkit.mask_top_k(np.array([1.0, 3.0, 2.0], dtype=np.float32), 2).tolist()
    [-inf, 3.0, 2.0]
    """
    if type(k) is int and k >= 1:
        if out is None and dtype is None and _plain_f32(logits):
            return _core.mask_new(logits, "top_k", float(min(k, logits.shape[-1])), 1.0, 1)
        if (target := _in_place(logits, dtype, out)) is not None:
            _core.mask(None, _F32, "top_k", float(min(k, logits.shape[-1])), 1.0, 1, target)
            return cast("npt.NDArray[np.float32]", logits)
    x = _logits(logits, dtype)
    kk = _check_int(k, "k")
    if kk < 1:
        raise ValueError(f"k: must be >= 1, got {shown(kk)}")
    o = _out(out, x)
    _core.mask(_input_for(x, o), x.kind, "top_k", float(min(kk, x.shape[-1])), 1.0, 1, o.target)
    return _finish(o)


def _min_keep(min_keep: Any) -> int:
    return _int_param(_check_int(min_keep, "min_keep"), "min_keep", 1)


def mask_top_p(
    logits: ArrayLike,
    top_p: float,
    *,
    temperature: float = 1.0,
    min_keep: int = 1,
    dtype: str | None = None,
    out: np.ndarray | None = None,
) -> npt.NDArray[np.float32]:
    """Logits with the nucleus kept and every other token set to ``-inf``.

    In order of probability under ``softmax(logits / temperature)`` (ties: lower index first),
    the shortest prefix whose mass reaches ``top_p`` is kept (the crossing token included),
    then at least ``min_keep`` tokens. Kept tokens keep their original logits.

    >>> import numpy as np, logitkit
    >>> x = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    >>> np.isfinite(logitkit.mask_top_p(x, 0.7)).tolist()
    [True, True, False]
    """
    return _probability_mask(logits, "top_p", top_p, temperature, min_keep, dtype, out)


def mask_min_p(
    logits: ArrayLike,
    min_p: float,
    *,
    temperature: float = 1.0,
    min_keep: int = 1,
    dtype: str | None = None,
    out: np.ndarray | None = None,
) -> npt.NDArray[np.float32]:
    """Logits with every token below the min-p threshold set to ``-inf``.

    A token is kept when ``p >= min_p * p_max`` under ``softmax(logits / temperature)``
    (equality kept), then at least ``min_keep`` tokens. Kept tokens keep their original logits.

    >>> import numpy as np, logitkit
    >>> x = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    >>> np.isfinite(logitkit.mask_min_p(x, 0.5)).tolist()
    [True, True, False]
    """
    return _probability_mask(logits, "min_p", min_p, temperature, min_keep, dtype, out)


def _probability_mask(
    logits: ArrayLike,
    which: str,
    value: float,
    temperature: float,
    min_keep: int,
    dtype: str | None,
    out: np.ndarray | None,
) -> npt.NDArray[np.float32]:
    """The top-p or min-p mask: `which` names the parameter `value`."""
    if (
        type(value) is float
        and type(temperature) is float
        and type(min_keep) is int
        and 1 <= min_keep <= _I64_MAX
    ):
        if out is None and dtype is None and _plain_f32(logits):
            return _core.mask_new(logits, which, value, temperature, min_keep)  # in one step
        if (target := _in_place(logits, dtype, out)) is not None:
            _core.mask(None, _F32, which, value, temperature, min_keep, target)
            return cast("npt.NDArray[np.float32]", logits)
    x = _logits(logits, dtype)
    p = _check_float(value, which)
    t = _check_float(temperature, "temperature")
    mk = _min_keep(min_keep)
    o = _out(out, x)
    _core.mask(_input_for(x, o), x.kind, which, p, t, mk, o.target)
    return _finish(o)


def apply_logit_bias(
    logits: ArrayLike,
    bias: Mapping[int, float] | Sequence[Mapping[int, float]],
    *,
    dtype: str | None = None,
    out: np.ndarray | None = None,
) -> npt.NDArray[np.float32]:
    """``logits + bias`` with ``bias = {token_id: value}``; a value of ``-inf`` bans the token.

    For ``(B, V)`` logits, ``bias`` is one dict (applied to every row) or a sequence of B dicts.

    >>> import numpy as np, logitkit
    >>> logitkit.apply_logit_bias(np.zeros(3, dtype=np.float32), {2: -np.inf}).tolist()
    [0.0, 0.0, -inf]
    """
    # Fast path: a contiguous float32 array and a dict, into a new array or in place.
    if type(bias) is dict and (plain := _plain_edit(logits, dtype, out)) is not None:
        res, src, target = plain
        _core.bias_and_penalties(src, _F32, target, res.ndim == 1, bias=bias)
        return res
    x = _logits(logits, dtype)
    o = _out(out, x)
    src = None if o.in_place and _direct(o.result) else x.array
    _core.bias_and_penalties(src, x.kind, o.target, len(x.shape) == 1, bias=_bias(bias, x))
    return _finish(o)


def _in_place(logits: Any, dtype: str | None, out: Any) -> np.ndarray | None:
    """For ``out=logits`` on contiguous, writable float32 logits: the ``(B, V)`` view that the
    kernels overwrite in place (None for every other form, which takes the general path)."""
    if out is not logits or dtype is not None or not _plain_f32(logits):
        return None
    if not logits.flags.writeable:
        return None  # the general path names out
    return logits.reshape(1, -1) if logits.ndim == 1 else logits


def _plain_edit(
    logits: Any, dtype: str | None, out: Any
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray] | None:
    """For contiguous float32 logits edited into a new array or in place (``out=logits``): the
    result, the array that ``bias_and_penalties`` reads (None: in place) and the ``(B, V)``
    view it writes. None for every other form (the general path)."""
    if (target := _in_place(logits, dtype, out)) is not None:
        return logits, None, target
    if out is not None or dtype is not None or not _plain_f32(logits):
        return None
    res = _core.empty_f32(logits.shape)
    if logits.ndim == 1:
        return res, logits.reshape(1, -1), res.reshape(1, -1)
    return res, logits, res


def _bias(bias: Any, x: _Logits, name: str = "bias") -> Any:
    if isinstance(bias, Mapping):
        return bias if isinstance(bias, dict) else dict(bias)
    if len(x.shape) == 1:
        raise TypeError(f"{name}: must be a dict {{token_id: value}} for 1-D logits")
    if isinstance(bias, (str, bytes)) or not isinstance(bias, Sequence):
        raise TypeError(f"{name}: must be a dict {{token_id: value}} or a sequence of them")
    rows = []
    for b in bias:
        if not isinstance(b, Mapping):
            raise TypeError(
                f"{name}: must be a dict {{token_id: value}} or a sequence of them, got a sequence "
                f"holding {type(b).__name__}"
            )
        rows.append(b if isinstance(b, dict) else dict(b))
    return rows


def apply_penalties(
    logits: ArrayLike,
    *,
    prompt_tokens: TokenIds = None,
    output_tokens: TokenIds = None,
    repetition_penalty: FloatParam = 1.0,
    presence_penalty: FloatParam = 0.0,
    frequency_penalty: FloatParam = 0.0,
    logit_bias: Mapping[int, float] | Sequence[Mapping[int, float]] | None = None,
    dtype: str | None = None,
    out: np.ndarray | None = None,
) -> npt.NDArray[np.float32]:
    """Repetition, then frequency and presence penalties (after an optional logit bias).

    Repetition (CTRL style) applies once to every distinct token of ``prompt_tokens`` and
    ``output_tokens``: ``z / r`` if ``z > 0`` else ``z * r``. Frequency and presence (OpenAI)
    use the counts ``c`` in ``output_tokens`` only: ``z - c * frequency - (c > 0) * presence``.
    Neutral values leave logits bit-for-bit unchanged.

    Token lists are one 1-D int array for ``(V,)`` logits, a sequence of B arrays for
    ``(B, V)``. Penalties may be scalars or ``(B,)`` arrays. ``logit_bias`` (as in
    :func:`apply_logit_bias`) is added first, in the same pass: the order of the pipeline.

    >>> import numpy as np, logitkit
    >>> x = np.array([2.0, -2.0, 1.0], dtype=np.float32)
    >>> logitkit.apply_penalties(x, output_tokens=np.array([0, 1]), repetition_penalty=2.0).tolist()
    [1.0, -4.0, 1.0]
    """
    # Fast path: a contiguous float32 array, into a new array or in place, float penalties and a
    # dict bias (or none), the form of a decoding loop: no argument handling beyond the kernel's
    # own.
    plain = (
        _plain_edit(logits, dtype, out)
        if type(repetition_penalty) is float
        and type(presence_penalty) is float
        and type(frequency_penalty) is float
        and (logit_bias is None or type(logit_bias) is dict)
        else None
    )
    rep: Any
    pres: Any
    freq: Any
    bias: Any
    if plain is not None:
        res, src, target = plain
        kind, one_row = _F32, res.ndim == 1
        rep, pres, freq, bias = repetition_penalty, presence_penalty, frequency_penalty, logit_bias
    else:
        x = _logits(logits, dtype)
        rep = _per_row(repetition_penalty, "repetition_penalty", integer=False)
        pres = _per_row(presence_penalty, "presence_penalty", integer=False)
        freq = _per_row(frequency_penalty, "frequency_penalty", integer=False)
        o = _out(out, x)
        src = None if o.in_place and _direct(o.result) else x.array
        kind, one_row, target = x.kind, len(x.shape) == 1, o.target
        bias = None if logit_bias is None else _bias(logit_bias, x, "logit_bias")
    _core.bias_and_penalties(
        src,
        kind,
        target,
        one_row,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        repetition_penalty=rep,
        presence_penalty=pres,
        frequency_penalty=freq,
        bias=bias,
    )
    return res if plain is not None else _finish(o)


# ---------------------------------------------------------------------------------------------
# Sampling


def uniform(seed: int, step: int) -> float:
    """The uniform draw in ``[0, 1)`` that :func:`sample` uses for ``(seed, step)``.

    Philox4x32-10 with key ``(seed & 0xFFFFFFFF, seed >> 32)`` and counter
    ``(step & 0xFFFFFFFF, step >> 32, 0, 0)``; from output words ``o0, o1`` the value is
    ``((o0 >> 5) * 2**26 + (o1 >> 6)) / 2**53``.

    >>> import logitkit
    >>> 0.0 <= logitkit.uniform(1234, 0) < 1.0
    True
    """
    s = _u64(seed, "seed")
    t = _u64(step, "step")
    if not isinstance(s, int):
        raise ParameterTypeError("seed: must be an integer")
    if not isinstance(t, int):
        raise ParameterTypeError("step: must be an integer")
    return float(_core.uniform(s, t))


def _uniforms(x: _Logits, uniforms: Any) -> np.ndarray:
    rows = x.array.shape[0]
    if len(x.shape) == 1:
        if isinstance(uniforms, np.ndarray) and uniforms.ndim == 0 and uniforms.dtype.kind in "fiu":
            uniforms = uniforms[()]
        if isinstance(uniforms, (bool, np.bool_)) or not isinstance(
            uniforms, (int, float, np.integer, np.floating)
        ):
            raise ParameterTypeError("uniforms: must be a float for 1-D logits")
        return np.array([_float(uniforms, "uniforms")])
    _refuse_bools(uniforms, "uniforms")
    u = _asarray(uniforms, "uniforms")
    if u.ndim != 1 or u.shape[0] != rows:
        raise ValueError(f"uniforms: must be an array of length {rows}, got shape {u.shape}")
    if u.dtype.kind not in "fiu":
        raise ParameterTypeError(f"uniforms: must hold floats, got dtype {u.dtype}")
    return np.require(u, np.float64, ["C", "A"])


def _seed(seed: Any, rows: int) -> Any:
    if seed is None:
        if rows == 1:
            return int.from_bytes(os.urandom(8), "little")
        return np.frombuffer(os.urandom(8 * rows), dtype=np.uint64)
    if type(seed) is int and 0 <= seed <= _U64_MAX:
        return seed
    if isinstance(seed, (list, tuple)) and any(s is None for s in seed):
        # Rows without a seed draw fresh OS entropy, as seed=None does for every row.
        fresh = np.frombuffer(os.urandom(8 * len(seed)), dtype=np.uint64).tolist()
        seed = [f if s is None else s for s, f in zip(seed, fresh, strict=True)]
    return _u64(seed, "seed")


def _rows_of(value: Any, name: str, rows: int) -> None:
    """Refuses a per-row array (of ``_seed`` or ``_u64``) whose length is not ``rows``."""
    if isinstance(value, np.ndarray) and value.shape != (rows,):
        raise ValueError(f"{name}: has {value.shape[0]} values for {rows} rows")


def _scalar_or(value: Any, name: str, integer: bool, least: int | None = None) -> Any:
    t = type(value)
    if t is float or (t is int and value is not True and value is not False):
        if integer:
            if t is float:
                raise ParameterTypeError(f"{name}: must be an integer, got float")
            return _int_param(value, name, least)
        return value if t is float else _float(value, name)
    return _per_row(value, name, integer, least)


def sample(
    logits: ArrayLike,
    *,
    temperature: FloatParam = 1.0,
    top_k: IntParam = 0,
    top_p: FloatParam = 1.0,
    min_p: FloatParam = 0.0,
    min_keep: IntParam = 1,
    order: str = "default",
    seed: int | npt.ArrayLike | None = None,
    step: int | npt.ArrayLike = 0,
    uniforms: float | npt.ArrayLike | None = None,
    dtype: str | None = None,
) -> Any:
    """Sample one token per row: temperature, top-k, top-p, min-p, then the draw.

    ``temperature == 0`` is greedy (argmax, ties to the lowest id). Otherwise, on
    ``z = logits / temperature``: top-k keeps the k best (``k <= 0`` or ``k >= V``: off), top-p
    keeps the nucleus, min-p keeps ``p >= min_p * p_max``, each on what the previous step left
    (``min_keep`` applies after top-p and min-p). The draw returns the first kept id, in
    increasing id order, whose cumulative probability exceeds ``u = uniform(seed, step)`` (or
    ``uniforms[row]``).

    ``order="vllm"`` applies min-p before top-k; ``order="llama.cpp"`` applies top-k, top-p and
    min-p to untempered logits and the temperature only to the draw.

    Every parameter except ``order`` may be a ``(B,)`` array (one value per row). With
    ``seed=None`` every row draws fresh OS entropy (in a list of seeds, ``None`` does so for
    its row); a scalar seed gives every row ``uniform(seed, step)``, so a row's token never
    depends on its position in the batch.

    Returns:
        An int64 scalar for ``(V,)`` logits, an int64 ``(B,)`` array for ``(B, V)``.

    >>> import numpy as np, logitkit
    >>> x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    >>> int(logitkit.sample(x, temperature=0.0))
    2
    >>> int(logitkit.sample(x, top_k=1, seed=7))
    2
    """
    # Fastest path: the whole check and the call in Rust (float32, float16 or a bfloat16 dtype
    # seen before, plain scalar parameters and an integer seed, a uint64 array of one per row,
    # or None for a greedy call).
    if uniforms is None and dtype is None:
        r = _core.sample_direct(
            logits, temperature, top_k, top_p, min_p, min_keep, order, seed, step
        )
        if r is not None:
            return _id_scalar(r, logits.shape[0]) if type(r) is int else r
    # Fast path: a contiguous float32 (or float16 / bfloat16 seen before, or uint16 bits with
    # dtype="bfloat16") row or batch with plain scalar parameters and a seed (None, an integer,
    # or a uint64 array of one per row).
    if (
        type(logits) is np.ndarray
        and (kind := _fast_kind(logits.dtype, dtype)) is not None
        and 1 <= logits.ndim <= 2
        and logits.shape[-1] > 0
        and uniforms is None
        and (
            seed is None
            or (type(seed) is int and 0 <= seed <= _U64_MAX)
            or (type(seed) is np.ndarray and seed.dtype == np.uint64 and seed.ndim == 1)
        )
        and type(step) is int
        and type(temperature) is float
        and type(top_k) is int
        and type(top_p) is float
        and type(min_p) is float
        and type(min_keep) is int
        and type(order) is str
        and 0 <= step <= _U64_MAX
        and (flags := logits.flags).c_contiguous
        and flags.aligned
    ):
        a = logits if kind == _F32 or logits.dtype is _U16_DTYPE else logits.view(np.uint16)
        if seed is None:
            # Greedy draws use no uniform: no OS entropy to read.
            seed = 0 if temperature == 0.0 else _seed(None, 1 if logits.ndim == 1 else len(a))
        try:
            if logits.ndim == 1:
                tok = _core.sample_fast(
                    a, kind, temperature, top_k, top_p, min_p, min_keep, order, seed, step
                )
                return _id_scalar(tok, logits.shape[0])
            out = np.empty(logits.shape[0], dtype=np.int64)
            _core.sample_fast(
                a, kind, temperature, top_k, top_p, min_p, min_keep, order, seed, step, out
            )
            return out
        except OverflowError:
            pass  # an int parameter beyond int64: the general path below clamps or names it
    x = _logits(logits, dtype)
    _check_choice(order, "order", _ORDERS)
    t = _scalar_or(temperature, "temperature", False)
    k = _scalar_or(top_k, "top_k", True)
    p = _scalar_or(top_p, "top_p", False)
    mp = _scalar_or(min_p, "min_p", False)
    mk = _scalar_or(min_keep, "min_keep", True, least=1)
    rows = x.array.shape[0]
    res = np.empty(rows, dtype=np.int64)
    if uniforms is not None:
        u = _uniforms(x, uniforms)
        # The uniforms decide the draw, but seed and step are still checked (SPEC §4's ranges).
        if seed is not None:
            _rows_of(_seed(seed, rows), "seed", rows)
        _rows_of(_u64(step, "step"), "step", rows)
        _core.sample(x.array, x.kind, t, k, p, mp, mk, order, 0, 0, u, res)
    else:
        st = step if type(step) is int and 0 <= step <= _U64_MAX else _u64(step, "step")
        _core.sample(x.array, x.kind, t, k, p, mp, mk, order, _seed(seed, rows), st, None, res)
    return _scalar_or_rows(x, res)


def logprobs(
    logits: ArrayLike, tokens: Any, top_n: int = 0, *, dtype: str | None = None
) -> LogProbs:
    """Log-probabilities of ``tokens`` under ``log_softmax(logits)``, ranks, and the top ``n``.

    A token's rank is ``1 +`` the number of tokens with a strictly larger log-probability,
    compared exactly, that is by logit: tokens whose float32 log-probabilities print the same can
    have different ranks (``[0.0, 1e-45]`` ranks 2 and 1).
    For ``(V,)`` logits ``tokens`` is a 1-D array of ids; for ``(B, V)`` a sequence of B 1-D
    arrays (results are ``(B, n)`` arrays when every row has n tokens, else a list of arrays).
    ``top_ids`` / ``top_logprobs`` hold the ``top_n`` most probable tokens (ties: lower id).

    >>> import numpy as np, logitkit
    >>> r = logitkit.logprobs(np.array([0.0, 1.0, 2.0], dtype=np.float32), [2, 0], top_n=1)
    >>> r.ranks.tolist(), r.top_ids.tolist()
    ([1, 3], [2])
    """
    if (
        dtype is None
        and type(top_n) is int
        and tokens is not None
        and _plain_f32(logits)
        and logits.ndim == 1
        and 0 <= top_n <= logits.shape[0]
    ):  # one row, the common call
        lp, rk, _, ti, tl = _core.logprobs(logits.reshape(1, -1), _F32, tokens, True, top_n)
        return LogProbs(lp, rk, ti, tl)
    x = _logits(logits, dtype)
    if tokens is None:
        raise TypeError("tokens: must be token ids (a 1-D int array, or one per row)")
    n = _check_int(top_n, "top_n")
    vocab = x.shape[-1]
    if not 0 <= n <= vocab:
        raise ValueError(f"top_n: must be in [0, {vocab}], got {shown(n)}")
    one_row = len(x.shape) == 1
    lp, rk, offsets, ti, tl = _core.logprobs(x.array, x.kind, tokens, one_row, n)
    rows = x.array.shape[0]
    if one_row:
        return LogProbs(lp, rk, ti, tl)
    counts = np.diff(offsets)
    if rows == 0 or (counts == counts[0]).all():
        width = int(counts[0]) if rows else 0
        lp_r: Any = lp.reshape(rows, width)
        rk_r: Any = rk.reshape(rows, width)
    else:
        lp_r = np.split(lp, offsets[1:-1])
        rk_r = np.split(rk, offsets[1:-1])
    return LogProbs(lp_r, rk_r, ti.reshape(rows, n), tl.reshape(rows, n))


# ---------------------------------------------------------------------------------------------
# Runtime


def simd_level() -> str:
    """The SIMD level in use: ``"avx512"``, ``"avx2"``, ``"neon"`` or ``"scalar"``.

    ``LOGITKIT_SIMD`` forces a level at import (a level the CPU lacks falls back to the best one
    it has).
    """
    return str(_core.simd_level())


def set_num_threads(n: int) -> None:
    """Sets the number of threads used for batches, at most 1024 (default: the cores, at most
    16; or ``LOGITKIT_NUM_THREADS``). Results are identical for every thread count."""
    nn = _check_int(n, "n")
    if not 1 <= nn <= _core.MAX_THREADS:
        raise ValueError(f"n: must be in [1, {_core.MAX_THREADS}], got {shown(nn)}")
    _core.set_num_threads(nn)


def get_num_threads() -> int:
    """The number of threads used for batches."""
    return int(_core.get_num_threads())
