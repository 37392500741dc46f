"""Shared benchmark plumbing: pinned threads, environment record, honest timing, result files."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def pin_threads(n: int | None) -> int:
    """Pin torch's intra-op threads (default: all cores) and return the number used."""
    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> dict:
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "device": "cpu",
    }
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    for mod in ("triton", "onnxruntime", "diffusers"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional packages: absent or broken, just not recorded
            pass
    return env


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved_times(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Wall seconds of each callable, run round-robin so drifts of the machine hit all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    out = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            out[k].append(time.perf_counter() - t0)
    return out


def summary(xs: list[float]) -> dict:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4) if len(xs) >= 4 else [xs[0], statistics.median(xs), xs[-1]]
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2], "min": xs[0], "n": len(xs)}


def write_results(name: str, payload: dict, markdown: str) -> tuple[str, str]:
    """benchmarks/results/<name>.json and .md, written atomically."""
    from ldd_fast.io import atomic_write_text

    os.makedirs(RESULTS, exist_ok=True)
    jpath, mpath = os.path.join(RESULTS, f"{name}.json"), os.path.join(RESULTS, f"{name}.md")
    atomic_write_text(jpath, json.dumps(payload, indent=1) + "\n")
    atomic_write_text(mpath, markdown)
    return jpath, mpath


def done_rows(name: str, key) -> dict:
    """The rows a resumable benchmark already wrote to results/<name>.json, by key(row) ({} if none)."""
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return {key(r): r for r in json.load(f)["rows"]}


def env_markdown(env: dict) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in env.items()) + "\n"
