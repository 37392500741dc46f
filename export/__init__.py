"""ldd_fast.export: the fixed sampler as one deployable artifact.

    from ldd_fast.export import unroll, to_onnx, OnnxSampler, build_tensorrt, TensorRTSampler

* `unroll(den, schedule, solver=..., order=...)`: an nn.Module, z [, cond] -> sample, straight-line code
  built on the folded plan (conversion and guidance inside the coefficients).
* `to_onnx(...)`: that sampler as one ONNX graph plus one data file of weights (stored once).
* `OnnxSampler(path)`: runs it with onnxruntime.
* `build_tensorrt(...)` / `TensorRTSampler(engine)`: a TensorRT engine from the graph, run on
  torch CUDA tensors (needs the [tensorrt] extra and an NVIDIA GPU).

onnx / onnxruntime / tensorrt are imported only when used, with an error naming the extra to install.
"""
from ._deps import MissingDependency
from .onnx_export import ExportError, OnnxExport, artifact_files, read_metadata, to_onnx
from .onnx_runtime import OnnxSampler
from .tensorrt_engine import TensorRTError, TensorRTSampler, build_tensorrt
from .unroll import UnrolledSampler, UnrollError, schedule_tensors, unroll

__all__ = [
    "unroll", "UnrolledSampler", "UnrollError", "schedule_tensors",
    "to_onnx", "OnnxExport", "ExportError", "read_metadata", "artifact_files",
    "OnnxSampler", "build_tensorrt", "TensorRTSampler", "TensorRTError", "MissingDependency",
]
