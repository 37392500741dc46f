"""Stable Diffusion XL: a UNet2DConditionModel with addition_embed_type="text_time" and a DDPM-family scheduler;
two CLIP text encoders (their penultimate hidden states concatenated, the second one's pooled projection) and
the size / crop micro-conditions. The condition is the dict the UNet's forward reads, added_cond_kwargs
flattened: {"encoder_hidden_states": [B, L, D], "text_embeds": [B, P], "time_ids": [B, 6]}."""
from __future__ import annotations

import torch

from ..adapters import _class_names, _get
from ..errors import InvalidArgument
from ._common import register
from .sd import StableDiffusion


@register
class StableDiffusionXL(StableDiffusion):
    """Stable Diffusion's UNet Denoiser, with SDXL's prompt encoding, micro-conditions and VAE statistics."""
    kind, title, pipelines = "sdxl", "Stable Diffusion XL", ("StableDiffusionXLPipeline",)
    default_guidance = 5.0

    def claims(self, pipe) -> bool:
        unet = getattr(pipe, "unet", None)
        return "UNet2DConditionModel" in _class_names(unet) and _get(unet.config, "addition_embed_type") == "text_time"

    def check(self, pipe) -> None:
        if _get(pipe.unet.config, "time_cond_proj_dim") is not None:
            # The pipeline feeds such a UNet an embedding of its guidance scale (LCM-distilled SDXL): a guidance
            # inside the network that this Denoiser would not feed.
            raise InvalidArgument("this SDXL UNet embeds the guidance scale (time_cond_proj_dim is set: an "
                                  "LCM-distilled UNet); from_pipeline does not feed timestep_cond")
        if getattr(pipe, "text_encoder_2", None) is None:
            raise InvalidArgument("this SDXL pipeline has no text_encoder_2 (a refiner?); from_pipeline takes the "
                                  "text-to-image StableDiffusionXLPipeline with both text encoders")

    def default_size(self, pipe, vsf):
        size = int(getattr(pipe, "default_sample_size", _get(pipe.unet.config, "sample_size"))) * vsf
        return size, size

    def encode(self, pipe, prompts, req):
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=req.device,
                                                  num_images_per_prompt=1, do_classifier_free_guidance=False)
        # Micro-conditions as StableDiffusionXLPipeline's defaults: original size = target size = the image size,
        # crop (0, 0). The pipeline's own method builds them (and checks the UNet's embedding width).
        size = (req.height, req.width)
        projection = int(_get(pipe.text_encoder_2.config, "projection_dim", pooled.shape[-1]))
        time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=embeds.dtype,
                                          text_encoder_projection_dim=projection)
        return {"encoder_hidden_states": embeds, "text_embeds": pooled,
                "time_ids": time_ids.to(embeds.device).repeat(embeds.shape[0], 1)}

    def null_condition(self, pipe, encode_prompt, negative_prompt):
        null = super().null_condition(pipe, encode_prompt, negative_prompt)
        config = getattr(pipe, "config", None)
        if negative_prompt is None and _get(config, "force_zeros_for_empty_prompt", False):
            # StableDiffusionXLPipeline without a negative prompt: zero text embeddings, the same time ids.
            null = {**null, "encoder_hidden_states": torch.zeros_like(null["encoder_hidden_states"]),
                    "text_embeds": torch.zeros_like(null["text_embeds"])}
        return null

    def decoding(self, pipe, req):
        cfg = pipe.vae.config
        scale = float(_get(cfg, "scaling_factor", 1.0))
        mean, std = _get(cfg, "latents_mean"), _get(cfg, "latents_std")
        if mean is None or std is None:
            return {"scaling_factor": scale, "shift_factor": 0.0, "packing": None}
        # latents * std / scaling_factor + mean, per channel, as the pipeline decodes when the VAE has both.
        return {"scaling_factor": (scale / torch.tensor(std, dtype=torch.float32)).tolist(),
                "shift_factor": [float(m) for m in mean], "packing": None}
