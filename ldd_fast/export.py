"""ldd_fast.export: the fixed sampler as one deployable artifact.

    from ldd_fast.export import unroll, to_onnx, OnnxSampler, build_tensorrt, TensorRTSampler

* `unroll(den, schedule, solver=..., order=...)`: an nn.Module, z [, cond] -> sample, straight-line code
  built on the folded plan (conversion and guidance inside the coefficients).
* `to_onnx(...)`: that sampler as one ONNX graph plus one data file of weights (stored once).
* `OnnxSampler(path)`: runs it with onnxruntime.
* `write_pipeline_manifest(export, den, ...)`: beside a pipeline's graph, what a server needs to feed it and
  decode its latents (inputs, guidance, components, the VAE's scaling and Flux's packing).
* `build_tensorrt(...)` / `TensorRTSampler(engine)`: a TensorRT engine from the graph, run on
  torch CUDA tensors (needs the [tensorrt] extra and an NVIDIA GPU).

onnx / onnxruntime / tensorrt are imported only when used, with an error naming the extra to install.

This file is the package's face; its modules live in the repository's top-level `export/` folder,
installed as `ldd_fast/export/` (setup.py's package_dir). That folder has no `__init__.py`, so a
Python started at the repository root never takes it for an installed package named `export`.
A module with a `__path__` is a package: in a wheel the path below is the installed folder; an
editable install's finder maps the folder itself.
"""
import os

__path__ = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "export")]

# noqa: E402 below - the imports need __path__
from ldd_fast.export._deps import MissingDependency  # noqa: E402
from ldd_fast.export.onnx_export import ExportError, OnnxExport, artifact_files, read_metadata, to_onnx  # noqa: E402
from ldd_fast.export.onnx_runtime import OnnxSampler  # noqa: E402
from ldd_fast.export.tensorrt_engine import TensorRTError, TensorRTSampler, build_tensorrt  # noqa: E402
from ldd_fast.export.unroll import UnrolledSampler, UnrollError, schedule_tensors, unroll  # noqa: E402
from ldd_fast.export.manifest import manifest_path, read_manifest, write_pipeline_manifest  # noqa: E402

__all__ = [
    "unroll", "UnrolledSampler", "UnrollError", "schedule_tensors",
    "to_onnx", "OnnxExport", "ExportError", "read_metadata", "artifact_files",
    "OnnxSampler", "build_tensorrt", "TensorRTSampler", "TensorRTError", "MissingDependency",
    "write_pipeline_manifest", "read_manifest", "manifest_path",
]
