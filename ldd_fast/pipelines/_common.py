"""The family registry and what every family shares: `from_pipeline`, the request it validates, the VAE
decode by `latent_decoding`, and the pipeline scheduler's own grid.

A family is a `Family` subclass in its own module, registered with `@register`: the pipeline classes it
loads by name, how to recognise a subclass of another name, and the handful of steps that differ between
families (network, sizes, prompt encoding, Denoiser, grid, decoding). Everything else lives here once, so
adding a family is one new file and one import line in `__init__.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters import _class_names, _get
from ..cond import map_cond
from ..denoiser import Denoiser
from ..errors import InvalidArgument, InvalidArgumentType, integer
from ..schedule import Schedule, discretize, flux_mu

FAMILIES: dict[str, "Family"] = {}  # kind -> family, in registration order
PIPELINES: dict[str, str] = {}  # pipeline class name -> kind (what a folder's model_index.json may name)
# A pipeline scheduler's update as (registry solver, order; None: the config's solver_order). FlowMatchEuler
# is Euler in (x, t); DDIM and Euler are first order. PNDM with skip_prk_steps is PLMS: Adams-Bashforth-4 on
# the noise prediction, as iPNDM, whose lower-order warm start replaces PLMS's repeated first timestep.
SCHEDULER_SOLVERS = {"FlowMatchEulerDiscreteScheduler": ("euler", 1), "DDIMScheduler": ("euler", 1),
                     "EulerDiscreteScheduler": ("euler", 1), "PNDMScheduler": ("ipndm", 4),
                     "DPMSolverMultistepScheduler": ("dpmpp", None), "UniPCMultistepScheduler": ("unipc", None)}


@dataclass(frozen=True)
class Request:
    """What the caller asked `from_pipeline` for, validated once (None: the family's default)."""
    height: int
    width: int
    vae_scale_factor: int
    device: torch.device
    guidance_scale: float | None
    true_cfg_scale: object  # converted by the family that uses it (Flux)
    text_length: dict  # {"max_sequence_length": n} or {}: passed to the pipeline's encode_prompt as is
    num_frames: int | None


class Family:
    """One model family. Subclasses set the class attributes and override what differs from the defaults."""

    kind = ""  # den.pipeline_kind
    title = ""  # the family's name in messages
    pipelines: tuple[str, ...] = ()  # pipeline classes loaded by name
    text_length = False  # its text encoder takes max_sequence_length (a T5)
    video = False  # its samples have a frame axis (num_frames)
    flow = False  # a rectified flow (the flow-matching grids apply), known before the pipeline loads

    def claims(self, pipe) -> bool:
        """A pipeline of another class name with this family's components (duck typing)."""
        return False

    def check(self, pipe) -> None:
        """Refuse, by name, what this family's Denoiser would not reproduce."""

    def network(self, pipe) -> torch.nn.Module:
        return pipe.transformer

    def vae_scale_factor(self, pipe) -> int:
        vae = pipe.vae
        return int(getattr(pipe, "vae_scale_factor",
                           2 ** (len(_get(vae.config, "block_out_channels", (0,) * 4)) - 1)))

    def default_size(self, pipe, vsf: int) -> tuple[int, int]:
        """The pipeline's default (height, width)."""
        net = self.network(pipe)
        size = int(getattr(pipe, "default_sample_size", _get(net.config, "sample_size", 64))) * vsf
        return size, size

    def size_step(self, pipe, vsf: int) -> int:
        """Height and width must be multiples of this."""
        return vsf

    def encode(self, pipe, prompts: list[str], req: Request):
        """Per-sample conditions for prompts, as the pipeline encodes them (called under no_grad)."""
        raise NotImplementedError

    def null_condition(self, pipe, encode_prompt, negative_prompt: str | None):
        """The null condition of guidance (one example): the negative prompt's embedding; None means the
        pipeline's default negative prompt, "" for every family here but SDXL."""
        return map_cond(lambda c: c[0], encode_prompt(["" if negative_prompt is None else negative_prompt]))

    def denoiser(self, pipe, req: Request, null) -> Denoiser:
        """The Denoiser with its sample_shape; null is the negative prompt's condition (one example)."""
        raise NotImplementedError

    def grid(self, pipe, req: Request) -> dict:
        """lf.discretize's keyword arguments for the pipeline's own grid ({}: none)."""
        return {}

    def decoding(self, pipe, req: Request) -> dict:
        """latent_decoding without its "vae" entry: scaling_factor, shift_factor, packing."""
        vae = pipe.vae
        return {"scaling_factor": float(_get(vae.config, "scaling_factor", 1.0)),
                "shift_factor": float(_get(vae.config, "shift_factor", 0.0) or 0.0), "packing": None}

    def decode(self, pipe, latents: torch.Tensor, decoding: dict) -> torch.Tensor:
        return vae_decode(pipe.vae, latents, decoding)

    def schedule(self, scheduler, den: Denoiser, grid: dict, nfe: int) -> Schedule:
        """The pipeline scheduler's own grid at nfe calls, its update recorded as the solver."""
        return scheduler_schedule(scheduler, den, grid, nfe)


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: add a family to the registry (its kind and pipeline class names must be new)."""
    family = cls()
    if not family.kind or family.kind in FAMILIES:
        raise InvalidArgument(f"family kind {family.kind!r} is empty or registered twice")
    taken = [name for name in family.pipelines if name in PIPELINES]
    if taken:
        raise InvalidArgument(f"pipeline classes {taken} are registered by another family already")
    PIPELINES.update({name: family.kind for name in family.pipelines})
    FAMILIES[family.kind] = family
    return cls


def _either(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def pipeline_kind(pipe) -> str:
    """The family's kind ("sd", "sd3", ...), from the pipeline's class or, for a subclass of another name,
    its components."""
    for name in _class_names(pipe):
        if name in PIPELINES:
            return PIPELINES[name]
    for kind, family in FAMILIES.items():
        if family.claims(pipe):
            return kind
    raise InvalidArgumentType(f"expected a {_either(PIPELINES)} (or one with the same components), got "
                              f"{type(pipe).__name__}")


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def from_pipeline(pipe, *, height: int | None = None, width: int | None = None, guidance_scale: float | None = None,
                  negative_prompt: str | None = None, true_cfg_scale: float = 1.0, max_sequence_length: int | None = None,
                  num_frames: int | None = None):
    """A Denoiser for a registered pipeline (see the package docstring).

    height, width: the image size (default: the pipeline's default size). guidance_scale: as the
    pipeline's argument of the same name (classifier-free guidance, default the pipeline's; Flux: the
    embedded guidance, default 3.5). negative_prompt: its embedding is the null condition (None: the
    pipeline's own default, the empty prompt's embedding, or for SDXL zeros where the pipeline's
    force_zeros_for_empty_prompt is set, as StableDiffusionXLPipeline does without a negative prompt).
    true_cfg_scale: Flux's classifier-free guidance (1: off). max_sequence_length: the T5 prompt length
    (families with a T5 encoder; default the pipeline's). num_frames: a video family's frame count
    (default the pipeline's).
    """
    family = FAMILIES[pipeline_kind(pipe)]
    family.check(pipe)
    vae = getattr(pipe, "vae", None)
    if vae is None:
        raise InvalidArgument("the pipeline has no VAE: from_pipeline decodes latents with it")
    vsf = family.vae_scale_factor(pipe)
    net = family.network(pipe)
    default_height, default_width = family.default_size(pipe, vsf)
    # None means the pipeline's size; 0 is not None (it was once taken for the default, silently).
    height = default_height if height is None else integer(height, "height")
    width = default_width if width is None else integer(width, "width")
    step = family.size_step(pipe, vsf)
    if height % step or width % step or height <= 0 or width <= 0:
        raise InvalidArgument(f"height and width must be positive multiples of {step} for this pipeline, got "
                              f"{height} x {width}")
    if max_sequence_length is not None and not family.text_length:
        takers = " and ".join(f.title for f in FAMILIES.values() if f.text_length)
        raise InvalidArgument(f"max_sequence_length (--max-sequence-length) is the T5 prompt length of {takers}; "
                              f"{family.title}'s CLIP text encoder has a fixed length")
    if num_frames is not None and not family.video:
        raise InvalidArgument(f"num_frames belongs to the video pipelines; {family.title} makes images")
    req = Request(height=height, width=width, vae_scale_factor=vsf, device=_device(net),
                  guidance_scale=guidance_scale, true_cfg_scale=true_cfg_scale,
                  text_length={} if max_sequence_length is None else {
                      "max_sequence_length": integer(max_sequence_length, "max_sequence_length", minimum=1)},
                  num_frames=None if num_frames is None else integer(num_frames, "num_frames", minimum=1))

    def encode_prompt(prompts):
        """Per-sample conditions for a list of prompts (no gradients; on the network's device)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise InvalidArgument("encode_prompt takes a non-empty list of prompt strings")
        with torch.no_grad():
            return map_cond(torch.Tensor.detach, family.encode(pipe, list(prompts), req))

    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise InvalidArgumentType(f"negative_prompt must be a string or None, got {type(negative_prompt).__name__}")
    null = family.null_condition(pipe, encode_prompt, negative_prompt)
    den = family.denoiser(pipe, req, null)
    grid = family.grid(pipe, req)
    decoding = family.decoding(pipe, req)

    def decode_images(latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from latents (differentiable, for a decoded-pixel loss)."""
        return family.decode(pipe, latents, decoding).to(latents.dtype)

    scheduler = pipe.scheduler  # the pipeline's own, even if the caller swaps pipe.scheduler later

    def pipeline_schedule(nfe: int) -> Schedule:
        """The pipeline scheduler's own grid at nfe network calls, its update recorded as the solver."""
        return family.schedule(scheduler, den, grid, nfe)

    den.encode_prompt, den.decode, den.pipeline_grid, den.pipeline_kind = encode_prompt, decode_images, grid, \
        family.kind
    den.pipeline_schedule = pipeline_schedule
    den.latent_decoding = {"vae": "vae", **decoding}
    den.height, den.width = height, width
    return den.eval()


def scheduler_solver(scheduler) -> tuple[str, str, int]:
    """(scheduler class name, registry solver, order) of a pipeline's scheduler; refused by name if unknown."""
    name = type(scheduler).__name__
    if name not in SCHEDULER_SOLVERS:
        raise InvalidArgument(f"the pipeline's {name} has no solver in ldd-fast's registry (known: "
                              f"{', '.join(SCHEDULER_SOLVERS)}); use a hand-made or learned schedule")
    solver, order = SCHEDULER_SOLVERS[name]
    return name, solver, order or int(_get(scheduler.config, "solver_order", 2))


def scheduler_schedule(scheduler, den: Denoiser, grid: dict, nfe: int) -> Schedule:
    """A flow pipeline's grid (discretize with `grid`, ending on 0), a scheduler's own flow sigmas
    (use_flow_sigmas=True) or a DDPM-family scheduler's integer timesteps, with the scheduler's update as the
    solver."""
    if _get(scheduler.config, "use_flow_sigmas", False):
        return flow_scheduler_schedule(scheduler, den, nfe)
    name, solver, order = scheduler_solver(scheduler)
    if grid:  # a flow pipeline's sigmas, ending on 0
        sched = discretize(den.noise, nfe, solver=solver, final="zero", **grid)
    else:  # a DDPM-family grid of integer timesteps k: the network sees k = 1000 t - 1, exactly
        twin = type(scheduler).from_config(scheduler.config)
        twin.set_timesteps(nfe)
        calls = (torch.unique_consecutive(torch.as_tensor(twin.timesteps, dtype=torch.float64)) + 1) / 1000
        # Where the last step lands: sigma-based schedulers (Euler, DPM-Solver, UniPC) end on their last sigma,
        # 0 by default (x0); DDIM / PNDM on final_alpha_cumprod, 1 (x0) with set_alpha_to_one, else the
        # first training step's, which is t_min.
        sigmas = getattr(twin, "sigmas", None)
        zero = float(sigmas[-1]) == 0.0 if sigmas is not None else bool(_get(scheduler.config, "set_alpha_to_one"))
        if not zero and float(calls[-1]) <= den.noise.t_min:
            raise InvalidArgument(f"the pipeline's {name} calls the network at its first training step and then "
                                  f"steps to that same noise level (timestep_spacing "
                                  f"{_get(scheduler.config, 'timestep_spacing')!r}): a step of length 0 has no "
                                  f"schedule here; use 'leading' or 'trailing' spacing, or a hand-made schedule")
        end = 0.0 if zero else den.noise.t_min
        t = torch.cat([calls, torch.tensor([end], dtype=torch.float64)])
        sched = Schedule(t=t, t_eval=calls.clone(), noise=den.noise, final="zero" if zero else "t_min",
                         origin="pipeline")
    return sched.replace(solver=solver, order=order, origin=f"pipeline:{name}", info={**sched.info, "scheduler": name})


def flow_scheduler_schedule(scheduler, den: Denoiser, nfe: int) -> Schedule:
    """The grid a flow scheduler computes itself (its set_timesteps on a twin: flow_shift, Karras / exponential
    sigmas, shift_terminal and the final sigma all as diffusers has them), with its update as the solver.

    Two departures, both at the ends or in the network's time: diffusers nudges a first sigma of 1 down by
    1e-6 to keep its log-SNR finite, which our solvers do not need (they take the exact step from pure
    noise); and the network is called at the continuous t = sigma, where UniPC / DPM-Solver on flow sigmas
    feed it int64(1000 sigma), truncated (up to 1e-3 earlier in t)."""
    name, solver, order = scheduler_solver(scheduler)
    cfg = scheduler.config
    if _get(cfg, "use_dynamic_shifting", False):
        raise InvalidArgument(f"the pipeline's {name} has use_dynamic_shifting=True, which needs a mu the pipeline "
                              "does not pass; no grid to reproduce")
    twin = type(scheduler).from_config(cfg)
    twin.set_timesteps(nfe)
    t = torch.as_tensor(twin.sigmas, dtype=torch.float64).clone()
    if len(t) != nfe + 1:
        raise InvalidArgument(f"the pipeline's {name} made {len(t) - 1} steps for num_inference_steps={nfe}; its "
                              "grid does not map to one network call per step")
    if float(t.max()) > 1.0:
        # diffusers' exponential / beta sigmas (and DPM-Solver's Karras sigmas) ignore use_flow_sigmas: they span
        # the DDPM betas' sigmas (up to ~157), which are not times of a rectified flow.
        keys = [k for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas") if _get(cfg, k, False)]
        raise InvalidArgument(f"the pipeline's {name} with use_flow_sigmas and {' / '.join(keys) or 'its config'} "
                              f"makes sigmas up to {float(t.max()):.4g} (diffusers spaces them on the DDPM betas, "
                              "not on the flow's [0, 1]): no rectified-flow grid to reproduce; drop that option")
    if bool((t[1:] >= t[:-1]).any()):
        i = int((t[1:] >= t[:-1]).nonzero()[0])
        raise InvalidArgument(f"the pipeline's {name} (final_sigmas_type={_get(cfg, 'final_sigmas_type')!r}) steps "
                              f"from sigma {float(t[i]):.6g} to {float(t[i + 1]):.6g}: a step of length 0, which no "
                              "solver here takes; final_sigmas_type='zero' ends on the data")
    final = "zero" if float(t[-1]) == 0.0 else "t_min"
    options = {}
    if solver == "unipc" and _get(cfg, "solver_type") in ("bh1", "bh2"):
        options["variant"] = _get(cfg, "solver_type")
    sched = Schedule(t=t, t_eval=t[:-1].clone(), noise=den.noise, final=final, origin="pipeline")
    return sched.replace(solver=solver, order=order, origin=f"pipeline:{name}", info={"scheduler": name}, **options)


def vae_decode(vae, latents: torch.Tensor, decoding: dict) -> torch.Tensor:
    """vae.decode(unpacked / scaling_factor + shift_factor); per-channel factors (lists) broadcast over axis 1."""
    x = unpack_latents(latents, decoding).to(vae.dtype)
    scale, shift = decoding["scaling_factor"], decoding["shift_factor"]
    x = x / _per_channel(scale, x)
    if isinstance(shift, list) or shift:  # adding 0.0 would change nothing; skipping it keeps SD's old ops
        x = x + _per_channel(shift, x)
    return vae.decode(x, return_dict=False)[0]


def _per_channel(v, x: torch.Tensor):
    if not isinstance(v, list):
        return v
    return torch.tensor(v, dtype=torch.float32).to(x.device, x.dtype).view(1, -1, *([1] * (x.dim() - 2)))


def unpack_latents(latents: torch.Tensor, decoding: dict) -> torch.Tensor:
    """The VAE's [B, C, H, W] from a Denoiser's latents, by `latent_decoding`: Flux's [B, (H/2)(W/2), 4C]
    tokens of 2 x 2 patches are unpacked; other latents pass as they are."""
    packing = decoding.get("packing")
    if packing is None:
        return latents
    h, w = packing["latent_height"], packing["latent_width"]
    b, _, channels = latents.shape
    x = latents.reshape(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels // 4, h, w)


def flow_mu(cfg, image_seq_len: int, max_shift_default: float) -> float:
    """The dynamic shift mu of a FlowMatch scheduler config for image_seq_len tokens (lf.flux_mu)."""
    return flux_mu(int(image_seq_len), base_image_seq_len=int(_get(cfg, "base_image_seq_len", 256)),
                   max_image_seq_len=int(_get(cfg, "max_image_seq_len", 4096)),
                   base_shift=float(_get(cfg, "base_shift", 0.5)),
                   max_shift=float(_get(cfg, "max_shift", max_shift_default)))
