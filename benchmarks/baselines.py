"""GITS, DMN, a plain hard-loss learner, LD3 and the learned solver on the built-in models, with their cost.

    python benchmarks/baselines.py [--threads 1] [--models digits digits_vp digits_flow] [--nfes 3 4 6] [-n 1000]

Per (model, NFE), UniPC-3 (bh2) throughout, every learner on the same teacher pairs (the learned-solver
run's, benchmarks/learned_solver.py: its folder under results/learned_solver/ is shared, so a cell either
script finished is not learned again):
- hand-made: the best of schedule.hand_made on those teacher pairs (the start a user would pick by
  trying them), costing the pairs' evaluations of each candidate;
- DMN (ldd_fast.baselines.dmn): data-free, no network call;
- GITS (ldd_fast.baselines.gits): its own 60-step iPNDM-4 teacher trajectory from the pairs' noise;
- hard: LD3's parameterisation and rounds, the hard objective (no z' ball), Adam (LD3Config(soft=False,
  optimizer="adam")), resumable under results/baselines/;
- LD3: the best of the learned-solver run's LD3 rounds; learned: the learned solver (that run's result).
Held-out: the quality benchmark's 1,000 seeds and converged reference teacher (never seen by any
method); teacher RMSE with a paired-bootstrap ratio to LD3, FD at 300 samples. Cost: wall seconds of the
method itself and its per-sample network evaluations; the teacher pairs (the teacher's calls per pair) are
shared by hand-made / hard / LD3 / learned and listed once per cell. Each finished cell is written to
results/baselines.json at once (a rerun skips it). Writes benchmarks/results/baselines.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import learned_solver  # noqa: E402

import ldd_fast as lf  # noqa: E402
from ldd_fast.baselines import dmn, gits  # noqa: E402
from ldd_fast.io import atomic_write_text  # noqa: E402
from ldd_fast.learn import TEACHER_FILE, LD3Config  # noqa: E402
from ldd_fast.losses import get_loss  # noqa: E402
from ldd_fast.metrics import DigitsMetrics, paired_bootstrap, rmse  # noqa: E402
from ldd_fast.quality import FD_SAMPLES, reference  # noqa: E402
from ldd_fast.schedule import hand_made  # noqa: E402
from ldd_fast.teacher import TeacherData  # noqa: E402
from ldd_fast.zoo.builtin import load  # noqa: E402

SOLVER = ("unipc", 3, "bh2")
METHODS = ("hand-made", "DMN", "GITS", "hard", "LD3", "learned")
ROOT = os.path.join(common.RESULTS, "baselines")
CACHE = learned_solver.CACHE


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def best_hand_made(den, data: TeacherData, nfe: int) -> tuple[lf.Schedule, dict]:
    solver, order, variant = SOLVER
    loss = get_loss("pseudo_huber")
    scores = {}
    with torch.no_grad():
        for name, s in hand_made(den.noise, nfe, solver=solver).items():
            scores[name] = loss(lf.sample(den, data.z, s, solver=solver, order=order, variant=variant), data.y).mean().item()
    best = min(scores, key=scores.get)
    return hand_made(den.noise, nfe, solver=solver)[best], {"choice": best, "network_evaluations": nfe * len(data) * len(scores)}


def schedules(model: str, nfe: int) -> dict:
    """{method: (schedule, cost)} for one cell; the learning runs resume from their checkpoints."""
    solver, order, variant = SOLVER
    den = load(model)
    res, lcost = learned_solver.learn_one(model, solver, order, variant, nfe)
    folder = learned_solver.run_folder(model, solver, order, variant, nfe)
    data = TeacherData.load(os.path.join(folder, TEACHER_FILE))
    settings = learned_solver.ld3_settings(model, solver, order, variant, nfe)
    out = {"learned": (res.schedule, {"seconds": lcost["seconds"], "network_evaluations": lcost["network_evaluations"]}),
           "LD3": (res.ld3_schedule, {"seconds": lcost["ld3_phase_seconds"],
                                      "network_evaluations": lcost["ld3_phase_evaluations"]})}
    (sched, info), sec = _timed(lambda: best_hand_made(den, data, nfe))
    out["hand-made"] = (sched, {"seconds": sec, **info})
    sched, sec = _timed(lambda: dmn(den.noise, nfe, solver=solver, order=order))
    out["DMN"] = (sched, {"seconds": sec, "network_evaluations": 0})
    sched, sec = _timed(lambda: gits(den, nfe, data.z, solver=solver))
    out["GITS"] = (sched, {"seconds": sec, "network_evaluations": sched.info["network_calls"]})
    hard = lf.learn(den, solver=solver, order=order, variant=variant, nfe=nfe, shape=den.sample_shape,
                    teacher=data, out=os.path.join(ROOT, model, f"unipc3-bh2_nfe{nfe}_hard"), resume=True,
                    config=LD3Config(soft=False, optimizer="adam"), **settings)
    out["hard"] = (hard.schedule, {"seconds": hard.stats["seconds"],
                                   "network_evaluations": hard.stats["network_evaluations"]})
    return out, {"teacher_evaluations": data.info["teacher"]["nfe"] * len(data), "pairs": len(data),
                 "mode": settings["mode"]}


def evaluate(model: str, nfe: int, n: int, metrics: DigitsMetrics) -> list[dict]:
    solver, order, variant = SOLVER
    den = load(model)
    scheds, shared = schedules(model, nfe)
    z, y, _ = reference(den, model, n, CACHE)
    errs, fds = {}, {}
    with torch.no_grad():
        for m, (s, _) in scheds.items():
            x = torch.cat([lf.sample(den, c, s, solver=solver, order=order, variant=variant) for c in z.split(500)])
            errs[m] = rmse(x, y)
            fds[m] = metrics.fd(x[:FD_SAMPLES])["fd"]
    rows = []
    for m in METHODS:
        s, cost = scheds[m]
        rows.append({"model": model, "nfe": nfe, "method": m, "solver": "unipc3-bh2", **shared,
                     "rmse": errs[m].mean().item(), "ratio_to_ld3": paired_bootstrap(errs[m], errs["LD3"]),
                     "fd": fds[m], "cost": cost, "t": s.t.tolist(), "origin": s.origin})
    return rows


def markdown(rows, env) -> str:
    lines = ["# GITS, DMN, hard-loss learner, LD3 and the learned solver", "",
             f"{env['cpu']}, {env['torch_threads']} thread(s), torch {env['torch']}. UniPC-3 (bh2). Held-out: 1,000 "
             "seeds of the quality benchmark against its converged reference teacher; FD at 300 samples. Ratio: "
             "RMSE / LD3's RMSE, paired bootstrap over seeds (95 %). Cost: the method's own wall seconds and "
             "per-sample network evaluations; hand-made, hard, LD3 and learned share the teacher pairs (their "
             "cost is the 'teacher' column), GITS makes its own 60-step trajectory from the pairs' noise, DMN "
             "calls no network.", "",
             "| model | NFE | method | RMSE | ratio to LD3 [95%] | FD | seconds | network evaluations | teacher |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = r["ratio_to_ld3"]
        ratio = "1" if r["method"] == "LD3" else f"{q['ratio']:.2f} [{q['ratio_lo']:.2f}, {q['ratio_hi']:.2f}]"
        shared = r["method"] in ("hand-made", "hard", "LD3", "learned")
        lines.append(f"| {r['model']} | {r['nfe']} | {r['method']} | {r['rmse']:.4f} | {ratio} | {r['fd']:.2f} | "
                     f"{r['cost']['seconds']:.1f} | {r['cost']['network_evaluations']:,} | "
                     f"{'%s pairs, %s evaluations' % (r['pairs'], format(r['teacher_evaluations'], ',')) if shared else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=list(learned_solver.CONFIGS), choices=list(learned_solver.CONFIGS))
    ap.add_argument("--nfes", nargs="+", type=int, default=[3, 4, 6])
    ap.add_argument("-n", type=int, default=1000)
    args = ap.parse_args(argv)
    threads = common.pin_threads(args.threads)
    path = os.path.join(common.RESULTS, "baselines.json")
    done = common.done_rows("baselines", lambda r: (r["model"], r["nfe"], r["method"]))
    metrics = DigitsMetrics()
    env = common.environment(threads)
    for model in args.models:
        for nfe in args.nfes:
            if all((model, nfe, m) in done for m in METHODS):
                continue
            t0 = time.perf_counter()
            for r in evaluate(model, nfe, args.n, metrics):
                done[(model, nfe, r["method"])] = r
            cell = {m: done[(model, nfe, m)]["rmse"] for m in METHODS}
            print(f"{model} nfe={nfe}: " + ", ".join(f"{m} {v:.4f}" for m, v in cell.items())
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
            order = {m: i for i, m in enumerate(METHODS)}
            rows = sorted(done.values(), key=lambda r: (r["model"], r["nfe"], order[r["method"]]))
            atomic_write_text(path, json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
            atomic_write_text(os.path.join(common.RESULTS, "baselines.md"), markdown(rows, env))
    print("wrote", path)


if __name__ == "__main__":
    main()
