"""Preconditioning of the raw zoo networks: EDM (Karras et al. 2022, Table 1), DDPM eps (Ho et al. 2020) and
rectified flow (velocity v = eps - x0 at x_t = (1 - t) x0 + t eps, as SD3 / Flux).

Both turn a raw network ``F(x, noise_input, cond)`` into an x0 estimate
(a denoiser ``D``). They are used for training and for the reference losses
stored with the weights; the sampling-time ``Denoiser`` of the core package
implements the same maps on its own.
"""
from __future__ import annotations

import torch

from ..errors import InvalidArgument

__all__ = [
    "SIGMA_DATA", "P_MEAN", "P_STD", "edm_coefficients", "edm_loss_weight", "edm_denoise",
    "ddpm_alphas_cumprod", "vp_denoise", "vp_sigma", "FLOW_TIMESTEPS", "flow_denoise",
]

# The flow network's time input is 1000 t (Stable Diffusion 3's transformer convention).
FLOW_TIMESTEPS = 1000

# EDM's defaults (Table 1 and section 5): data std, and the log-normal training sigma density.
SIGMA_DATA = 0.5
P_MEAN, P_STD = -1.2, 1.2


def _as_sigma(sigma, like: torch.Tensor) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if sigma.dim() == 0:
        sigma = sigma.expand(like.shape[0])
    if sigma.shape != (like.shape[0],):
        raise InvalidArgument(f"sigma must be 0-dim or of shape [{like.shape[0]}], got {list(sigma.shape)}")
    if not torch.all(sigma > 0):
        raise InvalidArgument("sigma must be positive")
    return sigma


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """EDM Table 1: (c_skip, c_out, c_in, c_noise) for noise level(s) sigma.

    c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2),
    c_in = 1 / sqrt(s^2 + sd^2), c_noise = ln(s) / 4.
    """
    sigma = torch.as_tensor(sigma)
    if sigma_data <= 0:
        raise InvalidArgument(f"sigma_data must be positive, got {sigma_data}")
    var = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / var
    c_out = sigma * sigma_data / var.sqrt()
    c_in = 1.0 / var.sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """EDM's lambda(sigma) = (s^2 + sd^2) / (s sd)^2 = 1 / c_out^2: unit effective weight on F."""
    sigma = torch.as_tensor(sigma)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_denoise(net, x: torch.Tensor, sigma, cond=None, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise): the EDM-preconditioned x0 estimate."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise InvalidArgument("edm_denoise: x must be a [B, C, H, W] tensor")
    sigma = _as_sigma(sigma, x)
    c_skip, c_out, c_in, c_noise = (c[:, None, None, None] for c in edm_coefficients(sigma, sigma_data))
    f = net(c_in * x, c_noise.flatten(), cond)
    return c_skip * x + c_out * f.to(x.dtype)


def ddpm_alphas_cumprod(beta_start: float = 1e-4, beta_end: float = 0.02,
                        num_train_timesteps: int = 1000) -> torch.Tensor:
    """DDPM's linear betas (Ho et al. 2020, section 4): alphas_cumprod = cumprod(1 - betas), float64."""
    if not (0 < beta_start < beta_end < 1) or num_train_timesteps < 2:
        raise InvalidArgument(f"need 0 < beta_start < beta_end < 1 and >= 2 steps, got "
                              f"{beta_start}, {beta_end}, {num_train_timesteps}")
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def vp_denoise(net, x: torch.Tensor, k, alphas_cumprod: torch.Tensor, cond=None) -> torch.Tensor:
    """x0 estimate from the eps-prediction network at integer DDPM index k (Ho et al. 2020, eq. 4).

    x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps, so x0 = (x_k - sqrt(1 - abar_k) eps_hat) / sqrt(abar_k).
    The network's noise input is the (float) index k itself.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise InvalidArgument("vp_denoise: x must be a [B, C, H, W] tensor")
    k = torch.as_tensor(k, device=x.device)
    if k.dim() == 0:
        k = k.expand(x.shape[0])
    if k.dtype.is_floating_point or k.shape != (x.shape[0],):
        raise InvalidArgument(f"vp_denoise: k must be an integer index, 0-dim or of shape [{x.shape[0]}]")
    if k.min() < 0 or k.max() >= alphas_cumprod.numel():
        raise InvalidArgument(f"vp_denoise: k must lie in [0, {alphas_cumprod.numel() - 1}]")
    abar = alphas_cumprod.to(x.device)[k].to(x.dtype)[:, None, None, None]
    eps = net(x, k.to(x.dtype), cond).to(x.dtype)
    return (x - (1.0 - abar).sqrt() * eps) / abar.sqrt()


def vp_sigma(k, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The EDM-equivalent noise level sigma = sqrt((1 - abar_k) / abar_k) of DDPM step k."""
    abar = alphas_cumprod[torch.as_tensor(k)]
    return ((1.0 - abar) / abar).sqrt()



def flow_denoise(net, x: torch.Tensor, t, cond=None) -> torch.Tensor:
    """x0 = x_t - t v with v = F(x_t, 1000 t, cond): the rectified-flow velocity network's x0 estimate."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise InvalidArgument("flow_denoise: x must be a [B, C, H, W] tensor")
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],) or not torch.all((t >= 0) & (t <= 1)):
        raise InvalidArgument(f"flow_denoise: t must lie in [0, 1], 0-dim or of shape [{x.shape[0]}]")
    v = net(x, FLOW_TIMESTEPS * t, cond).to(x.dtype)
    return x - t[:, None, None, None] * v
