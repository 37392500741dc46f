"""The exit statuses every ldd-fast command line keeps (`ldd-fast`, `python -m ldd_fast.zoo.train`,
`python -m ldd_fast.zoo.classifier`), in one place below them all.

0 done; 2 a user's mistake (an `LddFastError`, argparse's included where the command raises it so,
or an OS error about one path), printed as one line naming the argument or file; 1 anything else,
a bug in ldd-fast or in the model's code, printed as one line that says so; 130 interrupted.
LDD_FAST_TRACEBACK=1 lets the exception through with its traceback, for a bug report.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

from .errors import LddFastError

# OS errors about one path: ours name it in the message, Python's in `filename`.
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def user_mistake(e: BaseException) -> bool:
    return isinstance(e, (LddFastError, *PATH_ERRORS)) or isinstance(e, OSError) and e.filename is not None


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def describe(e: BaseException) -> str:
    """One line for any error."""
    if isinstance(e, OSError) and not isinstance(e, LddFastError) and e.filename is not None:
        return f"{e.strerror or first_line(e)}: {e.filename}"
    if user_mistake(e):
        return first_line(e)
    return (f"internal error {type(e).__name__}: {first_line(e)} (a bug in ldd-fast or in the model: please report "
            f"it; LDD_FAST_TRACEBACK=1 shows where)")


def run_command(prog: str, body: Callable[[], int], words: Callable[[str], str] = lambda msg: msg) -> int:
    """body()'s status, or the status of what it raised, printed as `prog: error: <one line>` (`words`
    may put the message in the command line's terms)."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error is one line; LDD_FAST_TRACEBACK=1 for bugs
        if os.environ.get("LDD_FAST_TRACEBACK") == "1":
            raise
        print(f"{prog}: error: {words(describe(e))}", file=sys.stderr)
        return 2 if user_mistake(e) else 1
