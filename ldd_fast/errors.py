"""The library's own errors: one base class, `LddFastError`, so a caller can catch everything
ldd-fast raises on purpose with one `except` and let real bugs through.

`LddFastError` is a ValueError (bad input is what almost all of them mean); an argument of the
wrong type (`InvalidArgumentType`) is a TypeError as well, errors that name a runtime failure
(`Unavailable`, export, TensorRT) are RuntimeErrors as well, and a missing optional package
(`MissingDependency`) is an ImportError as well, so callers that catch the built-in class keep
working. OS errors (missing, unreadable or unwritable files) keep their own types, with the path
in the message.

The argument checks below (`finite_number`, `boolean`, `integer`, ...) are shared by every public
function, so that the same mistake gets the same error class and wording everywhere.
"""
from __future__ import annotations

import math
import numbers
import os

import torch


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


class InvalidArgument(LddFastError):
    """An argument's value is out of range, unknown or inconsistent with the others; the message names it."""


class InvalidArgumentType(LddFastError, TypeError):
    """An argument has the wrong type (a string where a bool belongs, a float16 tensor where float32 does)."""


class Unavailable(LddFastError, RuntimeError):
    """A backend, device, resource or step cannot run here or now; the message says what to do instead."""


class MissingDependency(LddFastError, ImportError):
    """An optional package that this feature needs is not installed (the message says how to get it)."""


class ForcedSchedule(UserWarning):
    """force=True ran a schedule made for another model, solver or guidance scale (the warning names both)."""


def finite_number(v, what: str, error: type | None = None) -> float:
    """v as a finite float, or an error naming `what`: bools, strings, NaN, inf and ints too large for a
    float are refused (a one-element tensor is a number). error: the class of every refusal (a named
    family such as ScheduleError); default InvalidArgumentType for a non-number, InvalidArgument else."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not (hasattr(v, "numel") and v.numel() == 1):
        raise (error or InvalidArgumentType)(f"{what} must be a number, got {type(v).__name__} {v!r:.40}")
    try:
        v = float(v)
    except OverflowError:
        raise (error or InvalidArgument)(f"{what} is too large for a float") from None
    if not math.isfinite(v):
        raise (error or InvalidArgument)(f"{what} must be finite, got {v}")
    return v


def positive_number(v, what: str, *, allow_zero: bool = False) -> float:
    """finite_number, and > 0 (>= 0 with allow_zero)."""
    v = finite_number(v, what)
    if v < 0 or v == 0 and not allow_zero:
        raise InvalidArgument(f"{what} must be {'>= 0' if allow_zero else 'positive'}, got {v}")
    return v


def boolean(v, what: str) -> bool:
    """v if it is a real bool: a string ("no", "false") or an int would be truthy or falsy by accident."""
    if not isinstance(v, bool):
        raise InvalidArgumentType(f"{what} must be True or False, got {type(v).__name__} {v!r:.40}")
    return v


def optional_boolean(v, what: str) -> bool | None:
    """None, or a real bool (see `boolean`)."""
    if v is not None and not isinstance(v, bool):
        raise InvalidArgumentType(f"{what} must be True, False or None, got {type(v).__name__} {v!r:.40}")
    return v


def integer(v, what: str, minimum: int | None = None) -> int:
    """v as an int (a bool or a float is refused: 2.5 steps or True threads are mistakes), at least `minimum`."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise InvalidArgumentType(f"{what} must be an int, got {type(v).__name__} {v!r:.40}")
    if minimum is not None and v < minimum:
        raise InvalidArgument(f"{what} must be >= {minimum}, got {v}")
    return int(v)


def string(v, what: str, choices=None) -> str:
    """v if it is a str (one of `choices` when given)."""
    if not isinstance(v, str):
        hint = f"one of {tuple(choices)}" if choices is not None else "a string"
        raise InvalidArgumentType(f"{what} must be {hint}, got {type(v).__name__} {v!r:.40}")
    if choices is not None and v not in choices:
        raise InvalidArgument(f"{what} must be one of {tuple(choices)}, got {v!r:.60}")
    return v


def path_like(v, what: str) -> str:
    """v as a str path (str or os.PathLike)."""
    if not isinstance(v, (str, os.PathLike)):
        raise InvalidArgumentType(f"{what} must be a path (str or os.PathLike), got {type(v).__name__}")
    v = os.fspath(v)
    if not isinstance(v, str):
        raise InvalidArgumentType(f"{what} must be a str path, got {type(v).__name__}")
    return v


def callable_or_none(v, what: str):
    if v is not None and not callable(v):
        raise InvalidArgumentType(f"{what} must be callable or None, got {type(v).__name__}")
    return v


def shape_of(v, what: str) -> tuple[int, ...]:
    """v as a non-empty tuple of positive ints (the shape of one sample)."""
    if isinstance(v, torch.Size):
        v = tuple(v)
    if not isinstance(v, (tuple, list)):
        raise InvalidArgumentType(f"{what} must be a tuple of positive ints, got {type(v).__name__} {v!r:.40}")
    if not v or any(isinstance(d, bool) or not isinstance(d, int) for d in v):
        raise InvalidArgumentType(f"{what} must be a non-empty tuple of positive ints, got {v!r:.60}")
    if any(d < 1 for d in v):
        raise InvalidArgument(f"{what} must be positive ints, got {tuple(v)}")
    return tuple(v)


def dtype_of(v, what: str, allowed) -> torch.dtype:
    """v if it is one of the torch dtypes `allowed`."""
    if not isinstance(v, torch.dtype):
        raise InvalidArgumentType(f"{what} must be a torch dtype, one of {[str(d) for d in allowed]}, "
                                  f"got {type(v).__name__} {v!r:.40}")
    if v not in allowed:
        raise InvalidArgumentType(f"{what} must be one of {[str(d) for d in allowed]}, got {v}")
    return v


def device_of(v, what: str = "device") -> torch.device | None:
    """None, or v (a torch.device, a name such as "cuda:0", or a CUDA index) as a torch.device."""
    if v is None or isinstance(v, torch.device):
        return v
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise InvalidArgumentType(f"{what} must be a torch.device, a device name or None, got {type(v).__name__} "
                                  f"{v!r:.40}")
    try:
        return torch.device(v)
    except (RuntimeError, ValueError, TypeError) as e:
        raise InvalidArgument(f"{what}={v!r:.40} is not a device ({e})") from None
