"""Triton kernels for the compiled sampler (installs as ldd_fast.kernels).

The core (ldd_fast) never imports this package except where `lf.Sampler` dispatches
to backend="triton" or "cuda_graph"; triton itself is an optional extra.
"""
from .update_kernel import BLOCK, available, check_operands, fused_update, interpreter, reference_update

__all__ = ["BLOCK", "available", "check_operands", "fused_update", "interpreter", "reference_update"]
