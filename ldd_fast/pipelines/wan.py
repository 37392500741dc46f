"""Wan 2.1 text-to-video: a WanTransformer3DModel (flow velocity, 1000 t) on the video latent [B, C, F, H, W],
the UniPCMultistepScheduler on flow sigmas Wan ships (flow_shift, order 2, final sigma 0), a UMT5 text encoder
giving encoder_hidden_states [B, L, D], and AutoencoderKLWan decoding to frames [B, 3, F, H, W] in [-1, 1]
with its per-channel latents_mean / latents_std. Video is a sample shape with a frame axis, nothing more.

Refused by name: Wan 2.2's two experts (transformer_2 switched at boundary_ratio: the network changes with the
time) and expand_timesteps (TI2V's per-token timesteps)."""
from __future__ import annotations

import math

import torch

from ..adapters import _class_names, _get, from_diffusers
from ..errors import InvalidArgument
from ._common import Family, register

# WanPipeline.__call__'s defaults (its encode_prompt alone defaults to 226 tokens; the call passes 512).
DEFAULT_FRAMES, DEFAULT_TEXT_LENGTH, DEFAULT_SIZE = 81, 512, (480, 832)


@register
class Wan(Family):
    kind, title, pipelines = "wan", "Wan", ("WanPipeline",)
    text_length = True
    flow = True
    video = True

    def claims(self, pipe) -> bool:
        return "WanTransformer3DModel" in _class_names(getattr(pipe, "transformer", None))

    def check(self, pipe) -> None:
        cfg = getattr(pipe, "config", {})
        if getattr(pipe, "transformer_2", None) is not None or _get(cfg, "boundary_ratio") is not None:
            raise InvalidArgument("this Wan pipeline has transformer_2 / boundary_ratio (Wan 2.2's two experts, one "
                                  "above and one below the boundary time): one Denoiser is one network; not supported")
        if _get(cfg, "expand_timesteps", False):
            raise InvalidArgument("this Wan pipeline has expand_timesteps=True (Wan 2.2 TI2V: one timestep per latent "
                                  "token); not supported")
        if getattr(pipe, "transformer", None) is None:
            raise InvalidArgument("this Wan pipeline has no transformer")

    def vae_scale_factor(self, pipe) -> int:
        return int(getattr(pipe, "vae_scale_factor_spatial", _get(pipe.vae.config, "scale_factor_spatial", 8)))

    def default_size(self, pipe, vsf):
        return DEFAULT_SIZE

    def size_step(self, pipe, vsf):
        _, ph, pw = (int(p) for p in _get(pipe.transformer.config, "patch_size", (1, 2, 2)))
        return math.lcm(16, vsf * ph, vsf * pw)  # WanPipeline.check_inputs wants multiples of 16

    @staticmethod
    def _temporal(pipe) -> int:
        return int(getattr(pipe, "vae_scale_factor_temporal", _get(pipe.vae.config, "scale_factor_temporal", 4)))

    def _latent_size(self, pipe, req) -> tuple[int, int, int]:
        frames = DEFAULT_FRAMES if req.num_frames is None else req.num_frames
        temporal = self._temporal(pipe)
        if (frames - 1) % temporal:
            # WanPipeline rounds such a count with a warning; the caller should know which video they get.
            raise InvalidArgument(f"num_frames - 1 must be a multiple of the VAE's temporal factor {temporal} (e.g. "
                                  f"{DEFAULT_FRAMES}), got num_frames={frames}")
        vsf = req.vae_scale_factor
        return (frames - 1) // temporal + 1, req.height // vsf, req.width // vsf

    def encode(self, pipe, prompts, req):
        length = req.text_length or {"max_sequence_length": DEFAULT_TEXT_LENGTH}
        embeds, _ = pipe.encode_prompt(prompt=prompts, negative_prompt=None, do_classifier_free_guidance=False,
                                       num_videos_per_prompt=1, device=req.device, **length)
        return embeds

    def denoiser(self, pipe, req, null):
        g = 5.0 if req.guidance_scale is None else float(req.guidance_scale)
        size = self._latent_size(pipe, req)
        den = from_diffusers(pipe.transformer, pipe.scheduler, guidance_scale=g, null_cond=null if g != 1.0 else None,
                             latent_size=size)
        den.num_frames = (size[0] - 1) * self._temporal(pipe) + 1  # what to pass WanPipeline for these latents
        return den

    def grid(self, pipe, req):
        # The nearest lf.discretize grid. UniPC's flow grid is linspace(1, 1/1000, N + 1)[:-1] under the linear
        # shift s u / (1 + (s - 1) u), which is the exponential shift with mu = ln s; "flux" takes linspace(1, 1/N,
        # N) under it: within 3e-3 in t at shift 3 up to N = 50 (measured). FlowMatchEuler's "flowmatch" grid ends
        # near t_min instead (0.49 apart at N = 4). The exact grid is pipeline_schedule(N).
        return {"kind": "flux", "mu": math.log(float(_get(pipe.scheduler.config, "flow_shift", 1.0)))}

    def decoding(self, pipe, req):
        cfg = pipe.vae.config
        # WanPipeline: latents / (1 / std) + mean per channel, 1 / std computed in float32 as it does.
        return {"scaling_factor": (1.0 / torch.tensor(_get(cfg, "latents_std"))).tolist(),
                "shift_factor": [float(m) for m in _get(cfg, "latents_mean")], "packing": None}
