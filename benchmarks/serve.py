"""Serving through Triton Inference Server vs the sampler in-process, on the built-in digits model.

    python benchmarks/serve.py [--seconds 8] [--concurrency 1 4 16] [--threads 1]

A real tritonserver (ldd_fast.serving.TritonServer: the serve extra's binary, 127.0.0.1) serves one repository
with the same fixed sampler (UniPC-3, NFE 4, logSNR steps) on two backends, eager (lf.sample) and onnxruntime
(the exported graph), each one CPU instance with `--threads` intra-op threads, max batch 16, queue delay 0.
The load generator is written here on tritonclient (perf_analyzer does not install on this platform: pip finds
only an empty placeholder): `concurrency` client threads, each with its own HTTP or gRPC client, send batch-1
requests (z and a class label) back to back for `--seconds` after a warm-up that is not counted; throughput is
completed requests per second, latency the client's wall time per request (p50, p99). The in-process
reference is the call the served model makes (lf.sample for eager, an OnnxSampler on the repository's own graph
for onnxruntime) at batch 1 with the same threads, back to back, before the server starts: the serving overhead per request is the served
p50 at concurrency 1 minus the in-process median. Results: benchmarks/results/serve.{json,md,png}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, env_markdown, environment, pin_threads, write_results  # noqa: E402

import ldd_fast as lf  # noqa: E402
from ldd_fast.serving import TritonServer, write_repository  # noqa: E402

BACKENDS = ("eager", "onnxruntime")
PROTOCOLS = ("http", "grpc")


def percentile(xs, q):
    return float(np.percentile(np.asarray(xs), q))


def load(server, model, protocol, concurrency, seconds, warmup_s=1.0):
    """(requests per second, latencies in ms) of `concurrency` back-to-back batch-1 senders."""
    if protocol == "http":
        import tritonclient.http as client_lib
    else:
        import tritonclient.grpc as client_lib
    url = server.endpoints[protocol]
    z = np.random.default_rng(0).standard_normal((1, 1, 8, 8), dtype=np.float32)
    cond = np.array([[3]], dtype=np.int64)
    latencies, errors = [], []
    lock = threading.Lock()
    start = time.perf_counter() + warmup_s
    end = start + seconds

    def sender():
        c = client_lib.InferenceServerClient(url)
        zi = client_lib.InferInput("z", [1, 1, 8, 8], "FP32")
        zi.set_data_from_numpy(z)
        ci = client_lib.InferInput("cond", [1, 1], "INT64")
        ci.set_data_from_numpy(cond)
        mine = []
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= end:
                    break
                try:
                    c.infer(model, [zi, ci])
                except Exception as e:  # noqa: BLE001 - counted, reported
                    with lock:
                        errors.append(str(e)[:100])
                    continue
                t1 = time.perf_counter()
                if t0 >= start and t1 <= end:  # requests wholly inside the measured window
                    mine.append(t1 - t0)
        finally:
            c.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=sender) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / seconds, [1e3 * v for v in latencies], errors


def in_process(den, sched, backend, graph, threads, seconds):
    """ms per call of what the served model runs, in this process: lf.sample (eager) or the repository's own
    graph under onnxruntime (OnnxSampler) at batch 1, back to back after 20 warm-up calls."""
    z = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([3])
    if backend == "eager":
        def call():
            with torch.no_grad():
                lf.sample(den, z, sched, cond=cond)
    else:
        from ldd_fast.export import OnnxSampler

        runner = OnnxSampler(graph, threads=threads)

        def call():
            runner(z, cond)
    for _ in range(20):
        call()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        call()
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of each instance and of in-process")
    args = p.parse_args(argv)
    threads = pin_threads(args.threads)
    den = lf.zoo.load("digits")
    sched = lf.discretize(den.noise, 4, "logsnr").replace(solver="unipc", order=3)
    rows, work = [], tempfile.mkdtemp(prefix="ldd-fast-serve-bench-")
    graphs = {}
    for backend in BACKENDS:
        repo = write_repository(den, sched, os.path.join(work, "repo"), name=f"digits_{backend}", backend=backend,
                                model="digits", max_batch=16, max_queue_delay_us=0, threads=threads)
        graphs[backend] = repo.graph.path if repo.graph is not None else None
    reference = {b: in_process(den, sched, b, graphs[b], threads, args.seconds / 2) for b in BACKENDS}
    with TritonServer(os.path.join(work, "repo"), http_port=0, grpc_port=0, metrics_port=0) as server:
        for backend in BACKENDS:
            for protocol in PROTOCOLS:
                for concurrency in args.concurrency:
                    rps, lat, errors = load(server, f"digits_{backend}", protocol, concurrency, args.seconds)
                    row = {"backend": backend, "protocol": protocol, "concurrency": concurrency, "batch": 1,
                           "requests_per_s": rps, "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
                           "requests": len(lat), "errors": len(errors),
                           "in_process_ms": statistics.median(reference[backend])}
                    rows.append(row)
                    print(f"{backend:11s} {protocol:4s} c={concurrency:<3d} {rps:8.1f} req/s  p50 {row['p50_ms']:7.2f} "
                          f"ms  p99 {row['p99_ms']:7.2f} ms  (in-process {row['in_process_ms']:.2f} ms)"
                          + (f"  {len(errors)} errors" if errors else ""), flush=True)
    env = environment(threads)
    env["load_generator"] = "benchmarks/serve.py (tritonclient threads; perf_analyzer does not install here)"
    env["tritonserver"] = "nvidia-pytriton 0.7.0 (Triton 2.51), Python backend"
    payload = {"env": env, "settings": vars(args), "rows": rows}
    lines = ["# Serving through Triton vs in-process", "",
             f"Built-in digits model, UniPC-3 NFE 4 (logSNR), batch-1 requests with a class label, one instance per "
             f"backend with {threads} thread(s), max batch 16, queue delay 0; {args.seconds:g} s per row after 1 s "
             "of warm-up. Overhead: served p50 at concurrency 1 minus the in-process median (lf.Sampler, same "
             "backend and threads).", "",
             "| backend | protocol | concurrency | req/s | p50 ms | p99 ms | in-process ms | overhead ms (c=1) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        overhead = f"{r['p50_ms'] - r['in_process_ms']:.2f}" if r["concurrency"] == 1 else ""
        lines.append(f"| {r['backend']} | {r['protocol']} | {r['concurrency']} | {r['requests_per_s']:.1f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['in_process_ms']:.2f} | {overhead} |")
    lines += ["", "## Environment", "", env_markdown(env)]
    write_results("serve", payload, "\n".join(lines) + "\n")
    from ldd_fast.plots import plot_serving

    plot_serving(rows, os.path.join(RESULTS, "serve.png"), env=env)
    print(f"wrote {os.path.join(RESULTS, 'serve.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
