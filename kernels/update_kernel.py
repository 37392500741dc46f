"""The fused sampler update: one launch applies a whole step's linear map.

Between two network calls a sampler only forms linear combinations (ldd_fast.plan):

    dst_k = sum_j C[k, j] * src_j        k < N_DST, j < N_SRC

where the sources are the live registers and the network's raw output(s) (the cond /
uncond halves under guidance), and C already contains the model-output conversion
(eps / v / EDM -> x0) and the guidance weights (`ldd_fast.plan.fold`). One program
loads a block of every source once, accumulates every destination in fp32 (fp64 for
fp64 storage) and stores each destination once in the storage dtype, so a step moves
(N_SRC + N_DST) * n elements: the minimum for this map.

Design (why, and what is still to be measured):
- Registers stay separate tensors, passed as tuples of pointers. The raw outputs are
  the network's own allocations, and plain copies between registers (UniPC's and
  DPM-Solver's history shifts m2 <- m1) become aliases in the lowering
  (`ldd_fast.sampler.lower`): no pass at all, which a stacked register file would
  have to pay as a copy.
- The structure (N_SRC, N_DST, which C[k, j] are structurally non-zero, the destination
  written twice) is constexpr, so each distinct step shape compiles once; structural
  zeros cost nothing (and a 0 * inf in a dead column cannot make a NaN).
- The coefficients are either read from a small device table (USE_TABLE: one compiled
  kernel per step *shape*; a new schedule of the same shape reuses it, and a captured
  CUDA graph could take a new schedule by overwriting the table), or baked in as
  constexpr floats (one compile per distinct step; the loads of C disappear).
  The table is the default. The two differ by N_SRC * N_DST scalar loads per program,
  which hit L1/L2 after the first program; on this project's CPU-only development
  machine the difference cannot be measured (the interpreter says nothing about
  speed), so the comparison is pending a GPU run: benchmarks/update_kernel.py measures
  both ("fused_table" vs "fused_baked") and benchmarks/gpu_check.sh runs it.
- DUP: under guidance the network reads [x, x] (cond and uncond halves in one batch);
  the destination that is the next network input is stored at offs and at n + offs of
  a (2B, ...) buffer, so no torch.cat runs between the kernel and the network.
- The kernel is also correct in place (a destination may be a source): every program
  loads all of its block before storing it.
- BLOCK = 1024, 4 warps: Triton's vector-add tutorial setting for streaming kernels,
  a single launch configuration (no autotune, as the interpreter tests need). The
  benchmark sweeps block sizes on GPU (--blocks); change it here only with that measurement.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import torch

from ldd_fast.errors import InvalidArgument, Unavailable

try:
    import triton
    import triton.language as tl
except ImportError:  # the core never needs this module; ldd_fast.sampler reports a missing triton clearly
    triton = None
    tl = None

BLOCK = 1024
NUM_WARPS = 4
_INT32_LIMIT = 2**31 - 1

# Launches through `fused_update` (diagnostics; the tests count at the kernel object itself).
launches = 0


def interpreter() -> bool:
    """True when Triton runs this kernel in its CPU interpreter (TRITON_INTERPRET=1 before triton was imported).

    Read from what the decorator returned, not from the environment now: setting the variable
    after triton is imported does not make the kernel interpretable.
    """
    return _INTERPRETED


def available(device: torch.device | str) -> str | None:
    """None when the kernel can run on `device`, else the reason it cannot."""
    device = torch.device(device)
    if triton is None:
        return "triton is not installed (pip install 'ldd-fast[triton]')"
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "CUDA is not available"
    if device.type == "cpu" and interpreter():
        return None
    return (f"Triton runs on CUDA GPUs, or on the CPU only through its interpreter (TRITON_INTERPRET=1 set "
            f"before triton is imported); the device is {device} and "
            f"{'CUDA is available' if torch.cuda.is_available() else 'there is no CUDA'}")


if triton is not None:

    @triton.jit
    def fused_update_kernel(srcs, dsts, coef, n,
                            N_SRC: tl.constexpr, N_DST: tl.constexpr, MASK: tl.constexpr,
                            USE_TABLE: tl.constexpr, COEFS: tl.constexpr, DUP: tl.constexpr,
                            ACC_FP64: tl.constexpr, INT64: tl.constexpr, BLOCK: tl.constexpr):
        """dst_k = sum_j C[k, j] src_j where bit k * N_SRC + j of MASK is set; C from `coef` (row-major
        N_DST x N_SRC) or COEFS. MASK is an int, not a tuple: constexpr integer arithmetic works in
        every Triton 3.x, constexpr tuples only in recent ones."""
        pid = tl.program_id(0)
        if INT64:
            pid = pid.to(tl.int64)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n
        # Each source is read once.
        xs = ()
        for j in tl.static_range(N_SRC):
            v = tl.load(srcs[j] + offs, mask=inside, other=0.0)
            if ACC_FP64:
                v = v.to(tl.float64)
            else:
                v = v.to(tl.float32)
            xs = xs + (v,)
        # Each destination is accumulated in fp32 (fp64) and stored once in its own dtype.
        for k in tl.static_range(N_DST):
            if ACC_FP64:
                acc = tl.zeros([BLOCK], dtype=tl.float64)
            else:
                acc = tl.zeros([BLOCK], dtype=tl.float32)
            for j in tl.static_range(N_SRC):
                if (MASK >> (k * N_SRC + j)) & 1:
                    if USE_TABLE:
                        acc += tl.load(coef + (k * N_SRC + j)) * xs[j]
                    else:
                        acc += COEFS[k][j] * xs[j]
            out = acc.to(dsts[k].dtype.element_ty)
            tl.store(dsts[k] + offs, out, mask=inside)
            if DUP == k:
                tl.store(dsts[k] + n + offs, out, mask=inside)
else:
    fused_update_kernel = None

_INTERPRETED = (type(fused_update_kernel).__name__ == "InterpretedFunction" if fused_update_kernel is not None
                else os.environ.get("TRITON_INTERPRET") == "1")


@functools.lru_cache(maxsize=None)
def mask_bits(mask: tuple[tuple[bool, ...], ...]) -> int:
    """The structural non-zeros as the kernel's constexpr MASK: bit k * N_SRC + j for C[k, j]."""
    n_src = len(mask[0])
    return sum(1 << (k * n_src + j) for k, row in enumerate(mask) for j, on in enumerate(row) if on)


def fused_update(srcs: Sequence[torch.Tensor], dsts: Sequence[torch.Tensor], coef: torch.Tensor | None,
                 mask: tuple[tuple[bool, ...], ...], *, dup: int = -1, baked: tuple | None = None,
                 block: int = BLOCK, num_warps: int = NUM_WARPS) -> None:
    """Launch the fused update: dsts[k] = sum_j C[k, j] * srcs[j] (one launch, in place allowed).

    srcs, dsts: contiguous tensors of n elements each (dsts[dup]: 2n, written twice).
    coef: (N_DST, N_SRC) contiguous table in the accumulation dtype (float32, or float64
        for float64 storage), on the tensors' device; ignored when `baked` is given.
    mask: structural non-zeros of C (constexpr: part of the compiled kernel's key).
    baked: C as nested python float tuples, compiled in as constants (the baked variant).
    """
    global launches
    if fused_update_kernel is None:
        raise Unavailable("the fused update needs triton (pip install 'ldd-fast[triton]')")
    n = srcs[0].numel()
    acc64 = dsts[0].dtype == torch.float64
    end = (2 * n if dup >= 0 else n) + block
    grid = (triton.cdiv(n, block),)
    fused_update_kernel[grid](
        tuple(srcs), tuple(dsts), coef if baked is None else srcs[0], n,
        N_SRC=len(srcs), N_DST=len(dsts), MASK=mask_bits(mask), USE_TABLE=baked is None,
        COEFS=baked if baked else 0, DUP=dup, ACC_FP64=acc64, INT64=end > _INT32_LIMIT, BLOCK=block, num_warps=num_warps)
    launches += 1


def reference_update(srcs: Sequence[torch.Tensor], coef: torch.Tensor, mask, dst_dtype: torch.dtype,
                     dup: int = -1) -> list[torch.Tensor]:
    """The kernel's pure-torch twin: same accumulation dtype, same term order, one rounding per output."""
    acc = coef.dtype
    xs = [s.reshape(-1).to(acc) for s in srcs]
    outs = []
    for k, row in enumerate(mask):
        out = torch.zeros_like(xs[0])
        for j, on in enumerate(row):
            if on:
                out = out + coef[k, j] * xs[j]
        out = out.to(dst_dtype)
        outs.append(torch.cat([out, out]) if k == dup else out)
    return outs


def check_operands(srcs: Sequence[torch.Tensor], dsts: Sequence[torch.Tensor], coef: torch.Tensor | None,
                   mask, dup: int = -1) -> None:
    """Clear errors for what the kernel assumes (used by tests and by callers outside the Sampler)."""
    n = srcs[0].numel()
    if len(mask) != len(dsts) or any(len(r) != len(srcs) for r in mask):
        raise InvalidArgument(f"mask must be {len(dsts)} x {len(srcs)} (destinations x sources)")
    for name, ts in (("source", srcs), ("destination", dsts)):
        for i, t in enumerate(ts):
            want = 2 * n if (name == "destination" and i == dup) else n
            if t.numel() != want:
                raise InvalidArgument(f"{name} {i} has {t.numel()} elements, expected {want}")
            if not t.is_contiguous():
                raise InvalidArgument(f"{name} {i} is not contiguous (the kernel indexes flat memory)")
            if t.device != srcs[0].device:
                raise InvalidArgument(f"{name} {i} is on {t.device}, the first source on {srcs[0].device}")
    if coef is not None and (tuple(coef.shape) != (len(dsts), len(srcs)) or not coef.is_contiguous()):
        raise InvalidArgument(f"coef must be a contiguous ({len(dsts)}, {len(srcs)}) table, got {tuple(coef.shape)}")


_TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def compile_ahead(mask, dtype: torch.dtype, *, dup: int = -1, baked: tuple | None = None, arch: int = 90,
                  block: int = BLOCK, num_warps: int = NUM_WARPS):
    """Compile one specialisation for a CUDA target without a GPU (Triton's ahead-of-time path).

    What a GPU would JIT-compile on the first launch of this step shape; used by the CPU test
    suite to prove the compiled (not interpreted) kernel builds, down to the cubin.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    kernel = fused_update_kernel
    if not isinstance(kernel, JITFunction):  # under TRITON_INTERPRET=1 the decorator returned an interpreter
        kernel = JITFunction(kernel.fn)
    ty = _TRITON_DTYPES[dtype]
    n_src, n_dst = len(mask[0]), len(mask)
    acc = "fp64" if dtype == torch.float64 else "fp32"
    signature = {"srcs": tuple(f"*{ty}" for _ in range(n_src)), "dsts": tuple(f"*{ty}" for _ in range(n_dst)),
                 "coef": f"*{acc}", "n": "i32"}
    constexprs = dict(N_SRC=n_src, N_DST=n_dst, MASK=mask_bits(mask), USE_TABLE=baked is None,
                      COEFS=baked if baked else 0, DUP=dup, ACC_FP64=dtype == torch.float64, INT64=False, BLOCK=block)
    signature.update({k: "constexpr" for k in constexprs})
    return triton.compile(ASTSource(kernel, signature, constexprs),
                          target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
