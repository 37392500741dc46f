"""Import guards for the optional extras of ldd_fast.export, and atomic file writes."""
from __future__ import annotations

import importlib
import os


class MissingDependency(ImportError):
    """An optional package that this feature needs is not installed (the message says how to get it)."""


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


def check_output_path(path, what: str) -> str:
    """The absolute output path, or a clear error if it cannot be written."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} path {path} is a directory; give a file name")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder of the {what} path does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"the folder of the {what} path is not writable: {folder}")
    return path
