"""The planner (lf.plan_sampler) on the built-in models at two latency budgets, on this machine.

    python benchmarks/planner.py [--threads 1] [--models digits digits_vp digits_flow] [--learn coefficients]

Per model: one latency model (every CPU backend the planner times by default, batch 8), then two budgets,
about 3 and 8 eager network calls of this machine, each planned with hand-made schedules and, with
--learn, learned ones for the best two candidates under a 10-minute cap (cached under
results/planner/cache/<fingerprint>: a rerun reuses them). Reported per budget: the recommendation,
its measured vs predicted latency, its held-out RMSE (300 seeds no choice looked at) and digits FD, and
the hand choice a user would make (DPM-Solver++ 2M, EDM schedule, largest NFE that fits) eager and on
the chosen backend. Writes benchmarks/results/planner.{json,md} and per plan results/planner/<model>_<budget>/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import ldd_fast as lf  # noqa: E402
from ldd_fast.io import atomic_write_text  # noqa: E402
from ldd_fast.metrics import FD_SAMPLES, DigitsMetrics  # noqa: E402
from ldd_fast.zoo.builtin import load  # noqa: E402

ROOT = os.path.join(common.RESULTS, "planner")
BATCH = 8
CALLS = (3, 8)  # budgets: about this many eager network calls of this machine


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=["digits", "digits_vp", "digits_flow"])
    ap.add_argument("--learn", default="coefficients", choices=("none", "ld3", "coefficients"))
    args = ap.parse_args(argv)
    threads = common.pin_threads(args.threads)
    metrics = DigitsMetrics()
    rows = []
    for model in args.models:
        den = load(model)
        probe = lf.bench(den, lf.discretize(den.noise, 1, "edm"), backends=("eager",), batches=(BATCH,),
                         threads=threads, repeats=10, warmup=2, show_progress=False)
        call_ms = probe.rows[0]["sampler_ms"]["median"]
        latency = None
        for calls in CALLS:
            budget = round(calls * call_ms, 1)
            res = lf.plan_sampler(den, budget_ms=budget, batch=BATCH, metrics=metrics, n_eval=FD_SAMPLES,
                                  learn=args.learn, learn_top=2,
                                  learn_seconds=600, cache=os.path.join(ROOT, "cache"), threads=threads,
                                  latency=latency, out=os.path.join(ROOT, f"{model}_{calls}calls"), show_progress=False)
            latency = res.latency_model  # measured once per model: both budgets plan on the same model
            b = res.best
            rows.append({"model": model, "budget_ms": budget, "calls": calls, "best": b, "hand": res.hand_choice,
                         "latency_model": res.latency_model, "candidates": len(res.rows),
                         "learned_rows": [r for r in res.rows if r["schedule"].startswith("ld3")]})
            print(f"{model} budget {budget:g} ms: {b['solver']} nfe {b['nfe']} {b['schedule']} {b['backend']}: RMSE "
                  f"{b['rmse']:.4f}, predicted {b['predicted_ms']:.1f} ms, measured {b['measured_ms']:.1f} ms; by hand "
                  + ", ".join(f"{h['backend']} nfe {h['nfe']} RMSE {h['rmse']:.4f}" for h in res.hand_choice), flush=True)
            env = common.environment(threads)
            atomic_write_text(os.path.join(common.RESULTS, "planner.json"),
                              json.dumps({"env": env, "batch": BATCH, "rows": rows}, indent=1) + "\n")
            atomic_write_text(os.path.join(common.RESULTS, "planner.md"), markdown(rows, env, args.learn))


def markdown(rows, env, learn) -> str:
    lines = ["# The planner on the built-in models", "",
             f"{env['cpu']}, {env['torch_threads']} thread(s), torch {env['torch']}, batch {BATCH}. Budgets: about 3 and "
             f"8 eager network calls of this machine. Schedules: hand-made, and learned ({learn}) for the best two "
             "candidates. RMSE: held-out teacher RMSE (300 seeds, 50-step teacher) that no choice looked at; FD: "
             "digits FD of those 300 samples. Hand choice: DPM-Solver++ 2M, "
             "EDM schedule, largest NFE that fits, eager / on the chosen backend.", "",
             "| model | budget ms | chosen | backend | predicted ms | measured ms | error | RMSE | FD | by hand, eager "
             "(NFE, RMSE, ms) | by hand, same backend | RMSE / hand (same backend) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["best"]
        hand = {h["backend"]: h for h in r["hand"]}
        eager = hand.get("eager")
        same = hand.get(b["backend"])

        def fmt(h):
            return "-" if h is None else f"{h['nfe']}, {h['rmse']:.4f}, {h['measured_ms']:.1f}"
        ratio = "-" if same is None else f"{b['rmse'] / same['rmse']:.2f}"
        fd = "-" if b.get("fd") is None else f"{b['fd']:.2f}"
        lines.append(f"| {r['model']} | {r['budget_ms']:g} | {b['solver']} NFE {b['nfe']}, {b['schedule']} | "
                     f"{b['backend']} | {b['predicted_ms']:.1f} | {b['measured_ms']:.1f} | "
                     f"{100 * b['prediction_error']:+.0f} % | {b['rmse']:.4f} | {fd} | {fmt(eager)} | {fmt(same)} | "
                     f"{ratio} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
