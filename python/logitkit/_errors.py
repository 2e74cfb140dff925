"""The exception for a parameter of the wrong type."""


class ParameterTypeError(ValueError, TypeError):
    """A parameter of the wrong type: a float ``top_k`` or ``seed``, a string ``temperature``, a
    bias value that is not a number, a per-row array of the wrong dtype.

    The contract asks for a ``ValueError`` naming the parameter whenever a parameter is not what
    it must be (``top_k`` an integer, ``seed`` an integer in ``[0, 2**64)``, ...), and Python's
    convention for a value of the wrong type is ``TypeError``: this exception is both, so
    ``except ValueError`` and ``except TypeError`` each catch it. Its message starts with the
    parameter's name.

    >>> import numpy as np, logitkit
    >>> try:
    ...     logitkit.sample(np.zeros(4, dtype=np.float32), top_k=1.5)
    ... except ValueError as e:
    ...     print(e)
    top_k: must be an integer, got float
    """


def shown(value: object) -> str:
    """``repr(value)`` for an error message, or a description when that ``repr`` raises (an int
    of more than 4300 digits, which Python refuses to print, or a hostile ``__repr__``): the
    error stays the ``ValueError`` / ``TypeError`` that names the parameter."""
    try:
        return repr(value)
    except Exception:
        return described(value)


def described(value: object) -> str:
    """A value whose ``repr`` / ``str`` raises, for an error message: an int by its sign and size
    (Python prints no int of more than 4300 digits), anything else as ``<unprintable>``."""
    if isinstance(value, int):
        sign = "a negative" if value < 0 else "an"
        return f"<{sign} integer of {value.bit_length()} bits>"
    return "<unprintable>"
