"""`ldd-fast learn`: an LD3 schedule (and, with --coefficients, the learned solver) for a model or a
pipeline folder, solver and NFE; resumable."""
from __future__ import annotations

import os
import sys

import torch

from .common import (POSITIVE, SEED, CLIError, check_folder, int_in, model_args, needs, pipeline_args,
                     pipeline_rules, solver_args)
from .limits import compute_args, setup_compute
from .load import MIN_PROMPTS_PER_SPLIT, load_denoiser, read_prompts, sample_shape

NONNEGATIVE = int_in(0)

HELP = "learn an LD3 schedule for a model, solver and NFE"
# A pipeline's default mode, measured (benchmarks/results/pipeline_modes.md, UniPC-3 NFE 6, validation RMSE):
# time beat lambda 2.7x on the tiny SD3 and 4.8x on Flux, and came within 1 % of it on Stable Diffusion.
PIPELINE_MODE = "time"

RULES = [
    *pipeline_rules(),
    needs("--pipeline", "--prompts", "the teacher pairs are drawn for prompts"),
    needs("--prompts", "--pipeline"),
    needs("--pixel-loss", "--pipeline", "it decodes latents"),
]


def add_parser(sub, formatter):
    from ..solvers import SOLVERS

    le = sub.add_parser("learn", help=HELP, formatter_class=formatter,
                        description="Learn the time steps (and network times) of a solver at a fixed NFE with LD3. "
                                    "Resumable: --resume continues an interrupted run from its last round.")
    model_args(le)
    solver_args(le)
    le.add_argument("--nfe", type=POSITIVE, required=True, help="network calls of the learned sampler")
    le.add_argument("--out", required=True, help="the learned schedule (.json)")
    le.add_argument("--work-dir", help="teacher pairs, checkpoints and plots (default: <out>_ld3/)")
    le.add_argument("--resume", action="store_true", help="continue an interrupted run in --work-dir")
    le.add_argument("--mode", default=None, choices=["lambda", "time", "auto"],
                    help=f"lambda (pixel models), time (latent models), auto: both, keep the better on validation "
                         f"(default: lambda for a model, {PIPELINE_MODE} for a pipeline: measured on the tiny "
                         f"pipelines, benchmarks/results/pipeline_modes.md)")
    le.add_argument("--init", default="uniform",
                    help="start: uniform (in the mode's coordinate), best (the best hand-made schedule on the "
                         "training pairs) or a schedule .json")
    le.add_argument("--loss", default="pseudo_huber", choices=["pseudo_huber", "l2", "l1", "lpips"],
                    help="distance to the teacher samples")
    le.add_argument("--n-train", type=POSITIVE, default=None,
                    help="teacher pairs to learn from (default 50; 200 with --coefficients)")
    le.add_argument("--n-valid", type=POSITIVE, default=None,
                    help="teacher pairs that select the best round (default 50; 100 with --coefficients)")
    le.add_argument("--teacher-solver", default="unipc", choices=sorted(SOLVERS), help="solver of the teacher")
    le.add_argument("--teacher-order", type=POSITIVE, default=3, help="order of the teacher's solver")
    le.add_argument("--teacher-nfe", type=POSITIVE, help="teacher steps (default: 20; 40 for a flow)")
    le.add_argument("--teacher-kind", choices=["time_uniform", "time_quadratic", "logsnr", "edm"],
                    help="teacher discretisation (default: edm, the paper's; time_quadratic for a flow)")
    le.add_argument("--seed", type=SEED, default=0, help="seed of the teacher pairs and of the run")
    le.add_argument("--checkpoint-calls", action="store_true", help="recompute network activations in backward")
    le.add_argument("--coefficients", nargs="?", const=True, default=False, metavar="FORM",
                    choices=["exact", "relaxed", "generalized"],
                    help="also learn the solver: after LD3's rounds, corrections of its weights on denoiser outputs "
                         "(exact: on the outputs the solver buffers, zero-sum, exact for a constant denoiser; "
                         "generalized: on every earlier output, dpmpp / unipc / ipndm; relaxed: also a scale of each "
                         "update's total weight). Without FORM: the form that measured best at NFE <= 4 "
                         "(generalized; exact for euler and heun). Off by default")
    le.add_argument("--heldout", type=NONNEGATIVE, default=None,
                    help="extra teacher pairs scored once at the end, never trained on or selected with: the "
                         "validation -> held-out gap (default: 16 with --coefficients, else 0)")
    pipeline_args(le, "needs --prompts")
    le.add_argument("--prompts", help="with --pipeline: a text file, one prompt per line (split between training "
                                      "and validation pairs, disjoint)")
    le.add_argument("--pixel-loss", action="store_true",
                    help="with --pipeline: the distance on decoded images instead of latents (slower)")
    compute_args(le)
    return le


def validate(args, given) -> None:
    if not args.out.endswith(".json"):
        raise CLIError(f"--out {args.out}: the learned schedule is a .json file")


def run(args) -> int:
    from ..io import check_output_path
    from ..learn import CHECKPOINT, COEFFICIENT_PAIRS, LD3_PAIRS, learn
    from ..schedule import Schedule
    from ..teacher import TeacherSpec

    out = check_output_path(args.out, "--out")
    pairs = COEFFICIENT_PAIRS if args.coefficients else LD3_PAIRS
    args.n_train = pairs[0] if args.n_train is None else args.n_train
    args.n_valid = pairs[1] if args.n_valid is None else args.n_valid
    work = args.work_dir or os.path.splitext(args.out)[0] + "_ld3"
    check_folder(work, "--work-dir")
    init = None if args.init == "uniform" else "best" if args.init == "best" else Schedule.load(args.init)
    prompts = read_prompts(args.prompts) if args.pipeline else None
    if prompts:
        from ..teacher import pair_conditions

        _, split = pair_conditions(torch.zeros(len(prompts)), args.n_train, args.n_valid)
        if min(split["train"], split["valid"]) < MIN_PROMPTS_PER_SPLIT:
            print(f"ldd-fast: warning: --prompts gives {split['train']} prompts to the training pairs and "
                  f"{split['valid']} to the validation pairs; fewer than {MIN_PROMPTS_PER_SPLIT} a split makes the "
                  f"validation say little about other prompts", file=sys.stderr, flush=True)
    mode = args.mode or (PIPELINE_MODE if args.pipeline else "lambda")
    device = setup_compute(args)
    den = load_denoiser(args).to(device)
    if args.resume and not any(os.path.isfile(os.path.join(work, sub, CHECKPOINT))
                               for sub in ("", "lambda", "time")):
        print(f"--resume: no checkpoint in {work} yet; starting a new run", flush=True)
    default = TeacherSpec.default_for(den.noise)
    teacher = TeacherSpec(solver=args.teacher_solver, order=args.teacher_order, nfe=args.teacher_nfe or default.nfe,
                          kind=args.teacher_kind or default.kind, lower_order_final=default.lower_order_final
                          if args.teacher_solver in ("unipc", "dpmpp", "ipndm") else None)
    cond = None
    if prompts is not None:
        cond = den.encode_prompt(prompts)
    elif args.guidance not in (None, 1.0):
        if den.num_classes is None:
            raise CLIError("--guidance in `learn` draws a class label per teacher pair and needs a model "
                           "conditioned on class labels; use the Python API (lf.learn(..., cond=...)) otherwise")
        null = int(den.null_cond.reshape(-1)[0])
        classes = torch.tensor([k for k in range(den.num_classes) if k != null])
        cond = lambda n, g: classes[torch.randint(0, len(classes), (n,), generator=g)]  # noqa: E731
    res = learn(den, solver=args.solver, order=args.order, nfe=args.nfe, shape=sample_shape(den, args.shape),
                mode=mode, teacher=teacher, n_train=args.n_train, n_valid=args.n_valid, loss=args.loss,
                cond=cond, init=init, out=work, resume=args.resume, seed=args.seed,
                decoder=den.decode if args.pixel_loss else None, checkpoint_calls=args.checkpoint_calls,
                coefficients=args.coefficients, heldout=args.heldout,
                **({"variant": args.variant} if args.variant else {}))
    schedule = res.schedule
    if args.pipeline:
        schedule = schedule.replace(metrics={**schedule.metrics, **_against_the_pipeline(den, schedule, work, args)})
    schedule.save(out)
    m = schedule.metrics
    ld3 = f" (LD3's times alone: {m['valid_hard_ld3']:.4f})" if "valid_hard_ld3" in m else ""
    print(f"learned {args.solver} nfe={args.nfe}: held-out {m['loss']} {m['valid_hard_init']:.4f} -> "
          f"{m['valid_hard']:.4f}{ld3} in {res.stats['seconds']:.0f} s ({res.stats['network_calls']} batched calls)")
    if "heldout_hard" in m:
        gap = (f"; LD3's round {m['valid_hard_ld3']:.4f} -> {m['heldout_hard_ld3']:.4f}"
               if "heldout_hard_ld3" in m else "")
        print(f"validation -> held-out ({schedule.info['heldout_pairs']} pairs neither trained on nor selected with): "
              f"{m['valid_hard']:.4f} -> {m['heldout_hard']:.4f}{gap}")
    print(f"schedule: {args.out}; checkpoints, teacher pairs and plots: {work}")
    if args.pipeline:
        print(f"on the {m['pipeline_pairs']} validation pairs (their prompts unseen in training), same seeds, RMSE to "
              f"the teacher: learned {m['pipeline_rmse_learned']:.4f}; the pipeline's own {m['pipeline_scheduler']} "
              f"grid ({m['pipeline_solver']}) at NFE {args.nfe}: {m['pipeline_rmse_own']:.4f}, at NFE "
              f"{2 * args.nfe}: {m['pipeline_rmse_own_2x']:.4f}")
    return 0


def _against_the_pipeline(den, schedule, work: str, args) -> dict:
    """The learned sampler and the pipeline's own (its scheduler's grid and update, den.pipeline_schedule) at the
    same NFE and at twice it, on the run's validation pairs: RMSE to the teacher, same seeds and prompts."""
    from ..cond import map_cond
    from ..learn import TEACHER_FILE
    from ..metrics import rmse
    from ..sample import sample
    from ..teacher import TeacherData

    path = next(p for p in (os.path.join(work, sub, TEACHER_FILE) for sub in ("", "time", "lambda"))
                if os.path.isfile(p))
    data = TeacherData.load(path)
    valid = slice(args.n_train, None)
    device = next(den.parameters()).device
    z, y = data.z[valid].to(device), data.y[valid].to(device)
    cond = map_cond(lambda c: c[valid].to(device), data.cond)

    def error(sched) -> float:
        with torch.no_grad():
            return float(rmse(sample(den, z, sched, cond=cond), y).mean())

    own = den.pipeline_schedule(args.nfe)
    return {"pipeline_pairs": int(z.shape[0]), "pipeline_scheduler": own.info["scheduler"],
            "pipeline_solver": f"{own.solver}{own.order}", "pipeline_rmse_learned": error(schedule),
            "pipeline_rmse_own": error(own), "pipeline_rmse_own_2x": error(den.pipeline_schedule(2 * args.nfe))}
