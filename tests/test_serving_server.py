"""The Triton model repository on a real tritonserver (the `serve` extra's nvidia-pytriton binary, CPU, 127.0.0.1).

One server for the module, on one repository of the built-in digits model (class-conditional, 11 labels):
    digits         eager (lf.sample), max batch 8, a 0.3 s queue delay: concurrent requests form batches
    digits_lone    eager, queue delay 0: a lone request is lf.sample bit for bit
    digits_onnx    onnxruntime (the exported graph); the SIGKILL test kills its process (the watchdog reloads it)
    digits_native  the same graph written --native for Triton's own onnxruntime_onnx backend, which this server
                   does not have: reported unavailable
    sd             a tiny random Stable Diffusion pipeline (tests/tiny_pipelines.py): prompt + seed -> image
The SIGTERM test starts its own server through `ldd-fast serve` (it is stopped by the test). Requests are bounded
(at most 8 samples of 1 x 8 x 8), the clients close their connections, every server binds 127.0.0.1 only.
"""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import ldd_fast as lf
from ldd_fast.serving import write_repository
from ldd_fast.teacher import noise_for

from test_serving import den, sched  # noqa: F401 - the digits model and the schedule its repositories serve
from tolerances import TOL

server_module = pytest.importorskip("ldd_fast.serving.server")
try:
    import tritonclient.http as http
except (ImportError, RuntimeError) as e:  # tritonclient without its http extra raises RuntimeError on import
    pytest.skip(f"tritonclient[http] (the serve extra) is not installed: {e}", allow_module_level=True)
pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 8, 8)


def _server_or_skip():
    try:
        server_module.find_tritonserver()
        server_module.check_model_environment(sys.prefix)
    except lf.LddFastError as e:  # no binary here (not Linux x86-64, or the serve extra missing) or numpy >= 2
        pytest.skip(f"no real Triton server here: {e}")


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """(the pipeline folder, its Denoiser at 16 x 16, a schedule)."""
    tp = pytest.importorskip("tiny_pipelines")
    folder = tmp_path_factory.mktemp("triton") / "sd"
    tp.build("sd").save_pretrained(folder)
    import diffusers

    den = lf.from_pipeline(diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True,
                                                                             use_safetensors=True), height=16, width=16)
    return str(folder), den, lf.discretize(den.noise, 3, "logsnr").replace(solver="unipc", order=2)


@pytest.fixture(scope="module")
def server(den, sched, sd, digits_graph, tmp_path_factory):
    _server_or_skip()
    from ldd_fast.serving import write_pipeline_repository

    root = tmp_path_factory.mktemp("triton") / "repo"
    write_pipeline_repository(sd[1], sd[2], root, pipeline_folder=sd[0], name="sd", backend="eager", max_batch=4,
                              threads=1, max_queue_delay_us=0)
    common = dict(model="digits", max_batch=8, threads=1)
    write_repository(den, sched, root, name="digits", backend="eager", max_queue_delay_us=300_000, **common)
    write_repository(den, sched, root, name="digits_lone", backend="eager", max_queue_delay_us=0, **common)
    write_repository(den, sched, root, name="digits_onnx", backend="onnxruntime", native="digits_native",
                     graph=digits_graph, max_queue_delay_us=0, **common)  # the session's graph (conftest.py)
    # strict=False: digits_native cannot load here (no onnxruntime backend in the wheel's server) and must not
    # stop the others; the models below must be ready.
    srv = server_module.TritonServer(root, http_port=0, grpc_port=0, metrics_port=0, strict=False, exit_timeout=2,
                                     log=root.parent / "tritonserver.log")  # in pytest's folder, not /tmp
    srv.start(timeout=240, models=["digits", "digits_lone", "digits_onnx", "sd"])
    yield srv
    srv.stop()


class Client:
    """tritonclient.http, closed after use (an open keep-alive connection holds up the server's shutdown)."""

    def __init__(self, srv, timeout=60.0):
        self.c = http.InferenceServerClient(srv.endpoints["http"], connection_timeout=timeout, network_timeout=timeout)

    def __enter__(self):
        return self.c

    def __exit__(self, *exc):
        self.c.close()


def infer(srv, model, **inputs):
    """x0 of one request; the inputs as numpy arrays (their Triton dtype from the numpy one)."""
    types = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.float64): "FP64",
             np.dtype(np.int32): "INT32"}
    tensors = []
    for name, value in inputs.items():
        t = http.InferInput(name, list(value.shape), types[value.dtype])
        t.set_data_from_numpy(value)
        tensors.append(t)
    with Client(srv) as c:
        return c.infer(model, tensors).as_numpy("x0")


def refused(srv, model, *words, status="400", **inputs):
    with pytest.raises(Exception) as e:
        infer(srv, model, **inputs)
    text = str(e.value)
    assert f"[{status}]" in text or str(getattr(e.value, "status", lambda: "")()) == status, text
    for w in words:
        assert w in text, (w, text)


def noise(n, seed=0):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


def labels(*values):
    return np.array(values, dtype=np.int64).reshape(-1, 1)


def reference(den, sched, z, cond):
    with torch.no_grad():
        return lf.sample(den, z, sched, cond=None if cond is None else torch.as_tensor(cond).reshape(-1)).numpy()


def stats(srv, model):
    with Client(srv) as c:
        s = c.get_inference_statistics(model)["model_stats"][0]
    return int(s["inference_count"]), int(s["execution_count"])


# ----- semantics ----------------------------------------------------------------------------------------

def test_a_lone_request_is_lf_sample_bit_for_bit(server, den, sched):
    z, cond = noise(3, 1), labels(0, 5, 9)
    out = infer(server, "digits_lone", z=z.numpy(), cond=cond)
    assert np.array_equal(out, reference(den, sched, z, cond))
    # seed: the noise `ldd-fast sample --seed s -n 1` makes, one row per seed
    out = infer(server, "digits_lone", seed=labels(7, 11), cond=labels(2, 3))
    z = torch.cat([noise_for(1, SHAPE, 7), noise_for(1, SHAPE, 11)])
    assert np.array_equal(out, reference(den, sched, z, labels(2, 3)))


def test_the_onnxruntime_backend_serves_the_exported_graph(server, den, sched):
    z, cond = noise(4, 2), labels(1, 2, 3, 4)
    out = infer(server, "digits_onnx", z=z.numpy(), cond=cond)
    ref = reference(den, sched, z, cond)
    assert np.abs(out - ref).max() / np.abs(ref).max() <= TOL["onnx_fp32"]


def test_24_concurrent_requests_are_answered_and_batched(server, den, sched):
    before = stats(server, "digits")
    zs = [noise(1, 100 + i) for i in range(24)]
    out, errors = [None] * 24, []

    def one(i):
        try:
            out[i] = infer(server, "digits", z=zs[i].numpy(), cond=labels(i % 10))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and all(o is not None for o in out)
    ref = reference(den, sched, torch.cat(zs), labels(*[i % 10 for i in range(24)]))
    got = np.concatenate(out)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5  # batched with other requests: not bit-equal
    inferences, executions = (a - b for a, b in zip(stats(server, "digits"), before))
    assert inferences == 24 and executions < inferences, (inferences, executions)  # the batcher formed batches


@pytest.mark.parametrize("case", ["wrong shape", "wrong dtype", "nan noise", "label out of range", "no input",
                                  "batch above the maximum", "z and seed", "other guidance", "negative seed"])
def test_bad_requests_get_400_naming_the_problem_and_the_server_stays_ready(server, case):
    z = noise(2).numpy()
    cases = {
        "wrong shape": (("unexpected shape", "z"), dict(z=np.zeros((1, 1, 4, 4), np.float32), cond=labels(0))),
        "wrong dtype": (("'z' data-type is 'FP64'", "expects 'FP32'"), dict(z=z.astype(np.float64), cond=labels(0, 1))),
        "nan noise": (("NaN or inf",), dict(z=np.full((1, *SHAPE), np.nan, np.float32), cond=labels(0))),
        "label out of range": (("class label 11", "0..10"), dict(z=z, cond=labels(0, 11))),
        "no input": (("send z", "or seed"), dict(cond=labels(0))),
        "batch above the maximum": (("batch-size must be <= 8",), dict(z=noise(9).numpy(), cond=labels(*range(9)))),
        "z and seed": (("z or seed, not both",), dict(z=z, seed=labels(1, 2), cond=labels(0, 1))),
        "other guidance": (("guidance 2 was sent", "guidance 1"),
                           dict(z=z, cond=labels(0, 1), guidance=np.full((2, 1), 2.0, np.float32))),
        "negative seed": (("seed -1 is negative",), dict(seed=labels(-1), cond=labels(0))),
    }
    words, inputs = cases[case]
    refused(server, "digits_lone", *words, **inputs)
    assert server.ready() and server.model_ready("digits_lone")
    assert infer(server, "digits_lone", z=z, cond=labels(0, 1)).shape == (2, *SHAPE)


def test_the_native_onnxruntime_model_is_unavailable_naming_its_backend(server):
    """Written with --native for a server that has Triton's onnxruntime backend; this one (the wheel's) has only
    the Python backend: the model is UNAVAILABLE for that reason, not for its config."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    with open(os.path.join(server.repo, "digits_native", "config.pbtxt")) as f:
        config = text_format.Parse(f.read(), model_config_pb2.ModelConfig())
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    assert [i.name for i in config.input] == ["z", "cond"] and [o.name for o in config.output] == ["sample"]
    with Client(server) as c:
        index = {m["name"]: m for m in c.get_model_repository_index()}
    state = index["digits_native"]
    assert state.get("state") == "UNAVAILABLE", state
    # "unable to find backend library for backend 'onnxruntime'": the backend is missing, the config was read
    assert "unable to find backend library for backend 'onnxruntime'" in state.get("reason", ""), state


def test_the_pipeline_model_makes_the_image_of_ldd_fast_sample(server, sd):
    """prompt (BYTES) + seed -> the uint8 image `ldd-fast sample --pipeline --prompt ... --seed s -n 1` makes."""
    _, den, sched = sd
    prompt = http.InferInput("prompt", [2, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[b"a red cat"], [b"a small drawing of a dog"]], dtype=object))
    seed = http.InferInput("seed", [2, 1], "INT64")
    seed.set_data_from_numpy(labels(21, 22))
    with Client(server) as c:
        image = c.infer("sd", [prompt, seed]).as_numpy("image")
    with torch.no_grad():
        z = torch.cat([noise_for(1, den.sample_shape, 21), noise_for(1, den.sample_shape, 22)])
        x = den.decode(lf.sample(den, z, sched, cond=den.encode_prompt(["a red cat", "a small drawing of a dog"])))
    own = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert image.dtype == np.uint8 and image.shape == (2, 16, 16, 3)
    assert np.abs(image.astype(int) - own).max() <= 1  # another process: at most one level of rounding apart
    empty = http.InferInput("prompt", [1, 1], "BYTES")
    empty.set_data_from_numpy(np.array([[b""]], dtype=object))
    with Client(server) as c, pytest.raises(Exception, match="prompt is empty"):
        c.infer("sd", [empty])


# ----- faults ---------------------------------------------------------------------------------------------

def test_sigkill_of_the_model_process_under_load(server, den, sched):
    """Triton 2.51 keeps a model whose stub died "ready" and fails each of its requests (500, "Stub process ... is
    not healthy"); the requests in flight fail within seconds, and the server's watchdog reloads the model: it
    serves correct samples again well within 60 s."""
    z, cond = noise(8, 3), labels(*range(8))
    ref = reference(den, sched, z, cond)

    def right(out):
        return np.abs(out - ref).max() / np.abs(ref).max() <= TOL["onnx_fp32"]

    assert right(infer(server, "digits_onnx", z=z.numpy(), cond=cond))
    results, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            start = time.monotonic()
            try:
                infer(server, "digits_onnx", z=z.numpy(), cond=cond)
                results.append(("ok", start, time.monotonic()))
            except Exception as e:  # noqa: BLE001 - the failures are the point
                results.append((str(e)[:120], start, time.monotonic()))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    (pid,) = server.stub_pids("digits_onnx")
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    deadline = killed + 60
    while time.monotonic() < deadline:  # the watchdog's reload: a new process that answers correctly
        if server.stub_pids("digits_onnx") and any(r[0] == "ok" and r[1] > killed + 0.5 for r in list(results)):
            break
        time.sleep(0.5)
    recovered = time.monotonic() - killed
    stop.set()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a request hung"
    failed = [r for r in results if r[0] != "ok"]
    assert failed and all("not healthy" in r[0] or "Stub" in r[0] for r in failed), failed[:3]
    assert all(r[2] - max(r[1], killed) < 30 for r in failed)  # every failure came within 30 s
    assert recovered < 60 and server.restarts.get("digits_onnx") == 1, (recovered, server.restarts)
    assert right(infer(server, "digits_onnx", z=z.numpy(), cond=cond))
    assert server.ready() and server.model_ready("digits_onnx")


def test_sigterm_under_load_finishes_the_requests_in_flight(den, sched, tmp_path):
    """`ldd-fast serve` on a repository whose batcher holds requests up to 1.5 s: SIGTERM arrives while 3 requests
    wait; all 3 are answered, the command exits 0, and no process of the server is left."""
    _server_or_skip()
    root = tmp_path / "repo"
    write_repository(den, sched, root, name="slow", backend="eager", model="digits", max_batch=8, threads=1,
                     max_queue_delay_us=1_500_000)
    port = server_module.free_port()
    ports = [str(server_module.free_port()) for _ in range(2)]
    cmd = [sys.executable, "-m", "ldd_fast.cli", "serve", "--repo", str(root), "--http-port", str(port),
           "--grpc-port", ports[0], "--metrics-port", ports[1], "--exit-timeout", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:  # until it says it is ready
            lines.append(line)
            if line.startswith("ready:"):
                break
        assert lines and lines[-1].startswith("ready:"), "".join(lines)
        pid = int(lines[-1].split("tritonserver pid ")[1].split(",")[0])
        srv = type("S", (), {"endpoints": {"http": f"127.0.0.1:{port}"}})()
        z, cond = noise(1, 5), labels(4)
        out, errors = [], []

        def one():
            try:
                out.append(infer(srv, "slow", z=z.numpy(), cond=cond))
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the three wait in the batcher's queue (1.5 s)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert not errors and len(out) == 3, errors
        ref = reference(den, sched, z, cond)
        assert all(np.abs(o - ref).max() / np.abs(ref).max() < 1e-5 for o in out)
        rest = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, "".join(lines) + rest
        assert "stopped (tritonserver exit status 0)" in rest, rest
        assert server_module.group_alive(pid) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ----- ldd-fast serve: what it refuses, and the model environment ------------------------------------------

def _serve(argv, capsys):
    from ldd_fast.cli import main

    code = main(["serve", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    return code, err


def test_serve_refuses_by_name_in_one_line(den, sched, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = _serve(["--repo", tmp_path / "empty"], capsys)
    assert code == 2 and "holds no model" in err and "\n" not in err
    repo = tmp_path / "repo"
    write_repository(den, sched, repo, name="digits", backend="eager", model="digits", max_batch=2)
    code, err = _serve(["--repo", repo, "--tritonserver", tmp_path / "nowhere"], capsys)
    assert code == 2 and "is not an executable file" in err and "ldd-fast[serve]" in err
    (tmp_path / "bad" / "m").mkdir(parents=True)
    (tmp_path / "bad" / "m" / "config.pbtxt").write_text("name: 'm'\nmax_batch_size: lots\n")
    code, err = _serve(["--repo", tmp_path / "bad"], capsys)
    assert code == 2 and "not a Triton model config" in err
    code, err = _serve(["--repo", repo, "--http-port", "70000"], capsys)
    assert code == 2 and "--http-port must be 0 .. 65535" in err
    fake = tmp_path / "numpy2" / "bin"
    fake.mkdir(parents=True)
    (fake / "python3").write_text("#!/bin/sh\necho 3.11 2.1.0 True -\n")
    (fake / "python3").chmod(0o755)
    _server_or_skip()  # below: the binary is found, what it would run with is refused
    code, err = _serve(["--repo", repo, "--model-env", tmp_path / "numpy2"], capsys)
    assert code == 2 and "has numpy 2.1.0" in err and "--model-env DIR" in err
    with server_module.socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = _serve(["--repo", repo, "--http-port", port], capsys)
    assert code == 2 and f"port {port} on 127.0.0.1 (--http-port) is taken" in err


def test_a_model_environment_pins_numpy_below_2_over_this_one(tmp_path):
    """make_model_environment (ldd-fast serve --model-env DIR): numpy < 2 from the package index, everything else
    (ldd_fast, torch) from this environment behind it."""
    env = server_module.make_model_environment(tmp_path / "env", show=lambda msg: None)
    info = server_module.check_model_environment(env)
    assert info["numpy"].startswith("1.") and info["ldd_fast"]
    out = subprocess.run([os.path.join(env, "bin", "python"), "-c", "import torch, ldd_fast; print(ldd_fast.__file__)"],
                         capture_output=True, text=True, check=True).stdout
    assert os.path.dirname(lf.__file__) in out
    with pytest.raises(lf.InvalidArgument, match="exists"):
        server_module.make_model_environment(env)


def test_ctrl_c_while_the_models_load_stops_everything(den, sched, tmp_path):
    """SIGINT (Ctrl-C) before the server is ready: the server is stopped, exit 130, nothing of it left."""
    _server_or_skip()
    root = tmp_path / "repo"
    write_repository(den, sched, root, name="digits", backend="eager", model="digits", max_batch=2, threads=1)
    cmd = [sys.executable, "-m", "ldd_fast.cli", "serve", "--repo", str(root), "--http-port", "0", "--grpc-port",
           "0", "--metrics-port", "0", "--log", str(tmp_path / "tritonserver.log")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("starting tritonserver"), first
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[0]
        assert proc.returncode == 130 and "interrupted" in rest, rest
        left = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                if str(root).encode() in _cmdline(pid)]
        assert left == [], left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
