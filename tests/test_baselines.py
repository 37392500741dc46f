"""GITS and DMN (ldd_fast.baselines), the methods the learned schedules are measured against.

Checked on what holds exactly: DMN's step weights integrate e^lambda times any polynomial of degree
below the step's order exactly (they are Lagrange-interpolation weights), its optimum reproduces the
authors' published procedure on the linear VP schedule; GITS's dynamic programme equals a brute-force
search, and on a constant denoiser (where the fine teacher and every DDIM step are exact) every cost
vanishes. The plain hard-loss learner is LD3Config(soft=False, optimizer="adam").
"""
import itertools
import math

import pytest
import torch

import ldd_fast as lf
from ldd_fast.baselines import _dmn_coefficients, dmn, dmn_objective, fine_trajectory, gits, gits_costs, gits_path
from ldd_fast.plan import step_orders

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("order", [1, 2, 3])
def test_dmn_weights_integrate_polynomials_exactly(order):
    """sum_m C_im p(lambda_m) = int e^lambda p(lambda) dlambda over the step for deg p < order."""
    lam = torch.tensor([-3.0, -2.1, -0.7, 0.4, 1.9], dtype=torch.float64)
    i = 3
    c = _dmn_coefficients(lam, [order] * 4)[i]
    grid = torch.linspace(float(lam[i]), float(lam[i + 1]), 20001, dtype=torch.float64)
    for deg in range(order):
        exact = torch.trapezoid(torch.exp(grid) * grid**deg, grid)
        ours = sum(cm * lam[m] ** deg for m, cm in c.items())
        assert float(ours) == pytest.approx(float(exact), rel=1e-7)


def test_dmn_reproduces_the_authors_optimum_on_linear_vp():
    """The authors' step_optim.py (trust-constr from uniform lambda, sigma^2 / alpha weights, order 3) on the
    linear VP schedule, eps = 1e-3, gives these log-SNR nodes for 5 and 6 steps (run by us from their code)."""
    ns = lf.VPLinear()
    published = {5: [-5.025, -2.1818, -1.2158, -0.2578, 1.0646, 4.5577],
                 6: [-5.025, -2.545, -1.4233, -0.8112, 0.0997, 1.2571, 4.5577]}
    for n, ref in published.items():
        s = dmn(ns, n, weight="sigma2/alpha")
        assert ns.lam(s.t).tolist() == pytest.approx(ref, abs=2e-4)
        assert s.t[0] == ns.t_max and s.t[-1] == ns.t_min and s.origin == "dmn"
        assert s.metrics["objective"] <= dmn_objective(torch.tensor(ref, dtype=torch.float64),
                                                       step_orders(n, 3, True), "sigma2/alpha").item() + 1e-6


def test_dmn_schedules_are_valid_on_every_noise():
    for noise in (lf.EDM(), lf.VPLinear(), lf.RectifiedFlow()):
        for nfe in (3, 4, 6):
            s = dmn(noise, nfe, iters=200)
            assert s.nfe == nfe and bool((s.t[1:] < s.t[:-1]).all())
    with pytest.raises(ValueError, match="multistep"):
        dmn(lf.EDM(), 5, solver="heun")
    with pytest.raises(ValueError, match="weight"):
        dmn(lf.EDM(), 4, weight="sigma")
    with pytest.raises(TypeError, match="NoiseSchedule"):
        dmn("edm", 4)


def test_gits_dynamic_programme_is_the_brute_force_optimum():
    g = torch.Generator().manual_seed(0)
    n, coeff = 9, 1.15
    costs = torch.rand(n + 1, n + 1, generator=g, dtype=torch.float64) - 0.2  # "dev" costs can be negative
    for steps in (1, 2, 3, 4):
        def value(path):
            return sum(coeff**m * float(costs[a, b]) for m, (a, b) in enumerate(zip(path[:-1], path[1:])))
        brute = min(([0, *mid, n] for mid in itertools.combinations(range(1, n), steps - 1)), key=value)
        assert gits_path(costs, steps, coeff) == brute
    with pytest.raises(ValueError, match="steps"):
        gits_path(costs, n + 1)


class ConstantDenoiser(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.register_buffer("c", c)

    def forward(self, x, t):
        return self.c.expand_as(x)


@pytest.mark.parametrize("noise", [lf.EDM(), lf.VPLinear(), lf.RectifiedFlow()], ids=["edm", "vp", "flow"])
@pytest.mark.parametrize("metric", ["dev", "l2"])
def test_gits_costs_vanish_for_a_constant_denoiser(noise, metric):
    c = torch.randn(1, 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    den = lf.Denoiser(ConstantDenoiser(c), noise, prediction="x0", time_input="t")
    z = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t, y, d = fine_trajectory(den, z, steps=12)
    assert y.shape == (13, 4, 3, 2) and d.shape == (12, 4, 3, 2)
    costs = gits_costs(noise, t, y, d, metric)
    finite = costs[torch.isfinite(costs)]
    assert finite.numel() == 12 * 13 // 2 and float(finite.abs().max()) < 1e-9 * float(y.abs().max())


def test_gits_schedule_on_a_mixture():
    from test_learn import mixture_model

    den = mixture_model()
    z = torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    for solver, nfe in (("unipc", 4), ("heun", 5), ("euler", 3)):
        s = gits(den, nfe, z, solver=solver, fine_steps=20)
        assert s.nfe == nfe and s.origin == "gits" and bool((s.t[1:] < s.t[:-1]).all())
        assert s.t[0] == den.noise.t_max and s.t[-1] == den.noise.t_min
        assert s.info["network_calls"] == 20 * 16
        lf.sample(den, z, s, solver=solver)
    with pytest.raises(ValueError, match="fine grid"):
        gits(den, 30, z, fine_steps=20)
    with pytest.raises(ValueError, match="coeff"):
        gits(den, 4, z, coeff=math.nan)


def test_hard_loss_learner_is_a_config_of_the_trainer():
    from ldd_fast.learn import LD3Config, learn
    from test_learn import mixture_model

    den = mixture_model()
    with pytest.raises(ValueError, match="optimizer"):
        learn(den, solver="unipc", nfe=3, shape=(2, 4, 4), config=LD3Config(optimizer="sgd"), show_progress=False)
    res = learn(den, solver="unipc", nfe=3, shape=(2, 4, 4), n_train=8, n_valid=8, show_progress=False,
                config=LD3Config(soft=False, optimizer="adam", rounds_xi=1, rounds_both=2, batch_size=4))
    assert res.schedule.metrics["valid_hard"] <= res.schedule.metrics["valid_hard_init"]
    assert res.schedule.info["soft"] is False
