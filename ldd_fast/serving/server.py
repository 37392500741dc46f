"""Run NVIDIA Triton Inference Server on a model repository, bound to this machine's loopback.

    from ldd_fast.serving import TritonServer
    with TritonServer("triton_repo", http_port=8000) as server:   # starts it and waits until the models are ready
        print(server.endpoints)                                   # {"http": "127.0.0.1:8000", ...}
    # left the block: SIGTERM (in-flight requests finish), then nothing of it is left running

Where the binary comes from (`find_tritonserver`): the `serve` extra's nvidia-pytriton wheel, which bundles
`tritonserver` 2.51 with its Python backend (Linux x86-64, glibc >= 2.35), or a `tritonserver` on PATH (a
Triton install or container, with its own backends folder). The wheel keeps one Python-backend stub per Python
version; the server gets a backends folder of its own (a temporary folder, removed at stop) holding the stub
for the model environment's Python.

The model environment. The Python backend's stub runs model.py in an embedded Python that takes its packages
from the `python` first on PATH when the server starts; that environment needs ldd_fast, torch, and numpy < 2
(the stub is built against numpy 1.x: with numpy 2 every response fails with "output tensor shape does not
match size"). Default: the environment ldd-fast runs in (the `serve` extra pins numpy < 2 there). Where that
pin does not suit the rest of an environment, `make_model_environment(DIR)` (`ldd-fast serve --model-env DIR`)
builds a separate one: a virtual environment holding numpy < 2 only, which sees every other package of this
environment behind it.

The process. The server runs in a session of its own (its process group holds its model stubs), bound to
127.0.0.1 unless told otherwise; `stop()` sends SIGTERM (Triton stops taking requests, finishes the ones in
flight, unloads the models) and, after `exit_timeout` more seconds, SIGKILLs the whole group, so no stub is
left behind. Its log goes to a file (`server.log_path`).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass

from ..errors import InvalidArgument, MissingDependency, Unavailable, boolean, integer, path_like, string

PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's defaults
LOOPBACK = "127.0.0.1"
INSTALL_HINT = ("pip install 'ldd-fast[serve]' (nvidia-pytriton bundles tritonserver; Linux x86-64, glibc >= 2.35), "
                "or put a Triton Inference Server's tritonserver on PATH")
NUMPY_PIN = "numpy<2"


@dataclass(frozen=True)
class TritonInstall:
    """Where a tritonserver and its Python backend are."""
    binary: str
    python_backend: str | None  # folder with libtriton_python.so (+ triton_python_backend_utils.py); None: stock
    stubs: str | None           # nvidia-pytriton: python_backend_stubs/<major.minor>/triton_python_backend_stub
    libs: str | None            # nvidia-pytriton: the wheel's bundled shared libraries (the stub needs them)
    source: str                 # "nvidia-pytriton" | "PATH" | "given"


def find_tritonserver(binary=None) -> TritonInstall:
    """The tritonserver to run: `binary` if given, else the nvidia-pytriton wheel's, else one on PATH."""
    if binary is not None:
        binary = os.path.abspath(path_like(binary, "tritonserver"))
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise MissingDependency(f"tritonserver {binary} is not an executable file ({INSTALL_HINT})")
        return TritonInstall(binary, None, None, None, "given")
    spec = importlib.util.find_spec("pytriton")  # located, not imported: importing it starts nothing but is slow
    if spec is not None and spec.submodule_search_locations:
        dist = os.path.join(list(spec.submodule_search_locations)[0], "tritonserver")
        bundled = os.path.join(dist, "bin", "tritonserver")
        if os.path.isfile(bundled):
            libs = os.path.join(os.path.dirname(os.path.dirname(dist)), "nvidia_pytriton.libs")
            return TritonInstall(bundled, os.path.join(dist, "backends", "python"),
                                 os.path.join(dist, "python_backend_stubs"),
                                 libs if os.path.isdir(libs) else None, "nvidia-pytriton")
    on_path = shutil.which("tritonserver")
    if on_path is not None:
        return TritonInstall(os.path.abspath(on_path), None, None, None, "PATH")
    raise MissingDependency(f"no tritonserver found: {INSTALL_HINT}")


# ----- the model environment -------------------------------------------------------------------------

def environment_python(env: str) -> str:
    """The python of a virtual environment or installation folder."""
    for name in ("python3", "python"):
        exe = os.path.join(env, "bin", name)
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    raise InvalidArgument(f"model environment {env}: no bin/python3 in it (a virtual environment folder is expected)")


def check_model_environment(env: str) -> dict:
    """What the stub will find in `env`: {"python": version, "numpy": version, "ldd_fast": bool}; an
    Unavailable naming the problem when it cannot serve ldd-fast's models."""
    exe = environment_python(env)
    probe = ("import sys, sysconfig, importlib.util as u\n"
             "import numpy\n"
             "shared = sysconfig.get_config_var('Py_ENABLE_SHARED') and sysconfig.get_config_var('LIBDIR')\n"
             "print('%d.%d' % sys.version_info[:2], numpy.__version__, u.find_spec('ldd_fast') is not None,\n"
             "      shared or '-')")
    try:
        out = subprocess.run([exe, "-c", probe], capture_output=True, text=True, timeout=120, check=True).stdout
    except subprocess.CalledProcessError as e:
        raise Unavailable(f"model environment {env}: its python cannot import numpy "
                          f"({(e.stderr or '').strip().splitlines()[-1:] or ['?']})") from None
    python, numpy, has_ldd, libdir = out.split()
    # The stub links libpython by name; the environment's own (a shared build's LIBDIR) must come first, or it
    # takes the system's, whose patch level may not match the environment's extension modules (_ssl, ...).
    info = {"python": python, "numpy": numpy, "ldd_fast": has_ldd == "True", "libdir": None if libdir == "-" else libdir}
    if not info["ldd_fast"]:
        raise Unavailable(f"model environment {env} has no ldd_fast: model.py imports it (install ldd-fast there, or "
                          f"let `ldd-fast serve --model-env DIR` build one that sees this environment)")
    if int(numpy.split(".")[0]) >= 2:
        raise Unavailable(f"model environment {env} has numpy {numpy}; Triton's Python backend needs numpy < 2 "
                          f"there (with numpy 2 every response fails). Build a separate one with `ldd-fast serve "
                          f"--repo R --model-env DIR` (made if missing: {NUMPY_PIN} in a virtual environment "
                          f"that sees this one's packages), or pip install '{NUMPY_PIN}' here")
    return info


def make_model_environment(folder, *, show=print) -> str:
    """Build the model environment `folder`: a virtual environment of this Python with numpy < 2 installed (by
    this environment's pip, from the package index) and this environment's site-packages behind it (a .pth
    file runs site.addsitedir on them, so editable installs resolve too). Returns the folder."""
    folder = os.path.abspath(path_like(folder, "model environment"))
    if os.path.exists(folder):
        raise InvalidArgument(f"model environment {folder} exists; make_model_environment builds a new one")
    show(f"building the model environment {folder} ({NUMPY_PIN} over this environment's packages) ...")
    work = folder + ".partial"
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", work], check=True, capture_output=True)
    purelib = subprocess.run([os.path.join(work, "bin", "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          "--no-warn-script-location", "--no-compile", "--target", purelib, NUMPY_PIN],
                         capture_output=True, text=True)
    if pip.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise Unavailable(f"pip could not install {NUMPY_PIN} into the model environment: "
                          f"{(pip.stderr or pip.stdout).strip().splitlines()[-1:]}")
    parents = [p for p in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])]
    with open(os.path.join(purelib, "ldd_fast_parent_environment.pth"), "w", encoding="utf-8") as f:
        f.write("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in parents) + "\n")
    # The venv's python is a link to a name this folder will keep: renaming the folder is safe.
    os.replace(work, folder)
    return folder


# ----- the server ------------------------------------------------------------------------------------

def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Nothing listens on host:port. SO_REUSEADDR as servers bind: a port a stopped server left in TIME_WAIT
    is free for the next one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_repository(repo) -> list[str]:
    """The model names of a Triton model repository (folders with a config.pbtxt); InvalidArgument if none. Each
    config.pbtxt is parsed with Triton's ModelConfig protobuf when tritonclient is installed."""
    repo = os.path.abspath(path_like(repo, "repo"))
    if not os.path.isdir(repo):
        raise InvalidArgument(f"--repo {repo}: no such folder (write one with ldd-fast export --triton-repo)")
    names = sorted(n for n in os.listdir(repo) if os.path.isfile(os.path.join(repo, n, "config.pbtxt")))
    if not names:
        raise InvalidArgument(f"--repo {repo} holds no model (no <name>/config.pbtxt): not a Triton model repository")
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return names
    for name in names:
        path = os.path.join(repo, name, "config.pbtxt")
        with open(path, encoding="utf-8") as f:
            try:
                config = text_format.Parse(f.read(), model_config_pb2.ModelConfig())
            except text_format.ParseError as e:
                raise InvalidArgument(f"{path}: not a Triton model config ({e})") from None
        if config.name and config.name != name:
            raise InvalidArgument(f"{path}: its name {config.name!r} is not its folder's {name!r} (Triton refuses it)")
    return names


class TritonServer:
    """A tritonserver process on a model repository (see the module docstring).

    repo: the model repository. http_port, grpc_port, metrics_port: on `host` (default 127.0.0.1); 0 picks a
    free port. binary: a tritonserver (default: find_tritonserver()). model_env: the model environment
    (default: this one). strict: every model must load (Triton's --exit-on-error and --strict-readiness);
    strict=False serves what loads and reports the rest unavailable. exit_timeout: seconds Triton waits for
    in-flight requests at SIGTERM. log: the log file (default: a file in the server's temporary folder).
    watchdog: reload a Python-backend model whose process died (`watch`).
    """

    def __init__(self, repo, *, http_port: int = PORTS["http"], grpc_port: int = PORTS["grpc"],
                 metrics_port: int = PORTS["metrics"], host: str = LOOPBACK, binary=None, model_env=None,
                 strict: bool = True, exit_timeout: int = 30, log=None, log_verbose: int = 0,
                 watchdog: bool = True):
        self.models = check_repository(repo)
        self.repo = os.path.abspath(repo)
        self.host = string(host, "host")
        ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        for what, port in ports.items():
            integer(port, f"{what}_port", 0)
            if port > 65535:
                raise InvalidArgument(f"{what}_port must be 0 .. 65535, got {port}")
        taken = [p for p in ports.values() if p]
        if len(set(taken)) != len(taken):
            raise InvalidArgument(f"the http, grpc and metrics ports must differ, got {ports}")
        self.ports = ports
        self.strict = boolean(strict, "strict")
        self.exit_timeout = integer(exit_timeout, "exit_timeout", 1)
        self.log_verbose = integer(log_verbose, "log_verbose", 0)
        self.watchdog = boolean(watchdog, "watchdog")
        self.install = find_tritonserver(binary)
        self.model_env = os.path.abspath(path_like(model_env, "model_env")) if model_env is not None else sys.prefix
        self.log_path = None if log is None else os.path.abspath(path_like(log, "log"))
        self.process: subprocess.Popen | None = None
        self._work: str | None = None
        self._log_file = None
        self._expect: list[str] = []
        self._watchdog: threading.Thread | None = None
        self._watch_stop: threading.Event | None = None
        self.restarts: dict[str, int] = {}
        self.report = None  # a callable taking one line: what the watchdog does

    # ----- life cycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 120.0, models=None, cancel: threading.Event | None = None) -> "TritonServer":
        """Start the server and wait until it is ready, and with it `models` (default: every model when strict,
        none otherwise); Unavailable, with the log's reason, when it is not. `cancel` set while waiting (Ctrl-C
        in `ldd-fast serve`) stops the server and raises KeyboardInterrupt."""
        if self.process is not None:
            raise InvalidArgument("this TritonServer is already started")
        self._expect = list(self.models if models is None and self.strict else models or [])
        unknown = sorted(set(self._expect) - set(self.models))
        if unknown:
            raise InvalidArgument(f"models {unknown} are not in the repository {self.repo} ({self.models})")
        env_info = check_model_environment(self.model_env)
        for what, port in self.ports.items():
            if port == 0:
                self.ports[what] = free_port(self.host)
            elif not port_is_free(port, self.host):
                raise InvalidArgument(f"port {port} on {self.host} (--{what}-port) is taken: stop what listens there "
                                      f"or choose another port")
        self._work = tempfile.mkdtemp(prefix="ldd-fast-triton-")
        command = [self.install.binary, f"--model-repository={self.repo}",
                   f"--http-address={self.host}", f"--http-port={self.ports['http']}",
                   f"--grpc-address={self.host}", f"--grpc-port={self.ports['grpc']}",
                   f"--metrics-address={self.host}", f"--metrics-port={self.ports['metrics']}",
                   "--allow-metrics=true", "--allow-gpu-metrics=false",
                   f"--exit-on-error={'true' if self.strict else 'false'}",
                   f"--strict-readiness={'true' if self.strict else 'false'}",
                   f"--exit-timeout-secs={self.exit_timeout}", f"--log-verbose={self.log_verbose}",
                   # explicit control (every model loaded at start) lets the watchdog reload a model whose stub died
                   "--model-control-mode=explicit", "--load-model=*"]
        backends = self._stage_backends(env_info["python"])
        if backends is not None:
            command.append(f"--backend-directory={backends}")
        env = dict(os.environ)
        env["PATH"] = os.path.join(self.model_env, "bin") + os.pathsep + env.get("PATH", "")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [env_info["libdir"], env.get("LD_LIBRARY_PATH"),
                                                              self.install.libs]))
        env.pop("PYTHONHOME", None)
        if self.log_path is None:
            self.log_path = os.path.join(self._work, "tritonserver.log")
        self._log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        # Whatever ends this Python process (an exception, exit), the server's group goes with it.
        self._finalizer = weakref.finalize(self, _kill_group, self.process.pid)
        try:
            self.wait_ready(timeout, cancel)
            if self.watchdog:
                self.watch()
        except BaseException:
            self.stop()
            raise
        return self

    def _stage_backends(self, python: str) -> str | None:
        """A backends folder with the Python backend and the stub for `python` (nvidia-pytriton), or None."""
        if self.install.python_backend is None:
            return None
        stub = os.path.join(self.install.stubs, python, "triton_python_backend_stub")
        if not os.path.isfile(stub):
            have = sorted(os.listdir(self.install.stubs)) if os.path.isdir(self.install.stubs) else []
            raise Unavailable(f"nvidia-pytriton has no Python-backend stub for Python {python} (it has "
                              f"{', '.join(have) or 'none'}): use a model environment of one of those versions")
        target = os.path.join(self._work, "backends", "python")
        os.makedirs(target)
        for name in os.listdir(self.install.python_backend):
            src = os.path.join(self.install.python_backend, name)
            if os.path.isfile(src):
                shutil.copy2(src, os.path.join(target, name))
        shutil.copy2(stub, os.path.join(target, "triton_python_backend_stub"))
        return os.path.join(self._work, "backends")

    def wait_ready(self, timeout: float = 120.0, cancel: threading.Event | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt
            if self.process.poll() is not None:
                raise Unavailable(f"tritonserver exited with status {self.process.returncode} while starting: "
                                  f"{self.failure()}")
            if self.ready() and all(self.model_ready(m) for m in self._expect):
                return
            failed = self._failed(self._expect)
            if failed:
                raise Unavailable(f"model {failed[0]} failed to load: {failed[1]}")
            if time.monotonic() > deadline:
                raise Unavailable(f"tritonserver was not ready after {timeout:g} s: {self.failure()}")
            time.sleep(0.2)

    def _failed(self, names) -> tuple[str, str] | None:
        """(name, reason) of the first of `names` that Triton reports UNAVAILABLE with a reason, else None."""
        if not names:
            return None
        index = self._json("/v2/repository/index", {}) or []
        for entry in index:
            if entry.get("name") in names and entry.get("state") == "UNAVAILABLE" and entry.get("reason"):
                return entry["name"], entry["reason"].strip().splitlines()[0]
        return None

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait (in-flight requests finish), then SIGKILL the process group; returns the exit status."""
        status = None
        if self._watchdog is not None:
            self._watch_stop.set()
            self._watchdog.join(timeout=130)
            self._watchdog = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                status = self.process.wait(timeout=self.exit_timeout + 15 if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                status = None
            _kill_group(self.process.pid)
            if status is None:
                status = self.process.wait()
            self._finalizer.detach()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._work is not None:
            # The temporary folder goes; a log kept in it stays after an unclean exit, for the one who reads it.
            log_inside = self.log_path is not None and self.log_path.startswith(self._work)
            shutil.rmtree(os.path.join(self._work, "backends"), ignore_errors=True)
            if not log_inside or status == 0:
                shutil.rmtree(self._work, ignore_errors=True)
            self._work = None
        return status

    def __enter__(self):
        return self.start() if self.process is None else self

    def __exit__(self, *exc):
        self.stop()

    # ----- state ---------------------------------------------------------------------------------

    @property
    def endpoints(self) -> dict:
        return {what: f"{self.host}:{port}" for what, port in self.ports.items()}

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _get(self, path: str, timeout: float = 2.0) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.endpoints['http']}{path}", timeout=timeout) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (OSError, urllib.error.URLError):
            return 0

    def ready(self) -> bool:
        """GET /v2/health/ready is 200."""
        return self._get("/v2/health/ready") == 200

    def model_ready(self, name: str) -> bool:
        return self._get(f"/v2/models/{name}/ready") == 200

    def log(self) -> str:
        if self.log_path is None or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def failure(self) -> str:
        """The first lines of the log that say what went wrong (or its last line)."""
        lines = [ln.strip() for ln in self.log().splitlines() if ln.strip()]
        # Triton's error lines start with E; on a CPU machine it also logs harmless CUDA / NVML / DCGM complaints
        harmless = ("cudadriverhelper", "nvml", "dcgm", "cuda driver")
        errors = [ln for ln in lines if (ln.startswith("E") or "error" in ln.lower())
                  and not any(h in ln.lower() for h in harmless)]
        return " | ".join(errors[:3]) if errors else (lines[-1] if lines else "no log")

    def stub_pids(self, model: str | None = None) -> list[int]:
        """The Python-backend stub processes of this server (of one model, if named), from /proc."""
        if not self.running:
            return []
        prefix = None if model is None else os.path.join(self.repo, model, "").encode()
        out = []
        for pid in group_alive(self.process.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if len(argv) > 1 and argv[0].endswith(b"triton_python_backend_stub") and (
                    prefix is None or argv[1].startswith(prefix)):
                out.append(pid)
        return out

    # ----- the watchdog --------------------------------------------------------------------------

    def _report(self, message: str) -> None:
        if self.report is not None:
            self.report(message)

    def _python_models(self) -> dict[str, int]:
        """{model: its Python-backend instance count} of the loaded models (from the server's own configs)."""
        out = {}
        for name in self.models:
            config = self._json(f"/v2/models/{name}/config")
            if config and config.get("backend") == "python" and self.model_ready(name):
                out[name] = sum(int(g.get("count", 1)) for g in config.get("instance_group", [{}]))
        return out

    def _json(self, path: str, body: dict | None = None, timeout: float = 5.0):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://{self.endpoints['http']}{path}", data=data,
                                         method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                text = r.read()
                return json.loads(text) if text else {}
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def reload(self, name: str, timeout: float = 120.0) -> bool:
        """Reload one model with new instances (a changed `ldd_fast_restarts` parameter makes Triton build them:
        a load of an unchanged config is a no-op, whose dead stub would stay). True when it loaded."""
        config = self._json(f"/v2/models/{name}/config")
        if not config:
            return False
        self.restarts[name] = self.restarts.get(name, 0) + 1
        config.setdefault("parameters", {})["ldd_fast_restarts"] = {"string_value": str(self.restarts[name])}
        return self._json(f"/v2/repository/models/{name}/load", {"parameters": {"config": json.dumps(config)}},
                          timeout=timeout) is not None

    def watch(self, interval: float = 1.0) -> None:
        """Start a thread that reloads a Python-backend model whose stub process died (Triton 2.51 keeps such a
        model "ready" and fails each of its requests with "Stub process ... is not healthy")."""
        if self._watchdog is not None:
            return
        stop = self._watch_stop = threading.Event()
        expected = self._python_models()

        def run():
            while not stop.wait(interval):
                if not self.running:
                    return
                for name, count in expected.items():
                    if len(self.stub_pids(name)) < count and not stop.is_set():
                        self._report(f"model {name}: a Python-backend process died; reloading it")
                        ok = self.reload(name)
                        self._report(f"model {name}: {'reloaded' if ok else 'reload failed (see the log)'}")

        self._watchdog = threading.Thread(target=run, name="ldd-fast-triton-watchdog", daemon=True)
        self._watchdog.start()


def group_alive(pgid: int) -> list[int]:
    """Processes still in the process group pgid (zombies left out), from /proc."""
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                        if f.read().split(") ")[-1][:1] != "Z":
                            alive.append(int(entry))
            except OSError:
                continue
    return alive


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the thread that started it ends (Linux prctl
    PR_SET_PDEATHSIG; start the server from a thread that lives as long as it should), so a killed
    `ldd-fast serve` leaves no server behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _kill_group(pgid: int) -> None:
    if pgid == os.getpgid(0):  # never our own group
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
