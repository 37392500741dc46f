"""lf.Sampler: every backend computes what lf.sample computes, with no planning and no host syncs per call."""
import os
import shutil
import subprocess

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

import ldd_fast as lf
from ldd_fast.sampler import lower
from ldd_fast.plan import fold
from ldd_fast.zoo.train import default_network_config
from ldd_fast.zoo.unet import TinyUNet

from test_denoiser import CondGaussians
from test_fold import _models
from test_solvers import CONFIGS, IDS
from tolerances import TOL

try:
    from ldd_fast import kernels
    from ldd_fast.kernels import update_kernel
    TRITON_HERE = kernels.available("cuda" if torch.cuda.is_available() else "cpu") is None
except ImportError:
    kernels = update_kernel = None
    TRITON_HERE = False

GPU = torch.cuda.is_available() and TRITON_HERE and not kernels.interpreter()
DEVICE = "cuda" if GPU else "cpu"
BACKENDS = ["eager"] + (["triton"] if TRITON_HERE else [])
needs_triton = pytest.mark.skipif(not TRITON_HERE, reason="needs triton with CUDA or TRITON_INTERPRET=1")
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU and compiled Triton (TRITON_INTERPRET unset or 0)")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_thread")


def _guided_den(scale=2.5):
    noise = lf.VPLinear()
    return lf.Denoiser(CondGaussians(noise), noise, prediction="x0", time_input="t", guidance_scale=scale,
                       null_cond=torch.tensor(2))


def _tiny_unet(channels=8, guidance_scale=2.0, device="cpu"):
    """The built-in model's architecture, small, with a random (not zero) output layer."""
    torch.manual_seed(0)
    net = TinyUNet(**default_network_config("edm", model_channels=channels)).eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.2)
    net = net.to(device)
    # num_classes: the label range check of a host-side cond runs inside the no-sync test too.
    return lf.Denoiser(net, lf.EDM(), prediction="edm", guidance_scale=guidance_scale,
                       null_cond=torch.tensor(net.null_class), num_classes=net.num_classes)


class _CountingKernel:
    """Stands in for the Triton kernel: counts launches and hides them from dispatch modes (the interpreter
    runs the kernel with torch / numpy ops of its own; on a GPU a launch is one asynchronous call)."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.launches += 1
            with _disable_current_modes():
                return launch(*args, **kwargs)
        return run


@pytest.fixture
def counting(monkeypatch):
    if update_kernel is None:
        pytest.skip("needs triton")
    counter = _CountingKernel(update_kernel.fused_update_kernel)
    monkeypatch.setattr(update_kernel, "fused_update_kernel", counter)
    return counter


# ----- parity --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver,order,variant", CONFIGS, ids=IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_sample_in_float64(solver, order, variant, backend):
    for final in ("t_min", "zero"):
        for name, den in _models():
            den, z = den.to(DEVICE), torch.randn(3, 6, dtype=torch.float64, device=DEVICE)
            sched = lf.discretize(den.noise, 5, "edm", solver=solver, final=final)
            ref = lf.sample(den, z, sched, solver=solver, order=order, variant=variant)
            fast = lf.Sampler(den, sched, solver=solver, order=order, variant=variant, backend=backend,
                              dtype=torch.float64)
            assert torch.allclose(fast(z), ref, atol=TOL["fp64_same_math"], rtol=0), (name, final)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_low_precision_matches_float64_reference(dtype):
    eps = torch.finfo(dtype).eps
    for solver, order, variant in CONFIGS:
        for name, den in list(_models())[:2]:
            den, z = den.to(DEVICE), torch.randn(3, 6, dtype=torch.float64, device=DEVICE)
            sched = lf.discretize(den.noise, 5, "edm", solver=solver)
            ref = lf.sample(den, z, sched, solver=solver, order=order, variant=variant)
            for backend in BACKENDS:
                fast = lf.Sampler(den, sched, solver=solver, order=order, variant=variant, backend=backend,
                                  dtype=dtype)
                out = fast(z.to(dtype))
                assert out.dtype == dtype
                err = (out.double() - ref).abs().max() / ref.abs().max()
                assert err <= TOL["lowp_sample_eps"] * eps, (solver, order, variant, name, backend, float(err))


@pytest.mark.parametrize("solver,order", [("unipc", 3), ("dpmpp", 2), ("heun", 2), ("ipndm", 4), ("euler", 1)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_guided_and_unguided_calls_match_sample(solver, order, backend):
    den = _guided_den().to(DEVICE)
    z = torch.randn(4, 2, dtype=torch.float64, device=DEVICE)
    cond = torch.tensor([0, 1, 1, 0], device=DEVICE)
    sched = lf.discretize(den.noise, 5, "logsnr", solver=solver)
    fast = lf.Sampler(den, sched, solver=solver, order=order, backend=backend, dtype=torch.float64)
    den.net.batches.clear()
    out = fast(z, cond)
    assert den.net.batches == [8] * 5, "one batched cond + null call per network evaluation"
    assert torch.allclose(out, lf.sample(den, z, sched, solver=solver, order=order, cond=cond),
                          atol=TOL["fp64_same_math"], rtol=0)
    for unguided in (lambda: fast(z), lambda: lf.sample(den, z, sched, solver=solver, order=order)):
        with pytest.raises(lf.ConditionError, match="needs cond"):  # once a silently unguided sample
            unguided()


# ----- what a call does (and does not do) ----------------------------------------------------------------

def test_lowering_aliases_copies_and_skips_dead_registers():
    den = [d for _, d in _models()][1]  # eps on VP: the network reads z itself, no prologue
    sched = lf.discretize(den.noise, 5, "logsnr")
    fast = lf.Sampler(den, sched, solver="dpmpp", order=3)
    prog = fast.program()
    assert prog.prologue is None and fast.launches_per_call() == 5
    assert prog.calls[1].aliases == ((2, ("reg", 1)),), "m2 <- m1 is passed on, not copied"
    assert prog.calls[-1].update.dsts == (0,), "the last call writes the sample only"
    assert all(src[0] != "reg" for src in prog.calls[0].update.srcs), "x = prior * z folds into call 0"
    edm = [d for _, d in _models()][0]
    fast = lf.Sampler(edm, lf.discretize(edm.noise, 5, "edm"), solver="dpmpp", order=3)
    assert fast.program().prologue is not None and fast.launches_per_call() == 6, "c_in * sigma_max * z first"
    guided = lf.Sampler(_guided_den(), lf.discretize(lf.VPLinear(), 5, "logsnr"), solver="unipc")
    assert all(c.update.dup >= 0 for c in guided.program(True).calls[:-1]), "[x, x] written by the update"
    assert guided.program(True).prologue.dup == 0


def test_a_new_schedule_of_the_same_structure_has_the_same_program_structure():
    den = [d for _, d in _models()][0]
    plans = [lf.plan_for(den, lf.discretize(den.noise, 6, kind), solver="unipc") for kind in ("edm", "logsnr")]
    a, b = (lower(p, fold(p, den), False) for p in plans)
    assert a.structure == b.structure
    assert not all(torch.equal(x, y) for x, y in zip(a.coefs, b.coefs))


@needs_triton
@pytest.mark.parametrize("guided", [False, True])
def test_triton_backend_launches_one_kernel_per_call(counting, guided):
    den = (_guided_den() if guided else [d for _, d in _models()][0]).to(DEVICE)
    z = torch.randn(3, 2 if guided else 6, device=DEVICE)
    cond = torch.tensor([0, 1, 0], device=DEVICE) if guided else None
    for solver, order, variant in CONFIGS:
        sched = lf.discretize(den.noise, 5, "edm", solver=solver)
        fast = lf.Sampler(den, sched, solver=solver, order=order, variant=variant, backend="triton")
        before = counting.launches
        fast(z, cond)
        assert counting.launches - before == fast.launches_per_call(guided) == 5 + 1, (solver, order)


@needs_triton
def test_triton_backend_never_falls_back_to_torch(monkeypatch):
    den = [d for _, d in _models()][0].to(DEVICE)
    fast = lf.Sampler(den, lf.discretize(den.noise, 4, "edm"), solver="unipc", backend="triton")

    class Broken:
        def __getitem__(self, grid):
            raise RuntimeError("kernel launched")
    monkeypatch.setattr(update_kernel, "fused_update_kernel", Broken())
    with pytest.raises(RuntimeError, match="kernel launched"):
        fast(torch.randn(2, 6, device=DEVICE))


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append((func._schema.name, out.dtype if isinstance(out, torch.Tensor) else None))
        return out


class _Hidden(torch.nn.Module):
    """The network, with its own ops hidden from the recorder."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t, cond=None):
        with _disable_current_modes():
            return self.net(x, t, cond)


ALLOCATIONS_AND_VIEWS = {"aten::empty", "aten::empty_strided", "aten::slice", "aten::expand", "aten::split",
                         "aten::view", "aten::alias", "aten::detach", "aten::select", "aten::unbind"}


@needs_triton
def test_no_elementwise_op_outside_the_network_and_the_kernel(counting):
    den = _tiny_unet(device=DEVICE)
    guided = lf.Denoiser(_Hidden(den.net), den.noise, prediction="edm", guidance_scale=2.0,
                         null_cond=torch.tensor(10))
    z, cond = torch.randn(2, 1, 8, 8, device=DEVICE), torch.tensor([3, 4], device=DEVICE)
    for d, c in ((guided.with_guidance(1.0), None), (guided, cond)):
        fast = lf.Sampler(d, lf.discretize(d.noise, 5, "edm"), solver="unipc", order=3, backend="triton")
        with _Recorder() as rec:
            fast(z, c)
        float_ops = {name for name, dtype in rec.ops if dtype is not None and dtype.is_floating_point}
        assert float_ops <= ALLOCATIONS_AND_VIEWS, sorted(float_ops - ALLOCATIONS_AND_VIEWS)
    assert counting.launches == 2 * 6


SYNCING_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero",
               "aten::nonzero_static", "aten::equal", "aten::masked_select", "aten::allclose",
               "aten::_assert_async", "aten::unique_dim", "aten::_unique2", "aten::repeat_interleave"}


class _NoSync(TorchDispatchMode):
    """Fails on every op that reads a device value back to the host."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in SYNCING_OPS:
            raise AssertionError(f"host-device synchronisation inside the sampler call: {func._schema.name}")
        return func(*args, **(kwargs or {}))


def _no_sync_call(fast, z, cond):
    if z.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        with _NoSync():
            return fast(z, cond)
    finally:
        if z.is_cuda:
            torch.cuda.set_sync_debug_mode(0)


def test_the_no_sync_check_catches_a_sync():
    with pytest.raises(AssertionError, match="_local_scalar_dense"):
        with _NoSync():
            torch.ones(2).sum().item()


@pytest.mark.parametrize("backend", BACKENDS + (["cuda_graph"] if GPU else []))
def test_a_call_does_no_host_sync(backend, monkeypatch):
    if backend == "triton" and not GPU:
        monkeypatch.setattr(update_kernel, "fused_update_kernel", _CountingKernel(update_kernel.fused_update_kernel))
    den = _tiny_unet(device=DEVICE)
    fast = lf.Sampler(den, lf.discretize(den.noise, 5, "edm"), solver="unipc", order=3, backend=backend)
    plain = lf.Sampler(den.with_guidance(1.0), lf.discretize(den.noise, 5, "edm"), solver="unipc", order=3,
                       backend=backend)
    z, cond = torch.randn(2, 1, 8, 8, device=DEVICE), torch.tensor([3, 4], device=DEVICE)
    fast(z, cond), plain(z)  # first calls: Triton compilation, CUDA graph capture
    out_guided, out = _no_sync_call(fast, z, cond), _no_sync_call(plain, z, None)
    with torch.no_grad():
        ref = lf.sample(den, z, lf.discretize(den.noise, 5, "edm"), solver="unipc", order=3, cond=cond)
    assert torch.allclose(out_guided, ref, atol=TOL["lowp_sample_eps"] * 1.2e-7 * float(ref.abs().max()), rtol=0)
    assert not torch.equal(out, out_guided)


# ----- building and checking -----------------------------------------------------------------------------

def test_dtype_is_fixed_when_built():
    den = [d for _, d in _models()][1]
    fast = lf.Sampler(den, lf.discretize(den.noise, 4, "logsnr"), solver="euler")
    assert fast.dtype == torch.float32 and fast(torch.randn(2, 6)).dtype == torch.float32
    with pytest.raises(TypeError, match=r"z has dtype torch.float64, but this Sampler was built for torch.float32"):
        fast(torch.randn(2, 6, dtype=torch.float64))
    with pytest.raises(TypeError, match="dtype must be one of"):
        lf.Sampler(den, lf.discretize(den.noise, 4, "logsnr"), solver="euler", dtype=torch.int32)


def test_sample_shape_device_and_cond_are_checked():
    den = [d for _, d in _models()][1]
    fast = lf.Sampler(den, lf.discretize(den.noise, 4, "logsnr"), solver="euler")
    fast(torch.randn(2, 6))
    fast(torch.randn(5, 6))  # another batch size is fine
    with pytest.raises(ValueError, match=r"sample shape \(3,\).*first called with \(6,\)"):
        fast(torch.randn(2, 3))
    with pytest.raises(ValueError, match="meta.*device="):
        fast(torch.randn(2, 6, device="meta"))
    guided = lf.Sampler(_guided_den(), lf.discretize(lf.VPLinear(), 4, "logsnr"), solver="euler")
    with pytest.raises(ValueError, match="one entry per sample"):
        guided(torch.randn(3, 2), torch.tensor([0, 1]))


def test_build_errors_name_the_problem(monkeypatch):
    den = [d for _, d in _models()][1]
    sched = lf.discretize(den.noise, 4, "logsnr")
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        lf.Sampler(den, sched, backend="tensorrt")
    with pytest.raises(TypeError, match="unknown sampler option"):
        lf.Sampler(den, sched, solver="euler", steps=3)
    with pytest.raises(ValueError, match="heun layout"):
        lf.Sampler(den, lf.discretize(den.noise, 5, "logsnr", solver="heun"), solver="unipc")
    foreign = sched.replace(solver="unipc", fingerprint="ab" * 32)
    with pytest.raises(lf.IncompatibleSchedule, match="another model"):
        lf.Sampler(den, foreign)
    lf.Sampler(den, foreign, force=True)(torch.randn(1, 6))
    if not GPU:
        with pytest.raises(RuntimeError, match="cuda_graph.*backend='eager' or backend='compile'"):
            lf.Sampler(den, sched, solver="euler", backend="cuda_graph")


@needs_triton
def test_triton_without_cuda_or_interpreter_names_the_alternatives(monkeypatch):
    den = [d for _, d in _models()][1]
    monkeypatch.setattr(update_kernel, "interpreter", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"TRITON_INTERPRET=1.*backend='eager'.*backend='compile'"):
        lf.Sampler(den, lf.discretize(den.noise, 4, "logsnr"), solver="euler", backend="triton")


def test_compile_backend_shares_one_graph_across_schedules():
    if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler")
    from torch._dynamo.utils import counters
    from ldd_fast.analytic import gaussian_problem

    torch._dynamo.reset()
    noise = lf.EDM()
    den, z, _ = gaussian_problem(noise, batch=2, dim=3)
    frames = counters["frames"]["total"]
    outs = []
    for kind in ("edm", "logsnr"):
        sched = lf.discretize(noise, 4, kind)
        fast = lf.Sampler(den, sched, solver="dpmpp", order=2, backend="compile")
        outs.append((fast(z.float()), lf.sample(den, z, sched, solver="dpmpp", order=2)))
        if kind == "edm":
            frames_after_first = counters["frames"]["total"]
    assert frames_after_first > frames, "the first schedule compiled"
    assert counters["frames"]["total"] == frames_after_first, "the second schedule reused the compiled graph"
    for out, ref in outs:
        assert torch.allclose(out.double(), ref, atol=TOL["fp32_vs_fp64"] * float(ref.abs().max()), rtol=0)


# ----- GPU ----------------------------------------------------------------------------------------------

@needs_gpu
def test_gpu_backends_agree():
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        den = _tiny_unet(channels=16, device="cuda")
        sched = lf.discretize(den.noise, 6, "edm")
        z, cond = torch.randn(4, 1, 8, 8, device="cuda"), torch.tensor([0, 1, 2, 3], device="cuda")
        with torch.no_grad():
            ref = lf.sample(den, z, sched, solver="unipc", order=3, cond=cond)
        tol = TOL["lowp_sample_eps"] * torch.finfo(torch.float32).eps * float(ref.abs().max())
        for backend in ("eager", "triton", "cuda_graph"):
            fast = lf.Sampler(den, sched, solver="unipc", order=3, backend=backend)
            assert torch.allclose(fast(z, cond), ref, atol=tol, rtol=0), backend
            assert torch.allclose(fast(z, cond), ref, atol=tol, rtol=0), backend + " (replay)"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@needs_gpu
def test_gpu_cuda_graph_one_graph_per_batch_size_and_results_survive():
    den = [d for _, d in _models()][0].to("cuda")
    sched = lf.discretize(den.noise, 5, "edm")
    fast = lf.Sampler(den, sched, solver="dpmpp", order=3, backend="cuda_graph")
    assert fast.update_impl == "triton"
    z1, z2 = torch.randn(3, 6, device="cuda"), torch.randn(5, 6, device="cuda")
    a = fast(z1)
    b = fast(z2)
    a2 = fast(z1)
    assert len(fast._graphs) == 2
    assert torch.equal(a, a2), "a replay is deterministic and the earlier result was not overwritten"
    ref = lf.sample(den, z2.double(), sched, solver="dpmpp", order=3)
    assert torch.allclose(b.double(), ref, atol=TOL["lowp_sample_eps"] * 1.2e-7 * float(ref.abs().max()), rtol=0)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gpu_low_precision(dtype):
    for name, den in list(_models())[:2]:
        den = den.to("cuda")
        sched = lf.discretize(den.noise, 5, "edm")
        z = torch.randn(64, 6, device="cuda", dtype=torch.float64)
        ref = lf.sample(den, z, sched, solver="unipc")
        # The VPDiscrete test network copies its interpolation grid to the device on every call, which a
        # CUDA graph cannot capture: graphs for the EDM model only.
        for backend in ("triton", "cuda_graph") if name == "edm" else ("triton",):
            out = lf.Sampler(den, sched, solver="unipc", backend=backend, dtype=dtype)(z.to(dtype))
            err = (out.double() - ref).abs().max() / ref.abs().max()
            assert err <= TOL["lowp_sample_eps"] * torch.finfo(dtype).eps, (name, backend, float(err))


# ----- the GPU check script -------------------------------------------------------------------------------

def test_gpu_check_script_dry_run():
    """benchmarks/gpu_check.sh --dry-run on the CPU: every command it would run parses its arguments."""
    script = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
    res = subprocess.run(["bash", script, "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for section in ("tests", "update_kernel", "latency", "archive"):
        assert f"[{section}]" in res.stdout, res.stdout[-3000:]


def test_available_backends_says_why_not():
    from ldd_fast.sampler import BACKENDS as ALL, available_backends

    here = available_backends()
    assert set(here) == set(ALL) and here["eager"] is None
    if not GPU:
        assert "CUDA" in here["cuda_graph"]
