"""Quality of the built-in models themselves: a 100-step teacher against the real held-out digits.

    python benchmarks/model_quality.py [--models digits digits_vp] [--repeats 5]

Every Frechet distance uses 300 samples against the same 300 held-out digits (ldd_fast.metrics):
the teacher's samples (UniPC-3, 100 steps, EDM rho = 7) from `--repeats` independent sets of
seeds, and the real training digits as 4 disjoint subsets of 300. The spread over these
independent sets is the honest sampling interval; each value also carries a bootstrap interval.
The criterion (issue 3): mean FD(teacher) <= 3 x mean FD(train). Also the classifier's
confident-class rate (max softmax >= 0.9) and class balance of generated vs real digits.
Writes benchmarks/results/model_quality.{json,md} and a PNG grid of teacher samples per model.
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
from ldd_fast.plots import save_grid  # noqa: E402
from ldd_fast.metrics import FD_SAMPLES, DigitsMetrics  # noqa: E402
from ldd_fast.teacher import noise_for  # noqa: E402
from ldd_fast.zoo.builtin import load  # noqa: E402

SEED_BASE = 9_000


def _join(values) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["digits", "digits_vp"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    threads = common.pin_threads(args.threads)
    m = DigitsMetrics()
    perm = torch.randperm(len(m.train), generator=torch.Generator().manual_seed(0))
    real = [m.train[perm[i * FD_SAMPLES:(i + 1) * FD_SAMPLES]] for i in range(len(m.train) // FD_SAMPLES)]
    real_fd = [m.fd(x, n_boot=args.boot) for x in real]
    real_cls = m.classes(m.heldout)
    out = {"real_train_subsets": real_fd, "real_heldout_classes": real_cls, "models": {}}
    lines = ["# Built-in model quality: 100-step teacher vs real digits\n",
             f"FD in the digits classifier's features (not FID), {FD_SAMPLES} samples vs the {FD_SAMPLES} held-out "
             "digits. Intervals: bootstrap over samples (biased upwards); spread: independent sets.\n",
             f"Real training digits, {len(real)} disjoint subsets: FD {_join(r['fd'] for r in real_fd)} "
             f"(mean {statistics.mean(r['fd'] for r in real_fd):.3f}); held-out confident-class rate "
             f"{real_cls['confident_rate']:.3f}.\n",
             "| model | FD per seed set | mean FD | ratio to real | <= 3x | confident rate | class balance "
             "(entropy / log 10) | max class share |", "|---|---|---|---|---|---|---|---|"]
    mean_real = statistics.mean(r["fd"] for r in real_fd)
    for name in args.models:
        den = load(name)
        sched = lf.discretize(den.noise, 100, "edm")
        fds, samples = [], []
        with torch.no_grad():
            for r in range(args.repeats):
                z = noise_for(FD_SAMPLES, den.sample_shape, SEED_BASE + r)
                x = lf.sample(den, z, sched, solver="unipc", order=3)
                samples.append(x)
                fds.append(m.fd(x, n_boot=args.boot))
        allx = torch.cat(samples)
        cls = m.classes(allx)
        mean_fd = statistics.mean(f["fd"] for f in fds)
        grid = os.path.join(common.RESULTS, f"model_quality_{name}_teacher.png")
        save_grid(allx[:100], grid)
        out["models"][name] = {"fd_sets": fds, "mean_fd": mean_fd, "ratio_to_real": mean_fd / mean_real,
                               "classes": cls, "grid": os.path.basename(grid)}
        lines.append(f"| {name} | {_join(f['fd'] for f in fds)} | {mean_fd:.3f} | "
                     f"{mean_fd / mean_real:.2f} | {'yes' if mean_fd <= 3 * mean_real else 'NO'} | "
                     f"{cls['confident_rate']:.3f} | {cls['balance_entropy_ratio']:.3f} | {max(cls['class_freq']):.3f} |")
        print(lines[-1], flush=True)
    env = common.environment(threads)
    out["env"] = env
    lines += ["", "Environment:", common.env_markdown(env)]
    print("wrote", *common.write_results("model_quality", out, "\n".join(lines)))


if __name__ == "__main__":
    main()
