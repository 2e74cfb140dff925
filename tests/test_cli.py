"""``python -m logitkit info``: what this installation is."""

from __future__ import annotations

import os
import subprocess
import sys

import logitkit as lk
from logitkit import _core


def _info(**env: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "logitkit", "info"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    ).stdout
    rows = [line.split("  ", 1) for line in out.splitlines()]
    return {k.strip(): v.strip() for k, v in rows}


def test_info_reports_version_simd_threads_and_profile() -> None:
    info = _info(LOGITKIT_NUM_THREADS="3", LOGITKIT_SIMD="scalar")
    assert info["logitkit"] == lk.__version__
    assert info["build profile"] == _core.build_profile
    assert info["SIMD level"] == "scalar"
    assert info["SIMD levels available"].split(", ") == _core.available_simd_levels()
    assert info["threads"] == "3"


def test_thread_counts_from_the_environment_are_lowered_to_1024() -> None:
    for value in ("5000", "99999999999999999999"):
        assert _info(LOGITKIT_NUM_THREADS=value)["threads"] == "1024"
    default = _info(LOGITKIT_NUM_THREADS="")["threads"]
    assert _info(LOGITKIT_NUM_THREADS="many")["threads"] == default


def test_info_takes_no_options() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "logitkit", "info", "--verbose"], capture_output=True, text=True
    )
    assert run.returncode == 2 and "takes no options" in run.stderr


def _import_warnings(**env: str) -> str:
    run = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import logitkit"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "LOGITKIT_SIMD": "", "LOGITKIT_NUM_THREADS": "", **env},
    )
    return run.stderr


def test_an_unreadable_environment_variable_is_ignored_with_a_warning() -> None:
    for name, value in [
        ("LOGITKIT_SIMD", "sse9"),
        ("LOGITKIT_SIMD", "fast"),
        ("LOGITKIT_NUM_THREADS", "many"),
        ("LOGITKIT_NUM_THREADS", "0"),
        ("LOGITKIT_NUM_THREADS", "-3"),
        ("LOGITKIT_NUM_THREADS", "1.5"),
        ("LOGITKIT_SIMD", "\x1cavx2"),  # not white space to Rust's str::trim
        ("LOGITKIT_NUM_THREADS", "\x1f3"),
    ]:
        err = _import_warnings(**{name: value})
        assert "RuntimeWarning" in err and f"{name}={value!r}" in err, (name, value, err)
    for name, value in [
        ("LOGITKIT_SIMD", ""),
        ("LOGITKIT_SIMD", " AVX2 "),
        ("LOGITKIT_SIMD", "neon"),  # a level this CPU may lack falls back, as documented
        ("LOGITKIT_NUM_THREADS", ""),
        ("LOGITKIT_NUM_THREADS", " 3 "),
        ("LOGITKIT_NUM_THREADS", "\u30003\t"),
        ("LOGITKIT_NUM_THREADS", "+2"),
        ("LOGITKIT_NUM_THREADS", "99999999999999999999"),
    ]:
        assert _import_warnings(**{name: value}) == "", (name, value)
    # The ignored value leaves the default, as an empty one does.
    default = _info(LOGITKIT_NUM_THREADS="")["threads"]
    assert _info(LOGITKIT_NUM_THREADS="0")["threads"] == default
    assert _info(LOGITKIT_NUM_THREADS="+2")["threads"] == "2"
    assert _info(LOGITKIT_NUM_THREADS="\u30003\t")["threads"] == "3"
    assert _info(LOGITKIT_NUM_THREADS="\x1f3")["threads"] == default
