"""A TensorRT engine built from the exported sampler graph, and its runner on torch CUDA tensors.

Written against the documented TensorRT Python API (name-based I/O of 10.x, kept in 11.x):
Builder / create_network / OnnxParser.parse_from_file / BuilderConfig
(set_memory_pool_limit, set_flag, add_optimization_profile, create_timing_cache) /
build_serialized_network, and Runtime.deserialize_cuda_engine / IExecutionContext
(set_input_shape, set_tensor_address, execute_async_v3).

Precision differs between the major versions:
* 10.x: networks are weakly typed unless created with NetworkDefinitionCreationFlag.STRONGLY_TYPED
  (opt-in, `strongly_typed=True`); `fp16=True` sets BuilderFlag.FP16 on a weakly typed build and
  TensorRT picks fp16 kernels where it sees fit. A strongly typed build takes the precision from
  the graph, so there fp16 means a graph exported with dtype=torch.float16.
* 11.x: every network is strongly typed (the creation flag is ignored) and BuilderFlag.FP16 is
  removed; precision comes only from the graph, so `fp16=True` requires a graph exported with
  dtype=torch.float16 (`ldd-fast export --fp16` does that) and sets no flag.
The exported fp16 graph runs the network in fp16 and keeps z, the sample and the linear maps in
float32 (explicit Cast nodes), which a strongly typed build keeps as written.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from ldd_fast.cond import is_cond, leaves, structure
from ldd_fast.denoiser import check_condition
from ldd_fast.errors import (ConditionError, InvalidArgument, InvalidArgumentType, LddFastError, boolean, device_of,
                             path_like)
from ldd_fast.io import atomic_write_bytes, atomic_write_text, check_output_path, read_json
from ldd_fast.sample import check_finite

from ._deps import require
from .onnx_export import HASH_ON_LOAD_BYTES, read_metadata, verify_data_file

MIN_MAJOR = 10


class TensorRTError(LddFastError, RuntimeError):
    """TensorRT could not parse, build or run the sampler (the message carries TensorRT's own errors)."""


def _tensorrt():
    return require("tensorrt", "TensorRT export")


def major_version(trt) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        raise TensorRTError(f"cannot read the TensorRT version from {getattr(trt, '__version__', None)!r}") from None


def precision_settings(major: int, graph_dtype: str, *, fp16: bool, strongly_typed: bool) -> dict:
    """Which network creation flag and builder flags a build uses (pure: tested without TensorRT).

    Returns {"strongly_typed_flag": bool (pass STRONGLY_TYPED at network creation),
    "fp16_flag": bool (set BuilderFlag.FP16), "strongly_typed": bool (the network is strongly typed)}.
    """
    if major < MIN_MAJOR:
        raise TensorRTError(f"TensorRT {major}.x is not supported; ldd_fast needs TensorRT >= {MIN_MAJOR} "
                            f"(name-based I/O, explicit batch)")
    if major >= 11 or strongly_typed:
        if fp16 and graph_dtype != "float16":
            why = ("TensorRT 11 builds strongly typed networks only and has no FP16 builder flag"
                   if major >= 11 else "a strongly typed network takes its precision from the graph")
            raise TensorRTError(f"fp16=True but the graph's network runs in {graph_dtype}: {why}. Export the graph "
                                f"in fp16 (to_onnx(..., dtype=torch.float16) or `ldd-fast export --fp16`)"
                                + ("" if major >= 11 else ", or build weakly typed (strongly_typed=False)"))
        return {"strongly_typed_flag": major < 11, "fp16_flag": False, "strongly_typed": True}
    return {"strongly_typed_flag": False, "fp16_flag": bool(fp16), "strongly_typed": False}


def _check_batches(min_batch, opt_batch, max_batch, meta) -> tuple[int, int, int]:
    vals = (min_batch, opt_batch, max_batch)
    if any(isinstance(v, bool) or not isinstance(v, int) for v in vals):
        raise InvalidArgumentType(f"min_batch, opt_batch and max_batch must be ints, got {vals}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise InvalidArgument(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, "
                              f"{max_batch}")
    if not meta.get("dynamic_batch", True) and min_batch != max_batch:
        raise InvalidArgument("the graph was exported with a fixed batch (dynamic_batch=False): min_batch, opt_batch "
                              "and max_batch must all equal it")
    return vals


def build_tensorrt(onnx_path, engine_path, *, min_batch: int, opt_batch: int, max_batch: int, fp16: bool = False,
                   strongly_typed: bool = False, timing_cache=None, workspace: int | None = None,
                   refittable: bool = False) -> str:
    """Build a serialized TensorRT engine (a .plan file) from a graph written by `to_onnx`.

    Args:
        onnx_path: the exported graph (its data file beside it).
        engine_path: where to write the engine, atomically; the sampler's description goes to
            `<engine_path>.json` (read by TensorRTSampler).
        min_batch, opt_batch, max_batch: the optimisation profile of the batch dimension
            (of z, cond and the sample).
        fp16, strongly_typed: see the module docstring (TensorRT 10.x vs 11.x).
        timing_cache: a file to read kernel timings from (if present) and write them back to.
        workspace: the builder's workspace memory pool limit in bytes (default: TensorRT's).
        refittable: build with BuilderFlag.REFIT (weights can be refitted without a rebuild).
    Returns the engine path.
    """
    # Every argument's type before a file is read or TensorRT imported.
    onnx_path = path_like(onnx_path, "onnx_path")
    path_like(engine_path, "engine_path")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (min_batch, opt_batch, max_batch)):
        raise InvalidArgumentType(f"min_batch, opt_batch and max_batch must be ints, got "
                                  f"{(min_batch, opt_batch, max_batch)!r:.80}")
    for name, v in (("fp16", fp16), ("strongly_typed", strongly_typed), ("refittable", refittable)):
        boolean(v, name)
    if workspace is not None and (isinstance(workspace, bool) or not isinstance(workspace, int)):
        raise InvalidArgumentType(f"workspace must be a positive number of bytes, got {workspace!r:.40}")
    if timing_cache is not None:
        path_like(timing_cache, "timing_cache")
    if not os.path.isfile(onnx_path):
        raise FileNotFoundError(f"ONNX file not found: {onnx_path}")
    meta = read_metadata(onnx_path)
    verify_data_file(onnx_path, meta)
    engine_path = check_output_path(engine_path, "TensorRT engine")
    batches = _check_batches(min_batch, opt_batch, max_batch, meta)
    if workspace is not None and (isinstance(workspace, bool) or not isinstance(workspace, int) or workspace <= 0):
        raise InvalidArgument(f"workspace must be a positive number of bytes, got {workspace!r}")
    if timing_cache is not None:
        timing_cache = check_output_path(timing_cache, "timing cache")
    trt = _tensorrt()
    major = major_version(trt)
    settings = precision_settings(major, meta["dtype"], fp16=fp16, strongly_typed=strongly_typed)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if settings["strongly_typed_flag"] else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so that the parser finds the data file next to the graph.
    if not parser.parse_from_file(os.path.abspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors or 'no error reported'}")

    config = builder.create_builder_config()
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if settings["fp16_flag"]:
        config.set_flag(trt.BuilderFlag.FP16)
    if refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise TensorRTError(f"input {tensor.name!r} has dynamic dimensions beyond the batch: {shape}")
        if shape and shape[0] < 0:
            lo, mid, hi = ((b,) + shape[1:] for b in batches)
            profile.set_shape(tensor.name, lo, mid, hi)
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        blob = b""
        if os.path.isfile(timing_cache):
            with open(timing_cache, "rb") as f:
                blob = f.read()
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT could not build an engine from {onnx_path} (its log above says why)")
    blob = bytes(serialized)
    atomic_write_bytes(engine_path, blob)
    if cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    build = {"tensorrt": str(trt.__version__), "min_batch": batches[0], "opt_batch": batches[1],
             "max_batch": batches[2], "fp16": bool(fp16), "strongly_typed": settings["strongly_typed"],
             "fp16_flag": settings["fp16_flag"], "refittable": bool(refittable), "workspace": workspace,
             "onnx": os.path.basename(onnx_path), "engine_bytes": len(blob),
             "engine_sha256": hashlib.sha256(blob).hexdigest()}
    atomic_write_text(engine_path + ".json", json.dumps({**meta, "tensorrt_build": build}) + "\n")
    return engine_path


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.int8: torch.int8,
             trt.bool: torch.bool}
    for name, tdtype in (("int64", torch.int64), ("bfloat16", torch.bfloat16), ("uint8", torch.uint8)):
        if hasattr(trt, name):
            table[getattr(trt, name)] = tdtype
    if dtype not in table:
        raise TensorRTError(f"unsupported TensorRT tensor type {dtype}")
    return table[dtype]


class TensorRTSampler:
    """Runs an engine from `build_tensorrt` on torch CUDA tensors: `sampler(z, cond=None) -> sample`.

    Inputs are used in place (cast only when their dtype differs from the engine's; an integer or
    complex z is refused by name, never converted), the output is allocated by torch on z's device,
    and the engine is enqueued on torch's current stream: no host copies and no synchronisation,
    like any torch op.

    An engine is executable content (TensorRT runs the kernels it holds): load only engines you
    built or got from a trusted source. The engine's size and sha256, recorded in its `.json` by
    build_tensorrt, are checked on load (the hash when the engine is under 128 MiB, or always
    with verify=True), so a truncated or swapped file is refused before TensorRT reads it.
    check_finite: check z and the sample for NaN / inf, and class labels on the GPU (each check
    synchronises the host; off by default). Labels held on the host are always checked.
    """

    def __init__(self, engine_path, *, device=None, verify: bool = False, check_finite: bool = False):
        engine_path = path_like(engine_path, "engine_path")
        device = device_of(device)
        boolean(verify, "verify")
        self.check_finite = boolean(check_finite, "check_finite")
        if not os.path.isfile(engine_path):
            raise FileNotFoundError(f"TensorRT engine not found: {engine_path}")
        # The file first (before TensorRT or a GPU is involved): nothing unchecked reaches the deserialiser.
        self.metadata = {}
        sidecar = engine_path + ".json"
        if os.path.isfile(sidecar):
            self.metadata = read_json(sidecar, "TensorRT engine description", TensorRTError)
            if not isinstance(self.metadata, dict) or not isinstance(self.metadata.get("tensorrt_build", {}), dict):
                raise TensorRTError(f"{sidecar}: not a TensorRT engine description written by build_tensorrt")
        with open(engine_path, "rb") as f:
            blob = f.read()
        _verify_engine(engine_path, blob, self.metadata.get("tensorrt_build", {}), full=verify)
        trt = _tensorrt()
        if not torch.cuda.is_available():
            raise TensorRTError("TensorRTSampler needs a CUDA GPU visible to torch (torch.cuda.is_available() is "
                                "False)")
        self.device = torch.device("cuda", torch.cuda.current_device()) if device is None else device
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(blob)
        if self.engine is None:
            raise TensorRTError(f"TensorRT could not deserialize {engine_path} (built by another TensorRT version "
                                f"or for another GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        if "z" not in self.inputs or self.outputs != ["sample"]:
            raise TensorRTError(f"{engine_path} is not an ldd_fast sampler engine (inputs {self.inputs}, outputs "
                                f"{self.outputs})")
        self.dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.cond_names = [n for n in self.inputs if n == "cond" or n.startswith("cond_")]
        self.conditional = bool(self.cond_names)
        spec = self.metadata.get("cond")
        self._cond_spec = spec["structure"] if spec else "tensor"
        if spec:
            self.cond_names = spec["names"]
        self._tables = None
        if "coef" in self.inputs:
            tables = self.metadata.get("tables")
            if not tables:
                raise TensorRTError(f"{engine_path} takes the schedule as inputs, but {sidecar} with its tables is "
                                    f"missing")
            self._tables = {k: torch.tensor(v, dtype=self.dtypes[k], device=self.device) for k, v in tables.items()}

    def set_tables(self, tables: dict) -> None:
        """Swap the schedule of a schedule_as_input engine: `schedule_tensors(fold(plan, den))` or
        `OnnxSampler.set_schedule`'s tables (same structure, checked by the caller)."""
        if self._tables is None:
            raise InvalidArgument("this engine has the schedule baked in; build it from a schedule_as_input export")
        for k in self._tables:
            v = torch.as_tensor(tables[k], dtype=self.dtypes[k]).to(self.device)
            if v.shape != self._tables[k].shape:
                raise InvalidArgument(f"table {k!r} must have shape {tuple(self._tables[k].shape)}, got "
                                      f"{tuple(v.shape)}")
            self._tables[k] = v

    def __call__(self, z: torch.Tensor, cond=None) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or not z.is_cuda:
            error = InvalidArgument if isinstance(z, torch.Tensor) else InvalidArgumentType
            raise error(f"TensorRTSampler runs on CUDA tensors (no host copies); got "
                        f"{z.device if isinstance(z, torch.Tensor) else type(z).__name__}")
        if not z.is_floating_point():
            # The feed casts to the engine's dtype: an integer or complex z would be converted, not refused.
            raise InvalidArgumentType(f"z has dtype {z.dtype}: the engine takes floating-point noise (cast to its "
                                      f"{self.dtypes['z']} input)")
        if z.device != self.device:
            raise InvalidArgument(f"z is on {z.device}, the engine was loaded on {self.device}")
        if self.conditional != (cond is not None):
            raise InvalidArgument("this engine takes a condition input: pass cond" if self.conditional
                                  else "this engine has no condition input; cond must be None")
        if cond is not None:
            if not is_cond(cond) or structure(cond) != self._cond_spec:
                raise ConditionError(f"cond must have the structure {self._cond_spec} this engine was built for")
            on_host = all(c.device.type == "cpu" for c in leaves(cond))
            check_condition(cond, z.shape[0], self.metadata.get("num_classes"),
                            values=on_host or self.check_finite)
        if self.check_finite:
            check_finite(z, "the noise z")
        build = self.metadata.get("tensorrt_build", {})
        if build and not build["min_batch"] <= z.shape[0] <= build["max_batch"]:
            raise InvalidArgument(f"batch {z.shape[0]} is outside the engine's profile [{build['min_batch']}, "
                                  f"{build['max_batch']}]")
        feeds = {"z": z.to(self.dtypes["z"]).contiguous()}
        if cond is not None:
            for name, leaf in zip(self.cond_names, leaves(cond)):
                feeds[name] = leaf.to(device=z.device, dtype=self.dtypes[name]).contiguous()
        if self._tables is not None:
            feeds.update(self._tables)
        with torch.cuda.device(self.device):
            for name, t in feeds.items():
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    raise InvalidArgument(f"the engine rejects input {name!r} of shape {tuple(t.shape)}")
                self.context.set_tensor_address(name, t.data_ptr())
            out = torch.empty(tuple(self.context.get_tensor_shape("sample")), dtype=self.dtypes["sample"],
                              device=z.device)
            self.context.set_tensor_address("sample", out.data_ptr())
            if not self.context.execute_async_v3(torch.cuda.current_stream(z.device).cuda_stream):
                raise TensorRTError("TensorRT failed to enqueue the engine (its log says why)")
        if self.check_finite:
            check_finite(out, "the sample (TensorRT)")
        return out


def _verify_engine(path: str, blob: bytes, build: dict, *, full: bool) -> None:
    """The engine file against the size and sha256 build_tensorrt recorded (engines without a record:
    built elsewhere, nothing to check against)."""
    size = build.get("engine_bytes")
    if size is None:
        return
    if len(blob) != size:
        raise TensorRTError(f"{path} has {len(blob)} bytes, but its description records {size}: truncated or "
                            f"replaced; build it again")
    if (full or size <= HASH_ON_LOAD_BYTES) and hashlib.sha256(blob).hexdigest() != build.get("engine_sha256"):
        raise TensorRTError(f"{path} is not the engine its description records (sha256 differs): corrupt or "
                            f"replaced; build it again")
