"""`lf.from_pipeline(pipe)`: a diffusers pipeline as an ordinary Denoiser over its latent space.

Model families are a registry: one module per family in this package (`sd.py`, `sdxl.py`, `sd3.py`,
`flux.py`, `wan.py`), each a `Family` registered with `@register`, recognised by the pipeline's class
name (or, for a subclass of another name, its components: duck typing, diffusers is never imported
here). Adding a family is one new module and its import below. The core (noise, Denoiser, Plan, solvers,
executors, export) never learns a family's name; video is a sample shape with a frame axis, nothing more.
The Denoiser is `lf.from_diffusers` of the pipeline's network and scheduler, with the pipeline's
classifier-free guidance (the negative prompt's condition as null_cond) and these attributes:

  sample_shape       the latent at the requested size: [C, H, W], Flux's packed [tokens, 64], Wan's
                     video latent [C, F, H, W]
  encode_prompt(ps)  per-sample conditions for a list of prompts, as the pipeline encodes them: [B, L, D]
                     (SD, Wan), the pair (prompt_embeds, pooled_projections) (SD3, Flux), or SDXL's dict
                     {"encoder_hidden_states", "text_embeds", "time_ids"} (the UNet's argument names)
  decode(latents)    images [B, 3, H, W] (video: [B, 3, F, H, W]) in [-1, 1] through the VAE, with the
                     pipeline's unpacking, scaling and shift (a callable for lf.learn(decoder=...))
  pipeline_grid      the keyword arguments of lf.discretize that give the pipeline's own grid (flow
                     pipelines: kind "flowmatch" with shift or mu, or "flux" with mu; Wan: the nearest,
                     "flux" with mu = ln(flow_shift), within 3e-3 in t; {} for the DDPM-family ones)
  pipeline_kind      the family's kind: a key of FAMILIES ("sd" | "sdxl" | "sd3" | "flux" | "wan")
  latent_decoding    what `decode` does, as data (for an exported graph's manifest): the VAE component,
                     images = vae.decode(unpacked / scaling_factor + shift_factor) (lists: one factor per
                     latent channel, axis 1), and Flux's packing ([B, (H/2)(W/2), 4C] tokens of 2 x 2
                     latent patches) or None
  pipeline_schedule(nfe)  the pipeline scheduler's own grid at nfe calls, with its update as a registry
                     solver recorded in the Schedule (SCHEDULER_SOLVERS; refused by name otherwise)
  height, width      the image size; video families also num_frames

Flux's embedded guidance (the FluxPipeline argument guidance_scale) is a constant of the
Denoiser's network (part of its fingerprint); its true classifier-free guidance is
`true_cfg_scale`. Nothing is downloaded: the pipeline object is the caller's.
"""
from ._common import (FAMILIES, PIPELINES, SCHEDULER_SOLVERS, Family, Request, from_pipeline, pipeline_kind,
                      register, unpack_latents)
# Each import registers its family; the order is the order of PIPELINES and of the messages naming them.
from . import sd, sd3, flux, sdxl, wan  # noqa: E402,F401  isort: skip

__all__ = ["from_pipeline", "PIPELINES", "FAMILIES", "SCHEDULER_SOLVERS", "Family", "Request", "register",
           "pipeline_kind", "unpack_latents"]
