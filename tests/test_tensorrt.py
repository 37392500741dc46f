"""TensorRT engine build and runner (ldd_fast.export.tensorrt_engine).

Without TensorRT and a GPU (the CPU development machine) everything up to the engine build runs
against a recording stand-in of the `tensorrt` module that implements the documented calls of
10.x and 11.x (11.x has no BuilderFlag.FP16: using it raises, as the real module does); the
real-engine tests skip with the reason.
"""
import hashlib
import importlib.machinery
import json
import os
import sys
import types

import pytest
import torch

import ldd_fast as lf

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402

from ldd_fast.export import MissingDependency, TensorRTError, TensorRTSampler, build_tensorrt, to_onnx  # noqa: E402
from ldd_fast.cli import main as cli_main  # noqa: E402
from ldd_fast.export.tensorrt_engine import precision_settings  # noqa: E402

from test_export import BATCHES, check_parity, small_den, unet_den  # noqa: E402
from tolerances import TOL  # noqa: E402


# ---------------------------------------------------------------------------------------------
# A recording stand-in for the tensorrt module (documented API only)


def fake_tensorrt(version: str, calls: list, *, parse_ok=True, build_ok=True):
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    # A spec, as an imported module has: torch.compile / torch.export look up every module in sys.modules.
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity):
            calls.append(("Logger", severity))

    flags = {"REFIT": "REFIT"}
    if major < 11:
        flags.update(FP16="FP16", INT8="INT8")
    trt.Logger = Logger
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs = flags, []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path):
            calls.append(("parse_from_file", path))
            model = onnx.load(path)  # loads the data file next to the graph, as TensorRT's parser does
            for i in model.graph.input:
                dims = tuple(d.dim_value if d.dim_value else -1 for d in i.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(i.name, dims))
            if not parse_ok:
                self.num_errors = 1
            return parse_ok

        def get_error(self, i):
            return "In node 12 (Conv): unsupported attribute"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("set_shape", name, lo, opt, hi))

    class Cache:
        def __init__(self, blob):
            self.blob = blob

        def serialize(self):
            return self.blob + b"+timings"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag):
            calls.append(("set_flag", flag))

        def add_optimization_profile(self, profile):
            calls.append(("add_optimization_profile",))

        def create_timing_cache(self, blob):
            calls.append(("create_timing_cache", blob))
            self.cache = Cache(blob)
            return self.cache

        def set_timing_cache(self, cache, ignore_mismatch):
            calls.append(("set_timing_cache", ignore_mismatch))

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build_serialized_network",))
            return b"ENGINE" if build_ok else None

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt")
    den = small_den()
    sched = lf.discretize(den.noise, 3, "edm")
    out = {}
    for name, kw in {"fp32": {}, "fp16": {"dtype": torch.float16}, "static": {"dynamic_batch": False}}.items():
        out[name] = to_onnx(den, sched, folder / f"{name}.onnx", torch.randn(2, 1, 8, 8), solver="euler", **kw).path
    return out


def _install(monkeypatch, version, **kw):
    calls = []
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, calls, **kw))
    return calls


# ---------------------------------------------------------------------------------------------
# Without TensorRT: precision rules, the build sequence, errors


def test_precision_rules_of_10x_and_11x():
    assert precision_settings(10, "float32", fp16=True, strongly_typed=False) == \
        {"strongly_typed_flag": False, "fp16_flag": True, "strongly_typed": False}
    assert precision_settings(10, "float16", fp16=True, strongly_typed=True) == \
        {"strongly_typed_flag": True, "fp16_flag": False, "strongly_typed": True}
    assert precision_settings(11, "float16", fp16=True, strongly_typed=False) == \
        {"strongly_typed_flag": False, "fp16_flag": False, "strongly_typed": True}
    assert precision_settings(11, "float32", fp16=False, strongly_typed=False)["fp16_flag"] is False
    with pytest.raises(TensorRTError, match="TensorRT 11 builds strongly typed networks only"):
        precision_settings(11, "float32", fp16=True, strongly_typed=False)
    with pytest.raises(TensorRTError, match="strongly typed network takes its precision from the graph"):
        precision_settings(10, "float32", fp16=True, strongly_typed=True)
    with pytest.raises(TensorRTError, match="needs TensorRT >= 10"):
        precision_settings(8, "float32", fp16=False, strongly_typed=False)


def test_missing_tensorrt_names_the_extra(monkeypatch, graphs, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MissingDependency, match=r"pip install 'ldd-fast\[tensorrt\]'"):
        build_tensorrt(graphs["fp32"], tmp_path / "e.plan", min_batch=1, opt_batch=4, max_batch=64)


def test_build_10x_weakly_typed_fp16(monkeypatch, graphs, tmp_path):
    calls = _install(monkeypatch, "10.8.0")
    engine, cache = tmp_path / "e.plan", tmp_path / "timing.cache"
    assert build_tensorrt(graphs["fp32"], engine, min_batch=1, opt_batch=4, max_batch=64, fp16=True,
                          timing_cache=cache, workspace=1 << 30, refittable=True) == str(engine)
    assert ("create_network", 0) in calls
    assert ("parse_from_file", os.path.abspath(graphs["fp32"])) in calls
    assert ("set_flag", "FP16") in calls and ("set_flag", "REFIT") in calls
    assert ("set_memory_pool_limit", "WORKSPACE", 1 << 30) in calls
    assert ("set_shape", "z", (1, 1, 8, 8), (4, 1, 8, 8), (64, 1, 8, 8)) in calls
    assert ("create_timing_cache", b"") in calls
    assert engine.read_bytes() == b"ENGINE" and cache.read_bytes() == b"+timings"
    meta = json.loads((tmp_path / "e.plan.json").read_text())
    assert meta["tensorrt_build"]["fp16_flag"] and meta["solver"] == "euler" and meta["nfe"] == 3
    calls.clear()
    build_tensorrt(graphs["fp32"], engine, min_batch=1, opt_batch=1, max_batch=1, timing_cache=cache)
    assert ("create_timing_cache", b"+timings") in calls, "the cache is read back"
    assert not [c for c in calls if c[0] == "set_flag"]


def test_build_10x_strongly_typed(monkeypatch, graphs, tmp_path):
    calls = _install(monkeypatch, "10.13.2")
    build_tensorrt(graphs["fp16"], tmp_path / "e.plan", min_batch=2, opt_batch=8, max_batch=16, fp16=True,
                   strongly_typed=True)
    assert ("create_network", 1 << 5) in calls
    assert not [c for c in calls if c[0] == "set_flag"], "precision comes from the fp16 graph"
    with pytest.raises(TensorRTError, match=r"dtype=torch.float16.*or build weakly typed"):
        build_tensorrt(graphs["fp32"], tmp_path / "e.plan", min_batch=1, opt_batch=1, max_batch=2, fp16=True,
                       strongly_typed=True)


def test_build_11x_takes_precision_from_the_graph(monkeypatch, graphs, tmp_path):
    calls = _install(monkeypatch, "11.4.1")
    with pytest.raises(TensorRTError, match="TensorRT 11 builds strongly typed networks only"):
        build_tensorrt(graphs["fp32"], tmp_path / "e.plan", min_batch=1, opt_batch=1, max_batch=2, fp16=True)
    assert not (tmp_path / "e.plan").exists()
    # No FP16 flag exists in 11.x: the build must not touch it.
    build_tensorrt(graphs["fp16"], tmp_path / "e.plan", min_batch=1, opt_batch=1, max_batch=2, fp16=True,
                   refittable=True)
    assert ("create_network", 0) in calls and [c for c in calls if c[0] == "set_flag"] == [("set_flag", "REFIT")]
    meta = json.loads((tmp_path / "e.plan.json").read_text())
    assert meta["dtype"] == "float16" and meta["tensorrt_build"]["strongly_typed"]


def test_build_errors(monkeypatch, graphs, tmp_path):
    _install(monkeypatch, "10.8.0", parse_ok=False)
    with pytest.raises(TensorRTError, match="ONNX parser rejected .*unsupported attribute"):
        build_tensorrt(graphs["fp32"], tmp_path / "e.plan", min_batch=1, opt_batch=1, max_batch=2)
    _install(monkeypatch, "10.8.0", build_ok=False)
    with pytest.raises(TensorRTError, match="could not build an engine"):
        build_tensorrt(graphs["fp32"], tmp_path / "e.plan", min_batch=1, opt_batch=1, max_batch=2)
    assert not (tmp_path / "e.plan").exists()
    with pytest.raises(ValueError, match="min_batch <= opt_batch <= max_batch"):
        build_tensorrt(graphs["fp32"], tmp_path / "e.plan", min_batch=4, opt_batch=2, max_batch=8)
    with pytest.raises(ValueError, match="fixed batch"):
        build_tensorrt(graphs["static"], tmp_path / "e.plan", min_batch=1, opt_batch=2, max_batch=8)
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        build_tensorrt(tmp_path / "nope.onnx", tmp_path / "e.plan", min_batch=1, opt_batch=1, max_batch=1)
    with pytest.raises(FileNotFoundError, match="folder of the TensorRT engine path does not exist"):
        build_tensorrt(graphs["fp32"], tmp_path / "no" / "e.plan", min_batch=1, opt_batch=1, max_batch=1)
    with pytest.raises(ValueError, match="workspace must be a positive number of bytes"):
        build_tensorrt(graphs["fp32"], tmp_path / "e.plan", min_batch=1, opt_batch=1, max_batch=1, workspace=-1)


def test_cli_builds_the_engine(monkeypatch, tmp_path, capsys):
    calls = _install(monkeypatch, "10.8.0")
    sched = tmp_path / "s.json"
    lf.discretize(lf.EDM(), 3, "edm").save(sched)
    rc = cli_main(["export", "--model", "test_export:cli_model", "--schedule", str(sched), "--solver", "euler",
                   "--onnx", str(tmp_path / "s.onnx"), "--tensorrt", str(tmp_path / "s.plan"), "--fp16",
                   "--max-batch", "16", "--workspace", "64", "--shape", "1", "8", "8"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "network float16" in out.out and "TensorRT engine, batch 1..16" in out.out
    assert ("set_shape", "z", (1, 1, 8, 8), (16, 1, 8, 8), (16, 1, 8, 8)) in calls
    assert ("set_memory_pool_limit", "WORKSPACE", 64 << 20) in calls


def test_the_engine_file_is_verified_before_tensorrt_reads_it(monkeypatch, graphs, tmp_path):
    _install(monkeypatch, "10.8.0")
    engine = tmp_path / "e.plan"
    build_tensorrt(graphs["fp32"], engine, min_batch=1, opt_batch=1, max_batch=2)
    build = json.loads((tmp_path / "e.plan.json").read_text())["tensorrt_build"]
    assert build["engine_bytes"] == 6 and build["engine_sha256"] == hashlib.sha256(b"ENGINE").hexdigest()
    engine.write_bytes(b"ENGINF")  # same size, other content
    with pytest.raises(TensorRTError, match="sha256 differs"):
        TensorRTSampler(engine)
    engine.write_bytes(b"ENGINE+")
    with pytest.raises(TensorRTError, match="truncated or replaced"):
        TensorRTSampler(engine)
    (tmp_path / "e.plan.json").write_text("[1, 2]")
    with pytest.raises(TensorRTError, match="not a TensorRT engine description"):
        TensorRTSampler(engine)


def test_sampler_needs_cuda(monkeypatch, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real-engine tests cover the runner")
    _install(monkeypatch, "10.8.0")
    (tmp_path / "e.plan").write_bytes(b"ENGINE")
    with pytest.raises(TensorRTError, match="needs a CUDA GPU"):
        TensorRTSampler(tmp_path / "e.plan")
    with pytest.raises(FileNotFoundError, match="engine not found"):
        TensorRTSampler(tmp_path / "missing.plan")


# ---------------------------------------------------------------------------------------------
# With TensorRT and a GPU


def _real_tensorrt():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pytest.skip("tensorrt is not installed (pip install 'ldd-fast[tensorrt]'; needs an NVIDIA GPU)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    import tensorrt
    return tensorrt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_engine_matches_eager(dtype, tmp_path):
    trt = _real_tensorrt()
    den = unet_den().cuda()
    sched = lf.discretize(den.noise, 5, "edm")
    labels = lambda b: (torch.arange(b) % 10).cuda()  # noqa: E731
    info = to_onnx(den, sched, tmp_path / "s.onnx", torch.randn(2, 1, 8, 8, device="cuda"), solver="unipc",
                   order=3, cond=labels(2), dtype=dtype)
    fp16 = dtype == torch.float16
    build_tensorrt(info.path, tmp_path / "s.plan", min_batch=1, opt_batch=8, max_batch=max(BATCHES), fp16=fp16,
                   strongly_typed=fp16 and int(trt.__version__.split(".")[0]) == 10)
    runner = TensorRTSampler(tmp_path / "s.plan")
    check_parity(runner, den, sched, (1, 8, 8), TOL["tensorrt_vs_eager"], labels, device="cuda", solver="unipc",
                 order=3)
