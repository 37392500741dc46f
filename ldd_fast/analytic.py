"""Exact denoisers of known distributions: test problems with closed-form answers.

Each is a network net(x, t) taking the continuous time t (Denoiser time_input="t")
and returning the exact E[x0 | x_t] in the requested parameterisation (x0, eps, v, or
the flow velocity eps - x0), so every adapter can be tested against a known answer.

- GaussianData: x0 ~ N(mu, diag(s^2)). Along the PF-ODE each coordinate keeps its
  standardised value (x_t - alpha mu) / sqrt(alpha^2 s^2 + sigma^2), which gives the
  exact ODE solution under every noise schedule (`solve`).
- GaussianMixture: isotropic components, posterior-weighted component denoisers.
- Empirical: the exact denoiser of a finite data set (a mixture of point masses).
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import InvalidArgument
from .noise import NoiseSchedule, as_time


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).view(-1, *([1] * (x.dim() - 1))) if v.dim() == 1 else v.to(x.dtype)


class _Exact(nn.Module):
    def __init__(self, noise: NoiseSchedule, prediction: str):
        super().__init__()
        if prediction not in ("x0", "eps", "v", "flow"):
            raise InvalidArgument(f"prediction must be 'x0', 'eps', 'v' or 'flow', got {prediction!r}")
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
        if self.prediction == "flow":
            return eps - x0  # the velocity of x_t = (1 - t) x0 + t eps
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


def fit_order(nfes, errors) -> float:
    """Empirical order of convergence: minus the least-squares slope of log error on log nfe."""
    x = torch.log(torch.as_tensor(nfes, dtype=torch.float64))
    y = torch.log(torch.as_tensor(errors, dtype=torch.float64))
    x = x - x.mean()
    return float(-(x * (y - y.mean())).sum() / (x * x).sum())


def warm_started_times(noise: NoiseSchedule, n: int, warm: int, grid: str = "logsnr",
                       power: float = 2.5) -> torch.Tensor:
    """n + 1 solver times whose first `warm` steps are tiny (h^power in the grid's coordinate).

    A multistep method of order p must start with lower-order steps; shrinking them
    makes their error negligible, which is the effect of seeding the history from the
    exact solution, so that the asymptotic order of the method itself shows.
    grid: "logsnr" (uniform in lambda) or "sigma" (uniform in the level of the schedule's ODE
    coordinates: sigma / alpha for EDM and VP, t for rectified flow; where iPNDM's equal steps live).
    """
    if grid not in ("logsnr", "sigma"):
        raise InvalidArgument(f"grid must be 'logsnr' or 'sigma', got {grid!r}")
    if not 0 <= warm < n:
        raise InvalidArgument(f"need 0 <= warm < n, got warm={warm}, n={n}")
    t_hi = torch.tensor(noise.t_max, dtype=torch.float64)
    t_lo = torch.tensor(noise.t_min, dtype=torch.float64)
    if grid == "logsnr":  # finite from pure noise too: the span of discretize's lambda grids
        a, b = (torch.tensor(v, dtype=torch.float64) for v in noise.lam_span())
    else:
        a, b = noise.ode_coordinates(t_hi)[1], noise.ode_coordinates(t_lo)[1]
    span = b - a
    h = span / (n - warm)
    delta = torch.sign(span) * h.abs() ** power / span.abs() ** (power - 1)
    head = a + delta * torch.arange(warm, dtype=torch.float64)
    tail = a + warm * delta + torch.linspace(0, 1, n - warm + 1, dtype=torch.float64) * (span - warm * delta)
    u = torch.cat([head, tail])
    t = noise.t_of_lambda(u) if grid == "logsnr" else noise.t_of_level(u)
    t[0], t[-1] = t_hi, t_lo
    return t


def gaussian_problem(noise: NoiseSchedule, *, dim: int = 16, batch: int = 8, seed: int = 0):
    """A seeded Gaussian-data problem: (Denoiser, unit noise z, exact PF-ODE solution from z)."""
    from .denoiser import Denoiser

    g = torch.Generator().manual_seed(seed)
    mu = 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)
    s = 0.3 + 0.5 * torch.rand(dim, generator=g, dtype=torch.float64)  # away from 0 and 1
    net = GaussianData(noise, mu, s)
    den = Denoiser(net, noise, prediction="x0", time_input="t")
    z = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    return den, z, net.solve(z * noise.prior_scale, noise.t_max, noise.t_min)


def convergence_order(noise: NoiseSchedule, solver: str, order: int, steps, *, variant: str | None = None,
                      warm: int = 0, grid: str = "logsnr", lower_order_final: bool | None = None):
    """(measured order, max errors) of a solver against the exact Gaussian solution.

    steps: the numbers of solver steps (nfe for multistep solvers, K for Heun's 2K - 1 calls).
    warm > 0 or grid="sigma": times from `warm_started_times`; else lf.discretize(kind="logsnr").
    """
    from .sample import sample
    from .schedule import Schedule, discretize
    from .solvers import default_t_eval

    den, z, exact = gaussian_problem(noise)
    errors = []
    for n in steps:
        if warm or grid == "sigma":
            t = warm_started_times(noise, n, warm, grid)
            sched = Schedule(t=t, t_eval=default_t_eval(solver, t), noise=noise)
        else:
            sched = discretize(noise, 2 * n - 1 if solver == "heun" else n, "logsnr", solver=solver)
        opts = {} if solver in ("euler", "heun") else {"lower_order_final": lower_order_final}
        if variant:
            opts["variant"] = variant
        out = sample(den, z, sched, solver=solver, order=order, **opts)
        errors.append((out - exact).abs().max().item())
    return fit_order(steps, errors), errors
