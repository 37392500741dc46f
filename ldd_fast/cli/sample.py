"""`ldd-fast sample`: draw samples with a solver and schedule from a model or a pipeline folder, write a
PNG grid (decoded images for a pipeline, one captioned row per prompt; a video pipeline's frame strip), an
animated GIF (a video pipeline) or a tensor (latents)."""
from __future__ import annotations

import torch

from .common import (DEFAULT_NFE, POSITIVE, SEED, SEED_MAX, CLIError, check_schedule_kinds, excludes, int_in,
                     model_args, needs, pipeline_args, pipeline_rules, schedule_args, solver_args)
from .limits import check_memory, compute_args, setup_compute
from .load import (check_flow_kinds, labels, load_denoiser, load_schedule, pipeline_class, read_prompts,
                   sample_shape)

HELP = "draw samples with a solver and schedule, write a PNG grid"

RULES = [
    *pipeline_rules(),
    needs("--guidance", "--label or --pipeline", "guidance steers samples toward a condition, and without one there "
                                                 "is nothing to steer toward"),
    needs("--pipeline", "--prompt or --prompts", "a pipeline's condition is a prompt"),
    needs("--prompt", "--pipeline"),
    needs("--prompts", "--pipeline"),
    excludes("--prompt", "--prompts"),
    excludes("--label", "--pipeline", "a pipeline's condition is a prompt"),
]


def add_parser(sub, formatter):
    s = sub.add_parser("sample", help=HELP, formatter_class=formatter,
                       description="Draw samples and write them as a PNG grid (or a .pt tensor). With --pipeline: "
                                   "-n samples per prompt, decoded, one grid row per prompt captioned with the "
                                   "prompt, solver and NFE; a .pt output keeps the latents. A video pipeline (Wan): "
                                   "a .gif animates the grid, one frame a decoded frame; a .png is a frame strip, one "
                                   "captioned row a sample.")
    model_args(s)
    pipeline_args(s, "with --prompt or --prompts")
    s.add_argument("--prompt", action="append", help="with --pipeline: a prompt (repeat for several)")
    s.add_argument("--prompts", help="with --pipeline: a text file, one prompt per line")
    solver_args(s, default=None)
    s.add_argument("--nfe", type=POSITIVE, help=f"network calls (with a schedule kind; default {DEFAULT_NFE})")
    schedule_args(s, several=False)
    s.add_argument("-n", type=POSITIVE, default=64, help="number of samples (per prompt with --pipeline)")
    s.add_argument("--seed", type=SEED, default=0, help="seed of the noise")
    s.add_argument("--label", type=int_in(-SEED_MAX, SEED_MAX),
                   help="class label for class-conditional models (digits: 0..9)")
    s.add_argument("--force", action="store_true", help="use a schedule made for another model or solver")
    s.add_argument("--out", default="samples.png",
                   help="output .png grid (a video pipeline: a frame strip), .gif (a video pipeline's animated "
                        "grid) or .pt tensor")
    compute_args(s)
    return s


def validate(args, given) -> None:
    check_schedule_kinds(args)
    if not args.out.endswith((".png", ".gif", ".pt")):
        raise CLIError(f"--out {args.out}: must end in .png (an image grid; a video's frame strip), .gif (a video "
                       f"pipeline's animation) or .pt (a tensor)")
    if args.out.endswith(".gif") and not args.pipeline:
        raise CLIError(f"--out {args.out}: a .gif needs a video pipeline (--pipeline with a Wan folder); "
                       f"--model {args.model} makes images: write a .png grid or a .pt tensor")


def run(args) -> int:
    from ..io import atomic_write, check_output_path
    from ..sample import plan_for, sample
    from ..teacher import noise_for

    out = check_output_path(args.out, "--out")
    prompts = (args.prompt or read_prompts(args.prompts)) if args.pipeline else None
    check_flow_kinds(args, [args.schedule])
    video = False
    if args.pipeline:
        from ..pipelines import FAMILIES, PIPELINES

        cls_name = pipeline_class(args.pipeline)
        video = FAMILIES[PIPELINES[cls_name]].video
        if out.endswith(".gif") and not video:
            raise CLIError(f"--out {args.out}: a .gif needs a video pipeline; {args.pipeline} is a {cls_name} "
                           f"(images): write a .png grid or a .pt tensor")
    device = setup_compute(args)
    den = load_denoiser(args).to(device)
    sched = load_schedule(args.schedule, den, args.nfe, args.solver or "unipc", shift=args.shift, mu=args.mu)
    solver = args.solver or sched.solver or "unipc"
    options = {"variant": args.variant} if args.variant else {}
    plan = plan_for(den, sched, solver=solver, order=args.order, force=args.force, **options)
    shape = sample_shape(den, args.shape)
    n = args.n * len(prompts) if prompts else args.n
    def conditions(count):  # prompt embeddings come on the network's device
        if prompts:
            return den.encode_prompt([p for p in prompts for _ in range(args.n)][:count])
        cond = labels(den, args.label, count)
        return None if cond is None else cond.to(device)

    check_memory(args, den, batch=n, shape=shape, plan_registers=plan.max_registers, cond=conditions(1),
                 device=device)
    cond = conditions(n)
    z = noise_for(n, shape, args.seed).to(device)
    with torch.no_grad():
        x = sample(den, z, sched, solver=solver, order=args.order, cond=cond, force=args.force, **options)
        if prompts and not out.endswith(".pt"):
            x = den.decode(x)  # images in [-1, 1]; a .pt output keeps the latents
    x = x.cpu()
    what = f"{solver}{plan.order} NFE {sched.nfe}"
    if out.endswith(".pt"):
        atomic_write(out, lambda tmp: torch.save(x, tmp))
    elif video:  # decoded frames [N, 3, F, H, W]: a .gif animates the grid, a .png is a frame strip
        from ..plots import save_video

        save_video(x, out, rows=[f"{p} ({what})" for p in prompts])
    else:
        from ..plots import save_grid

        rows = [f"{p} ({what})" for p in prompts] if prompts else None
        save_grid(x, out, rows=rows, title=None if prompts else f"{args.model}: {what}, {sched.origin or 'schedule'}")
    frames = f" of {x.shape[2]} frames" if video and not out.endswith(".pt") else ""
    print(f"{n} samples{frames}, {solver} nfe={sched.nfe} ({sched.origin or 'schedule file'}) -> {args.out}")
    return 0
