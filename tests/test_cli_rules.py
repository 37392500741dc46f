"""The command line's rules: options that need (or exclude) another, exit statuses, bounds before work."""
import argparse
import os
import time

import pytest
import torch

import ldd_fast as lf
from ldd_fast.cli import COMMANDS, CLIError, build_parser, main, parse_args
from ldd_fast.cli import limits

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = ["--model", "test_cli_rules:mixture"]
# The arguments each command requires, so that a rule is the only thing wrong.
BASE = {"sample": [], "learn": ["--nfe", "2", "--out", "s.json"], "quality": [], "bench": [],
        "plan": ["--budget-ms", "10"], "export": ["--schedule", "s.json", "--onnx", "s.onnx"],
        "demo": []}


def mixture():
    from test_cli import tiny_model

    return tiny_model()


def nan_model():
    """A network that returns NaN: the model's fault, reported as NonFiniteSample."""
    class NaNNet(torch.nn.Module):
        def forward(self, x, t, cond=None):
            return torch.full_like(x, float("nan"))

    return lf.Denoiser(NaNNet(), lf.EDM(), prediction="x0", time_input="sigma", sample_shape=(1, 4, 4))


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _value(parser, option):
    """A valid value for `option` of `parser` (none for a flag)."""
    action = next(a for a in parser._actions if option in a.option_strings)
    if action.nargs == 0:
        return []
    if action.choices:
        return [str(next(c for c in action.choices if c != action.default))]
    return ["3"] if action.type is not None else ["x"]


def _command_parser(name):
    return build_parser()._subparsers._group_actions[0].choices[name]


RULES = [(name, rule) for name, module in COMMANDS.items() for rule in module.RULES]


@pytest.mark.parametrize("name, rule", RULES, ids=[f"{n}:{r.option}{'>' if r.needed else '|'}{r.other}"
                                                   for n, r in RULES])
def test_every_rule_of_every_command_is_one_line_naming_both_options(name, rule):
    parser = _command_parser(name)
    other = rule.other.split(" or ")[0]  # needs("--guidance", "--label or --pipeline"): the first will do
    argv = [name, *BASE[name], rule.option, *_value(parser, rule.option)]
    if not rule.needed:  # what the option itself needs, so that the exclusion is what is wrong
        argv += [other, *_value(parser, other)]
        for r in COMMANDS[name].RULES:
            if r.needed and r.option in (rule.option, other):
                first = r.other.split(" or ")[0]
                argv += [first, *_value(parser, first)]
    with pytest.raises(CLIError) as e:
        parse_args(argv)
    assert rule.option in str(e.value) and rule.other in str(e.value) and "\n" not in str(e.value)
    if rule.needed:  # and with the option it needs, the rule is satisfied
        try:
            parse_args([*argv, other, *_value(parser, other)])
        except CLIError as e2:
            assert f"{rule.option} needs {rule.other}" not in str(e2)


@pytest.mark.parametrize("argv, words", [
    (["bench", "--prompt", "a cat"], ["--prompt needs --pipeline"]),
    (["bench", "--height", "64"], ["--height needs --pipeline"]),
    (["plan", "--budget-ms", "10", "--learn-top", "3"], ["--learn-top needs --learn"]),
    (["plan", "--budget-ms", "10", "--learn", "none", "--learn-seconds", "5"], ["--learn-seconds needs --learn"]),
    (["plan", "--budget-ms", "10", "--cache", "c"], ["--cache needs --learn"]),
    (["learn", "--nfe", "2", "--out", "s.json", "--model", "digits", "--pipeline", "p"],
     ["--model and --pipeline cannot be given together"]),
    (["learn", "--nfe", "2", "--out", "s.json", "--max-sequence-length", "77"], ["--max-sequence-length needs"]),
    (["learn", "--nfe", "2", "--out", "s.json", "--pipeline", "p"], ["--pipeline needs --prompts"]),
    (["export", "--model", "digits", "--schedule", "s.json", "--onnx", "s.onnx", "--static-batch", "2",
      "--max-batch", "4", "--tensorrt", "e.plan"], ["--max-batch and --static-batch cannot be given together"]),
    (["sample", "--guidance", "2"], ["--guidance needs --label"]),
    (["quality", "--learned", "no_such_folder"], ["--learned no_such_folder", "no such folder"]),
])
def test_options_that_cannot_take_effect_are_refused(argv, words):
    with pytest.raises(CLIError) as e:
        parse_args(argv)
    for w in words:
        assert w in str(e.value)


def test_defaults_are_not_taken_for_written_options(tmp_path):
    """--learned's default folder may be missing (it is then skipped); plan's learning options keep their
    defaults silently; --learn with its options passes."""
    parse_args(["quality", "--out", str(tmp_path)])
    parse_args(["plan", "--budget-ms", "10", "--learn", "ld3", "--learn-top", "1", "--cache", str(tmp_path)])
    (tmp_path / "ld3").mkdir()
    parse_args(["quality", "--learned", str(tmp_path / "ld3")])


# ----- exit statuses -----------------------------------------------------------------------------

def test_exit_status_2_for_the_users_mistakes_1_for_bugs(tmp_path, capsys, monkeypatch):
    code, _, err = run(capsys, "sample", *MODEL, "--nfe", "2", "--schedule", tmp_path / "missing.json")
    assert code == 2 and "schedule file not found" in err and "internal" not in err
    code, _, err = run(capsys, "sample", "--nope")
    assert code == 2 and "unrecognized arguments" in err
    import ldd_fast.cli.sample as sample_cmd

    monkeypatch.setattr(sample_cmd, "run", lambda args: [][1])
    code, _, err = run(capsys, "sample", *MODEL)
    assert code == 1 and "internal error IndexError" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [
    ["sample", "--model", "test_cli_rules:nan_model", "--nfe", "2", "-n", "2"],
    ["plan", "--model", "test_cli_rules:nan_model", "--budget-ms", "1000", "--max-nfe", "2", "--solvers", "dpmpp2",
     "--backends", "eager", "--n-select", "2", "--n-eval", "2", "--teacher-steps", "4", "--repeats", "1"],
])
def test_a_model_that_returns_nan_is_named_with_exit_status_2(tmp_path, capsys, argv):
    out = ["--out", tmp_path / ("x.pt" if argv[0] == "sample" else "plan")]
    code, _, err = run(capsys, *argv, *out)
    assert code == 2 and "NaN" in err and "internal" not in err, err


# ----- bounds before work ------------------------------------------------------------------------

def test_threads_are_bounded_by_the_cores_unless_no_limits(tmp_path, capsys):
    cap = limits.thread_cap()
    assert cap == 2 * os.cpu_count()
    t0 = time.perf_counter()
    code, _, err = run(capsys, "sample", *MODEL, "--nfe", "2", "-n", "1", "--threads", "10000",
                       "--out", tmp_path / "x.pt")
    assert code == 2 and f"at most {cap}" in err and "--no-limits" in err and time.perf_counter() - t0 < 5
    code, _, err = run(capsys, "sample", *MODEL, "--nfe", "2", "-n", "1", "--threads", str(cap + 1), "--no-limits",
                       "--out", tmp_path / "x.pt")
    assert code == 0, err


@pytest.mark.parametrize("argv", [
    ["sample", "--model", "digits", "-n", "100000000"],
    ["bench", "--model", "digits", "--batch", "1000000", "--backends", "eager"],
    ["plan", "--model", "digits", "--budget-ms", "10", "--batch", "100000000"],
])
def test_a_run_that_cannot_fit_in_memory_is_refused_before_work(tmp_path, capsys, argv):
    t0 = time.perf_counter()
    out = {"sample": tmp_path / "x.pt", "bench": None, "plan": tmp_path / "plan"}[argv[0]]
    code, _, err = run(capsys, *argv, *(["--out", out] if out else []))
    assert code == 2 and "GiB available" in err and "--no-limits" in err, err
    assert time.perf_counter() - t0 < 5
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "plan").exists()


def test_memory_estimate_counts_samples_registers_and_activations(monkeypatch):
    den = lf.zoo.load("digits")
    args = argparse.Namespace(no_limits=False)
    act = limits.activation_bytes(den, den.sample_shape, device=torch.device("cpu"))
    sample_bytes = 64 * 4
    assert 10 * sample_bytes < act < 10_000 * sample_bytes  # a U-Net's live activations: many channels
    monkeypatch.setattr(limits, "available_bytes", lambda device: 10**9)
    limits.check_memory(args, den, batch=64, shape=den.sample_shape, plan_registers=4, device=torch.device("cpu"))
    with pytest.raises(CLIError, match="needs about"):
        limits.check_memory(args, den, batch=10**6, shape=den.sample_shape, plan_registers=4,
                            device=torch.device("cpu"))
    limits.check_memory(argparse.Namespace(no_limits=True), den, batch=10**6, shape=den.sample_shape,
                        plan_registers=4, device=torch.device("cpu"))


def test_the_zoo_trainer_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    from ldd_fast.zoo.train import main as train_main

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    code = train_main(["digits", "--variant", "edm", "--resume", "--ckpt", str(bad), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("index", ['{"_class_name": ["StableDiffusionPipeline"]}', '[1, 2]', '{"_class_name": 3}'])
def test_a_malformed_pipeline_folder_is_the_users_mistake(tmp_path, capsys, index):
    """It once surfaced as "unhashable type: 'list'" (an internal-looking error with exit 2)."""
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text(index)
    (tmp_path / "p.txt").write_text("a cat\n")
    code, _, err = run(capsys, "learn", "--pipeline", tmp_path / "pipe", "--prompts", tmp_path / "p.txt", "--nfe", "2",
                       "--out", tmp_path / "s.json")
    assert code == 2 and "model_index.json" in err and "internal" not in err, err


def test_module_factory_is_found_in_the_current_folder(tmp_path, capsys, monkeypatch):
    """As `python -m` finds it: the `ldd-fast` script's own folder is what Python would search first."""
    (tmp_path / "my_cwd_model.py").write_text("def make():\n    from test_cli import tiny_model\n"
                                              "    return tiny_model()\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "sample", "--model", "my_cwd_model:make", "--nfe", "2", "-n", "1", "--out", "x.pt")
    assert code == 0, err
    assert str(tmp_path) not in __import__("sys").path  # the folder was searched for that import only


def test_version_and_export_file_checks(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ldd-fast {lf.__version__}"
    with pytest.raises(CLIError, match=r"--onnx s.graph: the graph is a .onnx file"):
        parse_args(["export", "--model", "digits", "--schedule", "s.json", "--onnx", "s.graph"])
    assert parse_args(["export", "--model", "digits", "--schedule", "s.json", "--onnx", "s.onnx", "--shape", "1", "8",
                       "8"]).shape == [1, 8, 8]  # C H W, space separated, as in every command


def test_force_runs_another_guidance_scale_with_one_warning_naming_both(tmp_path, capsys):
    den = lf.zoo.load("digits", guidance_scale=2.0)
    lf.discretize(den.noise, 2, "edm").replace(guidance_scale=2.0, fingerprint=den.fingerprint()).save(
        tmp_path / "s.json")
    argv = ["sample", "--model", "digits", "--guidance", "3", "--label", "1", "--schedule", tmp_path / "s.json", "-n",
            "1", "--out", tmp_path / "x.pt"]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "guidance scale 2.0 (model: 3.0)" in err and "pass --force" in err
    code, _, err = run(capsys, *argv, "--force")
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert code == 0 and len(warnings) == 1, err
    assert warnings[0].startswith("ldd-fast: warning: --force: running a schedule made for guidance scale 2.0 "
                                  "(model: 3.0)"), warnings
