"""Run an exported sampler graph with onnxruntime: one `session.run` per batch of samples.

CPU here; the CUDA provider when onnxruntime-gpu is installed and a GPU is present. With
the CUDA provider and torch CUDA tensors, inputs and output are bound to device memory
(IO binding), so no host copies happen; otherwise tensors go through numpy.
"""
from __future__ import annotations

import numpy as np
import torch

from ldd_fast.cond import leaves, structure
from ldd_fast.denoiser import check_condition
from ldd_fast.errors import ConditionError, InvalidArgument, InvalidArgumentType, boolean, path_like
from ldd_fast.sample import check_finite as check_finite_tensor

from ._deps import require
from .onnx_export import ExportError, read_metadata, verify_data_file
from .unroll import schedule_tensors, structure_hash

_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}


def default_providers() -> list[str]:
    """CUDA (when onnxruntime-gpu sees a GPU) before CPU; the CPU provider always."""
    ort = require("onnxruntime", "OnnxSampler")
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxSampler:
    """An exported sampler (`to_onnx`) run by onnxruntime: `sampler(z, cond=None) -> sample`.

    Args:
        path: the .onnx file (its data file must sit beside it).
        providers: onnxruntime execution providers (default: CUDA if available, then CPU).
        threads: intra-op threads of the CPU provider (default: onnxruntime's choice); pin it
            to the same number as torch when comparing latencies.
        session_options: an onnxruntime.SessionOptions to start from.
        verify: hash the data file whatever its size (by default its size is always checked and
            its sha256 when it is under 128 MiB; see export.onnx_export.verify_data_file).
        check_finite: also check that z, a float cond and the sample are finite (NonFiniteSample /
            ConditionError); off by default, like lf.Sampler's. Class labels are always checked
            against the exported model's label range (ConditionError), as every executor does.

    z may be a torch tensor (the result is a torch tensor on z's device) or a numpy array, of a floating
    dtype: it is cast to the graph's float32 state and the sample is float32 (the graph's dtype is
    that of its network; its registers are float32). An integer or complex z is refused
    (InvalidArgumentType), never converted.
    Graphs exported with schedule_as_input start with the exported schedule's tables;
    `set_schedule(den, schedule)` swaps in another schedule of the same structure.
    """

    def __init__(self, path, providers: list | None = None, *, threads: int | None = None,
                 session_options=None, verify: bool = False, check_finite: bool = False):
        path = path_like(path, "path")
        if providers is not None and (not isinstance(providers, (list, tuple)) or not all(
                isinstance(p, (str, tuple)) for p in providers)):
            raise InvalidArgumentType(f"providers must be a list of onnxruntime provider names, got {providers!r:.60}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            wrong_type = isinstance(threads, bool) or not isinstance(threads, int)
            raise (InvalidArgumentType if wrong_type else InvalidArgument)(
                f"threads must be a positive int, got {threads!r:.40}")
        boolean(verify, "verify")
        self.check_finite = boolean(check_finite, "check_finite")
        ort = require("onnxruntime", "OnnxSampler")
        if session_options is not None and not isinstance(session_options, ort.SessionOptions):
            raise InvalidArgumentType(f"session_options must be an onnxruntime.SessionOptions, got "
                                      f"{type(session_options).__name__}")
        self.metadata = read_metadata(path)
        verify_data_file(path, self.metadata, full=verify)
        self.path = path
        opts = session_options if session_options is not None else ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        providers = default_providers() if providers is None else list(providers)
        try:
            self.session = ort.InferenceSession(path, opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ExportError(f"onnxruntime could not load {path} with providers {providers}: {e}") from e
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.conditional = bool(self.metadata["conditional"])
        spec = self.metadata.get("cond")  # version-1 graphs: one tensor input named cond
        self._cond_spec = spec["structure"] if spec else "tensor"
        self._cond_names = spec["names"] if spec else ["cond"]
        self._cond_dtypes = spec["dtypes"] if spec else [self.metadata.get("cond_dtype")]
        self.sample_shape = tuple(self.metadata["sample_shape"])
        self.nfe = int(self.metadata["nfe"])
        self._tables = None
        if self.metadata["schedule_as_input"]:
            self._tables = {k: np.asarray(v, dtype=np.float32) for k, v in self.metadata["tables"].items()}

    def __repr__(self):
        m = self.metadata
        return (f"OnnxSampler({self.path!r}, {m['solver']}{m['order']}, nfe={self.nfe}, dtype={m['dtype']}, "
                f"conditional={self.conditional}, providers={self.providers})")

    def set_schedule(self, den, schedule, *, force: bool = False, **options) -> None:
        """Swap in another schedule (same solver, order, nfe and structure) without re-exporting.

        den: the Denoiser the graph was exported from (its noise schedule, prediction and
        guidance define the folded coefficients); checked against the exported fingerprint.
        """
        from ldd_fast.errors import IncompatibleSchedule
        from ldd_fast.plan import fold
        from ldd_fast.sample import plan_for

        m = self.metadata
        if not m["schedule_as_input"]:
            raise InvalidArgument(f"{self.path} was exported with the schedule baked in; export with "
                                  f"schedule_as_input=True to swap schedules without re-exporting")
        if not force and den.fingerprint() != m["fingerprint"]:
            raise IncompatibleSchedule(f"the Denoiser is not the model {self.path} was exported from "
                                          f"(fingerprint {den.fingerprint()[:12]}... vs {m['fingerprint'][:12]}...)")
        opts = {k: v for k, v in m["options"].items() if k in ("lower_order_final", "variant")}
        opts.update(options)
        plan = plan_for(den, schedule, solver=m["solver"], order=m["order"], force=force, **opts)
        folded = fold(plan, den, guided=m["conditional"] and den.guidance_scale != 1.0)
        if structure_hash(folded) != m["structure_hash"]:
            raise InvalidArgument("the new schedule's plan has another structure than the exported graph "
                                  f"({plan.solver}"
                                  f"{plan.order}, nfe {plan.nfe}, options {plan.options} vs {m['solver']}{m['order']}, "
                                  f"nfe {m['nfe']}, options {m['options']}): re-export")
        self._tables = {k: v.numpy() for k, v in schedule_tensors(folded).items()}

    def _check(self, z, cond):
        if not isinstance(z, (torch.Tensor, np.ndarray)):
            raise InvalidArgumentType(f"z must be a torch tensor or a numpy array, got {type(z).__name__}")
        floating = z.is_floating_point() if isinstance(z, torch.Tensor) else np.issubdtype(z.dtype, np.floating)
        if not floating:
            # An integer z would be converted and a complex one lose its imaginary part: neither is noise.
            raise InvalidArgumentType(f"z has dtype {z.dtype}: the exported sampler takes floating-point noise "
                                      f"(float32, or float16 / float64, which it casts to its float32 state)")
        shape = tuple(z.shape)
        if len(shape) != len(self.sample_shape) + 1 or shape[1:] != self.sample_shape:
            raise InvalidArgument(f"z must have shape [B, {', '.join(map(str, self.sample_shape))}], got {list(shape)}")
        if not self.metadata["dynamic_batch"] and shape[0] != self.session.get_inputs()[0].shape[0]:
            raise InvalidArgument("this graph was exported with a fixed batch of "
                                  f"{self.session.get_inputs()[0].shape[0]}, "
                                  f"got {shape[0]}")
        if self.conditional and cond is None:
            raise InvalidArgument("this sampler was exported with a condition input: pass cond (one per sample)")
        if not self.conditional and cond is not None:
            raise InvalidArgument("this sampler was exported without a condition input; cond must be None")
        if cond is not None:
            c = _as_cond(cond)
            if structure(c) != self._cond_spec:
                raise ConditionError(f"cond has the structure {structure(c)}, but this graph was exported for "
                                     f"{self._cond_spec}")
            on_host = all(t.device.type == "cpu" for t in leaves(c))
            check_condition(c, shape[0], self.metadata.get("num_classes"), values=on_host or self.check_finite)

    def __call__(self, z, cond=None):
        self._check(z, cond)
        if self.check_finite:
            check_finite_tensor(_as_torch(z), "the noise z")
        if isinstance(z, torch.Tensor) and z.is_cuda and "CUDAExecutionProvider" in self.providers:
            out = self._run_cuda(z, cond)
        else:
            feeds = {"z": _to_numpy(z, np.float32)}
            if cond is not None:
                for name, dtype, leaf in zip(self._cond_names, self._cond_dtypes, leaves(_as_cond(cond))):
                    feeds[name] = _to_numpy(leaf, _NP.get(dtype))
            if self._tables is not None:
                feeds.update(self._tables)
            out = self.session.run(["sample"], feeds)[0]
            out = torch.from_numpy(out).to(z.device) if isinstance(z, torch.Tensor) else out
        if self.check_finite:
            check_finite_tensor(_as_torch(out), f"the sample (onnxruntime, {self.metadata['solver']}"
                                                f"{self.metadata['order']}, nfe {self.nfe})")
        return out

    def _run_cuda(self, z: torch.Tensor, cond):
        # Bind torch's device buffers; onnxruntime runs on its own stream, so wait for torch's work first.
        # Written against onnxruntime's IOBinding API; not run on the CPU-only machine this was developed on.
        binding = self.session.io_binding()
        z = z.to(torch.float32).contiguous()
        inputs = {"z": z}
        if cond is not None:
            for name, dtype, leaf in zip(self._cond_names, self._cond_dtypes, leaves(_as_cond(cond))):
                inputs[name] = torch.as_tensor(leaf, device=z.device).to(getattr(torch, dtype)).contiguous()
        if self._tables is not None:
            inputs.update({k: torch.from_numpy(v).to(z.device) for k, v in self._tables.items()})
        for name, t in inputs.items():
            binding.bind_input(name, "cuda", t.device.index or 0, _numpy_dtype(t.dtype), list(t.shape), t.data_ptr())
        out = torch.empty_like(z)
        binding.bind_output("sample", "cuda", out.device.index or 0, np.float32, list(out.shape), out.data_ptr())
        torch.cuda.current_stream(z.device).synchronize()
        self.session.run_with_iobinding(binding)
        return out


def _as_cond(cond):
    """A condition of torch tensors or numpy arrays (or a tuple / dict of them) as torch tensors."""
    if isinstance(cond, (tuple, list)):
        return type(cond)(_as_cond(c) for c in cond)
    if isinstance(cond, dict):
        return {k: _as_cond(v) for k, v in cond.items()}
    return _as_torch(cond)


def _as_torch(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def _numpy_dtype(dtype: torch.dtype):
    return torch.empty((), dtype=dtype).numpy().dtype.type


def _to_numpy(x, dtype):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if dtype is not None and x.dtype != dtype:
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(x.dtype, np.integer):
            raise InvalidArgumentType(f"cond must hold integers for this graph, got dtype {x.dtype}")
        x = x.astype(dtype)
    return np.ascontiguousarray(x)
