"""ldd_fast.serving: the Triton Inference Server model repository, its config.pbtxt, and its model.py run in-process.

No Triton server runs here (that is a later increment, on the tritonserver binary of nvidia-pytriton): model.py
is imported by path with a stand-in for Triton's `triton_python_backend_utils` (below: only what model.py
uses, with the real module's names and signatures) and called as the Python backend calls it:
initialize(args), execute(requests), finalize(). config.pbtxt is parsed with tritonclient's own ModelConfig
protobuf, which is what the server reads it into.

One repository of each backend for the built-in digits model: onnxruntime written by `ldd-fast export
--triton-repo` (the exporter is the slow part, ~7 s, so it runs once), eager by write_repository.
"""
import importlib.util
import itertools
import json
import os
import sys
import types

import numpy as np
import pytest
import torch

import ldd_fast as lf
from ldd_fast.cli import CLIError, main, parse_args
from ldd_fast.serving import SAMPLER_FILE, write_repository
from ldd_fast.teacher import noise_for

from tolerances import TOL

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 8, 8)
NAME = "ldd_sampler"


# ----- a stand-in for triton_python_backend_utils ------------------------------------------------------

class Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, array

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message, code=INTERNAL):
        self._message, self._code = message, code

    def message(self):
        return self._message

    def code(self):
        return self._code


class InferenceResponse:
    def __init__(self, output_tensors=None, error=None):
        self._outputs, self._error = list(output_tensors or []), error

    def output_tensors(self):
        return self._outputs

    def has_error(self):
        return self._error is not None

    def error(self):
        return self._error


class Request:
    """What the Python backend hands execute(): named input tensors (numpy, with the batch dimension)."""

    def __init__(self, **inputs):
        self.inputs = {k: Tensor(k, v) for k, v in inputs.items()}


def get_input_tensor_by_name(request, name):
    return request.inputs.get(name)


def get_output_tensor_by_name(response, name):
    return next((t for t in response.output_tensors() if t.name() == name), None)


BACKEND_UTILS = types.ModuleType("triton_python_backend_utils")
for _obj in (Tensor, TritonError, InferenceResponse, get_input_tensor_by_name, get_output_tensor_by_name):
    setattr(BACKEND_UTILS, _obj.__name__, _obj)
_LOADED = itertools.count()


def load_model(model_dir, kind="CPU"):
    """model.py of version 1, imported by path as the Python backend stub imports it, and initialized."""
    saved = sys.modules.get("triton_python_backend_utils")
    sys.modules["triton_python_backend_utils"] = BACKEND_UTILS
    try:
        spec = importlib.util.spec_from_file_location(f"triton_model_{next(_LOADED)}",
                                                      os.path.join(model_dir, "1", "model.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["triton_python_backend_utils"]
        else:
            sys.modules["triton_python_backend_utils"] = saved
    model = module.TritonPythonModel()
    with open(os.path.join(model_dir, "config.pbtxt")) as f:
        config = f.read()
    model.initialize({"model_config": json.dumps({"name": os.path.basename(model_dir), "pbtxt": config}),
                      "model_instance_kind": kind, "model_instance_name": f"{NAME}_0", "model_instance_device_id": "0",
                      "model_repository": model_dir, "model_version": "1", "model_name": NAME})
    return model


def x0(response) -> torch.Tensor:
    assert not response.has_error(), response.error().message()
    return torch.from_numpy(get_output_tensor_by_name(response, "x0").as_numpy())


def refused(response, *words):
    assert response.has_error() and not response.output_tensors()
    assert response.error().code() == TritonError.INVALID_ARG
    for word in words:
        assert word in response.error().message(), (word, response.error().message())


def parse_config(text: str):
    """config.pbtxt through tritonclient's ModelConfig protobuf: what the server reads it into."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ----- fixtures: the model, a schedule, one repository per backend --------------------------------------

@pytest.fixture(scope="module")
def den():
    return lf.zoo.load("digits")


@pytest.fixture(scope="module")
def sched(den):
    return lf.discretize(den.noise, 4, "logsnr").replace(solver="unipc", order=3)


@pytest.fixture(scope="module")
def cli_repo(digits_triton_repo):
    """`ldd-fast export --model digits --schedule FILE --triton-repo DIR`: backend onnxruntime, the graph inside
    (conftest.py: once per session)."""
    return digits_triton_repo


@pytest.fixture(scope="module")
def eager_repo(den, sched, tmp_path_factory):
    return write_repository(den, sched, tmp_path_factory.mktemp("serving") / "repo", model="digits", backend="eager")


@pytest.fixture(scope="module")
def models(cli_repo, eager_repo):
    return {"onnxruntime": load_model(os.path.join(cli_repo, NAME)), "eager": load_model(eager_repo.model_dir)}


def noise(n, seed=0):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def labels(*values):
    return np.array(values, dtype=np.int64).reshape(-1, 1)  # dims [1]: [B, 1] in a request


# ----- the files -------------------------------------------------------------------------------------------

def test_the_command_line_writes_the_repository(cli_repo):
    model_dir = os.path.join(cli_repo, NAME)
    for f in ("config.pbtxt", "1/model.py", "1/sampler.json", "1/schedule.json", "1/sampler.onnx"):
        assert os.path.isfile(os.path.join(model_dir, f)), f
    data = [n for n in os.listdir(os.path.join(model_dir, "1")) if n.startswith("sampler.onnx.")]
    assert len(data) == 1 and data[0].endswith(".data")  # the graph's weights (its name carries their hash)
    with open(os.path.join(os.path.dirname(lf.__file__), "serving", "triton_model.py"), "rb") as f:
        template = f.read()
    with open(os.path.join(model_dir, "1", "model.py"), "rb") as f:
        assert f.read() == template  # copied verbatim: nothing generated
    with open(os.path.join(model_dir, "1", SAMPLER_FILE)) as f:
        sampler = json.load(f)
    assert sampler["backend"] == "onnxruntime" and sampler["graph"] == "sampler.onnx"
    assert (sampler["solver"], sampler["order"], sampler["nfe"]) == ("unipc", 3, 4)
    assert sampler["conditional"] and sampler["num_classes"] == 11 and sampler["null_label"] == 10
    assert not [n for n in os.listdir(os.path.join(model_dir, "1")) if n.endswith(".tmp")]  # no writer left temps


@pytest.mark.parametrize("backend", ["onnxruntime", "eager"])
def test_config_pbtxt_is_a_triton_model_config(backend, cli_repo, eager_repo):
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    model_dir = os.path.join(cli_repo, NAME) if backend == "onnxruntime" else eager_repo.model_dir
    with open(os.path.join(model_dir, "config.pbtxt")) as f:
        config = parse_config(f.read())
    assert (config.name, config.backend, config.max_batch_size) == (NAME, "python", 64)
    inputs = {i.name: (i.data_type, list(i.dims), i.optional) for i in config.input}
    assert inputs == {"z": (pb.TYPE_FP32, list(SHAPE), True), "seed": (pb.TYPE_INT64, [1], True),
                      "cond": (pb.TYPE_INT64, [1], True), "guidance": (pb.TYPE_FP32, [1], True)}
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("x0", pb.TYPE_FP32, list(SHAPE))]
    assert list(config.dynamic_batching.preferred_batch_size) == [64]
    assert config.dynamic_batching.max_queue_delay_microseconds == 1000
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, pb.ModelInstanceGroup.KIND_CPU)]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["backend"] == backend and params["solver"] == "unipc" and params["order"] == "3"
    assert params["nfe"] == "4" and float(params["guidance"]) == 1.0 and params["schedule"] == "schedule.json"


def test_config_options_and_an_unconditional_repository(den, sched, tmp_path):
    repo = write_repository(den, sched, tmp_path / "repo", model="digits", backend="eager", name="digits.v2",
                            max_batch=8, instances=3, conditional=False, preferred_batch_sizes=[4, 8],
                            max_queue_delay_us=250)
    with open(repo.config_path) as f:
        config = parse_config(f.read())
    assert config.name == "digits.v2" and config.max_batch_size == 8
    assert [i.name for i in config.input] == ["z", "seed", "guidance"]  # no cond
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert config.instance_group[0].count == 3
    model = load_model(repo.model_dir)
    z = noise(1)
    good, with_cond, too_many = model.execute([Request(z=z.numpy()), Request(z=z.numpy(), cond=labels(3)),
                                               Request(z=noise(9).numpy())])
    assert torch.equal(x0(good), lf.sample(den, z, sched))
    refused(with_cond, "cond", "no condition")
    refused(too_many, "9 samples", "at most 8")


# ----- model.py: what a request gets ----------------------------------------------------------------------

def test_a_lone_z_request_is_lf_sample(models, den, sched):
    z = noise(3, seed=1)
    ref = lf.sample(den, z, sched)
    [eager] = models["eager"].execute([Request(z=z.numpy())])
    assert torch.equal(x0(eager), ref)  # the eager backend is lf.sample itself
    [graph] = models["onnxruntime"].execute([Request(z=z.numpy())])
    assert rel(x0(graph), ref) <= TOL["onnx_fp32"]


@pytest.mark.parametrize("backend", ["onnxruntime", "eager"])
def test_requests_of_one_execute_are_one_batch_with_their_own_results(backend, models, den, sched, monkeypatch):
    model = models[backend]
    za, zb = noise(1, seed=2), noise(2, seed=3)
    calls = []
    if backend == "eager":
        real = lf.sample
        monkeypatch.setattr(lf, "sample", lambda den, z, *a, **k: calls.append(z.shape[0]) or real(den, z, *a, **k))
    else:
        real = model.runner.__call__
        monkeypatch.setattr(model, "runner", lambda z, cond: calls.append(z.shape[0]) or real(z, cond))
    a, b = model.execute([Request(z=za.numpy()), Request(z=zb.numpy(), cond=labels(4, 7))])
    assert calls == [3]  # one sampler call for both requests
    [a1] = model.execute([Request(z=za.numpy())])
    [b1] = model.execute([Request(z=zb.numpy(), cond=labels(4, 7))])
    assert x0(a).shape == (1, *SHAPE) and x0(b).shape == (2, *SHAPE)
    assert rel(x0(a), x0(a1)) <= TOL["batch_fp32"] and rel(x0(b), x0(b1)) <= TOL["batch_fp32"]
    ref = lf.sample(den, zb, sched, cond=torch.tensor([4, 7]))
    assert rel(x0(b1), ref) <= TOL["onnx_fp32"] and not torch.allclose(x0(b1), lf.sample(den, zb, sched))


def test_a_seed_makes_the_noise_of_ldd_fast_sample_seed(models, den, sched):
    [eager] = models["eager"].execute([Request(seed=np.array([[3], [7]], dtype=np.int64))])
    z = torch.cat([noise_for(1, SHAPE, 3), noise_for(1, SHAPE, 7)])  # `ldd-fast sample --seed 3 -n 1`, then 7
    assert torch.equal(x0(eager), lf.sample(den, z, sched))
    [graph] = models["onnxruntime"].execute([Request(seed=np.array([[3]], dtype=np.int64))])
    assert rel(x0(graph), lf.sample(den, noise_for(1, SHAPE, 3), sched)) <= TOL["onnx_fp32"]


@pytest.mark.parametrize("backend", ["onnxruntime", "eager"])
def test_bad_requests_get_errors_naming_the_problem_and_the_others_are_served(backend, models, den, sched):
    model = models[backend]
    z, z2 = noise(1, seed=4), noise(2, seed=5)
    nan = z.clone()
    nan[0, 0, 3, 3] = float("nan")
    bad = {
        "both": (Request(z=z.numpy(), seed=labels(1)), ("z", "seed", "not both")),
        "neither": (Request(cond=labels(1)), ("send z", "or seed")),
        "shape": (Request(z=noise(1).reshape(1, 1, 4, 16).numpy()), ("z has shape [1, 1, 4, 16]", "[B, 1, 8, 8]")),
        "dtype": (Request(z=z.double().numpy()), ("z must be FP32", "float64")),
        "nan": (Request(z=nan.numpy()), ("NaN",)),
        "label": (Request(z=z.numpy(), cond=labels(11)), ("class label 11", "0..10")),
        "negative label": (Request(z=z.numpy(), cond=labels(-1)), ("class label -1",)),
        "label rows": (Request(z=z2.numpy(), cond=labels(1)), ("cond has shape [1, 1]", "[2, 1]")),
        "guidance": (Request(z=z.numpy(), guidance=np.array([[2.0]], dtype=np.float32)), ("guidance 2", "guidance 1")),
        "seed": (Request(seed=labels(-5)), ("seed -5", "negative")),
    }
    requests = [Request(z=z.numpy())] + [r for r, _ in bad.values()] + [
        Request(z=z2.numpy(), cond=labels(2, 3), guidance=np.ones((2, 1), np.float32))]
    responses = model.execute(requests)
    assert len(responses) == len(requests)
    for response, (name, (_, words)) in zip(responses[1:-1], bad.items()):
        refused(response, *words)
    tol = TOL["batch_fp32"] if backend == "eager" else TOL["onnx_fp32"]
    assert rel(x0(responses[0]), lf.sample(den, z, sched)) <= tol
    assert rel(x0(responses[-1]), lf.sample(den, z2, sched, cond=torch.tensor([2, 3]))) <= tol


def test_a_failed_batch_is_retried_request_by_request(models, den, sched, monkeypatch):
    """A sampler failure stays with the request that caused it: here the batched call fails, each request alone
    runs, and the one whose call fails alone gets INTERNAL."""
    model = models["eager"]
    real = model._batched

    def fails_on_batches_and_on_seven_rows(parsed):
        if len(parsed) > 1 or parsed[0][1].shape[0] == 7:
            raise lf.NonFiniteSample("the sample holds NaN")
        return real(parsed)

    monkeypatch.setattr(model, "_batched", fails_on_batches_and_on_seven_rows)
    z = noise(1, seed=6)
    good, failed = model.execute([Request(z=z.numpy()), Request(z=noise(7).numpy())])
    assert torch.equal(x0(good), lf.sample(den, z, sched))
    assert failed.error().code() == TritonError.INTERNAL and "NonFiniteSample" in failed.error().message()


def test_a_guided_repository_needs_cond(den, sched, tmp_path):
    guided = den.with_guidance(2.0)
    repo = write_repository(guided, sched, tmp_path / "repo", backend="eager")  # model: den.name, "digits"
    model = load_model(repo.model_dir)
    z = noise(2, seed=8)
    good, missing, other = model.execute([
        Request(z=z.numpy(), cond=labels(1, 5), guidance=np.full((2, 1), 2.0, np.float32)),
        Request(z=z.numpy()), Request(z=z.numpy(), cond=labels(1, 5), guidance=np.ones((2, 1), np.float32))])
    assert torch.equal(x0(good), lf.sample(guided, z, sched, cond=torch.tensor([1, 5])))
    refused(missing, "needs cond", "guides")
    refused(other, "guidance 1", "guidance 2")
    model.finalize()


# ----- what is refused before anything is written -----------------------------------------------------------

def test_write_repository_refuses_what_it_cannot_serve(den, sched, tmp_path):
    from test_cli import tiny_model

    with pytest.raises(lf.InvalidArgument, match="module:factory.*onnxruntime"):
        write_repository(tiny_model(), lf.discretize(lf.EDM(), 2, "edm"), tmp_path / "r", model="test_cli:tiny_model",
                         backend="eager", solver="euler")
    with pytest.raises(lf.InvalidArgument, match="name '../up'"):
        write_repository(den, sched, tmp_path / "r", name="../up")
    with pytest.raises(lf.InvalidArgument, match="backend"):
        write_repository(den, sched, tmp_path / "r", backend="tflite")
    if importlib.util.find_spec("tensorrt") is None:  # named before anything is written
        with pytest.raises(lf.MissingDependency, match="tensorrt"):
            write_repository(den, sched, tmp_path / "r", backend="tensorrt")
    for bad, match in (({"fp16": True}, "fp16.*eager"), ({"native": True}, "native.*eager")):
        with pytest.raises(lf.InvalidArgument, match=match):
            write_repository(den, sched, tmp_path / "r", backend="eager", **bad)
    with pytest.raises(lf.InvalidArgument, match="native model name 'ldd_sampler'"):
        write_repository(den, sched, tmp_path / "r", native="ldd_sampler")
    with pytest.raises(lf.InvalidArgument, match="native with schedule_as_input"):
        write_repository(den, sched, tmp_path / "r", native=True, schedule_as_input=True)
    with pytest.raises(lf.InvalidArgument, match="schedule_as_input.*eager"):
        write_repository(den, sched, tmp_path / "r", backend="eager", schedule_as_input=True)
    with pytest.raises(lf.InvalidArgument, match="guides.*conditional"):
        write_repository(den.with_guidance(2.0), sched, tmp_path / "r", backend="eager", conditional=False)
    with pytest.raises(lf.InvalidArgumentType, match="max_batch"):
        write_repository(den, sched, tmp_path / "r", max_batch="64")
    with pytest.raises(lf.InvalidArgument, match="preferred_batch_sizes"):
        write_repository(den, sched, tmp_path / "r", max_batch=8, preferred_batch_sizes=[16])
    assert not os.path.exists(tmp_path / "r")


BASE = ["export", "--model", "digits", "--schedule", "s.json"]


@pytest.mark.parametrize("argv, message", [
    (["--onnx", "s.onnx", "--name", "m"], "--name needs --triton-repo"),
    (["--onnx", "s.onnx", "--backend", "eager"], "--backend needs --triton-repo"),
    (["--onnx", "s.onnx", "--native"], "--native needs --triton-repo"),
    (["--triton-repo", "r", "--backend", "eager", "--native"], "--native configures the ONNX graph"),
    (["--triton-repo", "r", "--backend", "onnxruntime", "--workspace", "64"], "--workspace configures a TensorRT"),
    (["--triton-repo", "r", "--backend", "tensorrt", "--tensorrt", "e.plan"], "give one of them"),
    (["--onnx", "s.onnx", "--instances", "2"], "--instances needs --triton-repo"),
    (["--onnx", "s.onnx", "--max-batch", "8"], "--max-batch needs --tensorrt or --triton-repo"),
    (["--triton-repo", "r", "--static-batch", "2"], "--static-batch and --triton-repo cannot be given together"),
    (["--triton-repo", "r", "--name", "a/b"], "--name 'a/b'"),
    (["--triton-repo", "r", "--triton-backend", "eager", "--fp16"], "--fp16 configures the ONNX graph"),
    (["--triton-repo", "r", "--triton-backend", "eager", "--verify"], "--verify configures the ONNX graph"),
    ([], "export needs --onnx (a graph file) or --triton-repo"),
    (["--triton-repo", "r", "--triton-backend", "eager", "--model", "pkg.mod:factory"],
     "--model pkg.mod:factory needs --backend onnxruntime"),
])
def test_the_command_line_refuses_triton_options_that_cannot_take_effect(argv, message):
    with pytest.raises(CLIError) as e:
        parse_args(BASE + argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_the_command_line_takes_the_triton_options():
    args = parse_args(BASE + ["--triton-repo", "r", "--max-batch", "8", "--name", "m", "--instances", "2",
                              "--triton-backend", "eager"])  # --triton-backend: the old name of --backend
    assert (args.onnx, args.max_batch, args.name, args.instances, args.backend) == (None, 8, "m", 2, "eager")
    args = parse_args(BASE + ["--triton-repo", "r", "--native", "--instance-threads", "2", "--queue-delay-us", "0"])
    assert (args.backend, args.native, args.instance_threads, args.queue_delay_us) == ("onnxruntime", True, 2, 0)
    parse_args(BASE + ["--onnx", "s.onnx", "--tensorrt", "s.plan", "--max-batch", "8"])  # TensorRT's, as before


def test_an_eager_repository_of_a_diffusers_folder_serves_a_copy_of_it(tmp_path, capsys):
    pytest.importorskip("diffusers")
    import tiny_pipelines as tp

    folder = tmp_path / "model"
    unet, scheduler = tp.unet_folder(folder)
    den = lf.from_diffusers(unet.eval(), dict(scheduler.config))
    sched = lf.discretize(den.noise, 2, "logsnr").replace(solver="dpmpp", order=2)
    sched.save(tmp_path / "s.json")
    root = tmp_path / "repo"
    assert main(["export", "--model", folder, "--schedule", tmp_path / "s.json", "--triton-repo", root,
                 "--triton-backend", "eager", "--name", "ddpm"]) == 0
    copied = root / "ddpm" / "1" / "model"
    assert sorted(os.listdir(copied / "unet")) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert os.listdir(copied / "scheduler") == ["scheduler_config.json"]
    model = load_model(str(root / "ddpm"))
    z = noise(2, seed=9)
    [response] = model.execute([Request(z=z.numpy())])
    with torch.no_grad():
        assert torch.equal(x0(response), lf.sample(den, z, sched))


# ----- a text-to-image pipeline: prompt + seed -> image ------------------------------------------------

@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    tp = pytest.importorskip("tiny_pipelines")
    folder = tmp_path_factory.mktemp("serving") / "sd"
    tp.build("sd").save_pretrained(folder)
    return str(folder)


def test_the_command_line_writes_a_pipeline_repository_that_makes_the_images_of_sample(sd_folder, tmp_path):
    """`ldd-fast export --pipeline P --schedule S --triton-repo R`: prompt + seed -> the uint8 image that
    `ldd-fast sample --pipeline P --prompt ... --seed s -n 1` makes (eager: bit for bit)."""
    from ldd_fast.teacher import noise_for

    den = lf.from_pipeline(__import__("diffusers").StableDiffusionPipeline.from_pretrained(
        sd_folder, local_files_only=True, use_safetensors=True), height=16, width=16)
    sched = lf.discretize(den.noise, 3, "logsnr").replace(solver="unipc", order=2)
    sched.save(tmp_path / "s.json")
    root = tmp_path / "repo"
    assert main(["export", "--pipeline", sd_folder, "--height", "16", "--width", "16", "--schedule",
                 tmp_path / "s.json", "--triton-repo", root, "--backend", "eager", "--name", "sd",
                 "--max-batch", "4"]) == 0
    with open(root / "sd" / "config.pbtxt") as f:
        config = parse_config(f.read())
    pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    assert [(i.name, i.data_type) for i in config.input] == [("prompt", pb.TYPE_STRING), ("seed", pb.TYPE_INT64)]
    assert [(o.name, list(o.dims)) for o in config.output] == [("image", [16, 16, 3])]
    assert not [f for _, _, names in os.walk(root) for f in names if f.endswith(".bin")]
    model = load_model(str(root / "sd"))
    prompts = np.array([[b"a red cat"], [b"the digit seven"]], dtype=object)
    [response, bad] = model.execute([Request(prompt=prompts, seed=np.array([[3], [4]])),
                                     Request(prompt=prompts, seed=np.array([[3]]))])
    assert not response.has_error(), response.error().message()
    image = get_output_tensor_by_name(response, "image").as_numpy()
    with torch.no_grad():
        z = torch.cat([noise_for(1, den.sample_shape, 3), noise_for(1, den.sample_shape, 4)])
        x = den.decode(lf.sample(den, z, sched, cond=den.encode_prompt(["a red cat", "the digit seven"])))
    own = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert image.dtype == np.uint8 and image.shape == (2, 16, 16, 3) and np.array_equal(image, own)
    refused(bad, "1 seeds for 2 prompts")
    for request, words in ((Request(seed=np.array([[1]])), ("send prompt",)),
                           (Request(prompt=np.array([[b"  "]], dtype=object)), ("prompt is empty",)),
                           (Request(prompt=np.array([[b"\xff\xfe"]], dtype=object)), ("not UTF-8",)),
                           (Request(prompt=np.array([[b"x" * 2001]], dtype=object)), ("2001 characters",)),
                           (Request(prompt=prompts[:1], seed=np.array([[-2]])), ("seed -2 is negative",))):
        refused(model.execute([request])[0], *words)
    [response] = model.execute([Request(prompt=prompts[:1])])  # no seed: a random one, still an image
    assert get_output_tensor_by_name(response, "image").as_numpy().shape == (1, 16, 16, 3)


def test_a_pipeline_repository_refuses_what_it_cannot_serve(sd_folder, tmp_path):
    from ldd_fast.serving import write_pipeline_repository

    den = lf.zoo.load("digits")
    with pytest.raises(lf.InvalidArgumentType, match="from lf.from_pipeline"):
        write_pipeline_repository(den, lf.discretize(den.noise, 2, "edm"), tmp_path / "r", pipeline_folder=sd_folder)
    with pytest.raises(CLIError, match="--native serves a bare sampler graph"):
        parse_args(["export", "--pipeline", sd_folder, "--schedule", "s.json", "--triton-repo", "r", "--native"])
    with pytest.raises(CLIError, match="--backend eager or onnxruntime"):
        parse_args(["export", "--pipeline", sd_folder, "--schedule", "s.json", "--triton-repo", "r", "--backend",
                    "tensorrt"])


# ----- a model conditioned on tensors: one input per tensor ----------------------------------------------

class CondNet(torch.nn.Module):
    """x0 from x and a dict condition {"emb": [B, 4], "scale": [B]} (a stand-in for prompt embeddings)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.lin, self.emb = torch.nn.Linear(16, 16), torch.nn.Linear(4, 16)

    def forward(self, x, t, cond):
        h = torch.tanh(self.lin(x.flatten(1)) + self.emb(cond["emb"])) * cond["scale"].unsqueeze(1)
        return h.reshape(x.shape)


def test_a_tensor_condition_is_one_input_per_tensor(tmp_path):
    den = lf.Denoiser(CondNet(), lf.EDM(), prediction="x0", time_input="sigma", guidance_scale=2.0,
                      null_cond={"emb": torch.zeros(4), "scale": torch.ones(())})
    den.sample_shape = (1, 4, 4)
    sched = lf.discretize(den.noise, 3, "edm").replace(solver="dpmpp", order=2)
    example = {"emb": torch.randn(2, 4), "scale": torch.rand(2) + 0.5}
    repo = write_repository(den, sched, tmp_path / "repo", backend="onnxruntime", cond=example, max_batch=4)
    with open(repo.config_path) as f:
        config = parse_config(f.read())
    assert [(i.name, list(i.dims)) for i in config.input] == [("z", [1, 4, 4]), ("seed", [1]), ("cond_emb", [4]),
                                                              ("cond_scale", [1]), ("guidance", [1])]
    assert repo.sampler["condition"]["inputs"] == [{"name": "cond_emb", "dtype": "float32", "shape": [4]},
                                                   {"name": "cond_scale", "dtype": "float32", "shape": []}]
    model = load_model(repo.model_dir)
    z = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    cond = {"emb": torch.randn(3, 4, generator=torch.Generator().manual_seed(5)), "scale": torch.tensor([0.5, 1., 2.])}
    a, b, missing, nan, wrong = model.execute([
        Request(z=z[:2].numpy(), cond_emb=cond["emb"][:2].numpy(), cond_scale=cond["scale"][:2, None].numpy()),
        Request(z=z[2:].numpy(), cond_emb=cond["emb"][2:].numpy(), cond_scale=cond["scale"][2:].numpy()),
        Request(z=z[:1].numpy(), cond_emb=cond["emb"][:1].numpy()),
        Request(z=z[:1].numpy(), cond_emb=np.full((1, 4), np.nan, np.float32), cond_scale=np.ones((1, 1), np.float32)),
        Request(z=z[:1].numpy(), cond_emb=cond["emb"][:1, :3].numpy(), cond_scale=np.ones((1, 1), np.float32))])
    with torch.no_grad():
        ref = lf.sample(den, z, sched, cond=cond)
    assert rel(torch.cat([x0(a), x0(b)]), ref) <= TOL["onnx_fp32"]
    refused(missing, "send cond_scale")
    refused(nan, "cond_emb holds NaN or inf")
    refused(wrong, "cond_emb has shape [1, 3]", "[B, 4]")
    with pytest.raises(lf.InvalidArgument, match="class labels"):
        write_repository(lf.zoo.load("digits"), sched, tmp_path / "r2", cond=example)
    with pytest.raises(lf.InvalidArgument, match="pass cond= an example condition"):
        write_repository(den, sched, tmp_path / "r3")


def test_an_eager_repository_carries_the_built_in_weights(eager_repo, monkeypatch):
    """The weights travel in the repository (1/model/), not with the serving machine's ldd-fast package."""
    copied = sorted(os.listdir(os.path.join(eager_repo.version_dir, "model")))
    assert copied == ["digits_edm.json", "digits_edm.safetensors"] and eager_repo.sampler["model"] == {
        "builtin": "digits", "weights": "model"}
    monkeypatch.setattr(lf.zoo, "weights_dir", lambda: "/nonexistent")  # the package's copy is out of reach
    model = load_model(eager_repo.model_dir)
    z = noise(2, seed=3)
    [response] = model.execute([Request(z=z.numpy())])
    with torch.no_grad():
        assert torch.equal(x0(response), lf.sample(lf.zoo.load("digits", folder=os.path.join(
            eager_repo.version_dir, "model")), z, lf.Schedule.load(os.path.join(eager_repo.version_dir,
                                                                                 "schedule.json"))))
    with pytest.raises(lf.InvalidArgumentType, match="folder must be a path"):
        lf.zoo.load("digits", folder=3)


def test_a_pipeline_repository_on_onnxruntime_runs_the_exported_sampler(sd_folder, tmp_path):
    """`export --pipeline P --onnx g.onnx --triton-repo R --backend onnxruntime`: the sampler graph (exported once,
    with its manifest) between the pipeline's own text encoders and VAE; the image within a pixel level of the
    eager sampler's."""
    from ldd_fast.teacher import noise_for

    den = lf.from_pipeline(__import__("diffusers").StableDiffusionPipeline.from_pretrained(
        sd_folder, local_files_only=True, use_safetensors=True), height=16, width=16)
    sched = lf.discretize(den.noise, 2, "logsnr").replace(solver="dpmpp", order=2)
    sched.save(tmp_path / "s.json")
    assert main(["export", "--pipeline", sd_folder, "--height", "16", "--width", "16", "--schedule",
                 tmp_path / "s.json", "--onnx", tmp_path / "g.onnx", "--triton-repo", tmp_path / "repo",
                 "--backend", "onnxruntime", "--name", "sd", "--max-batch", "2"]) == 0
    version_dir = tmp_path / "repo" / "sd" / "1"
    assert os.path.isfile(tmp_path / "g.manifest.json") and os.path.isfile(version_dir / "sampler.manifest.json")
    data = [n for n in os.listdir(tmp_path) if n.endswith(".data")]
    assert data and os.path.isfile(version_dir / data[0])  # the --onnx graph's own data file: exported once
    model = load_model(str(tmp_path / "repo" / "sd"))
    [response] = model.execute([Request(prompt=np.array([[b"a blue painting"]], dtype=object),
                                        seed=np.array([[8]]))])
    image = get_output_tensor_by_name(response, "image").as_numpy()
    with torch.no_grad():
        x = den.decode(lf.sample(den, noise_for(1, den.sample_shape, 8), sched,
                                 cond=den.encode_prompt(["a blue painting"])))
    own = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(image.astype(int) - own).max() <= 1


def test_a_graph_exported_already_is_copied_not_exported_again(digits_graph, den, sched, tmp_path):
    """`export --onnx g.onnx --triton-repo R` exports once: the repository takes the graph as it is, after checking
    it is this sampler's (model, schedule, solver, dynamic batch, condition)."""
    graph = digits_graph
    repo = write_repository(den, sched, tmp_path / "repo", graph=graph, max_batch=4)
    assert sorted(os.listdir(repo.version_dir)) == sorted(["model.py", "sampler.json", "schedule.json",
                                                           "sampler.onnx", os.path.basename(graph.data_path)])
    model = load_model(repo.model_dir)
    z = noise(2, seed=6)
    [response] = model.execute([Request(z=z.numpy(), cond=labels(1, 2))])
    with torch.no_grad():
        assert rel(x0(response), lf.sample(den, z, sched, cond=torch.tensor([1, 2]))) <= TOL["onnx_fp32"]
    other = lf.discretize(den.noise, 4, "edm").replace(solver="unipc", order=3)
    with pytest.raises(lf.InvalidArgument, match="differs in the schedule"):
        write_repository(den, other, tmp_path / "r2", graph=graph)
    with pytest.raises(lf.InvalidArgument, match="graph configure"):
        write_repository(den, sched, tmp_path / "r3", graph=graph, backend="eager", model="digits")
