"""onnxruntime vs the eager PyTorch sampler, interleaved in one run, same pinned thread count.

    python benchmarks/onnxruntime_vs_eager.py [--threads 1] [--repeats 7]

Issue 6's target on a CPU: onnxruntime latency <= the eager sampler for the built-in model at
batch 1 and 64 and the CIFAR-size DDPM U-Net (diffusers UNet2DModel, random weights) at batch 1
and 8. UniPC-3, EDM rho = 7 schedule; both timed by lf.bench in interleaved rounds, ratio of the medians.
Writes benchmarks/results/onnxruntime_vs_eager.{json,md}.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from latency import build_model  # noqa: E402

import ldd_fast as lf  # noqa: E402

CASES = [("builtin", 6, (1, 64)), ("cifar", 4, (1, 8))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    threads = common.pin_threads(args.threads)
    rows = []
    for model, nfe, batches in CASES:
        den, shape, _, _ = build_model(model, "cpu")
        sched = lf.discretize(den.noise, nfe, "edm")
        res = lf.bench(den, sched, backends=("eager", "onnxruntime"), batches=batches, threads=threads,
                       solver="unipc", order=3, sample_shape=shape, repeats=args.repeats, show_progress=False)
        for batch in batches:
            by = {r["backend"]: r for r in res.rows if r["batch"] == batch}
            e, o = by["eager"], by["onnxruntime"]
            r = {"model": model, "nfe": nfe, "batch": batch, "eager_ms": e["sampler_ms"],
                 "onnxruntime_ms": o["sampler_ms"], "ratio_median": o["sampler_ms"]["median"] / e["sampler_ms"]["median"],
                 "parity": o["parity"]}
            rows.append(r)
            print(f"{model} batch {batch} nfe {nfe}: eager {r['eager_ms']['median']:.1f} ms, onnxruntime "
                  f"{r['onnxruntime_ms']['median']:.1f} ms, ratio {r['ratio_median']:.3f}", flush=True)
    env = common.environment(threads)
    md = ["# onnxruntime vs the eager PyTorch sampler (interleaved, same threads)\n",
          "| model | nfe | batch | eager ms | onnxruntime ms | onnxruntime / eager (medians, interleaved rounds) | parity |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['nfe']} | {r['batch']} | {r['eager_ms']['median']:.1f} | "
           f"{r['onnxruntime_ms']['median']:.1f} | {r['ratio_median']:.3f} | {r.get('parity', float('nan')):.1e} |"
           for r in rows]
    md += ["", "Environment:", common.env_markdown(env)]
    print("wrote", *common.write_results("onnxruntime_vs_eager", {"env": env, "rows": rows}, "\n".join(md)))


if __name__ == "__main__":
    main()
