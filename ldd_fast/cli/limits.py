"""Bounds checked before any work: threads, the device, and the memory a run will need.

Each bound is a one-line error (exit 2) that says how to change the run; `--no-limits` lifts the
thread and memory bounds (never `--force`, which means "use a schedule made for something else").
"""
from __future__ import annotations

import math
import os
import weakref

import torch

from .common import POSITIVE, CLIError

THREADS_PER_CORE = 2  # beyond two threads a core, torch's pool only oversubscribes: --threads 10000 started
                      # ~20,000 threads (torch's and onnxruntime's) and made a 2 s `sample` take 126 s
ACTIVATION_SAFETY = 2  # the probe sees module outputs, not the temporaries inside a module (attention scores)


def thread_cap() -> int:
    return THREADS_PER_CORE * (os.cpu_count() or 1)


def compute_args(sp) -> None:
    from ..bench import default_threads

    sp.add_argument("--threads", type=POSITIVE, default=None,
                    help="torch intra-op threads on the CPU (default: half the cores, at most 8: "
                         f"{default_threads()} here; all cores of a shared machine would fight other jobs; "
                         f"at most {thread_cap()} = 2 x the cores unless --no-limits)")
    sp.add_argument("--device", default=None,
                    help="cpu | cuda | cuda:N (default: cuda when a GPU is visible, else cpu)")
    sp.add_argument("--no-limits", action="store_true",
                    help="lift the bounds checked before work: threads at most 2 x the cores, the estimated memory "
                         "of the samples, solver registers and one batch's activations within what is available")


def setup_compute(args) -> torch.device:
    """Pin torch's threads (and say how many, when the default was chosen) and resolve --device."""
    from ..bench import default_threads

    threads = args.threads or default_threads()
    if threads > thread_cap() and not args.no_limits:
        raise CLIError(f"--threads {threads}: at most {thread_cap()} ({THREADS_PER_CORE} x the {os.cpu_count()} "
                       f"cores: more only oversubscribes them); pass --no-limits to run anyway")
    torch.set_num_threads(threads)
    if args.threads is None:
        print(f"ldd-fast: {threads} CPU thread(s) of {os.cpu_count()} cores (the default: half, at most 8; "
              f"--threads N to change)", flush=True)
    spec = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise CLIError(f"--device {spec!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {spec}: this machine has no CUDA GPU that torch can use")
    if device.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {spec}: ldd-fast runs on cpu or cuda")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CLIError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) here")
    return device


def available_bytes(device: torch.device) -> int | None:
    """Memory a run can still take on `device` (None where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def activation_bytes(den, shape, cond=None, *, device) -> int:
    """Peak bytes of module outputs alive at once in one no-grad network call at batch 1.

    A forward hook counts each leaf module's output and a weakref finalizer uncounts it when it is
    freed, so skip connections held across a U-Net count and temporaries do not pile up."""
    live = peak = 0

    def freed(n):
        nonlocal live
        live -= n

    def hook(module, inputs, output):
        nonlocal live, peak
        if next(module.children(), None) is not None:
            return
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                n = t.numel() * t.element_size()
                live += n
                weakref.finalize(t, freed, n)
        peak = max(peak, live)

    x = torch.zeros(1, *shape, device=device)
    t = torch.as_tensor(float(den.noise.t_max), dtype=torch.float64)
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with torch.no_grad():
            den(x, t, cond)
    finally:
        handle.remove()
    return peak


def check_memory(args, den, *, batch: int, shape, plan_registers: int, cond=None, dtype_bytes: int = 4,
                 samples: int | None = None, device) -> None:
    """Refuse a run whose noise, solver registers, output and one batch's activations do not fit.

    `batch` samples go through the network at once (twice as many with guidance); `samples` (default
    `batch`) are kept as output."""
    if args.no_limits:
        return
    free = available_bytes(device)
    if free is None:
        return
    per_sample = math.prod(shape) * dtype_bytes
    samples = batch if samples is None else samples
    doubled = 2 if den.guidance_scale != 1.0 else 1
    # Registers and the noise for the batch in flight, the output kept; the probe's batch-1 activations
    # scale with the batch.
    need = per_sample * (batch * (plan_registers + 1) + samples)
    if need < free:
        need += ACTIVATION_SAFETY * activation_bytes(den, shape, cond, device=device) * batch * doubled
    if need > free:
        raise CLIError(f"this run needs about {_gib(need)} ({samples} samples of {tuple(shape)}, batch {batch}, "
                       f"{plan_registers} solver registers and the network's activations) but {device} has "
                       f"{_gib(free)} available; use a smaller -n / --batch, or --no-limits to try anyway")


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"
