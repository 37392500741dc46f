"""The `ldd-fast` command line: sample, learn, quality, bench, export, demo.

Models (--model): "digits" and "digits_vp" (the built-in models), "module.path:factory"
(a callable returning an lf.Denoiser), or a local diffusers model folder (a UNet and its
scheduler; nothing is fetched from a hub). Schedules (--schedule): a discretisation kind
(time_uniform, time_quadratic, logsnr, edm) or a schedule JSON file.
Errors are one line on stderr (exit status 2), no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

from .solvers import SOLVERS

KIND_CHOICES = ("time_uniform", "time_quadratic", "logsnr", "edm")


class CLIError(Exception):
    pass


# ----- shared plumbing --------------------------------------------------------------------

def load_model(spec: str, *, guidance: float = 1.0):
    """A Denoiser from --model; it carries `sample_shape` when known."""
    from .denoiser import Denoiser

    if spec in ("digits", "digits_vp"):
        from .zoo.builtin import load

        return load(spec, guidance_scale=guidance)
    if os.path.isdir(spec):
        return _load_diffusers_dir(spec, guidance)
    if ":" in spec:
        mod_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise CLIError(f"--model {spec}: cannot import {attr!r} from {mod_name!r} ({e})") from None
        den = factory()
        if not isinstance(den, Denoiser):
            raise CLIError(f"--model {spec}: the factory returned {type(den).__name__}, not an lf.Denoiser")
        if guidance != 1.0:
            if den.null_cond is None:
                raise CLIError(f"--guidance needs a model with a null condition; {spec} has none")
            den.guidance_scale = float(guidance)
        return den
    if os.path.exists(spec) or "/" in spec:
        raise CLIError(f"--model {spec}: not a folder (a local diffusers model folder is expected)")
    raise CLIError(f"unknown --model {spec!r}: use digits, digits_vp, module.path:factory or a diffusers folder")


def _load_diffusers_dir(path: str, guidance: float):
    try:
        import diffusers
    except ImportError:
        raise CLIError("a diffusers model folder needs the [diffusers] extra: pip install -e '.[diffusers]'") from None
    from .adapters import from_diffusers

    unet_dir = os.path.join(path, "unet") if os.path.isdir(os.path.join(path, "unet")) else path
    sched_dir = os.path.join(path, "scheduler") if os.path.isdir(os.path.join(path, "scheduler")) else path
    cfg = os.path.join(unet_dir, "config.json")
    if not os.path.isfile(cfg):
        raise CLIError(f"--model {path}: no UNet config.json in {unet_dir}")
    import json

    with open(cfg) as f:
        cls_name = json.load(f).get("_class_name", "UNet2DModel")
    unet_cls = getattr(diffusers, cls_name, None)
    if unet_cls is None:
        raise CLIError(f"--model {path}: unknown UNet class {cls_name!r}")
    unet = unet_cls.from_pretrained(unet_dir, local_files_only=True).eval()
    sched_cfg = os.path.join(sched_dir, "scheduler_config.json")
    if not os.path.isfile(sched_cfg):
        raise CLIError(f"--model {path}: no scheduler_config.json in {sched_dir}")
    with open(sched_cfg) as f:
        scheduler = json.load(f)
    if guidance != 1.0:
        raise CLIError("--guidance with a diffusers folder needs a null condition: use the Python API "
                       "(lf.from_diffusers(unet, scheduler, guidance_scale=..., null_cond=...))")
    den = from_diffusers(unet, scheduler)
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    den.sample_shape = (unet.config.in_channels, *size)
    return den


def sample_shape(den, override=None):
    if override:
        return tuple(override)
    shape = getattr(den, "sample_shape", None)
    if shape is None:
        raise CLIError("this model does not say its sample shape: pass --shape C H W")
    return tuple(shape)


def load_schedule(spec: str, den, nfe: int | None, solver: str):
    from .schedule import Schedule, discretize

    if spec in KIND_CHOICES:
        if nfe is None:
            raise CLIError("--nfe is needed with a hand-made --schedule kind")
        return discretize(den.noise, nfe, spec, solver=solver)
    if spec.endswith(".json") or os.path.exists(spec):
        sched = Schedule.load(spec)
        if nfe is not None and nfe != sched.nfe:
            raise CLIError(f"--nfe {nfe} differs from the schedule file's nfe {sched.nfe}")
        return sched
    raise CLIError(f"--schedule {spec!r}: expected one of {', '.join(KIND_CHOICES)} or a schedule .json file")


def grid_image(x: torch.Tensor):
    """Samples in [-1, 1] ([N, 1 or 3, H, W]) as one uint8 RGB array, one pixel of black between cells."""
    import math

    import numpy as np

    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    n, c, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + 2), cols * (w + 2), 3), np.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        img = x[k].permute(1, 2, 0).numpy()
        grid[r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = \
            img if c == 3 else np.repeat(img[..., :1], 3, axis=2)
    return grid


def save_grid(x: torch.Tensor, path: str, *, scale: int = 4) -> None:
    """Samples in [-1, 1] as one PNG grid, written atomically."""
    from PIL import Image

    from .io import atomic_write

    grid = grid_image(x)
    image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _labels(args, n):
    if args.label is None:
        return None
    if not 0 <= args.label <= 9:
        raise CLIError(f"--label must be a digit 0..9, got {args.label}")
    return torch.full((n,), args.label, dtype=torch.long)


# ----- commands ---------------------------------------------------------------------------

def cmd_sample(args) -> int:
    from .sample import sample
    from .teacher import noise_for

    den = load_model(args.model, guidance=args.guidance)
    sched = load_schedule(args.schedule, den, args.nfe, args.solver or "unipc")
    solver = args.solver or sched.solver or "unipc"
    z = noise_for(args.n, sample_shape(den, args.shape), args.seed)
    with torch.no_grad():
        x = sample(den, z, sched, solver=solver, order=args.order, variant=args.variant, cond=_labels(args, args.n),
                   force=args.force)
    if args.out.endswith(".pt"):
        torch.save(x, args.out)
    else:
        save_grid(x, args.out)
    print(f"{args.n} samples, {solver} nfe={sched.nfe} ({sched.origin or 'schedule file'}) -> {args.out}")
    return 0


def cmd_learn(args) -> int:
    from .learn import learn
    from .schedule import Schedule
    from .teacher import TeacherSpec

    den = load_model(args.model, guidance=args.guidance)
    work = args.work_dir or os.path.splitext(args.out)[0] + "_ld3"
    teacher = TeacherSpec(solver=args.teacher_solver, order=args.teacher_order, nfe=args.teacher_nfe, kind="edm")
    cond = None
    if args.guidance != 1.0:
        cond = lambda n, g: torch.randint(0, 10, (n,), generator=g)  # noqa: E731 - class labels of the digits
    init = None if args.init == "uniform" else "best" if args.init == "best" else Schedule.load(args.init)
    res = learn(den, solver=args.solver, order=args.order, nfe=args.nfe, shape=sample_shape(den, args.shape),
                mode=args.mode, teacher=teacher, n_train=args.n_train, n_valid=args.n_valid, loss=args.loss,
                cond=cond, init=init, out=work, resume=args.resume, seed=args.seed, checkpoint_calls=args.checkpoint_calls,
                **({"variant": args.variant} if args.variant else {}))
    res.schedule.save(args.out)
    m = res.schedule.metrics
    print(f"learned {args.solver} nfe={args.nfe}: held-out {m['loss']} {m['valid_hard_init']:.4f} -> "
          f"{m['valid_hard']:.4f} in {res.stats['seconds']:.0f} s ({res.stats['network_calls']} batched calls)")
    print(f"schedule: {args.out}; checkpoints, teacher pairs and plots: {work}")
    return 0


def cmd_quality(argv) -> int:
    from .quality import main

    return main(argv)


def cmd_bench(argv) -> int:
    """benchmarks/latency.py of the source checkout this package is installed from (pip install -e .)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "latency.py")
    if not os.path.isfile(path):
        raise CLIError(f"ldd-fast bench runs benchmarks/latency.py from a source checkout; not found at {path}")
    spec = importlib.util.spec_from_file_location("ldd_fast_latency", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv) or 0


def cmd_export(argv) -> int:
    try:
        from .export.cli import main
    except ImportError as e:
        raise CLIError(f"export needs the [export] extra: pip install -e '.[export]' ({e})") from None
    return main(argv) or 0


def cmd_demo(args) -> int:
    from .demo import run

    return run(out=args.out, quick=args.quick)


# ----- parser -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ldd-fast",
        description="Fast low-NFE sampling for diffusion models: learned time steps (LD3), standard ODE solvers, "
                    "fused and exported samplers. Start with `ldd-fast demo`.",
        epilog="Each command has its own --help, e.g. `ldd-fast sample --help`.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_args(sp):
        sp.add_argument("--model", default="digits",
                        help="digits | digits_vp | module.path:factory | local diffusers folder (default: digits)")
        sp.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default 1: off)")
        sp.add_argument("--shape", type=int, nargs="+", help="sample shape C H W if the model does not say it")

    def solver_args(sp, default="unipc"):
        sp.add_argument("--solver", default=default, choices=sorted(SOLVERS), help=f"ODE solver (default {default})")
        sp.add_argument("--order", type=int, help="solver order (default: the solver's)")
        sp.add_argument("--variant", help="unipc: bh1 | bh2; dpmpp: diffusers | taylor")

    s = sub.add_parser("sample", help="draw samples with a solver and schedule, write a PNG grid",
                       description="Draw samples and write them as a PNG grid (or a .pt tensor).")
    model_args(s)
    solver_args(s, default=None)
    s.add_argument("--nfe", type=int, help="network calls (needed with a schedule kind)")
    s.add_argument("--schedule", default="logsnr", help=f"{' | '.join(KIND_CHOICES)} | path/to/schedule.json")
    s.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--label", type=int, help="digit class 0..9 for the built-in class-conditional models")
    s.add_argument("--force", action="store_true", help="use a schedule made for another model or solver")
    s.add_argument("--out", default="samples.png", help="output .png grid or .pt tensor")
    s.set_defaults(func=cmd_sample)

    le = sub.add_parser("learn", help="learn an LD3 schedule for a model, solver and NFE",
                        description="Learn the time steps (and network times) of a solver at a fixed NFE with LD3. "
                                    "Resumable: --resume continues an interrupted run from its last round.")
    model_args(le)
    solver_args(le)
    le.add_argument("--nfe", type=int, required=True)
    le.add_argument("--out", required=True, help="the learned schedule (.json)")
    le.add_argument("--work-dir", help="teacher pairs, checkpoints and plots (default: <out>_ld3/)")
    le.add_argument("--resume", action="store_true", help="continue an interrupted run in --work-dir")
    le.add_argument("--mode", default="lambda", choices=["lambda", "time", "auto"],
                    help="lambda (pixel models), time (latent models), auto: both, keep the better on validation")
    le.add_argument("--init", default="uniform",
                    help="start: uniform (in the mode's coordinate), best (the best hand-made schedule on the "
                         "training pairs) or a schedule .json")
    le.add_argument("--loss", default="pseudo_huber", choices=["pseudo_huber", "l2", "l1", "lpips"])
    le.add_argument("--n-train", type=int, default=50)
    le.add_argument("--n-valid", type=int, default=50)
    le.add_argument("--teacher-solver", default="unipc", choices=sorted(SOLVERS))
    le.add_argument("--teacher-order", type=int, default=3)
    le.add_argument("--teacher-nfe", type=int, default=20)
    le.add_argument("--seed", type=int, default=0)
    le.add_argument("--checkpoint-calls", action="store_true", help="recompute network activations in backward")
    le.set_defaults(func=cmd_learn)

    sub.add_parser("quality", help="the quality benchmark (solvers x schedules x NFE)", add_help=False)
    sub.add_parser("bench", help="the latency benchmark (backends vs the network-call floor)", add_help=False)
    sub.add_parser("export", help="export a fixed sampler to ONNX (and TensorRT)", add_help=False)

    d = sub.add_parser("demo", help="the main job: hand-made vs learned schedules on the built-in model",
                       description="Load the built-in digits model, compare hand-made schedules at low NFE, learn an "
                                   "LD3 schedule, show the backends that run here; writes images and tables.")
    d.add_argument("--out", default="ldd_fast_out", help="output folder (default ./ldd_fast_out)")
    d.add_argument("--quick", action="store_true", help="fewer samples and rounds (for tests)")
    d.set_defaults(func=cmd_demo)
    return p


PASSTHROUGH = {"quality": cmd_quality, "bench": cmd_bench, "export": cmd_export}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in PASSTHROUGH:
            return PASSTHROUGH[argv[0]](argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (CLIError, ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError, ImportError) as e:
        print(f"ldd-fast: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
