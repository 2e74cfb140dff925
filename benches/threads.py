"""Two threads against one on the main benchmark's B=64 workloads, timed in turn in one process.

The guest machines we measure on change speed by up to 1.5x from one minute to the next, so
the ratio of two separate ``python -m logitkit bench --threads N`` runs mixes the thread
count with that drift. Here each cell is timed with 1 and 2 threads alternately, three rounds,
with the benchmark's own timing (median call after warm-up) and workloads; the table gives the
best median of each, in µs per row, and their ratio::

    python benches/threads.py [--vocabs 32000,128256,262144] [--ops greedy,llama_chain]
"""

from __future__ import annotations

import argparse

import logitkit as lk
from logitkit import _bench as b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocabs", default="32000,128256,262144")
    ap.add_argument("--ops", default=",".join(b.make_ops(b.Params())))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    p = b.Params()
    ops = b.make_ops(p)
    peer = b.LogitkitPeer()
    lim = b.Limits()
    print(f"logitkit {lk.__version__}, SIMD {lk.simd_level()}, B=64")
    print("| op | V | 1 thread µs/row | 2 threads µs/row | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for vocab in (int(v) for v in args.vocabs.split(",")):
        w = b.make_workload(64, vocab, p)
        for name in args.ops.split(","):
            if ops[name].bf16 and w.bf16 is None:
                b.add_bf16(w)
            st = peer.prepare(w, p)
            fn = getattr(peer, "op_" + name)
            setup = (lambda st=st: peer.setup_penalties(st)) if name == "penalties" else None
            best = {1: float("inf"), 2: float("inf")}
            for _ in range(args.rounds):
                for threads in (1, 2):
                    lk.set_num_threads(threads)
                    m = b.measure(lambda fn=fn, st=st: fn(st), setup, lim)
                    best[threads] = min(best[threads], m["median_us"] / 64)
            one, two = best[1], best[2]
            print(f"| {name} | {vocab} | {one:.3g} | {two:.3g} | {one / two:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
