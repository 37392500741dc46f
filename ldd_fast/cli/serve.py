"""`ldd-fast serve`: run Triton Inference Server on a repository written by `ldd-fast export --triton-repo`
(ldd_fast.serving.TritonServer), bound to 127.0.0.1, until Ctrl-C or SIGTERM."""
from __future__ import annotations

import os
import signal
import sys
import threading

from .common import CLIError

HELP = "serve a Triton model repository (ldd-fast export --triton-repo) with tritonserver on 127.0.0.1"
RULES = []


def add_parser(sub, formatter):
    p = sub.add_parser("serve", help=HELP, formatter_class=formatter,
                       description="Start NVIDIA Triton Inference Server on a model repository, wait until its models "
                                   "are ready, print the endpoints, and serve until Ctrl-C / SIGTERM (in-flight "
                                   "requests finish; nothing is left running). The binary: the `serve` extra "
                                   "(pip install 'ldd-fast[serve]') or a tritonserver on PATH.")
    p.add_argument("--repo", required=True, help="the model repository (ldd-fast export --triton-repo DIR)")
    for what, port in (("http", 8000), ("grpc", 8001), ("metrics", 8002)):
        p.add_argument(f"--{what}-port", type=int, default=port, metavar="PORT",
                       help=f"{what} port on the host (default {port}; 0: a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the server)")
    p.add_argument("--model-env", default=None, metavar="DIR",
                   help="the Python environment the models run in (needs numpy < 2, ldd_fast, torch); made if "
                        "missing: numpy < 2 over this environment's packages (default: this environment)")
    p.add_argument("--tritonserver", default=None, metavar="PATH", help="the tritonserver binary (default: the "
                                                                        "serve extra's, else the one on PATH)")
    p.add_argument("--log", default=None, help="the server's log file (default: a temporary file, shown on errors)")
    p.add_argument("--exit-timeout", type=int, default=30, metavar="S",
                   help="at Ctrl-C / SIGTERM, how long in-flight requests may take (default 30 s)")
    p.add_argument("--start-timeout", type=float, default=300.0, metavar="S",
                   help="how long the models may take to load (default 300 s)")
    p.add_argument("--no-restart", action="store_true",
                   help="do not reload a model whose Python-backend process died (it then fails every request)")
    return p


def validate(args, given) -> None:
    for what in ("http", "grpc", "metrics"):
        port = getattr(args, f"{what}_port")
        if not 0 <= port <= 65535:
            raise CLIError(f"--{what}-port must be 0 .. 65535, got {port}")
    if args.exit_timeout < 1:
        raise CLIError(f"--exit-timeout must be at least 1 s, got {args.exit_timeout}")
    if args.start_timeout <= 0:
        raise CLIError(f"--start-timeout must be positive, got {args.start_timeout:g}")


def run(args) -> int:
    from ..serving.server import TritonServer, make_model_environment

    if args.model_env is not None and not os.path.exists(args.model_env):
        make_model_environment(args.model_env, show=lambda msg: print(msg, flush=True))
        print(f"built {args.model_env}; later runs reuse it (--model-env {args.model_env})", flush=True)
    server = TritonServer(args.repo, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, host=args.host, binary=args.tritonserver,
                          model_env=args.model_env, exit_timeout=args.exit_timeout, log=args.log,
                          watchdog=not args.no_restart)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"starting tritonserver ({server.install.source}: {server.install.binary}) on {args.repo}: models "
              f"{', '.join(server.models)} ...", flush=True)
        server.start(timeout=args.start_timeout, cancel=stop)  # Ctrl-C while the models load: stopped, exit 130
        ends = server.endpoints
        print(f"ready: http {ends['http']} (v2 API, /v2/health/ready), grpc {ends['grpc']}, metrics "
              f"http://{ends['metrics']}/metrics; tritonserver pid {server.process.pid}, log {server.log_path}",
              flush=True)
        print("Ctrl-C or SIGTERM stops it (in-flight requests finish)", flush=True)
        server.report = lambda msg: print(msg, flush=True)
        while not stop.wait(0.5):
            if not server.running:
                print(f"tritonserver exited by itself (status {server.process.returncode}): {server.failure()}",
                      file=sys.stderr, flush=True)
                return 1
        print("stopping: in-flight requests finish ...", flush=True)
    finally:
        status = server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"stopped (tritonserver exit status {status})", flush=True)
    return 0
