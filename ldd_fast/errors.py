"""The library's own errors: one base class, `LddFastError`, so a caller can catch everything
ldd-fast raises on purpose with one `except` and let real bugs through.

`LddFastError` is a ValueError (bad input is what almost all of them mean); errors that name
a runtime failure (export, TensorRT) are RuntimeErrors as well, and a missing optional
package is an ImportError as well. OS errors (missing, unreadable or unwritable files) keep
their own types, with the path in the message.
"""
from __future__ import annotations

import math


class LddFastError(ValueError):
    """Base class of every error ldd-fast raises on purpose; the message names the problem."""


class NoiseScheduleError(LddFastError):
    """A noise schedule's parameters are of the wrong type, not finite, or outside its valid range."""


class ScheduleError(LddFastError):
    """A schedule (or schedule file) is malformed; the message names the field."""


class IncompatibleSchedule(LddFastError):
    """A schedule made for another model, solver, order or guidance scale (pass force=True to use it anyway)."""


class StateFileError(LddFastError):
    """A state file (LD3 checkpoint, teacher pairs, cache, training checkpoint) is not one ldd-fast wrote,
    is corrupt, or belongs to another run; the message names the file and what is wrong."""


class ConditionError(LddFastError):
    """A condition (class labels, prompt embedding) does not fit the model: shape, dtype or label range."""


class NonFiniteSample(LddFastError):
    """A sample (or its input noise) holds NaN or inf; the message says where it appeared."""


def finite_number(v, what: str, error: type = LddFastError) -> float:
    """v as a finite float, or `error` naming `what`: bools, strings, NaN, inf and ints too large for a
    float are refused (a one-element tensor is a number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not (hasattr(v, "numel") and v.numel() == 1):
        raise error(f"{what} must be a number, got {type(v).__name__} {v!r:.40}")
    try:
        v = float(v)
    except OverflowError:
        raise error(f"{what} is too large for a float") from None
    if not math.isfinite(v):
        raise error(f"{what} must be finite, got {v}")
    return v
