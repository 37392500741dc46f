"""The `ldd-fast` command line: sample, learn, quality, bench, plan, export, demo.

Models (--model): "digits" and "digits_vp" (the built-in models), "module.path:factory"
(a callable returning an lf.Denoiser: the module is imported, so it must be code you trust), or
a local diffusers model folder (a UNet and its scheduler; safetensors weights only, nothing is
fetched from a hub). Schedules (--schedule): a discretisation kind (time_uniform,
time_quadratic, logsnr, edm) or a schedule JSON file.

Every command checks its arguments, then its input and output paths, before any work starts.
Errors are one line on stderr with exit status 2 that names the argument or file; no
traceback (LDD_FAST_TRACEBACK=1 shows one, for bug reports).
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys

import torch

from .bench import default_threads
from .errors import LddFastError
from .io import check_output_path
from .solvers import SOLVERS

KIND_CHOICES = ("time_uniform", "time_quadratic", "logsnr", "edm", "karras")
DEFAULT_NFE = 6  # the hand-made schedules' NFE when --nfe is not given
BUILTIN = ("digits", "digits_vp", "digits_flow")
DIFFUSERS_NETWORKS = ("UNet2DModel", "UNet2DConditionModel")
SEED_MAX = 2**63 - 1


class CLIError(LddFastError):
    """A one-line, user-facing error of the command line."""


class Parser(argparse.ArgumentParser):
    """argparse with errors raised as one-line CLIErrors (main prints them; exit status 2)."""

    def error(self, message):
        raise CLIError(f"{message} (see `{self.prog} --help`)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every default in --help: appended as "(default: X)" unless the help text already says it, or the
    option is a flag (off) or has no value by default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS))
                or not action.option_strings):
            return text
        return super()._get_help_string(action)


# ----- arguments --------------------------------------------------------------------------------

def _int_in(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {'>= ' + str(lo) if hi is None else f'in [{lo}, {hi}]'}, "
                                             f"got {v}")
        return v
    parse.__name__ = "int"
    return parse


def _finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return v


POSITIVE = _int_in(1)
SEED = _int_in(0, SEED_MAX)


def build_parser() -> Parser:
    p = Parser(
        prog="ldd-fast",
        description="Fast low-NFE sampling for diffusion models: learned time steps (LD3), standard ODE solvers, "
                    "fused and exported samplers. Start with `ldd-fast demo`.",
        epilog="Each command has its own --help, e.g. `ldd-fast sample --help`.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    defaults = HelpFormatter

    def model_args(sp):
        sp.add_argument("--model", default="digits",
                        help="digits | digits_vp | digits_flow | module.path:factory | local diffusers folder")
        sp.add_argument("--guidance", type=_finite_float, default=None,
                        help="classifier-free guidance scale (default: 1, off; with --pipeline the pipeline's "
                             "guidance_scale, e.g. 7.5 for Stable Diffusion, Flux's embedded 3.5)")
        sp.add_argument("--shape", type=POSITIVE, nargs="+", help="sample shape C H W if the model does not say it")

    def compute_args(sp):
        sp.add_argument("--threads", type=POSITIVE, default=None,
                        help="torch intra-op threads on the CPU (default: half the cores, at most 8: "
                             f"{default_threads()} here; all cores of a shared machine would fight other jobs)")
        sp.add_argument("--device", default=None,
                        help="cpu | cuda | cuda:N (default: cuda when a GPU is visible, else cpu)")

    def pipeline_args(sp, condition: str):
        sp.add_argument("--pipeline", help="a local diffusers pipeline folder (Stable Diffusion, SD3 or Flux; "
                                           f"safetensors weights, nothing fetched) instead of --model; {condition}")
        sp.add_argument("--negative-prompt", default="", help="with --pipeline: the null condition of guidance")
        sp.add_argument("--height", type=POSITIVE, help="with --pipeline: image height (default: the pipeline's)")
        sp.add_argument("--width", type=POSITIVE, help="with --pipeline: image width (default: the pipeline's)")
        sp.add_argument("--max-sequence-length", type=POSITIVE, help="with --pipeline: T5 prompt length (SD3, Flux)")

    def solver_args(sp, default="unipc"):
        sp.add_argument("--solver", default=default, choices=sorted(SOLVERS),
                        help="ODE solver" + ("" if default else " (default: the schedule file's, else unipc)"))
        sp.add_argument("--order", type=POSITIVE, help="solver order (default: the solver's)")
        sp.add_argument("--variant", help="unipc: bh1 | bh2; dpmpp: diffusers | taylor")

    s = sub.add_parser("sample", help="draw samples with a solver and schedule, write a PNG grid",
                       description="Draw samples and write them as a PNG grid (or a .pt tensor).",
                       formatter_class=defaults)
    model_args(s)
    solver_args(s, default=None)
    s.add_argument("--nfe", type=POSITIVE, help=f"network calls (with a schedule kind; default {DEFAULT_NFE})")
    s.add_argument("--schedule", default="logsnr", help=f"{' | '.join(KIND_CHOICES)} | path/to/schedule.json "
                                                        "(karras = edm, k-diffusion's name)")
    s.add_argument("-n", type=POSITIVE, default=64, help="number of samples")
    s.add_argument("--seed", type=SEED, default=0, help="seed of the noise")
    s.add_argument("--label", type=_int_in(-SEED_MAX, SEED_MAX),
                   help="class label for class-conditional models (digits: 0..9)")
    s.add_argument("--force", action="store_true", help="use a schedule made for another model or solver")
    s.add_argument("--out", default="samples.png", help="output .png grid or .pt tensor")
    compute_args(s)
    s.set_defaults(func=cmd_sample, validate=_validate_sample)

    le = sub.add_parser("learn", help="learn an LD3 schedule for a model, solver and NFE",
                        description="Learn the time steps (and network times) of a solver at a fixed NFE with LD3. "
                                    "Resumable: --resume continues an interrupted run from its last round.",
                        formatter_class=defaults)
    model_args(le)
    solver_args(le)
    le.add_argument("--nfe", type=POSITIVE, required=True, help="network calls of the learned sampler")
    le.add_argument("--out", required=True, help="the learned schedule (.json)")
    le.add_argument("--work-dir", help="teacher pairs, checkpoints and plots (default: <out>_ld3/)")
    le.add_argument("--resume", action="store_true", help="continue an interrupted run in --work-dir")
    le.add_argument("--mode", default="lambda", choices=["lambda", "time", "auto"],
                    help="lambda (pixel models), time (latent models), auto: both, keep the better on validation")
    le.add_argument("--init", default="uniform",
                    help="start: uniform (in the mode's coordinate), best (the best hand-made schedule on the "
                         "training pairs) or a schedule .json")
    le.add_argument("--loss", default="pseudo_huber", choices=["pseudo_huber", "l2", "l1", "lpips"],
                    help="distance to the teacher samples")
    le.add_argument("--n-train", type=POSITIVE, default=50, help="teacher pairs to learn from")
    le.add_argument("--n-valid", type=POSITIVE, default=50, help="teacher pairs that select the best round")
    le.add_argument("--teacher-solver", default="unipc", choices=sorted(SOLVERS), help="solver of the teacher")
    le.add_argument("--teacher-order", type=POSITIVE, default=3, help="order of the teacher's solver")
    le.add_argument("--teacher-nfe", type=POSITIVE, help="teacher steps (default: 20; 40 for a flow)")
    le.add_argument("--teacher-kind", choices=["time_uniform", "time_quadratic", "logsnr", "edm"],
                    help="teacher discretisation (default: edm, the paper's; time_quadratic for a flow)")
    le.add_argument("--seed", type=SEED, default=0, help="seed of the teacher pairs and of the run")
    le.add_argument("--checkpoint-calls", action="store_true", help="recompute network activations in backward")
    le.add_argument("--coefficients", nargs="?", const="exact", choices=["exact", "relaxed"],
                    help="also learn the solver: after LD3's rounds, corrections of its weights on buffered "
                         "denoiser outputs (exact: zero-sum, exact for a constant denoiser; relaxed: also a scale "
                         "of each update's total weight). Off by default")
    pipeline_args(le, "needs --prompts")
    le.add_argument("--prompts", help="with --pipeline: a text file, one prompt per line (split between training "
                                      "and validation pairs, disjoint)")
    le.add_argument("--pixel-loss", action="store_true",
                    help="with --pipeline: the distance on decoded images instead of latents (slower)")
    compute_args(le)
    le.set_defaults(func=cmd_learn, validate=_validate_learn)

    from .quality import MODELS, QUICK, FULL, SOLVERS as QUALITY_SOLVERS, solver_label

    q = sub.add_parser("quality", help="the quality benchmark (solvers x schedules x NFE)",
                       description="The quality benchmark: every solver x schedule x NFE on the built-in models "
                                   "against one converged teacher; resumes what --out holds.",
                       formatter_class=defaults)
    q.add_argument("--full", action="store_true",
                   help=f"NFE {FULL['nfes']} with {FULL['n']} seeds (default: NFE {QUICK['nfes']}, {QUICK['n']} seeds)")
    q.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="built-in models to measure")
    q.add_argument("--nfe", type=POSITIVE, nargs="+", help="override the NFE list (multistep solvers)")
    q.add_argument("--heun-nfe", type=POSITIVE, nargs="+", help="override the NFE list of Heun (odd)")
    q.add_argument("--solvers", nargs="+", choices=[solver_label(*x) for x in QUALITY_SOLVERS],
                   help="a subset of the solvers")
    q.add_argument("-n", type=_int_in(QUICK["n"]), help="number of held-out seeds")
    q.add_argument("--out", default="benchmarks/results/quality", help="output folder (resumes what is there)")
    q.add_argument("--learned", default="benchmarks/results/ld3", help="folder of learned schedules to include")
    q.add_argument("--boot", type=POSITIVE, default=200, help="bootstrap resamples for the FD interval")
    compute_args(q)
    q.set_defaults(func=cmd_quality, validate=_validate_quality)

    from .bench import BACKENDS as BENCH_BACKENDS

    b = sub.add_parser("bench", help="latency of fixed samplers on a model: backends x batches vs the floor",
                       description="Time fixed samplers on your model: per schedule, backend and batch the median "
                                   "and quartiles over interleaved rounds, the floor of the backend's execution mode "
                                   "(nfe x one network forward) and the ratio to it, the ratio to the eager floor, "
                                   "and parity with the eager sampler. Backends that cannot run here are listed with "
                                   "the reason.", formatter_class=defaults)
    model_args(b)
    pipeline_args(b, "timed with one prompt (--prompt)")
    b.add_argument("--prompt", default="a photograph of a cat", help="with --pipeline: the prompt of the condition")
    b.add_argument("--schedule", nargs="+", default=["edm"],
                   help=f"schedule files and / or hand-made kinds ({' | '.join(KIND_CHOICES)}) with --nfe")
    b.add_argument("--nfe", type=POSITIVE, default=DEFAULT_NFE, help="network calls of hand-made kinds")
    solver_args(b, default=None)
    b.add_argument("--backends", default=",".join(BENCH_BACKENDS), type=_backend_list(BENCH_BACKENDS),
                   help="comma-separated; those that cannot run here are listed with the reason")
    b.add_argument("--batch", type=POSITIVE, nargs="+", default=[1, 8], help="batch sizes")
    b.add_argument("--fp16", action="store_true", help="float16 samplers (rows a device cannot run are listed)")
    b.add_argument("--repeats", type=POSITIVE, default=20, help="timed rounds (each runs every backend once)")
    b.add_argument("--warmup", type=_int_in(0), default=3, help="untimed rounds after each first call")
    b.add_argument("--json", help="write the rows, skipped backends and environment as JSON")
    b.add_argument("--md", help="write the table as Markdown")
    b.add_argument("--plot", help="write latency vs batch per backend (PNG; needs matplotlib)")
    b.add_argument("--force", action="store_true", help="use a schedule made for another model or solver")
    compute_args(b)
    b.set_defaults(func=cmd_bench, validate=_validate_bench)

    from .planner import CANDIDATES, DEFAULT_BACKENDS as PLAN_BACKENDS, LEARN

    pl = sub.add_parser("plan", help="pick the best sampler (solver, NFE, schedule, backend) under a latency budget",
                        description="Measure this device's per-call latency per backend, keep the (solver, order, "
                                    "NFE) choices that fit --budget-ms, score their hand-made (and, with --learn, "
                                    "learned) schedules by teacher RMSE on held-out seeds, and write the best "
                                    "schedule, a table and a quality-vs-latency plot.", formatter_class=defaults)
    model_args(pl)
    pl.add_argument("--budget-ms", type=_finite_float, required=True, help="latency budget per sampler call")
    pl.add_argument("--batch", type=POSITIVE, default=1, help="samples per call")
    pl.add_argument("--max-nfe", type=POSITIVE, default=10, help="the largest NFE considered")
    pl.add_argument("--solvers", nargs="+", default=[f"{s}{o}" for s, o in CANDIDATES],
                    choices=[f"{s}{o}" for s, o in CANDIDATES], help="candidate solvers (name + order)")
    pl.add_argument("--backends", default=",".join(PLAN_BACKENDS), type=_backend_list(BENCH_BACKENDS),
                    help="backends to time (compile: minutes on a CPU, by name only)")
    pl.add_argument("--learn", default="none", choices=LEARN,
                    help="also learn LD3 (ld3) or the learned solver (coefficients) for the best candidates")
    pl.add_argument("--learn-top", type=POSITIVE, default=2, help="how many candidates to learn for")
    pl.add_argument("--learn-seconds", type=_finite_float, default=600.0, help="wall-time cap on learning")
    pl.add_argument("--cache", default=os.path.join("ldd_fast_out", "plan_cache"),
                    help="learned schedules, kept by model fingerprint (resumable)")
    pl.add_argument("--n-select", type=POSITIVE, default=64, help="seeds the choices are made on")
    pl.add_argument("--n-eval", type=POSITIVE, default=128, help="held-out seeds the table reports")
    pl.add_argument("--teacher-steps", type=POSITIVE, default=50, help="steps of the reference teacher")
    pl.add_argument("--fd", action="store_true",
                    help="also the digits FD (built-in models only; the held-out seeds are then 300, FD's count)")
    pl.add_argument("--repeats", type=POSITIVE, default=10, help="timed rounds per latency measurement")
    pl.add_argument("--out", default=os.path.join("ldd_fast_out", "plan"),
                    help="folder for schedule.json, plan.md, plan.json, plan.png")
    compute_args(pl)
    pl.set_defaults(func=cmd_plan, validate=_validate_plan)

    e = sub.add_parser("export", help="export a fixed sampler to ONNX (and TensorRT)",
                       description="A model + a schedule file -> one ONNX graph of the whole sampler (+ its data "
                                   "file) [-> a TensorRT engine].", formatter_class=defaults)
    export_arguments(e)
    compute_args(e)
    e.set_defaults(func=cmd_export, validate=_validate_export)

    d = sub.add_parser("demo", help="the main job: hand-made vs learned schedules on the built-in model",
                       description="Load the built-in digits model, compare hand-made schedules at low NFE, learn an "
                                   "LD3 schedule, show the backends that run here; writes images and tables.",
                       formatter_class=defaults)
    d.add_argument("--out", default="ldd_fast_out", help="output folder")
    d.add_argument("--quick", action="store_true", help="fewer samples and rounds (for tests)")
    compute_args(d)
    d.set_defaults(func=cmd_demo, validate=_validate_demo)
    return p


def _validate_sample(args) -> None:
    if args.guidance not in (None, 1.0) and args.label is None:
        raise CLIError("--guidance needs --label: guidance steers samples toward a condition, and without one "
                       "there is nothing to steer toward")
    if not args.out.endswith((".png", ".pt")):
        raise CLIError(f"--out {args.out}: must end in .png (an image grid) or .pt (a tensor)")
    if args.shape is not None and len(args.shape) < 1:
        raise CLIError("--shape needs at least one dimension")


PIPELINE_ONLY = ("prompts", "height", "width", "max_sequence_length", "pixel_loss")


def _validate_learn(args) -> None:
    if not args.out.endswith(".json"):
        raise CLIError(f"--out {args.out}: the learned schedule is a .json file")
    if args.pipeline is None:
        given = [f"--{k.replace('_', '-')}" for k in PIPELINE_ONLY if getattr(args, k) not in (None, False)]
        if given or args.negative_prompt:
            raise CLIError(f"{', '.join(given) or '--negative-prompt'} belong to --pipeline")
    else:
        if args.prompts is None:
            raise CLIError("--pipeline needs --prompts (a text file, one prompt per line)")
        if args.shape is not None:
            raise CLIError("--shape does not apply to --pipeline: the latent shape follows --height and --width")


def _validate_quality(args) -> None:
    if args.heun_nfe and any(k % 2 == 0 for k in args.heun_nfe):
        raise CLIError(f"--heun-nfe takes odd values (Heun spends 2K - 1 calls on K steps), got {args.heun_nfe}")


def _validate_demo(args) -> None:
    pass


def _backend_list(known):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(b.strip() for b in text.split(",") if b.strip())
        bad = [b for b in names if b not in known]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown backend(s) {bad or text!r}; choose from {','.join(known)}")
        return names
    parse.__name__ = "backends"
    return parse


def _validate_plan(args) -> None:
    if args.budget_ms <= 0:
        raise CLIError(f"--budget-ms must be positive, got {args.budget_ms:g}")
    if args.learn_seconds <= 0:
        raise CLIError(f"--learn-seconds must be positive, got {args.learn_seconds:g}")
    if args.fd and args.model not in BUILTIN:
        raise CLIError("--fd uses the digits feature network: only with the built-in models")


BENCH_OUTPUTS = {"json": ".json", "md": ".md", "plot": ".png"}  # bench's output flags and their file types


def _bench_outputs(args):
    """(flag, path, suffix) of each bench output asked for."""
    return [(f"--{k}", getattr(args, k), suffix) for k, suffix in BENCH_OUTPUTS.items() if getattr(args, k)]


def _validate_bench(args) -> None:
    for flag, path, suffix in _bench_outputs(args):
        if not path.endswith(suffix):
            raise CLIError(f"{flag} {path}: expected a {suffix} file")
    if args.pipeline is None:
        given = [f"--{k.replace('_', '-')}" for k in ("height", "width", "max_sequence_length")
                 if getattr(args, k) is not None]
        if given:
            raise CLIError(f"{', '.join(given)} belong to --pipeline")
    elif args.shape is not None:
        raise CLIError("--shape does not apply to --pipeline: the latent shape follows --height and --width")


def _shape_list(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 1,8,8, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got {text!r}")
    return dims


EXPORT_TENSORRT_ONLY = ("min_batch", "opt_batch", "max_batch", "strongly_typed", "timing_cache", "workspace")


def export_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", required=True,
                   help="built-in model name (e.g. digits), package.module:factory returning an lf.Denoiser, or a "
                        "local diffusers folder")
    p.add_argument("--schedule", required=True, help="schedule JSON (lf.Schedule.save / ldd-fast learn)")
    p.add_argument("--solver", default=None, help="solver (default: the schedule's)")
    p.add_argument("--order", type=POSITIVE, default=None,
                   help="solver order (default: the schedule's or the solver's)")
    p.add_argument("--variant", default=None, help="solver variant (unipc: bh1 | bh2; dpmpp: taylor)")
    p.add_argument("--onnx", required=True, help="output graph file; its .data file is written beside it")
    p.add_argument("--tensorrt", default=None, help="also build a TensorRT engine at this path (needs tensorrt + GPU)")
    p.add_argument("--fp16", action="store_true",
                   help="run the network in float16 in the graph (and in the TensorRT engine)")
    p.add_argument("--shape", type=_shape_list, default=None,
                   help="sample shape without the batch, e.g. 1,8,8 (default: from the model)")
    p.add_argument("--conditional", action="store_true",
                   help="give the graph a `cond` input of integer class labels (automatic when the model guides)")
    p.add_argument("--schedule-as-input", action="store_true",
                   help="coefficients and network times as graph inputs (swap schedules without re-exporting)")
    p.add_argument("--static-batch", type=POSITIVE, default=None, metavar="B", help="export for this batch size only")
    p.add_argument("--opset", type=POSITIVE, default=None, help="ONNX opset (>= 18; default: torch's exporter's)")
    p.add_argument("--method", choices=("compose", "trace"), default="compose", help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="use a schedule made for another model / solver")
    p.add_argument("--min-batch", type=POSITIVE, default=None, help="TensorRT profile: smallest batch (default 1)")
    p.add_argument("--opt-batch", type=POSITIVE, default=None,
                   help="TensorRT profile: batch to tune for (default: max)")
    p.add_argument("--max-batch", type=POSITIVE, default=None, help="TensorRT profile: largest batch (default 64)")
    p.add_argument("--strongly-typed", action="store_true", help="TensorRT 10.x: build a strongly typed network")
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file (read and updated)")
    p.add_argument("--workspace", type=POSITIVE, default=None, help="TensorRT builder workspace limit in MiB")
    p.add_argument("--verify", action="store_true",
                   help="run the graph with onnxruntime and report its difference to the eager sampler")
    return p


def _validate_export(args) -> None:
    """Refuse options that cannot take effect (checked before anything is loaded or written)."""
    if not args.tensorrt:
        given = [f"--{k.replace('_', '-')}" for k in EXPORT_TENSORRT_ONLY if getattr(args, k) not in (None, False)]
        if given:
            raise CLIError(f"{', '.join(given)} configure the TensorRT build and need --tensorrt")
    if args.static_batch is not None and any(getattr(args, k) is not None for k in ("min_batch", "opt_batch",
                                                                                     "max_batch")):
        raise CLIError("--static-batch fixes the engine's batch; --min-batch / --opt-batch / --max-batch do not apply")
    lo, hi = args.min_batch or 1, args.max_batch or 64
    opt = args.opt_batch or hi
    if not lo <= opt <= hi:
        raise CLIError(f"need --min-batch <= --opt-batch <= --max-batch, got {lo}, {opt}, {hi}")


def parse_args(argv) -> argparse.Namespace:
    """Parse and validate the arguments of any command without touching files or running anything."""
    args = build_parser().parse_args(argv)
    args.validate(args)
    return args


# ----- shared plumbing --------------------------------------------------------------------

def load_model(spec: str, *, guidance: float = 1.0):
    """A Denoiser from --model; it carries `sample_shape` when known."""
    from .denoiser import Denoiser

    if spec in BUILTIN:
        from .zoo.builtin import load

        return load(spec, guidance_scale=guidance)
    if os.path.isdir(spec):
        return _load_diffusers_dir(spec, guidance)
    if ":" in spec and not os.path.exists(spec):
        mod_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(mod_name)
        except Exception as e:  # noqa: BLE001 - importing user code can raise anything; name it
            raise CLIError(f"--model {spec}: cannot import {mod_name!r} ({type(e).__name__}: {_first_line(e)})") \
                from None
        factory = getattr(module, attr, None)
        if factory is None:
            raise CLIError(f"--model {spec}: cannot import {attr!r} from {mod_name!r} (no such attribute)")
        if not callable(factory) or isinstance(factory, Denoiser):
            raise CLIError(f"--model {spec}: {attr!r} is a {type(factory).__name__}, not a factory (a function "
                           f"taking no arguments and returning an lf.Denoiser)")
        try:
            den = factory()
        except Exception as e:  # noqa: BLE001
            raise CLIError(f"--model {spec}: the factory failed ({type(e).__name__}: {_first_line(e)}); it must "
                           f"take no arguments and return an lf.Denoiser") from None
        if not isinstance(den, Denoiser):
            raise CLIError(f"--model {spec}: the factory returned {type(den).__name__}, not an lf.Denoiser")
        if guidance != 1.0:
            if den.null_cond is None:
                raise CLIError(f"--guidance needs a model with a null condition; {spec} has none")
            den = den.with_guidance(guidance)
        return den
    if os.path.exists(spec):
        raise CLIError(f"--model {spec}: not a folder (a local diffusers model folder is expected)")
    raise CLIError(f"unknown --model {spec!r}: use {', '.join(BUILTIN)}, module.path:factory or a diffusers folder")


def _load_diffusers_dir(path: str, guidance: float):
    from .io import read_json

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
    config = read_json(cfg, "UNet config")
    cls_name = config.get("_class_name", "UNet2DModel") if isinstance(config, dict) else None
    if cls_name not in DIFFUSERS_NETWORKS:
        raise CLIError(f"--model {path}: {cfg} names class {cls_name!r}; ldd-fast loads only "
                       f"{', '.join(DIFFUSERS_NETWORKS)} from a folder")
    sched_cfg = os.path.join(sched_dir, "scheduler_config.json")
    if not os.path.isfile(sched_cfg):
        raise CLIError(f"--model {path}: no scheduler_config.json in {sched_dir}")
    scheduler = read_json(sched_cfg, "scheduler config")
    if guidance != 1.0:
        raise CLIError("--guidance with a diffusers folder needs a null condition: use the Python API "
                       "(lf.from_diffusers(unet, scheduler, guidance_scale=..., null_cond=...))")
    logs = diffusers.utils.logging
    verbosity = logs.get_verbosity()
    logs.set_verbosity(logs.CRITICAL)  # its warnings would break the one-line error; we report failures
    try:
        # safetensors only: a pickled .bin checkpoint could run code while loading.
        unet = getattr(diffusers, cls_name).from_pretrained(unet_dir, local_files_only=True, use_safetensors=True,
                                                            low_cpu_mem_usage=False).eval()
    except Exception as e:  # noqa: BLE001 - diffusers and safetensors raise many types
        raise CLIError(f"--model {path}: cannot load the {cls_name} weights in {unet_dir} ({type(e).__name__}: "
                       f"{_first_line(e)}); ldd-fast reads safetensors weights only") from None
    finally:
        logs.set_verbosity(verbosity)
    return from_diffusers(unet, scheduler)


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
        return discretize(den.noise, DEFAULT_NFE if nfe is None else nfe, spec, solver=solver)
    if spec.endswith(".json") or os.path.exists(spec):
        sched = Schedule.load(spec)
        if nfe is not None and nfe != sched.nfe:
            raise CLIError(f"--nfe {nfe} differs from the schedule file's nfe {sched.nfe}")
        return sched
    raise CLIError(f"--schedule {spec!r}: expected one of {', '.join(KIND_CHOICES)} or a schedule .json file")


def _guidance(args) -> float:
    return 1.0 if args.guidance is None else args.guidance


def _read_prompts(path: str) -> list[str]:
    from .io import read_text

    prompts = [line.strip() for line in read_text(path, "--prompts file").splitlines() if line.strip()]
    if not prompts:
        raise CLIError(f"--prompts {path}: no prompts (one per line)")
    return prompts


def _load_pipeline(args):
    """A local diffusers pipeline folder through lf.from_pipeline (safetensors only, no custom code)."""
    from .io import read_json
    from .pipelines import PIPELINES, from_pipeline

    path = args.pipeline
    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        raise CLIError(f"--pipeline {path}: no model_index.json (a folder written by pipe.save_pretrained)")
    cls_name = read_json(index, "pipeline index").get("_class_name")
    if cls_name not in PIPELINES:
        raise CLIError(f"--pipeline {path}: {index} names {cls_name!r}; ldd-fast loads only {', '.join(PIPELINES)}")
    try:
        import diffusers
    except ImportError:
        raise CLIError("--pipeline needs the [diffusers] extra and transformers") from None
    logs = diffusers.utils.logging
    verbosity = logs.get_verbosity()
    logs.set_verbosity(logs.CRITICAL)
    try:
        pipe = getattr(diffusers, cls_name).from_pretrained(path, local_files_only=True, use_safetensors=True)
    except Exception as e:  # noqa: BLE001 - diffusers / transformers raise many types
        raise CLIError(f"--pipeline {path}: cannot load the {cls_name} ({type(e).__name__}: {_first_line(e)}); "
                       f"ldd-fast reads safetensors weights only") from None
    finally:
        logs.set_verbosity(verbosity)
    return from_pipeline(pipe, height=args.height, width=args.width, guidance_scale=args.guidance,
                         negative_prompt=args.negative_prompt, max_sequence_length=args.max_sequence_length)


def _labels(den, label: int | None, n: int):
    """--label as one condition per sample, checked against the model as every executor checks it."""
    if label is None:
        return None
    if den.num_classes is None:
        raise CLIError("--label needs a model conditioned on class labels; this one has no class count "
                       "(lf.Denoiser(..., num_classes=...))")
    from .denoiser import check_labels

    cond = torch.full((n,), label, dtype=torch.long)
    check_labels(cond, den.num_classes, what="--label")
    return cond


def setup_compute(args) -> torch.device:
    """Pin torch's threads (and say how many, when the default was chosen) and resolve --device."""
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    if args.threads is None:
        print(f"ldd-fast: {threads} CPU thread(s) of {os.cpu_count()} cores (the default: half, at most 8; "
              f"--threads N to change)", flush=True)
    spec = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise CLIError(f"--device {spec!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {spec}: this machine has no CUDA GPU that torch can use")
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {spec}: ldd-fast runs on cpu or cuda")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CLIError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) here")
    return device


# ----- commands ---------------------------------------------------------------------------

def cmd_sample(args) -> int:
    from .io import atomic_write
    from .sample import sample
    from .teacher import noise_for

    out = check_output_path(args.out, "--out")
    device = setup_compute(args)
    den = load_model(args.model, guidance=_guidance(args)).to(device)
    sched = load_schedule(args.schedule, den, args.nfe, args.solver or "unipc")
    solver = args.solver or sched.solver or "unipc"
    cond = _labels(den, args.label, args.n)
    cond = None if cond is None else cond.to(device)
    z = noise_for(args.n, sample_shape(den, args.shape), args.seed).to(device)
    with torch.no_grad():
        x = sample(den, z, sched, solver=solver, order=args.order, variant=args.variant, cond=cond,
                   force=args.force)
    x = x.cpu()
    if out.endswith(".pt"):
        atomic_write(out, lambda tmp: torch.save(x, tmp))
    else:
        from .plots import save_grid

        save_grid(x, out)
    print(f"{args.n} samples, {solver} nfe={sched.nfe} ({sched.origin or 'schedule file'}) -> {args.out}")
    return 0


def cmd_learn(args) -> int:
    from .learn import CHECKPOINT, learn
    from .schedule import Schedule
    from .teacher import TeacherSpec

    out = check_output_path(args.out, "--out")
    work = args.work_dir or os.path.splitext(args.out)[0] + "_ld3"
    if os.path.exists(work) and not os.path.isdir(work):
        raise CLIError(f"--work-dir {work}: exists and is not a folder")
    init = None if args.init == "uniform" else "best" if args.init == "best" else Schedule.load(args.init)
    prompts = _read_prompts(args.prompts) if args.pipeline else None
    device = setup_compute(args)
    den = _load_pipeline(args) if args.pipeline else load_model(args.model, guidance=_guidance(args))
    den = den.to(device)
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
        labels = torch.tensor([k for k in range(den.num_classes) if k != null])
        cond = lambda n, g: labels[torch.randint(0, len(labels), (n,), generator=g)]  # noqa: E731
    res = learn(den, solver=args.solver, order=args.order, nfe=args.nfe, shape=sample_shape(den, args.shape),
                mode=args.mode, teacher=teacher, n_train=args.n_train, n_valid=args.n_valid, loss=args.loss,
                cond=cond, init=init, out=work, resume=args.resume, seed=args.seed,
                decoder=den.decode if args.pixel_loss else None, checkpoint_calls=args.checkpoint_calls,
                coefficients=args.coefficients or False, **({"variant": args.variant} if args.variant else {}))
    res.schedule.save(out)
    m = res.schedule.metrics
    ld3 = f" (LD3's times alone: {m['valid_hard_ld3']:.4f})" if "valid_hard_ld3" in m else ""
    print(f"learned {args.solver} nfe={args.nfe}: held-out {m['loss']} {m['valid_hard_init']:.4f} -> "
          f"{m['valid_hard']:.4f}{ld3} in {res.stats['seconds']:.0f} s ({res.stats['network_calls']} batched calls)")
    print(f"schedule: {args.out}; checkpoints, teacher pairs and plots: {work}")
    return 0


def cmd_quality(args) -> int:
    from .metrics import FD_SAMPLES
    from .quality import FULL, QUICK, SOLVERS as QUALITY_SOLVERS, run, solver_label

    size = dict(FULL if args.full else QUICK)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out}: exists and is not a folder")
    solvers = QUALITY_SOLVERS
    if args.solvers:
        known = {solver_label(*s): s for s in QUALITY_SOLVERS}
        solvers = [known[s] for s in args.solvers]
    n = args.n or size["n"]
    if n < FD_SAMPLES:
        raise CLIError(f"-n must be at least {FD_SAMPLES} (the FD sample count)")
    if setup_compute(args).type != "cpu":
        raise CLIError("the quality benchmark runs on the CPU (its cached cells are CPU results); use --device cpu")
    run(models=args.models, n=n, nfes=args.nfe or size["nfes"], heun_nfes=args.heun_nfe or size["heun_nfes"],
        out=args.out, learned_dir=args.learned, solvers=solvers, n_boot=args.boot)
    print(f"wrote {os.path.join(args.out, 'quality.md')} (+ .csv, cells, plots)")
    return 0


def cmd_bench(args) -> int:
    from .bench import bench
    from .cond import map_cond

    for flag, path, _ in _bench_outputs(args):
        check_output_path(path, flag)
    device = setup_compute(args)
    cond_fn = None
    if args.pipeline:
        den = _load_pipeline(args).to(device)
        one = den.encode_prompt([args.prompt])
        cond_fn = lambda b: map_cond(lambda c: c[:1].expand(b, *c.shape[1:]).contiguous(), one)  # noqa: E731
    else:
        den = load_model(args.model, guidance=_guidance(args)).to(device)
        if den.guidance_scale != 1.0:
            cond_fn = lambda b: _labels(den, 1, b).to(device)  # noqa: E731
    shape = sample_shape(den, args.shape)
    scheds = {}
    for spec in args.schedule:
        sched = load_schedule(spec, den, args.nfe if spec in KIND_CHOICES else None, args.solver or "unipc")
        scheds[spec if spec in KIND_CHOICES else os.path.basename(spec)] = sched
    options = {"variant": args.variant} if args.variant else {}
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

        from .io import atomic_write_text

        atomic_write_text(args.json, json.dumps(res.to_json(), indent=1) + "\n")
    if args.md:
        from .io import atomic_write_text

        atomic_write_text(args.md, table)
    if args.plot:
        from .plots import plot_bench

        plot_bench(res, args.plot)
    if not res.rows:
        raise CLIError("no backend could run (see 'Not measured' above)")
    return 0


def cmd_plan(args) -> int:
    from .planner import CANDIDATES, plan_sampler

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out}: exists and is not a folder")
    device = setup_compute(args)
    den = load_model(args.model, guidance=_guidance(args)).to(device)
    cond_fn = (lambda b: _labels(den, 1, b).to(device)) if den.guidance_scale != 1.0 else None
    metrics, n_eval = None, args.n_eval
    if args.fd:
        from .metrics import FD_SAMPLES, DigitsMetrics

        metrics, n_eval = DigitsMetrics(), FD_SAMPLES
    chosen = [(s, o) for s, o in CANDIDATES if f"{s}{o}" in args.solvers]
    print(f"plan: budget {args.budget_ms:g} ms at batch {args.batch}, NFE <= {args.max_nfe}, {device}; timing the "
          f"backends ...", file=sys.stderr, flush=True)
    res = plan_sampler(den, budget_ms=args.budget_ms, batch=args.batch, max_nfe=args.max_nfe, candidates=chosen,
                       backends=args.backends, learn=args.learn, learn_top=args.learn_top,
                       learn_seconds=args.learn_seconds, n_select=args.n_select, n_eval=n_eval,
                       teacher_steps=args.teacher_steps, metrics=metrics, cache=args.cache, out=args.out,
                       device=device, threads=torch.get_num_threads(), cond_fn=cond_fn,
                       sample_shape=sample_shape(den, args.shape), repeats=args.repeats)
    print(res.markdown())
    print(f"wrote {os.path.join(args.out, 'schedule.json')} (+ plan.md, plan.json, plan.png); sample with: ldd-fast "
          f"sample --model {args.model} --schedule {os.path.join(args.out, 'schedule.json')} --solver "
          f"{res.best['solver_name']} --order {res.best['order']}")
    return 0


def cmd_export(args) -> int:
    from .export import build_tensorrt, to_onnx
    from .sample import sample
    from .schedule import Schedule

    check_output_path(args.onnx, "--onnx")
    if args.tensorrt:
        check_output_path(args.tensorrt, "--tensorrt")
    if args.timing_cache:
        check_output_path(args.timing_cache, "--timing-cache")
    sched = Schedule.load(args.schedule)
    device = setup_compute(args)
    den = load_model(args.model).to(device)
    shape = sample_shape(den, args.shape)
    batch = args.static_batch or 1
    z = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    cond = None
    if args.conditional or den.guidance_scale != 1.0:
        cond = torch.zeros(batch, dtype=torch.long, device=device)
    options = {"variant": args.variant} if args.variant else {}
    info = to_onnx(den, sched, args.onnx, z, solver=args.solver, order=args.order, cond=cond,
                   dynamic_batch=args.static_batch is None, dtype=torch.float16 if args.fp16 else None,
                   opset=args.opset, schedule_as_input=args.schedule_as_input, method=args.method,
                   force=args.force, **options)
    m = info.metadata
    print(f"wrote {info.path}" + (f" + {info.data_path}" if info.data_path else "")
          + f": {m['solver']}{m['order']}, nfe {m['nfe']}, inputs {', '.join(info.inputs)}, network {m['dtype']}, "
          f"{info.file_bytes / 2**20:.2f} MiB (one copy of the weights: {info.network_bytes / 2**20:.2f} MiB)")
    if args.verify:
        from .export import OnnxSampler

        runner = OnnxSampler(info.path)
        zz = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1)).to(device)
        cc = None if cond is None else torch.zeros(3, dtype=torch.long, device=device)
        with torch.no_grad():
            ref = sample(den, zz, sched, solver=args.solver, order=args.order, cond=cc, force=args.force,
                            **options)
        diff = float((runner(zz, cc) - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        print(f"onnxruntime vs eager sampler (batch 3): max|diff| / max|ref| = {diff:.2e}")
    if args.tensorrt:
        opt = args.opt_batch or args.max_batch or 64
        lo, hi = (batch, batch) if args.static_batch else (args.min_batch or 1, args.max_batch or 64)
        path = build_tensorrt(info.path, args.tensorrt, min_batch=lo, opt_batch=batch if args.static_batch else opt,
                              max_batch=hi, fp16=args.fp16, strongly_typed=args.strongly_typed,
                              timing_cache=args.timing_cache,
                              workspace=None if args.workspace is None else args.workspace << 20)
        print(f"wrote {path} (TensorRT engine, batch {lo}..{hi}) and {path}.json")
    return 0


def cmd_demo(args) -> int:
    from .demo import run

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out}: exists and is not a folder")
    device = setup_compute(args)
    return run(out=args.out, quick=args.quick, device=device, threads=torch.get_num_threads())


# ----- errors -----------------------------------------------------------------------------

# Library messages name Python arguments; the command line names its flags.
_CLI_WORDS = [(re.compile(r"[Pp]ass force=True"), "pass --force"), (re.compile(r"\bforce=True\b"), "--force"),
              (re.compile(r"pass resume=True \(--resume\)"), "pass --resume"),
              (re.compile(r"\bresume=True\b"), "--resume"),
              (re.compile(r"pass solver=\.\.\."), "pass --solver"),
              (re.compile(r"\bguidance_scale=(\S+)"), r"--guidance \1")]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def describe_error(e: BaseException) -> str:
    """One line for any error, in the command line's words."""
    if isinstance(e, OSError) and not isinstance(e, LddFastError) and e.filename is not None:
        msg = f"{e.strerror or _first_line(e)}: {e.filename}"
    elif isinstance(e, (LddFastError, ValueError, TypeError, OSError, ImportError, RuntimeError)):
        msg = _first_line(e)
    elif isinstance(e, MemoryError):
        msg = "out of memory (try a smaller -n or batch)"
    else:
        msg = (f"internal error {type(e).__name__}: {_first_line(e)} (please report it; LDD_FAST_TRACEBACK=1 "
               f"shows where)")
    for pattern, words in _CLI_WORDS:
        msg = pattern.sub(words, msg)
    return msg


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    threads = torch.get_num_threads()
    try:
        args = parse_args(argv)
        return args.func(args)
    except KeyboardInterrupt:
        print("ldd-fast: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error is one line; LDD_FAST_TRACEBACK=1 for bugs
        if os.environ.get("LDD_FAST_TRACEBACK") == "1":
            raise
        print(f"ldd-fast: error: {describe_error(e)}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # in-process callers (tests, notebooks) keep their setting


if __name__ == "__main__":
    sys.exit(main())
