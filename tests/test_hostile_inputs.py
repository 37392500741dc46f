"""Hostile and careless input (issue 9): each class of the probe, several cases each.

1. no code runs from a data file (a pickle payload planted at every load site);
2. corrupt or foreign state files fail with a named error, and a refused resume writes nothing;
3. validated state cannot be bypassed (Schedule, noise schedules, the Denoiser's guidance);
4. no silent NaN and no silent broadcast; the same bad condition fails the same way everywhere;
5. the command line: one line, exit status 2, the argument or file named, in the CLI's words;
6. atomic writes: a failed or killed write never costs the old file; exported artifacts are verified.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import ldd_fast as lf
from ldd_fast import io as lf_io
from ldd_fast.cli import main
from ldd_fast.io import atomic_write_text, load_state, save_state
from ldd_fast.learn import CHECKPOINT, LD3Config, OLD_FILES, TEACHER_FILE, learn
from ldd_fast.teacher import TeacherData, TeacherSpec

from test_learn import mixture_model

QUICK = LD3Config(rounds_xi=1, rounds_both=1)
TINY_RUN = dict(solver="unipc", order=3, nfe=3, shape=(2, 4, 4), n_train=2, n_valid=2, config=QUICK,
                teacher=TeacherSpec(nfe=4), show_progress=False)
pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this calls open(marker, "w"): the marker file exists iff a loader ran pickled code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant(path, marker) -> None:
    """A torch.save file (what the old formats were) whose unpickling runs code."""
    torch.save({"z": Payload(marker), "y": Payload(marker), "round": Payload(marker)}, path)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    if code != 0:
        assert len(out.err.strip().splitlines()) == 1, out.err
    return code, out.out, out.err


def labelled_model():
    """A class-conditional network with 4 labels (`--model test_hostile_inputs:labelled_model`)."""
    from test_export import SmallNet, _randomize

    torch.manual_seed(5)
    den = lf.Denoiser(_randomize(SmallNet(classes=4), 6), lf.EDM(), prediction="edm", num_classes=4,
                      sample_shape=(1, 8, 8))
    return den


def needs_arguments(width):
    """Not a factory of the CLI's kind: it takes an argument."""
    return mixture_model()


def cli_mixture():
    den = mixture_model()
    return lf.Denoiser(den.net, den.noise, prediction="x0", time_input="sigma", sample_shape=(2, 4, 4))


# ----- 1. no code runs from a data file -------------------------------------------------------------

def _trainer_for_checkpoints():
    from ldd_fast.zoo.train import Trainer

    cfg = dict(model_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], head_channels=8)
    return Trainer("edm", torch.randn(8, 1, 8, 8), torch.arange(8) % 10, net_config={**cfg, "embedding_type":
                                                                                       "positional"}, batch_size=4)


SITES = {
    "teacher file": lambda p, tmp: TeacherData.load(p),
    "LD3 teacher cache": lambda p, tmp: learn(mixture_model(), out=str(tmp), **TINY_RUN),
    "LD3 checkpoint": lambda p, tmp: learn(mixture_model(), out=str(tmp), resume=True, **TINY_RUN),
    "quality reference cache": lambda p, tmp: __import__("ldd_fast.quality", fromlist=["x"]).reference(
        cli_mixture(), "m", 4, str(tmp)),
    "quality cell cache": lambda p, tmp: __import__("ldd_fast.quality", fromlist=["x"])._load_cell(str(tmp), "k", 4),
    "zoo training checkpoint": lambda p, tmp: _trainer_for_checkpoints().load_checkpoint(str(p)),
    "schedule file": lambda p, tmp: lf.Schedule.load(p),
}
SITE_FILES = {"teacher file": "t.safetensors", "LD3 teacher cache": TEACHER_FILE, "LD3 checkpoint": CHECKPOINT,
              "quality reference cache": "m_reference_4.safetensors", "quality cell cache": "k.safetensors",
              "zoo training checkpoint": "run.ckpt", "schedule file": "s.json"}


@pytest.mark.parametrize("site", sorted(SITES))
def test_a_planted_pickle_never_runs(site, tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / SITE_FILES[site]
    plant(path, marker)
    with pytest.raises(lf.LddFastError, match=str(path)):
        SITES[site](path, tmp_path)
    assert not marker.exists()


def test_old_pickle_files_in_a_work_folder_are_never_read(tmp_path):
    marker = tmp_path / "PWNED"
    for name in OLD_FILES:
        plant(tmp_path / name, marker)
    with pytest.warns(UserWarning, match="never read"):
        res = learn(mixture_model(), out=str(tmp_path), **TINY_RUN)
    assert res.schedule.nfe == 3 and not marker.exists()


def test_onnx_and_cli_load_sites_refuse_a_pickle(tmp_path, capsys):
    pytest.importorskip("onnx")
    from ldd_fast.export import ExportError, read_metadata

    marker = tmp_path / "PWNED"
    plant(tmp_path / "s.onnx", marker)
    with pytest.raises(ExportError, match="not a readable ONNX file"):
        read_metadata(tmp_path / "s.onnx")
    (tmp_path / "work").mkdir()
    plant(tmp_path / "work" / CHECKPOINT, marker)
    code, _, err = run_cli(capsys, "learn", "--model", "test_hostile_inputs:cli_mixture", "--nfe", "3", "--out",
                           tmp_path / "s.json", "--work-dir", tmp_path / "work", "--resume")
    assert code == 2 and "not an ldd-fast state file" in err and CHECKPOINT in err
    assert not marker.exists()


def test_a_diffusers_folder_is_loaded_from_safetensors_only(tmp_path, capsys):
    pytest.importorskip("diffusers")
    import tiny_pipelines as tp

    folder = tmp_path / "model"
    tp.unet_folder(folder)
    code, _, _ = run_cli(capsys, "sample", "--model", folder, "--nfe", "2", "-n", "1", "--out", tmp_path / "x.pt")
    assert code == 0
    marker = tmp_path / "PWNED"
    os.remove(folder / "unet" / "diffusion_pytorch_model.safetensors")
    plant(folder / "unet" / "diffusion_pytorch_model.bin", marker)  # a pickled checkpoint in its place
    code, _, err = run_cli(capsys, "sample", "--model", folder, "--nfe", "2", "-n", "1", "--out", tmp_path / "y.pt")
    assert code == 2 and "safetensors weights only" in err and not marker.exists()
    # A corrupt safetensors file: one line naming the folder.
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    code, _, err = run_cli(capsys, "sample", "--model", folder, "--nfe", "2", "-n", "1", "--out", tmp_path / "y.pt")
    assert code == 2 and "cannot load the UNet2DModel weights" in err
    # A config naming some other diffusers class is refused before anything is imported from it.
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**cfg, "_class_name": "StableDiffusionPipeline"}))
    code, _, err = run_cli(capsys, "sample", "--model", folder, "--nfe", "2", "-n", "1", "--out", tmp_path / "y.pt")
    assert code == 2 and "loads only UNet2DModel, UNet2DConditionModel" in err


# ----- 2. corrupt or foreign state files ------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    learn(mixture_model(), out=str(out), **TINY_RUN)
    return out


def _damaged(kind: str, good: bytes):
    return {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "header only": good[:8],
        "garbage": os.urandom(64),
        "huge header length": (2**62).to_bytes(8, "little") + good[8:],
        "json, not a state file": b'{"z": [1, 2, 3]}',
    }[kind]


@pytest.mark.parametrize("kind", ["empty", "truncated", "header only", "garbage", "huge header length",
                                  "json, not a state file"])
@pytest.mark.parametrize("name", [TEACHER_FILE, CHECKPOINT])
def test_corrupt_state_files_name_the_file(finished_run, tmp_path, name, kind):
    path = tmp_path / name
    path.write_bytes(_damaged(kind, (finished_run / name).read_bytes()))
    loader = TeacherData.load if name == TEACHER_FILE else (lambda p: learn(mixture_model(), out=str(tmp_path),
                                                                             resume=True, **TINY_RUN))
    with pytest.raises(lf.StateFileError, match=str(path)):
        loader(path)


@pytest.mark.parametrize("change, field", [
    (lambda d: d.pop("y"), "field 'y': missing"),
    (lambda d: d.update(y=d["y"][:, :1]), "field 'y': expected shape"),
    (lambda d: d.update(z=d["z"].to(torch.int64)), "field 'z': expected a floating-point tensor"),
    (lambda d: d.update(y=d["y"] * float("nan")), "field 'y': holds NaN or inf"),
    (lambda d: d["info"].update(n=99), "field 'info': says n=99"),
    (lambda d: d.update(cond=torch.zeros(1)), "field 'cond': expected one condition per pair"),
    (lambda d: d.update(info=[1, 2]), "field 'info': expected dict"),
])
def test_a_teacher_file_of_the_wrong_structure_names_the_field(finished_run, tmp_path, change, field):
    tree = load_state(finished_run / TEACHER_FILE, "teacher pairs")
    change(tree)
    save_state(tmp_path / "t.safetensors", "teacher pairs", tree)
    with pytest.raises(lf.StateFileError, match=field):
        TeacherData.load(tmp_path / "t.safetensors")
    save_state(tmp_path / "other.safetensors", "quality cell", tree)  # a state file of another kind
    with pytest.raises(lf.StateFileError, match="holds a 'quality cell', not a 'teacher pairs'"):
        TeacherData.load(tmp_path / "other.safetensors")


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(z_train=d["z_train"][:1]), "field 'z_train': expected shape"),
    (lambda d: d.update(round=99), "field 'round': 99 is outside"),
    (lambda d: d["params"].update(xi=torch.zeros(7, dtype=torch.float64)), "field 'xi': expected shape"),
    (lambda d: d["best"].update(xi_c=torch.full((2,), float("inf"), dtype=torch.float64)), "holds NaN or inf"),
    (lambda d: d.update(history=[]), "field 'history'"),
    (lambda d: d["opt_xi"]["state"][0].update(square_avg=torch.zeros(9, dtype=torch.float64)), "optimizer state"),
    (lambda d: d["identity"].update(nfe=7), "belongs to another run"),
])
def test_a_checkpoint_of_the_wrong_structure_names_the_field(finished_run, tmp_path, change, field):
    tree = load_state(finished_run / CHECKPOINT, "LD3 checkpoint")
    change(tree)
    save_state(tmp_path / CHECKPOINT, "LD3 checkpoint", tree)
    (tmp_path / TEACHER_FILE).write_bytes((finished_run / TEACHER_FILE).read_bytes())
    with pytest.raises(lf.StateFileError, match=field):
        learn(mixture_model(), out=str(tmp_path), resume=True, **TINY_RUN)


def test_a_refused_resume_writes_nothing(finished_run, tmp_path):
    for name in os.listdir(finished_run):
        if os.path.isfile(finished_run / name):
            (tmp_path / name).write_bytes((finished_run / name).read_bytes())
    before = {n: ((tmp_path / n).read_bytes(), os.stat(tmp_path / n).st_mtime_ns) for n in os.listdir(tmp_path)}
    other_teacher = {**TINY_RUN, "teacher": TeacherSpec(nfe=5)}  # another run: its teacher pairs differ
    for kw in ({**TINY_RUN, "loss": "l1"}, other_teacher):
        with pytest.raises(lf.StateFileError, match="belongs to another run"):
            learn(mixture_model(), out=str(tmp_path), resume=True, **kw)
    after = {n: ((tmp_path / n).read_bytes(), os.stat(tmp_path / n).st_mtime_ns) for n in os.listdir(tmp_path)}
    assert after == before


def test_a_quality_cells_file_with_a_broken_line_names_the_line(tmp_path):
    from ldd_fast.quality import read_cells

    (tmp_path / "cells.jsonl").write_text('{"key": "a", "n": 1}\n{"key": "b", "n\n')
    with pytest.raises(lf.StateFileError, match="line 2"):
        read_cells(str(tmp_path / "cells.jsonl"))


# ----- 3. validated state cannot be bypassed --------------------------------------------------------

DECISIVE = ("t", "t_eval", "noise", "final", "solver", "order", "variant", "lower_order_final", "guidance_scale",
            "fingerprint")


def test_a_schedule_cannot_change_after_validation():
    s = lf.discretize(lf.EDM(), 4, "edm").replace(solver="unipc", order=3)
    for name in DECISIVE + ("metrics", "info", "origin"):
        with pytest.raises(AttributeError, match="replace"):
            setattr(s, name, getattr(s, name))
    t = s.t
    t.mul_(1000)
    s.t_eval[2] = float("nan")
    assert torch.equal(s.t, lf.discretize(lf.EDM(), 4, "edm").t) and torch.isfinite(s.t_eval).all()
    with pytest.raises(lf.ScheduleError, match="outside the noise schedule's range"):
        s.replace(t=t)
    with pytest.raises(lf.ScheduleError, match="unknown Schedule field"):
        s.replace(steps=3)
    with pytest.raises(AttributeError, match="cannot change"):
        s.noise.t_max = 1e6


@pytest.mark.parametrize("field, value, match", [
    ("lower_order_final", "false", "expected true / false"),
    ("lower_order_final", 0, "expected true / false"),
    ("order", 3.0, "expected an integer"),
    ("order", True, "expected an integer"),
    ("metrics", [1, 2], "expected a JSON object"),
    ("info", {"a": {1: 2}}, "keys must be strings"),
    ("fingerprint", 123, "expected a sha256"),
    ("fingerprint", "ab", "64 lowercase hex"),
    ("guidance_scale", float("nan"), "must be finite"),
    ("guidance_scale", "2", "must be a number"),
    ("t", [80.0, 10**400, 0.002], "too large for a float"),
    ("t_eval", [80.0, True], "must be a number"),
    ("final", ["zero"], "field 'final'"),
    ("origin", 5, "field 'origin'"),
    ("variant", "bh3", "variants"),
])
def test_every_field_is_type_checked(field, value, match):
    d = lf.discretize(lf.EDM(), 2, "edm").to_dict()
    d.update(solver="unipc", order=3)
    d[field] = value
    with pytest.raises(lf.ScheduleError, match=match):
        lf.Schedule.from_dict(d)


@pytest.mark.parametrize("noise, match", [
    ({"type": "EDM", "sigma_min": 1.0, "sigma_max": 1.0}, "0 < t_min < t_max"),
    ({"type": "EDM", "sigma_min": 1e-300, "sigma_max": 80.0}, "log-SNR"),
    ({"type": "EDM", "sigma_min": 0.002, "sigma_max": float("inf")}, "must be finite"),
    ({"type": "EDM", "sigma_min": 0.002, "sigma_max": 10**400}, "too large"),
    ({"type": "EDM", "sigma_min": 0.002}, "missing"),
    ({"type": "EDM", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7}, "unknown parameter"),
    ({"type": "VPLinear", "beta_min": 0.1, "beta_max": 1e308, "t_min": 1e-3, "t_max": 1.0}, "log-SNR"),
    ({"type": "VPLinear", "beta_min": 5.0, "beta_max": 5.0, "t_min": 1e-3, "t_max": 1.0}, "beta_min < beta_max"),
    ({"type": "VPCosine", "s": -1.0, "t_min": 1e-3, "t_max": 0.9946}, ">= 0"),
    ({"type": "VPDiscrete", "alphas_cumprod": [0.9, 0.95], "t_min": 0.5, "t_max": 1.0}, "strictly decreasing"),
    ({"type": "VPDiscrete", "alphas_cumprod": [0.9, 0.5], "t_min": 0.5, "t_max": 1.0, "sha256": "0" * 16},
     "does not match its sha256"),
    ({"type": ["EDM"]}, "unknown noise schedule"),
])
def test_degenerate_noise_parameters_are_named(noise, match):
    d = lf.discretize(lf.EDM(), 2, "edm").to_dict()
    d["noise"] = noise
    with pytest.raises(lf.ScheduleError, match=match):
        lf.Schedule.from_dict(d)


def test_metadata_stays_free_but_json(tmp_path):
    s = lf.discretize(lf.EDM(), 3, "edm")
    s.metrics["rmse"] = 0.1  # code may add results
    s.save(tmp_path / "s.json")
    s.info["oops"] = {1, 2}
    with pytest.raises(lf.ScheduleError, match="field 'info'"):
        s.save(tmp_path / "s.json")
    assert lf.Schedule.load(tmp_path / "s.json").metrics == {"rmse": 0.1}


def test_the_denoisers_guidance_is_fixed_and_validated():
    den = mixture_model()
    with pytest.raises(AttributeError, match="with_guidance"):
        den.guidance_scale = 3.0
    with pytest.raises(AttributeError, match="with_guidance"):
        den.null_cond = torch.tensor(0)
    with pytest.raises(ValueError, match="needs null_cond"):
        den.with_guidance(2.0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(lf.LddFastError, match="guidance_scale must be finite"):
            lf.Denoiser(den.net, den.noise, guidance_scale=bad, null_cond=torch.tensor(0))
        with pytest.raises(lf.LddFastError, match="sigma_data must be finite"):
            lf.Denoiser(den.net, den.noise, prediction="edm", sigma_data=bad)
    labelled = labelled_model()
    guided = labelled.with_guidance(2.0, null_cond=torch.tensor(3))
    assert guided.guidance_scale == 2.0 and guided.net is labelled.net and guided.sample_shape == (1, 8, 8)
    null = guided.null_cond
    null += 1
    assert int(guided.null_cond) == 3
    with pytest.raises(lf.ConditionError, match="null_cond holds class label 4"):
        labelled.with_guidance(2.0, null_cond=torch.tensor(4))


# ----- 4. no silent NaN, no silent broadcast ---------------------------------------------------------

class WrongShape(nn.Module):
    def forward(self, x, t):
        return x.mean(0, keepdim=True)  # broadcastable, wrong


class Exploding(nn.Module):
    def forward(self, x, t):
        return x * float("nan")


def test_force_never_returns_nan():
    den = mixture_model(lf.VPLinear())
    foreign = lf.discretize(lf.EDM(), 3, "edm")  # EDM times (up to 80) on a VP model (t <= 1)
    with pytest.raises(lf.IncompatibleSchedule, match="noise schedule"):
        lf.sample(den, torch.randn(2, 2, 4, 4), foreign, solver="euler")
    with pytest.raises(lf.IncompatibleSchedule, match="even with force=True.*outside the noise schedule's range"):
        lf.sample(den, torch.randn(2, 2, 4, 4), foreign, solver="euler", force=True)


@pytest.mark.parametrize("backend", ["eager", "sampler"])
def test_a_network_of_the_wrong_output_shape_is_an_error(backend):
    den = lf.Denoiser(WrongShape(), lf.EDM(), prediction="x0")
    sched = lf.discretize(den.noise, 3, "edm")
    z = torch.randn(3, 1, 4, 4)
    with pytest.raises(ValueError, match=r"returned shape \(1, 1, 4, 4\) for an input of shape \(3, 1, 4, 4\)"):
        lf.sample(den, z, sched, solver="euler") if backend == "eager" else \
            lf.Sampler(den, sched, solver="euler")(z)


def test_non_finite_samples_raise_in_sample_and_on_request_in_sampler():
    den = mixture_model()
    sched = lf.discretize(den.noise, 3, "edm")
    z = torch.randn(2, 2, 4, 4)
    z[1, 0, 0, 0] = float("nan")
    with pytest.raises(lf.NonFiniteSample, match="the noise z holds NaN or inf in 1 of 2 samples"):
        lf.sample(den, z, sched, solver="unipc")
    bad = lf.Denoiser(Exploding(), den.noise, prediction="x0")
    with pytest.raises(lf.NonFiniteSample, match=r"the sample \(unipc3, nfe 3\) holds NaN"):
        lf.sample(bad, torch.randn(2, 2, 4, 4), sched, solver="unipc")
    # The Sampler stays free of host syncs by default (documented) and checks on request.
    assert torch.isnan(lf.Sampler(bad, sched, solver="unipc")(torch.randn(2, 2, 4, 4))).all()
    with pytest.raises(lf.NonFiniteSample, match="backend eager"):
        lf.Sampler(bad, sched, solver="unipc", check_finite=True)(torch.randn(2, 2, 4, 4))
    with pytest.raises(lf.NonFiniteSample, match="the noise z"):
        lf.Sampler(den, sched, solver="unipc", check_finite=True)(z)


def test_the_same_bad_label_fails_the_same_way_everywhere(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from ldd_fast.export import OnnxSampler, to_onnx

    den = labelled_model()
    sched = lf.discretize(den.noise, 2, "edm")
    z, bad = torch.randn(2, 1, 8, 8), torch.tensor([1, 7])
    message = "holds class label 7, outside this model's labels 0..3"
    with pytest.raises(lf.ConditionError, match="cond " + message):
        lf.sample(den, z, sched, solver="euler", cond=bad)
    with pytest.raises(lf.ConditionError, match="cond " + message):
        lf.Sampler(den, sched, solver="euler")(z, bad)
    to_onnx(den, sched, tmp_path / "s.onnx", z, solver="euler", cond=torch.tensor([0, 1]))
    runner = OnnxSampler(tmp_path / "s.onnx")
    with pytest.raises(lf.ConditionError, match="cond " + message):
        runner(z, bad)
    with pytest.raises(lf.ConditionError, match="cond " + message):
        runner(z.numpy(), bad.numpy())  # numpy inputs are checked alike
    with pytest.raises(lf.ConditionError, match="cond must be integer class labels"):
        runner(z, torch.tensor([0.5, 1.0]))
    assert torch.allclose(runner(z, torch.tensor([0, 3])), lf.sample(den, z, sched, solver="euler",
                                                                       cond=torch.tensor([0, 3])), atol=1e-4)
    code, _, err = run_cli(capsys, "sample", "--model", "test_hostile_inputs:labelled_model", "--nfe", "2",
                           "--label", "7", "-n", "2", "--out", tmp_path / "x.pt")
    assert code == 2 and "--label " + message in err


# ----- 5. the command line ------------------------------------------------------------------------------

def test_cli_errors_name_the_argument_or_file(tmp_path, capsys):
    sched = tmp_path / "huge.json"
    d = lf.discretize(lf.EDM(), 2, "edm").to_dict()
    sched.write_text(json.dumps(d).replace('"sigma_max": 80.0', '"sigma_max": 1e999'))
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "a_file").write_text("x")
    model = ["--model", "test_hostile_inputs:cli_mixture"]
    cases = [
        (["sample", *model, "--schedule", sched, "--out", tmp_path / "x.pt"], [str(sched), "sigma_max must be finite"]),
        (["sample", "--model", "os:sep", "--nfe", "2"], ["--model os:sep", "not a factory"]),
        (["sample", "--model", "test_hostile_inputs:needs_arguments", "--nfe", "2"], ["the factory failed"]),
        (["sample", "--model", "test_hostile_inputs:Payload", "--nfe", "2"], ["the factory failed"]),
        (["sample", *model, "--schedule", tmp_path / "folder.json"], ["is a folder"]),
        (["sample", *model, "--nfe", "2", "--out", tmp_path / "no" / "x.png"], ["--out", "does not exist"]),
        (["sample", *model, "--nfe", "2", "--out", tmp_path / "a_file" / "x.png"], ["--out", "does not exist"]),
        (["sample", *model, "--nfe", "2", "--out", tmp_path / "x.jpg"], ["--out", ".png", ".pt"]),
        (["sample", *model, "--nfe", "2", "--guidance", "2"], ["--guidance needs --label"]),
        (["sample", *model, "--nfe", "2", "--guidance", "nan", "--label", "1"], ["--guidance", "must be finite"]),
        (["sample", *model, "--nfe", "0"], ["--nfe", "must be >= 1"]),
        (["sample", *model, "-n", "-3"], ["-n", "must be >= 1"]),
        (["sample", *model, "--nfe", "2", "--label", "1"], ["--label needs a model conditioned on class labels"]),
        (["learn", *model, "--nfe", "2", "--out", tmp_path / "folder.json"], ["--out", "is a directory"]),
        (["learn", *model, "--nfe", "2", "--out", tmp_path / "s.txt"], ["--out", ".json"]),
        (["learn", *model, "--nfe", "2", "--out", tmp_path / "s.json", "--work-dir", tmp_path / "a_file"],
         ["--work-dir", "not a folder"]),
        (["learn", *model, "--nfe", "2", "--out", tmp_path / "s.json", "--init", tmp_path / "missing.json"],
         ["schedule file not found"]),
        (["export", *model, "--schedule", sched, "--onnx", tmp_path / "s.onnx", "--static-batch", "0"],
         ["--static-batch", "must be >= 1"]),
        (["export", *model, "--schedule", sched, "--onnx", tmp_path / "s.onnx", "--workspace", "64"],
         ["--workspace needs --tensorrt", "TensorRT build"]),
        (["quality", "--heun-nfe", "4"], ["--heun-nfe takes odd values"]),
        (["demo", "--out", tmp_path / "a_file"], ["--out", "not a folder"]),
        (["nope"], ["invalid choice"]),
    ]
    for argv, words in cases:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, (argv, err)
        for w in words:
            assert w in err, (argv, err)
    assert not (tmp_path / "s_ld3").exists(), "learn checked its outputs before starting work"


def test_cli_messages_speak_cli(tmp_path, capsys):
    other = lf.discretize(lf.EDM(), 2, "edm").replace(solver="euler", fingerprint="ab" * 32)
    other.save(tmp_path / "s.json")
    code, _, err = run_cli(capsys, "sample", "--model", "test_hostile_inputs:cli_mixture", "--schedule",
                           tmp_path / "s.json", "-n", "1", "--out", tmp_path / "x.pt")
    assert code == 2 and "pass --force" in err and "force=True" not in err
    code, _, err = run_cli(capsys, "sample", "--model", "test_hostile_inputs:cli_mixture", "--schedule",
                           tmp_path / "s.json", "-n", "1", "--out", tmp_path / "x.pt", "--force")
    assert code == 0


def test_an_internal_error_is_one_line_with_exit_status_1(monkeypatch, capsys):
    import ldd_fast.cli.demo as demo

    monkeypatch.setattr(demo, "run", lambda args: {}["boom"])
    code, _, err = run_cli(capsys, "demo")
    assert code == 1 and "internal error KeyError" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("LDD_FAST_TRACEBACK", "1")
    with pytest.raises(KeyError):
        run_cli(capsys, "demo")


# ----- 6. atomic writes and verified artifacts --------------------------------------------------------

def test_a_failed_sample_write_keeps_the_old_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "x.pt"
    out.write_bytes(b"the user's good file")

    def broken_save(obj, path):
        with open(path, "wb") as f:
            f.write(b"half a tensor")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(torch, "save", broken_save)
    code, _, err = run_cli(capsys, "sample", "--model", "test_hostile_inputs:cli_mixture", "--nfe", "2", "-n", "1",
                           "--out", out)
    assert code == 2 and "No space left on device" in err
    assert out.read_bytes() == b"the user's good file" and os.listdir(tmp_path) == ["x.pt"]


WRITER = textwrap.dedent("""
    import sys, time
    from ldd_fast.io import atomic_write
    def slow(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
    atomic_write(sys.argv[1], slow)
""")


def _writer(path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"writing"
    return proc


def test_a_write_killed_midway_costs_nothing(tmp_path):
    target = tmp_path / "s.json"
    good = lf.discretize(lf.EDM(), 2, "edm")
    good.save(target)
    proc = _writer(target)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    temps = [n for n in os.listdir(tmp_path) if n != "s.json"]
    assert len(temps) == 1 and temps[0].startswith(".s.json.") and temps[0].endswith(".tmp")
    assert lf.Schedule.load(target) == good, "the target is the old file; the leftover is ignored"
    good.save(target)  # a young leftover might be a write in progress: it stays
    assert temps[0] in os.listdir(tmp_path)
    old = time.time() - 2 * lf_io.STALE_AFTER_S
    os.utime(tmp_path / temps[0], (old, old))
    good.save(target)  # unlocked and old: provably stale, removed
    assert os.listdir(tmp_path) == ["s.json"]


def test_a_write_in_progress_is_never_removed(tmp_path):
    target = tmp_path / "s.json"
    proc = _writer(target)  # holds the lock on its temp
    try:
        (temp,) = [n for n in os.listdir(tmp_path)]
        old = time.time() - 2 * lf_io.STALE_AFTER_S
        os.utime(tmp_path / temp, (old, old))
        atomic_write_text(target, "{}")
        assert temp in os.listdir(tmp_path), "another process's write in progress was removed"
    finally:
        proc.kill()
        proc.wait()


_WIDE = {}


def wide_den():
    """A network with weights above the external-data threshold, so that the export has a data file."""
    from test_export import SmallNet, _randomize

    if "den" not in _WIDE:
        torch.manual_seed(7)
        _WIDE["den"] = lf.Denoiser(_randomize(SmallNet(width=32), 8), lf.EDM(), prediction="edm")
    return _WIDE["den"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from ldd_fast.export import to_onnx

    folder = tmp_path_factory.mktemp("export")
    den = wide_den()
    info = to_onnx(den, lf.discretize(den.noise, 2, "edm"), folder / "s.onnx", torch.randn(1, 1, 8, 8), solver="euler")
    return folder, info


def _copy_artifact(exported, tmp_path):
    folder, info = exported
    for p in (info.path, info.data_path):
        (tmp_path / os.path.basename(p)).write_bytes(open(p, "rb").read())
    return tmp_path / "s.onnx", tmp_path / os.path.basename(info.data_path)


def test_a_data_file_of_the_right_size_but_wrong_content_is_refused(exported, tmp_path, monkeypatch):
    from ldd_fast.export import ExportError, OnnxSampler, onnx_export

    graph, data = _copy_artifact(exported, tmp_path)
    OnnxSampler(graph)
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(ExportError, match="sha256 differs"):
        OnnxSampler(graph)
    monkeypatch.setattr(onnx_export, "HASH_ON_LOAD_BYTES", 0)  # a multi-GB file: size only on load ...
    OnnxSampler(graph)
    with pytest.raises(ExportError, match="sha256 differs"):  # ... and the full check on request
        OnnxSampler(graph, verify=True)
    data.write_bytes(bytes(blob[:-4]))
    with pytest.raises(ExportError, match="truncated or replaced"):
        OnnxSampler(graph)
    os.remove(data)
    with pytest.raises(ExportError, match="data file of .* is missing"):
        OnnxSampler(graph)


def test_an_export_that_fails_late_leaves_the_old_artifact(exported, tmp_path, monkeypatch):
    from ldd_fast.export import OnnxSampler, artifact_files, to_onnx

    graph, data = _copy_artifact(exported, tmp_path)
    before = sorted(os.listdir(tmp_path))
    real_replace = os.replace

    def fail_on_graph(src, dst):
        if os.path.abspath(dst) == str(graph):
            raise OSError(5, "Input/output error", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_graph)
    den = wide_den()
    with pytest.raises(OSError, match="Input/output error"):
        to_onnx(den, lf.discretize(den.noise, 3, "edm"), graph, torch.randn(1, 1, 8, 8), solver="euler")
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(os.listdir(tmp_path)) == before, "no new data file, no temp folder"
    assert artifact_files(graph) == [str(graph), str(data)] and OnnxSampler(graph).nfe == 2
