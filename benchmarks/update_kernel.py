"""Memory bandwidth of the fused sampler update vs eager torch, torch.compile and a plain copy.

An update reads N_SRC tensors of n elements and writes N_DST (ldd_fast.kernels.update_kernel);
its ideal traffic is (N_SRC + N_DST) * n * itemsize bytes, and every variant below is
reported as that ideal traffic over its time, so GB/s are comparable across variants and
with a device-to-device copy (2 * n * itemsize bytes) measured in the same run.

Variants (the same update, the same coefficients):
  fused_table     the Triton kernel, coefficients read from a device table (the default)
  fused_baked     the Triton kernel, coefficients compiled in as constants
  fused_table_bN  the table kernel at BLOCK = N (GPU only: the block-size sweep)
  eager_add       chained torch.mul(out=) + add_(alpha=): the eager Sampler's update
  eager_foreach   torch._foreach_mul / _foreach_add_ over all destinations per term
  compile         torch.compile of the functional update with tensor coefficients
  copy            dst.copy_(src)
"eager_best" is the better of eager_add and eager_foreach at each size.

Timing: on GPU, CUDA events around `inner` back-to-back calls, L2 flushed (a 512 MiB
write) before each repetition; on CPU, wall time of `inner` calls after a 512 MiB cache
flush. Medians with quartiles over repetitions; thread count pinned and recorded.
On a CPU the Triton kernel only runs in Triton's interpreter, whose speed means nothing,
so the fused variants are GPU-only and reported as not run.

    python benchmarks/update_kernel.py [--min-log2 14] [--max-log2 26] [--repeats 20]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import ldd_fast as lf  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def structures() -> dict:
    """Real update shapes, taken from lowered plans: (mask, dup) per name."""
    from ldd_fast.analytic import GaussianData

    vp = lf.VPDiscrete.linear()
    den = lf.Denoiser(GaussianData(vp, torch.zeros(4), torch.ones(4), prediction="eps"), vp, prediction="eps",
                      time_input="t")
    euler = lf.Sampler(den, lf.discretize(vp, 6, "logsnr"), solver="euler").program()
    unipc = lf.Sampler(den, lf.discretize(vp, 6, "logsnr"), solver="unipc", order=3).program()
    widest = max(unipc.calls, key=lambda c: len(c.update.srcs)).update
    return {
        # DDIM / Euler on an eps model: x <- a x + b eps. 2 reads, 1 write.
        "euler": (euler.calls[1].update.mask, -1),
        # UniPC-3's widest step: 5 registers + eps in, 3 registers out (2 history shifts are aliases).
        "unipc3": (widest.mask, -1),
    }


def _flusher(device: str):
    buf = torch.empty(512 * 2**20 // 4, dtype=torch.float32, device=device)
    return lambda: buf.fill_(1.0)


def _time(fn, device: str, inner: int, repeats: int, flush) -> list[float]:
    """Seconds per call of fn, one value per repetition."""
    for _ in range(2):
        fn()
    common.sync()
    out = []
    for _ in range(repeats):
        flush()
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            out.append((time.perf_counter() - t0) / inner)
    return out


def _functional(srcs, coef, mask, dtype):
    outs = []
    for k, row in enumerate(mask):
        acc = None
        for j, on in enumerate(row):
            if on:
                term = coef[k, j] * srcs[j].to(torch.float32)
                acc = term if acc is None else acc + term
        outs.append(acc.to(dtype))
    return outs


def variants(mask, n: int, dtype: torch.dtype, device: str, fused: bool, compile_: bool, blocks) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    srcs = [torch.randn(n, generator=g).to(device, dtype) for _ in mask[0]]
    coef64 = torch.randn(len(mask), len(mask[0]), generator=g, dtype=torch.float64)
    coef64 = coef64 * torch.tensor(mask, dtype=torch.float64)
    coef = coef64.to(device, torch.float32)
    floats = [[float(c) for c in row] for row in coef.cpu()]
    dsts = [torch.empty(n, dtype=dtype, device=device) for _ in mask]
    fns = {}
    if fused:
        from ldd_fast import kernels

        fns["fused_table"] = lambda: kernels.fused_update(srcs, dsts, coef, mask)
        baked = tuple(tuple(r) for r in floats)
        fns["fused_baked"] = lambda: kernels.fused_update(srcs, dsts, None, mask, baked=baked)
        for b in blocks:
            if b != kernels.BLOCK:
                fns[f"fused_table_b{b}"] = lambda b=b: kernels.fused_update(srcs, dsts, coef, mask, block=b)

    def eager_add():
        for k, row in enumerate(mask):
            first = True
            for j, on in enumerate(row):
                if on:
                    if first:
                        torch.mul(srcs[j], floats[k][j], out=dsts[k])
                        first = False
                    else:
                        dsts[k].add_(srcs[j], alpha=floats[k][j])
    fns["eager_add"] = eager_add

    terms = [[(j, floats[k][j]) for j, on in enumerate(row) if on] for k, row in enumerate(mask)]
    depth = max(len(t) for t in terms)

    def eager_foreach():
        outs = torch._foreach_mul([srcs[t[0][0]] for t in terms], [t[0][1] for t in terms])
        for d in range(1, depth):
            ks = [k for k, t in enumerate(terms) if len(t) > d]
            prods = torch._foreach_mul([srcs[terms[k][d][0]] for k in ks], [terms[k][d][1] for k in ks])
            torch._foreach_add_([outs[k] for k in ks], prods)
        return outs
    fns["eager_foreach"] = eager_foreach
    compile_seconds = None
    if compile_:
        torch._dynamo.reset()  # each configuration compiles anew; without a reset dynamo's recompile limit
        compiled = torch.compile(_functional, dynamic=False)  # (8) would silently fall back to eager
        t0 = time.perf_counter()
        compiled(srcs, coef, mask, dtype)
        common.sync()
        compile_seconds = time.perf_counter() - t0
        fns["compile"] = lambda: compiled(srcs, coef, mask, dtype)
    fns["copy"] = lambda: dsts[0].copy_(srcs[0])
    traffic = {k: (len(mask[0]) + len(mask)) * n * srcs[0].element_size() for k in fns}
    traffic["copy"] = 2 * n * srcs[0].element_size()
    return fns, traffic, compile_seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    ap.add_argument("--min-log2", type=int, default=14)
    ap.add_argument("--max-log2", type=int, default=None, help="default: 26 on GPU, 24 on CPU")
    ap.add_argument("--step", type=int, default=2, help="log2 step between element counts")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--inner", type=int, default=None, help="calls per repetition (default 10 GPU, 3 CPU)")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "bf16"], choices=list(DTYPES))
    ap.add_argument("--structures", nargs="+", default=["euler", "unipc3"])
    ap.add_argument("--blocks", type=int, nargs="+", default=[1024, 2048, 4096], help="GPU block-size sweep")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-min-log2", type=int, default=0,
                    help="measure torch.compile only from this size on (each size compiles anew)")
    ap.add_argument("--name", default=None, help="result file name (default update_kernel.<cpu|cuda>)")
    ap.add_argument("--dry-run", action="store_true", help="print the configurations and exit")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    max_log2 = args.max_log2 or (26 if device == "cuda" else 24)
    sizes = [2**k for k in range(args.min_log2, max_log2 + 1, args.step)]
    fused = device == "cuda"
    if fused:
        from ldd_fast import kernels
        fused = kernels.available(device) is None and not kernels.interpreter()
    shapes = structures()
    unknown = set(args.structures) - set(shapes)
    if unknown:
        ap.error(f"unknown structures {sorted(unknown)}; known: {sorted(shapes)}")
    if args.dry_run:
        print(f"update_kernel: device {device}, fused {'yes' if fused else 'no (needs CUDA)'}, sizes "
              f"2^{args.min_log2}..2^{max_log2}, dtypes {args.dtypes}, structures {args.structures}")
        return 0
    threads = common.pin_threads(args.threads)
    inner = args.inner or (10 if device == "cuda" else 3)
    flush = _flusher(device)
    rows = []
    name = args.name or f"update_kernel.{device}"
    env = common.environment(threads)
    for sname in args.structures:
        mask, _ = shapes[sname]
        for dname in args.dtypes:
            for n in sizes:
                with_compile = not args.no_compile and n >= 2**args.compile_min_log2
                fns, traffic, compile_s = variants(mask, n, DTYPES[dname], device, fused, with_compile, args.blocks)
                for vname, fn in fns.items():
                    try:
                        ts = _time(fn, device, inner, args.repeats, flush)
                    except Exception as e:  # noqa: BLE001 - e.g. a Triton without constexpr tuples (baked)
                        rows.append({"structure": sname, "dtype": dname, "n": n, "variant": vname,
                                     "error": f"{type(e).__name__}: {e}"[:300]})
                        print(f"{sname} {dname} n={n} {vname}: FAILED {type(e).__name__}: {e}", flush=True)
                        continue
                    s = common.summary(ts)
                    rows.append({"structure": sname, "n_src": len(mask[0]), "n_dst": len(mask), "dtype": dname,
                                 "n": n, "variant": vname, "us_median": 1e6 * s["median"],
                                 "us_q1": 1e6 * s["q1"], "us_q3": 1e6 * s["q3"],
                                 "gbps": traffic[vname] / s["median"] / 1e9,
                                 **({"compile_s": compile_s} if vname == "compile" else {})})
                print(f"{sname:7s} {dname} n=2^{n.bit_length() - 1:2d}: " + ", ".join(
                    f"{r['variant']} {r['gbps']:.1f}" for r in rows if r["n"] == n and r["dtype"] == dname
                    and r["structure"] == sname and "error" not in r) + " GB/s", flush=True)
                _write(name, env, args, rows, fused, sizes)
    _write(name, env, args, rows, fused, sizes)
    return 0


def _ratios(rows):
    """Per (structure, dtype, n): fused / copy bandwidth and fused / best eager."""
    out = []
    rows = [r for r in rows if "error" not in r]
    keys = sorted({(r["structure"], r["dtype"], r["n"]) for r in rows})
    for key in keys:
        by = {r["variant"]: r["gbps"] for r in rows if (r["structure"], r["dtype"], r["n"]) == key}
        best_eager = max(by.get("eager_add", 0), by.get("eager_foreach", 0))
        row = {"structure": key[0], "dtype": key[1], "n": key[2], "copy": by.get("copy"), "eager_best": best_eager,
               "compile": by.get("compile")}
        for v in ("fused_table", "fused_baked"):
            if v in by:
                row[f"{v}_vs_copy"] = by[v] / by["copy"]
                row[f"{v}_vs_eager"] = by[v] / best_eager
        if "compile" in by:
            row["compile_vs_copy"] = by["compile"] / by["copy"]
            row["compile_vs_eager"] = by["compile"] / best_eager
        out.append(row)
    return out


def _write(name, env, args, rows, fused, sizes):
    failed = [r for r in rows if "error" in r]
    rows = [r for r in rows if "error" not in r]
    ratios = _ratios(rows)
    variants_ = sorted({r["variant"] for r in rows}, key=lambda v: (not v.startswith("fused"), v))
    md = ["# Fused sampler update: bandwidth (GB/s of ideal traffic)\n",
          "Ideal traffic = (N_SRC + N_DST) x n x itemsize per update (copy: 2 x n x itemsize). "
          f"Median over {args.repeats} repetitions of back-to-back calls, cache flushed before each.",
          "" if fused else "\nThe fused Triton variants need CUDA (on a CPU Triton only interprets): not run here.\n"]
    for sname in dict.fromkeys(r["structure"] for r in rows):
        for dname in dict.fromkeys(r["dtype"] for r in rows):
            sub = [r for r in rows if r["structure"] == sname and r["dtype"] == dname]
            if not sub:
                continue
            md += [f"\n## {sname} ({sub[0]['n_src']} in, {sub[0]['n_dst']} out), {dname}\n",
                   "| n | " + " | ".join(variants_) + " | fused/copy | fused/eager_best |",
                   "|---|" + "---|" * (len(variants_) + 2)]
            for n in sizes:
                by = {r["variant"]: r for r in sub if r["n"] == n}
                if not by:
                    continue
                rat = next(r for r in ratios if (r["structure"], r["dtype"], r["n"]) == (sname, dname, n))
                cells = [f"{by[v]['gbps']:.1f}" if v in by else "-" for v in variants_]
                fc = f"{rat['fused_table_vs_copy']:.2f}" if "fused_table_vs_copy" in rat else "-"
                fe = f"{rat['fused_table_vs_eager']:.2f}" if "fused_table_vs_eager" in rat else "-"
                md.append(f"| 2^{n.bit_length() - 1} | " + " | ".join(cells) + f" | {fc} | {fe} |")
    md += [f"\nFailed: {r['structure']} {r['dtype']} n={r['n']} {r['variant']}: {r['error']}" for r in failed]
    md += ["\nTargets (GPU): fused_table >= 0.80 x copy at n >= 2^24 and >= 2 x eager_best. "
           "fused_table vs fused_baked decides kernels/update_kernel.py's default.", "", "Environment:",
           common.env_markdown(env)]
    common.write_results(name, {"env": env, "args": vars(args), "rows": rows + failed, "ratios": ratios},
                         "\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
