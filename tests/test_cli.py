"""The `ldd-fast` command line, end to end on tiny settings."""
import json
import subprocess
import sys

import pytest
import torch

import ldd_fast as lf
from ldd_fast.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_model():
    """A module:factory model for --model (an exact Gaussian-mixture denoiser)."""
    from ldd_fast.analytic import GaussianMixture

    noise = lf.EDM()
    net = GaussianMixture(noise, torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)), 0.2)
    den = lf.Denoiser(net, noise, prediction="x0", time_input="sigma")
    den.sample_shape = (1, 4, 4)
    return den


def test_help_is_there_for_a_newcomer():
    out = subprocess.run([sys.executable, "-m", "ldd_fast.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo" in out.stdout and "learn" in out.stdout and "sample" in out.stdout


def test_sample_writes_a_grid(tmp_path, capsys):
    path = tmp_path / "grid.png"
    code, out, err = run(capsys, "sample", "--model", "digits", "--solver", "unipc", "--order", "3", "--nfe", "4",
                         "--schedule", "edm", "-n", "4", "--out", str(path))
    assert code == 0, err
    assert path.stat().st_size > 100 and "4 samples" in out


def test_learn_then_sample_with_the_learned_schedule(tmp_path, capsys):
    sched = tmp_path / "s.json"
    code, out, err = run(capsys, "learn", "--model", "test_cli:tiny_model", "--solver", "dpmpp", "--order", "2",
                         "--nfe", "3", "--out", str(sched), "--n-train", "2", "--n-valid", "2", "--teacher-nfe", "6")
    assert code == 0, err
    assert json.loads(sched.read_text())["origin"] == "ld3"
    code, out, err = run(capsys, "sample", "--model", "test_cli:tiny_model", "--schedule", str(sched),
                         "-n", "2", "--out", str(tmp_path / "x.pt"))
    assert code == 0, err
    assert torch.load(tmp_path / "x.pt").shape == (2, 1, 4, 4)
    # the same schedule with another model: one clear line, no traceback
    code, out, err = run(capsys, "sample", "--model", "digits", "--schedule", str(sched), "-n", "2",
                         "--out", str(tmp_path / "y.png"))
    assert code == 2 and "made for" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_learn_coefficients_writes_a_learned_solver(tmp_path, capsys):
    sched = tmp_path / "s.json"
    code, out, err = run(capsys, "learn", "--model", "test_cli:tiny_model", "--solver", "unipc", "--nfe", "3",
                         "--out", str(sched), "--n-train", "2", "--n-valid", "2", "--teacher-nfe", "6",
                         "--coefficients")
    assert code == 0, err
    d = json.loads(sched.read_text())
    # a bare --coefficients is the form that measured best at NFE <= 4: generalized, schedule format 3 (issue 22)
    assert d["format_version"] == 3 and d["origin"] == "ld3+coefficients" and d["coefficient_form"] == "generalized"
    assert "LD3's times alone" in out
    code, out, err = run(capsys, "sample", "--model", "test_cli:tiny_model", "--schedule", str(sched),
                         "-n", "2", "--out", str(tmp_path / "x.pt"))
    assert code == 0, err
    code, out, err = run(capsys, "sample", "--model", "test_cli:tiny_model", "--schedule", str(sched),
                         "--order", "2", "-n", "2", "--out", str(tmp_path / "y.pt"), "--force")
    assert code == 2 and "even with force" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["sample", "--schedule", "missing.json", "-n", "2"], "schedule file not found"),
    (["sample", "--model", "nope", "-n", "2", "--nfe", "4"], "unknown --model"),
    (["sample", "--model", "no.such.module:f", "--nfe", "4"], "cannot import"),
    (["sample", "--device", "cuda:7", "-n", "2"], "--device"),
    (["sample", "--threads", "0"], "--threads"),
    (["sample", "--solver", "heun", "--nfe", "4", "--schedule", "edm"], "odd nfe"),
    (["sample", "--nfe", "4", "--label", "12"], "--label"),
])
def test_bad_arguments_give_one_clear_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_unknown_solver_is_refused_by_the_parser(capsys):
    code, out, err = run(capsys, "sample", "--solver", "rk4")
    assert code == 2 and "invalid choice" in err and len(err.strip().splitlines()) == 1


def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "--quick", "--out", str(tmp_path))
    assert code == 0, err
    assert (tmp_path / "results.md").exists() and (tmp_path / "unipc3_nfe4_ld3.json").exists()
    assert "LD3 RMSE" in out and "x floor" in out


def test_sample_without_schedule_or_nfe_uses_the_documented_default(tmp_path, capsys):
    code, out, err = run(capsys, "sample", "-n", "2", "--out", str(tmp_path / "x.pt"), "--threads", "1")
    assert code == 0, err
    assert "nfe=6 (discretize:logsnr)" in out
    x = torch.load(tmp_path / "x.pt")
    assert x.shape == (2, 1, 8, 8)


def test_karras_is_the_edm_schedule(tmp_path, capsys):
    den = lf.zoo.load("digits")
    a, b = lf.discretize(den.noise, 5, "karras"), lf.discretize(den.noise, 5, "edm")
    assert torch.equal(a.t, b.t) and a.info == b.info
    code, out, err = run(capsys, "sample", "--schedule", "karras", "--nfe", "4", "-n", "2",
                         "--out", str(tmp_path / "k.pt"))
    assert code == 0 and "discretize:edm" in out, err


def test_every_computing_command_takes_threads_and_device_and_shows_its_defaults():
    import argparse

    from ldd_fast.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {"sample", "learn", "quality", "bench", "plan", "export", "serve", "demo"}
    for name, sub in commands.items():
        if name == "serve":  # computes nothing itself: the models run inside Triton (export --instance-threads)
            assert "--threads" not in {f for a in sub._actions for f in a.option_strings}
            continue
        flags = {f for a in sub._actions for f in a.option_strings}
        assert {"--threads", "--device"} <= flags, name
        text = sub.format_help()
        for a in sub._actions:
            if not a.option_strings or a.help == argparse.SUPPRESS or isinstance(a, argparse._HelpAction):
                continue
            assert a.help, f"{name} {a.option_strings} has no help"
            if a.default is not None and a.default is not False:
                assert "default" in a.help or f"(default: {a.default}" in " ".join(text.split()), \
                    f"{name} {a.option_strings}: default {a.default!r} not shown"


def test_threads_default_is_said_and_restored(tmp_path, capsys):
    before = torch.get_num_threads()
    code, out, err = run(capsys, "sample", "-n", "2", "--nfe", "2", "--out", str(tmp_path / "x.pt"))
    assert code == 0, err
    assert "CPU thread(s)" in out and "--threads N to change" in out
    assert torch.get_num_threads() == before
