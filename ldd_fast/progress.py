"""Progress bars: tqdm when it is installed (the [demo] extra), a plain passthrough otherwise."""
from __future__ import annotations

import sys


def progress(iterable, *, desc: str = "", total: int | None = None, disable: bool = False, **kw):
    if disable:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(desc, file=sys.stderr, flush=True)
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, **kw)
