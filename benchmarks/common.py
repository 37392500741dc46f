"""Shared benchmark plumbing: pinned threads, environment record, honest timing, result files."""
from __future__ import annotations

import json
import os
import time

import torch

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def pin_threads(n: int | None) -> int:
    """Pin torch's intra-op threads (default: all cores) and return the number used."""
    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def environment(threads: int) -> dict:
    """Hardware and versions (ldd_fast.bench.environment: the record every lf.bench result carries)."""
    from ldd_fast.bench import environment as record

    return record(threads, torch.device("cuda" if torch.cuda.is_available() else "cpu"))


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
    from ldd_fast.bench import quartiles

    return quartiles(xs)


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
