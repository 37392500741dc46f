"""The quality benchmark: every solver x schedule x NFE on the built-in models, against one converged teacher.

For each built-in model, held-out noise seeds (never used by LD3, which draws its pairs from
seed 0) are solved by a reference teacher (UniPC-3, 200 steps, EDM rho = 7, checked against
DPM-Solver++ 3M at 200 steps) and by each low-NFE cell. A cell reports the teacher-matching
RMSE / PSNR (mean over seeds, bootstrap interval) and the digits Frechet distance of its first
300 samples against the held-out digits (ldd_fast.metrics). Learned schedules found under
--learned join the table, compared with the best hand-made schedule of the same solver and
NFE by a paired bootstrap over seeds.

Cells are computed and saved one by one (a JSON line each), so an interrupted run resumes where
it stopped. Outputs under --out: quality_cells.jsonl, quality.csv, quality.md, and plots.

    ldd-fast quality                      # minutes: NFE 4 and 6, 300 seeds
    ldd-fast quality --full               # NFE 3-10 (Heun 3-9), 1000 seeds
"""
from __future__ import annotations

import csv
import io
import json
import os
import time

import torch

from . import schedule as schedule_mod
from .errors import StateFileError
from .io import Fields, atomic_write, atomic_write_text, load_state, read_json, save_state
from .noise import RectifiedFlow
from .metrics import FD_SAMPLES, DigitsMetrics, bootstrap_mean, paired_bootstrap, psnr, rmse
from .progress import progress
from .sample import sample
from .schedule import Schedule, discretize
from .teacher import noise_for

HELDOUT_SEED = 20_251_128
# The converged reference teacher and its check: (solver, order, steps, discretisation, lower_order_final).
# A flow's path converges slowly on the EDM grid (200 steps: RMSE 2.4e-3 to an 800-step consensus); 400
# time-uniform steps with lower-order final steps reach 4e-5, as the EDM grid does for the diffusion models.
REFERENCE = {"diffusion": ("unipc", 3, 200, "edm", None), "flow": ("unipc", 3, 400, "time_uniform", True)}
CHECK = {"diffusion": ("dpmpp", 3, 200, "edm", None), "flow": ("dpmpp", 3, 400, "time_uniform", True)}
SOLVERS = [("euler", 1, None), ("dpmpp", 2, None), ("dpmpp", 3, None), ("unipc", 3, "bh1"),
           ("unipc", 3, "bh2"), ("ipndm", 4, None), ("heun", 2, None)]
QUICK = {"nfes": [4, 6], "heun_nfes": [5], "n": FD_SAMPLES}
FULL = {"nfes": [3, 4, 5, 6, 8, 10], "heun_nfes": [3, 5, 7, 9], "n": 1000}
MODELS = ("digits", "digits_vp", "digits_flow")
FLOW_MODELS = ("digits_flow",)  # rectified flows: a "shifted" row and LD3 rows per mode
PAIRS_KIND = "quality training pairs"


def solver_label(solver, order, variant) -> str:
    return f"{solver}{order}" + (f"-{variant}" if variant else "")


def learned_path(learned_dir: str, model: str, solver: str, order: int, variant, nfe: int) -> str:
    return os.path.join(learned_dir, model, f"{solver_label(solver, order, variant)}_nfe{nfe}", "schedule.json")


def _sample(den, z, sched, solver, order, variant, batch=500, lower_order_final=None):
    opts = {} if lower_order_final is None else {"lower_order_final": lower_order_final}
    with torch.no_grad():
        return torch.cat([sample(den, c, sched, solver=solver, order=order, variant=variant, **opts)
                          for c in z.split(batch)])


REFERENCE_KIND = "quality reference"
CELL_KIND = "quality cell"


def _describe(config) -> str:
    s, o, k, kind, lof = config
    return f"{s}{o} {k} steps {kind}" + (", lower_order_final" if lof else "")


def reference(den, model: str, n: int, cache: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(z, reference samples, check record), cached under `cache` (recomputed for another model's weights
    or another reference configuration)."""
    path = os.path.join(cache, f"{model}_reference_{n}.safetensors")
    shape = (n, *den.sample_shape)
    family = "flow" if isinstance(den.noise, RectifiedFlow) else "diffusion"
    configs = (REFERENCE[family], CHECK[family])
    if os.path.isfile(path):
        f = Fields(load_state(path, REFERENCE_KIND), f"{REFERENCE_KIND} file {path}")
        z = f.tensor("z", shape=shape, floating=True, finite=True)
        y = f.tensor("y", shape=shape, floating=True, finite=True)
        check = f.get("check", dict)
        if f.get("fingerprint", str) == den.fingerprint() and check.get("reference") == _describe(configs[0]):
            if not torch.equal(z, noise_for(n, den.sample_shape, HELDOUT_SEED)):
                raise f.error("z", "is not the held-out noise of this benchmark")
            return z, y, check
    z = noise_for(n, den.sample_shape, HELDOUT_SEED)
    ys = [_sample(den, z, discretize(den.noise, k, kind, solver=s), s, o, None, lower_order_final=lof)
          for s, o, k, kind, lof in configs]
    names = [_describe(c) for c in configs]
    y, err = ys[0], rmse(ys[0], ys[1])
    check = {"reference": names[0], "check": names[1], "rmse_mean": err.mean().item(), "rmse_max": err.max().item()}
    os.makedirs(cache, exist_ok=True)
    save_state(path, REFERENCE_KIND, {"z": z, "y": y, "check": check, "fingerprint": den.fingerprint()})
    return z, y, check


def _cell_path(cache: str, key: str) -> str:
    return os.path.join(cache, key.replace("|", "_") + ".safetensors")


def _load_cell(cache: str, key: str, n: int) -> dict:
    path = _cell_path(cache, key)
    f = Fields(load_state(path, CELL_KIND), f"{CELL_KIND} file {path}")
    rmse_ = f.tensor("rmse", shape=(n,), floating=True, finite=True)
    fd = f.tensor("fd_samples", floating=True, finite=True)
    if fd.dim() < 2 or fd.shape[0] != min(n, FD_SAMPLES):
        raise f.error("fd_samples", f"expected {min(n, FD_SAMPLES)} samples, got shape {tuple(fd.shape)}")
    return {"rmse": rmse_, "fd_samples": fd}


def read_cells(path: str) -> dict:
    """The finished cells of an earlier (interrupted) run: key -> record."""
    done = {}
    if not os.path.isfile(path):
        return done
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                done[rec["key"]] = rec
            except (ValueError, TypeError, KeyError) as e:
                raise StateFileError(f"quality cells file {path}, line {i}: not a cell record ({e}); remove the "
                                     f"line or the file to recompute it") from None
    return done


def _cells(models, solvers, nfes, heun_nfes, kinds, learned_dir):
    for model in models:
        flow = model in FLOW_MODELS
        for solver, order, variant in solvers:
            for nfe in (heun_nfes if solver == "heun" else nfes):
                for kind in kinds + (("shifted",) if flow else ()):
                    yield model, solver, order, variant, nfe, kind, None
                if learned_dir:
                    path = learned_path(learned_dir, model, solver, order, variant, nfe)
                    if os.path.isfile(path):
                        yield model, solver, order, variant, nfe, "ld3", path
                    for mode in ("lambda", "time") if flow else ():  # LD3 in both coordinates, as learned
                        sub = os.path.join(os.path.dirname(path), mode, "schedule.json")
                        if os.path.isfile(sub):
                            yield model, solver, order, variant, nfe, f"ld3_{mode}", sub


def training_pairs(den, model: str, cache: str):
    """LD3's default teacher pairs of the model (seed 0, the first n_train): where hand-made choices are made."""
    from .learn import LD3Config
    from .teacher import TeacherData, TeacherSpec, make_teacher

    path = os.path.join(cache, f"{model}_training_pairs.safetensors")
    if os.path.isfile(path):
        data = TeacherData.load(path)
        if data.info.get("fingerprint") == den.fingerprint():
            return data
    data = make_teacher(den, den.sample_shape, LD3Config().n_train, spec=TeacherSpec.default_for(den.noise), seed=0,
                        show_progress=False)
    os.makedirs(cache, exist_ok=True)
    data.save(path)
    return data


def best_shift(den, model: str, solver, order, variant, nfe: int, cache: str) -> tuple[float, dict]:
    """The flow-matching grid's shift (schedule.FLOW_SHIFTS) with the lowest teacher RMSE on the training
    pairs, never on the held-out seeds."""
    pairs = training_pairs(den, model, cache)
    scores = {}
    for shift in schedule_mod.FLOW_SHIFTS:
        sched = discretize(den.noise, nfe, "flowmatch", solver=solver, shift=shift)
        scores[shift] = rmse(_sample(den, pairs.z, sched, solver, order, variant), pairs.y).mean().item()
    return min(scores, key=scores.get), scores


def cell_key(model, solver, order, variant, nfe, name) -> str:
    return f"{model}|{solver_label(solver, order, variant)}|{nfe}|{name}"


def run(*, models=MODELS, n: int, nfes, heun_nfes, out: str, learned_dir: str | None = None,
        solvers=SOLVERS, kinds=schedule_mod.KINDS, n_boot: int = 200, show_progress: bool = True) -> list[dict]:
    """Compute (or resume) every cell; returns all cell records."""
    from .zoo.builtin import load

    os.makedirs(out, exist_ok=True)
    cache = os.path.join(out, "cache")
    cells_path = os.path.join(out, "quality_cells.jsonl")
    done = read_cells(cells_path)
    metrics = DigitsMetrics()
    todo = [c for c in _cells(models, solvers, nfes, heun_nfes, kinds, learned_dir)
            if cell_key(*c[:6]) not in done]
    dens, refs = {}, {}
    for model, solver, order, variant, nfe, name, path in progress(todo, desc="quality cells",
                                                                   disable=not show_progress):
        if model not in dens:
            dens[model] = load(model)
            refs[model] = reference(dens[model], model, n, cache)
        den = dens[model]
        z, y, check = refs[model]
        extra = {}
        if path:
            sched = Schedule.load(path)
        elif name == "shifted":
            shift, scores = best_shift(den, model, solver, order, variant, nfe, cache)
            sched = discretize(den.noise, nfe, "flowmatch", solver=solver, shift=shift)
            extra = {"shift": shift, "train_rmse_by_shift": scores}
        else:
            sched = discretize(den.noise, nfe, name, solver=solver)
        t0 = time.perf_counter()
        x = _sample(den, z, sched, solver, order, variant)
        err = rmse(x, y)
        key = cell_key(model, solver, order, variant, nfe, name)
        save_state(_cell_path(cache, key), CELL_KIND, {"rmse": err, "fd_samples": x[:FD_SAMPLES].clone()})
        rec = {"key": key, "model": model, "solver": solver_label(solver, order, variant), "nfe": nfe,
               "schedule": name, "n": n, "rmse": bootstrap_mean(err), "psnr": bootstrap_mean(psnr(x, y)),
               "fd": metrics.fd(x[:FD_SAMPLES], n_boot=n_boot), "seconds": time.perf_counter() - t0,
               "reference_check": check, **extra}
        done[key] = rec
        # The whole file, atomically: an interrupted run never leaves half a line.
        atomic_write_text(cells_path, "".join(json.dumps(r) + "\n" for r in done.values()))
    # The reports cover every cell the folder holds (this run's and earlier runs' of other models).
    records = list(done.values())
    comparisons = compare_learned(records, out, metrics, n_boot)
    write_reports(records, comparisons, out)
    try:
        for model in models:
            if model not in dens:
                dens[model] = load(model)
                refs[model] = reference(dens[model], model, n, cache)
            plot_grids(model, dens[model], refs[model], kinds, learned_dir, out)
    except ImportError:
        pass
    return records


def compare_learned(records, out, metrics, n_boot) -> list[dict]:
    """LD3 vs the best hand-made schedule of the same model, solver and NFE: paired bootstraps. Groups whose
    per-seed caches are gone (an earlier run's, on another machine) keep their row from quality_ld3.json."""
    cache = os.path.join(out, "cache")
    path = os.path.join(out, "quality_ld3.json")
    earlier = {}
    if os.path.isfile(path):
        earlier = {(r["model"], r["solver"], r["nfe"]): r for r in read_json(path, "quality LD3 comparison")}
    by_group = {}
    for r in records:
        by_group.setdefault((r["model"], r["solver"], r["nfe"]), []).append(r)
    rows = []
    for (model, solver, nfe), recs in by_group.items():
        learned = [r for r in recs if r["schedule"] == "ld3"]
        hand = [r for r in recs if not r["schedule"].startswith("ld3")]
        if not learned or not hand:
            continue
        best = min(hand, key=lambda r: r["rmse"]["mean"])
        if not all(os.path.isfile(_cell_path(cache, r["key"])) for r in (learned[0], best)):
            if (model, solver, nfe) in earlier:
                rows.append(earlier[(model, solver, nfe)])
            continue
        la = _load_cell(cache, learned[0]["key"], learned[0]["n"])
        lb = _load_cell(cache, best["key"], best["n"])
        name = best["schedule"] + (f" (shift {best['shift']:g})" if "shift" in best else "")
        row = {"model": model, "solver": solver, "nfe": nfe, "best_hand_made": name,
               "rmse_ld3": learned[0]["rmse"]["mean"], "rmse_best": best["rmse"]["mean"],
               "rmse": paired_bootstrap(la["rmse"], lb["rmse"]),
               "fd_ld3": learned[0]["fd"]["fd"], "fd_best": best["fd"]["fd"],
               "fd_diff": metrics.fd_paired(la["fd_samples"], lb["fd_samples"], n_boot=n_boot)}
        rows.append(row)
    atomic_write_text(path, json.dumps(rows, indent=1) + "\n")
    return rows


def _fmt(ci: dict, key="mean", digits=4) -> str:
    return f"{ci[key]:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def write_reports(records, comparisons, out) -> None:
    fields = ["model", "solver", "nfe", "schedule", "n", "rmse", "rmse_lo", "rmse_hi", "psnr", "fd", "fd_lo", "fd_hi"]
    rows = [{"model": r["model"], "solver": r["solver"], "nfe": r["nfe"], "schedule": r["schedule"], "n": r["n"],
             "rmse": r["rmse"]["mean"], "rmse_lo": r["rmse"]["lo"], "rmse_hi": r["rmse"]["hi"],
             "psnr": r["psnr"]["mean"], "fd": r["fd"]["fd"], "fd_lo": r["fd"].get("lo"), "fd_hi": r["fd"].get("hi")}
            for r in records]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(os.path.join(out, "quality.csv"), buf.getvalue())
    lines = ["# Quality benchmark: teacher-matching RMSE (PSNR) and digits FD per cell\n",
             "RMSE against the converged reference teacher on held-out seeds: mean [95% bootstrap interval]. "
             f"FD: {FD_SAMPLES} samples vs the {FD_SAMPLES} held-out digits, in the features of the project's "
             "digits classifier (not FID); interval: bootstrap over seeds (biased upwards, comparable between "
             "cells).\n"]
    for model in dict.fromkeys(r["model"] for r in records):
        check = next(r["reference_check"] for r in records if r["model"] == model)
        lines += [f"## {model}\n", f"Reference: {check['reference']} (vs {check['check']}: mean RMSE "
                  f"{check['rmse_mean']:.1e}, max {check['rmse_max']:.1e})\n",
                  "| solver | nfe | schedule | RMSE | PSNR dB | FD |", "|---|---|---|---|---|---|"]
        for r in records:
            if r["model"] == model:
                name = r["schedule"] + (f" (shift {r['shift']:g}, best on the training pairs)" if "shift" in r else "")
                lines.append(f"| {r['solver']} | {r['nfe']} | {name} | {_fmt(r['rmse'])} | "
                             f"{r['psnr']['mean']:.2f} | {_fmt(r['fd'], 'fd', 2) if 'lo' in r['fd'] else ''} |")
        lines.append("")
    if comparisons:
        lines += ["## LD3 vs the best hand-made schedule (paired bootstrap over seeds)\n",
                  "| model | solver | nfe | best hand-made | RMSE LD3 | RMSE best | ratio [95%] | difference excludes 0 "
                  "| FD LD3 | FD best | FD difference [95%] |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in comparisons:
            r = c["rmse"]
            lines.append(f"| {c['model']} | {c['solver']} | {c['nfe']} | {c['best_hand_made']} | {c['rmse_ld3']:.4f} | "
                         f"{c['rmse_best']:.4f} | {r['ratio']:.3f} [{r['ratio_lo']:.3f}, {r['ratio_hi']:.3f}] | "
                         f"{'yes' if r['excludes_zero'] else 'no'} | {c['fd_ld3']:.2f} | {c['fd_best']:.2f} | "
                         f"{c['fd_diff']['diff']:+.2f} [{c['fd_diff']['lo']:+.2f}, {c['fd_diff']['hi']:+.2f}] |")
    atomic_write_text(os.path.join(out, "quality.md"), "\n".join(lines) + "\n")
    try:
        plot_quality(records, out)
    except ImportError:
        pass


def plot_quality(records, out) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for model in dict.fromkeys(r["model"] for r in records):
        recs = [r for r in records if r["model"] == model]
        solvers = list(dict.fromkeys(r["solver"] for r in recs))
        cols = min(4, len(solvers))
        rows = (len(solvers) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
        for ax, solver in zip(axes.flat, solvers):
            for name in dict.fromkeys(r["schedule"] for r in recs):
                pts = sorted((r["nfe"], r["rmse"]["mean"]) for r in recs if r["solver"] == solver
                             and r["schedule"] == name)
                if pts:
                    ax.plot(*zip(*pts), "o-", label=name)
            ax.set_title(solver)
            ax.set_xlabel("NFE")
            ax.set_ylabel("RMSE to teacher")
            ax.set_yscale("log")
        for ax in list(axes.flat)[len(solvers):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"{model}: teacher-matching error vs NFE")
        fig.tight_layout()
        atomic_write(os.path.join(out, f"quality_{model}.png"), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)


GRID = ("unipc", 3, "bh2", 4)  # the configuration shown side by side


def plot_grids(model, den, ref, kinds, learned_dir, out, count: int = 36) -> None:
    """Samples of every schedule of one configuration (UniPC-3 bh2, NFE 4) beside the teacher's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z, y, _ = ref
    solver, order, variant, nfe = GRID
    panels = [("teacher (200 steps)", y[:count])]
    scheds = [(k, discretize(den.noise, nfe, k, solver=solver)) for k in kinds]
    path = learned_path(learned_dir, model, solver, order, variant, nfe) if learned_dir else None
    if path and os.path.isfile(path):
        scheds.append(("ld3", Schedule.load(path)))
    for name, sched in scheds:
        panels.append((name, _sample(den, z[:count], sched, solver, order, variant)))
    from .plots import grid_image

    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6))
    for ax, (name, x) in zip(axes, panels):
        ax.imshow(grid_image(x), interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{model}: {solver_label(solver, order, variant)}, NFE {nfe}, same seeds", fontsize=9)
    fig.tight_layout()
    atomic_write(os.path.join(out, f"grids_{model}.png"), lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
