"""`ldd-fast export`: a model + a schedule file -> sampler.onnx (+ its data file) [-> a TensorRT engine].

    ldd-fast export --model digits --schedule schedule.json --solver unipc --order 3 \\
        --onnx sampler.onnx [--tensorrt sampler.plan] [--fp16]

`--model` is a built-in model name, `package.module:factory` (a callable returning an
lf.Denoiser) or a local diffusers folder, resolved as every `ldd-fast` command resolves it.
`ldd_fast/cli.py` adds the sub-command with `add_arguments(parser)`, `validate(args)` and
`run(args)`; `main(argv)` is `ldd-fast export ARGV` (one-line errors, exit status 2).
"""
from __future__ import annotations

import argparse

import torch

TENSORRT_ONLY = ("min_batch", "opt_batch", "max_batch", "strongly_typed", "timing_cache", "workspace")


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 1,8,8, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got {text!r}")
    return dims


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from ldd_fast.cli import POSITIVE, _int_in
    from ldd_fast.export.onnx_export import MIN_OPSET

    p.add_argument("--model", required=True,
                   help="built-in model name (e.g. digits), package.module:factory returning an lf.Denoiser, or a "
                        "local diffusers folder")
    p.add_argument("--schedule", required=True, help="schedule JSON (lf.Schedule.save / ldd-fast learn)")
    p.add_argument("--solver", default=None, help="solver (default: the schedule's)")
    p.add_argument("--order", type=POSITIVE, default=None,
                   help="solver order (default: the schedule's or the solver's)")
    p.add_argument("--variant", default=None, help="solver variant (unipc: bh1 | bh2; dpmpp: taylor)")
    p.add_argument("--onnx", required=True, help="output graph file; its .data file is written beside it")
    p.add_argument("--tensorrt", default=None, help="also build a TensorRT engine at this path (needs tensorrt + GPU)")
    p.add_argument("--fp16", action="store_true",
                   help="run the network in float16 in the graph (and in the TensorRT engine)")
    p.add_argument("--shape", type=_shape, default=None,
                   help="sample shape without the batch, e.g. 1,8,8 (default: from the model)")
    p.add_argument("--conditional", action="store_true",
                   help="give the graph a `cond` input of integer class labels (automatic when the model guides)")
    p.add_argument("--schedule-as-input", action="store_true",
                   help="coefficients and network times as graph inputs (swap schedules without re-exporting)")
    p.add_argument("--static-batch", type=POSITIVE, default=None, metavar="B", help="export for this batch size only")
    p.add_argument("--opset", type=_int_in(MIN_OPSET), default=None, help="ONNX opset (default: torch's exporter's)")
    p.add_argument("--method", choices=("compose", "trace"), default="compose", help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="use a schedule made for another model / solver")
    p.add_argument("--min-batch", type=POSITIVE, default=None, help="TensorRT profile: smallest batch (default 1)")
    p.add_argument("--opt-batch", type=POSITIVE, default=None,
                   help="TensorRT profile: batch to tune for (default: max)")
    p.add_argument("--max-batch", type=POSITIVE, default=None, help="TensorRT profile: largest batch (default 64)")
    p.add_argument("--strongly-typed", action="store_true", help="TensorRT 10.x: build a strongly typed network")
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file (read and updated)")
    p.add_argument("--workspace", type=POSITIVE, default=None, help="TensorRT builder workspace limit in MiB")
    p.add_argument("--verify", action="store_true",
                   help="run the graph with onnxruntime and report its difference to the eager sampler")
    return p


def validate(args) -> None:
    """Refuse options that cannot take effect (checked before anything is loaded or written)."""
    from ldd_fast.cli import CLIError

    if not args.tensorrt:
        given = [f"--{k.replace('_', '-')}" for k in TENSORRT_ONLY if getattr(args, k) not in (None, False)]
        if given:
            raise CLIError(f"{', '.join(given)} configure the TensorRT build and need --tensorrt")
    if args.static_batch is not None and any(getattr(args, k) is not None for k in ("min_batch", "opt_batch",
                                                                                     "max_batch")):
        raise CLIError("--static-batch fixes the engine's batch; --min-batch / --opt-batch / --max-batch do not apply")
    lo, hi = args.min_batch or 1, args.max_batch or 64
    opt = args.opt_batch or hi
    if not lo <= opt <= hi:
        raise CLIError(f"need --min-batch <= --opt-batch <= --max-batch, got {lo}, {opt}, {hi}")


def load_model(spec: str):
    """A Denoiser from --model: the same resolution as every `ldd-fast` command."""
    from ldd_fast.cli import load_model as resolve

    return resolve(spec)


def sample_shape(den, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    from ldd_fast.cli import CLIError, sample_shape as resolve

    try:
        return resolve(den, shape)
    except CLIError:
        net = den.net
        size = getattr(net, "sample_size", None)  # lf.from_diffusers' UNet wrapper
        if size is not None and hasattr(net, "in_channels"):
            size = (size, size) if isinstance(size, int) else tuple(size)
            return (int(net.in_channels), *map(int, size))
        raise CLIError(f"cannot tell the sample shape of {type(net).__name__}; pass --shape C,H,W") from None


def run(args) -> int:
    import ldd_fast as lf
    from ldd_fast.export import build_tensorrt, to_onnx

    from ldd_fast.io import check_output_path

    check_output_path(args.onnx, "--onnx")
    if args.tensorrt:
        check_output_path(args.tensorrt, "--tensorrt")
    if args.timing_cache:
        check_output_path(args.timing_cache, "--timing-cache")
    sched = lf.Schedule.load(args.schedule)
    den = load_model(args.model)
    shape = sample_shape(den, args.shape)
    batch = args.static_batch or 1
    z = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    cond = None
    if args.conditional or den.guidance_scale != 1.0:
        cond = torch.zeros(batch, dtype=torch.long)
    options = {"variant": args.variant} if args.variant else {}
    info = to_onnx(den, sched, args.onnx, z, solver=args.solver, order=args.order, cond=cond,
                   dynamic_batch=args.static_batch is None, dtype=torch.float16 if args.fp16 else None,
                   opset=args.opset, schedule_as_input=args.schedule_as_input, method=args.method,
                   force=args.force, **options)
    m = info.metadata
    print(f"wrote {info.path}" + (f" + {info.data_path}" if info.data_path else "")
          + f": {m['solver']}{m['order']}, nfe {m['nfe']}, inputs {', '.join(info.inputs)}, network {m['dtype']}, "
          f"{info.file_bytes / 2**20:.2f} MiB (one copy of the weights: {info.network_bytes / 2**20:.2f} MiB)")
    if args.verify:
        from ldd_fast.export import OnnxSampler

        runner = OnnxSampler(info.path)
        zz = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
        cc = None if cond is None else torch.zeros(3, dtype=torch.long)
        with torch.no_grad():
            ref = lf.sample(den, zz, sched, solver=args.solver, order=args.order, cond=cc, force=args.force,
                            **options)
        diff = float((runner(zz, cc) - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        print(f"onnxruntime vs eager sampler (batch 3): max|diff| / max|ref| = {diff:.2e}")
    if args.tensorrt:
        opt = args.opt_batch or args.max_batch or 64
        lo, hi = (batch, batch) if args.static_batch else (args.min_batch or 1, args.max_batch or 64)
        path = build_tensorrt(info.path, args.tensorrt, min_batch=lo, opt_batch=batch if args.static_batch else opt,
                              max_batch=hi, fp16=args.fp16, strongly_typed=args.strongly_typed,
                              timing_cache=args.timing_cache,
                              workspace=None if args.workspace is None else args.workspace << 20)
        print(f"wrote {path} (TensorRT engine, batch {lo}..{hi}) and {path}.json")
    return 0


def main(argv=None) -> int:
    """`ldd-fast export ARGV`."""
    import sys

    from ldd_fast.cli import main as cli_main

    return cli_main(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
