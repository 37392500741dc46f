"""The generalized learned solver (issue 22): corrections on every earlier denoiser output.

By construction, on exact problems: zero corrections are the base solver bit for bit, any corrections keep a
solver exact for a constant denoiser and first-order consistent, gradients reach corrections and times; the
registers the history needs; schedule format version 3; every executor runs it; and on a Gaussian mixture
the generalized form generalises better than the structured ("exact") one at NFE 4.
"""
import json

import pytest
import torch

import ldd_fast as lf
from ldd_fast import solvers
from ldd_fast.analytic import gaussian_problem

from test_learned_solver import _base, _held_out_loss, _mixture_teacher, constant_problem
from tolerances import TOL

pytestmark = pytest.mark.usefixtures("one_thread")
NOISES = {"edm": lf.EDM(), "vp": lf.VPLinear(), "flow": lf.RectifiedFlow()}
GENERALIZED = [("dpmpp", 3, None), ("dpmpp", 2, None), ("unipc", 3, "bh2"), ("unipc", 2, "bh1"), ("ipndm", 4, None)]
IDS = [f"{s}{o}{'-' + v if v else ''}" for s, o, v in GENERALIZED]


def _plan(sched, form="generalized", coefficients=None):
    return solvers.make_plan(sched.noise, sched.t, sched.t_eval, solver=sched.solver, order=sched.order,
                             variant=sched.variant, final=sched.final, coefficient_form=form,
                             coefficients=coefficients)


def _generalized(sched, scale=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    coefs = [(scale * torch.randn(n, generator=g, dtype=torch.float64)).tolist() for n in _plan(sched).free]
    return sched.replace(coefficients=coefs, coefficient_form="generalized")


# ---------------------------------------------------------------------------------------------
# The plan


@pytest.mark.parametrize("noise", NOISES, ids=list(NOISES))
@pytest.mark.parametrize("solver,order,variant", GENERALIZED, ids=IDS)
def test_zero_corrections_are_the_base_solver_bit_for_bit(noise, solver, order, variant):
    noise = NOISES[noise]
    den, z, _ = gaussian_problem(noise, dim=4, batch=3)
    for nfe in (3, 4, 6):
        sched = _base(noise, solver, order, variant, nfe=nfe)
        zero = sched.replace(coefficients=[[0.0] * n for n in _plan(sched).free], coefficient_form="generalized")
        assert torch.equal(lf.sample(den, z, sched), lf.sample(den, z, zero)), nfe
        # The base solver's own weights are untouched: its non-zero coefficients, in place, bit for bit.
        base, gen = _plan(sched, "exact"), lf.plan_for(den, zero)
        for a, b in zip(base.steps, gen.steps):
            for k, name in enumerate(a.new_registers):
                kk = b.new_registers.index(name)
                for j, col in enumerate(a.registers + ("D",)):
                    jj = (b.registers + ("D",)).index(col)
                    assert torch.equal(a.coef[k, j], b.coef[kk, jj])


def test_free_weights_and_registers():
    """Every earlier output of the trajectory is weighted (the first call has none); the history holds all of
    them until the last step: max registers nfe (dpmpp, ipndm: x + nfe - 1 outputs) and nfe + 1 (unipc: also
    the corrected state)."""
    noise = NOISES["edm"]
    got = {}
    for solver, order, variant in (("dpmpp", 3, None), ("unipc", 3, "bh2"), ("ipndm", 4, None)):
        for nfe in (3, 4, 6, 8):
            sched = _base(noise, solver, order, variant, nfe=nfe)
            base, gen = _plan(sched, "exact"), _plan(sched)
            got[solver, nfe] = (gen.free, base.max_registers, gen.max_registers)
            per_call = 2 if solver == "unipc" else 1  # UniPC: its corrector and its predictor
            assert gen.free == tuple(per_call * i for i in range(nfe))
            assert gen.max_registers == nfe + (solver == "unipc")
            assert gen.steps[-1].new_registers == ("x",), "the history is dropped after the last step only"
    assert got["dpmpp", 4] == ((0, 1, 2, 3), 2, 4) and got["ipndm", 4] == ((0, 1, 2, 3), 2, 4)
    assert got["unipc", 4] == ((0, 2, 4, 6), 4, 5) and got["dpmpp", 3] == ((0, 1, 2), 2, 3)
    flow = _base(NOISES["flow"], "unipc", 3, "bh2", nfe=4)
    assert _plan(flow).free == (0, 0, 2, 4), "from pure noise the output at t = 1 is no history"


def test_euler_and_heun_have_no_generalized_form():
    noise = NOISES["edm"]
    for solver, nfe in (("euler", 4), ("heun", 5)):
        sched = lf.discretize(noise, nfe, "logsnr", solver=solver)
        with pytest.raises(lf.InvalidArgument, match=f"{solver}.*no generalized"):
            solvers.make_plan(noise, sched.t, sched.t_eval, solver=solver, coefficient_form="generalized")
    from ldd_fast.learn import coefficient_form_for, learn

    assert coefficient_form_for("heun", True) == "exact" and coefficient_form_for("dpmpp", True) == "generalized"
    with pytest.raises(lf.InvalidArgument, match="heun.*no generalized"):
        learn(lf.Denoiser(lambda x, t: x, noise), solver="heun", nfe=3, shape=(2,), coefficients="generalized",
              show_progress=False)


@pytest.mark.parametrize("noise", NOISES, ids=list(NOISES))
@pytest.mark.parametrize("solver,order,variant", GENERALIZED, ids=IDS)
def test_constant_denoiser_stays_exact(noise, solver, order, variant):
    noise = NOISES[noise]
    den, z, exact, scale = constant_problem(noise)
    for seed in range(2):
        learned = _generalized(_base(noise, solver, order, variant, nfe=5), scale=1.0, seed=seed)
        assert (lf.sample(den, z, learned) - exact).abs().max() <= TOL["fp64_same_math"] * scale * 10


def test_first_order_consistent():
    """Fixed corrections on the exact Gaussian problem, 0.3 in all per update (split evenly over its values: the
    weights a learner could pick for any NFE stay bounded): the error still falls like h or faster as the steps
    shrink (each correction term is an O(h) slope difference times the update's O(h) weight). With u = 0.3 on
    every value instead the corrections per update grow with the history and the error stalls (measured 0.44 at
    8, 16 and 32 steps): consistency needs the weights bounded per update, as every learned table is. Measured
    (DPM-Solver++ 3M): 0.111, 0.062, 0.032, 0.016 at 16 to 128 steps, order 1."""
    from ldd_fast.analytic import fit_order

    noise = NOISES["edm"]
    den, z, exact = gaussian_problem(noise, dim=4, batch=2)
    for solver, order, variant in (("dpmpp", 3, None), ("unipc", 3, "bh2"), ("ipndm", 4, None)):
        steps, errs = (16, 32, 64), []  # at 8 steps the base solver's own error (0.17, DPM-Solver++ 3M) dominates
        for n in steps:
            sched = _base(noise, solver, order, variant, nfe=n)
            learned = sched.replace(coefficients=[[0.3 / max(k, 1)] * k for k in _plan(sched).free],
                                    coefficient_form="generalized")
            errs.append(float((lf.sample(den, z, learned) - exact).abs().max()))
        assert fit_order(steps, errs) >= 1 - TOL["order"], (solver, errs)


def test_gradients_reach_corrections_and_times():
    """Autograd w.r.t. the corrections and the solver times against central differences (float64)."""
    for solver, order, variant in (("dpmpp", 3, None), ("unipc", 3, "bh2"), ("ipndm", 4, None)):
        noise = lf.EDM()
        den, z, _ = gaussian_problem(noise, dim=3, batch=2)
        sched = _base(noise, solver, order, variant, nfe=4)
        free = _plan(sched).free
        u0 = 0.2 * torch.randn(sum(free), dtype=torch.float64, generator=torch.Generator().manual_seed(3))

        def f(u, t_mid):
            t = torch.cat([sched.t[:1], t_mid, sched.t[-1:]])
            plan = solvers.make_plan(noise, t, t[:-1], solver=solver, order=order, variant=variant,
                                     coefficient_form="generalized", coefficients=list(torch.split(u, list(free))))
            return lf.run_plan(plan, den, z)

        args = (u0.requires_grad_(), sched.t[1:-1].clone().requires_grad_())
        assert torch.autograd.gradcheck(f, args, atol=TOL["gradcheck_atol"], rtol=TOL["gradcheck_rtol"])


# ---------------------------------------------------------------------------------------------
# The artifact


def test_schedule_format_version_3(tmp_path, monkeypatch):
    from ldd_fast import schedule as schedule_module

    noise = lf.EDM()
    base = _base(noise, "dpmpp", 3, nfe=4)
    learned = _generalized(base)
    learned.save(tmp_path / "g.json")
    d = json.loads((tmp_path / "g.json").read_text())
    assert d["format_version"] == 3 and d["coefficient_form"] == "generalized"
    back = lf.Schedule.load(tmp_path / "g.json")
    assert back == learned and back.coefficients == learned.coefficients
    den, z, _ = gaussian_problem(noise, dim=4, batch=2)
    assert torch.equal(lf.sample(den, z, back), lf.sample(den, z, learned))
    exact = base.replace(coefficients=[[0.1] * n for n in _plan(base, "exact").free])
    assert exact.to_dict()["format_version"] == 2 and base.to_dict()["format_version"] == 1, "older forms stay"

    def corrupt(**changes):
        (tmp_path / "bad.json").write_text(json.dumps({**d, **changes}))
        return tmp_path / "bad.json"

    with pytest.raises(lf.ScheduleError, match="'generalized' needs format_version 3"):
        lf.Schedule.load(corrupt(format_version=2))
    with pytest.raises(lf.ScheduleError, match="coefficient_form.*'hyper'"):  # a form this build does not know
        lf.Schedule.load(corrupt(coefficient_form="hyper"))
    with pytest.raises(lf.ScheduleError, match=r"sizes per call \[0, 1, 2, 2\] do not fit dpmpp3 \(generalized\)"):
        lf.Schedule.load(corrupt(coefficients=d["coefficients"][:-1] + [d["coefficients"][-1][:2]]))
    with pytest.raises(lf.ScheduleError, match="exact.*learnable weights"):  # generalized sizes read as exact
        lf.Schedule.load(corrupt(coefficient_form="exact"))
    with pytest.raises(lf.ScheduleError, match="heun.*no generalized"):
        lf.Schedule.load(corrupt(solver="heun", order=2, variant=None, lower_order_final=None,
                                 t=d["t"][:3], t_eval=d["t_eval"][:3], coefficients=[[], [], []]))
    # A reader of versions 1-2 (the previous release) refuses version 3 by name.
    monkeypatch.setattr(schedule_module, "READ_VERSIONS", (1, 2))
    with pytest.raises(lf.ScheduleError, match="format_version.*reads versions 1, 2, got 3"):
        lf.Schedule.load(tmp_path / "g.json")


# ---------------------------------------------------------------------------------------------
# Every executor runs what the Plan holds


def _learned_unet(nfe=5):
    from test_sampler import _tiny_unet

    den = _tiny_unet(guidance_scale=2.0)
    sched = _generalized(_base(den.noise, "unipc", 3, "bh2", nfe=nfe, kind="edm"), scale=0.2)
    return den, sched.replace(fingerprint=den.fingerprint(), guidance_scale=den.guidance_scale)


def test_every_executor_runs_the_generalized_solver():
    """Eager and fused (Triton; interpreter on the CPU) Sampler, the CUDA graph where there is a GPU, and the
    folded plan's torch twin of the kernel and export, against lf.sample, on a guided UNet (7 registers)."""
    from test_sampler import BACKENDS, GPU

    from ldd_fast.plan import fold, run_folded

    den, sched = _learned_unet()
    z, cond = torch.randn(3, 1, 8, 8), torch.tensor([1, 4, 7])
    with torch.no_grad():
        ref = lf.sample(den, z, sched, cond=cond)
        base = lf.sample(den, z, sched.replace(coefficients=None), cond=cond)
        folded = run_folded(fold(lf.plan_for(den, sched), den, guided=True), den, z, cond)
    assert (ref - base).abs().max() > 1e-3 * ref.abs().max(), "the corrections change the sample"
    assert (folded - ref).abs().max() <= TOL["fp32_vs_fp64"] * ref.abs().max()
    for backend in BACKENDS + (["cuda_graph"] if GPU else []):
        device = "cuda" if backend == "cuda_graph" else "cpu"
        out = lf.Sampler(den.to(device), sched, backend=backend)(z.to(device), cond.to(device)).cpu()
        assert (out - ref).abs().max() <= TOL["fp32_vs_fp64"] * ref.abs().max(), backend
    den.to("cpu")


def test_onnx_export_runs_the_generalized_solver(tmp_path):
    """One export (of the base solver in the generalized structure, zero corrections), the schedule as graph
    inputs: the learned schedule is set afterwards and agrees with eager (the baked path shares the folded
    structure; test_learned_solver exports that one)."""
    pytest.importorskip("onnxruntime")
    from ldd_fast.export import OnnxSampler, to_onnx

    from test_export import small_den

    den = small_den()  # test_export's network: its traced call is shared within the process
    sched = _generalized(_base(den.noise, "dpmpp", 3, nfe=4, kind="edm"), scale=0.2)  # 4 registers, base 2
    z = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        ref = lf.sample(den, z, sched)
    zero = sched.replace(coefficients=[[0.0] * len(c) for c in sched.coefficients])
    swap = to_onnx(den, zero, tmp_path / "swap.onnx", z[:1], schedule_as_input=True)
    runner = OnnxSampler(swap.path, threads=1)
    runner.set_schedule(den, sched)
    assert float((runner(z) - ref).abs().max() / ref.abs().max()) <= TOL["onnx_fp32"]


def test_tensorrt_engine_runs_the_generalized_solver(tmp_path):
    """Needs TensorRT and a GPU (skips here with the reason)."""
    import copy

    from test_tensorrt import _real_tensorrt

    _real_tensorrt()
    from test_export import BATCHES, check_parity, small_den

    from ldd_fast.export import TensorRTSampler, build_tensorrt, to_onnx

    den = copy.deepcopy(small_den()).cuda()
    sched = _generalized(_base(den.noise, "dpmpp", 3, nfe=4, kind="edm"), scale=0.2)
    info = to_onnx(den, sched, tmp_path / "g.onnx", torch.randn(2, 1, 8, 8, device="cuda"))
    build_tensorrt(info.path, tmp_path / "g.plan", min_batch=1, opt_batch=8, max_batch=max(BATCHES))
    check_parity(TensorRTSampler(tmp_path / "g.plan"), den, sched, (1, 8, 8), TOL["tensorrt_vs_eager"],
                 device="cuda")


def test_diffusers_scheduler_runs_the_generalized_solver(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from test_diffusers_scheduler import _pipeline, _unet

    unet = _unet(0, scale=0.1)
    den = lf.from_diffusers(unet, diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type="sample"))
    sched = _generalized(_base(den.noise, "dpmpp", 3, nfe=4), scale=0.2).replace(fingerprint=den.fingerprint())
    scheduler = lf.to_diffusers_scheduler(sched, model=den)
    images = _pipeline(unet, scheduler)(batch_size=2, generator=torch.Generator().manual_seed(1),
                                        num_inference_steps=sched.nfe, output_type="np").images
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = (lf.sample(den, z, sched) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(images - ref).max() <= TOL["diffusers_scheduler_fp32"]


# ---------------------------------------------------------------------------------------------
# Learning


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generalized_beats_structured_on_held_out_pairs(seed):
    """DPM-Solver++ 3M at NFE 4, 30 + 30 teacher pairs, the same rounds and seed for both forms, judged on 40
    held-out pairs neither run saw. Measured held-out pseudo-Huber, structured -> generalized: seed 0: 0.135 ->
    0.098, seed 1: 0.037 -> 0.011, seed 2: 0.086 -> 0.064."""
    from ldd_fast.learn import LD3Config, learn

    den, data = _mixture_teacher(seed, 100)
    train, held = data.subset(slice(0, 60)), data.subset(slice(60, 100))
    common = dict(solver="dpmpp", order=3, nfe=4, shape=(2, 4, 4), n_train=30, n_valid=30, seed=seed,
                  teacher=train, show_progress=False, config=LD3Config(rounds_xi=1, rounds_both=3, rounds_coef=6))
    structured = learn(den, coefficients="exact", **common)
    generalized = learn(den, coefficients="generalized", **common)
    assert generalized.schedule.coefficient_form == "generalized"
    assert _held_out_loss(den, generalized.schedule, held) < _held_out_loss(den, structured.schedule, held)


def test_learn_scores_held_out_pairs():
    """coefficients=True is the generalized form; learn scores extra teacher pairs once at the end (never trained
    on or selected with): the validation -> held-out gap; with teacher data, the pairs after the run's."""
    from ldd_fast.learn import LD3Config, learn

    den, data = _mixture_teacher(0, 20)
    cfg = LD3Config(rounds_xi=1, rounds_both=1, rounds_coef=1, batch_size=4)
    res = learn(den, solver="dpmpp", order=3, nfe=3, shape=(2, 4, 4), n_train=8, n_valid=8, teacher=data,
                coefficients=True, config=cfg, show_progress=False)
    m = res.schedule.metrics
    assert res.schedule.coefficient_form == "generalized" and res.schedule.info["heldout_pairs"] == 4
    assert m["heldout_hard"] == pytest.approx(_held_out_loss(den, res.schedule, data.subset(slice(16, 20))), rel=1e-6)
    assert res.ld3_schedule.metrics["heldout_hard"] == m["heldout_hard_ld3"]
    made = learn(den, solver="dpmpp", order=3, nfe=3, shape=(2, 4, 4), n_train=4, n_valid=4, teacher={"nfe": 6},
                 coefficients="generalized", heldout=3, config=cfg, show_progress=False)
    assert made.schedule.info["heldout_pairs"] == 3 and "heldout_hard" in made.schedule.metrics
    plain = learn(den, solver="dpmpp", order=3, nfe=3, shape=(2, 4, 4), n_train=8, n_valid=8, teacher=data,
                  config=cfg, show_progress=False)
    assert "heldout_hard" not in plain.schedule.metrics, "LD3 alone: no held-out pairs unless asked"
    for bad, err in ((-1, lf.InvalidArgument), (1.5, lf.InvalidArgumentType)):
        with pytest.raises(err, match="heldout"):
            learn(den, solver="dpmpp", nfe=3, shape=(2, 4, 4), heldout=bad, show_progress=False)


def test_cli_learn_and_plan_take_the_generalized_form(tmp_path, capsys, monkeypatch):
    from test_cli import run

    import importlib

    learn_module = importlib.import_module("ldd_fast.learn")  # lf.learn, the attribute, is the function
    monkeypatch.setattr(learn_module, "COEFFICIENT_PAIRS", (4, 4))  # the planner's runs: default pairs, kept small

    sched = tmp_path / "s.json"
    code, out, err = run(capsys, "learn", "--model", "test_cli:tiny_model", "--solver", "dpmpp", "--order", "3",
                         "--nfe", "3", "--out", str(sched), "--n-train", "2", "--n-valid", "2", "--teacher-nfe", "6",
                         "--coefficients", "generalized", "--heldout", "2")
    assert code == 0, err
    d = json.loads(sched.read_text())
    assert d["format_version"] == 3 and d["coefficient_form"] == "generalized"
    assert "validation -> held-out (2 pairs" in out
    code, out, err = run(capsys, "learn", "--model", "test_cli:tiny_model", "--solver", "heun", "--nfe", "3",
                         "--out", str(tmp_path / "h.json"), "--coefficients", "generalized")
    assert code == 2 and "no generalized" in err and "Traceback" not in err
    code, out, err = run(capsys, "plan", "--model", "test_cli:tiny_model", "--budget-ms", "1e4", "--max-nfe", "2",
                         "--solvers", "dpmpp3", "--backends", "eager", "--learn", "generalized", "--learn-top", "1",
                         "--n-select", "4", "--n-eval", "4", "--teacher-steps", "6", "--repeats", "1",
                         "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "plan"))
    assert code == 0, err
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert any(r.get("coefficients") for r in plan["rows"]), "the learned solver is among the rows"
