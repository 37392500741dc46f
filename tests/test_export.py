"""The exported sampler graph (ldd_fast.export): parity with the eager sampler, structure, files, errors.

Random-weight networks (the latency and the algebra do not depend on trained weights): a small
conv net of our own for every solver configuration, the built-in TinyUNet architecture at
reduced width with classifier-free guidance (fp32 and fp16), and an eps-prediction DDPM UNet
through lf.from_diffusers. Exports are cached per module; torch's exporter is the slow part
(~3 s per traced network call), so the network call is traced once per model and dtype.
"""
import os
import types

import numpy as np
import pytest
import torch
from torch import nn

import ldd_fast as lf

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from ldd_fast.export import (ExportError, OnnxSampler, artifact_files, read_metadata, schedule_tensors,  # noqa: E402
                             to_onnx, unroll)
from ldd_fast.export.onnx_export import network_bytes, op_counts  # noqa: E402
from ldd_fast.plan import fold  # noqa: E402

from test_solvers import CONFIGS, IDS  # noqa: E402
from tolerances import TOL  # noqa: E402

BATCHES = (1, 3, 64)
NFE = 5
torch.set_num_threads(1)


class SmallNet(nn.Module):
    """conv - (time [+ label] embedding) - GroupNorm - SiLU - conv: every op family of a U-Net, tiny."""

    def __init__(self, channels=1, width=8, classes=0):
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.time = nn.Linear(2, width)
        self.label = nn.Embedding(classes, width) if classes else None
        self.norm = nn.GroupNorm(2, width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, t, cond=None):
        t = t.to(self.time.weight.dtype)[:, None]  # the time embedding runs in the network's dtype
        emb = self.time(torch.cat([t.sin(), t.cos()], 1))
        if self.label is not None and cond is not None:
            emb = emb + self.label(cond)
        h = self.inp(x) + emb.to(x.dtype)[:, :, None, None]
        return self.out(nn.functional.silu(self.norm(h)))


def _randomize(net, seed):
    """Random weights, with the zero-initialised output layers of a U-Net made non-zero too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval().requires_grad_(False)


_SMALL = {}


def small_den():
    """One EDM-preconditioned SmallNet per process (so that its traced call is reused)."""
    if "den" not in _SMALL:
        torch.manual_seed(1234)
        _SMALL["den"] = lf.Denoiser(_randomize(SmallNet(), 1), lf.EDM(), prediction="edm")
    return _SMALL["den"]


def cli_model():
    """`--model test_export:cli_model` in the CLI test."""
    return small_den()


def unet_den():
    """The built-in architecture at width 16, class-conditional with guidance 2 (EDM)."""
    from ldd_fast.zoo.train import default_network_config
    from ldd_fast.zoo.unet import TinyUNet

    torch.manual_seed(4321)
    net = _randomize(TinyUNet(**default_network_config("edm", model_channels=16)), 2)
    return lf.Denoiser(net, lf.EDM(), prediction="edm", guidance_scale=2.0, null_cond=torch.tensor(net.null_class))


def diffusers_den():
    """A tiny eps-prediction DDPM UNet2DModel (1000 linear betas) through lf.from_diffusers."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(99)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    return lf.from_diffusers(_randomize(unet, 3), diffusers.DDPMScheduler(num_train_timesteps=1000))


def convs_per_call(den, z, cond=None) -> int:
    """Convolutions one network call runs, counted with forward hooks on the eager model."""
    count = [0]
    hooks = [m.register_forward_hook(lambda *a: count.__setitem__(0, count[0] + 1))
             for m in den.net.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            den.net_call(z, torch.tensor(0.5), cond)
    finally:
        for h in hooks:
            h.remove()
    return count[0]


def rel_diff(out, ref) -> float:
    return float((torch.as_tensor(out) - ref).abs().max() / ref.abs().max())


def check_structure(info, den, shape, cond=None):
    """nfe x the convolutions of one call, no control flow, the weights stored once."""
    z = torch.randn(2, *shape)
    assert info.op_counts.get("Conv", 0) == info.nfe * convs_per_call(den, z, cond)
    assert not {"Loop", "If", "Scan"} & set(info.op_counts)
    model = onnx.load(info.path, load_external_data=False)
    assert op_counts(model) == info.op_counts
    one_copy = network_bytes(den)
    if info.dtype == "float16":
        one_copy //= 2
    # Initializers: one copy of the weights plus small constants (shapes, coefficients, times).
    assert one_copy * 0.98 <= info.initializer_bytes <= one_copy + 64 * 1024
    # Tensors under 1 kB stay in the graph file (a tiny network may need no data file at all).
    data = os.path.getsize(info.data_path) if info.data_path else 0
    assert data <= one_copy + 64 * 1024 and info.file_bytes == data + os.path.getsize(info.path)
    assert os.path.getsize(info.path) < 4 * 1024 * 1024, "the graph file holds nodes, not weights"


def check_parity(runner, den, sched, shape, tol, cond_fn=None, device="cpu", **kw):
    worst = 0.0
    for batch in BATCHES:
        z = torch.randn(batch, *shape, device=device)
        cond = None if cond_fn is None else cond_fn(batch)
        with torch.no_grad():
            ref = lf.sample(den, z, sched, cond=cond, **kw)
        out = runner(z, cond)
        assert out.shape == ref.shape and out.dtype == torch.float32
        worst = max(worst, rel_diff(out, ref))
    assert worst <= tol, worst
    return worst


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


# ---------------------------------------------------------------------------------------------
# The torch module (the twin the graph is checked against, and the trace method's source)


@pytest.mark.parametrize("solver,order,variant", CONFIGS, ids=IDS)
def test_unrolled_module_matches_eager(solver, order, variant):
    den = small_den()
    sched = lf.discretize(den.noise, NFE, "edm", solver=solver)
    mod = unroll(den, sched, solver=solver, order=order, variant=variant)
    z = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        ref = lf.sample(den, z, sched, solver=solver, order=order, variant=variant)
        assert rel_diff(mod(z), ref) <= TOL["onnx_fp32"]
        swap = unroll(den, sched, solver=solver, order=order, variant=variant, schedule_as_input=True)
        tables = schedule_tensors(swap.folded)
        assert rel_diff(swap(z, tables["coef"], tables["init_scale"], tables["t_net"]), ref) <= TOL["onnx_fp32"]


# ---------------------------------------------------------------------------------------------
# Every solver: one export, batches 1, 3 and 64, structure


@pytest.mark.parametrize("solver,order,variant", CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_onnx_matches_eager_for_every_solver(solver, order, variant, dtype, folder):
    den = small_den()
    sched = lf.discretize(den.noise, NFE, "edm", solver=solver)
    info = to_onnx(den, sched, folder / f"{solver}{order}{variant}_{dtype}.onnx", torch.randn(2, 1, 8, 8),
                   solver=solver, order=order, variant=variant, dtype=dtype)
    assert info.nfe == NFE and info.inputs == ["z"]
    check_structure(info, den, (1, 8, 8))
    runner = OnnxSampler(info.path, threads=1)
    tol = TOL["onnx_fp32"] if dtype == torch.float32 else TOL["onnx_fp16"]
    check_parity(runner, den, sched, (1, 8, 8), tol, solver=solver, order=order, variant=variant)


def test_guided_unet_fp32_and_fp16(folder):
    den = unet_den()
    sched = lf.discretize(den.noise, NFE, "edm")
    labels = lambda b: torch.arange(b) % 10  # noqa: E731
    results = {}
    for dtype, tol in ((torch.float32, TOL["onnx_fp32"]), (torch.float16, TOL["onnx_fp16"])):
        info = to_onnx(den, sched, folder / f"unet_{dtype}.onnx", torch.randn(1, 1, 8, 8), solver="unipc",
                       order=3, cond=labels(1), dtype=dtype)
        assert info.inputs == ["z", "cond"] and info.conditional
        check_structure(info, den, (1, 8, 8), labels(2))
        results[dtype] = check_parity(OnnxSampler(info.path, threads=1), den, sched, (1, 8, 8), tol, labels,
                                      solver="unipc", order=3)
    assert next(den.net.parameters()).dtype == torch.float32, "the caller's model is not cast"
    # Guidance matters here (the check would be vacuous if both halves agreed).
    z = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        unguided = lf.Denoiser(den.net, den.noise, prediction="edm")
        assert rel_diff(lf.sample(unguided, z, sched, solver="unipc", cond=labels(2)),
                        lf.sample(den, z, sched, solver="unipc", cond=labels(2))) > 1e-2


def test_diffusers_eps_vp_model(folder):
    den = diffusers_den()
    sched = lf.discretize(den.noise, NFE, "logsnr")
    info = to_onnx(den, sched, folder / "ddpm.onnx", torch.randn(2, 1, 8, 8), solver="dpmpp", order=3)
    check_structure(info, den, (1, 8, 8))
    check_parity(OnnxSampler(info.path, threads=1), den, sched, (1, 8, 8), TOL["onnx_fp32"], solver="dpmpp", order=3)


def test_trace_method_is_the_same_sampler(folder):
    """torch's exporter on the whole unrolled module (the slow twin) gives the sampler the assembly gives:
    here guided, conditional, with the schedule as inputs, and passed in as an lf.Sampler-like object."""
    torch.manual_seed(5)
    den = lf.Denoiser(_randomize(SmallNet(classes=4), 4), lf.EDM(), prediction="edm", guidance_scale=3.0,
                      null_cond=torch.tensor(3))
    sched = lf.discretize(den.noise, 3, "edm")
    sampler = types.SimpleNamespace(den=den, plan=lf.plan_for(den, sched, solver="dpmpp", order=2))
    z, cond = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        ref = lf.sample(den, z, sched, solver="dpmpp", order=2, cond=cond)
    outs = []
    for method in ("trace", "compose"):
        info = to_onnx(sampler, sched, folder / f"{method}.onnx", torch.randn(2, 1, 8, 8), cond=torch.tensor([0, 1]),
                       schedule_as_input=True, method=method)
        assert info.inputs == ["z", "cond", "coef", "init_scale", "t_net"]
        assert info.metadata["solver"] == "dpmpp" and info.metadata["order"] == 2
        check_structure(info, den, (1, 8, 8), torch.tensor([0, 1]))
        outs.append(OnnxSampler(info.path, threads=1)(z, cond))
        assert rel_diff(outs[-1], ref) <= TOL["onnx_fp32"]
    assert rel_diff(outs[0], outs[1]) <= TOL["onnx_twins_fp32"]


# ---------------------------------------------------------------------------------------------
# Swapping a learned schedule in without re-exporting


def test_schedule_as_input_swaps_in_a_new_schedule(folder):
    den = small_den()
    sched = lf.discretize(den.noise, NFE, "edm")
    info = to_onnx(den, sched, folder / "swap.onnx", torch.randn(2, 1, 8, 8), solver="unipc", order=3,
                   schedule_as_input=True)
    assert info.inputs == ["z", "coef", "init_scale", "t_net"]
    runner = OnnxSampler(info.path, threads=1)
    check_parity(runner, den, sched, (1, 8, 8), TOL["onnx_fp32"], solver="unipc", order=3)
    # A "learned" schedule: other solver times and network times off the solver grid.
    other = lf.discretize(den.noise, NFE, "logsnr")
    learned = lf.Schedule(t=other.t, t_eval=other.t_eval * torch.linspace(1.0, 0.9, NFE, dtype=torch.float64),
                          noise=den.noise, solver="unipc", order=3, fingerprint=den.fingerprint())
    runner.set_schedule(den, learned)
    check_parity(runner, den, learned, (1, 8, 8), TOL["onnx_fp32"], solver="unipc", order=3)
    with pytest.raises(ValueError, match="another structure"):
        runner.set_schedule(den, lf.discretize(den.noise, NFE + 1, "edm"))
    with pytest.raises(lf.IncompatibleSchedule, match="not the model"):
        runner.set_schedule(lf.Denoiser(_randomize(SmallNet(), 5), lf.EDM(), prediction="edm"), sched)
    baked = to_onnx(den, sched, folder / "baked.onnx", torch.randn(2, 1, 8, 8), solver="unipc", order=3)
    with pytest.raises(ValueError, match="baked in"):
        OnnxSampler(baked.path).set_schedule(den, learned)


# ---------------------------------------------------------------------------------------------
# Files


def test_export_is_one_atomic_artifact(tmp_path):
    den = small_den()
    path = tmp_path / "sampler.onnx"
    first = to_onnx(den, lf.discretize(den.noise, 4, "edm"), path, torch.randn(2, 1, 8, 8), solver="euler")
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(f) for f in first.files)
    assert artifact_files(path) == first.files
    second = to_onnx(den, lf.discretize(den.noise, 6, "edm"), path, torch.randn(2, 1, 8, 8), solver="euler")
    # The new graph names its own data file; the old data file is gone and no temporary is left.
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(f) for f in second.files)
    assert first.data_path != second.data_path or first.file_bytes != second.file_bytes
    meta = read_metadata(path)
    assert meta["nfe"] == 6 and meta["solver"] == "euler" and meta["fingerprint"] == den.fingerprint()
    assert lf.Schedule.from_dict(meta["schedule"]).nfe == 6
    assert OnnxSampler(path).nfe == 6


def test_static_batch(tmp_path):
    den = small_den()
    info = to_onnx(den, lf.discretize(den.noise, 3, "edm"), tmp_path / "s.onnx", torch.randn(3, 1, 8, 8),
                   solver="euler", dynamic_batch=False)
    runner = OnnxSampler(info.path)
    assert runner.session.get_inputs()[0].shape == [3, 1, 8, 8]
    assert runner(np.random.randn(3, 1, 8, 8).astype(np.float32)).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="fixed batch of 3"):
        runner(torch.randn(2, 1, 8, 8))


# ---------------------------------------------------------------------------------------------
# Errors


def test_bad_paths_options_and_models(tmp_path):
    den = small_den()
    sched = lf.discretize(den.noise, 3, "edm")
    z = torch.randn(2, 1, 8, 8)
    with pytest.raises(FileNotFoundError, match="folder .* does not exist"):
        to_onnx(den, sched, tmp_path / "missing" / "s.onnx", z, solver="euler")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        to_onnx(den, sched, tmp_path, z, solver="euler")
    with pytest.raises(ValueError, match="opset must be an int >= 18"):
        to_onnx(den, sched, tmp_path / "s.onnx", z, solver="euler", opset=13)
    with pytest.raises(ValueError, match="method must be one of"):
        to_onnx(den, sched, tmp_path / "s.onnx", z, solver="euler", method="jit")
    with pytest.raises(ValueError, match="dtype must be"):
        to_onnx(den, sched, tmp_path / "s.onnx", z, solver="euler", dtype=torch.int8)
    with pytest.raises(TypeError, match="unknown sampler option"):
        to_onnx(den, sched, tmp_path / "s.onnx", z, solver="euler", churn=1.0)
    with pytest.raises(ValueError, match="has variants"):
        to_onnx(den, sched, tmp_path / "s.onnx", z, solver="unipc", variant="bh3")
    with pytest.raises(TypeError, match="Denoiser or an lf.Sampler"):
        to_onnx(den.net, sched, tmp_path / "s.onnx", z, solver="euler")
    with pytest.raises(ValueError, match=r"cond must be a tensor .* with one entry per sample \(2\)"):
        to_onnx(den, sched, tmp_path / "s.onnx", z, solver="euler", cond=torch.tensor([1]))
    guided = lf.Denoiser(SmallNet(classes=3), lf.EDM(), prediction="edm", guidance_scale=3.0,
                         null_cond=torch.tensor(2))
    with pytest.raises(ValueError, match="pass an example cond"):
        to_onnx(guided, sched, tmp_path / "s.onnx", z, solver="euler")
    assert not os.listdir(tmp_path), "failed exports leave nothing behind"


def test_schedule_for_another_model(tmp_path):
    den = small_den()
    other = lf.Denoiser(_randomize(SmallNet(), 7), lf.EDM(), prediction="edm")
    sched = lf.Schedule(t=lf.discretize(den.noise, 3, "edm").t, t_eval=lf.discretize(den.noise, 3, "edm").t_eval,
                        noise=den.noise, solver="euler", order=1, fingerprint=other.fingerprint())
    with pytest.raises(lf.IncompatibleSchedule, match="another model"):
        to_onnx(den, sched, tmp_path / "s.onnx", torch.randn(2, 1, 8, 8))
    vp = lf.discretize(lf.VPLinear(), 3, "logsnr")
    with pytest.raises(lf.IncompatibleSchedule, match="noise schedule"):
        to_onnx(den, vp, tmp_path / "s.onnx", torch.randn(2, 1, 8, 8), solver="euler")
    info = to_onnx(den, sched, tmp_path / "s.onnx", torch.randn(2, 1, 8, 8), force=True)
    assert info.metadata["forced"] and info.metadata["solver"] == "euler"


def test_onnx_sampler_errors(tmp_path):
    den = small_den()
    info = to_onnx(den, lf.discretize(den.noise, 3, "edm"), tmp_path / "s.onnx", torch.randn(2, 1, 8, 8),
                   solver="euler")
    runner = OnnxSampler(info.path)
    with pytest.raises(ValueError, match=r"z must have shape \[B, 1, 8, 8\]"):
        runner(torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="without a condition input"):
        runner(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    # Noise is floating point: an integer z was converted and a complex one lost its imaginary part, silently.
    for z in (torch.ones(2, 1, 8, 8, dtype=torch.int64), torch.randn(2, 1, 8, 8, dtype=torch.complex64),
              np.ones((2, 1, 8, 8), dtype=np.int32), np.ones((2, 1, 8, 8), dtype=np.complex128),
              torch.ones(2, 1, 8, 8, dtype=torch.bool)):
        with pytest.raises(lf.InvalidArgumentType, match=f"z has dtype {z.dtype}: .*floating-point noise"):
            runner(z)
    with pytest.raises(lf.InvalidArgumentType, match="z must be a torch tensor or a numpy array"):
        runner([[0.0]])
    for z in (torch.randn(2, 1, 8, 8, dtype=torch.float64), np.random.randn(2, 1, 8, 8).astype(np.float16)):
        assert torch.as_tensor(runner(z)).dtype == torch.float32  # cast to the graph's float32 state
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        OnnxSampler(tmp_path / "nope.onnx")
    plain = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), plain)
    with pytest.raises(ExportError, match="no 'ldd_fast' metadata"):
        OnnxSampler(plain)


# ---------------------------------------------------------------------------------------------
# CLI and benchmark helper


def test_cli_export(tmp_path, capsys):
    from ldd_fast.cli import main as cli_main

    def main(argv):
        return cli_main(["export", *argv])

    den = small_den()
    sched_path = tmp_path / "sched.json"
    lf.discretize(den.noise, 4, "edm").save(sched_path)
    rc = main(["--model", "test_export:cli_model", "--schedule", str(sched_path), "--solver", "unipc", "--order",
               "3", "--onnx", str(tmp_path / "out.onnx"), "--shape", "1", "8", "8", "--verify"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "unipc3, nfe 4" in out and "onnxruntime vs eager" in out
    diff = float(out.split("max|ref| = ")[1].split()[0])
    assert diff <= TOL["onnx_fp32"]
    assert read_metadata(tmp_path / "out.onnx")["nfe"] == 4
    base = {"--schedule": str(sched_path), "--onnx": str(tmp_path / "x.onnx"), "--solver": "euler"}
    for override, message in [
        ({"--model": "no_such_module:f"}, "cannot import"),
        ({"--model": "digits_unknown_zoo_name"}, "unknown --model 'digits_unknown_zoo_name'"),
        ({"--model": "test_export:cli_model", "--schedule": str(tmp_path / "missing.json")},
         "schedule file not found"),
    ]:
        rc = main([word for item in {**base, **override}.items() for word in item])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1, err
