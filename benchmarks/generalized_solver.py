"""The generalized learned solver (coefficient_form "generalized", issue 22) against the structured one
("exact", issue 11) and LD3 on the built-in models, and on the tests' Gaussian mixture.

    python benchmarks/generalized_solver.py [--threads 1] [--cells pairs targets nfe3 first rest] [--mixture]

Every cell is one resumable lf.learn run (benchmarks/results/generalized_solver/<model>/<cell>/) in the
coordinate, start and seed of that configuration's LD3 run (benchmarks/learned_solver.ld3_settings); its
first 7 rounds are LD3's, so LD3's row is the best of them on the same teacher pairs. Then, on the quality
benchmark's 1,000 held-out seeds against its converged reference (never seen by a learner): teacher RMSE
of LD3, of the structured solver (the "exact" form's run on the same pairs, where one exists) and of the
generalized one, ratio to LD3 with a paired-bootstrap interval, FD at 300 samples with a paired interval
of the difference, the validation -> held-out gap (pseudo-Huber), the learning cost (x LD3's seconds and
network evaluations) and the latency of all three through lf.bench (eager, batch 64, 30 interleaved
rounds, median and quartiles). Cell groups:
  pairs:   the generalized form, DPM-Solver++ 3M and UniPC-3 at NFE 4 on the EDM model with 50+50, 100+100,
           200+100 pairs (the default pair count is chosen from these by held-out RMSE).
  targets: the structured ("exact") form on the chosen pairs, same configurations.
  reg:     the L2 pull toward the base solver (coef_reg) at the chosen pairs.
  first:   NFE 3 with a learned first step (plan.GENERALIZED_FIRST_STEP) against without.
  why:     UniPC-3 at NFE 4 with 12 coefficient rounds instead of 6 (is its miss the optimisation budget?).
  fixed:   flow UniPC-3 at NFE 4 with the times fixed in phase 3 (LD3's round won there with joint updates).
  rest:    NFE 3 and 6 on EDM, VP and flow models at NFE 4.
--mixture: the tests' Gaussian mixture, DPM-Solver++ 3M at NFE 4, lf.learn defaults, 3 seeds, held-out
           pairs from the same teacher that neither learner saw.
Writes benchmarks/results/generalized_solver.{json,md}; finished cells are skipped on a rerun.
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
from learned_solver import CACHE, ld3_settings  # noqa: E402

import ldd_fast as lf  # noqa: E402
from ldd_fast import plan as plan_module  # noqa: E402
from ldd_fast.io import atomic_write_text  # noqa: E402
from ldd_fast.learn import COEFFICIENT_PAIRS, LD3Config  # noqa: E402
from ldd_fast.losses import get_loss  # noqa: E402
from ldd_fast.metrics import DigitsMetrics, paired_bootstrap, rmse  # noqa: E402
from ldd_fast.quality import FD_SAMPLES, reference, solver_label  # noqa: E402
from ldd_fast.zoo.builtin import load  # noqa: E402

ROOT = os.path.join(common.RESULTS, "generalized_solver")
NAME = "generalized_solver"
DPM, UNI, IPN = ("dpmpp", 3, None), ("unipc", 3, "bh2"), ("ipndm", 4, None)
PAIR_SETS = ((50, 50), (100, 100), (200, 100))
# lf.learn's default with coefficients (ldd_fast.learn.COEFFICIENT_PAIRS), chosen from the "pairs" cells: the
# lowest held-out RMSE for both solvers at NFE 4 (results/generalized_solver.md).
DEFAULT_PAIRS = (200, 100)
# The other figures (NFE 3 and 6, VP and flow, the pull, the first step): 100 + 100, half the learning time of
# the default, so that they fit this session's CPU time; stated beside every row.
CHOSEN_PAIRS = (100, 100)


def cells(group: str) -> list[dict]:
    if group == "pairs":
        return [dict(model="digits", s=s, nfe=4, form="generalized", pairs=p) for p in PAIR_SETS for s in (DPM, UNI)]
    if group == "targets":  # the structured solver on the default pairs, for the NFE-4 target rows
        return [dict(model="digits", s=s, nfe=4, form="exact", pairs=DEFAULT_PAIRS) for s in (DPM, UNI)]
    if group == "reg":
        return [dict(model="digits", s=s, nfe=4, form="generalized", pairs=CHOSEN_PAIRS, coef_reg=r)
                for s in (DPM, UNI) for r in (1e-3, 1e-2)]
    if group == "first":
        return [dict(model="digits", s=s, nfe=3, form="generalized", pairs=CHOSEN_PAIRS, first=f)
                for s in (DPM, UNI) for f in (False, True)]
    if group == "why":  # UniPC-3 at NFE 4 short of 0.7: does a longer phase 3 (12 rounds, not 6) reach it?
        return [dict(model="digits", s=UNI, nfe=4, form="generalized", pairs=DEFAULT_PAIRS, rounds_coef=12)]
    if group == "fixed":  # flow UniPC-3, where no coefficient round beat LD3's: the corrections alone, times fixed
        return [dict(model="digits_flow", s=UNI, nfe=4, form="generalized", pairs=CHOSEN_PAIRS, coef_joint=False)]
    if group == "rest":
        out = [dict(model="digits", s=s, nfe=n, form=f, pairs=CHOSEN_PAIRS) for n in (3, 6) for s in (DPM, UNI)
               for f in ("generalized", "exact")]
        for model, ss in (("digits_vp", (UNI, IPN)), ("digits_flow", (UNI, DPM))):
            out += [dict(model=model, s=s, nfe=4, form=f, pairs=CHOSEN_PAIRS) for s in ss
                    for f in ("generalized", "exact")]
        return out
    raise ValueError(group)


def cell_name(c: dict) -> str:
    solver, order, variant = c["s"]
    name = f"{solver_label(solver, order, variant)}_nfe{c['nfe']}_{c['form']}_pairs{c['pairs'][0]}+{c['pairs'][1]}"
    if c.get("coef_reg") is not None:
        name += f"_reg{c['coef_reg']:g}"
    if c.get("first"):
        name += "_first"
    if c.get("rounds_coef"):
        name += f"_rounds{c['rounds_coef']}"
    if c.get("coef_joint") is False:
        name += "_fixed_times"
    return name


def learn_cell(c: dict):
    solver, order, variant = c["s"]
    den = load(c["model"])
    settings = ld3_settings(c["model"], solver, order, variant, c["nfe"])
    settings.update(n_train=c["pairs"][0], n_valid=c["pairs"][1])
    cfg = LD3Config(**{k: c[k] for k in ("coef_reg", "rounds_coef", "coef_joint") if c.get(k) is not None})
    plan_module.GENERALIZED_FIRST_STEP = bool(c.get("first"))
    try:
        t0 = time.perf_counter()
        res = lf.learn(den, solver=solver, order=order, nfe=c["nfe"], shape=den.sample_shape,
                       out=os.path.join(ROOT, c["model"], cell_name(c)), resume=True, config=cfg,
                       coefficients=c["form"], heldout=0, show_progress=False, **settings,
                       **({"variant": variant} if variant else {}))
        wall = time.perf_counter() - t0
    finally:
        plan_module.GENERALIZED_FIRST_STEP = False
    return den, res, wall


def latency(den, scheds: dict, rounds: int = 30) -> dict:
    res = lf.bench(den, scheds, backends=("eager",), batches=(64,), threads=torch.get_num_threads(),
                   repeats=rounds, warmup=2, show_progress=False)
    return {r["schedule"]: {k: r["sampler_ms"][k] for k in ("median", "q1", "q3") if k in r["sampler_ms"]}
            for r in res.rows}


def evaluate(c: dict, n: int, metrics, with_latency: bool) -> dict:
    den, res, wall = learn_cell(c)
    sched, ld3 = res.schedule, res.ld3_schedule
    z, y, _ = reference(den, c["model"], n, CACHE)
    scheds = {"ld3": ld3, "learned": sched}
    if c.get("first"):
        plan_module.GENERALIZED_FIRST_STEP = True
    try:
        with torch.no_grad():
            xs = {k: torch.cat([lf.sample(den, zc, s) for zc in z.split(500)]) for k, s in scheds.items()}
    finally:
        plan_module.GENERALIZED_FIRST_STEP = False
    err = {k: rmse(x, y) for k, x in xs.items()}
    huber = get_loss("pseudo_huber")
    stats_ld3 = ld3.info["stats"]
    row = {
        "model": c["model"], "solver": solver_label(*c["s"]), "nfe": c["nfe"], "form": c["form"],
        "n_train": c["pairs"][0], "n_valid": c["pairs"][1], "coef_reg": sched.info.get("coef_reg"),
        "first_step": bool(c.get("first")), "cell": cell_name(c), "mode": sched.info["mode"],
        "free_weights": sum(len(r) for r in sched.coefficients),
        "best_round": sched.metrics["best_round"],
        "rmse_ld3": err["ld3"].mean().item(), "rmse_learned": err["learned"].mean().item(),
        "rmse": paired_bootstrap(err["learned"], err["ld3"]),
        "fd_ld3": metrics.fd(xs["ld3"][:FD_SAMPLES])["fd"], "fd_learned": metrics.fd(xs["learned"][:FD_SAMPLES])["fd"],
        "fd_diff": metrics.fd_paired(xs["learned"][:FD_SAMPLES], xs["ld3"][:FD_SAMPLES]),
        "valid_hard": sched.metrics["valid_hard"], "valid_hard_ld3": sched.metrics["valid_hard_ld3"],
        "heldout_huber": huber(xs["learned"], y).mean().item(), "heldout_huber_ld3": huber(xs["ld3"], y).mean().item(),
        "cost": {"seconds": res.stats["seconds"], "wall_seconds": wall,
                 "evaluations": res.stats["network_evaluations"], "ld3_seconds": stats_ld3["seconds"],
                 "ld3_evaluations": stats_ld3["network_evaluations"],
                 "seconds_x_ld3": res.stats["seconds"] / stats_ld3["seconds"],
                 "evaluations_x_ld3": res.stats["network_evaluations"] / stats_ld3["network_evaluations"]},
    }
    if with_latency and not c.get("first"):
        ms = latency(den, scheds)
        row["latency_ms_b64"] = ms
        row["latency_ratio"] = ms["learned"]["median"] / ms["ld3"]["median"]
    return row


def mixture_rows(seeds=(0, 1, 2), n_heldout: int = 200) -> list[dict]:
    """DPM-Solver++ 3M at NFE 4 on the tests' Gaussian mixture (tests/test_learn.mixture_model), lf.learn defaults
    (coefficients=True): the learned solver against LD3 of the same run, on held-out pairs of the same teacher."""
    from ldd_fast.analytic import GaussianMixture
    from ldd_fast.teacher import TeacherSpec, make_teacher

    rows = []
    for seed in seeds:
        noise = lf.EDM()
        g = torch.Generator().manual_seed(10 + seed)
        den = lf.Denoiser(GaussianMixture(noise, torch.randn(8, 2, 4, 4, generator=g), 0.1), noise,
                          prediction="x0", time_input="sigma")
        n = sum(COEFFICIENT_PAIRS)  # lf.learn's default pairs with coefficients
        data = make_teacher(den, (2, 4, 4), n + n_heldout, spec=TeacherSpec(nfe=20), seed=seed, show_progress=False)
        train, held = data.subset(slice(0, n)), data.subset(slice(n, n + n_heldout))
        t0 = time.perf_counter()
        res = lf.learn(den, solver="dpmpp", order=3, nfe=4, shape=(2, 4, 4), teacher=train, seed=seed,
                       coefficients=True, heldout=0, show_progress=False)
        wall = time.perf_counter() - t0
        with torch.no_grad():
            err = {k: rmse(lf.sample(den, held.z, s), held.y) for k, s in
                   (("ld3", res.ld3_schedule), ("learned", res.schedule))}
        rows.append({"seed": seed, "form": res.schedule.coefficient_form, "rmse_ld3": err["ld3"].mean().item(),
                     "rmse_learned": err["learned"].mean().item(),
                     "rmse": paired_bootstrap(err["learned"], err["ld3"]), "seconds": wall,
                     "best_round": res.schedule.metrics["best_round"]})
        print(f"mixture seed {seed}: RMSE LD3 {rows[-1]['rmse_ld3']:.4f} -> {rows[-1]['rmse_learned']:.4f} "
              f"({rows[-1]['rmse']['ratio']:.2f})", flush=True)
    return rows


def _ms(r, k):
    m = r.get("latency_ms_b64", {}).get(k)
    return f"{m['median']:.1f} [{m.get('q1', float('nan')):.1f}, {m.get('q3', float('nan')):.1f}]" if m else "-"


def markdown(rows, mixture, env) -> str:
    lines = ["# The generalized learned solver vs the structured one and LD3", "",
             f"{env['cpu']}, {env['torch_threads']} thread(s), torch {env['torch']}. Held-out: 1,000 seeds of the "
             "quality benchmark against its converged reference; FD at 300 samples. Ratio: learned / LD3 teacher RMSE "
             "of the same run (same teacher pairs), paired bootstrap over seeds (95%). Cost: the whole run (LD3's 7 "
             "rounds + 6 with coefficients) x LD3's rounds (seconds, per-sample network evaluations). Latency: "
             "lf.bench, eager, batch 64, median [quartiles] over 30 interleaved rounds, ms.", "",
             "| model | solver | NFE | form | pairs | extra | free weights | RMSE LD3 | RMSE learned | ratio [95%] | "
             "FD LD3 -> learned (diff [95%]) | valid -> held-out (pseudo-Huber) | best round | s x LD3 | evals x LD3 | "
             "latency LD3 | latency learned |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["model"], r["nfe"], r["solver"], r["n_train"], r["form"], r["cell"])):
        q, fd = r["rmse"], r["fd_diff"]
        extra = ", ".join(x for x in (f"coef_reg {r['coef_reg']:g}" if r.get("coef_reg") not in (None, 1e-4) else "",
                                      "first step" if r.get("first_step") else "",
                                      "12 coefficient rounds" if "_rounds12" in r["cell"] else "",
                                      "times fixed in phase 3" if "_fixed_times" in r["cell"] else "") if x) or "-"
        lines.append(
            f"| {r['model']} | {r['solver']} | {r['nfe']} | {r['form']} | {r['n_train']} + {r['n_valid']} | {extra} | "
            f"{r['free_weights']} | {r['rmse_ld3']:.4f} | {r['rmse_learned']:.4f} | "
            f"{q['ratio']:.2f} [{q['ratio_lo']:.2f}, {q['ratio_hi']:.2f}] | "
            f"{r['fd_ld3']:.2f} -> {r['fd_learned']:.2f} ({fd['diff']:+.2f} [{fd['lo']:+.2f}, {fd['hi']:+.2f}]) | "
            f"{r['valid_hard']:.4f} -> {r['heldout_huber']:.4f} | {r['best_round']} | "
            f"{r['cost']['seconds_x_ld3']:.2f} | {r['cost']['evaluations_x_ld3']:.2f} | {_ms(r, 'ld3')} | "
            f"{_ms(r, 'learned')} |")
    if mixture:
        lines += ["", "## Gaussian mixture (tests), DPM-Solver++ 3M, NFE 4, lf.learn defaults", "",
                  "200 held-out pairs of the same 20-step teacher per seed (never seen by the learner); RMSE to the "
                  "teacher, learned / LD3 of the same run.", "",
                  "| seed | form | RMSE LD3 | RMSE learned | ratio [95%] | best round | seconds |",
                  "|---|---|---|---|---|---|---|"]
        for m in mixture:
            q = m["rmse"]
            lines.append(f"| {m['seed']} | {m['form']} | {m['rmse_ld3']:.4f} | {m['rmse_learned']:.4f} | "
                         f"{q['ratio']:.2f} [{q['ratio_lo']:.2f}, {q['ratio_hi']:.2f}] | {m['best_round']} | "
                         f"{m['seconds']:.0f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cells", nargs="*", default=[],
                    choices=["pairs", "targets", "reg", "first", "why", "fixed", "rest"])
    ap.add_argument("--only", nargs="*", default=None, help="cell names to run (subset of --cells)")
    ap.add_argument("--mixture", action="store_true")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("-n", type=int, default=1000)
    args = ap.parse_args(argv)
    threads = common.pin_threads(args.threads)
    path = os.path.join(common.RESULTS, f"{NAME}.json")
    saved = json.load(open(path)) if os.path.isfile(path) else {"rows": [], "mixture": []}
    done = {(r["model"], r["cell"]): r for r in saved["rows"]}
    mixture = saved.get("mixture", [])
    env = common.environment(threads)
    metrics = DigitsMetrics()

    def write():
        atomic_write_text(path, json.dumps({"env": env, "rows": list(done.values()), "mixture": mixture}, indent=1)
                          + "\n")
        atomic_write_text(os.path.join(common.RESULTS, f"{NAME}.md"), markdown(list(done.values()), mixture, env))

    for group in args.cells:
        for c in cells(group):
            if (c["model"], cell_name(c)) in done or (args.only and cell_name(c) not in args.only):
                continue
            row = evaluate(c, args.n, metrics, not args.no_latency)
            done[(c["model"], cell_name(c))] = row
            q = row["rmse"]
            print(f"{c['model']} {cell_name(c)}: RMSE LD3 {row['rmse_ld3']:.4f} -> {row['rmse_learned']:.4f} "
                  f"(ratio {q['ratio']:.2f} [{q['ratio_lo']:.2f}, {q['ratio_hi']:.2f}]), FD {row['fd_ld3']:.2f} -> "
                  f"{row['fd_learned']:.2f}, valid {row['valid_hard']:.4f} held-out {row['heldout_huber']:.4f}, "
                  f"{row['cost']['wall_seconds']:.0f} s", flush=True)
            write()
    if args.mixture and not mixture:
        mixture = mixture_rows()
        write()
    print("wrote", path)


if __name__ == "__main__":
    main()
