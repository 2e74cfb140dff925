"""Merges the JSON reports of several runs of ``python -m logitkit bench`` into one table.

Each cell (op, V, B, peer or floor) takes the median of its per-row times over the runs, for
logitkit, every peer and the floor alike, so that a moment in which a shared machine slows down
moves no cell far. Every run checks its cells against the reference before timing them; a
merged cell shows the first failed check of any run, if there is one.

    python benches/merge_runs.py run1.json run2.json run3.json [--plot FILE] > results.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from logitkit import _bench


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["peer"], r["op"], r["V"], r["B"])

    runs = [{key(r): r for r in rep["records"]} for rep in reports]
    merged = []
    for k, first in runs[0].items():
        rows = [run[k] for run in runs if k in run]
        rec = dict(first)
        failed = [r for r in rows if isinstance(r.get("check"), dict) and not r["check"]["ok"]]
        if failed:
            rec["check"] = failed[0]["check"]
        for field in ("median_us", "per_row_us", "p10_us", "p90_us"):
            values = [r[field] for r in rows if isinstance(r.get(field), (int, float))]
            if values:
                rec[field] = statistics.median(values)
        merged.append(rec)
    return {"meta": reports[0]["meta"], "records": merged}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", help="JSON files written by bench --json")
    ap.add_argument("--plot", help="write the chart of the merged table to this PNG")
    args = ap.parse_args()
    reports = []
    for path in args.reports:
        with open(path) as f:
            reports.append(json.load(f))
    report = merge(reports)
    print(_bench.markdown(report))
    print(f"\nEach cell: the median over {len(reports)} runs.")
    if args.plot:
        why = _bench.write_plot(report, args.plot)
        if why:
            print(f"no plot: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
