"""Flux: a FluxTransformer2DModel (flow velocity, t) on the packed latent [B, (H/2)(W/2), 4C], FluxPipeline's
exponentially shifted grid, CLIP + T5 text encoders giving (prompt_embeds, pooled_projections). Its embedded
guidance (the pipeline's guidance_scale) is a constant of the network; true_cfg_scale is its classifier-free
guidance."""
from __future__ import annotations

from ..adapters import _class_names, _get, from_diffusers
from ._common import Family, flow_mu, register


@register
class Flux(Family):
    kind, title, pipelines = "flux", "Flux", ("FluxPipeline",)
    text_length = True
    flow = True

    def claims(self, pipe) -> bool:
        return "FluxTransformer2DModel" in _class_names(getattr(pipe, "transformer", None))

    def size_step(self, pipe, vsf):
        return vsf * 2  # 2 x 2 latent patches per token

    @staticmethod
    def _latent_size(req):
        vsf = req.vae_scale_factor
        return 2 * (req.height // (vsf * 2)), 2 * (req.width // (vsf * 2))

    def encode(self, pipe, prompts, req):
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=req.device,
                                               num_images_per_prompt=1, **req.text_length)
        return embeds, pooled

    def denoiser(self, pipe, req, null):
        net = pipe.transformer
        embedded = 3.5 if req.guidance_scale is None else float(req.guidance_scale)
        wants = bool(_get(net.config, "guidance_embeds", False))
        cfg_scale = float(req.true_cfg_scale)
        return from_diffusers(net, pipe.scheduler, guidance_scale=cfg_scale,
                              null_cond=null if cfg_scale != 1.0 else None, latent_size=self._latent_size(req),
                              embedded_guidance=embedded if wants else None)

    def grid(self, pipe, req):
        lat_h, lat_w = self._latent_size(req)
        return {"kind": "flux", "mu": flow_mu(pipe.scheduler.config, (lat_h // 2) * (lat_w // 2), 1.15)}

    def decoding(self, pipe, req):
        lat_h, lat_w = self._latent_size(req)
        return {**super().decoding(pipe, req),
                "packing": {"kind": "flux 2x2", "latent_height": lat_h, "latent_width": lat_w}}
