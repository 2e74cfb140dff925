"""The serving layer (SPEC §7): per-request parameters and one call per decoding step."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from . import _core
from ._api import (
    _ORDERS,
    ArrayLike,
    _asarray,
    _check_choice,
    _clamp_i64,
    _logits,
    _u64,
    _zero_d,
)
from ._errors import shown

__all__ = ["BatchResult", "SamplingParams", "sample_batch"]

_MODES = ("raw", "processed")
_ID_LIMIT = 2**31

# Request keys that are not sampling parameters: read by a server, ignored here.
# fmt: off
_NOT_SAMPLING = frozenset(
    {
        "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "stop", "n",
        "stream", "stream_options", "user", "suffix", "echo", "best_of", "tools", "tool_choice",
        "functions", "function_call", "response_format", "parallel_tool_calls", "service_tier",
        "store", "metadata", "modalities", "audio", "prediction", "reasoning_effort",
        "web_search_options", "ignore_eos", "include_stop_str_in_output", "skip_special_tokens",
        "spaces_between_special_tokens", "add_generation_prompt", "continue_final_message",
        "chat_template", "chat_template_kwargs", "documents", "truncate_prompt_tokens",
        "detokenize", "output_kind", "request_id", "priority", "top_logprobs", "logprobs",
        "prompt_logprobs", "max_new_tokens", "stop_sequences", "return_full_text", "n_probs",
        # Structured output: a grammar engine turns these into sample_batch's token_bitmask.
        "guided_json", "guided_regex", "guided_choice", "guided_grammar",
        "guided_decoding_backend", "guided_whitespace_pattern", "structured_outputs", "grammar",
        "json_schema",
    }
)
# Sampling parameters of other engines that logitkit does not implement: refused unless null or
# at the value that turns the feature off (what a request body dumped with its defaults holds),
# so a request never silently samples differently from what it asked for.
def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _equals(neutral: float) -> Any:
    return lambda v: _number(v) and v == neutral


def _empty(v: Any) -> bool:
    return isinstance(v, (list, tuple, dict)) and not v


_UNSUPPORTED: dict[str, Any] = {
    "typical_p": _equals(1.0), "tfs_z": _equals(1.0), "top_a": _equals(0.0),
    "mirostat": _equals(0), "mirostat_mode": _equals(0), "epsilon_cutoff": _equals(0.0),
    "eta_cutoff": _equals(0.0), "dry_multiplier": _equals(0.0), "xtc_probability": _equals(0.0),
    "dynatemp_range": _equals(0.0), "no_repeat_ngram_size": _equals(0),
    "repeat_penalty": _equals(1.0), "rep_pen": _equals(1.0),
    "encoder_repetition_penalty": _equals(1.0), "tfs": _equals(1.0), "typical": _equals(1.0),
    "smoothing_factor": _equals(0.0),
    "top_n_sigma": lambda v: _number(v) and v <= 0, "nsigma": lambda v: _number(v) and v <= 0,
    "use_beam_search": lambda v: v is False,
    # Hugging Face's do_sample=false is greedy decoding, text-generation-webui's
    # temperature_last a different order (order="llama.cpp" is logitkit's form of it).
    "do_sample": lambda v: v is True, "temperature_last": lambda v: v is False,
    "bad_words": _empty, "bad_words_ids": _empty, "suppress_tokens": _empty,
    "sequence_bias": _empty, "logits_processors": _empty,
}
# Settings of those features that do nothing while the feature is off (mirostat_tau,
# mirostat_eta, dry_base, dry_allowed_length, dry_penalty_last_n, dry_sequence_breakers,
# xtc_threshold, dynatemp_exponent) and length_penalty (beam search only) are ignored.
# A penalty window (the last n tokens): logitkit's penalties read every token, so a window is
# refused when a penalty is on, unless it holds the engine's value for the whole context
# (llama.cpp: -1; text-generation-webui: 0; KoboldCpp's rep_pen_range has none).
_PENALTY_WINDOWS: dict[str, tuple[int, ...]] = {
    "repeat_last_n": (-1,), "penalty_last_n": (-1,), "repetition_penalty_range": (0,),
    "rep_pen_range": (),
}
# fmt: on


def _read_only(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise TypeError(
        "SamplingParams is frozen, its containers too: build a new one with dataclasses.replace"
    )


class _FrozenDict(dict):  # type: ignore[type-arg]
    """The ``logit_bias`` of a ``SamplingParams``: a dict that refuses changes (a change would
    show in the field, and in the hash, but not in what is sampled). Made by ``_frozen_dict``;
    calling the class (as ``dataclasses.asdict`` does) gives a plain dict."""

    __slots__ = ()
    __init__ = __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return dict(*args, **kwargs)

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))  # equal exactly when the dicts are

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))  # copies and pickles are plain dicts


class _FrozenList(list):  # type: ignore[type-arg]
    """The token-id lists of a ``SamplingParams``: a list that refuses changes. Made by
    ``_frozen_list``; calling the class gives a plain list."""

    __slots__ = ()
    __init__ = __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return list(*args, **kwargs)

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(self))

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


def _frozen_dict(items: Any) -> dict[int, float]:
    d: dict[int, float] = dict.__new__(_FrozenDict)
    dict.update(d, items)
    return d


def _frozen_list(items: Any) -> list[int]:
    out: list[int] = list.__new__(_FrozenList)
    list.extend(out, items)
    return out


def _fail(name: str, message: str) -> ValueError:
    return ValueError(f"{name}: {message}")


def _int(value: Any, name: str) -> int:
    value = _zero_d(value, "iu")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _fail(name, f"must be an integer, got {shown(value)}")
    return int(value)


def _num(value: Any, name: str) -> float:
    value = _zero_d(value, "fiu")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _fail(name, f"must be a number, got {shown(value)}")
    try:
        return float(value)
    except OverflowError:
        raise _fail(name, "must be finite, got an integer beyond the float64 range") from None


def _token_key(key: Any) -> int:
    """A ``logit_bias`` key: an integer, or a string of ASCII digits with an optional sign."""
    if isinstance(key, str):
        if re.fullmatch(r"[-+]?[0-9]+", key) is None:
            raise _fail("logit_bias", f"key {shown(key)} is not a token id")
        digits = key.lstrip("+-").lstrip("0") or "0"
        if len(digits) > 20:
            # Beyond any id (and beyond what Python's int() reads: 4300 digits).
            raise _fail("logit_bias", f"key of {len(digits)} digits is out of range")
        return -int(digits) if key.startswith("-") else int(digits)
    return _int(key, "logit_bias")


def _ids(value: Any, name: str) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise _fail(name, f"must be a sequence of token ids, got {shown(value)}")
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise _fail(name, f"must be a 1-D sequence of token ids, got shape {value.shape}")
    out = [_int(v, name) for v in value]
    for t in out:
        if not 0 <= t < _ID_LIMIT:
            raise _fail(name, f"token id {shown(t)} is out of range")
    return out


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """The sampling parameters of one request, validated at construction.

    Names follow OpenAI / vLLM. Every invalid value raises ``ValueError`` naming the field.
    ``logprobs=n`` asks for the sampled token's log-probability, its rank and the top ``n``;
    ``logprobs_mode="raw"`` measures them on the logits as given, ``"processed"`` on the
    distribution actually sampled from. ``seed=None`` draws fresh entropy at every step.
    ``logit_bias=None`` and ``stop_token_ids=None`` are read as empty. Instances compare and
    hash by their fields, so equal parameters can key a dict.

    >>> import logitkit
    >>> p = logitkit.SamplingParams(temperature=0.7, top_p=0.9, seed=1)
    >>> p.top_k, p.logprobs, p.stop_token_ids
    (0, None, [])
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    min_keep: int = 1
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = dataclasses.field(default_factory=dict)
    allowed_token_ids: Sequence[int] | None = None
    stop_token_ids: Sequence[int] = dataclasses.field(default_factory=list)
    min_tokens: int = 0
    seed: int | None = None
    logprobs: int | None = None
    logprobs_mode: str = "raw"
    order: str = "default"

    def __post_init__(self) -> None:
        t = _num(self.temperature, "temperature")
        if not (math.isfinite(t) and t >= 0):
            raise _fail("temperature", f"must be finite and >= 0, got {t}")
        top_k = _int(self.top_k, "top_k")
        top_p = _num(self.top_p, "top_p")
        if not 0.0 <= top_p <= 1.0:
            raise _fail("top_p", f"must be in [0, 1], got {top_p}")
        min_p = _num(self.min_p, "min_p")
        if not 0.0 <= min_p <= 1.0:
            raise _fail("min_p", f"must be in [0, 1], got {min_p}")
        min_keep = _int(self.min_keep, "min_keep")
        if min_keep < 1:
            raise _fail("min_keep", f"must be >= 1, got {shown(min_keep)}")
        rep = _num(self.repetition_penalty, "repetition_penalty")
        if not (math.isfinite(rep) and rep > 0):
            raise _fail("repetition_penalty", f"must be finite and > 0, got {rep}")
        pres = _num(self.presence_penalty, "presence_penalty")
        if not math.isfinite(pres):
            raise _fail("presence_penalty", f"must be finite, got {pres}")
        freq = _num(self.frequency_penalty, "frequency_penalty")
        if not math.isfinite(freq):
            raise _fail("frequency_penalty", f"must be finite, got {freq}")
        given_bias = {} if self.logit_bias is None else self.logit_bias
        if not isinstance(given_bias, Mapping):
            raise _fail(
                "logit_bias", f"must be a mapping {{token_id: value}}, got {shown(self.logit_bias)}"
            )
        bias_ids: list[int] = []
        bias_values: list[float] = []
        for k, v in given_bias.items():
            tid = _token_key(k)
            if not 0 <= tid < _ID_LIMIT:
                raise _fail("logit_bias", f"token id {shown(tid)} is out of range")
            val = _num(v, "logit_bias")
            if math.isnan(val) or val == math.inf:
                raise _fail("logit_bias", f"value {val} for token {tid} must be finite or -inf")
            bias_ids.append(tid)
            bias_values.append(val)
        seen: set[int] = set()
        for tid in bias_ids:
            if tid in seen:
                raise _fail("logit_bias", f"gives token id {tid} twice (under two spellings)")
            seen.add(tid)
        allowed = None
        if self.allowed_token_ids is not None:
            allowed = _ids(self.allowed_token_ids, "allowed_token_ids")
            if not allowed:
                raise _fail("allowed_token_ids", "is empty: no token could ever be sampled")
        stop = [] if self.stop_token_ids is None else _ids(self.stop_token_ids, "stop_token_ids")
        min_tokens = _int(self.min_tokens, "min_tokens")
        if min_tokens < 0:
            raise _fail("min_tokens", f"must be >= 0, got {shown(min_tokens)}")
        seed = None
        if self.seed is not None:
            seed = _int(self.seed, "seed")
            if not 0 <= seed < 2**64:
                raise _fail("seed", f"must be in [0, 2**64), got {shown(seed)}")
        logprobs = None
        if self.logprobs is not None:
            logprobs = _int(self.logprobs, "logprobs")
            if logprobs < 0:
                raise _fail("logprobs", f"must be >= 0, got {shown(logprobs)}")
        _check_choice(self.logprobs_mode, "logprobs_mode", _MODES, wrong_type=ValueError)
        _check_choice(self.order, "order", _ORDERS, wrong_type=ValueError)
        # Store the validated values, so that fields hold what is sampled with: plain Python
        # numbers and strings, integer token ids (string keys of logit_bias converted) and read-only
        # copies of the caller's containers (changing those later changes nothing here).
        # Integers beyond int64 are stored at their int64 limit, which means the same (top-k off,
        # keep everything, ...) and can be printed.
        top_k, min_keep, min_tokens = (
            _clamp_i64(top_k),
            _clamp_i64(min_keep),
            _clamp_i64(min_tokens),
        )
        logprobs = None if logprobs is None else _clamp_i64(logprobs)
        normalized = {
            "temperature": t, "top_k": top_k, "top_p": top_p, "min_p": min_p,
            "min_keep": min_keep, "repetition_penalty": rep, "presence_penalty": pres,
            "frequency_penalty": freq,
            "logit_bias": _frozen_dict(zip(bias_ids, bias_values, strict=True)),
            "allowed_token_ids": None if allowed is None else _frozen_list(allowed),
            "stop_token_ids": _frozen_list(stop), "min_tokens": min_tokens,
            "seed": seed, "logprobs": logprobs, "logprobs_mode": str(self.logprobs_mode),
            "order": str(self.order),
        }  # fmt: skip
        for name, value in normalized.items():
            object.__setattr__(self, name, value)
        native = _core.RowParams(
            t, top_k, top_p, min_p, min_keep, self.order, rep, pres, freq,
            bias_ids, bias_values, allowed, stop, min_tokens, seed,
            logprobs, self.logprobs_mode == "processed",
        )  # fmt: skip
        object.__setattr__(self, "_native", native)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # pickle and copy rebuild from the fields (validated again), not from the native form.
        return (type(self), tuple(getattr(self, f.name) for f in dataclasses.fields(self)))

    @classmethod
    def from_openai(cls, body: Mapping[str, Any]) -> SamplingParams:
        """Reads the sampling parameters of an OpenAI-style request body.

        ``logprobs: true`` with ``top_logprobs: n`` gives ``logprobs = n`` (``0`` without
        ``top_logprobs``; ``false`` or absent gives ``None``; an integer, as in the completions
        API, is taken as is). String keys of ``logit_bias`` become token ids. Keys that are not
        sampling parameters (``model``, ``messages``, ``max_tokens``, ``stop``, ...) are ignored;
        vLLM-style keys with ``SamplingParams`` names (``top_k``, ``min_p``, ...) are read;
        sampling parameters logitkit does not implement (``typical_p``, ``mirostat``, ...)
        raise ``ValueError`` unless they hold the value that turns them off (``typical_p: 1``,
        ``mirostat: 0``, ``use_beam_search: false``, ...); a penalty window
        (``repeat_last_n``) is refused while a penalty is on, unless it means the whole
        context (-1; 0 for ``repetition_penalty_range``). Structured-output keys
        (``response_format``, ``guided_json``, ``grammar``, ...) are not read: the server
        enforces them through ``sample_batch``'s ``token_bitmask``. A ``null`` value means the
        default.

        >>> import logitkit
        >>> body = {"model": "m", "temperature": 0.5, "logprobs": True, "top_logprobs": 3,
        ...         "logit_bias": {"42": -100}, "max_tokens": 16}
        >>> p = logitkit.SamplingParams.from_openai(body)
        >>> p.temperature, p.logprobs, dict(p.logit_bias)
        (0.5, 3, {42: -100.0})
        """
        if not isinstance(body, Mapping):
            raise TypeError(f"body: must be a mapping, got {type(body).__name__}")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        names = defaults.keys() - {"logprobs"}
        kwargs: dict[str, Any] = {}
        for key, value in body.items():
            if key in _UNSUPPORTED and value is not None and not _UNSUPPORTED[key](value):
                raise ValueError(
                    f"{key}: is a sampling parameter logitkit does not support "
                    f"(got {shown(value)}; only null or the value at which it changes nothing "
                    "is accepted)"
                )
            if key in names and value is not None:
                kwargs[key] = value
        lp = body.get("logprobs")
        if isinstance(lp, bool):
            if lp:
                top = body.get("top_logprobs")
                n = 0 if top is None else _int(top, "top_logprobs")
                if n < 0:
                    raise _fail("top_logprobs", f"must be >= 0, got {shown(n)}")
                kwargs["logprobs"] = n
        elif lp is not None:
            kwargs["logprobs"] = _int(lp, "logprobs")
        params = cls(**kwargs)
        penalties = ("repetition_penalty", "presence_penalty", "frequency_penalty")
        penalized = any(getattr(params, k) != defaults[k] for k in penalties)
        for key, whole in _PENALTY_WINDOWS.items():
            window = body.get(key)
            if penalized and window is not None and not (_number(window) and window in whole):
                expected = " or ".join([*(str(w) for w in whole), "null"])
                raise ValueError(
                    f"{key}: a penalty window is not supported (penalties read every token); "
                    f"got {shown(window)} with a penalty on, expected {expected}"
                )
        return params


class BatchResult(NamedTuple):
    """The result of :func:`sample_batch`: int64 ``tokens (B,)``; when any row asked for
    log-probabilities, float32 ``logprobs (B,)``, int64 ``ranks (B,)`` and ``top_ids`` /
    ``top_logprobs (B, n)`` (rows that asked for fewer are padded with -1 / -inf), else None."""

    tokens: npt.NDArray[np.int64]
    logprobs: npt.NDArray[np.float32] | None
    ranks: npt.NDArray[np.int64] | None
    top_ids: npt.NDArray[np.int64] | None
    top_logprobs: npt.NDArray[np.float32] | None


def sample_batch(
    logits: ArrayLike,
    params: SamplingParams | Sequence[SamplingParams],
    *,
    prompt_tokens: Sequence[npt.ArrayLike] | None = None,
    output_tokens: Sequence[npt.ArrayLike] | None = None,
    steps: int | npt.ArrayLike | None = None,
    token_bitmask: npt.ArrayLike | None = None,
    dtype: str | None = None,
) -> BatchResult:
    """Samples one token for every row of a ``(B, V)`` decoding step.

    Every row has its own :class:`SamplingParams` (or all share one), its own prompt and
    output tokens (ragged lists), and optionally a row of the packed grammar bitmask
    ``token_bitmask`` (int32 ``(B, ceil(V/32))``, bit ``t % 32`` of word ``t // 32`` set when
    token ``t`` is allowed). Per row: masks (``allowed_token_ids``, ``stop_token_ids`` while
    fewer than ``min_tokens`` tokens were generated, the bitmask), logit bias, penalties, then
    the pipeline of :func:`sample` with ``uniform(seed, step)``, ``step`` defaulting to
    ``len(output_tokens[row])``. Rows run in parallel with the GIL released.

    >>> import numpy as np, logitkit
    >>> x = np.zeros((2, 4), dtype=np.float32)
    >>> p = [logitkit.SamplingParams(allowed_token_ids=[3], seed=0),
    ...      logitkit.SamplingParams(temperature=0.0, logit_bias={1: 5.0})]
    >>> logitkit.sample_batch(x, p).tokens.tolist()
    [3, 1]
    """
    x = _logits(logits, dtype)
    if len(x.shape) != 2:
        raise ValueError(f"logits: sample_batch needs a (B, V) batch, got shape {x.shape}")
    rows, vocab = x.shape
    if isinstance(params, SamplingParams):
        plist: Sequence[SamplingParams] = [params]
    elif isinstance(params, Sequence) and not isinstance(params, (str, bytes)):
        plist = params
        if len(plist) != rows:
            raise ValueError(f"params: has {len(plist)} entries for {rows} rows")
    else:
        raise TypeError("params: must be a SamplingParams or a sequence of them")
    try:
        natives = [p._native for p in plist]  # type: ignore[attr-defined]
    except AttributeError:
        raise TypeError("params: every entry must be a SamplingParams") from None
    step_arg = None if steps is None else _u64(steps, "steps")
    mask = None
    if token_bitmask is not None:
        m = _asarray(token_bitmask, "token_bitmask")
        if m.dtype.kind in "iu" and m.dtype.itemsize == 4 and not m.dtype.isnative:
            m = m.astype(m.dtype.newbyteorder("="))  # the same words in native byte order
        if m.dtype == np.uint32:
            m = m.view(np.int32)
        if m.dtype != np.int32:
            raise TypeError(f"token_bitmask: must be an int32 array, got dtype {m.dtype}")
        words = -(-vocab // 32)
        if m.shape != (rows, words):
            raise ValueError(f"token_bitmask: must have shape ({rows}, {words}), got {m.shape}")
        mask = np.require(m, None, ["C", "A"])
    tokens, lp = _core.sample_batch(
        x.array, x.kind, natives, prompt_tokens, output_tokens, step_arg, mask
    )
    if lp is None:
        return BatchResult(tokens, None, None, None, None)
    logprobs, ranks, top_ids, top_logprobs, n = lp
    return BatchResult(
        tokens, logprobs, ranks, top_ids.reshape(rows, n), top_logprobs.reshape(rows, n)
    )
