"""End-to-end sampler latency per backend, as a ratio to its floor: nfe x one network forward.

The floor is measured in the same run, round-robin with the sampler, in the same execution
mode as the sampler's network calls: eager forward for "eager" and "triton", one
graph-captured forward replayed for "cuda_graph", the torch.compile'd forward for
"compile". Ratio = sampler / (nfe x forward), per round; median [q1, q3] over rounds.
Warm-up (Triton compilation, graph capture, torch.compile) is excluded and reported
separately as first_call_s. Latency does not depend on weight values: random weights.

Models:
  builtin  the built-in digits U-Net (TinyUNet, EDM preconditioning, 1x8x8)
  cifar    diffusers UNet2DModel, DDPM CIFAR-10 configuration (35.7 M parameters), 3x32x32, eps
  sd       diffusers UNet2DConditionModel, Stable Diffusion 1.5 configuration (860 M), 4x64x64
           latents in fp16, text condition 77x768, classifier-free guidance 7.5 (GPU only)
Solver: UniPC order 3 (bh2), EDM (rho = 7) time steps.

Presets (explicit flags override them):
  full       NFE 4 6 10, batch 1 8 64, every model and backend this machine runs
             (cifar on CPU: batch 1 and 8; compile: cifar batch 1 on GPU, builtin on CPU)
  cpu_small  a few minutes on one CPU thread: builtin at every NFE / batch (eager, and
             compile at batch 64, NFE 4), cifar at batch 1, NFE 4 (eager)
  gpu_check  what benchmarks/gpu_check.sh runs in its latency section

    python benchmarks/latency.py --preset cpu_small
Every measurement is lf.bench (ldd_fast/bench.py): this script only chooses the models and rows.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import ldd_fast as lf  # noqa: E402
from ldd_fast.io import atomic_write  # noqa: E402

MODELS = ("builtin", "cifar", "sd")
BACKENDS = ("eager", "triton", "cuda_graph", "compile", "onnxruntime")
DDPM_CIFAR = dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                  layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))
DDPM_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
                  "prediction_type": "epsilon"}
SD15 = dict(sample_size=64, cross_attention_dim=768)  # the rest is UNet2DConditionModel's default (SD 1.x)
SD_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "prediction_type": "epsilon"}
PRESETS = {
    "full": dict(nfe=[4, 6, 10], batches=[1, 8, 64], repeats=20),
    "cpu_small": dict(nfe=[4, 6, 10], batches=[1, 8, 64], repeats=21, models=["builtin", "cifar"],
                      backends=["eager", "compile", "onnxruntime"]),
    "gpu_check": dict(nfe=[4, 6, 10], batches=[1, 8, 64], repeats=10, models=["cifar", "builtin", "sd"],
                      backends=["cuda_graph", "eager", "triton"]),
}


def build_model(name: str, device: str):
    """(Denoiser, sample shape, cond factory or None, model description)."""
    torch.manual_seed(0)
    if name == "builtin":
        from ldd_fast.zoo.train import default_network_config
        from ldd_fast.zoo.unet import TinyUNet

        config = default_network_config("edm")
        net = TinyUNet(**config).eval().to(device)
        return lf.Denoiser(net, lf.EDM(), prediction="edm"), (1, 8, 8), None, {"TinyUNet": config}
    from diffusers import UNet2DConditionModel, UNet2DModel

    if name == "cifar":
        unet = UNet2DModel(**DDPM_CIFAR).eval().to(device)
        return lf.from_diffusers(unet, DDPM_SCHEDULER), (3, 32, 32), None, {"UNet2DModel": DDPM_CIFAR}
    if device != "cuda":
        raise RuntimeError("the SD-size model is GPU only")
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15).eval().to(torch.float16)
    null = torch.zeros(77, 768, device=device, dtype=torch.float16)
    den = lf.from_diffusers(unet, SD_SCHEDULER, guidance_scale=7.5, null_cond=null)
    return den, (4, 64, 64), (lambda b: torch.randn(b, 77, 768, device=device, dtype=torch.float16)), \
        {"UNet2DConditionModel": {**SD15, "dtype": "float16", "guidance_scale": 7.5}}


def _params(den) -> int:
    return sum(p.numel() for p in den.net.parameters())


def configs(args, device: str):
    """(model, batch, nfe, backend) rows this run measures, and the skipped ones with reasons."""
    rows, skipped = [], []
    for model in args.models:
        if model == "sd" and device != "cuda":
            skipped.append((model, None, None, None, "GPU only"))
            continue
        if model in ("cifar", "sd"):
            try:
                import diffusers  # noqa: F401
            except ImportError as e:
                skipped.append((model, None, None, None, f"diffusers not importable: {e}"))
                continue
        for backend in args.backends:
            if backend in ("triton", "cuda_graph") and device != "cuda":
                skipped.append((model, None, None, backend, "needs CUDA"))
                continue
            if backend == "onnxruntime" and device != "cpu":
                skipped.append((model, None, None, backend, "measured with the CPU provider only"))
                continue
            for batch in args.batches:
                if model == "cifar" and device == "cpu" and batch > 8:
                    continue  # CIFAR-size on a CPU: batch 1 and 8 only
                if args.preset == "cpu_small" and model == "cifar" and (batch > 1 or backend == "compile"):
                    continue
                if backend == "compile":
                    if device == "cuda" and (model != "cifar" or batch != 1):
                        continue  # compile only the CIFAR-size model at batch 1 on GPU
                    if args.preset == "cpu_small" and (model != "builtin" or batch != 64):
                        continue
                for nfe in args.nfe:
                    if args.preset == "cpu_small" and (model == "cifar" or backend == "compile") and nfe != 4:
                        continue
                    if args.preset == "cpu_small" and backend == "onnxruntime" and model == "builtin" and nfe != 6:
                        continue
                    if backend == "compile" and args.compile_nfe and nfe not in args.compile_nfe:
                        continue
                    rows.append((model, batch, nfe, backend))
    return rows, skipped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="full")
    ap.add_argument("--models", nargs="+", choices=MODELS)
    ap.add_argument("--backends", nargs="+", choices=BACKENDS)
    ap.add_argument("--nfe", type=int, nargs="+")
    ap.add_argument("--batches", type=int, nargs="+")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--compile-nfe", type=int, nargs="+", default=None, help="NFEs for the compile backend only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU; default 1), recorded")
    ap.add_argument("--name", default=None, help="result file name (default latency.<cpu|cuda>)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="list the rows and exit")
    args = ap.parse_args(argv)
    preset = PRESETS[args.preset]
    args.models = args.models or preset.get("models", list(MODELS))
    args.backends = args.backends or preset.get("backends", list(BACKENDS))
    args.nfe = args.nfe or preset["nfe"]
    args.batches = args.batches or preset["batches"]
    args.repeats = args.repeats or preset["repeats"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows_todo, skipped = configs(args, device)
    name = args.name or f"latency.{device}"
    if args.dry_run:
        print(f"latency: device {device}, preset {args.preset}, {len(rows_todo)} rows -> results/{name}.*")
        for r in rows_todo:
            print("  model {} batch {} nfe {} backend {}".format(*r))
        for s in skipped:
            print(f"  skipped {s[0]} {s[3] or ''}: {s[4]}")
        return 0
    threads = common.pin_threads(args.threads)
    env = common.environment(threads)
    results = {"env": env, "args": vars(args), "models": {}, "rows": [],
               "skipped": [dict(zip(("model", "batch", "nfe", "backend", "reason"), s)) for s in skipped]}
    models = {}
    for model, batch, nfe, backend in rows_todo:
        if model not in models:
            models.clear()  # one model resident at a time
            t0 = time.perf_counter()
            models[model] = build_model(model, device)
            den, shape, make_cond, desc = models[model]
            results["models"][model] = {"description": desc, "params": _params(den), "shape": list(shape),
                                        "build_s": time.perf_counter() - t0}
        den, shape, make_cond, desc = models[model]
        dtype = torch.float16 if model == "sd" else torch.float32
        sched = lf.discretize(den.noise, nfe, "edm")
        try:
            # lf.bench: the sampler and the floor of its execution mode, interleaved; onnxruntime runs the
            # exported graph with the same pinned threads, against the eager floor.
            res = lf.bench(den, {"edm": sched}, backends=(backend,), batches=(batch,), dtype=dtype, threads=threads,
                           device=device, solver="unipc", order=3, repeats=args.repeats, warmup=2,
                           cond_fn=make_cond, sample_shape=shape, show_progress=False,
                           updates_only=backend in ("eager", "triton"))
            if not res.rows:
                raise RuntimeError(res.skipped[-1]["reason"] if res.skipped else "no row measured")
        except Exception as e:  # noqa: BLE001 - record the failure of this row, keep measuring the others
            results["rows"].append({"model": model, "batch": batch, "nfe": nfe, "backend": backend,
                                    "error": f"{type(e).__name__}: {e}"[:500]})
            print(f"{model} batch {batch} nfe {nfe} {backend}: FAILED {type(e).__name__}: {e}", flush=True)
            _write(name, results, args.no_plot)
            continue
        r = res.rows[0]
        own = r["ratio_floor"] or r["ratio_eager_floor"]
        floor_ms = r["floor_ms"] if r["floor_ms"] is not None else r["eager_floor_ms"]
        floor_min = r["floor_ms_min"] if r["floor_ms_min"] is not None else floor_ms
        updates_ms = r["updates_only_ms"]
        row = {"model": model, "batch": batch, "nfe": nfe, "backend": backend,
               "update_impl": r["update_impl"], "build_s": r["build_s"], "first_call_s": r["first_call_s"],
               "forward_ms": floor_ms / nfe, "sampler_ms": r["sampler_ms"]["median"],
               "sampler_ms_q1": r["sampler_ms"]["q1"], "sampler_ms_q3": r["sampler_ms"]["q3"],
               "ratio_median": own["median"], "ratio_q1": own["q1"], "ratio_q3": own["q3"],
               "ratio_of_min": r["sampler_ms"]["min"] / floor_min, "updates_only_ms": updates_ms,
               "parity": r["parity"], "repeats": args.repeats}
        results["rows"].append(row)
        print(f"{model:7s} batch {batch:3d} nfe {nfe:2d} {backend:10s}: forward {row['forward_ms']:8.3f} ms, "
              f"sampler {row['sampler_ms']:9.3f} ms, ratio {row['ratio_median']:.3f} "
              f"[{row['ratio_q1']:.3f}, {row['ratio_q3']:.3f}], of min {row['ratio_of_min']:.3f}"
              + ("" if updates_ms is None else f", updates only {updates_ms:.3f} ms")
              + f" (first call {row['first_call_s']:.1f} s)", flush=True)
        _write(name, results, args.no_plot)
    _write(name, results, args.no_plot)
    return 0


def _write(name: str, results: dict, no_plot: bool) -> None:
    env, rows = results["env"], results["rows"]
    md = ["# Sampler latency vs floor (nfe x one network forward in the sampler's execution mode)\n",
          "Solver UniPC-3 (bh2), EDM time steps, random weights. Ratio per round = sampler / (nfe x forward), "
          "median [q1, q3]; sampler ms median [q1, q3]; ratio of min = fastest sampler / (nfe x fastest "
          "forward), less sensitive to other load on the machine. updates-only = the same sampler call with "
          "the network replaced by a stored output (eager / triton). first call = Triton compile / graph "
          "capture / torch.compile, excluded from the timings.\n"]
    for model, info in results["models"].items():
        md.append(f"- {model}: {info['description']}, {info['params'] / 1e6:.1f} M parameters, "
                  f"sample {tuple(info['shape'])}")
    md += ["", "| model | batch | nfe | backend | forward ms | sampler ms | ratio | ratio of min | updates-only ms "
           "| first call s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['model']} | {r['batch']} | {r['nfe']} | {r['backend']} | - | - | "
                      f"failed: {r['error'][:120]} | - | - | - |")
            continue
        md.append(f"| {r['model']} | {r['batch']} | {r['nfe']} | {r['backend']} | {r['forward_ms']:.3f} | "
                  f"{r['sampler_ms']:.3f} [{r['sampler_ms_q1']:.3f}, {r['sampler_ms_q3']:.3f}] | "
                  f"{r['ratio_median']:.3f} [{r['ratio_q1']:.3f}, {r['ratio_q3']:.3f}] | {r['ratio_of_min']:.3f} | "
                  f"{'-' if r['updates_only_ms'] is None else format(r['updates_only_ms'], '.3f')} | "
                  f"{r['first_call_s']:.1f} |")
    if results["skipped"]:
        md += ["", "Not measured here:"] + [f"- {s['model']} {s['backend'] or ''}: {s['reason']}"
                                            for s in results["skipped"]]
    md += ["", "Targets: CPU eager <= 1.05 x floor at batch 64 (builtin); GPU cuda_graph <= 1.03 x floor at "
           "batch 1 (cifar).", "", "Environment:", common.env_markdown(env)]
    common.write_results(name, results, "\n".join(md))
    if not no_plot:
        _plot(name, rows)


def _plot(name: str, rows: list) -> None:
    """Latency vs NFE per backend: one panel per (model, batch); dashed: the eager floor nfe x forward."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ok = [r for r in rows if "error" not in r]
    panels = sorted({(r["model"], r["batch"]) for r in ok})
    if not panels:
        return
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for ax, (model, batch) in zip(axes.flat, panels):
        sub = [r for r in ok if (r["model"], r["batch"]) == (model, batch)]
        for backend in BACKENDS:
            pts = sorted((r["nfe"], r["sampler_ms"], r["forward_ms"]) for r in sub if r["backend"] == backend)
            if not pts:
                continue
            line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=backend)
            ax.plot([p[0] for p in pts], [p[0] * p[2] for p in pts], "--", color=line.get_color(), alpha=0.5)
        ax.set_title(f"{model}, batch {batch}")
        ax.set_xlabel("NFE")
        ax.set_ylabel("ms")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("sampler latency (solid) vs floor nfe x forward (dashed)", fontsize=9)
    fig.tight_layout()
    path = os.path.join(common.RESULTS, f"{name}.png")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
