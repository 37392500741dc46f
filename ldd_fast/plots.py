"""Plots of a learning run (matplotlib, the [demo] extra): learning curve and learned vs initial times."""
from __future__ import annotations

import os


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
    fig.savefig(curve, dpi=120)
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
    fig.savefig(times, dpi=120)
    plt.close(fig)
    return [curve, times]
