"""Times the in-place form (``out=logits``) of softmax, log_softmax and the masks, µs per row.

Each timed call first restores the logits from a copy; the time of that restore alone is
measured the same way and subtracted. Every cell is the best of several rounds (the default
thread count; see README, "Changelog")::

    python benches/inplace.py
"""

from __future__ import annotations

import timeit

import numpy as np

import logitkit as lk

SHAPES = [(1, 32000), (1, 128256), (64, 32000), (16, 128256)]
CALLS = {
    "log_softmax": lambda y: lk.log_softmax(y, out=y),
    "softmax": lambda y: lk.softmax(y, out=y),
    "mask_top_k 40": lambda y: lk.mask_top_k(y, 40, out=y),
    "mask_top_p 0.9": lambda y: lk.mask_top_p(y, 0.9, out=y),
}
ROUNDS = 5


def main() -> None:
    rng = np.random.default_rng(0)
    best: dict[tuple[str, int, int], float] = {}
    for _ in range(ROUNDS):
        for b, v in SHAPES:
            x = rng.normal(0.0, 2.0, (b, v)).astype(np.float32)
            if b == 1:
                x = x[0]
            y = x.copy()
            n = max(1, 800 // b)

            def restore(x: np.ndarray = x, y: np.ndarray = y) -> None:
                y[...] = x

            base = min(timeit.repeat(restore, number=n, repeat=3)) / n
            for name, call in CALLS.items():

                def timed(call=call, y: np.ndarray = y, restore=restore) -> None:
                    restore()
                    call(y)

                t = min(timeit.repeat(timed, number=n, repeat=3)) / n
                key = (name, b, v)
                best[key] = min(best.get(key, float("inf")), (t - base) / b * 1e6)
    print(f"logitkit {lk.__version__}, SIMD {lk.simd_level()}, {lk.get_num_threads()} thread(s)")
    print("| op | B | V | µs/row |\n|---|---:|---:|---:|")
    for (name, b, v), us in best.items():
        print(f"| {name} | {b} | {v} | {us:.2f} |")


if __name__ == "__main__":
    main()
