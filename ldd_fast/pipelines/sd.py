"""Stable Diffusion 1.x / 2.x: a UNet2DConditionModel (eps or v) with a DDPM-family scheduler, one CLIP text
encoder, the prompt embedding [B, L, D] as encoder_hidden_states."""
from __future__ import annotations

from ..adapters import _class_names, _get, from_diffusers
from ._common import Family, register


@register
class StableDiffusion(Family):
    kind, title, pipelines = "sd", "Stable Diffusion", ("StableDiffusionPipeline",)
    default_guidance = 7.5  # the pipeline's guidance_scale default

    def claims(self, pipe) -> bool:
        unet = getattr(pipe, "unet", None)
        return "UNet2DConditionModel" in _class_names(unet) and _get(unet.config, "addition_embed_type") is None

    def network(self, pipe):
        return pipe.unet

    def default_size(self, pipe, vsf):
        size = int(_get(pipe.unet.config, "sample_size")) * vsf
        return size, size

    def encode(self, pipe, prompts, req):
        return pipe.encode_prompt(prompts, req.device, 1, False)[0]

    def denoiser(self, pipe, req, null):
        g = self.default_guidance if req.guidance_scale is None else float(req.guidance_scale)
        den = from_diffusers(pipe.unet, pipe.scheduler, guidance_scale=g, null_cond=null if g != 1.0 else None)
        vsf = req.vae_scale_factor
        den.sample_shape = (int(_get(pipe.unet.config, "in_channels")), req.height // vsf, req.width // vsf)
        return den

    def decoding(self, pipe, req):
        # SD's VAE has no shift; its config may still carry shift_factor None.
        return {**super().decoding(pipe, req), "shift_factor": 0.0}
