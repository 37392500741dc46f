"""Pictures (the [demo] extra: matplotlib, pillow): sample grids, the plots of a learning run (learning
curve, learned vs initial times), of a benchmark and of a plan.

Every function that draws returns its matplotlib Figure and, given a path, also writes it as a PNG
(atomically). The figures are made on an Agg canvas without pyplot: pyplot never holds them (nothing to
close, nothing leaks however many a run draws) and a user's own backend (a notebook's) is left alone.
"""
from __future__ import annotations

import math
import os

from .errors import InvalidArgument
from .io import atomic_write

DPI = 120


def grid_image(x, cols: int | None = None):
    """Samples in [-1, 1] ([N, 1 or 3, H, W]) as one uint8 RGB array, one pixel of black between cells;
    `cols` cells a row (default: a square grid)."""
    import numpy as np

    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    n, c, h, w = x.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + 2), cols * (w + 2), 3), np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        img = x[k].permute(1, 2, 0).numpy()
        grid[r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = \
            img if c == 3 else np.repeat(img[..., :1], 3, axis=2)
    return grid


def save_grid(x, path: str | None, *, scale: int = 4, title: str | None = None, rows=None):
    """Samples in [-1, 1] as one PNG grid, written atomically.

    Plain (no title, no rows): drawn with PIL alone, and the PIL image is returned. With `title` and / or
    `rows` (one caption per grid row: the N samples fill len(rows) rows of N / len(rows) each, e.g. one
    prompt, solver and NFE a row) matplotlib draws them around the grid and the Figure is returned.
    """
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise InvalidArgument(f"a PNG grid shows images [N, 1 or 3, H, W]; these samples have shape {tuple(x.shape)}: "
                              f"write them to a .pt file instead")
    if rows is not None:
        rows = [str(r) for r in rows]
        if not rows or len(x) % len(rows):
            raise InvalidArgument(f"rows: one caption per grid row, and the {len(x)} samples must fill the "
                                  f"{len(rows)} rows equally")
    if title is None and rows is None:
        return _plain_grid(x, path, scale=scale, cols=None)
    grid = grid_image(x, cols=len(x) // len(rows) if rows else None)
    fig = _figure((grid.shape[1] * scale / DPI, grid.shape[0] * scale / DPI))
    ax = fig.add_axes((0, 0, 1, 1))  # the grid fills the figure at `scale` pixels per sample pixel
    ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([])
    cell = x.shape[2] + 2
    ax.set_yticks([r * cell + cell / 2 - 0.5 for r in range(len(rows))] if rows else [], rows or [], fontsize=8)
    ax.tick_params(left=False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title is not None:
        ax.set_title(title, fontsize=8)
    return _save(fig, path, bbox_inches="tight", pad_inches=0.05)  # captions and title lie outside the axes


def save_video(x, path: str | None, *, scale: int = 4, rows=None, fps: float = 8.0):
    """Video samples in [-1, 1] ([N, 3, F, H, W]) as a picture, written atomically.

    A path ending in .gif: an animated GIF (PIL) of F frames, each frame the grid of all N samples at that
    frame (with `rows`, one grid row per caption, as save_grid; a GIF carries no captions), looping at `fps`;
    the list of PIL frames is returned. Pillow merges a frame identical to the one before it into that one.
    Otherwise (a .png): a frame strip, one row a sample and one column a frame, through save_grid; `rows`
    (one caption per group of N / len(rows) samples, e.g. one a prompt) caption every sample's row.
    """
    if x.dim() != 5 or x.shape[1] != 3:
        raise InvalidArgument(f"a video picture shows frames [N, 3, F, H, W]; these samples have shape "
                              f"{tuple(x.shape)}: write them to a .pt file instead")
    n, _, f, h, w = x.shape
    if rows is not None:
        rows = [str(r) for r in rows]
        if not rows or n % len(rows):
            raise InvalidArgument(f"rows: one caption per group of samples, and the {n} samples must fill the "
                                  f"{len(rows)} rows equally")
    if path is not None and os.fspath(path).lower().endswith(".gif"):
        from PIL import Image

        cols = n // len(rows) if rows else None
        frames = []
        for k in range(f):
            grid = grid_image(x[:, :, k], cols=cols)
            frames.append(Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale),
                                                       Image.NEAREST))
        atomic_write(path, lambda tmp: frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                                                      duration=round(1000 / fps), loop=0))
        return frames
    strip = x.permute(0, 2, 1, 3, 4).reshape(n * f, 3, h, w)  # sample-major: each sample's frames in one row
    captions = None if rows is None else [r for r in rows for _ in range(n // len(rows))]
    return save_grid(strip, path, scale=scale, rows=captions) if captions else \
        _plain_grid(strip, path, scale=scale, cols=f)


def _plain_grid(x, path, *, scale, cols):
    from PIL import Image

    grid = grid_image(x, cols=cols)
    image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    if path is not None:
        atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return image


def plot_learning(result, *, init_schedule=None, out: str | None = None, model=None) -> dict:
    """The learning curve and the learned times of an lf.learn result: {"learning_curve": Figure,
    "time_steps": Figure}, written as learning_curve.png and time_steps.png into `out` if given.
    model: the Denoiser (or its name) for the titles."""
    from .schedule import discretize

    def path(name):
        return None if out is None else os.path.join(out, name + ".png")

    sched = result.schedule
    # lf.learn's own start when it was given none: uniform in the coordinate it learned in
    init = init_schedule if init_schedule is not None else discretize(
        sched.noise, sched.nfe, "logsnr" if sched.info.get("mode") == "lambda" else "time_uniform", solver=sched.solver)
    return {"learning_curve": plot_learning_curve(result, path("learning_curve"), model=model),
            "time_steps": plot_time_steps(sched, init, path("time_steps"), model=model)}


def plot_learning_curve(result, path: str | None = None, *, model=None):
    """Losses per round, numbered as the rounds in the schedule JSON's best_round (init: the starting
    schedule, validated before round 0); the selected round, and with learned coefficients LD3's own
    best round (ld3_schedule.json) and the learned solver's rounds."""
    sched, hist = result.schedule, result.history
    fig = _figure((6, 4))
    ax = fig.add_subplot()
    rounds = [h["round"] for h in hist]
    for key, style in (("train_soft", "o-"), ("valid_soft", "s--"), ("valid_hard", "^-")):
        ax.plot(rounds, [h[key] for h in hist], style, label=key.replace("_", " "))
    best = sched.metrics["best_round"]
    ld3 = result.ld3_schedule
    coef_rounds = [h["round"] for h in hist if h.get("phase") == 3]
    if coef_rounds:
        ax.axvspan(min(coef_rounds) - 0.5, max(coef_rounds) + 0.5, color="0.92", label="learned solver's rounds")
    if ld3 is not None and ld3.metrics["best_round"] != best:
        ax.axvline(ld3.metrics["best_round"], color="gray", lw=1, ls="--",
                   label=f"LD3's best_round {ld3.metrics['best_round']} (ld3_schedule.json)")
    ax.axvline(best, color="crimson", lw=1, ls=":", label=f"selected: best_round {best}"
               + (" (LD3's too)" if ld3 is not None and ld3.metrics["best_round"] == best else ""))
    ticks = [-1] + list(range(0, max(rounds) + 1, math.ceil(len(rounds) / 16)))  # integers, "init" always shown
    ax.set_xticks(ticks, ["init"] + [str(r) for r in ticks[1:]])
    ax.set_xlabel("round (as best_round in the schedule JSON; init: the starting schedule)")
    ax.set_ylabel(f"loss ({sched.metrics.get('loss', '')})")
    ax.set_title(_learned(sched, model, "learning curve"), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_time_steps(schedule, init=None, path: str | None = None, *, model=None):
    """The solver times t and network times t_eval of a schedule (and of the one it started from) in
    lambda = log(alpha / sigma), by step / call index. A time whose lambda is infinite (a rectified flow's
    t = 1, pure noise: lambda = -inf) is drawn on the axis' edge with a note instead of dropped."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    noise = schedule.noise
    fig = _figure((6, 4))
    ax = fig.add_subplot()
    series = [(schedule.t, "s-", f"{_origin(schedule)} t"),
              (schedule.t_eval, "x", f"{_origin(schedule)} t_eval (network calls)")]
    if init is not None:
        series.insert(0, (init.t, "o-", f"initial ({init.origin or 'given'}) t"))
    off_axis = []  # (index, t, lambda, colour) of the points a lambda axis cannot hold
    for t, style, label in series:
        t, lam = t.numpy(), noise.lam(t).numpy()
        finite = np.isfinite(lam)
        line, = ax.plot(np.arange(len(t))[finite], lam[finite], style, ms=7, label=label)
        off_axis += [(i, t[i], lam[i], line.get_color()) for i in np.flatnonzero(~finite)]
    lo, hi = ax.get_ylim()
    for i, t, lam, color in off_axis:
        ax.plot([i], [lo if lam < 0 else hi], "v" if lam < 0 else "^", color=color, ms=9, clip_on=False)
    # one note a point, however many series hold it
    for i, t, lam in dict.fromkeys((i, t, lam) for i, t, lam, _ in off_axis):
        ax.annotate(f"t = {t:g} ({'pure noise' if lam < 0 else 'no noise'}): lambda = {lam:g}, off the axis",
                    (i, lo if lam < 0 else hi), xytext=(14, 24 if lam < 0 else -28), textcoords="offset points",
                    fontsize=7, arrowprops={"arrowstyle": "->", "lw": 0.8})
    ax.set_ylim(lo, hi)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step index (t) / network call index (t_eval)")
    ax.set_ylabel("lambda = log(alpha / sigma)")
    ax.set_title(_learned(schedule, model, "time steps"), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_bench(result, path: str | None = None, *, model=None):
    """Sampler latency vs batch, one line per backend (and schedule); dashed: the eager floor.
    model: the Denoiser (or its name) for the title."""
    rows, env = result.rows, result.env
    fig = _figure((6, 4))
    ax = fig.add_subplot()
    keys = sorted({(r["schedule"], r["backend"]) for r in rows})
    samplers = {r["schedule"]: f"{r['solver']} NFE {r['nfe']}" for r in rows}
    colors = {}
    for name, backend in keys:
        pts = sorted((r["batch"], r["sampler_ms"]["median"]) for r in rows
                     if (r["schedule"], r["backend"]) == (name, backend))
        label = backend if len(samplers) == 1 else f"{name} ({samplers[name]}): {backend}"
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
        colors.setdefault(name, line.get_color())
    for name in samplers:  # each schedule's own floor: its nfe decides it
        floor = sorted({(r["batch"], r["eager_floor_ms"]) for r in rows
                        if r["schedule"] == name and r["eager_floor_ms"] is not None})
        one = len(samplers) == 1
        if floor:
            ax.plot([p[0] for p in floor], [p[1] for p in floor], "--", lw=1, color="k" if one else colors[name],
                    label=("" if one else f"{name}: ") + "eager floor (nfe x forward)")
    batches = sorted({r["batch"] for r in rows}) or result.settings.get("batches", [])
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_yscale("log")
    ax.set_xlabel("batch")
    ax.set_ylabel("ms per sampler call (median)")
    name = _model(model) if model is not None else f"a model of sample shape {result.settings.get('sample_shape')}"
    ax.set_title(f"{name}: {', '.join(dict.fromkeys(samplers.values()))}\n{_machine(env)}, batch "
                 f"{', '.join(map(str, batches))}", fontsize=8)
    if rows:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_plan(result, path: str | None = None, *, model=None):
    """The planner's candidates: held-out RMSE vs predicted latency, the Pareto front, the budget, the choice,
    and the hand choice at its measured latency (with a note where that is over the budget).
    model: the Denoiser (or its name) for the title."""
    fig = _figure((8.5, 4.4))
    ax = fig.add_subplot()
    for solver in sorted({r["solver"] for r in result.rows}):
        pts = [(r["predicted_ms"], r["rmse"]) for r in result.rows if r["solver"] == solver]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", ms=4, alpha=0.7, label=solver)
    front = result.pareto()
    ax.plot([r["predicted_ms"] for r in front], [r["rmse"] for r in front], "k-", lw=1, label="Pareto front")
    b = result.best
    budget = b["budget_ms"]
    ax.plot([b["predicted_ms"]], [b["rmse"]], "*", ms=14, color="crimson",
            label=f"chosen: {b['solver']} NFE {b['nfe']} {b['schedule']}")
    for h, color in zip(result.hand_choice, ("gray", "black")):
        ax.plot([h["measured_ms"]], [h["rmse"]], "x", ms=10, color=color,
                label=f"hand choice: dpmpp2 NFE {h['nfe']} ({h['backend']}, measured)")
        if h["measured_ms"] > budget:  # it was predicted to fit; the measurement says otherwise
            ax.annotate(f"hand choice: over the budget, {h['measured_ms']:.1f} ms > {budget:g} ms",
                        (h["measured_ms"], h["rmse"]), xytext=(-8, 14), textcoords="offset points", ha="right",
                        fontsize=7, color=color, arrowprops={"arrowstyle": "->", "lw": 0.8, "color": color})
    ax.axvline(budget, color="crimson", ls=":", lw=1, label=f"budget {budget:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel(f"ms per call at batch {b['batch']} (candidates: predicted; hand choice: measured)")
    ax.set_ylabel("held-out teacher RMSE")
    name = _model(model, getattr(result.schedule, "noise", None))
    ax.set_title(f"{name}: budget {budget:g} ms, batch {b['batch']}; chosen {b['solver']} NFE {b['nfe']}, "
                 f"{b['schedule']}, {b['backend']}\n{_machine(result.env)}", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the points, not over them
    fig.tight_layout()
    return _save(fig, path)


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path, **kw):
    if path is not None:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png", **kw))
    return fig


def _model(model, noise=None) -> str:
    """'digits (EDM)': a Denoiser's zoo name (else its network's class) and noise schedule; a string as given."""
    if isinstance(model, str):
        return model
    if model is None:
        return f"a {type(noise).__name__} model" if noise is not None else "model not given"
    name = getattr(model, "name", None) or type(getattr(model, "net", model)).__name__
    return f"{name} ({type(model.noise).__name__})"


def _learned(sched, model, plot: str) -> str:
    what = _origin(sched)
    solver = f" {sched.solver}{sched.order or ''}" if sched.solver else ""
    mode = f", {sched.info['mode']} mode" if "mode" in sched.info else ""
    return f"{_model(model, sched.noise)}: {plot}\n{what}{solver}, NFE {sched.nfe}{mode}"


def _origin(sched) -> str:
    return {"ld3": "LD3", "ld3+coefficients": "learned solver"}.get(sched.origin, sched.origin or "schedule")


def _machine(env: dict) -> str:
    return (f"{env.get('device', '?')} ({env.get('gpu') or env.get('cpu', '?')}), "
            f"{env.get('torch_threads', '?')} thread(s)")


def plot_serving(rows, path: str | None = None, *, env: dict | None = None):
    """Served throughput and p50 / p99 latency vs client concurrency, one line per backend x protocol; dotted:
    the in-process call (benchmarks/serve.py's rows)."""
    fig = _figure((9, 3.8))
    ax_t, ax_l = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for backend, protocol in sorted({(r["backend"], r["protocol"]) for r in rows}):
        mine = sorted((r for r in rows if (r["backend"], r["protocol"]) == (backend, protocol)),
                      key=lambda r: r["concurrency"])
        c = [r["concurrency"] for r in mine]
        line, = ax_t.plot(c, [r["requests_per_s"] for r in mine], "o-", label=f"{backend} / {protocol}")
        ax_l.plot(c, [r["p50_ms"] for r in mine], "o-", color=line.get_color(), label=f"{backend} / {protocol} p50")
        ax_l.plot(c, [r["p99_ms"] for r in mine], "^--", color=line.get_color(), lw=1, label="p99")
    for backend in sorted({r["backend"] for r in rows}):
        ms = next(r["in_process_ms"] for r in rows if r["backend"] == backend)
        ax_l.axhline(ms, ls=":", lw=1, color="k")
        ax_l.annotate(f"in-process {backend}", (1, ms), fontsize=7, va="bottom")
    for ax in (ax_t, ax_l):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients (batch-1 requests)")
    ax_t.set_ylabel("requests / s")
    ax_l.set_ylabel("ms per request")
    ax_l.set_yscale("log")
    ax_t.legend(fontsize=7)
    ax_l.legend(fontsize=6, ncol=2)
    fig.suptitle("Triton serving vs in-process" + (f": {_machine(env)}" if env else ""), fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
