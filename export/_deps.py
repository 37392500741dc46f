"""Import guards for the optional extras of ldd_fast.export."""
from __future__ import annotations

import importlib

from ldd_fast.errors import MissingDependency  # defined with the other errors; imported from here too

_HINTS = {
    "onnx": "pip install 'ldd-fast[export]'  (onnx, onnxscript, onnxruntime)",
    "onnxscript": "pip install 'ldd-fast[export]'  (torch's ONNX exporter needs onnxscript)",
    "onnxruntime": "pip install 'ldd-fast[export]'  (or onnxruntime-gpu for the CUDA provider)",
    "tensorrt": ("pip install 'ldd-fast[tensorrt]'  (NVIDIA's tensorrt >= 10 wheel, which fetches its libraries "
                 "from pypi.nvidia.com; needs an NVIDIA GPU and driver)"),
}


def require(module: str, feature: str):
    """Import `module` or raise MissingDependency naming the feature and the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(f"{feature} needs the Python package {module!r}, which is not importable ({e}). "
                                f"Install it with: {_HINTS.get(module, 'pip install ' + module)}") from e
