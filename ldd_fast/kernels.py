"""ldd_fast.kernels: Triton kernels for the compiled sampler.

The core (ldd_fast) never imports this package except where `lf.Sampler` dispatches
to backend="triton" or "cuda_graph"; triton itself is an optional extra.

This file is the package's face; its modules live in the repository's top-level `kernels/`
folder, which setup.py installs as `ldd_fast/kernels/`. That folder has no `__init__.py`, so
a Python started at the repository root never takes it for an installed package named
`kernels` (transformers 5 installs one). A module with a `__path__` is a package: in a wheel
the path below is the installed folder; an editable install's finder maps the folder itself.
"""
import os

__path__ = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")]

from ldd_fast.kernels.update_kernel import (  # noqa: E402 - needs __path__
    BLOCK, available, check_operands, fused_update, interpreter, reference_update,
)

__all__ = ["BLOCK", "available", "check_operands", "fused_update", "interpreter", "reference_update"]
