"""Write a Triton model repository that serves a text-to-image pipeline with a fixed (learned) sampler.

    <repo_dir>/<name>/config.pbtxt        backend "python": prompt (BYTES) and seed (INT64) in, image (UINT8
                                          [H, W, 3]) out; dynamic batching, instances
    <repo_dir>/<name>/1/model.py          triton_pipeline_model.py, copied verbatim
    <repo_dir>/<name>/1/sampler.json      what model.py runs: the pipeline's class and lf.from_pipeline
                                          arguments, the backend, the schedule, the fingerprint
    <repo_dir>/<name>/1/schedule.json     the schedule
    <repo_dir>/<name>/1/pipeline/         the pipeline folder, copied (configs, tokenizers, safetensors weights;
                                          pickled weights are never copied nor loaded)
    <repo_dir>/<name>/1/sampler.onnx      backend "onnxruntime": the sampler graph of `ldd-fast export --pipeline`
                                          (prompt embeddings -> latents) and its manifest, sampler.manifest.json

One Python-backend model runs the three stages in one process: the pipeline's own text encoders
(`den.encode_prompt`), the sampler (lf.sample, or the exported graph under onnxruntime), the VAE decode
(`den.decode`). A request's image is what `ldd-fast sample --pipeline P --prompt "..." --seed s -n 1` makes,
as uint8 pixels (round((x + 1) * 127.5), the PNG's values). Guidance, the negative prompt and the image size
are fixed per repository. Video pipelines are refused (their output is frames, not an image).
"""
from __future__ import annotations

import os
import shutil

import torch

from .._version import __version__
from ..denoiser import Denoiser
from ..errors import InvalidArgument, InvalidArgumentType, boolean, device_of, path_like, string
from ..io import check_output_path, read_json
from ..sample import plan_for, sampler_options
from ..schedule import Schedule
from .triton_repository import (GRAPH_FILE, SAMPLER_FILE, SCHEDULE_FILE, VERSION, TritonRepository, _dims, _text,
                                copy_graph, instance_kind, serving_args, serving_lines, write_version)

PIPELINE_BACKENDS = ("eager", "onnxruntime")
PIPELINE_DIR = "pipeline"
FORMAT = "ldd-fast triton pipeline"
FORMAT_VERSION = 1
MAX_PROMPT_CHARS = 2000   # a request's prompt is cut off by the tokenizer long before this; more is refused
_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".msgpack", ".h5")
FROM_PIPELINE_ARGS = ("height", "width", "guidance_scale", "negative_prompt", "true_cfg_scale", "max_sequence_length")


def write_pipeline_repository(den: Denoiser, schedule: Schedule, repo_dir, *, pipeline_folder,
                              pipeline_args: dict | None = None, name: str = "ldd_pipeline",
                              backend: str = "eager", max_batch: int = 4, instances: int = 1,
                              solver: str | None = None, order: int | None = None, force: bool = False,
                              preferred_batch_sizes=None, max_queue_delay_us: int = 1000, threads: int | None = None,
                              device=None, fp16: bool = False, opset: int | None = None, graph=None,
                              **options) -> TritonRepository:
    """Write a repository whose model turns prompts and seeds into images with `den`'s pipeline and `schedule`.

    den: lf.from_pipeline(pipe, **pipeline_args) of the pipeline saved in `pipeline_folder` (its fingerprint is
        checked when the server loads the copy). pipeline_args: the lf.from_pipeline arguments den was made with
        (height, width, guidance_scale, negative_prompt, true_cfg_scale, max_sequence_length); model.py makes
        the same Denoiser from the copied folder. backend: "eager" (lf.sample) or "onnxruntime" (the sampler
        graph; text encoders and VAE stay in torch). fp16 / opset: the graph's; graph: the graph of
        `ldd-fast export --pipeline --onnx` (to_onnx's result), copied instead of exported again. The rest as
        write_repository.
    """
    if not isinstance(den, Denoiser) or getattr(den, "encode_prompt", None) is None:
        raise InvalidArgumentType("den must be a Denoiser from lf.from_pipeline (it encodes prompts and decodes)")
    if not isinstance(schedule, Schedule):
        raise InvalidArgumentType(f"schedule must be an lf.Schedule, got {type(schedule).__name__}")
    root = os.path.abspath(path_like(repo_dir, "repo_dir"))
    folder = os.path.abspath(path_like(pipeline_folder, "pipeline_folder"))
    index = read_json(os.path.join(folder, "model_index.json"), "pipeline index", InvalidArgument)
    cls_name = index.get("_class_name") if isinstance(index, dict) else None
    from ..pipelines import FAMILIES, PIPELINES

    if cls_name not in PIPELINES:
        raise InvalidArgument(f"{folder}: its model_index.json names {cls_name!r}, not one of {', '.join(PIPELINES)}")
    if FAMILIES[PIPELINES[cls_name]].video:
        raise InvalidArgument(f"{cls_name} makes video; the pipeline repository serves text-to-image pipelines "
                              "(an image per request)")
    pipeline_args = dict(pipeline_args or {})
    unknown = sorted(set(pipeline_args) - set(FROM_PIPELINE_ARGS))
    if unknown:
        raise InvalidArgument(f"pipeline_args: unknown {unknown}; lf.from_pipeline arguments here: "
                              f"{', '.join(FROM_PIPELINE_ARGS)}")
    pipeline_args.update(height=den.height, width=den.width)
    max_batch, instances, preferred, max_queue_delay_us, threads = serving_args(
        name, max_batch, instances, preferred_batch_sizes, max_queue_delay_us, threads)
    string(backend, "backend", PIPELINE_BACKENDS)
    boolean(force, "force")
    boolean(fp16, "fp16")
    if backend == "eager" and (fp16 or opset is not None or graph is not None):
        raise InvalidArgument("fp16 / opset / graph configure the exported graph; backend 'eager' writes none")
    options = sampler_options(options)
    plan = plan_for(den, schedule, solver=solver, order=order, force=force, **options)
    device = device_of(device) or next(den.parameters()).device

    model_dir = os.path.join(root, name)
    version_dir = os.path.join(model_dir, VERSION)
    os.makedirs(version_dir, exist_ok=True)
    config_path = check_output_path(os.path.join(model_dir, "config.pbtxt"), "Triton config")
    files = _copy_pipeline(folder, os.path.join(version_dir, PIPELINE_DIR))
    if backend == "onnxruntime":
        from ..export import to_onnx, write_pipeline_manifest

        if graph is not None:
            graph = copy_graph(graph, version_dir, den, schedule, plan, conditional=True, force=force)
        else:
            example = den.encode_prompt(["a photograph"])
            z = torch.zeros(1, *den.sample_shape, device=device)
            graph = to_onnx(den, schedule, os.path.join(version_dir, GRAPH_FILE), z, solver=plan.solver,
                            order=plan.order, cond=example, dynamic_batch=True,
                            dtype=torch.float16 if fp16 else None, opset=opset, force=force, **options)
        files += graph.files + [write_pipeline_manifest(graph, den, pipeline_folder=PIPELINE_DIR,
                                                        components=[k for k in index if not k.startswith("_")])]
    spec = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "ldd_fast": __version__, "backend": backend,
        "graph": GRAPH_FILE if graph is not None else None, "pipeline": PIPELINE_DIR, "class": cls_name,
        "from_pipeline": pipeline_args, "schedule": SCHEDULE_FILE, "solver": plan.solver, "order": plan.order,
        "options": dict(options), "force": force, "nfe": plan.nfe, "guidance": den.guidance_scale,
        "sample_shape": list(den.sample_shape), "image": [den.height, den.width, 3], "max_batch": max_batch,
        "max_prompt_chars": MAX_PROMPT_CHARS, "fingerprint": den.fingerprint(), "threads": threads,
    }
    files += write_version(version_dir, config_path, schedule, spec, "triton_pipeline_model.py",
                           _config(name, spec, schedule, max_batch=max_batch, instances=instances,
                                   kind=instance_kind(device), preferred=preferred, delay_us=max_queue_delay_us))
    return TritonRepository(root, model_dir, config_path, version_dir, tuple(files), graph, spec)


def _copy_pipeline(src: str, dst: str) -> list[str]:
    """The pipeline folder without pickled weights, copied to a temporary name and renamed (atomic as a whole)."""
    weights = [f for _, _, names in os.walk(src) for f in names if f.endswith(".safetensors")]
    if not weights:
        raise InvalidArgument(f"{src}: no safetensors weights (ldd-fast loads only safetensors)")
    work = dst + ".partial"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work, ignore=lambda _, names: [n for n in names if n.endswith(_PICKLES) or n == ".git"])
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.replace(work, dst)
    return [os.path.join(d, f) for d, _, names in os.walk(dst) for f in names]


def _config(name: str, spec: dict, schedule: Schedule, *, max_batch: int, instances: int, kind: str, preferred,
            delay_us: int) -> str:
    params = {"ldd_fast_version": __version__, "pipeline": spec["class"], "backend": spec["backend"],
              "solver": spec["solver"], "order": str(spec["order"]), "nfe": str(spec["nfe"]),
              "guidance": repr(spec["guidance"]), "schedule_origin": str(schedule.origin or ""),
              "sampler_file": SAMPLER_FILE}
    lines = [
        f"# Written by ldd-fast {__version__} (ldd_fast.serving.write_pipeline_repository): prompt + seed -> image.",
        f"name: {_text(name)}",
        "backend: \"python\"",
        f"max_batch_size: {max_batch}",
        "input [\n  {\n    name: \"prompt\"\n    data_type: TYPE_STRING\n    dims: [ 1 ]\n  },\n"
        "  {\n    name: \"seed\"\n    data_type: TYPE_INT64\n    dims: [ 1 ]\n    optional: true\n  }\n]",
        f"output [\n  {{\n    name: \"image\"\n    data_type: TYPE_UINT8\n    dims: {_dims(spec['image'])}\n  }}\n]",
    ]
    return "\n".join(lines + serving_lines(instances=instances, kind=kind, preferred=preferred, delay_us=delay_us,
                                            params=params)) + "\n"
