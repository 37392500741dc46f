"""`ldd-fast plan`: the best sampler (solver, NFE, schedule, backend) under a latency budget, for a model or
a pipeline folder (selection and held-out rows on disjoint prompts)."""
from __future__ import annotations

import os
import sys

import torch

from .common import (BUILTIN, POSITIVE, CLIError, backend_list, check_folder, excludes, finite_float, model_args,
                     needs, pipeline_args, pipeline_rules)
from .limits import check_memory, compute_args, setup_compute
from .load import labels, load_denoiser, read_prompts, sample_shape, split_prompts

HELP = "pick the best sampler (solver, NFE, schedule, backend) under a latency budget"
RULES = [*pipeline_rules(),
         needs("--pipeline", "--prompts", "the selection and held-out rows are drawn for prompts"),
         needs("--prompts", "--pipeline"),
         excludes("--fd", "--pipeline", "the FD uses the digits feature network; a pipeline has no reference "
                                        "features"),
         needs("--learn-top", "--learn", "only learned candidates are counted"),
         needs("--learn-seconds", "--learn", "it caps the learning"),
         needs("--cache", "--learn", "it keeps learned schedules")]


def add_parser(sub, formatter):
    from ..bench import BACKENDS
    from ..planner import CANDIDATES, DEFAULT_BACKENDS, LEARN

    pl = sub.add_parser("plan", help=HELP, formatter_class=formatter,
                        description="Measure this device's per-call latency per backend, keep the (solver, order, "
                                    "NFE) choices that fit --budget-ms, score their hand-made (and, with --learn, "
                                    "learned) schedules by teacher RMSE on held-out seeds, and write the best "
                                    "schedule, a table and a quality-vs-latency plot.")
    model_args(pl)
    pipeline_args(pl, "needs --prompts")
    pl.add_argument("--prompts", help="with --pipeline: a text file, one prompt per line; its first half selects, "
                                      "the second half is held out (disjoint)")
    pl.add_argument("--budget-ms", type=finite_float, required=True, help="latency budget per sampler call")
    pl.add_argument("--batch", type=POSITIVE, default=1, help="samples per call")
    pl.add_argument("--max-nfe", type=POSITIVE, default=10, help="the largest NFE considered")
    pl.add_argument("--solvers", nargs="+", default=[f"{s}{o}" for s, o in CANDIDATES],
                    choices=[f"{s}{o}" for s, o in CANDIDATES], help="candidate solvers (name + order)")
    pl.add_argument("--backends", default=",".join(DEFAULT_BACKENDS), type=backend_list(BACKENDS),
                    help="backends to time (compile: minutes on a CPU, by name only)")
    pl.add_argument("--learn", default="none", choices=LEARN,
                    help="also learn LD3 (ld3) or the learned solver for the best candidates (coefficients: "
                         "lf.learn's default form; generalized: weights on every earlier output, exact form for "
                         "euler and heun)")
    pl.add_argument("--learn-top", type=POSITIVE, default=2, help="with --learn: how many candidates to learn for")
    pl.add_argument("--learn-seconds", type=finite_float, default=600.0, help="with --learn: wall-time cap on learning")
    pl.add_argument("--cache", default=os.path.join("ldd_fast_out", "plan_cache"),
                    help="with --learn: learned schedules, kept by model fingerprint (resumable)")
    pl.add_argument("--n-select", type=POSITIVE, default=64, help="seeds the choices are made on")
    pl.add_argument("--n-eval", type=POSITIVE, default=128, help="held-out seeds the table reports")
    pl.add_argument("--teacher-steps", type=POSITIVE, default=50, help="steps of the reference teacher")
    pl.add_argument("--fd", action="store_true",
                    help="also the digits FD (built-in models only; the held-out seeds are then 300, FD's count)")
    pl.add_argument("--repeats", type=POSITIVE, default=10, help="timed rounds per latency measurement")
    pl.add_argument("--out", default=os.path.join("ldd_fast_out", "plan"),
                    help="folder for schedule.json, plan.md, plan.json, plan.png")
    compute_args(pl)
    return pl


def validate(args, given) -> None:
    if args.budget_ms <= 0:
        raise CLIError(f"--budget-ms must be positive, got {args.budget_ms:g}")
    if args.learn_seconds <= 0:
        raise CLIError(f"--learn-seconds must be positive, got {args.learn_seconds:g}")
    if args.fd and not args.pipeline and args.model not in BUILTIN:
        raise CLIError("--fd uses the digits feature network: only with the built-in models")


def run(args) -> int:
    from ..planner import CANDIDATES, plan_sampler

    check_folder(args.out, "--out")
    prompts = split_prompts(read_prompts(args.prompts), "plan") if args.pipeline else None
    device = setup_compute(args)
    den = load_denoiser(args).to(device)
    cond_fn = (lambda b: labels(den, 1, b).to(device)) if den.guidance_scale != 1.0 and not prompts else None
    shape = sample_shape(den, args.shape)
    metrics, n_eval = None, args.n_eval
    if args.fd:
        from ..metrics import FD_SAMPLES, DigitsMetrics

        metrics, n_eval = DigitsMetrics(), FD_SAMPLES
    # The planner samples its held-out and selection seeds in one batch each; its solvers keep at most
    # four registers (iPNDM-4's history, UniPC's corrector).
    one = den.encode_prompt(prompts[0][:1]) if prompts else None if cond_fn is None else cond_fn(1)
    check_memory(args, den, batch=max(args.batch, args.n_select, n_eval), shape=shape, plan_registers=6,
                 cond=one, device=device)
    conds = {}
    if prompts:  # one row per seed, cycling over each split's prompts (the timing cycles over the selection)
        conds = {"select_cond": den.encode_prompt([prompts[0][i % len(prompts[0])] for i in range(args.n_select)]),
                 "eval_cond": den.encode_prompt([prompts[1][i % len(prompts[1])] for i in range(n_eval)])}
    chosen = [(s, o) for s, o in CANDIDATES if f"{s}{o}" in args.solvers]
    print(f"plan: budget {args.budget_ms:g} ms at batch {args.batch}, NFE <= {args.max_nfe}, {device}; timing the "
          f"backends ...", file=sys.stderr, flush=True)
    res = plan_sampler(den, budget_ms=args.budget_ms, batch=args.batch, max_nfe=args.max_nfe, candidates=chosen,
                       backends=args.backends, learn=args.learn, learn_top=args.learn_top,
                       learn_seconds=args.learn_seconds, n_select=args.n_select, n_eval=n_eval,
                       teacher_steps=args.teacher_steps, metrics=metrics, cache=args.cache, out=args.out,
                       device=device, threads=torch.get_num_threads(), cond_fn=cond_fn, sample_shape=shape,
                       repeats=args.repeats, **conds)
    print(res.markdown())
    source = f"--pipeline {args.pipeline} --prompt '...'" if args.pipeline else f"--model {args.model}"
    print(f"wrote {os.path.join(args.out, 'schedule.json')} (+ plan.md, plan.json, plan.png); it names its solver "
          f"({res.best['solver_name']}{res.best['order']}): sample with ldd-fast sample {source} --schedule "
          f"{os.path.join(args.out, 'schedule.json')}")
    return 0
