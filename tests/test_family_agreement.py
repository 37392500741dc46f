"""Every pipeline family against its own diffusers loop in float64 (tests/tiny_pipelines.py, random weights).

The network, the Denoiser and the latents are float64 (the whole tiny pipeline is cast: its text encoders too,
so the prompt embeddings come out float64), so what is left is the solver: lf.sample(den, z, schedule) against
the family's scheduler with its shipped configuration, relative max|ours - diffusers| / max|diffusers| below
TOL["fp64_vs_diffusers"] at NFE 4 and 8.

- SD: the shipped PNDMScheduler is PLMS, not a registry method (pipeline_schedule maps it to iPNDM-4, the nearest);
  compared instead with DDIMScheduler (clip_sample=False, set_alpha_to_one=False, "leading", steps_offset 1: SD
  1.5's DDIM config; our euler) and EulerDiscreteScheduler ("leading"; the scheduler's own Euler is our euler),
  through StableDiffusionPipeline.__call__.
- SDXL: its shipped EulerDiscreteScheduler through StableDiffusionXLPipeline.__call__.
- SD3: FlowMatchEulerDiscreteScheduler(shift=3) through its __call__; Flux: FlowMatchEuler with dynamic shifting
  (the pipeline computes mu from the token count) through its __call__.
- Wan 2.1: UniPCMultistepScheduler on flow sigmas (flow_shift 3, solver_order 2, final sigma 0). WanPipeline
  keeps its latents float32 whatever the transformer's dtype, so the float64 comparison is a minimal loop written
  here that mirrors its __call__ (one batched cond / uncond call, the CFG combine, scheduler.step).

Network times. The DDPM-family loops (DDIM, Euler) feed the UNet their integer timesteps k, and
pipeline_schedule's grid is t = (k + 1) / 1000 with the Denoiser's index time 1000 t - 1 = k: the same numbers
already. The flow-matching loops feed sigma (Flux) / 1000 sigma (SD3): the adapter's times. Wan's UniPC feeds
int64(1000 sigma) (truncated) where the adapter documents the continuous 1000 t: the float64 loop feeds the
transformer the adapter's 1000 sigma. With integer times on both sides (t_eval = k / 1000) the two differ by
~8e-4 (measured, below): diffusers converts the velocity to x0 at the solver's sigma (x - sigma v), the Denoiser
at its t_eval, which is the meaning of a moved network time (LD3). A Denoiser whose network time is truncated
itself (time_input=floor(1000 t)) but that converts at t matches WanPipeline's own __call__ to float32 rounding.

pipeline_schedule once ended every DDPM-family grid at t_min; EulerDiscreteScheduler ends on sigma 0 (it returns
x0): 1.8e-3 - 3.8e-3 apart at NFE 8 / 4, found here and fixed (test_euler_pipeline_schedule_ends_on_sigma_zero).
"""
import copy

import pytest
import torch

import ldd_fast as lf

from tolerances import TOL

diffusers = pytest.importorskip("diffusers")
tp = pytest.importorskip("tiny_pipelines")
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]
SIZE, FRAMES, BATCH = 16, 5, 2


def _rel(out, ref) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


# Wan's UniPC config with other flow-sigma multistep schedulers and sigma spacings a Wan user may choose.
WAN_SCHEDULERS = {
    "dpmpp2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp3m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3}),
    "unipc-karras": ("UniPCMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc3": ("UniPCMultistepScheduler", {"solver_order": 3}),
}


def _scheduler(kind: str, name: str | None):
    """The scheduler compared (None: the pipeline's shipped one)."""
    config = tp.build(kind).scheduler.config
    if name in WAN_SCHEDULERS:
        cls, options = WAN_SCHEDULERS[name]
        return getattr(diffusers, cls).from_config(config, **options)
    if name == "ddim":
        return diffusers.DDIMScheduler.from_config(config, timestep_spacing="leading", clip_sample=False,
                                                   set_alpha_to_one=False)
    if name == "euler":
        return diffusers.EulerDiscreteScheduler.from_config(config, timestep_spacing="leading")
    return None


def family(kind: str, scheduler: str | None = None, dtype=torch.float64):
    """(pipeline, Denoiser) in dtype: a copy of the tiny pipeline, network and text encoders cast."""
    from diffusers.utils import logging

    logging.set_verbosity_error()  # "modules that should be kept in float32": the tiny random ones are cast on purpose
    pipe = copy.deepcopy(tp.build(kind)).to(dtype)
    sched = _scheduler(kind, scheduler)
    if sched is not None:
        pipe.scheduler = sched
    pipe.set_progress_bar_config(disable=True)
    size = dict(height=SIZE, width=SIZE)
    if kind == "wan":
        size.update(num_frames=FRAMES, max_sequence_length=8)
    den = lf.from_pipeline(pipe, **size).to(dtype)
    return pipe, den


def ours_and_theirs(kind: str, scheduler: str | None, nfe: int, dtype=torch.float64, seed: int = 5):
    """(lf.sample on the scheduler's own grid, the family's own loop) on the same latents and prompts."""
    pipe, den = family(kind, scheduler, dtype)
    cond = den.encode_prompt(tp.PROMPTS[:BATCH])
    z = torch.randn(BATCH, *den.sample_shape, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64).to(dtype)
    sched = den.pipeline_schedule(nfe)
    with torch.no_grad():
        ours = lf.sample(den, z, sched, cond=cond)
    theirs = wan_loop(pipe, den, cond, z, nfe) if kind == "wan" else tp.pipeline_call(pipe, den, cond, z, nfe)
    return ours, theirs


def wan_loop(pipe, den, cond, z, nfe: int, integer_times: bool = False):
    """WanPipeline.__call__'s denoising loop in z's dtype: the transformer fed the adapter's continuous 1000 sigma
    (float32, as the adapter passes it), or Wan's own int64(1000 sigma) with integer_times."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(nfe)
    null = den.null_cond.expand(z.shape[0], *den.null_cond.shape)
    x = z.clone()
    with torch.no_grad():
        for i, ts in enumerate(scheduler.timesteps):
            t_net = ts.double() if integer_times else scheduler.sigmas[i].double() * 1000
            out = pipe.transformer(hidden_states=torch.cat([x, x]), timestep=t_net.float().expand(2 * x.shape[0]),
                                   encoder_hidden_states=torch.cat([cond, null]), return_dict=False)[0]
            v = out[x.shape[0]:] + den.guidance_scale * (out[:x.shape[0]] - out[x.shape[0]:])
            x = scheduler.step(v, ts, x, return_dict=False)[0]
    return x


CASES = [("sd", "ddim"), ("sd", "euler"), ("sdxl", None), ("sd3", None), ("flux", None), ("wan", None)]


@pytest.mark.parametrize("scheduler", sorted(WAN_SCHEDULERS))
def test_wan_with_other_flow_sigma_schedulers_in_float64_is_lf_sample(scheduler):
    """DPM-Solver++ 2M / 3M on flow sigmas, UniPC on Karras-spaced flow sigmas and UniPC-3, in Wan's loop: the
    grid and the update read from the scheduler equal its own steps (NFE 4)."""
    ours, theirs = ours_and_theirs("wan", scheduler, 4)
    rel = _rel(ours, theirs)
    assert rel <= TOL["fp64_vs_diffusers"], f"wan {scheduler}: {rel:.2e}"


@pytest.mark.parametrize("options,match", [
    ({"use_exponential_sigmas": True}, "use_flow_sigmas and use_exponential_sigmas makes sigmas up to 157"),
    ({"use_beta_sigmas": True}, "use_beta_sigmas makes sigmas up to 157"),
    ({"final_sigmas_type": "sigma_min"}, "final_sigmas_type='sigma_min'.*a step of length 0"),
])
def test_flow_sigma_grids_without_a_flow_meaning_are_refused_by_name(options, match):
    """diffusers' exponential / beta spacings ignore use_flow_sigmas (they span the DDPM betas' sigmas, up to
    157); final_sigmas_type="sigma_min" repeats the last flow sigma (a zero-length step)."""
    pipe = tp.build("wan")
    other = diffusers.UniPCMultistepScheduler.from_config(pipe.scheduler.config, **options)
    den = lf.from_pipeline(type(pipe)(**{**pipe.components, "scheduler": other}), height=SIZE, width=SIZE,
                           num_frames=FRAMES, max_sequence_length=8)
    with pytest.raises(lf.InvalidArgument, match=match):
        den.pipeline_schedule(4)


@pytest.mark.parametrize("nfe", [4, 8])
@pytest.mark.parametrize("kind,scheduler", CASES, ids=[f"{k}-{s or 'shipped'}" for k, s in CASES])
def test_family_loop_in_float64_is_lf_sample(kind, scheduler, nfe):
    ours, theirs = ours_and_theirs(kind, scheduler, nfe)
    assert ours.dtype == theirs.dtype == torch.float64
    rel = _rel(ours, theirs)
    assert rel <= TOL["fp64_vs_diffusers"], f"{kind} {scheduler or 'shipped'} nfe {nfe}: {rel:.2e}"


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_euler_pipeline_schedule_ends_on_sigma_zero(kind):
    """EulerDiscreteScheduler's last step returns x0 (its last sigma is 0): pipeline_schedule ends there too. It
    once ended at t_min (sigma 0.029 on SD's betas): 3.8e-3 (SD) / 2.9e-3 (SDXL) from the loop at NFE 4."""
    _, den = family(kind, "euler" if kind == "sd" else None)
    sched = den.pipeline_schedule(4)
    assert sched.final == "zero" and sched.t[-1] == 0


def test_a_zero_length_last_step_is_refused_by_name():
    """DDIM with "linspace" spacing calls the network at k = 0 and then steps to that same level."""
    import diffusers

    pipe = tp.build("sd")
    ddim = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace",
                                               set_alpha_to_one=False)
    den = lf.from_pipeline(type(pipe)(**{**pipe.components, "scheduler": ddim}), height=16, width=16)
    with pytest.raises(lf.InvalidArgument, match="'linspace'.*step of length 0"):
        den.pipeline_schedule(4)
    euler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="linspace")
    den = lf.from_pipeline(type(pipe)(**{**pipe.components, "scheduler": euler}), height=16, width=16)
    assert den.pipeline_schedule(4).final == "zero"  # it ends on sigma 0: no zero-length step


def test_wan_integer_network_times():
    """Wan's UniPC feeds int64(1000 sigma). Moving our t_eval to those times is not enough (the Denoiser converts
    the velocity at t_eval, diffusers at sigma: (sigma - t_eval) |v| <= 1e-3 |v|, measured 7.8e-4 at NFE 4); a
    network time truncated inside the Denoiser (conversion at t) matches WanPipeline's own __call__ (float32
    latents whatever the transformer's dtype) to float32 rounding, and the float64 loop to float64."""
    pipe, den = family("wan")
    nfe = 4
    cond = den.encode_prompt(tp.PROMPTS[:BATCH])
    z = torch.randn(BATCH, *den.sample_shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sched = den.pipeline_schedule(nfe)
    twin = type(pipe.scheduler).from_config(pipe.scheduler.config)
    twin.set_timesteps(nfe)
    assert torch.equal(torch.floor(1000 * sched.t_eval), twin.timesteps.double())  # the same integers
    loop = wan_loop(pipe, den, cond, z, nfe, integer_times=True)
    with torch.no_grad():
        moved = lf.sample(den, z, sched.replace(t_eval=twin.timesteps.double() / 1000), cond=cond)
    assert 1e-4 < _rel(moved, loop) < 2e-3
    truncated = lf.Denoiser(den.net, den.noise, prediction="flow", time_input=lambda t: torch.floor(1000 * t),
                            guidance_scale=den.guidance_scale, null_cond=den.null_cond,
                            sample_shape=den.sample_shape)
    with torch.no_grad():
        ours = lf.sample(truncated, z, sched, cond=cond)
    assert _rel(ours, loop) <= TOL["fp64_vs_diffusers"]
    own = tp.pipeline_call(pipe, den, cond, z.float(), nfe)  # WanPipeline's __call__: float32 latents
    assert own.dtype == torch.float32
    assert _rel(own.double(), ours) <= TOL["fp32_vs_diffusers"]
