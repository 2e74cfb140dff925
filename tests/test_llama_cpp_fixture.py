"""``order="llama.cpp"`` keeps the same tokens as llama.cpp's own sampler chain.

``fixtures/llama_cpp_kept.json`` holds, for 864 cases (288 regenerable float32 rows of 64, 1000
or 5000 tokens; normal, wide, flat, spiky, heavy-tailed and tied logits with 0-95 % ``-inf``;
every combination of top_k in {0, 1, 5, 40, V}, top_p in {1, 0.95, 0.9, 0.5, 0}, min_p in {0,
0.05, 0.1, 0.5}, temperatures 0.5-1.5), the tokens that llama.cpp's chain
``top_k -> top_p -> min_p -> temp`` keeps; ``fixtures/record_llama_cpp.py`` recorded it. These
tests need neither llama.cpp nor llama-cpp-python.

Two kinds of difference are allowed, each detected from the row itself, never assumed:

- **top-p boundary**: llama.cpp adds probabilities in float32, so a case in which some prefix of
  the sorted distribution has a float64 mass within ``TOP_P_TOL`` of ``top_p`` may stop one token
  earlier or later;
- **tie order**: llama.cpp sorts with ``std::partial_sort``, which leaves equal logits in no
  particular order, so where equal logits straddle a cut it may keep another token of the same
  logit. logitkit breaks ties towards the lower id; the kept logits, as a multiset, must match.

Every other case must keep exactly the same ids.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import logitkit as lk

FIXTURES = Path(__file__).parent / "fixtures"

TOP_P_TOL = 1e-5
"""A top-p case is a boundary case when a prefix mass is this close to ``top_p`` (float64)."""

MIN_P_REL_TOL = 1e-6
"""A min-p case is a boundary case when a logit is this close (relative to ``1 + |z_max|``) to
``z_max + ln(min_p)``: llama.cpp rounds the threshold to float32, logitkit does not."""

MIDPOINT_MIN_MASS = 1e-4
"""Tokens with at least this probability in the draw are aimed at by a ``u`` at their middle."""

U_TOL = 1e-5
"""A ``u`` this close to a cumulative boundary (float64) may fall on either side in float32."""


def _recorder() -> ModuleType:
    """``fixtures/record_llama_cpp.py`` as a module (for ``make_row``; llama.cpp not needed)."""
    spec = importlib.util.spec_from_file_location(
        "record_llama_cpp", FIXTURES / "record_llama_cpp.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Case:
    """One recorded case: the row, logitkit's parameters and llama.cpp's kept ids."""

    index: int
    spec: dict[str, Any]
    row: npt.NDArray[np.float32]
    top_k: int
    top_p: float
    min_p: float
    temperature: float
    min_keep: int
    llama_kept: npt.NDArray[np.int64]

    @property
    def name(self) -> str:
        s = self.spec
        return (
            f"{self.index}-V{s['V']}-{s['dist']}-m{s['mask']}-k{self.top_k}-p{self.top_p}"
            f"-mp{self.min_p}-t{self.temperature}"
        )

    @property
    def sample_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`logitkit.sample` for this case."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "min_keep": self.min_keep,
            "order": "llama.cpp",
        }


@functools.cache
def _cases() -> tuple[Case, ...]:
    """Every case of the fixture, rows regenerated and checked against their digests."""
    rec = _recorder()
    data = json.loads((FIXTURES / "llama_cpp_kept.json").read_text(encoding="utf-8"))
    rows = []
    for spec in data["rows"]:
        row = rec.make_row(spec["seed"], spec["V"], spec["dist"], spec["mask"])
        rows.append(row)
    cases = []
    for i, c in enumerate(data["cases"]):
        row = rows[c["row"]]
        finite = np.flatnonzero(np.isfinite(row))
        if "kept" in c:
            kept = np.asarray(c["kept"], dtype=np.int64)
        else:
            kept = np.setdiff1d(finite, np.asarray(c["dropped"], dtype=np.int64))
        cases.append(
            Case(
                index=i,
                spec=data["rows"][c["row"]],
                row=row,
                top_k=int(c["top_k"]),
                top_p=float(c["top_p"]),
                min_p=float(c["min_p"]),
                temperature=float(c["temperature"]),
                min_keep=int(c["min_keep"]),
                llama_kept=kept.astype(np.int64),
            )
        )
    return tuple(cases)


def _case_ids() -> list[str]:
    return [c.name for c in _cases()]


CASE_NUMBERS = list(range(len(_cases())))


# ---------------------------------------------------------------------------------------------
# logitkit's kept set and the float64 boundary detectors


def logitkit_kept(case: Case) -> npt.NDArray[np.int64]:
    """The ids logitkit keeps in llama.cpp order: the masks composed on untempered logits.

    top-k (``k <= 0`` or ``k >= V`` off), then top-p on the softmax of what is left, then min-p
    relative to the best remaining token, all at temperature 1, each with ``min_keep``.
    """
    z = case.row
    if 0 < case.top_k < z.shape[0]:
        z = lk.mask_top_k(z, case.top_k)
    if case.top_p < 1.0:
        z = lk.mask_top_p(z, case.top_p, min_keep=case.min_keep)
    if case.min_p > 0.0:
        z = lk.mask_min_p(z, case.min_p, min_keep=case.min_keep)
    return np.flatnonzero(np.isfinite(z)).astype(np.int64)


def _sorted_after_top_k(case: Case) -> npt.NDArray[np.int64]:
    """The finite ids in decreasing logit order (ties: lower id first), cut to top-k."""
    finite = np.flatnonzero(np.isfinite(case.row))
    order = finite[np.lexsort((finite, -case.row[finite].astype(np.float64)))]
    if 0 < case.top_k < case.row.shape[0]:
        order = order[: case.top_k]
    return order


def top_p_boundary(case: Case) -> bool:
    """Whether a prefix of the top-k survivors, sorted by probability, has a float64 mass
    within ``TOP_P_TOL`` of ``top_p`` (where float32 sums may cut one token off or on)."""
    if not 0.0 < case.top_p < 1.0:
        return False
    z = case.row[_sorted_after_top_k(case)].astype(np.float64)
    p = np.exp(z - z[0])
    c = np.cumsum(p / p.sum())
    return bool(np.any(np.abs(c - case.top_p) <= TOP_P_TOL))


def min_p_boundary(case: Case, survivors: npt.NDArray[np.int64]) -> bool:
    """Whether a logit among ``survivors`` (what reaches min-p) lies within float32 rounding
    of llama.cpp's threshold ``z_max + logf(min_p)``."""
    if case.min_p <= 0.0 or survivors.size == 0:
        return False
    z = case.row[survivors].astype(np.float64)
    zmax = z.max()
    gap = np.abs(z - (zmax + math.log(case.min_p)))
    return bool(np.any(gap <= MIN_P_REL_TOL * (1.0 + abs(zmax))))


def _top_p_survivors(case: Case) -> npt.NDArray[np.int64]:
    """What reaches min-p in logitkit (top-k then top-p), for :func:`min_p_boundary`."""
    z = case.row
    if 0 < case.top_k < z.shape[0]:
        z = lk.mask_top_k(z, case.top_k)
    if case.top_p < 1.0:
        z = lk.mask_top_p(z, case.top_p, min_keep=case.min_keep)
    return np.flatnonzero(np.isfinite(z)).astype(np.int64)


def classify(case: Case) -> str:
    """``"exact"``, ``"tie order"``, ``"top-p boundary"``, ``"min-p boundary"`` or
    ``"MISMATCH"`` (a difference that none of the allowed reasons explains)."""
    got = logitkit_kept(case)
    want = case.llama_kept
    if np.array_equal(got, want):
        return "exact"
    if got.size == want.size and np.array_equal(np.sort(case.row[got]), np.sort(case.row[want])):
        return "tie order"
    if top_p_boundary(case):
        return "top-p boundary"
    if min_p_boundary(case, _top_p_survivors(case)):
        return "min-p boundary"
    return "MISMATCH"


# ---------------------------------------------------------------------------------------------
# The tests


def test_rows_regenerate_bit_for_bit() -> None:
    rec = _recorder()
    data = json.loads((FIXTURES / "llama_cpp_kept.json").read_text(encoding="utf-8"))
    for spec in data["rows"]:
        row = rec.make_row(spec["seed"], spec["V"], spec["dist"], spec["mask"])
        assert rec.row_digest(row) == spec["sha256"], spec


@pytest.mark.parametrize("n", CASE_NUMBERS, ids=_case_ids())
def test_kept_set_matches_llama_cpp(n: int) -> None:
    case = _cases()[n]
    verdict = classify(case)
    assert verdict != "MISMATCH", (
        f"logitkit keeps {logitkit_kept(case).tolist()[:50]}, "
        f"llama.cpp keeps {case.llama_kept.tolist()[:50]}"
    )


def _has_equal_logits(row: npt.NDArray[np.float32]) -> bool:
    finite = row[np.isfinite(row)]
    return bool(np.unique(finite).size < finite.size)


def test_allowed_differences_are_rare() -> None:
    """The allowed differences stay the exception: the comparison is exact almost everywhere,
    tie-order differences occur only in rows with equal logits, and the boundary detector
    fires rarely (a detector that fired everywhere would make the comparison vacuous)."""
    verdicts = [(c, classify(c)) for c in _cases()]
    assert [c.name for c, v in verdicts if v == "MISMATCH"] == []
    assert all(_has_equal_logits(c.row) for c, v in verdicts if v == "tie order")
    distinct = [v for c, v in verdicts if not _has_equal_logits(c.row)]
    assert len(distinct) >= len(verdicts) // 2
    assert distinct.count("exact") >= 0.98 * len(distinct)
    assert sum(top_p_boundary(c) for c, _ in verdicts) <= 0.02 * len(verdicts)


def test_fixture_covers_the_grid() -> None:
    cases = _cases()
    assert len(cases) >= 500
    assert {c.top_k for c in cases} >= {0, 1, 5, 40, 64, 1000, 5000}
    assert {c.top_p for c in cases} == {1.0, 0.95, 0.9, 0.5, 0.0}
    assert {c.min_p for c in cases} == {0.0, 0.05, 0.1, 0.5}
    assert {c.spec["dist"] for c in cases} == {"normal", "wide", "flat", "spiky", "heavy", "ties"}
    sizes = np.array([c.llama_kept.size for c in cases])
    assert (sizes > 1).sum() >= len(cases) // 3  # not only greedy-like cases
    assert (sizes >= 100).sum() >= 20


def _draw_table(
    case: Case, kept: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(probabilities, cumulative)`` of the draw over ``kept`` in increasing id order, in
    float64: softmax of the kept logits divided by the temperature."""
    z = case.row[kept].astype(np.float64) / case.temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    return p, np.cumsum(p)


def _expected(cum: npt.NDArray[np.float64], kept: npt.NDArray[np.int64], u: float) -> int:
    """The first kept id whose cumulative probability exceeds ``u``."""
    return int(kept[min(int(np.searchsorted(cum, u, side="right")), kept.size - 1)])


def _near_edge(cum: npt.NDArray[np.float64], u: float) -> bool:
    return bool(np.min(np.abs(cum - u)) <= U_TOL)


@pytest.mark.parametrize("n", CASE_NUMBERS, ids=_case_ids())
def test_sample_draws_exactly_the_kept_set(n: int) -> None:
    """``sample(order="llama.cpp")`` draws only llama.cpp-kept tokens, each where expected.

    ``u`` at the middle of the cumulative interval of every kept token with enough mass (at
    most 48 of them) must draw that very token; a grid of 32 more ``u`` must draw the token
    the float64 cumulative distribution names (or, within ``U_TOL`` of an edge, a kept one).
    Where the kept sets legitimately differ (boundary cases), logitkit's own set is the target.
    """
    case = _cases()[n]
    kept = case.llama_kept if classify(case) == "exact" else logitkit_kept(case)
    p, cum = _draw_table(case, kept)
    heavy = np.flatnonzero(p >= MIDPOINT_MIN_MASS)
    if heavy.size > 48:
        by_mass = heavy[np.argsort(-p[heavy], kind="stable")[:24]]
        spread = heavy[np.linspace(0, heavy.size - 1, 24).astype(np.int64)]
        heavy = np.union1d(by_mass, spread)
    mids = [float(cum[i] - p[i] / 2) for i in heavy]
    grid = [(j + 0.5) / 32 for j in range(32)]
    us = np.array(mids + grid, dtype=np.float64)
    got = lk.sample(np.tile(case.row, (us.size, 1)), uniforms=us, **case.sample_kwargs)
    kept_set = set(kept.tolist())
    assert set(got.tolist()) <= kept_set
    for i, tok in zip(heavy, got[: len(mids)], strict=True):
        assert tok == kept[i], (int(tok), int(kept[i]))
    for u, tok in zip(grid, got[len(mids) :], strict=True):
        if not _near_edge(cum, u):
            assert tok == _expected(cum, kept, u), u


@pytest.mark.parametrize("n", CASE_NUMBERS[::7], ids=_case_ids()[::7])
def test_seeded_sample_and_sample_batch_agree_with_uniform(n: int) -> None:
    """The seeded fast path and ``sample_batch`` draw ``uniform(seed, step)`` the same way."""
    case = _cases()[n]
    kept = case.llama_kept if classify(case) == "exact" else logitkit_kept(case)
    _, cum = _draw_table(case, kept)
    seed, steps = 1_000 + n, np.arange(8, dtype=np.uint64)
    single = [int(lk.sample(case.row, seed=seed, step=int(s), **case.sample_kwargs)) for s in steps]
    params = lk.SamplingParams(
        temperature=case.temperature,
        top_k=case.top_k,
        top_p=case.top_p,
        min_p=case.min_p,
        min_keep=case.min_keep,
        seed=seed,
        order="llama.cpp",
    )
    batch = lk.sample_batch(np.tile(case.row, (steps.size, 1)), params, steps=steps).tokens
    assert batch.tolist() == single
    for s, tok in zip(steps, single, strict=True):
        assert tok in set(kept.tolist())
        u = lk.uniform(seed, int(s))
        if not _near_edge(cum, u):
            assert tok == _expected(cum, kept, u), u
