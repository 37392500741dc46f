"""Stable Diffusion 3: an SD3Transformer2DModel (flow velocity, 1000 t), a FlowMatchEulerDiscreteScheduler with a
static or dynamic shift, three text encoders giving (prompt_embeds, pooled_projections)."""
from __future__ import annotations

from ..adapters import _class_names, _get, from_diffusers
from ._common import Family, flow_mu, register


@register
class StableDiffusion3(Family):
    kind, title, pipelines = "sd3", "SD3", ("StableDiffusion3Pipeline",)
    text_length = True
    flow = True

    def claims(self, pipe) -> bool:
        return "SD3Transformer2DModel" in _class_names(getattr(pipe, "transformer", None))

    def size_step(self, pipe, vsf):
        return vsf * int(_get(pipe.transformer.config, "patch_size", 1))

    def encode(self, pipe, prompts, req):
        out = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=req.device,
                                 num_images_per_prompt=1, do_classifier_free_guidance=False, **req.text_length)
        return out[0], out[2]

    def denoiser(self, pipe, req, null):
        g = 7.0 if req.guidance_scale is None else float(req.guidance_scale)
        vsf = req.vae_scale_factor
        return from_diffusers(pipe.transformer, pipe.scheduler, guidance_scale=g, null_cond=null if g != 1.0 else None,
                              latent_size=(req.height // vsf, req.width // vsf))

    def grid(self, pipe, req):
        cfg, vsf = pipe.scheduler.config, req.vae_scale_factor
        patch = int(_get(pipe.transformer.config, "patch_size", 1))
        if _get(cfg, "use_dynamic_shifting", False):
            return {"kind": "flowmatch", "mu": flow_mu(cfg, (req.height // vsf // patch) * (req.width // vsf // patch),
                                                       1.16)}
        return {"kind": "flowmatch", "shift": float(_get(cfg, "shift", 1.0))}
