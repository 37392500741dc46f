"""Exact denoisers of known distributions: test problems with closed-form answers.

Each is a network net(x, t) taking the continuous time t (Denoiser time_input="t")
and returning the exact E[x0 | x_t] in the requested parameterisation, so every
adapter can be tested against a known answer.

- GaussianData: x0 ~ N(mu, diag(s^2)). Along the PF-ODE each coordinate keeps its
  standardised value (x_t - alpha mu) / sqrt(alpha^2 s^2 + sigma^2), which gives the
  exact ODE solution under every noise schedule (`solve`).
- GaussianMixture: isotropic components, posterior-weighted component denoisers.
- Empirical: the exact denoiser of a finite data set (a mixture of point masses).
"""
from __future__ import annotations

import torch
from torch import nn

from .noise import NoiseSchedule, as_time


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).view(-1, *([1] * (x.dim() - 1))) if v.dim() == 1 else v.to(x.dtype)


class _Exact(nn.Module):
    def __init__(self, noise: NoiseSchedule, prediction: str):
        super().__init__()
        if prediction not in ("x0", "eps", "v"):
            raise ValueError(f"prediction must be 'x0', 'eps' or 'v', got {prediction!r}")
        self.noise, self.prediction = noise, prediction

    def x0(self, x, t):
        raise NotImplementedError

    def forward(self, x, t):
        t = as_time(t).to(x.device)
        x0 = self.x0(x, t)
        if self.prediction == "x0":
            return x0
        alpha, sigma = _bc(self.noise.alpha(t), x), _bc(self.noise.sigma(t), x)
        eps = (x - alpha * x0) / sigma
        return eps if self.prediction == "eps" else alpha * eps - sigma * x0


class GaussianData(_Exact):
    """x0 ~ N(mu, diag(s^2)) over a sample shape; exact denoiser and exact PF-ODE solution."""

    def __init__(self, noise: NoiseSchedule, mu: torch.Tensor, s: torch.Tensor, prediction: str = "x0"):
        super().__init__(noise, prediction)
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64))
        self.register_buffer("s", torch.as_tensor(s, dtype=torch.float64))

    def _std(self, t, x):
        alpha, sigma = _bc(self.noise.alpha(t), x), _bc(self.noise.sigma(t), x)
        return alpha, torch.sqrt(alpha**2 * self.s.to(x.dtype) ** 2 + sigma**2)

    def x0(self, x, t):
        alpha, std = self._std(t, x)
        mu, s2 = self.mu.to(x.dtype), self.s.to(x.dtype) ** 2
        return mu + alpha * s2 / std**2 * (x - alpha * mu)

    def solve(self, x_start, t_start, t_end):
        """The exact PF-ODE flow from x_start at t_start to t_end (t_end = 0: the data point)."""
        t_start, t_end = as_time(t_start), as_time(t_end)
        a0, std0 = self._std(t_start, x_start)
        mu = self.mu.to(x_start.dtype)
        if float(t_end) == 0:
            a1, std1 = torch.ones((), dtype=x_start.dtype), self.s.to(x_start.dtype)
        else:
            a1, std1 = self._std(t_end, x_start)
        return a1 * mu + std1 * (x_start - a0 * mu) / std0


class GaussianMixture(_Exact):
    """x0 ~ sum_k w_k N(mu_k, s_k^2 I); exact posterior-mean denoiser."""

    def __init__(self, noise: NoiseSchedule, means: torch.Tensor, stds, weights=None, prediction: str = "x0"):
        super().__init__(noise, prediction)
        means = torch.as_tensor(means, dtype=torch.float64)
        k = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64).expand(k).clone()
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None \
            else torch.as_tensor(weights, dtype=torch.float64)
        self.register_buffer("means", means)
        self.register_buffer("stds", stds)
        self.register_buffer("log_w", torch.log(weights / weights.sum()))

    def x0(self, x, t):
        b = x.shape[0]
        alpha = self.noise.alpha(t).to(x.dtype).expand(b)[:, None, None]   # (B, 1, 1)
        sigma = self.noise.sigma(t).to(x.dtype).expand(b)[:, None]         # (B, 1)
        xf = x.flatten(1)[:, None, :]                                      # (B, 1, P)
        mu = self.means.to(x.dtype).flatten(1)[None]                       # (1, K, P)
        s2 = (self.stds.to(x.dtype) ** 2)[None]                            # (1, K)
        var = alpha[..., 0] ** 2 * s2 + sigma**2                           # (B, K)
        resid = xf - alpha * mu                                            # (B, K, P)
        logp = self.log_w.to(x.dtype) - 0.5 * (resid**2).sum(-1) / var - 0.5 * xf.shape[-1] * torch.log(var)
        w = torch.softmax(logp, dim=1)
        comp = mu + (alpha[..., 0] * s2 / var)[..., None] * resid
        return (w[..., None] * comp).sum(1).view_as(x)


class Empirical(GaussianMixture):
    """The exact denoiser of a finite data set: a mixture of point masses at the data."""

    def __init__(self, noise: NoiseSchedule, data: torch.Tensor, prediction: str = "x0"):
        data = torch.as_tensor(data, dtype=torch.float64)
        super().__init__(noise, data, torch.zeros(()), prediction=prediction)
