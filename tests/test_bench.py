"""``python -m logitkit bench`` on tiny workloads: it checks every result, then times it."""

from __future__ import annotations

import json

import numpy as np
import pytest

import logitkit as lk
from logitkit import _bench


def test_bench_runs_checks_and_reports(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    ops = "greedy,softmax,temp_sample,llama_chain,penalties"
    args = "--vocabs 1000 --batches 1,3 --peers numpy --min-reps 3 --min-time 0.001"
    status = _bench.main([*args.split(), "--max-time", "0.02", "--ops", ops, "--json", str(out)])
    assert status == 0
    table = capsys.readouterr().out
    for op in ops.split(","):
        assert f"| {op} | 1000 | 3 |" in table
    report = json.loads(out.read_text())
    mine = [r for r in report["records"] if r["peer"] == "logitkit"]
    assert len(mine) == 10 and all(r["check"]["ok"] for r in mine)
    floors = {r["op"] for r in report["records"] if r["peer"] == "floor"}
    assert floors == {"read_f32", "expsum_f32"}
    assert _bench.floor_kind("softmax") == "expsum_f32"
    assert _bench.floor_kind("greedy") == "read_f32"


def test_exp_sum_floor_is_the_exp_sum() -> None:
    x = np.random.default_rng(3).normal(0.0, 3.0, (4, 5000)).astype(np.float32)
    x[1, ::7] = -np.inf
    m = x.max(axis=-1)
    want = np.exp(x.astype(np.float64) - m[:, None]).sum(axis=-1)
    np.testing.assert_allclose(lk._core.exp_sum_floor(x, m), want, rtol=1e-5)


def test_bench_refuses_bad_options_before_running(tmp_path, capsys) -> None:
    cases = {
        "--vocabs 1": "--vocabs: at least 128",
        "--threads 5000": "--threads: 0 to 1024",
        "--threads -1": "--threads: 0 to 1024",
        f"--json {tmp_path / 'missing' / 'x.json'}": "--json: cannot write",
        f"--plot {tmp_path}": "--plot: cannot write",
        f"--json {tmp_path / 'a_file' / 'x.json'}": "--json: cannot write",
    }
    (tmp_path / "a_file").write_text("")
    for args, message in cases.items():
        with pytest.raises(SystemExit) as e:
            _bench.main([*args.split(), "--ops", "greedy", "--peers", "numpy"])
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_bench_output_paths_that_can_be_written_are_accepted(tmp_path) -> None:
    existing = tmp_path / "old.json"
    existing.write_text("old")
    for path in (existing, tmp_path / "new.json", "/dev/null"):
        assert _bench._writable(str(path))
    assert not _bench._writable(str(tmp_path))
    assert not _bench._writable(str(tmp_path / "missing" / "x.json"))
