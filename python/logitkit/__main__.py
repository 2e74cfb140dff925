"""Command line: ``python -m logitkit {bench,info}``.

- ``bench``: time logitkit against NumPy (and PyTorch / llama-cpp-python when installed) on
  seeded synthetic logits, after checking every result; ``python -m logitkit bench --help``.
- ``info``: the version, build profile, SIMD level and thread count of this installation.
"""

from __future__ import annotations

import importlib
import platform
import sys
from collections.abc import Sequence
from typing import Any

USAGE = """usage: python -m logitkit {bench,info} [options]

commands:
  bench   time logitkit against NumPy / PyTorch / llama.cpp after checking every result
          (python -m logitkit bench --help)
  info    print the version, build profile, SIMD level and thread count
"""


def _get(obj: Any, name: str, default: Any = "?") -> Any:
    """``obj.name``, called when it is a function; ``default`` when missing or failing."""
    value = getattr(obj, name, None)
    if value is None:
        return default
    if callable(value):
        try:
            return value()
        except Exception as e:
            return f"? ({type(e).__name__}: {e})"
    return value


def info() -> int:
    """Print what this logitkit installation is."""
    import numpy as np

    import logitkit

    try:
        core: Any = importlib.import_module("logitkit._core")
    except Exception:
        core = None
    from ._bench import cpu_model

    rows = [
        ("logitkit", _get(logitkit, "__version__")),
        ("location", getattr(logitkit, "__file__", "?")),
        ("build profile", _get(core, "build_profile", "release (not reported)")),
        ("SIMD level", _get(logitkit, "simd_level")),
        ("SIMD levels available", _get(core, "available_simd_levels", "?")),
        ("threads", _get(logitkit, "get_num_threads")),
        ("CPU", cpu_model()),
        ("Python", f"{platform.python_version()} ({platform.system()} {platform.machine()})"),
        ("NumPy", np.__version__),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        if isinstance(v, (list, tuple)):
            v = ", ".join(map(str, v))
        print(f"{k:<{width}}  {v}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch a subcommand; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd == "bench":
        from ._bench import main as bench_main

        return bench_main(rest)
    if cmd == "info":
        if rest:
            print(f"logitkit info: takes no options, got {' '.join(rest)}", file=sys.stderr)
            return 2
        return info()
    print(f"logitkit: unknown command {cmd!r}\n\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
