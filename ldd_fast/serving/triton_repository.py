"""Write a Triton Inference Server model repository that serves a fixed sampler.

    <repo_dir>/<name>/config.pbtxt        backend "python", inputs / output, dynamic batching, instances,
                                          parameters describing the sampler (for people and clients)
    <repo_dir>/<name>/1/model.py          triton_model.py, copied verbatim: the Python-backend model
    <repo_dir>/<name>/1/sampler.json      what model.py runs (backend, files, solver, guidance, labels)
    <repo_dir>/<name>/1/schedule.json     the schedule (lf.Schedule.save)
    <repo_dir>/<name>/1/sampler.onnx      backend "onnxruntime": the exported graph (+ sampler.onnx.data)
    <repo_dir>/<name>/1/model/            backend "eager": a built-in model's weights, or a diffusers folder's UNet
                                          and scheduler config
    <repo_dir>/<name>/1/sampler.plan      backend "tensorrt": the engine built from sampler.onnx (+ .plan.json)
    <repo_dir>/<native>/                  native=: the same graph (engine) for Triton's own onnxruntime_onnx
                                          (tensorrt_plan) backend, for servers that have it: model.onnx / model.plan

model.py reads only files of its own version folder, so a repository can be copied to the serving machine
as it is. The schedule and solver belong to the version (a new schedule is a new version), which is why
model.py reads sampler.json, not config.pbtxt's parameters (those describe version 1 as written).
Every file goes through ldd_fast.io's atomic writer (the graph through to_onnx); config.pbtxt is written
last, so a Triton server polling the folder never sees a model whose files are still being written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass

import torch

from .._version import __version__
from ..cond import batch_size, is_cond, leaves, map_cond, structure
from ..cond import names as cond_names
from ..denoiser import Denoiser
from ..errors import (InvalidArgument, InvalidArgumentType, device_of, integer, optional_boolean, boolean,
                      path_like, shape_of, string)
from ..io import atomic_write, atomic_write_bytes, atomic_write_text, check_output_path, read_json
from ..sample import plan_for, sampler_options
from ..zoo import weight_files
from ..schedule import Schedule

BACKENDS = ("onnxruntime", "eager", "tensorrt")
VERSION = "1"                  # the one version this increment writes
SAMPLER_FILE = "sampler.json"  # what model.py runs
MODEL_FILE = "model.py"
SCHEDULE_FILE = "schedule.json"
GRAPH_FILE = "sampler.onnx"
ENGINE_FILE = "sampler.plan"   # backend "tensorrt": the engine built from the graph (+ sampler.plan.json)
NATIVE_PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
DIFFUSERS_DIR = "model"        # a copied diffusers folder (eager backend)
FORMAT = "ldd-fast triton sampler"
FORMAT_VERSION = 1
DIFFUSERS_NETWORKS = ("UNet2DModel", "UNet2DConditionModel")
# A Triton model name is a folder name in the repository: no separators, no hidden or parent folder.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class TritonRepository:
    """What write_repository wrote."""
    root: str            # the repository folder (tritonserver --model-repository)
    model_dir: str       # root/<name>
    config_path: str     # root/<name>/config.pbtxt
    version_dir: str     # root/<name>/1
    files: tuple         # every file written, absolute paths
    graph: object        # the OnnxExport of backend "onnxruntime", else None
    sampler: dict        # the contents of sampler.json


def check_model_name(name) -> str:
    """A Triton model name that is also a safe folder name (it becomes <repo>/<name>)."""
    string(name, "name")
    if not _NAME.fullmatch(name):
        raise InvalidArgument(f"name {name!r:.60}: a Triton model name here is 1-128 letters, digits, '_', '.' or "
                              f"'-', starting with a letter or digit (it is a folder of the repository)")
    return name


def write_repository(den: Denoiser, schedule: Schedule, repo_dir, *, model: str | None = None,
                     name: str = "ldd_sampler", backend: str = "onnxruntime", max_batch: int = 64,
                     instances: int = 1, solver: str | None = None, order: int | None = None,
                     conditional: bool | None = None, shape=None, device=None, dtype: torch.dtype | None = None,
                     opset: int | None = None, schedule_as_input: bool = False, force: bool = False,
                     preferred_batch_sizes=None, max_queue_delay_us: int = 1000, threads: int | None = None,
                     fp16: bool = False, native: bool | str = False, tensorrt_options: dict | None = None,
                     cond=None, graph=None, **options) -> TritonRepository:
    """Write a Triton model repository whose Python-backend model runs `lf.sample(den, z, schedule)`.

    Args:
        den: the model (as loaded: with its guidance scale).
        schedule: the lf.Schedule (checked against den as lf.plan_for checks it, unless force=True).
        repo_dir: the repository folder (made if missing); the model goes to repo_dir/<name>/.
        model: how the model was named (`--model`): a built-in name ("digits") or a local diffusers folder.
            Needed by backend "eager", which reloads the model inside Triton from the repository; default:
            den.name for a built-in model. A `module:factory` model imports user code the repository does not
            hold: serve it with backend "onnxruntime".
        backend: "onnxruntime" (the exported graph, `ldd_fast.export.OnnxSampler`), "eager" (`lf.sample`,
            bit-identical to it for a lone request) or "tensorrt" (an engine built here from the graph,
            `TensorRTSampler`: needs tensorrt and an NVIDIA GPU, device="cuda"; profile batch 1 .. max_batch).
        max_batch: Triton's max_batch_size: the most samples one sampler call takes (requests are batched).
        instances: model instances Triton runs (each loads its own sampler).
        solver, order, force, **options: as for lf.sample (default: the schedule's solver and order).
        conditional: whether requests may carry class labels (`cond`); default: when the model has a label
            count (den.num_classes) or guides. A guided model must be conditional.
        shape: the sample shape (default: den.sample_shape).
        device: where the instances run: a CUDA device gives KIND_GPU instances, else KIND_CPU (default:
            the device of den's parameters).
        dtype, opset, schedule_as_input: the exported graph's (backend "onnxruntime" only; see to_onnx).
        preferred_batch_sizes: Triton's dynamic batcher sends a batch at once when it reaches one of these
            (default: [max_batch]).
        max_queue_delay_us: how long the batcher waits for more requests before it sends a smaller batch.
        threads: CPU instances: each one's torch (and onnxruntime) intra-op threads (default: the libraries'
            own, one per core, which oversubscribes the cores when several instances run).
        fp16: the network in float16 inside the graph (onnxruntime) and the engine (tensorrt).
        native: also write the graph (onnxruntime) or the engine (tensorrt) as a model of Triton's own
            onnxruntime_onnx / tensorrt_plan backend, named `native` (True: "<name>_native"), for a server that
            has that backend. Its inputs and output are the graph's (z, cond..., sample); no seed input, no
            request checks beyond Triton's own.
        tensorrt_options: build_tensorrt's other arguments (strongly_typed, timing_cache, workspace).
        graph: the sampler's graph exported already (what to_onnx returned, of den, schedule and the solver, with a
            dynamic batch): copied into the repository instead of exported again (backends onnxruntime, tensorrt).
        cond: for a model conditioned on tensors (prompt embeddings, a dict or tuple of them), an example
            condition with a batch dimension: the repository then takes one input per tensor, named as the
            exported graph's inputs (cond, or cond_0, cond_1, ..., or cond_<key>), each required in every
            request, of the example's dtype and per-row shape. Without it the condition is class labels.
    """
    # Every argument before any file is touched.
    if not isinstance(den, Denoiser):
        raise InvalidArgumentType(f"expected an lf.Denoiser, got {type(den).__name__}")
    if not isinstance(schedule, Schedule):
        raise InvalidArgumentType(f"schedule must be an lf.Schedule, got {type(schedule).__name__}")
    root = os.path.abspath(path_like(repo_dir, "repo_dir"))
    max_batch, instances, preferred, max_queue_delay_us, threads = serving_args(
        name, max_batch, instances, preferred_batch_sizes, max_queue_delay_us, threads)
    string(backend, "backend", BACKENDS)
    optional_boolean(conditional, "conditional")
    boolean(schedule_as_input, "schedule_as_input")
    boolean(force, "force")
    boolean(fp16, "fp16")
    if not isinstance(native, (bool, str)):
        raise InvalidArgumentType(f"native must be a bool or a model name, got {type(native).__name__}")
    native_name = (f"{name}_native" if native is True else check_model_name(native)) if native else None
    if native_name == name:
        raise InvalidArgument(f"native model name {native_name!r} is the Python-backend model's own name")
    if tensorrt_options is not None and not isinstance(tensorrt_options, dict):
        raise InvalidArgumentType(f"tensorrt_options must be a dict, got {type(tensorrt_options).__name__}")
    if tensorrt_options and backend != "tensorrt":
        raise InvalidArgument("tensorrt_options configure the engine of backend 'tensorrt'")
    if model is not None:
        string(model, "model")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise InvalidArgumentType(f"dtype must be a torch dtype or None, got {type(dtype).__name__}")
    if opset is not None:
        integer(opset, "opset")
    options = sampler_options(options)
    shape = shape if shape is not None else getattr(den, "sample_shape", None)
    if shape is None:
        raise InvalidArgument("the model does not say its sample shape (den.sample_shape): pass shape=(C, H, W)")
    shape = shape_of(shape, "shape")
    device = device_of(device) or next((p.device for p in den.parameters()), torch.device("cpu"))
    if backend == "eager":
        graph_only = {"dtype": dtype is not None, "opset": opset is not None, "schedule_as_input": schedule_as_input,
                      "fp16": fp16, "native": bool(native), "graph": graph is not None}
        given = [k for k, v in graph_only.items() if v]
        if given:
            raise InvalidArgument(f"{', '.join(given)} configure(s) the exported graph; backend 'eager' runs "
                                  f"lf.sample on the model as loaded: use backend 'onnxruntime' or 'tensorrt'")
    if fp16 and dtype not in (None, torch.float16):
        raise InvalidArgument(f"fp16 runs the network in float16; dtype={dtype} says otherwise")
    if fp16:
        dtype = torch.float16
    if graph is not None and getattr(graph, "schedule_as_input", False):
        schedule_as_input = True  # the given graph takes its tables as inputs
    if native and schedule_as_input:
        raise InvalidArgument("native with schedule_as_input: the schedule's tables would be inputs every client of "
                              "the native model sends; export the schedule baked in")
    if backend == "tensorrt":
        from ..export.tensorrt_engine import _tensorrt

        _tensorrt()  # MissingDependency naming the extra, before anything is written
        if device.type != "cuda":
            raise InvalidArgument("backend 'tensorrt' builds and runs a TensorRT engine on an NVIDIA GPU: pass "
                                  f"device='cuda' (got {device})")
    plan = plan_for(den, schedule, solver=solver, order=order, force=force, **options)
    guidance = den.guidance_scale
    tensors = _tensor_condition(den, cond, conditional)
    conditional = True if tensors else _conditional(den, conditional)
    null_label = _null_label(den) if conditional and not tensors else None
    source = _model_source(den, model) if backend == "eager" else None

    model_dir = os.path.join(root, name)
    version_dir = os.path.join(model_dir, VERSION)
    if os.path.exists(root) and not os.path.isdir(root):
        raise NotADirectoryError(f"the Triton repository {root} exists and is not a folder")
    os.makedirs(version_dir, exist_ok=True)
    config_path = check_output_path(os.path.join(model_dir, "config.pbtxt"), "Triton config")
    for f in (MODEL_FILE, SAMPLER_FILE, SCHEDULE_FILE):
        check_output_path(os.path.join(version_dir, f), f"Triton model's {f}")

    files = []
    if backend in ("onnxruntime", "tensorrt"):
        from ..export import to_onnx

        example_z = torch.zeros(1, *shape, device=device)
        example_cond = torch.full((1,), null_label if null_label is not None else 0, dtype=torch.long,
                                  device=device) if conditional else None
        if tensors:
            example_cond = map_cond(lambda c: c[:1].to(device), cond)
        if graph is not None:  # exported already (export --onnx with --triton-repo): copied, not exported twice
            graph = copy_graph(graph, version_dir, den, schedule, plan, conditional=conditional, force=force)
        else:
            graph = to_onnx(den, schedule, os.path.join(version_dir, GRAPH_FILE), example_z, solver=plan.solver,
                            order=plan.order, cond=example_cond, dynamic_batch=True, dtype=dtype, opset=opset,
                            schedule_as_input=schedule_as_input, force=force, **options)
        files += graph.files
        if backend == "tensorrt":
            from ..export import build_tensorrt

            engine = build_tensorrt(graph.path, os.path.join(version_dir, ENGINE_FILE), min_batch=1,
                                    opt_batch=max(preferred), max_batch=max_batch, fp16=fp16,
                                    **(tensorrt_options or {}))
            files += [engine, engine + ".json"]
    elif "diffusers" in source:
        files += _copy_diffusers(model, os.path.join(version_dir, DIFFUSERS_DIR))
    elif "builtin" in source:  # the weights travel with the repository, not with the serving machine's ldd-fast
        files += copy_files((f, os.path.join(version_dir, DIFFUSERS_DIR, os.path.basename(f)))
                            for f in weight_files(source["builtin"]))
        source["weights"] = DIFFUSERS_DIR
    sampler = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "ldd_fast": __version__,
        "backend": backend, "graph": GRAPH_FILE if graph is not None else None,
        "engine": ENGINE_FILE if backend == "tensorrt" else None, "model": source,
        "schedule": SCHEDULE_FILE, "solver": plan.solver, "order": plan.order, "options": dict(options),
        "force": force, "nfe": plan.nfe, "guidance": guidance, "sample_shape": list(shape),
        "conditional": conditional, "num_classes": den.num_classes if conditional and not tensors else None,
        "condition": tensors,
        "null_label": null_label, "max_batch": max_batch, "fingerprint": den.fingerprint(), "threads": threads,
    }
    kind = instance_kind(device)
    files += write_version(version_dir, config_path, schedule, sampler, "triton_model.py",
                           config_text(name, sampler, schedule, max_batch=max_batch, instances=instances, kind=kind,
                                       preferred=preferred, delay_us=max_queue_delay_us))
    if native_name:
        files += write_native(root, native_name, backend, graph, os.path.join(version_dir, ENGINE_FILE),
                              max_batch=max_batch, instances=instances, kind=kind, preferred=preferred,
                              delay_us=max_queue_delay_us)
    return TritonRepository(root, model_dir, config_path, version_dir, tuple(files), graph, sampler)


def serving_args(name, max_batch, instances, preferred_batch_sizes, max_queue_delay_us, threads):
    """The checked arguments every repository writer takes: (max_batch, instances, preferred batch sizes, queue
    delay, threads)."""
    check_model_name(name)
    max_batch = integer(max_batch, "max_batch", 1)
    instances = integer(instances, "instances", 1)
    max_queue_delay_us = integer(max_queue_delay_us, "max_queue_delay_us", 0)
    threads = None if threads is None else integer(threads, "threads", 1)
    return max_batch, instances, _preferred(preferred_batch_sizes, max_batch), max_queue_delay_us, threads


def instance_kind(device: torch.device) -> str:
    return "KIND_GPU" if device.type == "cuda" else "KIND_CPU"


def write_version(version_dir: str, config_path: str, schedule: Schedule, spec: dict, template: str,
                  config: str) -> list[str]:
    """The files every repository version ends with: schedule.json, sampler.json (`spec`), model.py (the
    `template` beside this file, copied verbatim), and config.pbtxt last, so a server polling the repository
    never sees a model whose files are still being written."""
    schedule_path = os.path.join(version_dir, SCHEDULE_FILE)
    schedule.save(schedule_path)
    sampler_path = os.path.join(version_dir, SAMPLER_FILE)
    atomic_write_text(sampler_path, json.dumps(spec, indent=1) + "\n")
    model_path = os.path.join(version_dir, MODEL_FILE)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), template), "rb") as f:
        atomic_write_bytes(model_path, f.read())
    atomic_write_text(config_path, config)
    return [schedule_path, sampler_path, model_path, config_path]


def _preferred(sizes, max_batch: int) -> list[int]:
    if sizes is None:
        return [max_batch]
    if not isinstance(sizes, (list, tuple)) or not sizes:
        raise InvalidArgumentType(f"preferred_batch_sizes must be a non-empty list of ints, got {sizes!r:.60}")
    out = sorted({integer(s, "preferred_batch_sizes", 1) for s in sizes})
    if out[-1] > max_batch:
        raise InvalidArgument(f"preferred_batch_sizes {out} exceed max_batch {max_batch}")
    return out


def _conditional(den: Denoiser, conditional: bool | None) -> bool:
    guided = den.guidance_scale != 1.0
    if conditional is None:
        conditional = den.num_classes is not None or guided
    if guided and not conditional:
        raise InvalidArgument(f"the model guides (guidance_scale={den.guidance_scale:g}) and needs a condition: "
                              f"the repository must be conditional")
    return conditional


_TYPES = {torch.float32: "TYPE_FP32", torch.float16: "TYPE_FP16", torch.float64: "TYPE_FP64",
          torch.bfloat16: "TYPE_BF16", torch.int64: "TYPE_INT64", torch.int32: "TYPE_INT32"}


def _tensor_condition(den: Denoiser, cond, conditional) -> dict | None:
    """The request inputs of a tensor condition ({"structure", "inputs": [{name, dtype, shape}]}), or None."""
    if cond is None:
        return None
    if not is_cond(cond):
        raise InvalidArgumentType(f"cond must be an example condition (a tensor or a tuple / dict of tensors with "
                                  f"a batch dimension), got {type(cond).__name__}")
    if den.num_classes is not None:
        raise InvalidArgument("this model takes class labels (num_classes is set): leave cond out, requests send "
                              "labels")
    if conditional is False:
        raise InvalidArgument("cond describes the condition inputs; conditional=False says there are none")
    den.check_cond(cond, batch_size(cond) or 1, values=False)
    inputs = []
    for name, leaf in zip(cond_names(cond), leaves(cond)):
        if leaf.dtype not in _TYPES:
            raise InvalidArgument(f"cond: {name} has dtype {leaf.dtype}, which a Triton input here cannot carry")
        inputs.append({"name": name, "dtype": str(leaf.dtype).replace("torch.", ""), "shape": list(leaf.shape[1:])})
    return {"structure": structure(cond), "inputs": inputs}


def _null_label(den: Denoiser) -> int | None:
    """The label a request without `cond` gets (the model's unconditional class), or None when it has none.
    The repository's `cond` input holds class labels; a model whose condition is something else (prompt
    embeddings) is not served by this increment."""
    null = den.null_cond
    if null is None:
        return None
    if not isinstance(null, torch.Tensor) or null.is_floating_point() or null.is_complex() or null.numel() != 1:
        raise InvalidArgument("the Triton repository takes class labels as its condition; this model's null "
                              "condition is not one label: pass cond= an example condition (its tensors become "
                              "the repository's inputs), or serve a pipeline with write_pipeline_repository")
    return int(null.reshape(()))


def _model_source(den: Denoiser, model: str | None) -> dict:
    """How model.py reloads the model (backend "eager"): a built-in name, or a diffusers folder it copies."""
    from ..zoo import available

    builtin = available()
    if model is None:
        model = getattr(den, "name", None)
        if model not in builtin:
            raise InvalidArgument("backend 'eager' reloads the model inside Triton: pass model= a built-in name or a "
                                  "diffusers folder, or use backend 'onnxruntime'")
    if model in builtin:
        return {"builtin": model}
    if os.path.isdir(model):
        if den.guidance_scale != 1.0:
            raise InvalidArgument(f"model {model}: backend 'eager' reloads a diffusers folder unguided; its guidance "
                                  f"({den.guidance_scale:g}) cannot be rebuilt from the folder: use backend "
                                  f"'onnxruntime'")
        config = read_json(os.path.join(_sub(model, "unet"), "config.json"), "UNet config", InvalidArgument)
        cls_name = config.get("_class_name", "UNet2DModel") if isinstance(config, dict) else None
        if cls_name not in DIFFUSERS_NETWORKS:
            raise InvalidArgument(f"model {model}: its UNet config names class {cls_name!r}, not one of "
                                  f"{', '.join(DIFFUSERS_NETWORKS)}")
        return {"diffusers": DIFFUSERS_DIR, "class": cls_name}
    raise InvalidArgument(f"model {model!r}: backend 'eager' reloads the model inside Triton from the repository, "
                          f"which holds a built-in name or a copied diffusers folder, never Python code "
                          f"(module:factory): use backend 'onnxruntime'")


def copy_files(pairs) -> list[str]:
    """Copy each (source, target) file, written atomically (its folder made); returns the targets."""
    pairs = list(pairs)
    for src, target in pairs:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        atomic_write(target, lambda tmp, src=src: shutil.copyfile(src, tmp))
    return [target for _, target in pairs]


def _graph_copies(graph, folder: str, name: str) -> list[tuple[str, str]]:
    """(source, target) of an exported graph renamed folder/name; its data file keeps the name the graph
    references."""
    data = [(graph.data_path, os.path.join(folder, os.path.basename(graph.data_path)))] if graph.data_path else []
    return [(graph.path, os.path.join(folder, name))] + data


def _sub(folder: str, part: str) -> str:
    """A diffusers folder holds its UNet and scheduler either in subfolders or at its top (as `--model` reads it)."""
    sub = os.path.join(folder, part)
    return sub if os.path.isdir(sub) else folder


def _copy_diffusers(folder: str, dst: str) -> list[str]:
    """The files `--model DIR` reads (UNet config + safetensors weights, scheduler config), as dst/unet and
    dst/scheduler; a pickled .bin is never copied (nor ever loaded)."""
    unet_dir, sched_dir = _sub(folder, "unet"), _sub(folder, "scheduler")
    wanted = [(unet_dir, n, "unet") for n in sorted(os.listdir(unet_dir))
              if n == "config.json" or n.startswith("diffusion_pytorch_model") and ".safetensors" in n]
    wanted.append((sched_dir, "scheduler_config.json", "scheduler"))
    if not any(".safetensors" in n for _, n, _ in wanted):
        raise InvalidArgument(f"model {folder}: no safetensors weights (diffusion_pytorch_model.safetensors) in "
                              f"{unet_dir}")
    return copy_files((os.path.join(src_dir, file), os.path.join(dst, part, file)) for src_dir, file, part in wanted)


def copy_graph(graph, version_dir: str, den: Denoiser, schedule: Schedule, plan, *, conditional: bool,
               force: bool):
    """An exported graph copied to version_dir/sampler.onnx (its data file keeps the name the graph references)
    after checking that it is this sampler's: the model, the schedule, the solver, a dynamic batch."""
    from ..export import OnnxExport

    if not isinstance(graph, OnnxExport):
        raise InvalidArgumentType(f"graph must be what to_onnx returned (an OnnxExport), got {type(graph).__name__}")
    meta = graph.metadata
    wrong = [what for what, ok in (
        ("the model (fingerprint)", force or meta.get("fingerprint") == den.fingerprint()),
        ("the schedule", meta.get("schedule") == schedule.to_dict()),
        ("the solver", (meta.get("solver"), meta.get("order")) == (plan.solver, plan.order)),
        ("a dynamic batch", meta.get("dynamic_batch")),
        ("the condition input", bool(meta.get("conditional")) == bool(conditional))) if not ok]
    if wrong:
        raise InvalidArgument(f"graph {graph.path} is not this repository's sampler: it differs in "
                              f"{', '.join(wrong)}; export it again or leave graph out")
    targets = copy_files(_graph_copies(graph, version_dir, GRAPH_FILE))
    return dataclasses.replace(graph, path=targets[0], data_path=targets[1] if graph.data_path else None)


# ----- the native models --------------------------------------------------------------------------------

# ONNX element types -> Triton's
_TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 7: "TYPE_INT64", 6: "TYPE_INT32", 16: "TYPE_BF16"}


def graph_signature(graph_path: str) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) of an exported graph: name, Triton data type, dims without the batch axis."""
    from ..export._deps import require

    onnx = require("onnx", "the native Triton model")
    model = onnx.load(graph_path, load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def describe(values):
        out = []
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            dims = [d.dim_value if d.dim_value else -1 for d in t.shape.dim]
            if t.elem_type not in _TRITON_TYPES:
                raise InvalidArgument(f"graph {graph_path}: {v.name} has ONNX element type {t.elem_type}, which this "
                                      "writer does not map to a Triton type")
            out.append({"name": v.name, "data_type": _TRITON_TYPES[t.elem_type], "dims": dims[1:]})
        return out

    return describe(model.graph.input), describe(model.graph.output)


def write_native(root: str, name: str, backend: str, graph, engine_path: str, *, max_batch: int, instances: int,
                 kind: str, preferred, delay_us: int) -> list[str]:
    """<root>/<name>: the graph (engine) as a model of Triton's onnxruntime_onnx (tensorrt_plan) backend."""
    platform, file = NATIVE_PLATFORMS[backend]
    inputs, outputs = graph_signature(graph.path)
    version_dir = os.path.join(root, name, VERSION)
    os.makedirs(version_dir, exist_ok=True)
    config_path = check_output_path(os.path.join(root, name, "config.pbtxt"), "native Triton config")
    files = copy_files([(engine_path, os.path.join(version_dir, file))] if backend == "tensorrt"
                       else _graph_copies(graph, version_dir, file))

    def tensor(v):
        # a per-row scalar (class labels [B]) is dims [1] to Triton, reshaped to the graph's [] per row
        dims, reshape = (v["dims"], "") if v["dims"] else ([1], "\n    reshape: { shape: [ ] }")
        return f"  {{\n    name: {_text(v['name'])}\n    data_type: {v['data_type']}\n    dims: {_dims(dims)}{reshape}\n  }}"

    lines = [
        f"# Written by ldd-fast {__version__} (ldd_fast.serving.write_repository, native=): the exported sampler for",
        f"# Triton's own {platform} backend. Inputs and output are the graph's; see the Python-backend model for seeds.",
        f"name: {_text(name)}",
        f"platform: \"{platform}\"",
        f"max_batch_size: {max_batch}",
        "input [\n" + ",\n".join(tensor(v) for v in inputs) + "\n]",
        "output [\n" + ",\n".join(tensor(v) for v in outputs) + "\n]",
    ] + serving_lines(instances=instances, kind=kind, preferred=preferred, delay_us=delay_us)
    atomic_write_text(config_path, "\n".join(lines) + "\n")
    return files + [config_path]


# ----- config.pbtxt ------------------------------------------------------------------------------------

def _text(s: str) -> str:
    """A protobuf text-format string literal: quotes, backslashes and control characters escaped (octal, which
    every protobuf version reads; json's \\u escapes are not), other characters as UTF-8."""
    out = []
    for ch in s:
        if ch in "\\\"":
            out.append("\\" + ch)
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\{ord(ch):03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _dims(shape) -> str:
    return "[ " + ", ".join(str(int(d)) for d in shape) + " ]"


def _input(name: str, data_type: str, dims) -> str:
    # Every input is optional: a request sends z or seed, and cond / guidance only when it needs them.
    return (f"  {{\n    name: \"{name}\"\n    data_type: {data_type}\n    dims: {_dims(dims)}\n"
            f"    optional: true\n  }}")


def config_text(name: str, sampler: dict, schedule: Schedule, *, max_batch: int, instances: int, kind: str,
                preferred, delay_us: int) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig)."""
    shape = sampler["sample_shape"]
    # Per-row dims exclude the batch dimension (max_batch_size > 0): a request's z is [B, C, H, W]; labels,
    # seeds and guidance are dims [1], so [B, 1] in a request (dims [] is not a batchable shape in Triton).
    inputs = [_input("z", "TYPE_FP32", shape), _input("seed", "TYPE_INT64", [1])]
    if sampler["condition"]:  # one input per tensor; a per-row scalar is dims [1] (Triton's batchable shape)
        inputs += [_input(i["name"], _TYPES[getattr(torch, i["dtype"])], i["shape"] or [1])
                   for i in sampler["condition"]["inputs"]]
    elif sampler["conditional"]:
        inputs.append(_input("cond", "TYPE_INT64", [1]))
    inputs.append(_input("guidance", "TYPE_FP32", [1]))
    params = {
        "ldd_fast_version": __version__, "backend": sampler["backend"], "solver": sampler["solver"],
        "order": str(sampler["order"]), "nfe": str(sampler["nfe"]), "guidance": repr(sampler["guidance"]),
        "schedule": SCHEDULE_FILE, "schedule_origin": str(schedule.origin or ""),
        "options": json.dumps(sampler["options"], sort_keys=True), "sampler_file": SAMPLER_FILE,
        "num_classes": "" if sampler["num_classes"] is None else str(sampler["num_classes"]),
    }
    lines = [
        f"# Written by ldd-fast {__version__} (ldd_fast.serving.write_repository). The parameters describe",
        f"# version 1 as written; model.py runs what 1/{SAMPLER_FILE} says.",
        f"name: {_text(name)}",
        "backend: \"python\"",
        f"max_batch_size: {max_batch}",
        "input [\n" + ",\n".join(inputs) + "\n]",
        f"output [\n  {{\n    name: \"x0\"\n    data_type: TYPE_FP32\n    dims: {_dims(shape)}\n  }}\n]",
    ]
    return "\n".join(lines + serving_lines(instances=instances, kind=kind, preferred=preferred, delay_us=delay_us,
                                            params=params)) + "\n"


def serving_lines(*, instances: int, kind: str, preferred, delay_us: int, params: dict | None = None) -> list[str]:
    """The config.pbtxt lines every model here shares: dynamic batching, instances, string parameters."""
    lines = [f"dynamic_batching {{\n  preferred_batch_size: {_dims(preferred)}\n"
             f"  max_queue_delay_microseconds: {delay_us}\n}}",
             f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]"]
    return lines + [f"parameters: {{\n  key: {_text(k)}\n  value: {{ string_value: {_text(v)} }}\n}}"
                    for k, v in (params or {}).items()]
