"""Eager sampler overhead: wall time of lf.sample over nfe x one network forward, measured in one run.

The network is the built-in digits U-Net architecture (TinyUNet, EDM preconditioning)
with random weights: latency does not depend on the weight values. Both timings run
round-robin in the same process with the thread count pinned; the ratio is taken per
round and summarised by its median and quartiles. lf.sample plans the schedule on every
call (float64 scalar algebra), which is part of what is measured here; lf.Sampler plans once.

    python benchmarks/overhead.py [--threads 2] [--repeats 30] [--nfe 6]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import ldd_fast as lf  # noqa: E402
from ldd_fast.zoo.train import default_network_config  # noqa: E402
from ldd_fast.zoo.unet import TinyUNet  # noqa: E402

SOLVERS = [("euler", 1), ("heun", 2), ("dpmpp", 2), ("dpmpp", 3), ("unipc", 3), ("ipndm", 4)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--nfe", type=int, default=6)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    args = ap.parse_args(argv)
    threads = common.pin_threads(args.threads)
    torch.manual_seed(0)
    config = default_network_config("edm")
    net = TinyUNet(**config).eval()
    noise = lf.EDM()
    den = lf.Denoiser(net, noise, prediction="edm")
    rows = []
    with torch.no_grad():
        for batch in args.batches:
            z = torch.randn(batch, 1, 8, 8)
            t_net = den.time_net(torch.tensor(1.0))
            for solver, order in SOLVERS:
                nfe = args.nfe + 1 if solver == "heun" and args.nfe % 2 == 0 else args.nfe
                sched = lf.discretize(noise, nfe, "edm", solver=solver)
                times = common.interleaved_times({
                    "forward": lambda: den.net_call(z, t_net),
                    "sampler": lambda: lf.sample(den, z, sched, solver=solver, order=order),
                }, args.repeats)
                ratios = [s / (nfe * f) for s, f in zip(times["sampler"], times["forward"])]
                q = statistics.quantiles(ratios, n=4)
                row = {"batch": batch, "solver": f"{solver}{order}", "nfe": nfe,
                       "forward_ms": 1e3 * statistics.median(times["forward"]),
                       "sampler_ms": 1e3 * statistics.median(times["sampler"]),
                       "ratio_median": statistics.median(ratios), "ratio_q1": q[0], "ratio_q3": q[2]}
                rows.append(row)
                print(f"batch {batch:3d} {row['solver']:7s} nfe {nfe}: forward {row['forward_ms']:.3f} ms, "
                      f"sampler {row['sampler_ms']:.3f} ms, ratio {row['ratio_median']:.3f} "
                      f"[{row['ratio_q1']:.3f}, {row['ratio_q3']:.3f}]", flush=True)
    env = common.environment(threads)
    params = sum(p.numel() for p in net.parameters())
    md = ["# Eager sampler overhead (lf.sample) vs nfe x one forward\n",
          f"Network: TinyUNet {config} ({params / 1e6:.2f} M parameters), EDM preconditioning, 1x8x8, "
          f"random weights. Ratio = sampler wall time / (nfe x forward), per round; median [q1, q3] over "
          f"{args.repeats} rounds.\n",
          "| batch | solver | nfe | forward ms | sampler ms | ratio |", "|---|---|---|---|---|---|"]
    md += [f"| {r['batch']} | {r['solver']} | {r['nfe']} | {r['forward_ms']:.3f} | {r['sampler_ms']:.3f} | "
           f"{r['ratio_median']:.3f} [{r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}] |" for r in rows]
    md += ["", "Environment:", common.env_markdown(env)]
    paths = common.write_results("overhead", {"env": env, "network": config, "rows": rows}, "\n".join(md))
    print("wrote", *paths)


if __name__ == "__main__":
    main()
