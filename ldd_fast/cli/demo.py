"""`ldd-fast demo`: the main job on the built-in model (ldd_fast.demo runs it)."""
from __future__ import annotations

import torch

from .common import check_folder
from .limits import compute_args, setup_compute

HELP = "the main job: hand-made vs learned schedules on the built-in model"
RULES = []


def add_parser(sub, formatter):
    d = sub.add_parser("demo", help=HELP, formatter_class=formatter,
                       description="Load the built-in digits model, compare hand-made schedules at low NFE, learn an "
                                   "LD3 schedule, show the backends that run here; writes images and tables.")
    d.add_argument("--out", default="ldd_fast_out", help="output folder")
    d.add_argument("--quick", action="store_true", help="fewer samples and rounds (for tests)")
    compute_args(d)
    return d


def validate(args, given) -> None:
    pass


def run(args) -> int:
    from ..demo import run as run_demo

    check_folder(args.out, "--out")
    device = setup_compute(args)
    return run_demo(out=args.out, quick=args.quick, device=device, threads=torch.get_num_threads())
