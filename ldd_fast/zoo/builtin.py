"""The built-in models as ready Denoisers (no network access; weights ship in the package)."""
from __future__ import annotations

import torch

from ..denoiser import Denoiser
from ..errors import finite_number
from ..noise import EDM, RectifiedFlow, VPDiscrete
from . import load_network

NULL_CLASS = 10
SAMPLE_SHAPE = (1, 8, 8)


def load(name: str = "digits", *, guidance_scale: float = 1.0, device="cpu", folder=None) -> Denoiser:
    """A built-in model: "digits" (EDM preconditioning, sigma in [0.002, 80]), "digits_vp"
    (DDPM 1000-step linear betas, eps prediction) or "digits_flow" (rectified flow, velocity
    prediction, network time 1000 t, as Stable Diffusion 3).

    The Denoiser carries `sample_shape` (1, 8, 8), `name` and `info` (the training record and
    reference denoising losses). Conditions are class labels 0..9 (a LongTensor per sample);
    the null class 10 is the unconditional model, used for guidance; any other label is a
    ConditionError in every executor (num_classes = 11). folder: read the weights from a copy there
    (lf.zoo.weight_files names the two files) instead of the package's.
    """
    guidance_scale = finite_number(guidance_scale, "guidance_scale")
    net, info = load_network(name, device=device, folder=folder)
    noise_info = info["noise"]
    common = dict(guidance_scale=guidance_scale, null_cond=torch.tensor(NULL_CLASS), num_classes=net.num_classes,
                  sample_shape=SAMPLE_SHAPE)
    if info["variant"] == "edm":
        noise = EDM(noise_info["sigma_min"], noise_info["sigma_max"])
        den = Denoiser(net, noise, prediction="edm", sigma_data=noise_info["sigma_data"], **common)
    elif info["variant"] == "flow":
        noise = RectifiedFlow(noise_info["t_min"], noise_info["t_max"])
        den = Denoiser(net, noise, prediction="flow", time_input="t1000", **common)
    else:
        noise = VPDiscrete.linear(noise_info["beta_start"], noise_info["beta_end"], noise_info["num_train_timesteps"])
        den = Denoiser(net, noise, prediction="eps", time_input="index", **common)
    den.name, den.info = name, info
    return den.eval()
