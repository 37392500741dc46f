"""`ldd-fast bench`: latency of fixed samplers on a model or pipeline folder, per backend and batch,
against the floor of nfe network forwards."""
from __future__ import annotations

import os
import sys

import torch

from .common import (DEFAULT_NFE, KIND_CHOICES, POSITIVE, CLIError, backend_list, check_schedule_kinds, int_in,
                     model_args, needs, pipeline_args, pipeline_rules, schedule_args, solver_args)
from .limits import check_memory, compute_args, setup_compute
from .load import check_flow_kinds, labels, load_denoiser, load_schedule, sample_shape

HELP = "latency of fixed samplers on a model: backends x batches vs the floor"
OUTPUTS = {"json": ".json", "md": ".md", "plot": ".png"}  # bench's output flags and their file types
RULES = [*pipeline_rules(), needs("--prompt", "--pipeline", "a model's condition is a class label")]


def add_parser(sub, formatter):
    from ..bench import BACKENDS

    b = sub.add_parser("bench", help=HELP, formatter_class=formatter,
                       description="Time fixed samplers on your model: per schedule, backend and batch the median "
                                   "and quartiles over interleaved rounds, the floor of the backend's execution mode "
                                   "(nfe x one network forward) and the ratio to it, the ratio to the eager floor, "
                                   "and parity with the eager sampler. Backends that cannot run here are listed with "
                                   "the reason.")
    model_args(b)
    pipeline_args(b, "timed with one prompt (--prompt)")
    b.add_argument("--prompt", default="a photograph of a cat", help="with --pipeline: the prompt of the condition")
    schedule_args(b, several=True)
    b.add_argument("--nfe", type=POSITIVE, default=DEFAULT_NFE, help="network calls of hand-made kinds")
    solver_args(b, default=None)
    b.add_argument("--backends", default=",".join(BACKENDS), type=backend_list(BACKENDS),
                   help="comma-separated; those that cannot run here are listed with the reason")
    b.add_argument("--batch", type=POSITIVE, nargs="+", default=[1, 8], help="batch sizes")
    b.add_argument("--fp16", action="store_true", help="float16 samplers (rows a device cannot run are listed)")
    b.add_argument("--repeats", type=POSITIVE, default=20, help="timed rounds (each runs every backend once)")
    b.add_argument("--warmup", type=int_in(0), default=3, help="untimed rounds after each first call")
    b.add_argument("--json", help="write the rows, skipped backends and environment as JSON")
    b.add_argument("--md", help="write the table as Markdown")
    b.add_argument("--plot", help="write latency vs batch per backend (PNG; needs matplotlib)")
    b.add_argument("--force", action="store_true", help="use a schedule made for another model or solver")
    compute_args(b)
    return b


def _outputs(args):
    """(flag, path, suffix) of each output asked for."""
    return [(f"--{k}", getattr(args, k), suffix) for k, suffix in OUTPUTS.items() if getattr(args, k)]


def validate(args, given) -> None:
    check_schedule_kinds(args)
    for flag, path, suffix in _outputs(args):
        if not path.endswith(suffix):
            raise CLIError(f"{flag} {path}: expected a {suffix} file")


def run(args) -> int:
    from ..bench import bench
    from ..cond import map_cond
    from ..io import atomic_write_text, check_output_path
    from ..sample import plan_for

    for flag, path, _ in _outputs(args):
        check_output_path(path, flag)
    check_flow_kinds(args, args.schedule)
    device = setup_compute(args)
    den = load_denoiser(args).to(device)
    cond_fn = None
    if args.pipeline:
        one = den.encode_prompt([args.prompt])
        cond_fn = lambda b: map_cond(lambda c: c[:1].expand(b, *c.shape[1:]).contiguous(), one)  # noqa: E731
    elif den.guidance_scale != 1.0:
        cond_fn = lambda b: labels(den, 1, b).to(device)  # noqa: E731
    shape = sample_shape(den, args.shape)
    options = {"variant": args.variant} if args.variant else {}
    scheds = {}
    for spec in args.schedule:
        sched = load_schedule(spec, den, args.nfe if spec in KIND_CHOICES else None, args.solver or "unipc",
                              shift=args.shift, mu=args.mu)
        scheds[spec if spec in KIND_CHOICES else os.path.basename(spec)] = sched
    registers = max(plan_for(den, s, solver=args.solver or s.solver or "unipc", order=args.order, force=args.force,
                             **options).max_registers for s in scheds.values())
    check_memory(args, den, batch=max(args.batch), shape=shape, plan_registers=registers,
                 cond=None if cond_fn is None else cond_fn(1), dtype_bytes=2 if args.fp16 else 4, device=device)
    print(f"bench: {len(scheds)} schedule(s) x {len(args.backends)} backend(s) x batch {args.batch} on {device}",
          file=sys.stderr, flush=True)
    res = bench(den, scheds, backends=args.backends, batches=args.batch, dtype=torch.float16 if args.fp16 else None,
                threads=torch.get_num_threads(), device=device, solver=args.solver, order=args.order,
                repeats=args.repeats, warmup=args.warmup, cond_fn=cond_fn, sample_shape=shape, force=args.force,
                **options)
    table = res.markdown(f"Sampler latency: {args.pipeline or args.model}")
    print(table)
    if args.json:
        import json

        atomic_write_text(args.json, json.dumps(res.to_json(), indent=1) + "\n")
    if args.md:
        atomic_write_text(args.md, table)
    if args.plot:
        from ..plots import plot_bench

        plot_bench(res, args.plot, model=args.pipeline or args.model)
    if not res.rows:
        raise CLIError("no backend could run (see 'Not measured' above)")
    return 0
