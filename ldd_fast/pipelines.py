"""`lf.from_pipeline(pipe)`: a diffusers text-to-image pipeline as an ordinary Denoiser over its latent space.

Stable Diffusion 1.x / 2.x (UNet2DConditionModel, eps or v, a DDPM-family scheduler), Stable
Diffusion 3 (SD3Transformer2DModel) and Flux (FluxTransformer2DModel), all recognised by their
class names and configs (duck typing: diffusers is never imported here). The Denoiser is
`lf.from_diffusers` of the pipeline's network and scheduler, with the pipeline's classifier-free
guidance (the negative prompt's embedding as null_cond) and these attributes:

  sample_shape       the latent at the requested height and width (Flux: the packed [tokens, 64])
  encode_prompt(ps)  per-sample conditions for a list of prompts: [B, L, D] (SD), or the pair
                     (prompt_embeds, pooled_projections) (SD3, Flux), as the pipeline encodes them
  decode(latents)    images in [-1, 1] through the VAE, with the pipeline's unpacking, scaling and
                     shift factors (a callable for lf.learn(decoder=...) and for pictures)
  pipeline_grid      the keyword arguments of lf.discretize that give the pipeline's own grid
                     (flow pipelines: kind "flowmatch" with shift or mu, or "flux" with mu)
  pipeline_kind      "sd" | "sd3" | "flux"
  latent_decoding    what `decode` does, as data (for an exported graph's manifest): the VAE component,
                     images = vae.decode(unpacked / scaling_factor + shift_factor), and Flux's packing
                     ([B, (H/2)(W/2), 4C] tokens of 2 x 2 latent patches) or None
  pipeline_schedule(nfe)  the pipeline scheduler's own grid at nfe calls, with its update as a registry
                     solver recorded in the Schedule (SCHEDULER_SOLVERS; refused by name otherwise)

Flux's embedded guidance (the FluxPipeline argument guidance_scale) is a constant of the
Denoiser's network (part of its fingerprint); its true classifier-free guidance is
`true_cfg_scale`. Nothing is downloaded: the pipeline object is the caller's.
"""
from __future__ import annotations

import torch

from .adapters import _class_names, _get, from_diffusers
from .cond import map_cond
from .errors import InvalidArgument, InvalidArgumentType, integer
from .schedule import Schedule, discretize, flux_mu

PIPELINES = {"StableDiffusionPipeline": "sd", "StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}
# A pipeline scheduler's update as (registry solver, order; None: the config's solver_order). FlowMatchEuler
# is Euler in (x, t); DDIM and Euler are first order. PNDM with skip_prk_steps is PLMS: Adams-Bashforth-4 on
# the noise prediction, as iPNDM, whose lower-order warm start replaces PLMS's repeated first timestep.
SCHEDULER_SOLVERS = {"FlowMatchEulerDiscreteScheduler": ("euler", 1), "DDIMScheduler": ("euler", 1),
                     "EulerDiscreteScheduler": ("euler", 1), "PNDMScheduler": ("ipndm", 4),
                     "DPMSolverMultistepScheduler": ("dpmpp", None), "UniPCMultistepScheduler": ("unipc", None)}


def pipeline_kind(pipe) -> str:
    """"sd" | "sd3" | "flux", from the pipeline's class or, for a subclass of another name, its network."""
    for name in _class_names(pipe):
        if name in PIPELINES:
            return PIPELINES[name]
    net_names = _class_names(getattr(pipe, "transformer", None)) | _class_names(getattr(pipe, "unet", None))
    for name, kind in (("FluxTransformer2DModel", "flux"), ("SD3Transformer2DModel", "sd3"),
                       ("UNet2DConditionModel", "sd")):
        if name in net_names:
            return kind
    raise InvalidArgumentType("expected a StableDiffusionPipeline, StableDiffusion3Pipeline or FluxPipeline (or one "
                              f"with the same components), got {type(pipe).__name__}")


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def from_pipeline(pipe, *, height: int | None = None, width: int | None = None, guidance_scale: float | None = None,
                  negative_prompt: str = "", true_cfg_scale: float = 1.0, max_sequence_length: int | None = None):
    """A Denoiser for a Stable Diffusion, SD3 or Flux pipeline (see the module docstring).

    height, width: the image size (default: the pipeline's default size). guidance_scale: as the
    pipeline's argument of the same name (SD / SD3: classifier-free guidance, default 7.5 / 7.0; Flux:
    the embedded guidance, default 3.5). negative_prompt: its embedding is the null condition.
    true_cfg_scale: Flux's classifier-free guidance (1: off). max_sequence_length: the T5 prompt length
    (SD3 / Flux; default the pipeline's).
    """
    kind = pipeline_kind(pipe)
    vae = getattr(pipe, "vae", None)
    if vae is None:
        raise InvalidArgument("the pipeline has no VAE: from_pipeline decodes latents with it")
    vsf = int(getattr(pipe, "vae_scale_factor", 2 ** (len(_get(vae.config, "block_out_channels", (0,) * 4)) - 1)))
    if kind == "sd":
        net = pipe.unet
        size = int(_get(net.config, "sample_size")) * vsf
    else:
        net = pipe.transformer
        size = int(getattr(pipe, "default_sample_size", _get(net.config, "sample_size", 64))) * vsf
    # None means the pipeline's size; 0 is not None (it was once taken for the default, silently).
    height = size if height is None else integer(height, "height")
    width = size if width is None else integer(width, "width")
    step = vsf * 2 if kind == "flux" else vsf * (int(_get(net.config, "patch_size", 1)) if kind == "sd3" else 1)
    if height % step or width % step or height <= 0 or width <= 0:
        raise InvalidArgument(f"height and width must be positive multiples of {step} for this pipeline, got "
                              f"{height} x {width}")
    device = _device(net)
    if max_sequence_length is not None and kind == "sd":
        raise InvalidArgument("max_sequence_length (--max-sequence-length) is the T5 prompt length of SD3 and Flux; "
                              "Stable Diffusion's CLIP text encoder has a fixed length")
    msl = {} if max_sequence_length is None else {
        "max_sequence_length": integer(max_sequence_length, "max_sequence_length", minimum=1)}

    if kind == "sd":
        def encode(prompts):
            return pipe.encode_prompt(list(prompts), device, 1, False)[0]
    elif kind == "sd3":
        def encode(prompts):
            out = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, prompt_3=None, device=device,
                                     num_images_per_prompt=1, do_classifier_free_guidance=False, **msl)
            return out[0], out[2]
    else:
        def encode(prompts):
            embeds, pooled, _ = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=device,
                                                   num_images_per_prompt=1, **msl)
            return embeds, pooled

    def encode_prompt(prompts):
        """Per-sample conditions for a list of prompts (no gradients; on the network's device)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise InvalidArgument("encode_prompt takes a non-empty list of prompt strings")
        with torch.no_grad():
            return map_cond(torch.Tensor.detach, encode(prompts))

    null = map_cond(lambda c: c[0], encode_prompt([negative_prompt]))
    grid = {}
    if kind == "sd":
        g = 7.5 if guidance_scale is None else float(guidance_scale)
        den = from_diffusers(net, pipe.scheduler, guidance_scale=g, null_cond=null if g != 1.0 else None)
        den.sample_shape = (int(_get(net.config, "in_channels")), height // vsf, width // vsf)
        scale = float(_get(vae.config, "scaling_factor", 1.0))
        decoding = {"scaling_factor": scale, "shift_factor": 0.0, "packing": None}

        def decode(latents):
            return vae.decode(latents.to(vae.dtype) / scale, return_dict=False)[0]
    else:
        cfg = pipe.scheduler.config
        scale, shift = float(_get(vae.config, "scaling_factor", 1.0)), float(_get(vae.config, "shift_factor", 0.0)
                                                                              or 0.0)
        if kind == "sd3":
            g = 7.0 if guidance_scale is None else float(guidance_scale)
            den = from_diffusers(net, pipe.scheduler, guidance_scale=g, null_cond=null if g != 1.0 else None,
                                 latent_size=(height // vsf, width // vsf))
            patch = int(_get(net.config, "patch_size", 1))
            if _get(cfg, "use_dynamic_shifting", False):
                grid = {"kind": "flowmatch", "mu": _mu(cfg, (height // vsf // patch) * (width // vsf // patch), 1.16)}
            else:
                grid = {"kind": "flowmatch", "shift": float(_get(cfg, "shift", 1.0))}
            decoding = {"scaling_factor": scale, "shift_factor": shift, "packing": None}

            def decode(latents):
                return vae.decode(latents.to(vae.dtype) / scale + shift, return_dict=False)[0]
        else:
            embedded = 3.5 if guidance_scale is None else float(guidance_scale)
            wants = bool(_get(net.config, "guidance_embeds", False))
            lat_h, lat_w = 2 * (height // (vsf * 2)), 2 * (width // (vsf * 2))
            cfg_scale = float(true_cfg_scale)
            den = from_diffusers(net, pipe.scheduler, guidance_scale=cfg_scale,
                                 null_cond=null if cfg_scale != 1.0 else None, latent_size=(lat_h, lat_w),
                                 embedded_guidance=embedded if wants else None)
            grid = {"kind": "flux", "mu": _mu(cfg, (lat_h // 2) * (lat_w // 2), 1.15)}
            decoding = {"scaling_factor": scale, "shift_factor": shift,
                        "packing": {"kind": "flux 2x2", "latent_height": lat_h, "latent_width": lat_w}}

            def decode(latents):
                x = unpack_latents(latents, decoding)
                return vae.decode(x.to(vae.dtype) / scale + shift, return_dict=False)[0]

    def decode_images(latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from latents (differentiable, for a decoded-pixel loss)."""
        return decode(latents).to(latents.dtype)

    scheduler = pipe.scheduler

    def pipeline_schedule(nfe: int) -> Schedule:
        """The pipeline scheduler's own grid at nfe network calls, its update recorded as the solver."""
        name = type(scheduler).__name__
        if name not in SCHEDULER_SOLVERS:
            raise InvalidArgument(f"the pipeline's {name} has no solver in ldd-fast's registry (known: "
                                  f"{', '.join(SCHEDULER_SOLVERS)}); use a hand-made or learned schedule")
        solver, order = SCHEDULER_SOLVERS[name]
        order = order or int(_get(scheduler.config, "solver_order", 2))
        if grid:  # a flow pipeline's sigmas, ending on 0
            sched = discretize(den.noise, nfe, solver=solver, final="zero", **grid)
        else:  # a DDPM-family grid of integer timesteps k: the network sees k = 1000 t - 1, exactly
            twin = type(scheduler).from_config(scheduler.config)
            twin.set_timesteps(nfe)
            steps = torch.unique_consecutive(torch.as_tensor(twin.timesteps, dtype=torch.float64))
            t = torch.cat([(steps + 1) / 1000, torch.tensor([den.noise.t_min], dtype=torch.float64)])
            sched = Schedule(t=t, t_eval=t[:-1].clone(), noise=den.noise, origin="pipeline")
        return sched.replace(solver=solver, order=order, origin=f"pipeline:{name}",
                             info={**sched.info, "scheduler": name})

    den.encode_prompt, den.decode, den.pipeline_grid, den.pipeline_kind = encode_prompt, decode_images, grid, kind
    den.pipeline_schedule = pipeline_schedule
    den.latent_decoding = {"vae": "vae", **decoding}
    den.height, den.width = height, width
    return den.eval()


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


def _mu(cfg, image_seq_len: int, max_shift_default: float) -> float:
    return flux_mu(int(image_seq_len), base_image_seq_len=int(_get(cfg, "base_image_seq_len", 256)),
                   max_image_seq_len=int(_get(cfg, "max_image_seq_len", 4096)),
                   base_shift=float(_get(cfg, "base_shift", 0.5)),
                   max_shift=float(_get(cfg, "max_shift", max_shift_default)))
