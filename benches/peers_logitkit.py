"""logitkit as a peer of the shared peers harness (``shared/peers/peers.py``).

Run from the harness's directory::

    python peers.py --extra-peers /path/to/logitkit/benches/peers_logitkit.py \\
        --peers logitkit,numpy,llama-cpp --out logitkit.json

The harness checks every op against its float64 oracle before timing it (kept sets through
the ``kept_<op>`` methods below, which use logitkit's ``mask_*`` functions), then times it on
the same seeded workloads as NumPy, PyTorch and llama.cpp.

By default the peer runs single-threaded, like the harness's other ``/t1`` peers. Set
``LOGITKIT_PEER_THREADS=1,2`` to add a ``logitkit/t2`` peer (and so on for other counts).
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import numpy as np

try:  # the harness's base class (peers.py's directory is on sys.path when it runs)
    from peers import Peer
except ImportError:  # a stand-in with the same contract, so that this file imports anywhere

    class Peer:  # type: ignore[no-redef]
        """Minimal stand-in for ``peers.Peer``."""

        name = "peer"
        note = ""

        def available(self) -> str | None:
            return None

        def versions(self) -> dict[str, str]:
            return {}

        def enter(self) -> None:
            pass

        def prepare(self, w: Any, P: Any) -> Any:
            return SimpleNamespace(w=w, x=w.logits)

        def teardown(self, st: Any) -> None:
            pass


class LogitkitPeer(Peer):
    """logitkit's public API on the harness's workloads.

    Sampling ops draw with one seed per row (each row a separate request, as in a serving
    batch) and a step that advances on every call, so repeated calls draw fresh tokens (the
    harness's binomial test needs that). ``penalties`` works in place on a fresh copy of the
    logits that ``setup_penalties`` makes untimed, as the harness's other peers do.
    """

    note = (
        "logitkit public API: argmax, softmax, log_softmax, sample(seed=per-row seeds, "
        "step=call counter; order='llama.cpp' for llama_chain), apply_logit_bias + "
        "apply_penalties in place; kept sets from mask_top_k / mask_top_p / mask_min_p"
    )

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self.name = "logitkit" if threads == 1 else f"logitkit/t{threads}"

    def available(self) -> str | None:
        try:
            import logitkit  # noqa: F401
            from logitkit import _core
        except Exception as e:
            return f"logitkit not importable: {type(e).__name__}: {e}"
        if getattr(_core, "build_profile", "release") == "debug":
            return "logitkit is a debug build (rebuild with --release)"
        return None

    def versions(self) -> dict[str, str]:
        import logitkit as lk

        return {"logitkit": f"{lk.__version__} (SIMD {lk.simd_level()})"}

    def enter(self) -> None:
        import logitkit as lk

        lk.set_num_threads(self.threads)

    def prepare(self, w: Any, P: Any) -> Any:
        return SimpleNamespace(
            w=w,
            x=w.logits,
            work=np.empty_like(w.logits),
            seeds=np.arange(w.B, dtype=np.uint64) + np.uint64(w.seed),
            step=0,
            bias={int(t): float(v) for t, v in zip(w.bias_ids, w.bias_vals, strict=True)},
            history=[w.history[b] for b in range(w.B)],
        )

    # -- ops

    def _sample(self, st: Any, **kw: Any) -> Any:
        import logitkit as lk

        st.step += 1
        return lk.sample(st.x, seed=st.seeds, step=st.step, **kw)

    def op_softmax(self, st: Any, P: Any) -> Any:
        import logitkit as lk

        return lk.softmax(st.x)

    def op_log_softmax(self, st: Any, P: Any) -> Any:
        import logitkit as lk

        return lk.log_softmax(st.x)

    def op_greedy(self, st: Any, P: Any) -> Any:
        import logitkit as lk

        return lk.argmax(st.x)

    def op_temp_sample(self, st: Any, P: Any) -> Any:
        return self._sample(st, temperature=P.temperature)

    def op_topk_sample(self, st: Any, P: Any) -> Any:
        return self._sample(st, temperature=P.temperature, top_k=P.top_k)

    def op_topk_topp_sample(self, st: Any, P: Any) -> Any:
        return self._sample(st, temperature=P.temperature, top_k=P.top_k, top_p=P.top_p)

    def op_topp_sample(self, st: Any, P: Any) -> Any:
        return self._sample(st, top_p=P.top_p_only)

    def op_minp_sample(self, st: Any, P: Any) -> Any:
        return self._sample(st, min_p=P.min_p)

    def op_llama_chain(self, st: Any, P: Any) -> Any:
        return self._sample(
            st,
            temperature=P.temperature,
            top_k=P.top_k,
            top_p=P.top_p,
            min_p=P.min_p,
            order="llama.cpp",
        )

    def setup_penalties(self, st: Any, P: Any) -> None:
        np.copyto(st.work, st.x)

    def op_penalties(self, st: Any, P: Any) -> Any:
        import logitkit as lk

        lk.apply_logit_bias(st.work, st.bias, out=st.work)
        return lk.apply_penalties(
            st.work,
            output_tokens=st.history,
            repetition_penalty=P.repetition_penalty,
            presence_penalty=P.presence_penalty,
            frequency_penalty=P.frequency_penalty,
            out=st.work,
        )

    # -- kept sets for the checks: (B, V) bool masks from logitkit's mask functions

    def kept_topk_sample(self, st: Any, P: Any) -> Any:
        import logitkit as lk

        return np.isfinite(lk.mask_top_k(st.x, P.top_k))  # top-k ignores the temperature

    def kept_topk_topp_sample(self, st: Any, P: Any) -> Any:
        import logitkit as lk

        m = lk.mask_top_k(st.x, P.top_k)
        return np.isfinite(lk.mask_top_p(m, P.top_p, temperature=P.temperature))

    def kept_topp_sample(self, st: Any, P: Any) -> Any:
        import logitkit as lk

        return np.isfinite(lk.mask_top_p(st.x, P.top_p_only))

    def kept_minp_sample(self, st: Any, P: Any) -> Any:
        import logitkit as lk

        return np.isfinite(lk.mask_min_p(st.x, P.min_p))

    def kept_llama_chain(self, st: Any, P: Any) -> Any:
        import logitkit as lk

        # llama.cpp order: top-k, top-p and min-p on untempered logits; T only for the draw
        m = lk.mask_top_k(st.x, P.top_k)
        m = lk.mask_top_p(m, P.top_p, out=m)
        return np.isfinite(lk.mask_min_p(m, P.min_p, out=m))


def get_peers() -> list[Any]:
    """One peer per thread count in ``LOGITKIT_PEER_THREADS`` (default ``1``)."""
    spec = os.environ.get("LOGITKIT_PEER_THREADS", "1")
    counts = [int(s) for s in spec.split(",") if s.strip()]
    return [LogitkitPeer(n) for n in counts or [1]]


PEERS = get_peers()
