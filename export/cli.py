"""`ldd-fast export`: a model + a schedule file -> sampler.onnx (+ its data file) [-> a TensorRT engine].

    ldd-fast export --model digits --schedule schedule.json --solver unipc --order 3 \\
        --onnx sampler.onnx [--tensorrt sampler.plan] [--fp16]

`--model` is a built-in model name (resolved by `ldd_fast.zoo.load(name) -> Denoiser`) or
`package.module:factory`, a callable returning an lf.Denoiser. The plumbing lives here so that
`ldd_fast/cli.py` only has to add the sub-command: `export.cli.add_arguments(parser)` and
`export.cli.run(args)`, or `export.cli.main(argv)` on its own.
"""
from __future__ import annotations

import argparse
import sys

import torch

PROG = "ldd-fast export"


class CliError(Exception):
    """A one-line, user-facing error."""


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", required=True,
                   help="built-in model name (e.g. digits) or package.module:factory returning an lf.Denoiser")
    p.add_argument("--schedule", required=True, help="schedule JSON (lf.Schedule.save / ldd-fast learn)")
    p.add_argument("--solver", default=None, help="solver (default: the schedule's)")
    p.add_argument("--order", type=int, default=None, help="solver order (default: the schedule's or the solver's)")
    p.add_argument("--variant", default=None, help="solver variant (unipc: bh1 | bh2; dpmpp: taylor)")
    p.add_argument("--onnx", required=True, help="output graph file; its .data file is written beside it")
    p.add_argument("--tensorrt", default=None, help="also build a TensorRT engine at this path (needs tensorrt + GPU)")
    p.add_argument("--fp16", action="store_true",
                   help="run the network in float16 in the graph (and in the TensorRT engine)")
    p.add_argument("--shape", default=None, help="sample shape without the batch, e.g. 1,8,8 (default: from the model)")
    p.add_argument("--conditional", action="store_true",
                   help="give the graph a `cond` input of integer class labels (automatic when the model guides)")
    p.add_argument("--schedule-as-input", action="store_true",
                   help="coefficients and network times as graph inputs (swap schedules without re-exporting)")
    p.add_argument("--static-batch", type=int, default=None, metavar="B", help="export for this batch size only")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's exporter default)")
    p.add_argument("--method", choices=("compose", "trace"), default="compose", help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="use a schedule made for another model / solver")
    p.add_argument("--min-batch", type=int, default=1, help="TensorRT profile: smallest batch")
    p.add_argument("--opt-batch", type=int, default=None, help="TensorRT profile: batch to tune for (default: max)")
    p.add_argument("--max-batch", type=int, default=64, help="TensorRT profile: largest batch")
    p.add_argument("--strongly-typed", action="store_true", help="TensorRT 10.x: build a strongly typed network")
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file (read and updated)")
    p.add_argument("--workspace", type=int, default=None, help="TensorRT builder workspace limit in MiB")
    p.add_argument("--verify", action="store_true",
                   help="run the graph with onnxruntime and report its difference to the eager sampler")
    return p


def load_model(spec: str):
    """A Denoiser from --model: the same resolution as every `ldd-fast` command."""
    from ldd_fast.cli import CLIError, load_model as resolve

    try:
        return resolve(spec)
    except CLIError as e:
        raise CliError(str(e)) from None


def sample_shape(den, shape: str | None) -> tuple[int, ...]:
    from ldd_fast.cli import CLIError, sample_shape as resolve

    dims = None
    if shape is not None:
        try:
            dims = tuple(int(s) for s in shape.split(","))
        except ValueError:
            raise CliError(f"--shape must be comma-separated ints like 1,8,8, got {shape!r}") from None
        if not dims or any(d < 1 for d in dims):
            raise CliError(f"--shape dimensions must be positive, got {shape!r}")
    try:
        return resolve(den, dims)
    except CLIError:
        net = den.net
        size = getattr(net, "sample_size", None)  # lf.from_diffusers' UNet wrapper
        if size is not None and hasattr(net, "in_channels"):
            size = (size, size) if isinstance(size, int) else tuple(size)
            return (int(net.in_channels), *map(int, size))
        raise CliError(f"cannot tell the sample shape of {type(net).__name__}; pass --shape C,H,W") from None


def run(args) -> int:
    import ldd_fast as lf
    from ldd_fast.export import build_tensorrt, to_onnx

    den = load_model(args.model)
    try:
        sched = lf.Schedule.load(args.schedule)
    except (FileNotFoundError, lf.ScheduleError) as e:
        raise CliError(str(e)) from None
    shape = sample_shape(den, args.shape)
    batch = args.static_batch or 1
    if batch < 1:
        raise CliError(f"--static-batch must be >= 1, got {batch}")
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
        opt = args.opt_batch or args.max_batch
        lo, hi = (batch, batch) if args.static_batch else (args.min_batch, args.max_batch)
        path = build_tensorrt(info.path, args.tensorrt, min_batch=lo, opt_batch=batch if args.static_batch else opt,
                              max_batch=hi, fp16=args.fp16, strongly_typed=args.strongly_typed,
                              timing_cache=args.timing_cache,
                              workspace=None if args.workspace is None else args.workspace << 20)
        print(f"wrote {path} (TensorRT engine, batch {lo}..{hi}) and {path}.json")
    return 0


def main(argv=None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (CliError, ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError,
            ImportError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
