"""Schedules of the methods that LD3 and the learned solver are measured against.

gits(): GITS (Chen et al., ICML 2024, "On the Trajectory Regularity of ODE-based Diffusion
Sampling"). A fine teacher trajectory (iPNDM-4 on an EDM rho = 7 grid of 60 steps) from a few
noise samples; the cost of one coarse step i -> j is the distance between a first-order
(DDIM / Euler) step from the teacher point x_i and the teacher point x_j; dynamic programming
picks the K-step path t_max -> t_min of least cost, where the cost of a path is
sum_m coeff^(m-1) C(step m) (coeff = 1.15: later, low-noise steps weigh more). The distance is
the authors' default "dev" (the deviation from the straight line between the trajectory's
ends, as a difference to the teacher's own), or "l2". Costs are measured in the ODE's
coordinate y = x / scale (EDM: x itself).

dmn(): DMN (Xue et al., CVPR 2024, "Accelerating Diffusion Sampling with Optimized Time
Steps"), data-free. The interior log-SNR nodes lambda_1..lambda_{N-1} (ends fixed) minimise a
bound on the discretisation error of an order-p multistep exponential integrator of the data
prediction: step i integrates e^lambda x0(lambda) over [lambda_i, lambda_{i+1}] with the
Lagrange interpolant on its last k_i nodes, whose weights C_{i,m} are closed-form in
H0 = e^h - 1, H1 = h e^h - H0, H2 = h^2 e^h - 2 H1; the error of the evaluation at node m is
modelled by a weight w_m (sigma / alpha for pixel models, the authors' advice;
sigma^2 / alpha for latent models). Objective: first-order steps |C_ii| w_i, the first `trunc`
higher-order steps as the L2 norm of their weighted coefficients, and the rest as
sum_m w_m |sum_i C_im| (trunc = 3 for N <= 7, else 0). The authors optimise with scipy's
trust-constr from uniform lambda; we use Adam on a softmax parameterisation of the gaps (monotone
nodes, pinned ends, no scipy), from the same start.

Neither method's authors' code is copied; both are written from the papers' definitions.
"""
from __future__ import annotations

import math

import torch

from . import solvers
from .denoiser import Denoiser
from .errors import InvalidArgument, InvalidArgumentType
from .noise import DTYPE, NoiseSchedule
from .plan import step_orders
from .sample import run_plan
from .schedule import Schedule, discretize

GITS_METRICS = ("dev", "l2")
DMN_WEIGHTS = ("sigma/alpha", "sigma2/alpha")


# ----- GITS ----------------------------------------------------------------------------


def fine_trajectory(den: Denoiser, z: torch.Tensor, cond=None, *, steps: int = 60, order: int = 4,
                    batch: int = 64):
    """The teacher trajectory of GITS: iPNDM-`order` on the EDM rho = 7 grid of `steps` steps.

    Returns (t [steps + 1], y [steps + 1, n, ...] in the ODE coordinate x / scale, D [steps, n, ...]).
    """
    noise = den.noise
    grid = discretize(noise, steps, "edm", solver="ipndm")
    plan = solvers.make_plan(noise, grid.t, grid.t_eval, solver="ipndm", order=order)
    scale, _ = noise.ode_coordinates(grid.t)
    ys, ds = [], []
    with torch.no_grad():
        for i in range(0, len(z), batch):
            trace: list = []
            c = None if cond is None else (cond[i:i + batch] if torch.is_tensor(cond) else cond)
            x_end = run_plan(plan, den, z[i:i + batch], c, trace=trace)
            xs = [x for x, _ in trace] + [x_end]
            ys.append(torch.stack([x / float(s) for x, s in zip(xs, scale)]))
            ds.append(torch.stack([d for _, d in trace]))
    return grid.t, torch.cat(ys, 1), torch.cat(ds, 1)


def gits_costs(noise: NoiseSchedule, t: torch.Tensor, y: torch.Tensor, d: torch.Tensor,
               metric: str = "dev") -> torch.Tensor:
    """C[i, j] (i < j) of one DDIM step from the teacher point i to the fine time j, averaged over samples."""
    if metric not in GITS_METRICS:
        raise InvalidArgument(f"metric must be one of {GITS_METRICS}, got {metric!r}")
    n = len(t) - 1
    alpha, sigma = noise.alpha(t), noise.sigma(t)
    scale, _ = noise.ode_coordinates(t)
    y64, d64 = y.to(DTYPE).flatten(2), d.to(DTYPE).flatten(2)
    if metric == "dev":
        ends = y64[-1] - y64[0]
        u = ends / ends.norm(dim=1, keepdim=True).clamp_min(1e-30)

        def dist(v):  # deviation of v from the straight line through the trajectory's ends
            r = y64[-1] - v
            return (r - (r * u).sum(1, keepdim=True) * u).norm(dim=1).mean()
        own = torch.stack([dist(y64[j]) for j in range(n + 1)])
    costs = torch.full((n + 1, n + 1), math.inf, dtype=DTYPE)
    for i in range(n):
        x_i = y64[i] * scale[i]
        for j in range(i + 1, n + 1):
            # DDIM from (x_i, D_i): exact for a constant denoiser, the first-order exponential integrator.
            x_hat = (sigma[j] / sigma[i]) * x_i + (alpha[j] - alpha[i] * sigma[j] / sigma[i]) * d64[i]
            y_hat = x_hat / scale[j]
            if metric == "l2":
                costs[i, j] = (y_hat - y64[j]).norm(dim=1).mean()
            else:
                costs[i, j] = dist(y_hat) - own[j]
    return costs


def gits_path(costs: torch.Tensor, steps: int, coeff: float = 1.15) -> list[int]:
    """The `steps`-step index path 0 -> n of least sum_m coeff^(m-1) C(step m) (dynamic programming)."""
    n = costs.shape[0] - 1
    if not 1 <= steps <= n:
        raise InvalidArgument(f"need 1 <= steps <= {n} (the fine grid's steps), got {steps}")
    c = costs.tolist()
    # best[k][i]: least cost of reaching n from i in k steps; nxt: the argmin.
    best = [[math.inf] * (n + 1) for _ in range(steps + 1)]
    nxt = [[-1] * (n + 1) for _ in range(steps + 1)]
    for i in range(n):
        best[1][i] = c[i][n]
        nxt[1][i] = n
    for k in range(2, steps + 1):
        for i in range(n):
            for j in range(i + 1, n):
                v = c[i][j] + coeff * best[k - 1][j]
                if v < best[k][i]:
                    best[k][i], nxt[k][i] = v, j
    path, i = [0], 0
    for k in range(steps, 0, -1):
        i = nxt[k][i]
        path.append(i)
    return path


def gits(den: Denoiser, nfe: int, z: torch.Tensor, *, solver: str = "unipc", cond=None, fine_steps: int = 60,
         coeff: float = 1.15, metric: str = "dev", teacher_order: int = 4) -> Schedule:
    """The GITS schedule for `solver` at `nfe` from the noise samples z (unit normal, [n, ...])."""
    if not isinstance(den, Denoiser):
        raise InvalidArgumentType(f"expected an ldd_fast Denoiser, got {type(den).__name__}")
    if not (math.isfinite(coeff) and coeff > 0):
        raise InvalidArgument(f"coeff must be a positive number, got {coeff!r}")
    steps = solvers.steps_for_nfe(solver, nfe)
    if not steps <= fine_steps:
        raise InvalidArgument(f"{solver} at nfe={nfe} takes {steps} steps; the fine grid has only {fine_steps}")
    t, y, d = fine_trajectory(den, z, cond, steps=fine_steps, order=teacher_order)
    costs = gits_costs(den.noise, t, y, d, metric)
    path = gits_path(costs, steps, coeff)
    times = t[path]
    return Schedule(t=times, t_eval=solvers.default_t_eval(solver, times), noise=den.noise, origin="gits",
                    metrics={"path_cost": float(sum(coeff**m * costs[a, b] for m, (a, b) in
                                                    enumerate(zip(path[:-1], path[1:]))))},
                    info={"fine_steps": fine_steps, "coeff": coeff, "metric": metric, "path": path,
                          "teacher": f"ipndm{teacher_order}", "samples": len(z),
                          "network_calls": fine_steps * len(z)})


# ----- DMN -----------------------------------------------------------------------------


def _dmn_coefficients(lam: torch.Tensor, orders: list[int]) -> list[dict[int, torch.Tensor]]:
    """Per step i, {m: C_im}: the weights of the exponential-integrator multistep step on the nodes m."""
    h = lam[1:] - lam[:-1]
    out = []
    for i, k in enumerate(orders):
        hi, e = h[i], torch.exp(lam[i])
        h0 = torch.expm1(hi)
        h1 = hi * torch.exp(hi) - h0
        h2 = hi**2 * torch.exp(hi) - 2 * h1
        if k == 1:
            out.append({i: e * h0})
        elif k == 2:
            b = h[i - 1]
            out.append({i - 1: -e * h1 / b, i: e * (h1 + b * h0) / b})
        else:
            a, b = h[i - 2], h[i - 1]
            out.append({i - 2: e * (h2 + b * h1) / (a * (a + b)), i - 1: -e * (h2 + (a + b) * h1) / (a * b),
                        i: e * (h2 + (2 * b + a) * h1 + b * (a + b) * h0) / (b * (a + b))})
    return out


def dmn_objective(lam: torch.Tensor, orders: list[int], weight: str = "sigma/alpha",
                  trunc: int | None = None) -> torch.Tensor:
    """DMN's error bound of the nodes lam[0..N] (increasing log-SNR) for per-step orders (<= 3)."""
    if weight not in DMN_WEIGHTS:
        raise InvalidArgument(f"weight must be one of {DMN_WEIGHTS}, got {weight!r}")
    n = len(lam) - 1
    trunc = (3 if n <= 7 else 0) if trunc is None else trunc
    if weight == "sigma/alpha":
        w = torch.exp(-lam)
    else:  # VP alpha, sigma of lambda: sigma^2 / alpha
        w = torch.sigmoid(-2 * lam) * torch.sqrt(1 + torch.exp(-2 * lam))
    coefs = _dmn_coefficients(lam, orders)
    total = lam.new_zeros(())
    pooled: dict[int, torch.Tensor] = {}
    for i, (k, c) in enumerate(zip(orders, coefs)):
        if k == 1:
            total = total + c[i].abs() * w[i]
        elif i < trunc:
            total = total + torch.sqrt(sum((cm * w[m]) ** 2 for m, cm in c.items()))
        else:
            for m, cm in c.items():
                pooled[m] = pooled.get(m, 0) + cm
    return total + sum((w[m] * v.abs() for m, v in pooled.items()), lam.new_zeros(()))


def dmn(noise: NoiseSchedule, nfe: int, *, solver: str = "unipc", order: int | None = None,
        lower_order_final: bool = True, weight: str = "sigma/alpha", trunc: int | None = None,
        iters: int = 1000, lr: float = 0.05) -> Schedule:
    """The DMN schedule (data-free) for a multistep `solver` of `order` (at most 3 is modelled) at `nfe`."""
    if not isinstance(noise, NoiseSchedule):
        raise InvalidArgumentType(f"noise must be a NoiseSchedule, got {type(noise).__name__}")
    spec = solvers.get_solver(solver)
    order = solvers.resolve_order(spec, order)
    n = solvers.steps_for_nfe(solver, nfe)
    if n != nfe:
        raise InvalidArgument(f"DMN models multistep solvers (one call per step); {solver} takes {n} steps for "
                              f"nfe={nfe}")
    orders = [min(p, 3) for p in step_orders(n, order, lower_order_final)]
    l_hi, l_lo = noise.lam_span()
    xi = torch.zeros(n, dtype=DTYPE, requires_grad=True)

    def nodes():
        u = torch.cumsum(torch.softmax(xi, 0), 0)[:-1]
        ends = torch.tensor([l_hi, l_lo], dtype=DTYPE)
        return torch.cat([ends[:1], l_hi + u * (l_lo - l_hi), ends[1:]])

    opt = torch.optim.Adam([xi], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    best = (math.inf, xi.detach().clone())
    for _ in range(iters):
        loss = dmn_objective(nodes(), orders, weight, trunc)
        if loss.item() < best[0]:
            best = (loss.item(), xi.detach().clone())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        xi.copy_(best[1])
        lam = nodes()
        t = noise.t_of_lambda(lam)
    t[0], t[-1] = noise.t_max, noise.t_min
    return Schedule(t=t, t_eval=solvers.default_t_eval(solver, t), noise=noise, origin="dmn",
                    metrics={"objective": best[0]},
                    info={"weight": weight, "trunc": 3 if trunc is None and n <= 7 else (trunc or 0),
                          "orders": orders, "iters": iters, "network_calls": 0})
