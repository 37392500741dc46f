"""lf.to_sigmas / lf.k_sampler against the real k-diffusion (0.1.1.post1) on the built-in DDPM model (issue 20).

k-diffusion is never an extra: its requirements would replace the pinned torch. A session fixture installs it
with --no-deps into a temporary folder, with the pure-python packages its sampling module needs, and the
folder is on sys.path for this module only; without a network those tests skip. The rest runs without it.
"""
import importlib.util
import subprocess
import sys
import types
import warnings

import pytest
import torch

import ldd_fast as lf
from ldd_fast import solvers

from tolerances import TOL

pytestmark = pytest.mark.usefixtures("one_thread")

KD_VERSION = "0.1.1.post1"
# What k_diffusion.sampling imports beyond this project's test environment (torch, scipy, tqdm, pillow,
# safetensors): pure python, installed only where missing.
KD_NEEDS = {"torchsde": "torchsde==0.2.6", "torchdiffeq": "torchdiffeq==0.2.5", "trampoline": "trampoline==0.1.2"}
KD_TOPS = ("k_diffusion", "torchvision", *KD_NEEDS)


@pytest.fixture(scope="session")
def kd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("k_diffusion_site")
    wanted = [f"k-diffusion=={KD_VERSION}"] + [req for mod, req in KD_NEEDS.items()
                                               if importlib.util.find_spec(mod) is None]
    try:
        run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                              "--disable-pip-version-check", "--target", str(folder), *wanted],
                             capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip install {' '.join(wanted)} timed out (no network?)")
    if run.returncode != 0:
        pytest.skip(f"pip could not install {' '.join(wanted)} (no network?): {run.stderr.strip()[-300:]}")
    return folder


@pytest.fixture(scope="module")
def kd(kd_folder):
    """k_diffusion.sampling and k_diffusion.external, importable from this module only."""
    before = set(sys.modules)
    sys.path.insert(0, str(kd_folder))
    # k_diffusion/__init__.py imports its training and evaluation modules (clean-fid, CLIP, scikit-image, dctorch,
    # jsonmerge, einops), none of which sampling needs: the package is registered without running it.
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(kd_folder / "k_diffusion")]
    # k_diffusion.utils, which sampling imports, imports torchvision.transforms.functional for two PIL helpers we
    # never call; torchvision cannot be installed beside the pinned torch (each wheel pins its own torch): stubbed.
    tv, tr, fn = (types.ModuleType(n) for n in ("torchvision", "torchvision.transforms",
                                                  "torchvision.transforms.functional"))
    tv.transforms, tr.functional = tr, fn
    sys.modules.update({"k_diffusion": pkg, "torchvision": tv, "torchvision.transforms": tr,
                        "torchvision.transforms.functional": fn})
    try:
        from k_diffusion import external, sampling
        yield types.SimpleNamespace(sampling=sampling, external=external)
    finally:
        sys.path.remove(str(kd_folder))
        for name in set(sys.modules) - before:
            if name.split(".")[0] in KD_TOPS:
                del sys.modules[name]


class EpsNet(torch.nn.Module):
    """The zoo's DDPM network as k-diffusion's inner model: inner_model(x * c_in, t, **extra_args), with t the
    continuous training index and the class labels as extra_args["cond"]."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t, cond=None):
        return self.net(x, t, cond)


class Counting:
    """A k-diffusion model that counts its calls and checks k-diffusion's sigma * s_in (one sigma per sample)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, sigma, **extra_args):
        assert sigma.shape == (x.shape[0],)
        self.calls += 1
        return self.model(x, sigma, **extra_args)


@pytest.fixture(scope="module")
def vp(kd):
    """The built-in DDPM model in float64 (lf.Denoiser), and k-diffusion's eps wrappers around the same network."""
    den = lf.zoo.load("digits_vp")
    den.net.double()
    noise = den.noise

    class VPDiscreteTimes(kd.external.DiscreteEpsDDPMDenoiser):
        """k-diffusion's wrapper with lf.VPDiscrete's sigma -> index map (log alpha linear in t) in place of its
        own (log sigma linear in the index): the network sees the times lf.sample gives it, so any difference
        left is the solvers'."""

        def sigma_to_t(self, sigma, quantize=None):
            return noise.index(noise.t_of_lambda(-sigma.log()))

    ac = noise.alphas_cumprod  # float64
    return types.SimpleNamespace(
        den=den, noise=noise, ours=VPDiscreteTimes(EpsNet(den.net), ac, quantize=False),
        stock=kd.external.DiscreteEpsDDPMDenoiser(EpsNet(den.net), ac, quantize=False),
        z=torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
        cond=torch.tensor([1, 3, 5, 7]))


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def ve_start(s, z):
    """k-diffusion's starting x for lf.sample's start z (VP: x_vp = z, so x = z / alpha(t_0))."""
    return z / s.noise.alpha(s.t[0])


def vp_end(s, x):
    """lf.sample's result from k-diffusion's (the VE state at sigmas[-1]: x_vp = alpha x, alpha = 1 at sigma 0)."""
    return x if s.final == "zero" else x * s.noise.alpha(s.t[-1])


def kd_run(sampler, model, s, vp, **kw):
    x = sampler(model, ve_start(s, vp.z), lf.to_sigmas(s, dtype=torch.float64), extra_args={"cond": vp.cond},
                disable=True, **kw)
    return vp_end(s, x)


def random_coefficients(s, seed=0):
    free = solvers.make_plan(s.noise, s.t, s.t_eval, solver=s.solver, order=s.order, variant=s.variant,
                             final=s.final).free
    g = torch.Generator().manual_seed(seed)
    return [(0.3 * torch.randn(n, generator=g, dtype=torch.float64)).tolist() for n in free]


def learned(noise, solver, order, final, variant=None):
    """A schedule with network times moved off the solver times and random learned coefficients."""
    nfe = 5 if solver == "heun" else 6
    s = lf.discretize(noise, nfe, "logsnr", solver=solver, final=final).replace(solver=solver, order=order,
                                                                                 variant=variant)
    t_eval = torch.clamp(s.t_eval * 0.93, min=noise.t_min)  # every call but one at t_min moves
    s = s.replace(t_eval=t_eval)
    return s.replace(coefficients=random_coefficients(s))


# ----- the sigma convention -----------------------------------------------------------------------------------

def test_to_sigmas_is_sigma_over_alpha_at_the_solver_times():
    noise = lf.VPDiscrete.linear()
    zero, t_min = (lf.discretize(noise, 6, "edm", final=f) for f in ("zero", "t_min"))
    sig = lf.to_sigmas(zero)
    assert sig.dtype == torch.float32 and sig.shape == (7,)
    assert (sig[1:] < sig[:-1]).all() and sig[-1] == 0 and sig[-2] > 0  # one trailing zero, not two
    t = zero.t[:-1]
    assert torch.equal(lf.to_sigmas(zero, dtype=torch.float64)[:-1], noise.sigma(t) / noise.alpha(t))
    last = lf.to_sigmas(t_min, dtype=torch.float64)
    assert last.shape == (7,) and float(last[-1]) == pytest.approx(float(noise.sigma_ve(noise.t_min)), rel=1e-12)
    edm = lf.discretize(lf.EDM(), 4, "edm", final="zero")
    assert torch.equal(lf.to_sigmas(edm, dtype=torch.float64), edm.t)  # EDM's t is k-diffusion's sigma
    heun = lf.discretize(noise, 5, "edm", solver="heun", final="zero")
    assert lf.to_sigmas(heun).shape == (4,)  # K + 1 sigmas for 2K - 1 calls, as sample_heun


def test_flows_and_non_schedules_are_refused_by_name():
    """A flow from t = 1 has sigma = inf; one that starts below it would be fed VE sigmas, which ComfyUI's flow
    models (sigma = t) read as the wrong time: both refused."""
    flow = lf.discretize(lf.RectifiedFlow(), 4, "flowmatch", shift=3.0, final="zero")
    below = lf.discretize(lf.RectifiedFlow(t_max=0.9), 4, "logsnr")
    for s in (flow, below):
        for call in (lambda: lf.to_sigmas(s), lambda: lf.k_sampler(s, solver="euler")):
            with pytest.raises(lf.InvalidArgument, match="rectified-flow schedule has no k-diffusion sigmas.*infinite"):
                call()
    with pytest.raises(lf.InvalidArgumentType, match="lf.Schedule"):
        lf.to_sigmas(flow.t)
    with pytest.raises(lf.InvalidArgumentType, match="dtype"):
        lf.to_sigmas(lf.discretize(lf.EDM(), 3), dtype=torch.float16)


def test_the_edm_grid_is_k_diffusions_karras_grid(kd):
    """discretize(noise, n, "edm", final="zero") is get_sigmas_karras(n, sigma_min, sigma_max) on every axis."""
    for noise in (lf.EDM(), lf.VPDiscrete.linear(), lf.VPCosine()):
        for n in (4, 10, 20):
            ours = lf.to_sigmas(lf.discretize(noise, n, "edm", final="zero"), dtype=torch.float64)
            theirs = kd.sampling.get_sigmas_karras(n, float(ours[-2]), float(ours[0])).double()
            assert theirs[-1] == 0
            assert float(((theirs - ours).abs() / ours.clamp_min(1e-30)).max()) < TOL["karras_fp32_ramp"]


# ----- k-diffusion's samplers and ours ------------------------------------------------------------------------

@pytest.mark.parametrize("final", ["zero", "t_min"])
def test_sample_euler_is_our_euler(kd, vp, final):
    """DDIM is Euler in sigma on x / alpha: k-diffusion's sample_euler, from x = z / alpha(t_0), is lf.sample's
    Euler; with final="t_min" it steps to sigma(t_min) and returns the VE state there (x_vp / alpha)."""
    s = lf.discretize(vp.noise, 6, "edm", final=final)
    ref = lf.sample(vp.den, vp.z, s, solver="euler", cond=vp.cond)
    assert rel(kd_run(kd.sampling.sample_euler, vp.ours, s, vp), ref) < TOL["fp64_same_math"]
    assert rel(kd_run(lf.k_sampler(s, solver="euler"), vp.ours, s, vp), ref) < TOL["fp64_same_math"]


def test_sample_heun_is_our_heun_when_it_lands_on_zero(kd, vp):
    """sample_heun skips its second stage on the step to sigma = 0, as our Heun does on its last step: the same
    2K - 1 calls. To a last sigma > 0 (final="t_min") it takes that stage too, a call our Heun never makes."""
    s = lf.discretize(vp.noise, 5, "edm", solver="heun", final="zero")
    ref = lf.sample(vp.den, vp.z, s, solver="heun", cond=vp.cond)
    model = Counting(vp.ours)
    assert rel(kd_run(kd.sampling.sample_heun, model, s, vp), ref) < TOL["fp64_same_math"] and model.calls == 5
    s = lf.discretize(vp.noise, 5, "edm", solver="heun", final="t_min")
    model = Counting(vp.ours)
    kd_run(kd.sampling.sample_heun, model, s, vp)
    assert model.calls == 6  # 3 full Heun steps; lf.sample and lf.k_sampler take 5 calls on this schedule


def test_sample_dpmpp_2m_is_our_dpmpp_2(kd, vp):
    """sample_dpmpp_2m is DPM-Solver++ 2M in its midpoint form (D + (D - D_prev) / (2 r)), ours of both variants
    (they differ at order 3 only); it takes the first-order step only into sigma = 0, so on a schedule ending at
    t_min it is ours with lower_order_final=False."""
    s = lf.discretize(vp.noise, 6, "edm", final="zero")
    ref = lf.sample(vp.den, vp.z, s, solver="dpmpp", order=2, cond=vp.cond)
    assert rel(kd_run(kd.sampling.sample_dpmpp_2m, vp.ours, s, vp), ref) < TOL["fp64_same_math"]
    s = lf.discretize(vp.noise, 6, "edm", final="t_min")
    theirs = kd_run(kd.sampling.sample_dpmpp_2m, vp.ours, s, vp)
    for variant in ("diffusers", "taylor"):
        ref = lf.sample(vp.den, vp.z, s, solver="dpmpp", order=2, cond=vp.cond, lower_order_final=False,
                        variant=variant)
        assert rel(theirs, ref) < TOL["fp64_same_math"]
    assert rel(theirs, lf.sample(vp.den, vp.z, s, solver="dpmpp", order=2, cond=vp.cond)) > 1e-4


def test_k_diffusions_own_time_map_differs_between_grid_points(kd, vp):
    """The stock DiscreteEpsDDPMDenoiser maps sigma to the network index by interpolating log sigma over the
    training grid, lf.VPDiscrete by interpolating log alpha in t: on the grid the network sees the same index,
    between its points a slightly different one (here up to 3e-3 of an index step near sigma_min)."""
    s = lf.discretize(vp.noise, 6, "edm", final="zero")
    on_grid = s.replace(t=torch.cat([torch.round(s.t[:-1] * 1000) / 1000, s.t[-1:]]),
                        t_eval=torch.round(s.t_eval * 1000) / 1000)
    ref = lf.sample(vp.den, vp.z, on_grid, solver="euler", cond=vp.cond)
    assert rel(kd_run(kd.sampling.sample_euler, vp.stock, on_grid, vp), ref) < TOL["fp64_same_math"]
    off = rel(kd_run(kd.sampling.sample_euler, vp.stock, s, vp),
              lf.sample(vp.den, vp.z, s, solver="euler", cond=vp.cond))
    assert 1e-9 < off < TOL["k_diffusion_time_map"]


# ----- lf.k_sampler: our Plan behind k-diffusion's signature -----------------------------------------------------

CONFIGS = [("euler", 1, None), ("heun", 2, None), ("dpmpp", 2, None), ("dpmpp", 3, "taylor"), ("unipc", 3, "bh2"),
           ("unipc", 2, "bh1"), ("ipndm", 4, None)]


@pytest.mark.parametrize("final", ["zero", "t_min"])
@pytest.mark.parametrize("solver,order,variant", CONFIGS, ids=[f"{s}{o}{v or ''}" for s, o, v in CONFIGS])
def test_k_sampler_is_lf_sample(vp, solver, order, variant, final):
    nfe = 5 if solver == "heun" else 6
    options = {} if variant is None else {"variant": variant}
    s = lf.discretize(vp.noise, nfe, "edm", solver=solver, final=final)
    ref = lf.sample(vp.den, vp.z, s, solver=solver, order=order, cond=vp.cond, **options)
    got = kd_run(lf.k_sampler(s, solver=solver, order=order, **options), vp.ours, s, vp)
    assert rel(got, ref) < TOL["fp64_same_math"]


LEARNED = [("unipc", 3, "bh2"), ("dpmpp", 3, "diffusers"), ("heun", 2, None), ("ipndm", 4, None)]


@pytest.mark.parametrize("final", ["zero", "t_min"])
@pytest.mark.parametrize("solver,order,variant", LEARNED, ids=[f"{s}{o}{v or ''}" for s, o, v in LEARNED])
def test_k_sampler_runs_learned_times_and_coefficients(vp, solver, order, variant, final):
    """Network times off the solver times (the model is fed sigma(t_eval), not sigmas[i]) and learned
    coefficients: what k-diffusion's samplers cannot express, the same sample as lf.sample."""
    s = learned(vp.noise, solver, order, final, variant)
    assert not torch.equal(s.t_eval, solvers.default_t_eval(solver, s.t)) and s.coefficients is not None
    ref = lf.sample(vp.den, vp.z, s, cond=vp.cond)
    assert rel(ref, lf.sample(vp.den, vp.z, s.replace(coefficients=None), cond=vp.cond)) > 1e-4  # they matter
    fed = []
    model = Counting(lambda x, sigma, **kw: (fed.append(float(sigma[0])), vp.ours(x, sigma, **kw))[1])
    assert rel(kd_run(lf.k_sampler(s), model, s, vp), ref) < TOL["fp64_same_math"]
    t_eval = s.t_eval
    assert fed == pytest.approx((vp.noise.sigma(t_eval) / vp.noise.alpha(t_eval)).tolist(), rel=1e-12)


def test_k_sampler_in_float32(vp):
    """The realistic call (ComfyUI): float32 state, sigmas and network, against lf.sample in float32 and float64."""
    den32 = lf.zoo.load("digits_vp")
    model = vp.ours.__class__(EpsNet(den32.net), vp.noise.alphas_cumprod.float(), quantize=False)
    bound = TOL["k_sampler_fp32"]
    for solver, order, variant in LEARNED:
        for final in ("zero", "t_min"):
            s = learned(vp.noise, solver, order, final, variant)
            got = lf.k_sampler(s)(model, ve_start(s, vp.z).float(), lf.to_sigmas(s), extra_args={"cond": vp.cond})
            assert got.dtype == torch.float32
            got = vp_end(s, got.double())
            assert rel(got, lf.sample(den32, vp.z.float(), s, cond=vp.cond).double()) < bound
            assert rel(got, lf.sample(vp.den, vp.z, s, cond=vp.cond)) < bound


def test_callback_is_k_diffusions(kd, vp):
    """One callback per solver step with k-diffusion's keys; on sample_euler's grid the same dicts as its own."""
    s = lf.discretize(vp.noise, 6, "edm", final="zero")
    theirs, ours = [], []
    kd_run(kd.sampling.sample_euler, vp.ours, s, vp, callback=theirs.append)
    kd_run(lf.k_sampler(s, solver="euler"), vp.ours, s, vp, callback=ours.append)
    assert [d["i"] for d in ours] == [d["i"] for d in theirs] == list(range(6))
    for a, b in zip(ours, theirs):
        assert set(a) == set(b) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        for key in ("x", "denoised"):
            assert rel(a[key], b[key]) < TOL["fp64_same_math"]
        assert float(a["sigma"]) == pytest.approx(float(b["sigma"]), rel=1e-15)
        assert float(a["sigma_hat"]) == pytest.approx(float(b["sigma_hat"]), rel=1e-15)
    s = learned(vp.noise, "heun", 2, "t_min")
    steps = []
    kd_run(lf.k_sampler(s), vp.ours, s, vp, callback=steps.append)
    sig_eval = s.noise.sigma(s.t_eval) / s.noise.alpha(s.t_eval)
    assert [d["i"] for d in steps] == [0, 1, 2]  # K steps, whatever the calls (5)
    assert [float(d["sigma_hat"]) for d in steps] == pytest.approx(sig_eval[[0, 2, 4]].tolist(), rel=1e-12)


# ----- the sigmas a sampler is called with ---------------------------------------------------------------------

def gaussian(x, sigma, scale=1.0):
    """The exact denoiser of N(0, I) data in k-diffusion's form: E[x0 | x0 + sigma eps = x] = x / (1 + sigma^2)."""
    return scale * x / (1 + sigma.view(-1, *[1] * (x.dim() - 1)) ** 2)


def test_other_sigmas_are_refused_unless_forced():
    s = lf.discretize(lf.VPDiscrete.linear(), 4, "edm", final="zero")
    sampler, sig = lf.k_sampler(s, solver="dpmpp"), lf.to_sigmas(s)
    x = torch.randn(2, 3) * sig[0]
    ok = sampler(gaussian, x, sig)
    assert torch.equal(sampler(gaussian, x, sig.tolist()), ok)
    moved = sig.clone()
    moved[2] *= 1 + 1e-5
    with pytest.raises(lf.IncompatibleSchedule, match=r"sigmas\[2\] = .* relative difference 1.0\de-05"):
        sampler(gaussian, x, moved)
    with pytest.raises(lf.IncompatibleSchedule, match="11 sigmas were given, the schedule has 5"):
        sampler(gaussian, x, torch.linspace(10, 0, 11))
    with pytest.raises(lf.InvalidArgumentType, match="sigmas must be a 1-D tensor"):
        sampler(gaussian, x, sig[None])
    forced = lf.k_sampler(s, solver="dpmpp", force=True)
    with pytest.warns(lf.ForcedSchedule, match=r"schedule's own times; sigmas\[2\]"):
        assert torch.equal(forced(gaussian, x, moved), ok)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forced(gaussian, x, sig)


def test_k_sampler_on_an_exact_denoiser():
    """Without k-diffusion: EDM's axis is k-diffusion's as it is, extra_args reach the model, half precision is
    carried in float32, and the result is lf.sample's."""
    noise = lf.EDM()
    s = lf.discretize(noise, 5, "logsnr", final="zero")
    den = lf.Denoiser(lambda x, sigma: gaussian(x, sigma, 0.5), noise, prediction="x0", time_input="sigma")
    z = torch.randn(3, 2, 4, dtype=torch.float64)
    ref = lf.sample(den, z, s, solver="unipc")
    sampler = lf.k_sampler(s, solver="unipc")
    got = sampler(gaussian, z * noise.prior_scale, lf.to_sigmas(s, dtype=torch.float64), extra_args={"scale": 0.5})
    assert rel(got, ref) < TOL["fp64_same_math"]
    half = sampler(gaussian, (z * noise.prior_scale).half(), lf.to_sigmas(s), extra_args={"scale": 0.5})
    assert half.dtype == torch.float16 and rel(half.double(), ref) < 1e-3  # float16's own rounding of the result
    assert "unipc3" in repr(sampler) and sampler.plan.nfe == 5
