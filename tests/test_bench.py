"""lf.bench (latency of fixed samplers on the user's model) and lf.plan_sampler (the planner), CPU backends.

Timings themselves are not asserted beyond being positive (the machine is shared); what is asserted is
the structure a user relies on: every requested backend is either measured or listed with a reason, the
parity against the eager sampler, the thread count pinned and restored, the planner's choices made on
the selection seeds only, its files, and its errors.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import ldd_fast as lf

from tolerances import TOL

pytestmark = pytest.mark.usefixtures("one_thread")


class SmallNet(torch.nn.Module):
    """A small conv net (EDM-preconditioned below): a real network, cheap enough for many timed rounds."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x, t):
        return self.b(torch.tanh(self.a(x) + t.view(-1, 1, 1, 1)))


def small():
    torch.manual_seed(0)
    den = lf.Denoiser(SmallNet().eval(), lf.EDM(), prediction="edm")
    den.sample_shape = (1, 8, 8)
    return den


def mixture():
    """An exact Gaussian-mixture denoiser: a network that costs almost nothing (`--model test_bench:mixture`)."""
    from test_cli import tiny_model

    return tiny_model()


def test_bench_measures_or_names_every_backend():
    den = small()
    scheds = {"edm": lf.discretize(den.noise, 3, "edm"), "logsnr": lf.discretize(den.noise, 4, "logsnr")}
    threads = torch.get_num_threads()
    res = lf.bench(den, scheds, backends=("eager", "onnxruntime", "triton", "cuda_graph", "tensorrt"),
                   batches=(1, 3), threads=1, repeats=3, warmup=1, show_progress=False, updates_only=True)
    assert torch.get_num_threads() == threads
    measured = {r["backend"] for r in res.rows}
    named = {s["backend"] for s in res.skipped}
    assert measured | named == {"eager", "onnxruntime", "triton", "cuda_graph", "tensorrt"}
    assert {"cuda_graph", "tensorrt"} <= named and all(s["reason"] for s in res.skipped)  # triton: interpreted here
    assert len(res.rows) == 2 * 2 * len(measured)
    for r in res.rows:
        assert r["sampler_ms"]["q1"] <= r["sampler_ms"]["median"] <= r["sampler_ms"]["q3"]
        assert r["threads"] == 1 and r["nfe"] in (3, 4) and r["eager_floor_ms"] > 0
        if r["backend"] in ("eager", "triton"):  # (triton runs in its CPU interpreter here)
            assert r["floor_mode"] == "eager" and r["ratio_floor"]["median"] > 0
            assert 0 < r["updates_only_ms"]
        if r["backend"] == "eager":
            assert r["parity"] == 0.0 and r["updates_only_ms"] < r["sampler_ms"]["median"]
        else:
            assert r["parity"] <= TOL["onnx_fp32"]
        if r["backend"] == "onnxruntime":  # the exported graph holds the network: only the eager floor applies
            assert r["floor_ms"] is None and r["ratio_floor"] is None
    assert res.env["torch_threads"] == 1 and res.env["torch"] == torch.__version__
    table = res.markdown()
    assert "| eager |" in table and "Not measured" in table and "cuda_graph" in table
    json.dumps(res.to_json())


def test_bench_structured_condition_on_every_backend_at_batch_1_and_3():
    """SD3's condition is a tuple (prompt_embeds, pooled): the exported backends are built from one example row
    of each leaf (the whole batch's tuple was once passed beside one noise row: a ConditionError at batch > 1)."""
    pytest.importorskip("onnxruntime")
    from test_cond import prompts, text_den

    den = text_den()  # guided: a tuple condition with a tuple null condition
    den.sample_shape = (1, 2, 2)
    sched = lf.discretize(den.noise, 3, "flowmatch", shift=3.0, final="zero")
    backends = ("eager", "onnxruntime", "triton", "cuda_graph", "tensorrt")  # compile: minutes on a CPU
    res = lf.bench(den, sched, backends=backends, batches=(1, 3), solver="unipc", threads=1, repeats=2, warmup=0,
                   cond_fn=prompts, show_progress=False)
    assert not [s for s in res.skipped if "batch" in s], res.skipped  # no row failed
    up_front = {s["backend"]: s["reason"] for s in res.skipped}
    assert all(up_front.values()) and "eager" not in up_front and "onnxruntime" not in up_front
    if not torch.cuda.is_available():
        assert {"cuda_graph", "tensorrt"} <= set(up_front)
    for b in set(backends) - set(up_front):
        rows = [r for r in res.rows if r["backend"] == b]
        assert sorted(r["batch"] for r in rows) == [1, 3], b
        assert all(r["parity"] <= TOL["onnx_fp32"] and r["sampler_ms"]["median"] > 0 for r in rows), b


def test_bench_fp16_on_a_cpu_is_measured_or_explained():
    den = small()
    res = lf.bench(den, lf.discretize(den.noise, 2, "edm"), backends=("eager",), batches=(2,), dtype=torch.float16,
                   threads=1, repeats=2, warmup=0, show_progress=False)
    if res.rows:
        assert res.rows[0]["dtype"] == "float16" and res.rows[0]["parity"] < 1e-2
    else:
        assert res.skipped and "eager" in res.skipped[0]["backend"] and res.skipped[0]["reason"]
    assert all(p.dtype == torch.float32 for p in den.parameters()), "the user's model is not cast"


def test_bench_refuses_bad_input():
    den = small()
    s = lf.discretize(den.noise, 2, "edm")
    with pytest.raises(ValueError, match="unknown backend"):
        lf.bench(den, s, backends=("warp",), show_progress=False)
    with pytest.raises(ValueError, match="batches"):
        lf.bench(den, s, batches=(0,), show_progress=False)
    with pytest.raises(TypeError, match="Schedule"):
        lf.bench(den, {"a": "edm"}, show_progress=False)
    with pytest.raises(TypeError, match="Denoiser"):
        lf.bench(den.net, s, show_progress=False)
    with pytest.raises(ValueError, match="threads"):
        lf.bench(den, s, threads=0, show_progress=False)


def test_bench_is_lazy_and_callable():
    code = ("import sys, ldd_fast as lf; assert 'ldd_fast.bench' not in sys.modules; "
            "assert 'ldd_fast.planner' not in sys.modules; import ldd_fast.bench as b; "
            "assert lf.bench is b and callable(lf.bench) and b.bench.__module__ == 'ldd_fast.bench'; "
            "assert callable(lf.plan_sampler)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_planner_picks_on_selection_seeds_and_writes_its_files(tmp_path):
    den = mixture()
    res = lf.plan_sampler(den, budget_ms=1e4, batch=4, max_nfe=4, candidates=(("euler", 1), ("unipc", 3)),
                          backends=("eager",), n_select=16, n_eval=24, teacher_steps=12, repeats=2, threads=1,
                          out=str(tmp_path), show_progress=False)
    b = res.best
    assert b == {**b, "solver": min(res.rows, key=lambda r: r["rmse_select"])["solver"]}
    assert b["rmse_select"] == min(r["rmse_select"] for r in res.rows)
    assert {(r["solver"], r["nfe"]) for r in res.rows} == {(s, n) for s in ("euler1", "unipc3") for n in range(1, 5)}
    assert b["predicted_ms"] <= 1e4 and b["measured_ms"] > 0 and b["backend"] == "eager"
    assert abs(b["prediction_error"]) < 10
    assert res.hand_choice and res.hand_choice[0]["nfe"] == 4 and res.hand_choice[0]["solver"] == "dpmpp2"
    assert res.pareto()[0]["predicted_ms"] == min(r["predicted_ms"] for r in res.rows)
    sched = lf.Schedule.load(tmp_path / "schedule.json")
    assert sched.nfe == b["nfe"]
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["best"]["nfe"] == b["nfe"] and "latency_model" in saved
    assert "Chosen" in (tmp_path / "plan.md").read_text()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "plan.png").stat().st_size > 1000


def test_planner_budget_decides_the_nfe():
    den = mixture()
    kw = dict(batch=2, max_nfe=8, candidates=(("unipc", 3),), backends=("eager",), n_select=8, n_eval=8,
              teacher_steps=10, repeats=2, threads=1, show_progress=False)
    res = lf.plan_sampler(den, budget_ms=1e4, **kw)
    model = res.latency_model["eager"]
    tight = model["overhead_ms"] + 2.5 * model["per_call_ms"]
    small = lf.plan_sampler(den, budget_ms=tight, latency=res.latency_model, **kw)
    assert max(r["nfe"] for r in small.rows) == 2 and small.latency_model == res.latency_model
    with pytest.raises(ValueError, match="no sampler fits"):
        lf.plan_sampler(den, budget_ms=1e-6, latency=res.latency_model, **kw)
    with pytest.raises(ValueError, match="latency model"):
        lf.plan_sampler(den, budget_ms=1.0, latency={"eager": 3.0}, **kw)
    with pytest.raises(ValueError, match="cache"):
        lf.plan_sampler(den, budget_ms=10.0, learn="ld3", **kw)
    with pytest.raises(ValueError, match="learn"):
        lf.plan_sampler(den, budget_ms=10.0, learn="gits", **kw)


def test_planner_learns_the_top_candidate_once_and_caches_it(tmp_path):
    den = mixture()
    kw = dict(budget_ms=1e4, batch=2, max_nfe=3, candidates=(("unipc", 3),), backends=("eager",), n_select=8,
              n_eval=8, teacher_steps=10, repeats=2, threads=1, show_progress=False, learn="ld3", learn_top=1,
              cache=str(tmp_path))
    res = lf.plan_sampler(den, **kw)
    learned = [r for r in res.rows if r["schedule"] == "ld3"]
    assert len(learned) == 1
    (folder,) = os.listdir(tmp_path)
    assert folder == den.fingerprint()[:16]
    again = lf.plan_sampler(den, **kw)  # the cached run resumes at its end: the same schedule
    assert [r["rmse"] for r in again.rows if r["schedule"] == "ld3"] == [learned[0]["rmse"]]


def test_cli_bench_and_plan(tmp_path, capsys):
    from ldd_fast.cli import main

    js, md = tmp_path / "b.json", tmp_path / "b.md"
    code = main(["bench", "--model", "test_bench:small", "--schedule", "edm", "logsnr", "--nfe", "2",
                 "--backends", "eager,cuda_graph", "--batch", "1", "2", "--repeats", "2", "--warmup", "0", "--threads",
                 "1", "--json", str(js), "--md", str(md)])
    out = capsys.readouterr()
    assert code == 0, out.err
    d = json.loads(js.read_text())
    assert len(d["rows"]) == 4 and d["skipped"][0]["backend"] == "cuda_graph" and d["env"]["torch_threads"] == 1
    assert "Not measured" in md.read_text() and "| eager |" in out.out
    code = main(["bench", "--backends", "eager,warp"])
    assert code == 2 and "unknown backend" in capsys.readouterr().err
    code = main(["plan", "--model", "test_bench:mixture", "--budget-ms", "10000", "--batch", "2", "--max-nfe",
                 "2", "--solvers", "euler1", "--backends", "eager", "--n-select", "4", "--n-eval", "4",
                 "--teacher-steps", "6", "--repeats", "2", "--threads", "1", "--out", str(tmp_path / "plan")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "Chosen" in out.out and (tmp_path / "plan" / "schedule.json").exists()
    code = main(["plan", "--budget-ms", "0"])
    assert code == 2 and "--budget-ms" in capsys.readouterr().err
