"""What the commands load: a model (built-in, module:factory or a diffusers folder), a pipeline
folder, a schedule, prompts and class labels; each failure is a one-line CLIError naming the
argument or file."""
from __future__ import annotations

import importlib
import os
import sys

import torch

from ..exit_status import first_line
from .common import BUILTIN, DEFAULT_NFE, FLOW_KINDS, KIND_CHOICES, CLIError

DIFFUSERS_NETWORKS = ("UNet2DModel", "UNet2DConditionModel")


def load_model(spec: str, *, guidance: float = 1.0):
    """A Denoiser from --model; it carries `sample_shape` when known."""
    from ..denoiser import Denoiser

    if spec in BUILTIN:
        from ..zoo.builtin import load

        return load(spec, guidance_scale=guidance)
    if os.path.isdir(spec):
        return _load_diffusers_dir(spec, guidance)
    if ":" in spec and not os.path.exists(spec):
        mod_name, _, attr = spec.partition(":")
        module = _import_user_module(mod_name, spec)
        factory = getattr(module, attr, None)
        if factory is None:
            raise CLIError(f"--model {spec}: cannot import {attr!r} from {mod_name!r} (no such attribute)")
        if not callable(factory) or isinstance(factory, Denoiser):
            raise CLIError(f"--model {spec}: {attr!r} is a {type(factory).__name__}, not a factory (a function "
                           f"taking no arguments and returning an lf.Denoiser)")
        try:
            den = factory()
        except Exception as e:  # noqa: BLE001
            raise CLIError(f"--model {spec}: the factory failed ({type(e).__name__}: {first_line(e)}); it must "
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


def _import_user_module(mod_name: str, spec: str):
    """The module of --model module:factory, found in the current folder first, as `python -m` finds it (the
    `ldd-fast` script's own folder is what Python puts first otherwise)."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - importing user code can raise anything; name it
        raise CLIError(f"--model {spec}: cannot import {mod_name!r} ({type(e).__name__}: {first_line(e)})") from None
    finally:
        if added:
            sys.path.remove(cwd)


def _class_name(path: str, what: str, default=None) -> str | None:
    """`_class_name` of a diffusers config.json / model_index.json, or a CLIError naming the file."""
    from ..io import read_json

    config = read_json(path, what)
    if not isinstance(config, dict):
        raise CLIError(f"{path}: expected a JSON object, got {type(config).__name__}")
    name = config.get("_class_name", default)
    if not isinstance(name, str):
        raise CLIError(f"{path}: _class_name must be a string, got {type(name).__name__}")
    return name


def _import_diffusers(extra: str):
    try:
        import diffusers
    except ImportError:
        raise CLIError(f"{extra}: pip install -e '.[diffusers]'") from None
    return diffusers


def _load_diffusers_dir(path: str, guidance: float):
    from ..adapters import from_diffusers
    from ..io import read_json

    diffusers = _import_diffusers("a diffusers model folder needs the [diffusers] extra")
    unet_dir = os.path.join(path, "unet") if os.path.isdir(os.path.join(path, "unet")) else path
    sched_dir = os.path.join(path, "scheduler") if os.path.isdir(os.path.join(path, "scheduler")) else path
    cfg = os.path.join(unet_dir, "config.json")
    if not os.path.isfile(cfg):
        raise CLIError(f"--model {path}: no UNet config.json in {unet_dir}")
    cls_name = _class_name(cfg, "UNet config", "UNet2DModel")
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
    # safetensors only: a pickled .bin checkpoint could run code while loading.
    unet = _from_pretrained(diffusers, cls_name, unet_dir, f"--model {path}", f"{cls_name} weights",
                            low_cpu_mem_usage=False).eval()
    return from_diffusers(unet, scheduler)


def _from_pretrained(diffusers, cls_name: str, path: str, what: str, loaded: str, **kwargs):
    logs = diffusers.utils.logging
    verbosity = logs.get_verbosity()
    logs.set_verbosity(logs.CRITICAL)  # its warnings would break the one-line error; we report failures
    try:
        return getattr(diffusers, cls_name).from_pretrained(path, local_files_only=True, use_safetensors=True,
                                                            **kwargs)
    except Exception as e:  # noqa: BLE001 - diffusers, transformers and safetensors raise many types
        raise CLIError(f"{what}: cannot load the {loaded} in {path} ({type(e).__name__}: {first_line(e)}); "
                       f"ldd-fast reads safetensors weights only") from None
    finally:
        logs.set_verbosity(verbosity)


def load_pipeline(args):
    """A local diffusers pipeline folder through lf.from_pipeline (safetensors only, no custom code)."""
    from ..pipelines import from_pipeline

    path = args.pipeline
    cls_name = pipeline_class(path)
    diffusers = _import_diffusers("--pipeline needs the [pipelines] extra (diffusers and transformers)")
    pipe = _from_pretrained(diffusers, cls_name, path, f"--pipeline {path}", cls_name)
    frames = {} if args.frames is None else {"num_frames": args.frames}  # image families refuse it by name
    return from_pipeline(pipe, height=args.height, width=args.width, guidance_scale=args.guidance,
                         negative_prompt=args.negative_prompt, max_sequence_length=args.max_sequence_length, **frames)


def load_denoiser(args):
    """--pipeline when given, else --model."""
    if getattr(args, "pipeline", None):
        return load_pipeline(args)
    return load_model(args.model, guidance=guidance(args))


def guidance(args) -> float:
    return 1.0 if args.guidance is None else args.guidance


def sample_shape(den, override=None):
    if override:
        return tuple(override)
    shape = getattr(den, "sample_shape", None)
    if shape is None:
        raise CLIError("this model does not say its sample shape: pass --shape C H W")
    return tuple(shape)


def load_schedule(spec: str, den, nfe: int | None, solver: str, *, shift: float | None = None,
                  mu: float | None = None):
    """A hand-made kind (a flow grid takes --shift / --mu, else the pipeline's; "pipeline" the pipeline
    scheduler's own grid and solver) or a schedule file."""
    from ..schedule import Schedule, discretize

    nfe_or_default = DEFAULT_NFE if nfe is None else nfe
    if spec == "pipeline":
        return den.pipeline_schedule(nfe_or_default)
    if spec in FLOW_KINDS:
        grid = dict(getattr(den, "pipeline_grid", None) or {})
        if shift is not None or mu is not None or grid.get("kind") != spec:
            grid = {"shift": shift, "mu": mu}
        grid.pop("kind", None)
        return discretize(den.noise, nfe_or_default, spec, solver=solver, **grid)
    if spec in KIND_CHOICES:
        return discretize(den.noise, nfe_or_default, spec, solver=solver)
    if spec.endswith(".json") or os.path.exists(spec):
        sched = Schedule.load(spec)
        if nfe is not None and nfe != sched.nfe:
            raise CLIError(f"--nfe {nfe} differs from the schedule file's nfe {sched.nfe}")
        return sched
    raise CLIError(f"--schedule {spec!r}: expected one of {', '.join(KIND_CHOICES)} or a schedule .json file")


def pipeline_class(path: str) -> str:
    """The pipeline class a folder names (one of lf.pipelines.PIPELINES), from its model_index.json alone."""
    from ..pipelines import PIPELINES

    index = os.path.join(path, "model_index.json")
    if not os.path.isfile(index):
        raise CLIError(f"--pipeline {path}: no model_index.json (a folder written by pipe.save_pretrained)")
    cls_name = _class_name(index, "pipeline index")
    if cls_name not in PIPELINES:
        raise CLIError(f"--pipeline {path}: {index} names {cls_name!r}; ldd-fast loads only {', '.join(PIPELINES)}")
    return cls_name


def check_flow_kinds(args, specs) -> None:
    """A flow grid on a model known not to be a flow is refused before the model loads."""
    kinds = [s for s in specs if s in FLOW_KINDS]
    if not kinds:
        return
    if getattr(args, "pipeline", None):
        from ..pipelines import FAMILIES, PIPELINES

        cls_name = pipeline_class(args.pipeline)
        if not FAMILIES[PIPELINES[cls_name]].flow:
            raise CLIError(f"--schedule {kinds[0]} is a flow-matching grid; {args.pipeline} is a {cls_name} (a VP "
                           f"model): use time_uniform, logsnr, edm or pipeline")
    elif args.model in BUILTIN and args.model != "digits_flow":
        raise CLIError(f"--schedule {kinds[0]} is a flow-matching grid; {args.model} is not a flow (digits_flow is)")


def read_prompts(path: str) -> list[str]:
    from ..io import read_text

    prompts = [line.strip() for line in read_text(path, "--prompts file").splitlines() if line.strip()]
    if not prompts:
        raise CLIError(f"--prompts {path}: no prompts (one per line)")
    return prompts


MIN_PROMPTS_PER_SPLIT = 4  # fewer, and a choice made on them says little about other prompts


def split_prompts(prompts: list[str], what: str) -> tuple[list[str], list[str]]:
    """The prompts in two disjoint halves (choosing / learning, and held out), with a warning when a half is
    small."""
    if len(prompts) < 2:
        raise CLIError(f"--prompts: {what} needs at least 2 prompts (two disjoint halves), got {len(prompts)}")
    half = (len(prompts) + 1) // 2
    first, second = prompts[:half], prompts[half:]
    if len(second) < MIN_PROMPTS_PER_SPLIT:
        print(f"ldd-fast: warning: --prompts gives {len(first)} + {len(second)} prompts to the two halves of "
              f"{what}; fewer than {MIN_PROMPTS_PER_SPLIT} a half makes its figures say little about other "
              f"prompts", file=sys.stderr, flush=True)
    return first, second


def labels(den, label: int | None, n: int):
    """--label as one condition per sample, checked against the model as every executor checks it."""
    if label is None:
        return None
    if den.num_classes is None:
        raise CLIError("--label needs a model conditioned on class labels; this one has no class count "
                       "(lf.Denoiser(..., num_classes=...))")
    from ..denoiser import check_labels

    cond = torch.full((n,), label, dtype=torch.long)
    check_labels(cond, den.num_classes, what="--label")
    return cond
