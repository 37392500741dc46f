"""onnxruntime vs the eager PyTorch sampler: latency and parity, measured in one run with pinned threads.

For benchmarks/latency.py and `ldd-fast bench` / `ldd-fast demo` to call:

    from ldd_fast.export.bench import compare_latency, model
    den, shape = model("digits")            # or "cifar": the CIFAR-10-size U-Net (3x32x32)
    rows = compare_latency(den, schedule, solver="unipc", order=3, sample_shape=shape,
                           batches=(1, 64), threads=1)

Each row: batch, eager and onnxruntime latency (median, quartiles, n) in ms, the median of the
per-round ratio onnxruntime / eager, and the parity max|diff| / max|ref| of the two outputs. The
graph is exported once (dynamic batch) and both backends run round-robin with the same number
of intra-op threads (torch.set_num_threads and onnxruntime's intra_op_num_threads); warm-up
rounds (the first run of an onnxruntime session allocates its arena) are excluded. The eager
baseline is `lf.run_plan` on a precomputed Plan: the same executor as lf.sample without
re-planning per call.

    python -m ldd_fast.export.bench --model digits --batches 1 64 --threads 1
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

import ldd_fast as lf


def model(name: str, *, seed: int = 0):
    """A random-weight benchmark model and its sample shape: latency does not depend on weight values.

    "digits": the built-in model's architecture (TinyUNet, default_network_config("edm"), 1x8x8), EDM.
    "cifar": a CIFAR-10-size U-Net of the same family (3x32x32, 128 channels at 32x32 and 256 at
    16x16 / 8x8, attention at 16x16, 2 blocks per level; DDPM's CIFAR layout at half DDPM's width), EDM.
    """
    from ldd_fast.zoo.train import default_network_config
    from ldd_fast.zoo.unet import TinyUNet

    torch.manual_seed(seed)
    if name == "digits":
        net, shape = TinyUNet(**default_network_config("edm")), (1, 8, 8)
    elif name == "cifar":
        net = TinyUNet(img_resolution=32, in_channels=3, model_channels=64, channel_mult=[2, 4, 4],
                       num_res_blocks=2, attn_resolutions=[16], dropout=0.0, head_channels=64)
        shape = (3, 32, 32)
    else:
        raise ValueError(f"unknown benchmark model {name!r}; expected 'digits' or 'cifar'")
    with torch.no_grad():  # the zero-initialised output layers would make every output c_skip * x
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return lf.Denoiser(net.eval().requires_grad_(False), lf.EDM(), prediction="edm"), shape


def _summary(xs):
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4) if len(xs) >= 4 else [xs[0], statistics.median(xs), xs[-1]]
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2], "n": len(xs)}


def onnx_backend(den, schedule, example_z, *, folder=None, threads=None, **export_kwargs):
    """Export to a folder (a temporary one by default) and return (OnnxSampler, OnnxExport).

    The temporary folder lives as long as the returned sampler (`sampler._tmpdir`).
    """
    from . import OnnxSampler, to_onnx

    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="ldd_fast_onnx_")
        folder = tmp.name
    info = to_onnx(den, schedule, os.path.join(folder, "sampler.onnx"), example_z, **export_kwargs)
    runner = OnnxSampler(info.path, providers=["CPUExecutionProvider"], threads=threads)
    runner._tmpdir = tmp
    return runner, info


def compare_latency(den, schedule, *, solver=None, order=None, sample_shape, batches=(1, 64), threads=1,
                    repeats=20, warmup=3, cond_fn=None, dtype=None, **options) -> list[dict]:
    """Latency of onnxruntime and of the eager sampler on the same model, schedule and noise.

    cond_fn(batch) -> cond, for conditional models. threads: pinned for torch and onnxruntime alike
    (the previous torch setting is restored afterwards).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        plan = lf.plan_for(den, schedule, solver=solver, order=order, **options)
        gen = torch.Generator().manual_seed(0)
        example = torch.randn(2, *sample_shape, generator=gen)
        t0 = time.perf_counter()
        runner, info = onnx_backend(den, schedule, example, threads=threads, solver=solver, order=order,
                                    cond=None if cond_fn is None else cond_fn(2), dtype=dtype, **options)
        export_s = time.perf_counter() - t0
        rows = []
        for batch in batches:
            z = torch.randn(batch, *sample_shape, generator=gen)
            cond = None if cond_fn is None else cond_fn(batch)
            fns = {"eager": lambda: lf.run_plan(plan, den, z, cond), "onnxruntime": lambda: runner(z, cond)}
            with torch.no_grad():
                ref, out = fns["eager"](), fns["onnxruntime"]()
                for _ in range(warmup):
                    for fn in fns.values():
                        fn()
                times = {k: [] for k in fns}
                for _ in range(repeats):
                    for k, fn in fns.items():  # round-robin: machine drift hits both alike
                        t = time.perf_counter()
                        fn()
                        times[k].append(time.perf_counter() - t)
            ratios = [o / e for o, e in zip(times["onnxruntime"], times["eager"])]
            rows.append({
                "batch": batch, "solver": f"{plan.solver}{plan.order}", "nfe": plan.nfe, "threads": threads,
                "dtype": info.dtype,
                "eager_ms": {k: 1e3 * v if k != "n" else v for k, v in _summary(times["eager"]).items()},
                "onnxruntime_ms": {k: 1e3 * v if k != "n" else v for k, v in _summary(times["onnxruntime"]).items()},
                "ratio_median": statistics.median(ratios),
                "parity": float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30)),
                "export_s": export_s,
            })
        return rows
    finally:
        torch.set_num_threads(previous)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="onnxruntime vs eager sampler latency (random-weight models)")
    ap.add_argument("--model", default="digits", choices=("digits", "cifar"))
    ap.add_argument("--solver", default="unipc")
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--nfe", type=int, default=6)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    den, shape = model(args.model)
    sched = lf.discretize(den.noise, args.nfe, "edm", solver=args.solver)
    rows = compare_latency(den, sched, solver=args.solver, order=args.order, sample_shape=shape,
                           batches=args.batches, threads=args.threads, repeats=args.repeats)
    print(f"{args.model}, {rows[0]['solver']}, nfe {rows[0]['nfe']}, threads {args.threads}, "
          f"export {rows[0]['export_s']:.1f} s")
    print(f"{'batch':>5s} {'eager ms':>10s} {'ort ms':>10s} {'ort/eager':>10s} {'parity':>9s}")
    for r in rows:
        print(f"{r['batch']:5d} {r['eager_ms']['median']:10.2f} {r['onnxruntime_ms']['median']:10.2f} "
              f"{r['ratio_median']:10.3f} {r['parity']:9.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
