import pytest
import torch
from torch import nn

import ldd_fast as lf
from ldd_fast.analytic import Empirical, GaussianMixture, gaussian_problem
from ldd_fast.solvers import SOLVERS, default_t_eval

from tolerances import TOL

CONFIGS = [("euler", 1, None), ("heun", 2, None), ("dpmpp", 1, None), ("dpmpp", 2, None), ("dpmpp", 3, None),
           ("dpmpp", 3, "taylor"), ("unipc", 1, "bh2"), ("unipc", 2, "bh1"), ("unipc", 3, "bh1"), ("unipc", 3, "bh2"),
           ("ipndm", 1, None), ("ipndm", 2, None), ("ipndm", 3, None), ("ipndm", 4, None)]
IDS = [f"{s}{o}{v or ''}" for s, o, v in CONFIGS]


class Recorder(nn.Module):
    """Wraps an x0 network and records every call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, []

    def forward(self, x, t):
        out = self.net(x, t)
        self.calls.append((x.detach().clone(), t.detach().clone(), out.detach().clone()))
        return out


def _nfes(solver):
    return [1, 3, 5, 7] if solver == "heun" else [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("solver,order,variant", CONFIGS, ids=IDS)
@pytest.mark.parametrize("final", ["t_min", "zero"])
def test_exactly_nfe_network_calls(solver, order, variant, final):
    noise = lf.VPLinear()
    den, z, _ = gaussian_problem(noise, batch=2, dim=3)
    rec = Recorder(den.net)
    den = lf.Denoiser(rec, noise, prediction="x0", time_input="t")
    for nfe in _nfes(solver):
        rec.calls.clear()
        sched = lf.discretize(noise, nfe, "logsnr", solver=solver, final=final)
        out = lf.sample(den, z, sched, solver=solver, order=order, variant=variant)
        assert len(rec.calls) == nfe
        assert torch.equal(torch.stack([c[1][0] for c in rec.calls]), sched.t_eval), "calls at t_eval, in order"
        assert torch.isfinite(out).all()
        if final == "zero":
            assert torch.equal(out, rec.calls[-1][2]), "landing on sigma = 0 returns the last x0 estimate"


def test_heun_needs_odd_nfe_and_layouts_are_checked():
    noise = lf.EDM()
    den, z, _ = gaussian_problem(noise, batch=1, dim=2)
    with pytest.raises(ValueError, match="odd nfe"):
        lf.discretize(noise, 6, "edm", solver="heun")
    with pytest.raises(ValueError, match="heun layout"):
        lf.sample(den, z, lf.discretize(noise, 5, "edm", solver="heun"), solver="unipc")
    with pytest.raises(ValueError, match="multistep layout"):
        lf.sample(den, z, lf.discretize(noise, 5, "edm"), solver="heun")


def _smooth_times(noise, solver, nfe):
    """Times inside [t_min, t_max] away from VPDiscrete's interpolation kinks (grid points k / 1000)."""
    n = (nfe + 1) // 2 if solver == "heun" else nfe
    lo, hi = noise.lam(torch.tensor(noise.t_max * 0.9995)), noise.lam(torch.tensor(noise.t_min * 1.5))
    t = noise.t_of_lambda(torch.linspace(0, 1, n + 1, dtype=torch.float64) * (hi - lo) + lo)
    if isinstance(noise, lf.VPDiscrete):
        t = (torch.floor(t * 1000) + 0.5) / 1000
    return t


@pytest.mark.parametrize("noise", [lf.EDM(), lf.VPDiscrete.linear()], ids=repr)
@pytest.mark.parametrize("solver,order,variant", CONFIGS, ids=IDS)
def test_gradcheck_wrt_times(noise, solver, order, variant):
    den, z, _ = gaussian_problem(noise, batch=2, dim=3)
    nfe = 5 if solver == "heun" else 4
    t = _smooth_times(noise, solver, nfe).requires_grad_()
    t_eval = (default_t_eval(solver, t.detach()) * 0.999).requires_grad_()  # decoupled network times

    def run(t, t_eval):
        plan = lf.make_plan(noise, t, t_eval, solver=solver, order=order, variant=variant,
                            **({} if solver in ("euler", "heun") else {"lower_order_final": True}))
        return lf.run_plan(plan, den, z)

    assert torch.autograd.gradcheck(run, (t, t_eval), eps=1e-6, atol=TOL["gradcheck_atol"],
                                    rtol=TOL["gradcheck_rtol"])
    g_t, g_e = torch.autograd.grad(run(t, t_eval).pow(2).sum(), (t, t_eval))
    assert (g_t.abs() > 0).all(), f"zero gradient w.r.t. t: {g_t}"
    assert (g_e.abs() > 0).all(), f"zero gradient w.r.t. t_eval: {g_e}"


@pytest.mark.parametrize("solver,order,variant", CONFIGS, ids=IDS)
def test_float32_execution_matches_float64(solver, order, variant):
    noise = lf.EDM()
    den, z, _ = gaussian_problem(noise, batch=4, dim=8)
    sched = lf.discretize(noise, 5 if solver == "heun" else 6, "edm", solver=solver)
    ref = lf.sample(den, z, sched, solver=solver, order=order, variant=variant)
    out = lf.sample(den, z.float(), sched, solver=solver, order=order, variant=variant)
    assert out.dtype == torch.float32
    assert (out.double() - ref).abs().max() <= TOL["fp32_vs_fp64"] * ref.abs().max()


def test_plan_registers_and_differentiable_coefficients():
    noise = lf.EDM()
    t = lf.discretize(noise, 6, "logsnr").t.requires_grad_()
    expected = {"euler": 1, "heun": 3, "dpmpp": 3, "unipc": 5, "ipndm": 4}
    for name, spec in SOLVERS.items():
        tt = lf.discretize(noise, 5, "logsnr", solver="heun").t.requires_grad_() if name == "heun" else t
        plan = lf.make_plan(noise, tt, default_t_eval(name, tt), solver=name, order=max(spec.orders),
                            **({"lower_order_final": False} if "lower_order_final" in spec.options else {}))
        assert plan.max_registers == expected[name], name
        assert all(s.coef.dtype == torch.float64 and s.coef.requires_grad for s in plan.steps), name
        assert plan.steps[-1].new_registers == ("x",)


def test_gaussian_mixture_all_solvers_converge_to_one_answer():
    noise = lf.VPCosine()
    g = torch.Generator().manual_seed(3)
    net = GaussianMixture(noise, torch.randn(5, 4, generator=g), 0.2)
    den = lf.Denoiser(net, noise, prediction="x0", time_input="t")
    z = torch.randn(16, 4, generator=g, dtype=torch.float64)
    ref = lf.sample(den, z, lf.discretize(noise, 400, "logsnr"), solver="unipc", order=3)
    other = lf.sample(den, z, lf.discretize(noise, 400, "logsnr"), solver="dpmpp", order=3)
    assert (ref - other).abs().max() < 1e-4  # measured 1.5e-5: both converged to the same flow
    for solver, order, variant in CONFIGS:
        errs = []
        for nfe in ((5, 15) if solver == "heun" else (6, 16)):
            sched = lf.discretize(noise, nfe, "logsnr", solver=solver)
            errs.append((lf.sample(den, z, sched, solver=solver, order=order, variant=variant) - ref).abs().mean())
        assert errs[1] < 0.5 * errs[0], f"{solver}{order}: error {errs} does not fall with nfe"


def test_empirical_digits_denoiser_lands_on_training_points():
    from sklearn.datasets import load_digits

    data = torch.tensor(load_digits().data[:200], dtype=torch.float64) / 8.0 - 1.0  # [-1, 1]
    noise = lf.EDM()
    den = lf.Denoiser(Empirical(noise, data), noise, prediction="x0", time_input="t")
    z = torch.randn(8, 64, dtype=torch.float64)
    out = lf.sample(den, z, lf.discretize(noise, 40, "edm"), solver="unipc", order=3)
    nearest = torch.cdist(out, data).min(1).values
    spacing = torch.cdist(data, data).add(torch.eye(200) * 1e9).min(1).values.median()
    assert (nearest < 0.05 * spacing).all(), "the exact denoiser of a finite set reproduces its points"


def test_sample_bad_input():
    noise = lf.EDM()
    den, z, _ = gaussian_problem(noise, batch=2, dim=3)
    s = lf.discretize(noise, 4, "edm")
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        lf.sample(den, z, s, solver="rk4")
    with pytest.raises(ValueError, match="supports orders"):
        lf.sample(den, z, s, solver="unipc", order=4)
    with pytest.raises(ValueError, match="has no variants"):
        lf.sample(den, z, s, solver="euler", variant="bh1")
    with pytest.raises(ValueError, match="variants"):
        lf.sample(den, z, s, solver="unipc", variant="bh3")
    with pytest.raises(ValueError, match="pass solver="):
        lf.sample(den, z, s)
    with pytest.raises(TypeError, match="unknown sampler option"):
        lf.sample(den, z, s, solver="unipc", corrector=False)
    with pytest.raises(ValueError, match="final"):
        lf.sample(den, z, s, solver="unipc", final="zero")
    with pytest.raises(TypeError, match="floating-point"):
        lf.sample(den, z.long(), s, solver="unipc")
    with pytest.raises(ValueError, match="one entry per sample"):
        lf.sample(den, z, s, solver="unipc", cond=torch.zeros(3))
    with pytest.raises(TypeError, match="lf.Schedule"):
        lf.sample(den, z, s.t, solver="unipc")
    with pytest.raises(TypeError, match="Denoiser"):
        lf.sample(den.net, z, s, solver="unipc")


def test_schedule_for_another_model_or_solver_is_an_error_unless_forced():
    noise = lf.EDM()
    den, z, _ = gaussian_problem(noise, batch=2, dim=3)
    other, _, _ = gaussian_problem(noise, batch=2, dim=3, seed=5)
    s = lf.discretize(noise, 4, "edm")
    learned = s.replace(solver="unipc", order=3, variant="bh2", fingerprint=den.fingerprint())
    lf.sample(den, z, learned)  # the schedule's own solver, order and variant
    with pytest.raises(lf.IncompatibleSchedule, match="another model"):
        lf.sample(other, z, learned)
    with pytest.raises(lf.IncompatibleSchedule, match="solver 'unipc'"):
        lf.sample(den, z, learned, solver="dpmpp")
    with pytest.raises(lf.IncompatibleSchedule, match="order 3"):
        lf.sample(den, z, learned, order=2)
    with pytest.raises(lf.IncompatibleSchedule, match="noise schedule"):
        vp_den, _, _ = gaussian_problem(lf.VPLinear(), batch=2, dim=3)
        lf.sample(vp_den, z, lf.discretize(noise, 4, "edm"), solver="unipc")
    forced = lf.sample(other, z, learned, force=True)
    assert torch.isfinite(forced).all()
