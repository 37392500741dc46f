import pytest
import torch
from torch import nn

import ldd_fast as lf
from ldd_fast.analytic import GaussianData, GaussianMixture

from tolerances import TOL

NOISES = [lf.EDM(), lf.VPLinear(), lf.VPCosine(), lf.VPDiscrete.linear()]


def _gaussian(noise, prediction):
    g = torch.Generator().manual_seed(1)
    return GaussianData(noise, torch.randn(6, generator=g), 0.3 + 0.5 * torch.rand(6, generator=g),
                        prediction=prediction)


@pytest.mark.parametrize("noise", NOISES, ids=repr)
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_every_parameterisation_gives_the_same_x0(noise, prediction):
    ref = lf.Denoiser(_gaussian(noise, "x0"), noise, prediction="x0", time_input="t")
    den = lf.Denoiser(_gaussian(noise, prediction), noise, prediction=prediction, time_input="t")
    x = torch.randn(4, 6, dtype=torch.float64)
    for t in (noise.t_min * 3, 0.5 * (noise.t_min + noise.t_max), noise.t_max):
        assert torch.allclose(den(x, t), ref(x, t), atol=TOL["fp64_same_math"], rtol=1e-8)
    per_sample = torch.linspace(noise.t_min * 2, noise.t_max, 4, dtype=torch.float64)
    assert torch.allclose(den(x, per_sample), ref(x, per_sample), atol=TOL["fp64_same_math"], rtol=1e-8)


class EDMRaw(nn.Module):
    """The raw network F that makes EDM's preconditioning produce the exact Gaussian denoiser."""

    def __init__(self, gauss, sigma_data=0.5):
        super().__init__()
        self.gauss, self.sd = gauss, sigma_data

    def forward(self, x_in, c_noise):
        s = torch.exp(4 * c_noise.double())[:, None]  # c_noise = ln(sigma) / 4
        x = x_in * torch.sqrt(s**2 + self.sd**2)        # undo c_in (EDM noise: alpha = 1)
        c_skip = self.sd**2 / (s**2 + self.sd**2)
        c_out = s * self.sd / torch.sqrt(s**2 + self.sd**2)
        return (self.gauss.x0(x, s[:, 0]) - c_skip * x) / c_out


def test_edm_preconditioning():
    noise = lf.EDM()
    gauss = _gaussian(noise, "x0")
    den = lf.Denoiser(EDMRaw(gauss), noise, prediction="edm")
    x = torch.randn(3, 6, dtype=torch.float64)
    for t in (0.01, 1.0, 50.0):
        assert torch.allclose(den(x, t), gauss.x0(x, torch.tensor(t, dtype=torch.float64)), atol=1e-9)
    aff = den.affine(torch.tensor(2.0, dtype=torch.float64))
    assert torch.allclose(aff.c_in, torch.tensor(1 / (4 + 0.25) ** 0.5, dtype=torch.float64))
    assert torch.allclose(den.time_net(torch.tensor(2.0)), torch.log(torch.tensor(2.0, dtype=torch.float64)) / 4)


def test_time_inputs():
    vp = lf.VPDiscrete.linear()
    den = lf.Denoiser(lambda x, t: x, vp, prediction="eps")
    assert den.time_input == "index"
    t = torch.tensor([0.001, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    idx = den.time_net(t)
    assert torch.allclose(idx, torch.tensor([0.0, 499.0, 999.0], dtype=torch.float64))
    (g,) = torch.autograd.grad(idx.sum(), t)
    assert torch.allclose(g, torch.full_like(g, 1000.0)), "the index must stay continuous, never rounded"
    edm = lf.Denoiser(lambda x, t: x, lf.EDM(), prediction="x0")
    assert edm.time_input == "sigma" and torch.equal(edm.time_net(torch.tensor(3.0)), torch.tensor(3.0).double())
    custom = lf.Denoiser(lambda x, t: x, lf.VPLinear(), time_input=lambda t: 999 * t)
    assert torch.allclose(custom.time_net(torch.tensor(0.5)), torch.tensor(499.5, dtype=torch.float64))


class CondGaussians(nn.Module):
    """x0 prediction of class `cond` (0 or 1); class 2 is the null condition: the mixture."""

    def __init__(self, noise):
        super().__init__()
        means = torch.tensor([[1.0, 0.0], [-1.0, 0.5]], dtype=torch.float64)
        self.parts = nn.ModuleList([GaussianMixture(noise, means[k:k + 1], 0.3) for k in range(2)])
        self.mix = GaussianMixture(noise, means, 0.3)
        self.calls, self.batches = 0, []

    def forward(self, x, t, cond=None):
        self.calls += 1
        self.batches.append(x.shape[0])
        if cond is None:
            return self.mix(x, t)
        outs = torch.stack([self.parts[0](x, t), self.parts[1](x, t), self.mix(x, t)])
        return outs[cond, torch.arange(x.shape[0])]


def test_guidance_is_one_batched_call_with_the_null_condition():
    noise = lf.VPLinear()
    net = CondGaussians(noise)
    den = lf.Denoiser(net, noise, prediction="x0", time_input="t", guidance_scale=3.0, null_cond=torch.tensor(2))
    x = torch.randn(4, 2, dtype=torch.float64)
    cond = torch.tensor([0, 1, 1, 0])
    out = den(x, 0.5, cond)
    assert net.batches == [8], "cond and null cond must go through the network as one batch"
    t = torch.tensor(0.5, dtype=torch.float64)
    c, u = net(x, t, cond), net(x, t, torch.full_like(cond, 2))
    assert torch.allclose(out, u + 3.0 * (c - u), atol=TOL["fp64_same_math"])
    assert torch.allclose(den(x, 0.5), net(x, t), atol=TOL["fp64_same_math"])  # no cond: unconditional, one call
    with pytest.raises(ValueError, match="null_cond"):
        lf.Denoiser(net, noise, guidance_scale=2.0)


def test_fingerprint_identity():
    net = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 4))
    den = lf.Denoiser(lambda x, t: x, lf.EDM())  # not a module: no weights
    assert len(den.fingerprint()) == 64
    den = lf.Denoiser(net, lf.EDM(), prediction="eps")
    fp = den.fingerprint()
    assert den.fingerprint() == fp
    net.half()
    assert den.fingerprint() == fp, "an fp16 cast keeps the fingerprint"
    net.float()
    with torch.no_grad():
        net[0].weight[0, 0] += 0.1
    assert den.fingerprint() != fp, "changed weights change it"
    other = lf.Denoiser(net, lf.EDM(), prediction="x0")
    assert other.fingerprint() != den.fingerprint(), "the prediction type is part of it"
    vp = lf.Denoiser(net, lf.VPLinear(), prediction="eps")
    assert vp.fingerprint() != den.fingerprint(), "the noise schedule is part of it"


@pytest.mark.parametrize("kwargs, err, match", [
    ({"prediction": "score"}, ValueError, "prediction must be one of"),
    ({"time_input": "index"}, ValueError, "VPDiscrete"),
    ({"time_input": "seconds"}, ValueError, "time_input must be"),
    ({"sigma_data": 0.0}, ValueError, "sigma_data"),
])
def test_denoiser_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        lf.Denoiser(lambda x, t: x, lf.EDM(), **kwargs)


def test_denoiser_bad_calls():
    with pytest.raises(TypeError, match="NoiseSchedule"):
        lf.Denoiser(lambda x, t: x, "edm")
    with pytest.raises(TypeError, match="callable"):
        lf.Denoiser(3, lf.EDM())
    den = lf.Denoiser(lambda x, t: x, lf.EDM(), prediction="x0")
    with pytest.raises(TypeError, match="floating-point"):
        den(torch.ones(2, 3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="one entry per sample"):
        den(torch.ones(2, 3), torch.ones(3))
    with pytest.raises(TypeError, match="takes no condition"):
        den(torch.ones(2, 3), 1.0, torch.zeros(2))
