"""Times the functions that return a new (B, V) float32 array, one thread, µs per row.

Run it twice, once with ``LOGITKIT_REUSE_OUTPUTS=0``, to see what reusing the memory of freed
large outputs saves (README, "Large outputs")::

    python benches/outputs.py
    LOGITKIT_REUSE_OUTPUTS=0 python benches/outputs.py
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

import logitkit as lk

SHAPES = [(64, 262144), (64, 131072), (64, 128256), (16, 262144)]
CALLS = {
    "softmax": lambda x: lk.softmax(x),
    "log_softmax": lambda x: lk.log_softmax(x),
    "mask_top_k 40": lambda x: lk.mask_top_k(x, 40),
}


def main() -> None:
    lk.set_num_threads(1)
    reuse = os.environ.get("LOGITKIT_REUSE_OUTPUTS", "1").strip() != "0"
    print(f"reuse {'on' if reuse else 'off'}; median of 12 calls after 2, µs per row")
    for b, v in SHAPES:
        x = np.random.default_rng(0).standard_normal((b, v), dtype=np.float32)
        for name, f in CALLS.items():
            f(x)
            f(x)
            times = []
            for _ in range(12):
                t0 = time.perf_counter()
                f(x)
                times.append((time.perf_counter() - t0) / b * 1e6)
            print(f"{name:14s} V={v} B={b}: {statistics.median(times):7.1f}")


if __name__ == "__main__":
    main()
