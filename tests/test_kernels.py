"""The fused update kernel against its torch twin (TRITON_INTERPRET=1 on the CPU, set in conftest)."""
import os
import subprocess
import sys

import pytest
import torch

import ldd_fast as lf

triton = pytest.importorskip("triton", reason="the fused update needs the [triton] extra")

from ldd_fast import kernels  # noqa: E402
from ldd_fast.kernels import update_kernel  # noqa: E402

from test_denoiser import CondGaussians  # noqa: E402
from test_fold import _models  # noqa: E402
from test_solvers import CONFIGS  # noqa: E402
from tolerances import TOL  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda" and not kernels.interpreter()
if not ON_GPU and not kernels.interpreter():
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1 (conftest sets it before triton is imported)",
                allow_module_level=True)
STORAGE = [torch.float32, torch.float16, torch.bfloat16]
# Odd element counts: one element, a prime below the block, a prime above it, not a multiple of it.
SIZES = [1, 7, kernels.BLOCK + 7, 2 * kernels.BLOCK + 3]


pytestmark = pytest.mark.usefixtures("one_thread")


def _solver_structures():
    """Every distinct update shape the Sampler lowers for every solver config (EDM and eps models,
    guided and not): the register counts the kernel must serve."""
    shapes = {}
    edm, eps = [den for _, den in _models()][:2]
    noise = lf.VPLinear()
    guided = lf.Denoiser(CondGaussians(noise), noise, prediction="x0", time_input="t", guidance_scale=2.0,
                         null_cond=torch.tensor(2))
    for solver, order, variant in CONFIGS:
        for den in (edm, eps, guided):
            sched = lf.discretize(den.noise, 5, "edm", solver=solver)
            fast = lf.Sampler(den, sched, solver=solver, order=order, variant=variant)
            for g in fast.programs:
                for u in fast.program(g).updates:
                    shapes[(u.mask, u.dup)] = f"{solver}{order}{variant or ''}"
    return shapes


STRUCTURES = _solver_structures()


def _operands(mask, dup, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    srcs = [torch.randn(n, generator=g).to(DEVICE, dtype) for _ in mask[0]]
    coef = torch.randn(len(mask), len(mask[0]), generator=g, dtype=torch.float64)
    coef = (coef * torch.tensor(mask, dtype=torch.float64)).to(DEVICE, acc)
    dsts = [torch.full((2 * n if k == dup else n,), float("nan"), dtype=dtype, device=DEVICE) for k in range(len(mask))]
    return srcs, coef, dsts


def _assert_matches_twin(dsts, srcs, coef, mask, dup, dtype):
    ref = kernels.reference_update(srcs, coef, mask, dtype, dup)
    bound = sum(coef[:, j:j + 1].double().abs() * s.double()[None].abs() for j, s in enumerate(srcs))
    for k, (out, want) in enumerate(zip(dsts, ref)):
        scale = torch.cat([bound[k], bound[k]]) if k == dup else bound[k]
        err = (out.double() - want.double()).abs()
        assert torch.isfinite(out).all(), f"destination {k}: unwritten or non-finite elements"
        assert (err <= TOL["kernel_vs_twin_eps"] * torch.finfo(dtype).eps * scale).all(), \
            f"destination {k}: max error {err.max().item():.3g}"


@pytest.mark.parametrize("dtype", STORAGE, ids=str)
def test_every_solver_structure_matches_twin(dtype):
    assert len({len(m[0]) for m, _ in STRUCTURES}) >= 5, "1 to 6 sources: z, registers, the guided halves"
    for (mask, dup), name in STRUCTURES.items():
        n = 2 * kernels.BLOCK + 3
        srcs, coef, dsts = _operands(mask, dup, n, dtype)
        kernels.fused_update(srcs, dsts, coef, mask, dup=dup)
        _assert_matches_twin(dsts, srcs, coef, mask, dup, dtype)


@pytest.mark.parametrize("dtype", STORAGE + [torch.float64], ids=str)
@pytest.mark.parametrize("n", SIZES)
def test_odd_sizes(dtype, n):
    mask = ((True, True, False, True), (False, True, True, True), (True, False, False, False))
    srcs, coef, dsts = _operands(mask, 1, n, dtype, seed=n)
    kernels.fused_update(srcs, dsts, coef, mask, dup=1)
    _assert_matches_twin(dsts, srcs, coef, mask, 1, dtype)


def test_baked_equals_table_and_in_place_is_safe():
    mask = ((True, True, True), (False, True, True))
    srcs, coef, dsts = _operands(mask, -1, 1000, torch.float32)
    kernels.fused_update(srcs, dsts, coef, mask)
    baked = tuple(tuple(float(c) for c in row) for row in coef.cpu())
    again = [torch.empty_like(d) for d in dsts]
    kernels.fused_update(srcs, again, None, mask, baked=baked)
    assert all(torch.equal(a, b) for a, b in zip(dsts, again)), "constants and table: the same fp32 values"
    # Every program loads its whole block before storing: destinations may overwrite sources.
    inplace = [s.clone() for s in srcs]
    kernels.fused_update(inplace, [inplace[0], inplace[1]], coef, mask)
    assert torch.equal(inplace[0], dsts[0]) and torch.equal(inplace[1], dsts[1])


def test_structural_zeros_are_not_read():
    mask = ((True, False),)
    srcs, coef, dsts = _operands(mask, -1, 300, torch.float32)
    srcs[1].fill_(float("inf"))
    kernels.fused_update(srcs, dsts, coef, mask)
    assert torch.isfinite(dsts[0]).all(), "0 * inf in a structurally zero column must not make NaN"


def test_operand_checks_name_the_problem():
    mask = ((True, True),)
    srcs, coef, dsts = _operands(mask, -1, 10, torch.float32)
    with pytest.raises(ValueError, match="source 1 has 9 elements"):
        kernels.check_operands([srcs[0], srcs[1][:9]], dsts, coef, mask)
    with pytest.raises(ValueError, match="not contiguous"):
        kernels.check_operands([srcs[0], torch.randn(20, device=DEVICE)[::2]], dsts, coef, mask)
    with pytest.raises(ValueError, match="coef must be a contiguous"):
        kernels.check_operands(srcs, dsts, coef.t(), mask)


def test_kernel_key_is_the_structure_not_the_schedule():
    """A new schedule of the same structure reuses every compiled kernel of the table variant (its
    constexpr key); the baked variant compiles per schedule, which is what baking requires."""
    noise = lf.EDM()
    den = [d for _, d in _models()][0]
    keys = []
    for kind in ("edm", "logsnr"):
        fast = lf.Sampler(den, lf.discretize(noise, 6, kind), solver="unipc", order=3)
        prog = fast.program()
        keys.append(({(u.mask, u.dup) for u in prog.updates},
                     {tuple(c.flatten().tolist()) for c in fast.programs[False]["tables"]}))
    assert keys[0][0] == keys[1][0], "same step shapes: no new table-kernel compile"
    assert keys[0][1] != keys[1][1], "different coefficients: the baked variant would recompile"


def test_compiles_for_a_gpu_ahead_of_time():
    """The compiled kernel (not the interpreter) builds down to a cubin for sm_90, without a GPU."""
    if ON_GPU:
        pytest.skip("on a GPU the launches themselves compile the kernel")
    from triton.backends.nvidia import compiler as _nvidia  # noqa: F401 - presence of the CUDA backend
    code = (
        "import torch\n"
        "from ldd_fast.kernels.update_kernel import compile_ahead\n"
        "m = ((True, False, True, True, True, True, True), (True, True, False, False, False, False, True))\n"
        "for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):\n"
        "    assert compile_ahead(m, dt, dup=1).asm['cubin']\n"
        "assert compile_ahead(((True, True),), torch.float16, baked=((0.5, -2.0),)).asm['cubin']\n"
        "print('ok')\n")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if res.returncode != 0 and ("ptxas" in res.stderr and "not found" in res.stderr.lower()):
        pytest.skip("Triton's CUDA backend has no ptxas here")
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (compiled Triton, not the interpreter)")
@pytest.mark.parametrize("dtype", STORAGE, ids=str)
def test_gpu_large_and_odd_sizes(dtype):
    mask = ((True, True, True, True, True), (True, False, True, False, True), (False, False, False, True, True))
    for n in (1, 4099, 2**20 + 3, 2**24):
        srcs, coef, dsts = _operands(mask, 2, n, dtype, seed=n)
        kernels.fused_update(srcs, dsts, coef, mask, dup=2)
        _assert_matches_twin(dsts, srcs, coef, mask, 2, dtype)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU (compiled Triton, not the interpreter)")
def test_gpu_new_schedule_does_not_recompile():
    noise = lf.EDM()
    den = [d for _, d in _models()][0].to(DEVICE)
    z = torch.randn(4, 6, device=DEVICE)
    kernel = update_kernel.fused_update_kernel

    def compiled():
        return sum(len(c[0]) if isinstance(c, tuple) else len(c) for c in kernel.device_caches.values())
    lf.Sampler(den, lf.discretize(noise, 6, "edm"), solver="unipc", backend="triton", device=DEVICE)(z)
    before = compiled()
    lf.Sampler(den, lf.discretize(noise, 6, "logsnr"), solver="unipc", backend="triton", device=DEVICE)(z)
    assert compiled() == before
