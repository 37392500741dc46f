"""Where the time of a learning run goes: planning, the network (forward and backward), the rest.

    python benchmarks/learn_profile.py [--threads 1] [--label "plan reuse"]

One default-sized run (UniPC-3, NFE 4, 50 + 50 teacher pairs, LD3's 7 rounds; and the same with learned
coefficients, 7 more rounds, as before the plan reuse, so that rows compare; the default is now 6) on the
built-in model and on an exact Gaussian-mixture denoiser whose network costs almost nothing. Measured in the run: the time spent building Plans (solvers.make_plan) and in the
network's forward calls. The network's backward is not separable inside autograd, so it is estimated
from the same network's forward+backward vs forward time at the training batch size, times the number
of calls made with gradients. Non-network share = 1 - (forward + backward) / total. Rows of earlier runs
with another --label (an earlier state of the code: "before plan reuse") are kept, so the table shows
a change's before and after. Writes benchmarks/results/learn_profile.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import ldd_fast as lf  # noqa: E402
from ldd_fast.analytic import GaussianMixture  # noqa: E402
from ldd_fast.io import atomic_write_text  # noqa: E402
from ldd_fast.learn import LD3Config, LD3Trainer  # noqa: E402
from ldd_fast.teacher import TeacherSpec, make_teacher  # noqa: E402

LEARN = sys.modules["ldd_fast.learn"]


def _mixture():
    noise = lf.EDM()
    g = torch.Generator().manual_seed(3)
    den = lf.Denoiser(GaussianMixture(noise, torch.randn(8, 2, 4, 4, generator=g), 0.1), noise, prediction="x0",
                      time_input="sigma")
    return den, (2, 4, 4)


class _TimedNet(torch.nn.Module):
    def __init__(self, net, clock):
        super().__init__()
        self.net, self.clock = net, clock

    def forward(self, *a, **k):
        t0 = time.perf_counter()
        out = self.net(*a, **k)
        self.clock["net_forward"] += time.perf_counter() - t0
        return out


def _per_call(den, shape, batch: int, reps: int = 30) -> tuple[float, float]:
    """Median seconds of one network forward, and of forward + backward, at `batch`."""
    x = torch.randn(batch, *shape)
    t = torch.tensor(1.0)
    fwd, both = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        with torch.no_grad():
            den.net_call(x, t, None)
        fwd.append(time.perf_counter() - t0)
        xg = x.clone().requires_grad_()
        t0 = time.perf_counter()
        den.net_call(xg, t, None)[0].sum().backward()
        both.append(time.perf_counter() - t0)
    return statistics.median(fwd), statistics.median(both)


def profile(name, den, shape, coefficients) -> dict:
    data = make_teacher(den, shape, 100, spec=TeacherSpec.default_for(den.noise), seed=0, show_progress=False)
    cfg = LD3Config(coefficients=coefficients, rounds_coef=7)  # 7: as the rows measured before the plan reuse
    clock = {"plan": 0.0, "net_forward": 0.0}
    make_plan = LEARN.solvers.make_plan

    def timed_plan(*a, **k):
        t0 = time.perf_counter()
        out = make_plan(*a, **k)
        clock["plan"] += time.perf_counter() - t0
        return out

    trainer = LD3Trainer(den, solver="unipc", order=3, nfe=4, teacher=data, config=cfg, show_progress=False)
    net = den.net
    den.net = _TimedNet(net, clock)
    LEARN.solvers.make_plan = timed_plan
    try:
        t0 = time.perf_counter()
        res = trainer.fit()
        total = time.perf_counter() - t0
    finally:
        den.net, LEARN.solvers.make_plan = net, make_plan
    # Gradient passes: one per training batch (4 calls at batch 2), and the validation's soft step on z'
    # once per round and at the start (4 calls at batch n_valid).
    fwd, both = _per_call(den, shape, cfg.batch_size)
    fwd_v, both_v = _per_call(den, shape, cfg.n_valid, reps=10)
    backward = (trainer.total_rounds * -(-cfg.n_train // cfg.batch_size) * 4 * max(both - fwd, 0.0)
                + (trainer.total_rounds + 1) * 4 * max(both_v - fwd_v, 0.0))
    network = clock["net_forward"] + backward
    return {"model": name, "coefficients": coefficients or "none", "seconds": total,
            "network_calls": res.stats["network_calls"], "plan_seconds": clock["plan"],
            "net_forward_seconds": clock["net_forward"], "net_backward_seconds_est": backward,
            "non_network_share": 1 - network / total, "plan_share": clock["plan"] / total,
            "valid_hard": res.schedule.metrics["valid_hard"]}


def markdown(rows, env) -> str:
    """One table; `label` names the state of the code each row was measured with."""
    lines = ["# Where a learning run's time goes", "",
             f"{env['cpu']}, {env['torch_threads']} thread(s), torch {env['torch']}. UniPC-3, NFE 4, 50 + 50 pairs, "
             "batch 2, LD3's 7 rounds (+ 7 with coefficients, in both states of the code). Network backward estimated from its forward+backward "
             "vs forward time at batch 2 times the calls made with gradients.", "",
             "| code | model | coefficients | seconds | batched calls | planning | network forward | "
             "network backward (est.) | non-network share |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['model']} | {r['coefficients']} | {r['seconds']:.1f} | {r['network_calls']} | "
                     f"{r['plan_seconds']:.2f} s ({100 * r['plan_share']:.1f} %) | {r['net_forward_seconds']:.1f} s | "
                     f"{r['net_backward_seconds_est']:.1f} s | {100 * r['non_network_share']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label", default="plan reuse", help="the state of the code measured (default: %(default)s)")
    args = ap.parse_args(argv)
    threads = common.pin_threads(args.threads)
    env = common.environment(threads)
    path = os.path.join(common.RESULTS, "learn_profile.json")
    rows = []
    if os.path.isfile(path):
        with open(path) as f:
            rows = [{"label": "before plan reuse", **r} for r in json.load(f)["rows"]]
        rows = [r for r in rows if r["label"] != args.label]
    for name, (den, shape) in (("digits", (lf.zoo.load("digits"), (1, 8, 8))), ("gaussian mixture", _mixture())):
        for coefficients in (None, "exact"):
            rows.append({"label": args.label, **profile(name, den, shape, coefficients)})
            r = rows[-1]
            print(f"{name} coefficients={r['coefficients']}: {r['seconds']:.1f} s, planning {100 * r['plan_share']:.1f} %, "
                  f"non-network {100 * r['non_network_share']:.1f} %", flush=True)
    atomic_write_text(path,
                      json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    atomic_write_text(os.path.join(common.RESULTS, "learn_profile.md"), markdown(rows, env))


if __name__ == "__main__":
    main()
