"""The `ldd-fast` command line."""
from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    import torch

    import ldd_fast as lf
    from ldd_fast.analytic import Empirical

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("ldd-fast demo needs the [demo] extra: pip install -e '.[demo]'", file=sys.stderr)
        return 2
    data = torch.tensor(load_digits().data, dtype=torch.float64) / 8.0 - 1.0
    noise = lf.EDM()
    den = lf.Denoiser(Empirical(noise, data), noise, prediction="x0", time_input="t")
    z = torch.randn(64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    teacher = lf.sample(den, z, lf.discretize(noise, 200, "edm"), solver="unipc", order=3)
    print("Teacher-matching RMSE of hand-made schedules, exact denoiser of the digits data set:")
    print(f"{'solver':10s} {'nfe':>4s} " + " ".join(f"{k:>15s}" for k in lf.schedule.KINDS))
    for solver, order in [("euler", 1), ("dpmpp", 2), ("unipc", 3), ("ipndm", 4)]:
        for nfe in (4, 6, 8):
            errs = [(lf.sample(den, z, lf.discretize(noise, nfe, kind), solver=solver, order=order) - teacher)
                    .pow(2).mean().sqrt().item() for kind in lf.schedule.KINDS]
            print(f"{solver + str(order):10s} {nfe:4d} " + " ".join(f"{e:15.4f}" for e in errs))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ldd-fast", description="Learned low-NFE sampling for diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="compare hand-made schedules at low NFE")
    args = parser.parse_args(argv)
    return {"demo": _demo}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
