"""ldd_fast.serving: a fixed sampler served by NVIDIA Triton Inference Server.

    from ldd_fast.serving import write_repository
    repo = write_repository(den, schedule, "triton_repo", model="digits", backend="onnxruntime")

`write_repository` writes a Triton model repository (`<repo>/<name>/config.pbtxt` and version 1 with a
Python-backend `model.py` and every file it loads); `ldd-fast export --triton-repo DIR` calls it. The
request / response contract is in the docstring of `triton_model.py`, the file copied in as `model.py`.
`write_pipeline_repository` does the same for a text-to-image pipeline (prompt + seed -> image,
`triton_pipeline_model.py`). `TritonServer` runs tritonserver on a repository (`ldd-fast serve`).

This package sits beside `ldd_fast.export` (it imports the executors and the exporter); nothing in the
library imports it. Triton itself is not needed to write a repository.
"""
from .server import TritonServer, find_tritonserver, make_model_environment
from .triton_pipeline import write_pipeline_repository
from .triton_repository import BACKENDS, MODEL_FILE, SAMPLER_FILE, TritonRepository, check_model_name, write_repository

__all__ = ["write_repository", "write_pipeline_repository", "TritonRepository", "TritonServer", "find_tritonserver",
           "make_model_environment", "check_model_name", "BACKENDS", "SAMPLER_FILE", "MODEL_FILE"]
