"""ldd_fast against diffusers' own schedulers, and lf.from_diffusers.

An independent implementation: diffusers' `set_timesteps` / `step` loop on a tiny
random UNet2DModel (DDPM linear betas 1e-4..0.02 over 1000 steps, eps prediction)
against `lf.sample` on a Schedule made from diffusers' own integer timesteps:
training index k is our t = (k + 1) / 1000, the final time is 1 / 1000 (diffusers'
final alpha is alphas_cumprod[0]) and t_eval = t[:-1].

Conventions aligned, by name:
- DDIM (vs "euler"): clip_sample=False, set_alpha_to_one=False (the last step lands
  on alphas_cumprod[0], not alpha = 1), timestep_spacing="trailing", steps_offset=0,
  eta=0, thresholding off. diffusers steps from k to prev = k - 1000 // N, not to the
  next listed timestep; with trailing spacing the two agree only when N divides 1000
  (N = 5, 8 here; N = 7 does not: test_ddim_prev_timestep_needs_n_dividing_1000).
- DPM-Solver++ (vs "dpmpp", variant="diffusers"): algorithm_type="dpmsolver++",
  solver_type="midpoint", final_sigmas_type="sigma_min" (last sigma from
  alphas_cumprod[0]), lower_order_final=True: diffusers uses order 1 on the last step
  and <= 2 on the second-to-last (when fewer than 15 steps); euler_at_final=False,
  Karras / Lu / exponential / beta sigmas off, timestep_spacing="linspace" (default).
- UniPC (vs "unipc" order 3, variant bh1 / bh2): final_sigmas_type="sigma_min",
  lower_order_final=True: diffusers uses order min(order, steps left) (no 15-step
  threshold), the corrector at each step uses the previous step's order,
  disable_corrector=[], predict_x0=True, solver_p=None, timestep_spacing="linspace".
ldd_fast uses lower_order_final=True (its default below 15 steps) and final="t_min".

Tolerance (SAMPLER_RTOL, relative to the largest |x| of diffusers' output): both sides
run in float32 and call the same UNet, but diffusers computes its step coefficients
in float32 (sigmas cast to float32, lambda = log alpha - log sigma in float32) while
ldd_fast computes them in float64 and casts once. A random eps-UNet gives x0
estimates of size ~1/alpha(t_max) ~ 157, so the samples are O(500) and rounding is
relative to that scale. Measured (torch 2.13 CPU, diffusers 0.42.1): max |ours -
diffusers| / max |x| <= 4.3e-7 (0.9e-4 .. 2.1e-4 absolute at |x| ~ 500), the same as
the float32-vs-float64 floor of our own sampler (<= 3.3e-7). 2e-6 is ~5x that floor
and 30x below the smallest convention mismatch tried (final time one training step
later, t = 2/1000: 6e-5 relative; shifting the network time by one index or turning
lower_order_final off: 1e-4 .. 1e-1 relative).
"""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install ldd-fast[diffusers])")
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       UNet2DConditionModel, UNet2DModel, UniPCMultistepScheduler)

import ldd_fast as lf  # noqa: E402

from tolerances import TOL  # noqa: E402

# diffusers 0.42 + numpy 2 warn inside set_timesteps (np.array on a tensor); not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SAMPLER_RTOL = TOL["fp32_vs_diffusers"]
DENOISER_RTOL = TOL["fp32_guided_sum"]

N_TRAIN = 1000
DDPM_LINEAR = dict(num_train_timesteps=N_TRAIN, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                   prediction_type="epsilon", thresholding=False)
STEPS = (5, 8)


def _ddim():
    return DDIMScheduler(**DDPM_LINEAR, clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing",
                         steps_offset=0)


def _dpm(order):
    def make():
        return DPMSolverMultistepScheduler(**DDPM_LINEAR, solver_order=order, algorithm_type="dpmsolver++",
                                           solver_type="midpoint", final_sigmas_type="sigma_min",
                                           lower_order_final=True, euler_at_final=False,
                                           timestep_spacing="linspace", use_karras_sigmas=False)
    return make


def _unipc(variant):
    def make():
        return UniPCMultistepScheduler(**DDPM_LINEAR, solver_order=3, solver_type=variant,
                                       final_sigmas_type="sigma_min", lower_order_final=True,
                                       predict_x0=True, disable_corrector=[], timestep_spacing="linspace")
    return make


# name -> (diffusers scheduler factory, our solver, our options)
CASES = {
    "ddim": (_ddim, "euler", {}),
    "dpmpp2": (_dpm(2), "dpmpp", {"order": 2, "variant": "diffusers", "lower_order_final": True}),
    "dpmpp3": (_dpm(3), "dpmpp", {"order": 3, "variant": "diffusers", "lower_order_final": True}),
    "unipc3_bh1": (_unipc("bh1"), "unipc", {"order": 3, "variant": "bh1", "lower_order_final": True}),
    "unipc3_bh2": (_unipc("bh2"), "unipc", {"order": 3, "variant": "bh2", "lower_order_final": True}),
}


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval().float()


@pytest.fixture(scope="module")
def cond_unet():
    torch.manual_seed(1)
    return UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=4,
                                cross_attention_dim=6, attention_head_dim=4).eval().float()


def _noise(shape=(2, 1, 8, 8), seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class _TimestepRecorder:
    """Records the timestep values each UNet call receives (one list per call)."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        self.calls.append([float(v) for v in torch.as_tensor(t).flatten()])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _diffusers_loop(unet, scheduler, z):
    x = z.clone()
    with torch.no_grad():
        for k in scheduler.timesteps:
            x = scheduler.step(unet(x, k).sample, k, x).prev_sample
    return x


def _schedule_from_timesteps(timesteps, noise):
    """diffusers' integer timesteps k -> t = (k + 1) / N, then diffusers' final time 1 / N."""
    k = torch.as_tensor(timesteps, dtype=torch.float64)
    t = torch.cat([(k + 1) / N_TRAIN, torch.tensor([1.0 / N_TRAIN], dtype=torch.float64)])
    return lf.Schedule(t=t, t_eval=t[:-1], noise=noise)


# ----- the schedules are the same ------------------------------------------------------------

@pytest.mark.parametrize("n", STEPS)
def test_ddim_trailing_steps_are_the_listed_timesteps(n):
    s = _ddim()
    s.set_timesteps(n)
    ts = [int(k) for k in s.timesteps]
    # DDIMScheduler.step goes from k to prev = k - num_train_timesteps // num_inference_steps ...
    prev = [k - N_TRAIN // n for k in ts]
    assert prev[:-1] == ts[1:], f"N={n}: diffusers steps to {prev} but lists {ts}"
    # ... and the last prev is < 0: it lands on final_alpha_cumprod = alphas_cumprod[0] (set_alpha_to_one=False).
    assert prev[-1] < 0
    assert s.final_alpha_cumprod == s.alphas_cumprod[0]


def test_ddim_prev_timestep_needs_n_dividing_1000():
    """Why N = 5 and 8: for N = 7 trailing spacing lists 999, 856, ... but step() goes to 999 - 142 = 857."""
    s = _ddim()
    s.set_timesteps(7)
    ts = [int(k) for k in s.timesteps]
    assert [k - N_TRAIN // 7 for k in ts][:-1] != ts[1:]


@pytest.mark.parametrize("name", [c for c in CASES if c != "ddim"])
@pytest.mark.parametrize("n", STEPS)
def test_multistep_sigmas_are_alphas_cumprod_at_the_timesteps(name, n):
    s = CASES[name][0]()
    s.set_timesteps(n)
    ac = s.alphas_cumprod.double()
    idx = torch.cat([s.timesteps.long(), torch.zeros(1, dtype=torch.long)])  # final: alphas_cumprod[0]
    expected = ((1 - ac[idx]) / ac[idx]).sqrt()
    torch.testing.assert_close(s.sigmas.double(), expected, rtol=1e-6, atol=0)  # diffusers stores float32


# ----- the samples are the same ------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("n", STEPS)
def test_sampler_matches_diffusers(unet, name, n):
    make, solver, options = CASES[name]
    z = _noise()
    scheduler = make()
    scheduler.set_timesteps(n)
    with _TimestepRecorder(unet) as theirs:
        x_theirs = _diffusers_loop(unet, scheduler, z)

    den = lf.from_diffusers(unet, scheduler)
    sched = _schedule_from_timesteps(scheduler.timesteps, den.noise)
    # The network time is the continuous index 1000 t - 1: exactly k at t = (k + 1) / 1000.
    torch.testing.assert_close(den.time_net(sched.t_eval), scheduler.timesteps.double(), rtol=0, atol=1e-9)
    with _TimestepRecorder(unet) as ours, torch.no_grad():
        x_ours = lf.sample(den, z, sched, solver=solver, **options)

    assert len(ours.calls) == n, f"{len(ours.calls)} network calls for {n} steps"
    assert [c[0] for c in theirs.calls] == [float(k) for k in scheduler.timesteps]
    assert [set(c) for c in ours.calls] == [{c[0]} for c in theirs.calls], \
        f"UNet timesteps: ours {ours.calls}, diffusers {theirs.calls}"

    scale = x_theirs.abs().max().item()
    err = (x_ours - x_theirs).abs().max().item()
    assert torch.isfinite(x_ours).all()
    assert err <= SAMPLER_RTOL * scale, f"{name} N={n}: max |ours - diffusers| = {err:.3e} at |x| ~ {scale:.1f}"


# ----- from_diffusers --------------------------------------------------------------------------

def test_guided_condition_unet_is_hand_written_cfg(cond_unet):
    w, k = 3.0, 399
    batch, length, dim = 2, 3, cond_unet.config.cross_attention_dim
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(batch, 1, 8, 8, generator=gen)
    cond = torch.randn(batch, length, dim, generator=gen)
    null = torch.randn(length, dim, generator=gen)
    scheduler = DDPMScheduler(**DDPM_LINEAR)
    den = lf.from_diffusers(cond_unet, scheduler, guidance_scale=w, null_cond=null)
    assert den.prediction == "eps" and den.guidance_scale == w

    with torch.no_grad():
        x0 = den(x, (k + 1) / N_TRAIN, cond)
        kk = torch.full((batch,), float(k))
        eps_c = cond_unet(x, kk, encoder_hidden_states=cond).sample
        eps_u = cond_unet(x, kk, encoder_hidden_states=null.expand(batch, -1, -1)).sample
    eps = eps_u.double() + w * (eps_c.double() - eps_u.double())
    a = scheduler.alphas_cumprod[k].double()
    expected = (x.double() - (1 - a).sqrt() * eps) / a.sqrt()
    summands = (x.abs().max() / a.sqrt()
                + (abs(w) + abs(1 - w)) * ((1 - a) / a).sqrt() * torch.maximum(eps_c.abs(), eps_u.abs()).max())
    err = (x0.double() - expected).abs().max().item()
    assert err <= DENOISER_RTOL * summands.item(), \
        f"max |ours - hand-written CFG| = {err:.3e}, summands ~ {summands.item():.2f}"
    assert (eps_c - eps_u).abs().max() > 1e-2  # the condition matters, so guidance is tested


def test_from_diffusers_conventions(unet):
    den = lf.from_diffusers(unet, _ddim())
    assert isinstance(den, lf.Denoiser) and den.time_input == "index" and den.prediction == "eps"
    torch.testing.assert_close(den.noise.alphas_cumprod, _ddim().alphas_cumprod.double(), rtol=0, atol=0)
    # The network time is continuous, never rounded.
    torch.testing.assert_close(den.time_net(torch.tensor(0.5005, dtype=torch.float64)),
                               torch.tensor(499.5, dtype=torch.float64))
    for theirs, ours in (("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "v")):
        assert lf.from_diffusers(unet, {**DDPM_LINEAR, "prediction_type": theirs}).prediction == ours
        assert lf.from_diffusers(unet, _ddim(), prediction=theirs).prediction == ours
        assert lf.from_diffusers(unet, _ddim(), prediction=ours).prediction == ours


@pytest.mark.parametrize("betas", [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="sigmoid"),
    dict(beta_schedule="linear", trained_betas=[float(b) for b in torch.linspace(1e-4, 0.05, 50)]),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
])
def test_config_dict_gives_the_schedulers_alphas_cumprod(unet, betas):
    config = {**DDPM_LINEAR, **betas}
    scheduler = DDPMScheduler(**config)
    ac = scheduler.alphas_cumprod.double()
    if config.get("rescale_betas_zero_snr"):
        with pytest.warns(UserWarning, match="zero terminal SNR"):
            den = lf.from_diffusers(unet, dict(scheduler.config))
    else:
        den = lf.from_diffusers(unet, dict(scheduler.config))
    torch.testing.assert_close(den.noise.alphas_cumprod, ac, rtol=0, atol=0)


def test_fingerprint_sees_the_unet_weights(unet):
    u = copy.deepcopy(unet)
    den = lf.from_diffusers(u, _ddim())
    before = den.fingerprint()
    with torch.no_grad():
        u.conv_in.weight[0, 0, 0, 0] += 0.1
    assert den.fingerprint() != before


def test_class_conditional_unet():
    torch.manual_seed(3)
    u = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                    norm_num_groups=4, num_class_embeds=3).eval()
    den = lf.from_diffusers(u, _ddim(), guidance_scale=2.0, null_cond=torch.tensor(2))
    x, labels = _noise(), torch.tensor([0, 1])
    with torch.no_grad():
        out = den(x, 0.5, labels)
        with pytest.raises(ValueError, match="class embedding"):
            den(x, 0.5)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_learned_variance_unet_uses_the_first_channels():
    torch.manual_seed(4)
    u = UNet2DModel(sample_size=8, in_channels=1, out_channels=2, block_out_channels=(8, 16), layers_per_block=1,
                    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                    norm_num_groups=4).eval()
    den = lf.from_diffusers(u, {**DDPM_LINEAR, "variance_type": "learned_range"})
    x = _noise()
    with torch.no_grad():
        raw = den.raw(x, 0.5)[0]
        torch.testing.assert_close(raw, u(x, torch.full((2,), 499.0)).sample[:, :1], rtol=0, atol=0)


def test_errors(unet, cond_unet):
    ddim = _ddim()
    with pytest.raises(ValueError, match="prediction"):
        lf.from_diffusers(unet, {**DDPM_LINEAR, "prediction_type": "flow"})
    with pytest.raises(ValueError, match="prediction"):
        lf.from_diffusers(unet, ddim, prediction="noise")
    with pytest.raises(ValueError, match="neither alphas_cumprod nor betas"):
        lf.from_diffusers(unet, {"num_train_timesteps": 1000, "prediction_type": "epsilon"})
    with pytest.raises(ValueError, match="beta_schedule"):
        lf.from_diffusers(unet, {**DDPM_LINEAR, "beta_schedule": "exotic"})
    with pytest.raises(TypeError, match="scheduler"):
        lf.from_diffusers(unet, object())
    with pytest.raises(TypeError, match="UNet2DModel or UNet2DConditionModel"):
        lf.from_diffusers(torch.nn.Linear(2, 2), ddim)
    # An unconditional UNet given a condition, at construction and at the call.
    with pytest.raises(ValueError, match="unconditional"):
        lf.from_diffusers(unet, ddim, guidance_scale=2.0, null_cond=torch.zeros(1))
    den = lf.from_diffusers(unet, ddim)
    with pytest.raises(ValueError, match="unconditional"):
        den(_noise(), 0.5, torch.zeros(2, 3))
    # States that do not fit the UNet: channels, spatial size, rank.
    with pytest.raises(ValueError, match="in_channels=1"):
        den(_noise((2, 3, 8, 8)), 0.5)
    with pytest.raises(ValueError, match="not divisible"):
        den(_noise((2, 1, 7, 7)), 0.5)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        den(_noise((2, 64)), 0.5)
    # A UNet whose configuration does not fit: out_channels, sample_size.
    odd = UNet2DModel(sample_size=7, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                      down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                      norm_num_groups=4)
    with pytest.raises(ValueError, match="sample_size=7"):
        lf.from_diffusers(odd, ddim)
    wide = UNet2DModel(sample_size=8, in_channels=1, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    with pytest.raises(ValueError, match="out_channels=3"):
        lf.from_diffusers(wide, ddim)
    # A text-conditional UNet needs encoder_hidden_states of shape [B, L, D].
    cden = lf.from_diffusers(cond_unet, ddim)
    with pytest.raises(ValueError, match="needs cond"):
        cden(_noise(), 0.5)
    with pytest.raises(ValueError, match=r"\[B, L, D\]"):
        cden(_noise(), 0.5, torch.zeros(2, 6))
    # Guidance without a null condition.
    with pytest.raises(ValueError, match="null_cond"):
        lf.from_diffusers(cond_unet, ddim, guidance_scale=3.0)


def test_core_imports_without_diffusers():
    code = ("import sys; sys.modules['diffusers'] = None\n"
            "import ldd_fast as lf\n"
            "assert callable(lf.from_diffusers) and 'diffusers' not in [m for m in sys.modules if sys.modules[m]]\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
