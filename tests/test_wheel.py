"""The package as users install it: a wheel (not the editable checkout) in a virtual environment.

The wheel is built from this checkout and installed into a fresh venv that reuses the installed torch (a
.pth line pointing at torch's site-packages, whose own .pth files, such as this checkout's editable
finder, are not run). `ldd-fast bench` then runs from a folder outside the checkout, so every import
comes from the wheel: the built-in model's weights travel in it and `ldd_fast.bench` needs no source
checkout; `ldd-fast sample --pipeline` loads a tiny SDXL folder through the diffusers / transformers that lie
beside the reused torch. The fresh-environment run with its own torch is recorded once by benchmarks/wheel_bench.sh.
"""
import json
import os
import subprocess
import sys
import venv

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build_wheel(dist) -> str:
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), ROOT]
    try:
        import setuptools  # noqa: F401 - present: build without an isolated environment (no registry needed)
        import wheel  # noqa: F401
        cmd.insert(4, "--no-build-isolation")
    except ImportError:
        pass
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (name,) = [f for f in os.listdir(dist) if f.endswith(".whl")]
    return os.path.join(dist, name)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """The wheel installed into a fresh venv that reuses the installed torch (and what lies beside it):
    (the venv folder, its environment variables, a working folder outside the checkout)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    whl = _build_wheel(tmp_path / "dist")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, "reuse_torch.pth"), "w") as f:
        f.write(os.path.dirname(os.path.dirname(torch.__file__)) + "\n")
    out = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", whl],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    return env_dir, env, work


def test_wheel_in_a_venv_runs_a_bench_outside_the_checkout(wheel_venv):
    env_dir, env, work = wheel_venv
    py = env_dir / "bin" / "python"
    # kernels/ and export/ have no __init__.py (they must not shadow installed namesakes at the repository
    # root): the wheel still installs them as ldd_fast.kernels / ldd_fast.export behind their face modules.
    probe = ("import ldd_fast, ldd_fast.bench, ldd_fast.export.onnx_export as o, ldd_fast.kernels.update_kernel as k\n"
             "from ldd_fast.export import to_onnx, OnnxSampler\nfrom ldd_fast.kernels import fused_update\n"
             "print(ldd_fast.__file__, o.__file__, k.__file__)")
    where = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=work, env=env)
    assert where.returncode == 0, where.stderr[-2000:]
    files = where.stdout.split()
    assert len(files) == 3 and all(f.startswith(str(env_dir)) for f in files), where.stdout
    version = subprocess.run([str(env_dir / "bin" / "ldd-fast"), "--version"], capture_output=True, text=True,
                             cwd=work, env=env)
    assert version.returncode == 0 and version.stdout.startswith("ldd-fast "), version.stderr[-2000:]
    result = work / "bench.json"
    run = subprocess.run([str(env_dir / "bin" / "ldd-fast"), "bench", "--model", "digits", "--schedule", "edm",
                          "--nfe", "2", "--backends", "eager,cuda_graph", "--batch", "2", "--repeats", "2",
                          "--warmup", "0", "--threads", "1", "--json", str(result)],
                         capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    d = json.loads(result.read_text())
    assert [r["backend"] for r in d["rows"]] == ["eager"] and d["rows"][0]["sampler_ms"]["median"] > 0
    assert d["skipped"][0]["backend"] == "cuda_graph" and "Not measured" in run.stdout


def test_wheel_samples_a_tiny_sdxl_folder_outside_the_checkout(wheel_venv, tmp_path):
    """`ldd-fast sample --pipeline` from the wheel: diffusers / transformers come from the site-packages the
    venv reuses for torch, the folder is a tiny random SDXL pipeline written here (tests/tiny_pipelines.py)."""
    pytest.importorskip("diffusers", reason="diffusers is not installed: no pipeline folder to sample")
    pytest.importorskip("transformers", reason="transformers is not installed: no pipeline folder to sample")
    import tiny_pipelines as tp

    import ldd_fast as lf

    env_dir, env, work = wheel_venv
    pipe = tp.build("sdxl")
    pipe.save_pretrained(tmp_path / "sdxl")
    shape = lf.from_pipeline(pipe, height=16, width=16).sample_shape
    out = work / "sdxl.pt"
    run = subprocess.run([str(env_dir / "bin" / "ldd-fast"), "sample", "--pipeline", str(tmp_path / "sdxl"),
                          "--height", "16", "--width", "16", "--prompt", "a cat", "-n", "1", "--nfe", "2",
                          "--threads", "1", "--out", str(out)],
                         capture_output=True, text=True, cwd=work, env={**env, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    x = torch.load(out)
    assert tuple(x.shape) == (1, *shape) and torch.isfinite(x).all()
