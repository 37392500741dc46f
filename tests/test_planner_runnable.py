"""The planner's answer runs as planned (issue 19): its schedule.json names the chosen solver, order and
options, every executor runs a schedule's own solver when none is passed and refuses a contradicting one
(force never moves learned coefficients to another solver), and per-row conditions (select_cond /
eval_cond) reach the selection and held-out teachers and the learning run."""
import importlib
import json
import os

import pytest
import torch
from torch import nn

import ldd_fast as lf
import ldd_fast.planner as planner
from ldd_fast.metrics import rmse
from ldd_fast.teacher import noise_for

from test_bench import mixture

pytestmark = pytest.mark.usefixtures("one_thread")
# No UniPC among the candidates: a plan run by the command line's default solver would show.
CANDIDATES = (("euler", 1), ("ipndm", 4))


@pytest.fixture(scope="module")
def plan(one_thread, tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    res = lf.plan_sampler(mixture(), budget_ms=1e4, batch=2, max_nfe=4, candidates=CANDIDATES, backends=("eager",),
                          n_select=8, n_eval=8, teacher_steps=10, repeats=2, threads=1, out=str(out),
                          show_progress=False)
    return res, out


def test_schedule_json_names_the_chosen_solver(plan):
    res, out = plan
    b = res.best
    sched = lf.Schedule.load(out / "schedule.json")
    assert sched == res.schedule
    assert (sched.solver, sched.order) == (b["solver_name"], b["order"]) and b["solver_name"] != "unipc"
    ran = lf.plan_for(mixture(), sched.replace(solver=None, order=None, variant=None, lower_order_final=None),
                      solver=b["solver_name"], order=b["order"])  # what the planner scored: the solver's defaults
    assert sched.lower_order_final == ran.options.get("lower_order_final")
    assert sched.variant == ran.options.get("variant") == b["variant"]
    plan_json = json.loads((out / "plan.json").read_text())
    saved = plan_json["best"]
    assert saved["backend"] == "eager" and saved["batch"] == 2 and saved["dtype"] == "float32"
    assert (saved["solver_name"], saved["order"], saved["lower_order_final"]) == \
        (sched.solver, sched.order, sched.lower_order_final)
    assert saved["coefficients"] is False and saved["threads"] == 1
    assert all({"solver_name", "order", "variant", "lower_order_final"} <= set(r) for r in plan_json["rows"])


def test_cli_samples_the_plan_with_its_solver(plan, tmp_path, capsys):
    from ldd_fast.cli import main

    res, out = plan
    sched, b = res.schedule, res.best
    path = tmp_path / "x.pt"
    code = main(["sample", "--model", "test_bench:mixture", "--schedule", str(out / "schedule.json"), "-n", "2",
                 "--out", str(path), "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    x = torch.load(path)
    den = mixture()
    z = noise_for(2, den.sample_shape, 0)
    with torch.no_grad():
        planned = lf.sample(den, z, sched.replace(solver=None, order=None, variant=None, lower_order_final=None),
                            solver=b["solver_name"], order=b["order"])
        unipc = lf.sample(den, z, sched, solver="unipc", force=True)
    assert torch.equal(x, planned)
    assert (x - unipc).abs().max() > 1e-4, "the plan differs from UniPC on its times: the test would not see it"

    code = main(["sample", "--model", "test_bench:mixture", "--schedule", str(out / "schedule.json"), "-n", "2",
                 "--out", str(path), "--threads", "1", "--solver", "unipc"])
    err = capsys.readouterr().err
    assert code == 2 and f"solver '{sched.solver}'" in err and "unipc" in err and "--force" in err
    code = main(["sample", "--model", "test_bench:mixture", "--schedule", str(out / "schedule.json"), "-n", "2",
                 "--out", str(path), "--threads", "1", "--order", str(sched.order - 1)])
    assert code == 2 and f"order {sched.order}" in capsys.readouterr().err


def test_every_executor_runs_the_schedule_s_solver(plan, tmp_path):
    from ldd_fast.export import to_onnx, unroll

    res, _ = plan
    sched, den = res.schedule, mixture()
    z = torch.randn(2, *den.sample_shape)
    with torch.no_grad():
        ref = lf.sample(den, z, sched, solver=sched.solver, order=sched.order)
        assert torch.equal(lf.sample(den, z, sched), ref)
        assert torch.allclose(lf.Sampler(den, sched)(z), ref, rtol=0, atol=1e-6)
        assert torch.allclose(unroll(den, sched)(z), ref, rtol=0, atol=1e-5)
    rows = lf.bench(den, sched, repeats=1, warmup=0, threads=1, show_progress=False).rows
    assert rows[0]["solver"] == f"{sched.solver}{sched.order}"
    other = "dpmpp" if sched.solver != "dpmpp" else "euler"
    refusals = {
        "sample": lambda **kw: lf.sample(den, z, sched, **kw),
        "Sampler": lambda **kw: lf.Sampler(den, sched, **kw),
        "bench": lambda **kw: lf.bench(den, sched, repeats=1, warmup=0, show_progress=False, **kw),
        "unroll": lambda **kw: unroll(den, sched, **kw),
        "to_onnx": lambda **kw: to_onnx(den, sched, tmp_path / "never.onnx", z, **kw),
    }
    for name, run in refusals.items():
        for kw in ({"solver": other}, {"order": sched.order - 1}):
            with pytest.raises(lf.IncompatibleSchedule, match="force"):
                run(**kw)
    assert not os.path.exists(tmp_path / "never.onnx")
    with torch.no_grad():
        forced = lf.sample(den, z, sched, solver=other, force=True)
    assert torch.allclose(lf.Sampler(den, sched, solver=other, force=True)(z), forced, rtol=0, atol=1e-6)


def test_diffusers_scheduler_takes_the_schedule_s_solver(plan):
    pytest.importorskip("diffusers")
    sched = plan[0].schedule
    s = lf.to_diffusers_scheduler(sched)
    assert (s.plan.solver, s.plan.order) == (sched.solver, sched.order)
    assert s.config.lower_order_final == sched.lower_order_final
    with pytest.raises(lf.IncompatibleSchedule, match="force"):
        lf.to_diffusers_scheduler(sched, solver="dpmpp" if sched.solver != "dpmpp" else "euler")


def test_force_never_moves_learned_coefficients(plan, tmp_path):
    from ldd_fast.export import to_onnx, unroll

    den = mixture()
    base = lf.discretize(den.noise, 4, "edm").replace(solver="dpmpp", order=2)
    free = lf.plan_for(den, base).free
    learned = base.replace(coefficients=[[0.01] * n for n in free])
    z = torch.randn(1, *den.sample_shape)
    paths = [lambda **kw: lf.sample(den, z, learned, **kw), lambda **kw: lf.Sampler(den, learned, **kw),
             lambda **kw: lf.bench(den, learned, repeats=1, warmup=0, show_progress=False, **kw),
             lambda **kw: unroll(den, learned, **kw), lambda **kw: to_onnx(den, learned, tmp_path / "n.onnx", z, **kw)]
    for run in paths:
        for kw in ({"solver": "unipc"}, {"order": 3}):
            with pytest.raises(lf.IncompatibleSchedule, match="even with force"):
                run(force=True, **kw)


# ---------------------------------------------------------------------------------------------
# Per-row conditions


class LabelNet(nn.Module):
    """The exact x0-denoiser of N(mean[label], V I) per class label (EDM: x = x0 + sigma eps)."""

    V = 0.25

    def __init__(self):
        super().__init__()
        self.means = nn.Parameter(2.0 * torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(3)))

    def forward(self, x, sigma, labels):
        s2 = sigma.view(-1, 1, 1, 1).to(x.dtype) ** 2
        return (self.V * x + s2 * self.means[labels].to(x.dtype)) / (self.V + s2)


def label_den():
    den = lf.Denoiser(LabelNet().eval(), lf.EDM(), prediction="x0", time_input="sigma", num_classes=4)
    den.sample_shape = (1, 4, 4)
    return den


def _recording(monkeypatch, module, name):
    calls, real = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((kwargs, out))
        return out
    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_selection_and_held_out_rows_get_their_own_conditions(monkeypatch):
    den = label_den()
    select, held_out = torch.tensor([0, 1, 0, 1, 1, 0]), torch.tensor([2, 3, 3, 2, 2, 3, 2, 3])
    teachers = _recording(monkeypatch, planner, "make_teacher")
    # No cond_fn: the latency timing cycles over select_cond's rows (the network cannot run without labels).
    res = planner.plan_sampler(den, budget_ms=1e4, batch=3, max_nfe=3, candidates=(("dpmpp", 2),),
                               backends=("eager",), n_select=6, n_eval=8, teacher_steps=10, repeats=1, threads=1,
                               show_progress=False, select_cond=select, eval_cond=held_out)
    seen = {kw["seed"]: (kw["cond"], data) for kw, data in teachers}
    assert torch.equal(seen[planner.SELECT_SEED][0], select) and torch.equal(seen[planner.REPORT_SEED][0], held_out)
    best = res.best
    rep = seen[planner.REPORT_SEED][1]
    with torch.no_grad():  # the held-out RMSE is that of the held-out conditions, not of any others
        x = lf.sample(den, rep.z, res.schedule, cond=held_out)
        assert abs(rmse(x, rep.y).mean().item() - best["rmse"]) < 1e-6
        x_sel = lf.sample(den, rep.z, res.schedule, cond=select[torch.arange(8) % 6])
        assert abs(rmse(x_sel, rep.y).mean().item() - best["rmse"]) > 1e-2
    sel = seen[planner.SELECT_SEED][1]
    with torch.no_grad():
        x = lf.sample(den, sel.z, res.schedule, cond=select)
    assert abs(rmse(x, sel.y).mean().item() - best["rmse_select"]) < 1e-6


def test_condition_rows_are_checked_by_name():
    den = label_den()
    kw = dict(budget_ms=1e4, candidates=(("euler", 1),), backends=("eager",), n_select=4, n_eval=2,
              show_progress=False)
    with pytest.raises(lf.ConditionError, match=r"select_cond .*n_select=4"):
        lf.plan_sampler(den, select_cond=torch.tensor([0, 1, 2]), **kw)
    with pytest.raises(lf.ConditionError, match=r"eval_cond .*label 7"):
        lf.plan_sampler(den, select_cond=torch.tensor([0, 1, 2, 3]), eval_cond=torch.tensor([1, 7]), **kw)
    with pytest.raises(lf.InvalidArgumentType, match="eval_cond"):
        lf.plan_sampler(den, eval_cond=["a cat", "a dog"], **kw)
    with pytest.raises(lf.ConditionError, match="select_cond"):  # a structure: every leaf needs n_select rows
        lf.plan_sampler(mixture(), select_cond=(torch.zeros(4, 2), torch.zeros(3, 2)), **kw)


def test_learning_runs_over_the_selection_conditions(monkeypatch, tmp_path):
    learn_module = importlib.import_module("ldd_fast.learn")  # lf.learn, the attribute, is the function
    den = label_den()
    select, held_out = torch.tensor([0, 1, 0, 1]), torch.tensor([2, 3, 2, 3])
    runs = _recording(monkeypatch, learn_module, "learn")
    res = lf.plan_sampler(den, budget_ms=1e4, batch=2, max_nfe=2, candidates=(("dpmpp", 2),), backends=("eager",),
                          n_select=4, n_eval=4, teacher_steps=8, repeats=1, threads=1, show_progress=False,
                          select_cond=select, eval_cond=held_out, learn="ld3", learn_top=1, cache=str(tmp_path))
    ((kw, result),) = runs
    assert torch.equal(kw["cond"], select)
    assert result.schedule.info["conditions"] == {"conditions": 4, "train": 2, "valid": 2, "disjoint": True}
    assert "_cond" in os.path.basename(kw["out"])  # other prompts, another cache entry
    assert any(r["schedule"] == "ld3" for r in res.rows)
