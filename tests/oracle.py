"""A float64 NumPy reference of logitkit's rules (SPEC §3-§6).

Every function takes the logits as the float32 values logitkit reads (a float16 or bfloat16
row converted to float32 exactly, a float64 row rounded to float32 once) and computes in
float64. The docstring of each function is the rule it implements.

Discrete results (kept sets, sampled tokens, ranks) can differ from a float32 computation
when two values are within rounding distance of each other. For those, the ``*_sets`` and
``acceptable_*`` functions return what every correct float32 implementation must produce and
what it may produce, given a relative tolerance ``tol``. With ``tol = 0`` they collapse to the
exact answer.
"""

from __future__ import annotations

import math

import numpy as np

ORDERS = ("default", "vllm", "llama.cpp")
MASK32 = 0xFFFFFFFF


def f64(x) -> np.ndarray:
    """The values as a float64 array."""
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Stateless kernels


def softmax(x, temperature: float = 1.0) -> np.ndarray:
    """softmax(x / T) along the last axis; a -inf logit has probability exactly 0."""
    z = f64(x) / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(x, temperature: float = 1.0) -> np.ndarray:
    """z - logsumexp(z) with z = x / T along the last axis; -inf stays -inf."""
    z = f64(x) / temperature
    m = z.max(axis=-1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))


def order(x) -> np.ndarray:
    """Token ids sorted by value, largest first; equal values: lower id first."""
    return np.argsort(-f64(x), axis=-1, kind="stable")


def argmax(x):
    """Index of the largest logit along the last axis; ties -> lowest index."""
    return np.argmax(f64(x), axis=-1)


def top_k(x, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, indices) of the k largest logits, largest first, ties -> lower index first."""
    idx = order(x)[..., :k]
    return np.take_along_axis(np.asarray(x, dtype=np.float32), idx, axis=-1), idx


def mask_top_k(x, k: int) -> np.ndarray:
    """The logits with every token outside the top k (ties -> lower index) set to -inf."""
    x32 = np.asarray(x, dtype=np.float32)
    keep = np.zeros(x32.shape, dtype=bool)
    np.put_along_axis(keep, order(x32)[..., :k], True, axis=-1)
    return np.where(keep, x32, np.float32(-np.inf))


def _rows(fn, x, *args):
    """Apply a one-row rule to a (V,) or (B, V) array."""
    x = np.asarray(x)
    if x.ndim == 1:
        return fn(x, *args)
    return np.stack([fn(row, *args) for row in x])


def keep_top_k(z: np.ndarray, k: int) -> np.ndarray:
    """Top-k on one row: keep exactly the k largest (ties -> lower id); k <= 0 or k >= V: all."""
    if k <= 0 or k >= z.shape[-1]:
        return z
    out = np.full_like(z, -np.inf)
    top = order(z)[:k]
    out[top] = z[top]
    return out


# README: a prefix whose mass falls short of top_p by less than 2**-23 (float32's machine
# epsilon) of the total reaches it (equality at float32 precision).
TOP_P_SLACK = 2.0**-23


def keep_top_p(z: np.ndarray, top_p: float) -> np.ndarray:
    """Top-p on one row: on softmax(z), in order (prob desc, ties lower id), keep the shortest
    prefix whose mass is >= top_p, less TOP_P_SLACK (the crossing token is kept, so is the most
    probable token); top_p = 1 disables."""
    if top_p >= 1.0:
        return z
    o = order(z)
    p = softmax(z)[o]
    mass_before = np.concatenate([[0.0], np.cumsum(p)[:-1]])
    keep = mass_before < top_p - TOP_P_SLACK
    keep[0] = True
    out = np.full_like(z, -np.inf)
    out[o[keep]] = z[o[keep]]
    return out


def f32_ulp(x: float) -> float:
    """The spacing of float32 values at the magnitude of x (finite)."""
    a = np.float32(min(abs(x), float(np.nextafter(np.float32(np.inf), np.float32(0)))))
    return float(np.nextafter(a, np.float32(np.inf))) - float(a)


def min_p_log_threshold(zmax: float, min_p: float, temperature: float = 1.0) -> float:
    """ln(min_p), lowered for equality at float32 precision (README): for min_p < 1, a logit x
    less than one float32 ulp (at the larger magnitude of x_max and of the threshold, and at
    most half the way to x_max) below x_max + T ln(min_p) passes. zmax = x_max / T."""
    ln = math.log(min_p)
    if min_p < 1.0:
        xmax = np.float32(zmax * temperature)
        thr = np.float32(max(float(xmax) + temperature * ln, -float(np.finfo(np.float32).max)))
        delta = min(max(f32_ulp(float(xmax)), f32_ulp(float(thr))), -0.5 * temperature * ln)
        ln -= delta / temperature
    return ln


def keep_min_p(z: np.ndarray, min_p: float, temperature: float = 1.0) -> np.ndarray:
    """Min-p on one row of z = x / temperature: keep z >= max(z) + ln(min_p), i.e.
    p >= min_p * p_max (equality kept, at float32 precision: min_p_log_threshold); min_p = 0
    disables."""
    if min_p <= 0.0:
        return z
    ln = min_p_log_threshold(z.max(), min_p, temperature)
    return np.where(z - z.max() >= ln, z, -np.inf)


def with_min_keep(z_kept: np.ndarray, z_before: np.ndarray, min_keep: int) -> np.ndarray:
    """At least min_keep tokens: the min_keep largest tokens of the row before the filter are
    kept too; a token that was already -inf stays -inf."""
    out = z_kept.copy()
    top = order(z_before)[:min_keep]
    out[top] = z_before[top]
    return out


def mask_top_p(x, top_p: float, temperature: float = 1.0, min_keep: int = 1) -> np.ndarray:
    """Top-p (then min_keep) decided on x / T; kept entries keep their untempered value."""

    def row(r):
        z = f64(r) / temperature
        kept = np.isfinite(with_min_keep(keep_top_p(z, top_p), z, min_keep))
        return np.where(kept, np.float32(r), np.float32(-np.inf))

    return _rows(row, np.asarray(x, dtype=np.float32))


def mask_min_p(x, min_p: float, temperature: float = 1.0, min_keep: int = 1) -> np.ndarray:
    """Min-p (then min_keep) decided on x / T; kept entries keep their untempered value."""

    def row(r):
        z = f64(r) / temperature
        kept = np.isfinite(with_min_keep(keep_min_p(z, min_p, temperature), z, min_keep))
        return np.where(kept, np.float32(r), np.float32(-np.inf))

    return _rows(row, np.asarray(x, dtype=np.float32))


def settle(x, z) -> np.ndarray:
    """float32 of the updated logits z of row x: masked tokens of x stay -inf, finite results
    beyond the float32 range saturate to +-float32 max."""
    big = float(np.finfo(np.float32).max)
    with np.errstate(invalid="ignore"):
        out = np.clip(z, -big, big).astype(np.float32)
    out[np.isneginf(f64(x))] = -np.inf
    return out


def apply_logit_bias(x, bias: dict[int, float]) -> np.ndarray:
    """One row: float32(x + bias[t]) for every biased token t (saturated, see settle); a -inf
    bias bans the token."""
    z = f64(x).copy()
    banned = [t for t, b in bias.items() if b == -np.inf]
    for t, b in bias.items():
        z[t] += b
    out = settle(x, z)
    out[banned] = -np.inf
    return out


def apply_penalties(
    x,
    prompt_tokens=(),
    output_tokens=(),
    repetition_penalty: float = 1.0,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
) -> np.ndarray:
    """One row: repetition once per distinct token of prompt ∪ output (z / r if z > 0 else
    z * r), then z -= c[t] * frequency + (c[t] > 0) * presence with counts c from output."""
    z = f64(x).copy()
    seen = sorted(set(int(t) for t in prompt_tokens) | set(int(t) for t in output_tokens))
    for t in seen:
        z[t] = z[t] / repetition_penalty if z[t] > 0 else z[t] * repetition_penalty
    counts = np.bincount(np.asarray(output_tokens, dtype=np.int64), minlength=z.shape[-1])
    with np.errstate(over="ignore", invalid="ignore"):  # huge penalties: settle() saturates
        for t in np.flatnonzero(counts):
            z[t] = z[t] - counts[t] * frequency_penalty - presence_penalty
    return settle(x, z)


def penalty_magnitude(
    x,
    prompt_tokens=(),
    output_tokens=(),
    repetition_penalty=1.0,
    presence_penalty=0.0,
    frequency_penalty=0.0,
) -> np.ndarray:
    """Sum of the absolute values of every term that enters a penalised logit (error scale)."""
    z = np.abs(f64(x)).copy()
    seen = sorted(set(int(t) for t in prompt_tokens) | set(int(t) for t in output_tokens))
    for t in seen:
        z[t] = z[t] * max(repetition_penalty, 1.0 / repetition_penalty)
    counts = np.bincount(np.asarray(output_tokens, dtype=np.int64), minlength=z.shape[-1])
    for t in np.flatnonzero(counts):
        z[t] += counts[t] * abs(frequency_penalty) + abs(presence_penalty)
    return z


# ---------------------------------------------------------------------------------------------
# The sampling pipeline (one row)


def pipeline_kept(
    x, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, min_keep=1, order="default"
) -> np.ndarray:
    """Boolean kept set of one row after SPEC §4 steps 5-8 for an order preset.

    "default": temperature -> top-k -> top-p -> min-p; "vllm": temperature -> min-p -> top-k
    -> top-p; "llama.cpp": top-k -> top-p -> min-p on untempered logits. min_keep applies after
    top-p and after min-p. temperature == 0 (greedy): only the argmax.
    """
    x = f64(x)
    if temperature == 0:
        kept = np.zeros(x.shape, dtype=bool)
        kept[argmax(x)] = True
        return kept
    z = x if order == "llama.cpp" else x / temperature

    def top_p_step(z):
        return with_min_keep(keep_top_p(z, top_p), z, min_keep)

    def min_p_step(z):
        t = 1.0 if order == "llama.cpp" else temperature
        return with_min_keep(keep_min_p(z, min_p, t), z, min_keep)

    if order == "vllm":
        z = top_p_step(keep_top_k(min_p_step(z), top_k))
    else:
        z = min_p_step(top_p_step(keep_top_k(z, top_k)))
    return np.isfinite(z)


def draw(x, kept: np.ndarray, temperature: float, u: float) -> int:
    """The first kept id, in increasing id order, whose cumulative probability (softmax of
    x / T renormalised over the kept set) exceeds u."""
    z = np.where(kept, f64(x) / temperature, -np.inf)
    cum = np.cumsum(softmax(z))
    above = np.flatnonzero(kept & (cum > u))
    return int(above[0]) if above.size else int(np.flatnonzero(kept)[-1])


def sample(
    x, u: float, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, min_keep=1, order="default"
) -> int:
    """One row: argmax when T == 0, else the draw with u from the kept set of the preset."""
    if temperature == 0:
        return int(argmax(x))
    kept = pipeline_kept(x, temperature, top_k, top_p, min_p, min_keep, order)
    return draw(x, kept, temperature, u)


# ---------------------------------------------------------------------------------------------
# Tolerant kept sets: (must, may) boolean arrays


def tolerance(x, temperature: float = 1.0) -> float:
    """Relative tolerance of float32 probabilities and masses computed from this row: a few
    float32 ulps of the largest tempered logit, plus the rounding of a V-term sum."""
    x = f64(x)
    finite = np.abs(x[np.isfinite(x)])
    scale = (finite.max() if finite.size else 0.0) / min(temperature, 1.0) + 1.0
    return 1e-5 + scale * 2.0**-21 + x.shape[-1] * 2.0**-24


def precedence(z: np.ndarray, x: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """(surely, maybe): [j, t] is True when token j comes before token t in the (value desc,
    ties lower id) order surely / possibly, with tempered logits z known to +-tol. Tokens with
    equal logits x are exact ties, ordered by id."""
    ids = np.arange(z.shape[-1])
    tie = x[:, None] == x[None, :]
    lower = ids[:, None] < ids[None, :]
    with np.errstate(invalid="ignore"):
        surely = (z[:, None] > z[None, :] + tol) | (tie & lower)
        maybe = ((z[:, None] >= z[None, :] - tol) & ~tie) | (tie & lower)
    return surely, maybe


def _rank_sets(must, may, k, surely, maybe):
    """Tokens among the k first of the surviving set (top-k, min_keep)."""
    n_maybe_before = (maybe & may[:, None]).sum(axis=0)
    n_surely_before = (surely & must[:, None]).sum(axis=0)
    return must & (n_maybe_before < k), may & (n_surely_before < k)


def _top_p_sets(must, may, z, top_p, tol, surely, maybe):
    """Top-p on the surviving set, bounding each token's renormalised mass before it."""
    if top_p >= 1.0:
        return must, may
    zmax = z[may].max()
    w = np.where(may, np.exp(z - zmax), 0.0)
    eye = np.eye(z.shape[-1], dtype=bool)
    before_hi = ((maybe & may[:, None]) * w[:, None]).sum(axis=0)
    after_lo = ((~maybe & ~eye & must[:, None]) * w[:, None]).sum(axis=0)
    before_lo = ((surely & must[:, None]) * w[:, None]).sum(axis=0)
    after_hi = ((~surely & ~eye & may[:, None]) * w[:, None]).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mass_hi = before_hi / (before_hi + w + after_lo)
        mass_lo = before_lo / (before_lo + w + after_hi)
    surely_first = (maybe & may[:, None]).sum(axis=0) == 0
    maybe_first = (surely & must[:, None]).sum(axis=0) == 0
    reach = top_p - TOP_P_SLACK
    must_out = must & ((mass_hi < reach - tol) | surely_first)
    may_out = may & ((mass_lo < reach + tol) | maybe_first)
    return must_out, may_out


def _min_p_sets(must, may, z, x, min_p, tol, temperature):
    """Min-p on the surviving set: z >= z_max + ln(min_p) (min_p_log_threshold); the maximum
    itself always passes."""
    if min_p <= 0.0:
        return must, may
    zmax_hi = z[may].max()
    zmax_lo = z[must].max() if must.any() else -np.inf
    hi = zmax_hi + min_p_log_threshold(zmax_hi, min_p, temperature)
    lo = zmax_lo + min_p_log_threshold(zmax_lo, min_p, temperature) if must.any() else -np.inf
    is_max = x == x[may].max()
    return must & ((z >= hi + tol) | is_max), may & (z >= lo - tol)


def kept_sets(x, params: dict, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """(must, may) kept sets of one row for the sampling pipeline of ``params`` (keys of
    ``sample``: temperature, top_k, top_p, min_p, min_keep, order): every token in must is kept
    and every kept token is in may, for any computation whose tempered logits are within
    +-tol (log scale) and whose masses are within +-tol of the float64 values."""
    x = f64(x)
    temperature = params.get("temperature", 1.0)
    top_k = params.get("top_k", 0)
    top_p = params.get("top_p", 1.0)
    min_p = params.get("min_p", 0.0)
    min_keep = params.get("min_keep", 1)
    preset = params.get("order", "default")
    alive = np.isfinite(x)
    if temperature == 0:
        kept = np.zeros(x.shape, dtype=bool)
        kept[argmax(x)] = True
        return kept, kept.copy()
    z = x if preset == "llama.cpp" else x / temperature
    surely, maybe = precedence(z, x, tol)
    V = x.shape[-1]

    def top_k_step(s):
        if top_k <= 0 or top_k >= V:
            return s
        return _rank_sets(*s, top_k, surely, maybe)

    def top_p_step(s):
        kept = _top_p_sets(*s, z, top_p, tol, surely, maybe)
        extra = _rank_sets(*s, min_keep, surely, maybe)
        return kept[0] | extra[0], kept[1] | extra[1]

    def min_p_step(s):
        kept = _min_p_sets(*s, z, x, min_p, tol, 1.0 if preset == "llama.cpp" else temperature)
        extra = _rank_sets(*s, min_keep, surely, maybe)
        return kept[0] | extra[0], kept[1] | extra[1]

    s = (alive.copy(), alive.copy())
    if preset == "vllm":
        return top_p_step(top_k_step(min_p_step(s)))
    return min_p_step(top_p_step(top_k_step(s)))


def mask_top_p_sets(x, top_p, temperature=1.0, min_keep=1, tol=0.0):
    """(must, may) kept sets of mask_top_p on one row."""
    return kept_sets(x, dict(temperature=temperature, top_p=top_p, min_keep=min_keep), tol)


def mask_min_p_sets(x, min_p, temperature=1.0, min_keep=1, tol=0.0):
    """(must, may) kept sets of mask_min_p on one row."""
    return kept_sets(x, dict(temperature=temperature, min_p=min_p, min_keep=min_keep), tol)


FLUSHED_MASS = 2.0**-125  # per token: a float32 probability this small may underflow to 0


def acceptable_tokens(x, params: dict, u: float, tol: float) -> set[int]:
    """Tokens that sample(x, **params, uniforms=u) may return for one row: the exact token,
    plus neighbours only where u is within a relative tol of a cumulative boundary (a float32
    partial sum of positive terms is accurate relative to itself, up to probabilities that
    underflow) or the kept set is
    ambiguous (a token of may \\ must)."""
    x = f64(x)
    temperature = params.get("temperature", 1.0)
    if temperature == 0:
        return {int(argmax(x))}
    must, may = kept_sets(x, params, tol)
    z = np.where(may, x / temperature, -np.inf)
    w = np.exp(z - z.max())
    tiny = FLUSHED_MASS * x.shape[-1]
    ok = set()
    for t in np.flatnonzero(may):
        lo_before = w[:t][must[:t]].sum()
        hi_before = w[:t][may[:t]].sum()
        lo_after = w[t + 1 :][must[t + 1 :]].sum()
        hi_after = w[t + 1 :][may[t + 1 :]].sum()
        cum_before_min = lo_before / (lo_before + w[t] + hi_after)
        cum_through_max = (hi_before + w[t]) / (hi_before + w[t] + lo_after)
        if cum_before_min * (1 - tol) - tiny <= u < cum_through_max * (1 + tol) + tiny:
            ok.add(int(t))
    return ok


# ---------------------------------------------------------------------------------------------
# Log-probabilities


def logprobs(x, tokens, top_n: int = 0):
    """(token_logprobs, ranks, top_ids, top_logprobs) of one row under log_softmax(x):
    rank = 1 + number of tokens with a strictly larger log-probability; top_n by value, ties
    -> lower id."""
    lp = log_softmax(x)
    tokens = np.asarray(tokens, dtype=np.int64)
    ranks = 1 + (lp[None, :] > lp[tokens][:, None]).sum(axis=1)
    top = order(x)[:top_n]
    return lp[tokens], ranks, top, lp[top]


def logprob_tolerance(x) -> float:
    """Absolute tolerance of a float32 log-probability of this row."""
    x = f64(x)
    finite = np.abs(x[np.isfinite(x)])
    return 2.0**-20 * (2 * finite.max() + math.log(x.shape[-1]) + 1.0)


def rank_bounds(x, tokens, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) acceptable rank of each token: tokens within tol above it may or may
    not count as strictly larger after float32 rounding."""
    x = f64(x)
    t = x[np.asarray(tokens, dtype=np.int64)]
    with np.errstate(invalid="ignore"):
        lo = 1 + (x[None, :] > t[:, None] + tol).sum(axis=1)
    hi = 1 + (x[None, :] > t[:, None]).sum(axis=1)
    return lo, hi


# ---------------------------------------------------------------------------------------------
# Randomness (SPEC §6)

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def philox4x32_10(counter, key) -> tuple[int, int, int, int]:
    """Philox4x32-10 (Salmon et al. 2011, Random123): 10 rounds of
    (c0, c1, c2, c3) -> (hi(M1*c2) ^ c1 ^ k0, lo(M1*c2), hi(M0*c0) ^ c3 ^ k1, lo(M0*c0)),
    the key bumped by the Weyl constants between rounds."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        p0, p1 = PHILOX_M0 * c0, PHILOX_M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
    return c0, c1, c2, c3


def uniform(seed: int, step: int, draw: int = 0) -> float:
    """Philox4x32-10 with key (seed lo, seed hi) and counter (step lo, step hi, draw, 0);
    u = ((o0 >> 5) * 2**26 + (o1 >> 6)) / 2**53, a double in [0, 1)."""
    o0, o1, _, _ = philox4x32_10((step & MASK32, step >> 32, draw, 0), (seed & MASK32, seed >> 32))
    return ((o0 >> 5) * 2**26 + (o1 >> 6)) / 2**53


# ---------------------------------------------------------------------------------------------
# Statistics


def chi_square_critical(df: int, z: float = 3.719) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile with df degrees of freedom at
    the standard normal quantile z (3.719 is the 1 - 1e-4 quantile)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi_square(observed, expected) -> float:
    """Pearson's statistic sum((o - e)^2 / e)."""
    o, e = f64(observed), f64(expected)
    return float(((o - e) ** 2 / e).sum())
