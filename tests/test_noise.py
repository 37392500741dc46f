import math
import warnings

import pytest
import torch

import ldd_fast as lf
from ldd_fast.noise import from_description

from tolerances import TOL

NOISES = [lf.EDM(), lf.VPLinear(), lf.VPCosine(), lf.VPDiscrete.linear(), lf.VPDiscrete.scaled_linear()]


@pytest.mark.parametrize("noise", NOISES, ids=repr)
def test_lambda_inverse_and_vp_identity(noise):
    t = torch.linspace(noise.t_min, noise.t_max, 101, dtype=torch.float64)
    lam = noise.lam(t)
    assert (lam[1:] < lam[:-1]).all(), "lambda must decrease in t"
    assert torch.allclose(noise.t_of_lambda(lam), t, rtol=1e-10, atol=1e-12)
    alpha, sigma = noise.alpha(t), noise.sigma(t)
    assert torch.allclose(torch.log(alpha / sigma), lam, atol=1e-10)
    if not isinstance(noise, lf.EDM):
        assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(t), atol=TOL["fp64_same_math"])


@pytest.mark.parametrize("noise", NOISES, ids=repr)
def test_schedule_functions_are_differentiable(noise):
    t = torch.tensor(0.37 * noise.t_max + 0.63 * noise.t_min, dtype=torch.float64, requires_grad=True)
    fns = (noise.sigma, noise.lam) if isinstance(noise, lf.EDM) else (noise.alpha, noise.sigma, noise.lam)
    for fn in fns:
        (g,) = torch.autograd.grad(fn(t), t)
        eps = 1e-6 * float(t.detach())
        fd = (fn(t.detach() + eps) - fn(t.detach() - eps)) / (2 * eps)
        assert g != 0 and torch.allclose(g, fd, rtol=1e-5), fn.__name__


def test_vp_discrete_matches_alphas_cumprod_at_grid_points():
    noise = lf.VPDiscrete.linear()
    k = torch.tensor([0, 1, 10, 500, 998, 999])
    t = (k + 1).double() / 1000
    assert torch.allclose(noise.alpha(t) ** 2, noise.alphas_cumprod[k], rtol=1e-12)
    assert torch.allclose(noise.index(t), k.double())


def test_edm_is_sigma_equals_t():
    noise = lf.EDM()
    t = torch.tensor([0.002, 1.0, 80.0], dtype=torch.float64)
    assert torch.equal(noise.sigma(t), t) and torch.equal(noise.alpha(t), torch.ones(3, dtype=torch.float64))
    assert noise.prior_scale == 80.0 and lf.VPLinear().prior_scale == 1.0


def test_zero_terminal_snr_is_clipped_with_a_warning_never_nan():
    ac = lf.VPDiscrete.linear().alphas_cumprod.clone()
    ac[-1] = 0.0
    with pytest.warns(UserWarning, match="zero terminal SNR"):
        noise = lf.VPDiscrete(ac)
    assert noise.t_max == 0.999 and math.isfinite(float(noise.lam(noise.t_max)))
    with pytest.warns(UserWarning, match="zero terminal SNR"):
        cos = lf.VPCosine(t_max=1.0)
    assert math.isfinite(float(cos.lam(cos.t_max)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sched = lf.discretize(noise, 6, "logsnr")
    assert torch.isfinite(sched.t).all()


@pytest.mark.parametrize("make, match", [
    (lambda: lf.EDM(1.0, 0.5), "t_min < t_max"),
    (lambda: lf.VPLinear(beta_min=5, beta_max=1), "beta_min < beta_max"),
    (lambda: lf.VPDiscrete([0.9, 0.95]), "strictly decreasing"),
    (lambda: lf.VPDiscrete([0.9, float("nan")]), "finite"),
    (lambda: lf.VPDiscrete([0.9]), "at least 2"),
    (lambda: from_description({"type": "Nope"}), "unknown noise schedule"),
])
def test_bad_parameters_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("noise", NOISES, ids=repr)
def test_description_round_trip(noise):
    again = from_description(noise.describe())
    assert again == noise
    t = torch.linspace(noise.t_min, noise.t_max, 7, dtype=torch.float64)
    assert torch.equal(again.lam(t), noise.lam(t))
