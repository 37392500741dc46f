"""`ldd-fast quality`: the quality benchmark (solvers x schedules x NFE on the built-in models)."""
from __future__ import annotations

import os

from .common import POSITIVE, CLIError, check_folder, int_in
from .limits import compute_args, setup_compute

HELP = "the quality benchmark (solvers x schedules x NFE)"
RULES = []


def add_parser(sub, formatter):
    from ..quality import FULL, MODELS, QUICK, SOLVERS as QUALITY_SOLVERS, solver_label

    q = sub.add_parser("quality", help=HELP, formatter_class=formatter,
                       description="The quality benchmark: every solver x schedule x NFE on the built-in models "
                                   "against one converged teacher; resumes what --out holds.")
    q.add_argument("--full", action="store_true",
                   help=f"NFE {FULL['nfes']} with {FULL['n']} seeds (default: NFE {QUICK['nfes']}, {QUICK['n']} seeds)")
    q.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="built-in models to measure")
    q.add_argument("--nfe", type=POSITIVE, nargs="+", help="override the NFE list (multistep solvers)")
    q.add_argument("--heun-nfe", type=POSITIVE, nargs="+", help="override the NFE list of Heun (odd)")
    q.add_argument("--solvers", nargs="+", choices=[solver_label(*x) for x in QUALITY_SOLVERS],
                   help="a subset of the solvers")
    q.add_argument("-n", type=int_in(QUICK["n"]), help="number of held-out seeds")
    q.add_argument("--out", default="benchmarks/results/quality", help="output folder (resumes what is there)")
    q.add_argument("--learned", default="benchmarks/results/ld3",
                   help="folder of learned schedules to include (the default is skipped when it does not exist)")
    q.add_argument("--boot", type=POSITIVE, default=200, help="bootstrap resamples for the FD interval")
    compute_args(q)
    return q


def validate(args, given) -> None:
    if args.heun_nfe and any(k % 2 == 0 for k in args.heun_nfe):
        raise CLIError(f"--heun-nfe takes odd values (Heun spends 2K - 1 calls on K steps), got {args.heun_nfe}")
    if "learned" in given and not os.path.isdir(args.learned):
        raise CLIError(f"--learned {args.learned}: no such folder")


def run(args) -> int:
    from ..metrics import FD_SAMPLES
    from ..quality import FULL, QUICK, SOLVERS as QUALITY_SOLVERS, run as run_quality, solver_label

    size = dict(FULL if args.full else QUICK)
    check_folder(args.out, "--out")
    solvers = QUALITY_SOLVERS
    if args.solvers:
        known = {solver_label(*s): s for s in QUALITY_SOLVERS}
        solvers = [known[s] for s in args.solvers]
    n = args.n or size["n"]
    if n < FD_SAMPLES:
        raise CLIError(f"-n must be at least {FD_SAMPLES} (the FD sample count)")
    if setup_compute(args).type != "cpu":
        raise CLIError("the quality benchmark runs on the CPU (its cached cells are CPU results); use --device cpu")
    run_quality(models=args.models, n=n, nfes=args.nfe or size["nfes"], heun_nfes=args.heun_nfe or size["heun_nfes"],
                out=args.out, learned_dir=args.learned, solvers=solvers, n_boot=args.boot)
    print(f"wrote {os.path.join(args.out, 'quality.md')} (+ .csv, cells, plots)")
    return 0
