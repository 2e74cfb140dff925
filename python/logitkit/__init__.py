"""logitkit: LLM logits to tokens on the CPU, fast and exactly specified."""

import os as _os

from . import _core
from ._api import LogProbs as LogProbs
from ._api import TopK as TopK
from ._api import apply_logit_bias as apply_logit_bias
from ._api import apply_penalties as apply_penalties
from ._api import argmax as argmax
from ._api import get_num_threads as get_num_threads
from ._api import log_softmax as log_softmax
from ._api import logprobs as logprobs
from ._api import mask_min_p as mask_min_p
from ._api import mask_top_k as mask_top_k
from ._api import mask_top_p as mask_top_p
from ._api import sample as sample
from ._api import set_num_threads as set_num_threads
from ._api import simd_level as simd_level
from ._api import softmax as softmax
from ._api import top_k as top_k
from ._api import uniform as uniform
from ._errors import ParameterTypeError as ParameterTypeError
from ._serving import BatchResult as BatchResult
from ._serving import SamplingParams as SamplingParams
from ._serving import sample_batch as sample_batch

__version__: str = _core.__version__

__all__ = [
    "BatchResult",
    "LogProbs",
    "ParameterTypeError",
    "SamplingParams",
    "TopK",
    "__version__",
    "apply_logit_bias",
    "apply_penalties",
    "argmax",
    "get_num_threads",
    "log_softmax",
    "logprobs",
    "mask_min_p",
    "mask_top_k",
    "mask_top_p",
    "sample",
    "sample_batch",
    "set_num_threads",
    "simd_level",
    "softmax",
    "top_k",
    "uniform",
]


def _check_environment() -> None:
    """Warn about the environment variables that logitkit cannot read (it ignores them)."""
    import warnings

    expected = {
        "LOGITKIT_SIMD": "one of scalar, avx2, avx512, neon",
        "LOGITKIT_NUM_THREADS": "a positive integer",
    }
    for name, value in _core.unreadable_environment():
        warnings.warn(
            f"{name}={value!r} is not {expected[name]}: ignored (the default applies)",
            RuntimeWarning,
            stacklevel=3,
        )


_check_environment()

if hasattr(_os, "register_at_fork"):
    # A child process inherits no pool threads: it builds a fresh pool on first use. The pool's
    # state lock is held across the fork, so that the child never inherits it locked.
    _os.register_at_fork(
        before=_core._before_fork,
        after_in_parent=_core._after_fork_in_parent,
        after_in_child=_core._after_fork_in_child,
    )
