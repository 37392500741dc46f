"""Rectified flow in the core: the noise schedule, the "flow" prediction, sampling from pure noise at t = 1
(finite first step, no NaN in a sample or a gradient), the pipelines' grids, Heun / Euler equal to
diffusers' flow-matching schedulers, and LD3 in both modes."""
import math

import numpy as np
import pytest
import torch

import ldd_fast as lf
from ldd_fast.analytic import GaussianData, gaussian_problem
from ldd_fast.solvers import default_t_eval
from ldd_fast.teacher import TeacherSpec, make_teacher

from test_solvers import CONFIGS, IDS
from tolerances import TOL

FLOW = lf.RectifiedFlow()
pytestmark = pytest.mark.usefixtures("one_thread")


def flow_den(prediction="flow", batch=3, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)
    s = 0.3 + 0.5 * torch.rand(dim, generator=g, dtype=torch.float64)
    net = GaussianData(FLOW, mu, s, prediction=prediction)
    den = lf.Denoiser(net, FLOW, prediction=prediction, time_input="t")
    z = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    return den, z, net.solve(z, 1.0, FLOW.t_min)


def test_the_schedule():
    t = torch.tensor([0.999, 0.7, 0.3, 0.001], dtype=torch.float64)
    assert torch.equal(FLOW.alpha(t), 1 - t) and torch.equal(FLOW.sigma(t), t)
    assert torch.allclose(FLOW.t_of_lambda(FLOW.lam(t)), t, rtol=1e-12)
    assert FLOW.prior_scale == 1.0 and FLOW.pure_noise_start and FLOW.lam(1.0) == -math.inf
    assert FLOW.lam_span() == pytest.approx((-FLOW.lam(1e-3).item(), FLOW.lam(1e-3).item()))
    assert lf.Schedule.from_dict(lf.discretize(FLOW, 3, "edm").to_dict()).noise == FLOW
    assert not lf.RectifiedFlow(t_max=0.99).pure_noise_start
    with pytest.raises(lf.NoiseScheduleError, match="t_max must be <= 1"):
        lf.RectifiedFlow(t_max=1.5)


def test_only_the_first_call_may_be_at_pure_noise():
    s = lf.discretize(FLOW, 3, "time_uniform")
    with pytest.raises(lf.ScheduleError, match="only the first network call may be at pure noise"):
        s.replace(t_eval=[1.0, 1.0, 0.4])
    with pytest.raises(lf.ScheduleError, match="strictly decreasing"):
        s.replace(t=[1.0, 1.0, 0.4, 0.001])


@pytest.mark.parametrize("prediction", ["flow", "x0", "eps", "v"])
def test_the_flow_prediction_is_one_more_affine_map(prediction):
    """x0 = x - t v for v = eps - x0; every parameterisation gives the same exact denoiser."""
    den, z, _ = flow_den(prediction)
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    ref, _, _ = flow_den("x0")
    assert torch.allclose(den(x, t), ref(x, t), rtol=1e-12, atol=1e-12)
    if prediction == "flow":
        v = den.net(x, t)
        assert torch.allclose(den(x, t), x - 0.4 * v, rtol=1e-12)
        assert torch.isfinite(den(x, torch.tensor(1.0, dtype=torch.float64))).all(), "finite at pure noise"


@pytest.mark.parametrize("solver,order,variant", CONFIGS, ids=IDS)
@pytest.mark.parametrize("kind", ["time_uniform", "logsnr", "edm", "flowmatch"])
@pytest.mark.parametrize("final", ["t_min", "zero"])
def test_every_solver_runs_from_pure_noise(solver, order, variant, kind, final):
    den, z, _ = flow_den()
    nfe = 5 if solver == "heun" else 6
    sched = lf.discretize(FLOW, nfe, kind, solver=solver, final=final, **({"shift": 3.0} if kind == "flowmatch"
                                                                           else {}))
    assert sched.t[0] == 1.0 and sched.t_eval[0] == 1.0
    x = lf.sample(den, z, sched, solver=solver, order=order, variant=variant)  # NonFiniteSample otherwise
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("solver,order,variant", [c for c in CONFIGS if c[0] in ("euler", "dpmpp", "unipc")],
                         ids=[i for c, i in zip(CONFIGS, IDS) if c[0] in ("euler", "dpmpp", "unipc")])
def test_the_first_step_from_pure_noise_is_its_finite_form(solver, order, variant):
    """Data-prediction step from t = 1 (lambda = -inf): x_1 = t_1 x + (1 - t_1) D, exactly."""
    den, z, _ = flow_den()
    sched = lf.discretize(FLOW, 4, "time_uniform")
    plan = lf.plan_for(den, sched, solver=solver, order=order, variant=variant)
    t1 = float(sched.t[1])
    coef = plan.steps[0].coef  # rows: new registers; columns: [x, D]
    x_row = coef[plan.steps[0].new_registers.index("x")]
    assert torch.allclose(x_row, torch.tensor([t1, 1 - t1], dtype=torch.float64), rtol=1e-14, atol=0)


@pytest.mark.parametrize("solver,order,variant", CONFIGS, ids=IDS)
def test_gradients_from_pure_noise_are_finite_and_right(solver, order, variant):
    """gradcheck w.r.t. every learnable time (t[0] = 1 is pinned, as LD3 pins it) and t_eval."""
    den, z, _ = flow_den(batch=2, dim=3)
    nfe = 5 if solver == "heun" else 4
    base = lf.discretize(FLOW, nfe, "time_quadratic", solver=solver)
    inner = base.t[1:].clone().requires_grad_()
    t_eval = (base.t_eval[1:] * 0.999).requires_grad_()
    opts = {} if solver in ("euler", "heun") else {"lower_order_final": True}

    def run(inner, t_eval):
        t = torch.cat([torch.ones(1, dtype=torch.float64), inner])
        te = torch.cat([torch.ones(1, dtype=torch.float64), t_eval])
        return lf.run_plan(lf.make_plan(FLOW, t, te, solver=solver, order=order, variant=variant, **opts), den, z)

    assert torch.autograd.gradcheck(run, (inner, t_eval), eps=1e-6, atol=TOL["gradcheck_atol"],
                                    rtol=TOL["gradcheck_rtol"])
    g_t, g_e = torch.autograd.grad(run(inner, t_eval).pow(2).sum(), (inner, t_eval))
    assert torch.isfinite(g_t).all() and torch.isfinite(g_e).all()


def test_the_pipelines_grids_are_diffusers_own():
    diffusers = pytest.importorskip("diffusers")
    for nfe in (1, 4, 7):
        for kw in ({"shift": 1.0}, {"shift": 3.0}):
            sched = diffusers.FlowMatchEulerDiscreteScheduler(**kw)
            sched.set_timesteps(nfe)
            ours = lf.discretize(FLOW, nfe, "flowmatch", final="zero", **kw).t
            assert torch.allclose(ours.float(), sched.sigmas, rtol=2e-7, atol=0), (nfe, kw)
        dynamic = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
        dynamic.set_timesteps(nfe, mu=0.8)
        assert torch.allclose(lf.discretize(FLOW, nfe, "flowmatch", mu=0.8, final="zero").t.float(),
                              dynamic.sigmas, rtol=2e-7, atol=0)
        mu = lf.flux_mu(1024)
        flux = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
        flux.set_timesteps(sigmas=np.linspace(1.0, 1 / nfe, nfe), mu=mu)  # what FluxPipeline passes
        assert torch.allclose(lf.discretize(FLOW, nfe, "flux", mu=mu, final="zero").t.float(), flux.sigmas,
                              rtol=2e-7, atol=0)
    # final="t_min": the same shift, ending exactly at t_end.
    s = lf.discretize(FLOW, 4, "flowmatch", shift=3.0, t_end=0.01)
    assert s.t[0] == 1.0 and s.t[-1] == 0.01 and s.info == {"kind": "flowmatch", "shift": 3.0, "t_end": 0.01}
    with pytest.raises(ValueError, match="needs lf.RectifiedFlow"):
        lf.discretize(lf.EDM(), 4, "flowmatch")
    with pytest.raises(ValueError, match="needs mu"):
        lf.discretize(FLOW, 4, "flux")
    with pytest.raises(ValueError, match="t_end"):
        lf.discretize(FLOW, 4, "logsnr", t_end=1.0)


def _diffusers_loop(scheduler, velocity, z, nfe, **set_kw):
    """diffusers' own set_timesteps / step loop on a velocity model (timesteps are 1000 t)."""
    scheduler.set_timesteps(nfe, **set_kw)
    x = z.clone()
    for ts in scheduler.timesteps:
        v = velocity(x, ts / 1000.0)
        x = scheduler.step(v, ts, x, return_dict=False)[0]
    return x


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_and_heun_equal_diffusers_flow_schedulers(shift):
    diffusers = pytest.importorskip("diffusers")
    den, z, _ = flow_den(batch=4, dim=6)
    z = z.float()
    velocity = den.net
    for steps in (3, 6):
        ref = _diffusers_loop(diffusers.FlowMatchEulerDiscreteScheduler(shift=shift), velocity, z, steps)
        ours = lf.sample(den, z, lf.discretize(FLOW, steps, "flowmatch", shift=shift, final="zero"), solver="euler")
        assert (ours - ref).abs().max() <= TOL["fp32_vs_diffusers"] * ref.abs().max()
        # Heun in (x, t) with the velocity is diffusers' FlowMatchHeunDiscreteScheduler: K steps, 2K - 1 calls.
        ref = _diffusers_loop(diffusers.FlowMatchHeunDiscreteScheduler(shift=shift), velocity, z, steps)
        sched = lf.discretize(FLOW, 2 * steps - 1, "flowmatch", shift=shift, final="zero", solver="heun")
        ours = lf.sample(den, z, sched, solver="heun")
        assert (ours - ref).abs().max() <= TOL["fp32_flow_heun"] * ref.abs().max()


@pytest.mark.parametrize("mode", ["lambda", "time"])
def test_ld3_learns_on_a_flow_in_both_modes(mode):
    from ldd_fast.analytic import GaussianMixture
    from ldd_fast.learn import LD3Config

    g = torch.Generator().manual_seed(10)
    net = GaussianMixture(FLOW, torch.randn(8, 2, 4, 4, generator=g), 0.1, prediction="flow")
    den = lf.Denoiser(net, FLOW, prediction="flow", time_input="t")
    res = lf.learn(den, solver="unipc", order=3, nfe=4, shape=(2, 4, 4), mode=mode, n_train=20, n_valid=20,
                   teacher=TeacherSpec(nfe=20), config=LD3Config(rounds_xi=1, rounds_both=2), show_progress=False)
    s = res.schedule
    assert s.t[0] == 1.0 and s.t_eval[0] == 1.0 and torch.isfinite(s.t).all()
    assert all(math.isfinite(h["valid_hard"]) for h in res.history)
    # Measured: lambda 0.42 -> 0.19, time 0.22 -> 0.20 (time mode starts time-uniform, already good for a flow).
    assert s.metrics["valid_hard"] <= 0.95 * s.metrics["valid_hard_init"], s.metrics


def test_level_coordinates_of_a_flow_are_t():
    scale, level = FLOW.ode_coordinates(torch.tensor([1.0, 0.5], dtype=torch.float64))
    assert torch.equal(scale, torch.ones(2, dtype=torch.float64)) and torch.equal(level, torch.tensor([1.0, 0.5],
                                                                                                     dtype=torch.float64))
    den, z, exact = gaussian_problem(FLOW)
    t = torch.tensor([1.0, 0.6, 0.2, 0.001], dtype=torch.float64)
    sched = lf.Schedule(t=t, t_eval=default_t_eval("ipndm", t), noise=FLOW)
    assert torch.isfinite(lf.sample(den, z, sched, solver="ipndm", order=4)).all()


def test_the_default_teacher_of_a_flow():
    spec = TeacherSpec.default_for(FLOW)
    assert (spec.kind, spec.nfe, spec.lower_order_final) == ("time_quadratic", 40, True)
    assert TeacherSpec.default_for(lf.EDM()) == TeacherSpec() and "lower_order_final" not in TeacherSpec().describe()
    den, z, _ = flow_den(dim=4)
    data = make_teacher(den, (4,), 3, show_progress=False)
    assert data.info["teacher"] == spec.describe()
