"""ldd-fast: learned low-NFE diffusion sampling, fused and exported.

`kernels/` and `export/` install as `ldd_fast.kernels` and `ldd_fast.export`
(package_dir), so no generic top-level module names are installed. The folders have no
`__init__.py` (at the repository root they would shadow installed packages such as
transformers' `kernels`); the packages' faces are ldd_fast/kernels.py and ldd_fast/export.py.
"""
import os
import re

from setuptools import setup

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ldd_fast", "_version.py")) as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

EXTRAS = {
    "triton": ["triton>=3.0"],
    "export": ["onnx>=1.16", "onnxscript>=0.1", "onnxruntime>=1.18"],
    "tensorrt": ["tensorrt>=10.0"],
    "diffusers": ["diffusers>=0.30", "safetensors"],
    # lf.from_pipeline / ldd-fast learn --pipeline: the pipelines' text encoders and tokenizers
    # accelerate: diffusers loads models that keep some layers in float32 (Wan's transformer) only with it
    "pipelines": ["diffusers>=0.30", "safetensors", "transformers>=4.46", "accelerate"],
    "demo": ["scikit-learn>=1.3", "matplotlib>=3.7", "pillow>=10", "tqdm>=4.60", "safetensors"],
    "lpips": ["lpips>=0.1.4"],
    # ldd-fast serve: the tritonserver binary (with its Python backend) that nvidia-pytriton bundles, Linux x86-64,
    # glibc >= 2.35. It pins numpy < 2, which the Python backend's stub needs in the model's environment.
    "serve": ["nvidia-pytriton==0.7.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
              "tritonclient[http,grpc]"],
}
EXTRAS["test"] = sorted(
    # serve: tests/test_serving_server.py runs a real tritonserver; tritonclient parses config.pbtxt
    {"pytest>=7", "scipy>=1.10", "hypothesis>=6.100"} | set(EXTRAS["demo"]) | set(EXTRAS["serve"])
    | set(EXTRAS["pipelines"])
    | set(EXTRAS["export"]) | set(EXTRAS["triton"])
)

setup(
    name="ldd-fast",
    version=VERSION,
    description="Learned time discretisations (LD3) and compiled low-NFE samplers for diffusion models",
    python_requires=">=3.10",
    packages=[
        "ldd_fast", "ldd_fast.cli", "ldd_fast.pipelines", "ldd_fast.serving", "ldd_fast.solvers", "ldd_fast.zoo",
        "ldd_fast.kernels", "ldd_fast.export",
    ],
    package_dir={"ldd_fast.kernels": "kernels", "ldd_fast.export": "export"},
    package_data={"ldd_fast.zoo": ["weights/*.safetensors", "weights/*.json"]},
    install_requires=["torch>=2.3"],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["ldd-fast=ldd_fast.cli:main"]},
)
