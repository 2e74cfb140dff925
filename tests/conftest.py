"""Hypothesis profiles: "dev" (default) and "ci", chosen by the HYPOTHESIS_PROFILE variable."""

import os
import sys

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])

settings.register_profile("dev", max_examples=60, **_COMMON)
settings.register_profile("ci", max_examples=200, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Report the size of the table of bad inputs (tests/test_errors.py), when it ran."""
    mod = sys.modules.get("test_errors")
    if mod is not None:
        terminalreporter.write_line(f"bad-input table: {len(mod.TABLE)} cases (test_errors.py)")
