"""`ldd-fast export`: a model or a pipeline folder + a schedule file -> one ONNX graph of the whole sampler
[-> a TensorRT engine]; for a pipeline also a manifest JSON beside the graph (inputs, guidance, components, how
to decode the latents); with --triton-repo a Triton Inference Server model repository (ldd_fast.serving)."""
from __future__ import annotations

import argparse
import importlib.util
import os

import torch

from ..errors import LddFastError
from .common import (POSITIVE, CLIError, check_folder, excludes, finite_float, needs, pipeline_args,
                     pipeline_rules)
from .limits import compute_args, setup_compute
from .load import load_denoiser, sample_shape

HELP = "export a fixed sampler to ONNX (and TensorRT), or as a Triton Inference Server model repository"
TENSORRT_ONLY = ("--min-batch", "--opt-batch")
ENGINE_OPTIONS = ("--strongly-typed", "--timing-cache", "--workspace")  # --tensorrt's or --backend tensorrt's
TRITON_ONLY = ("--name", "--backend", "--instances", "--native", "--instance-threads", "--queue-delay-us")
# Options that only configure the ONNX graph: refused when no graph is written (eager backend, no --onnx).
GRAPH_ONLY = ("--fp16", "--opset", "--schedule-as-input", "--verify", "--tensorrt")
RULES = [*pipeline_rules(),
         needs("--prompt", "--pipeline", "the example condition a pipeline's graph is traced with"),
         excludes("--conditional", "--pipeline", "a pipeline's graph always takes its prompt embeddings"),
         *(needs(o, "--tensorrt", "it configures the TensorRT build") for o in TENSORRT_ONLY),
         *(needs(o, "--tensorrt or --backend", "it configures the TensorRT build") for o in ENGINE_OPTIONS),
         needs("--max-batch", "--tensorrt or --triton-repo", "the largest batch of the engine or of Triton's batcher"),
         *(excludes(o, "--static-batch", "a static batch fixes the engine's batch")
           for o in ("--min-batch", "--opt-batch", "--max-batch")),
         *(needs(o, "--triton-repo", "it configures the Triton model repository") for o in TRITON_ONLY),
         excludes("--static-batch", "--triton-repo", "Triton batches requests dynamically")]


def add_parser(sub, formatter):
    p = sub.add_parser("export", help=HELP, formatter_class=formatter,
                       description="A model + a schedule file -> one ONNX graph of the whole sampler (+ its data "
                                   "file) [-> a TensorRT engine] [-> a Triton Inference Server model repository].")
    p.add_argument("--model", default=None,
                   help="built-in model name (e.g. digits), package.module:factory returning an lf.Denoiser, or a "
                        "local diffusers folder (or --pipeline)")
    p.add_argument("--guidance", type=finite_float, default=None,
                   help="classifier-free guidance scale baked into the graph (default: 1, off; with --pipeline the "
                        "pipeline's); a guided graph takes a condition input")
    pipeline_args(p, "the graph takes the prompt embeddings; a manifest JSON is written beside it")
    p.add_argument("--prompt", default="a photograph of a cat", help="with --pipeline: the example prompt traced")
    p.add_argument("--schedule", required=True, help="schedule JSON (lf.Schedule.save / ldd-fast learn)")
    p.add_argument("--solver", default=None, help="solver (default: the schedule's)")
    p.add_argument("--order", type=POSITIVE, default=None,
                   help="solver order (default: the schedule's or the solver's)")
    p.add_argument("--variant", default=None, help="solver variant (unipc: bh1 | bh2; dpmpp: taylor)")
    p.add_argument("--onnx", default=None,
                   help="output graph file; its .data file is written beside it (optional with --triton-repo)")
    p.add_argument("--tensorrt", default=None, help="also build a TensorRT engine at this path (needs tensorrt + GPU)")
    p.add_argument("--fp16", action="store_true",
                   help="run the network in float16 in the graph (and in the TensorRT engine)")
    p.add_argument("--shape", type=POSITIVE, nargs="+", help="sample shape C H W if the model does not say it")
    p.add_argument("--conditional", action="store_true",
                   help="give the graph a `cond` input of integer class labels (automatic when the model guides; in "
                        "a --triton-repo also when the model has class labels)")
    p.add_argument("--schedule-as-input", action="store_true",
                   help="coefficients and network times as graph inputs (swap schedules without re-exporting)")
    p.add_argument("--static-batch", type=POSITIVE, default=None, metavar="B", help="export for this batch size only")
    p.add_argument("--opset", type=POSITIVE, default=None, help="ONNX opset (>= 18; default: torch's exporter's)")
    p.add_argument("--method", choices=("compose", "trace"), default="compose", help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="use a schedule made for another model / solver")
    p.add_argument("--min-batch", type=POSITIVE, default=None, help="TensorRT profile: smallest batch (default 1)")
    p.add_argument("--opt-batch", type=POSITIVE, default=None,
                   help="TensorRT profile: batch to tune for (default: max)")
    p.add_argument("--max-batch", type=POSITIVE, default=None,
                   help="TensorRT profile: largest batch; Triton: max_batch_size, the largest batch of requests "
                        "one sampler call takes (default 64)")
    p.add_argument("--strongly-typed", action="store_true", help="TensorRT 10.x: build a strongly typed network")
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file (read and updated)")
    p.add_argument("--workspace", type=POSITIVE, default=None, help="TensorRT builder workspace limit in MiB")
    p.add_argument("--verify", action="store_true",
                   help="run the graph with onnxruntime and report its difference to the eager sampler")
    p.add_argument("--triton-repo", default=None, metavar="DIR",
                   help="also write a Triton Inference Server model repository serving the sampler (DIR/NAME/"
                        "config.pbtxt + version 1 with a Python-backend model.py); its graph goes inside it when "
                        "--onnx is not given. Class-conditional models take optional class labels")
    p.add_argument("--name", default="ldd_sampler", help="with --triton-repo: the model's name (its folder)")
    p.add_argument("--backend", "--triton-backend", dest="backend", choices=("onnxruntime", "eager", "tensorrt"),
                   default=None,
                   help="with --triton-repo: what the served model runs: the exported graph with onnxruntime "
                        "(default when installed), lf.sample on the model (eager: a built-in model or a diffusers "
                        "folder, copied into the repository; the default without onnxruntime), or a TensorRT "
                        "engine built into the repository (needs tensorrt and an NVIDIA GPU)")
    p.add_argument("--instances", type=POSITIVE, default=1, help="with --triton-repo: model instances Triton runs")
    p.add_argument("--native", action="store_true",
                   help="with --triton-repo: also write the graph (engine) as NAME_native for Triton's own "
                        "onnxruntime_onnx (tensorrt_plan) backend, for servers that have it")
    p.add_argument("--instance-threads", type=POSITIVE, default=None, metavar="N",
                   help="with --triton-repo: intra-op threads of each CPU instance (default: the libraries', one per "
                        "core)")
    p.add_argument("--queue-delay-us", type=int, default=1000, metavar="US",
                   help="with --triton-repo: how long Triton's batcher waits for more requests (default 1000 us)")
    compute_args(p)
    return p


def validate(args, given) -> None:
    if not args.model and not args.pipeline:
        raise CLIError("export needs --model or --pipeline")
    if not args.onnx and not args.triton_repo:
        raise CLIError("export needs --onnx (a graph file) or --triton-repo (a Triton model repository)")
    if args.onnx and not args.onnx.endswith(".onnx"):
        raise CLIError(f"--onnx {args.onnx}: the graph is a .onnx file (its weights go to <name>.onnx.data beside it)")
    if args.triton_repo:
        from ..serving import check_model_name

        try:
            check_model_name(args.name)
        except LddFastError as e:  # its message starts with "name ...": the option's name on the command line
            raise CLIError(f"--{e}") from None
        if args.backend is None:  # onnxruntime where it is installed
            args.backend = "onnxruntime" if importlib.util.find_spec("onnxruntime") else "eager"
        if args.backend == "eager" and args.model and ":" in args.model and not os.path.exists(args.model):
            raise CLIError(f"--backend eager reloads the model inside Triton from the repository, which never "
                           f"holds Python code: --model {args.model} needs --backend onnxruntime")
        if args.backend == "eager" and not args.onnx:
            for option in GRAPH_ONLY + ("--native",):
                if option.lstrip("-").replace("-", "_") in given:
                    raise CLIError(f"{option} configures the ONNX graph, and --backend eager writes none: "
                                   f"add --onnx FILE or use --backend onnxruntime")
        if args.pipeline and args.backend == "tensorrt":
            raise CLIError("--pipeline with --triton-repo serves the sampler with --backend eager or onnxruntime "
                           "(the text encoders and the VAE run in torch beside it)")
        if args.pipeline and args.native:
            raise CLIError("--native serves a bare sampler graph; a pipeline's repository takes prompts (leave out "
                           "--native, or export the graph with --onnx)")
        if args.queue_delay_us < 0:
            raise CLIError(f"--queue-delay-us must be >= 0, got {args.queue_delay_us}")
    engine_options = [o for o in ENGINE_OPTIONS if o.lstrip("-").replace("-", "_") in given]
    if engine_options and not args.tensorrt and args.backend != "tensorrt":
        raise CLIError(f"{engine_options[0]} configures a TensorRT build: it needs --tensorrt or --backend tensorrt")
    if args.backend == "tensorrt" and args.tensorrt:
        raise CLIError("--backend tensorrt builds the engine inside the repository; --tensorrt PATH writes another "
                       "one: give one of them")
    lo, hi = args.min_batch or 1, args.max_batch or 64
    opt = args.opt_batch or hi
    if not lo <= opt <= hi:
        raise CLIError(f"need --min-batch <= --opt-batch <= --max-batch, got {lo}, {opt}, {hi}")


def run(args) -> int:
    from ..cond import map_cond
    from ..export import OnnxSampler, build_tensorrt, manifest_path, to_onnx, write_pipeline_manifest
    from ..io import check_output_path
    from ..sample import sample
    from ..schedule import Schedule

    if args.onnx:
        check_output_path(args.onnx, "--onnx")
    if args.triton_repo:
        check_folder(args.triton_repo, "--triton-repo")
    if args.tensorrt:
        check_output_path(args.tensorrt, "--tensorrt")
    if args.timing_cache:
        check_output_path(args.timing_cache, "--timing-cache")
    sched = Schedule.load(args.schedule)
    if args.pipeline and args.onnx:
        check_output_path(manifest_path(args.onnx), "the manifest beside --onnx")
    device = setup_compute(args)
    den = load_denoiser(args).to(device)
    shape = sample_shape(den, args.shape)
    batch = args.static_batch or 1

    def conditions(n):  # one example row, repeated: the graph's batch axis is what matters
        if args.pipeline:
            return map_cond(lambda c: c.expand(n, *c.shape[1:]).contiguous(), den.encode_prompt([args.prompt]))
        if args.conditional or den.guidance_scale != 1.0:
            return torch.zeros(n, dtype=torch.long, device=device)
        return None

    z = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    cond = conditions(batch)
    options = {"variant": args.variant} if args.variant else {}
    dtype = torch.float16 if args.fp16 else None
    info = None
    if args.onnx:
        info = to_onnx(den, sched, args.onnx, z, solver=args.solver, order=args.order, cond=cond,
                       dynamic_batch=args.static_batch is None, dtype=dtype, opset=args.opset,
                       schedule_as_input=args.schedule_as_input, method=args.method, force=args.force, **options)
        report_graph(info)
    if args.triton_repo and args.pipeline:
        from ..serving import write_pipeline_repository

        repo = write_pipeline_repository(
            den, sched, args.triton_repo, pipeline_folder=args.pipeline, name=args.name, backend=args.backend,
            pipeline_args={"guidance_scale": args.guidance, "negative_prompt": args.negative_prompt,
                           "max_sequence_length": args.max_sequence_length},
            max_batch=args.max_batch or 4, instances=args.instances, solver=args.solver, order=args.order,
            force=args.force, max_queue_delay_us=args.queue_delay_us, threads=args.instance_threads, device=device,
            fp16=args.fp16, opset=args.opset, graph=info if args.backend == "onnxruntime" else None, **options)
        served = repo.sampler
        print(f"wrote the Triton model repository {repo.root}: model {args.name} ({served['class']}, "
              f"{served['backend']}, {served['solver']}{served['order']}, nfe {served['nfe']}, max batch "
              f"{served['max_batch']}): prompt + seed -> image uint8 {served['image']}")
        info = info or repo.graph
    elif args.triton_repo:
        from ..serving import write_repository

        # the --onnx graph, when one was written, goes into the repository as it is (exported once)
        graph = {} if args.backend == "eager" else dict(dtype=dtype, opset=args.opset,
                                                          schedule_as_input=args.schedule_as_input)
        if info is not None and args.backend != "eager" and info.metadata.get("dynamic_batch"):
            graph = {"graph": info}
        trt = {k: v for k, v in (("strongly_typed", args.strongly_typed), ("timing_cache", args.timing_cache),
                                 ("workspace", None if args.workspace is None else args.workspace << 20)) if v}
        repo = write_repository(den, sched, args.triton_repo, model=args.model, name=args.name,
                                backend=args.backend, max_batch=args.max_batch or 64,
                                instances=args.instances, solver=args.solver, order=args.order,
                                conditional=True if args.conditional else None, shape=shape, device=device,
                                force=args.force, max_queue_delay_us=args.queue_delay_us,
                                threads=args.instance_threads, native=args.native,
                                tensorrt_options=trt or None, **graph, **options)
        if repo.graph is not None:
            report_graph(repo.graph)
        info = info or repo.graph  # --verify / --tensorrt use the repository's graph when --onnx is not given
        served = repo.sampler
        print(f"wrote the Triton model repository {repo.root}: model {args.name} ({served['backend']}, "
              f"{served['solver']}{served['order']}, nfe {served['nfe']}, max batch {served['max_batch']}, inputs "
              f"z | seed{', cond' if served['conditional'] else ''}, guidance)"
              + (f"; {args.name}_native for Triton's own backend" if args.native else ""))
    if args.pipeline and args.onnx:
        from ..io import read_json

        components = [k for k in read_json(os.path.join(args.pipeline, "model_index.json"), "pipeline index")
                      if not k.startswith("_")]
        print(f"wrote {write_pipeline_manifest(info, den, pipeline_folder=args.pipeline, components=components)}: "
              f"inputs, guidance, components and how to decode the latents")
    if args.verify:
        runner = OnnxSampler(info.path)
        zz = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1)).to(device)
        cc = conditions(3)
        if cc is None and runner.conditional:  # the repository's graph of a class-conditional model takes labels
            cc = torch.zeros(3, dtype=torch.long, device=device)
        with torch.no_grad():
            ref = sample(den, zz, sched, solver=args.solver, order=args.order, cond=cc, force=args.force, **options)
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


def report_graph(info) -> None:
    m = info.metadata
    print(f"wrote {info.path}" + (f" + {info.data_path}" if info.data_path else "")
          + f": {m['solver']}{m['order']}, nfe {m['nfe']}, inputs {', '.join(info.inputs)}, network {m['dtype']}, "
          f"{info.file_bytes / 2**20:.2f} MiB (one copy of the weights: {info.network_bytes / 2**20:.2f} MiB)")
