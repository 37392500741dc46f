"""Pictures (the [demo] extra: matplotlib, pillow): sample grids, and the plots of a learning run
(learning curve, learned vs initial times). Every picture the package makes is drawn here."""
from __future__ import annotations

import math
import os

from .io import atomic_write


def grid_image(x):
    """Samples in [-1, 1] ([N, 1 or 3, H, W]) as one uint8 RGB array, one pixel of black between cells."""
    import numpy as np

    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    n, c, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + 2), cols * (w + 2), 3), np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        img = x[k].permute(1, 2, 0).numpy()
        grid[r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = \
            img if c == 3 else np.repeat(img[..., :1], 3, axis=2)
    return grid


def save_grid(x, path: str, *, scale: int = 4) -> None:
    """Samples in [-1, 1] as one PNG grid, written atomically."""
    from PIL import Image

    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"a PNG grid shows images [N, 1 or 3, H, W]; these samples have shape {tuple(x.shape)}: "
                         f"write them to a .pt file instead")
    grid = grid_image(x)
    image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning(result, *, init_schedule=None, out: str) -> list[str]:
    """Write learning_curve.png and time_steps.png into `out`; returns their paths."""
    import torch

    from .schedule import discretize

    plt = _pyplot()
    hist = result.history
    rounds = [h["round"] + 1 for h in hist]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("train_soft", "o-"), ("valid_soft", "s--"), ("valid_hard", "^-")):
        ax.plot(rounds, [h[key] for h in hist], style, label=key.replace("_", " "))
    best = result.schedule.metrics.get("best_round", -1) + 1
    ax.axvline(best, color="gray", lw=0.8, ls=":", label=f"selected (round {best})")
    ax.set_xlabel("round (0 = initial schedule)")
    ax.set_ylabel(f"loss ({result.schedule.metrics.get('loss', '')})")
    ax.set_title(f"LD3 {result.schedule.solver}{result.schedule.order}, nfe={result.schedule.nfe}")
    ax.legend()
    fig.tight_layout()
    curve = os.path.join(out, "learning_curve.png")
    atomic_write(curve, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)

    sched = result.schedule
    noise = sched.noise
    init = init_schedule or discretize(noise, sched.nfe, "logsnr" if sched.info.get("mode") == "lambda"
                                       else "time_uniform", solver=sched.solver)
    fig, ax = plt.subplots(figsize=(6, 4))
    with torch.no_grad():
        ax.plot(noise.lam(init.t).numpy(), "o-", label=f"initial ({init.origin or 'given'}) t")
        ax.plot(noise.lam(sched.t).numpy(), "s-", label="learned t")
        ax.plot(noise.lam(sched.t_eval).numpy(), "x", ms=9, label="learned t_eval (network)")
    ax.set_xlabel("step / call index")
    ax.set_ylabel("lambda = log(alpha / sigma)")
    ax.legend()
    fig.tight_layout()
    times = os.path.join(out, "time_steps.png")
    atomic_write(times, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return [curve, times]


def plot_bench(result, path: str) -> str:
    """Sampler latency vs batch, one line per backend (and schedule); dashed: the eager floor. PNG, atomic."""
    plt = _pyplot()
    rows = result.rows
    fig, ax = plt.subplots(figsize=(6, 4))
    keys = sorted({(r["schedule"], r["backend"]) for r in rows})
    for name, backend in keys:
        pts = sorted((r["batch"], r["sampler_ms"]["median"]) for r in rows
                     if (r["schedule"], r["backend"]) == (name, backend))
        label = backend if len({k[0] for k in keys}) == 1 else f"{name}: {backend}"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    floor = sorted({(r["batch"], r["eager_floor_ms"]) for r in rows if r["eager_floor_ms"] is not None})
    if floor:
        ax.plot([p[0] for p in floor], [p[1] for p in floor], "k--", lw=1, label="eager floor (nfe x forward)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel("ms per sampler call (median)")
    env = result.env
    ax.set_title(f"{env.get('gpu') or env['cpu']}, {env['torch_threads']} thread(s)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path


def plot_plan(result, path: str) -> str:
    """The planner's candidates: held-out RMSE vs predicted latency, the Pareto front, the budget, the choice."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for solver in sorted({r["solver"] for r in result.rows}):
        pts = [(r["predicted_ms"], r["rmse"]) for r in result.rows if r["solver"] == solver]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", ms=4, alpha=0.7, label=solver)
    front = result.pareto()
    ax.plot([r["predicted_ms"] for r in front], [r["rmse"] for r in front], "k-", lw=1, label="Pareto front")
    b = result.best
    ax.plot([b["predicted_ms"]], [b["rmse"]], "*", ms=14, color="crimson",
            label=f"chosen: {b['solver']} nfe {b['nfe']} {b['schedule']}")
    for h, color in zip(result.hand_choice, ("gray", "black")):
        ax.plot([h["measured_ms"]], [h["rmse"]], "x", ms=10, color=color,
                label=f"hand choice: dpmpp2 nfe {h['nfe']} ({h['backend']}, measured)")
    ax.axvline(b["budget_ms"], color="crimson", ls=":", lw=1, label=f"budget {b['budget_ms']:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel(f"predicted ms per call (batch {b['batch']})")
    ax.set_ylabel("held-out teacher RMSE")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return path
