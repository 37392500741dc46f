"""The folded plan (model-output conversion and guidance inside the linear maps) is the plan."""
import pytest
import torch

import ldd_fast as lf
from ldd_fast.analytic import GaussianData
from ldd_fast.plan import NET_IN, fold, run_folded

from test_denoiser import CondGaussians, EDMRaw, _gaussian
from test_solvers import CONFIGS, IDS
from tolerances import TOL


def _models():
    edm = lf.EDM()
    yield "edm", lf.Denoiser(EDMRaw(_gaussian(edm, "x0")), edm, prediction="edm")
    vp = lf.VPDiscrete.linear()
    for pred in ("eps", "v", "x0"):
        net = GaussianData(vp, torch.linspace(-1, 1, 6), torch.full((6,), 0.5), prediction=pred)
        yield pred, lf.Denoiser(net, vp, prediction=pred, time_input="t")


@pytest.mark.parametrize("solver,order,variant", CONFIGS, ids=IDS)
def test_folded_plan_equals_plan(solver, order, variant):
    for name, den in _models():
        z = torch.randn(3, 6, dtype=torch.float64)
        sched = lf.discretize(den.noise, 5, "edm", solver=solver)
        plan = lf.plan_for(den, sched, solver=solver, order=order, variant=variant)
        folded = fold(plan, den)
        assert (NET_IN in folded.init_registers) == (name == "edm"), "only EDM scales the network input"
        assert folded.n_raw == 1
        ref = lf.run_plan(plan, den, z)
        assert torch.allclose(run_folded(folded, den, z), ref, atol=TOL["fp64_same_math"], rtol=0), name


def test_folded_guidance_reads_both_halves():
    noise = lf.VPLinear()
    den = lf.Denoiser(CondGaussians(noise), noise, prediction="x0", time_input="t", guidance_scale=2.5,
                      null_cond=torch.tensor(2))
    z, cond = torch.randn(4, 2, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    plan = lf.plan_for(den, lf.discretize(noise, 6, "logsnr"), solver="unipc")
    folded = fold(plan, den, guided=True)
    assert folded.n_raw == 2
    assert torch.allclose(run_folded(folded, den, z, cond), lf.run_plan(plan, den, z, cond),
                          atol=TOL["fp64_same_math"], rtol=0)
