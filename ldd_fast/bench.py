"""Latency of fixed samplers on your own model: `lf.bench(...)` and `ldd-fast bench`.

    rows = lf.bench(den, {"edm": lf.discretize(den.noise, 6, "edm")}, backends=("eager", "compile"),
                    batches=(1, 8, 64), threads=4).rows

For every schedule x backend x batch: the sampler's time per call (median and quartiles over `repeats`
rounds after `warmup` rounds; at one batch size each round runs every schedule's sampler on every
backend and every floor once, round-robin, so drifts of the machine hit all alike), the floor of the
backend's execution mode (nfe x one network forward made the way that backend makes it: eager for
eager and triton, torch.compile'd for compile, replayed from a CUDA graph for cuda_graph) and the
per-round ratio to it, the ratio to the eager floor, and the parity
max|x - ref| / max|ref| against the float32 eager sampler on the same noise. onnxruntime and tensorrt
run the exported graph of the whole sampler (network included), so only the eager floor applies to them.

Timing: on a GPU, CUDA events around each measured call with one synchronisation per measurement (never
per step); on a CPU, wall time with torch's intra-op threads pinned to `threads` for every backend
(onnxruntime's intra-op threads too). First calls (Triton compilation, graph capture, torch.compile,
the onnxruntime arena) are excluded and reported as first_call_s. A backend that cannot run here is
listed in `skipped` with the reason, never dropped silently; one that fails on a row (e.g. float16 ops
a CPU lacks) is listed there too, with the error.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

from .cond import map_cond
from .denoiser import Denoiser
from .errors import (InvalidArgument, InvalidArgumentType, boolean, callable_or_none, device_of, dtype_of, integer,
                     shape_of)
from .progress import progress
from .sample import plan_for, sampler_options
from .sampler import DTYPES, Sampler, available_backends
from .schedule import Schedule

BACKENDS = ("eager", "compile", "triton", "cuda_graph", "onnxruntime", "tensorrt")
# The floor of each backend's execution mode; None: only the eager floor applies (the graph holds the network).
FLOOR_MODE = {"eager": "eager", "triton": "eager", "compile": "compile", "cuda_graph": "cuda_graph",
              "onnxruntime": None, "tensorrt": None}


def default_threads() -> int:
    """Half the cores, at most 8: on a shared machine all cores would fight other jobs (on 2 busy cores,
    sampling took 20 s with torch's default threads and 3 s with one)."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def environment(threads: int, device: torch.device) -> dict:
    """Hardware and versions, recorded with every result."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": sys.version.split()[0], "torch": torch.__version__,
           "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": threads,
           "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    for mod in ("triton", "onnxruntime", "tensorrt", "diffusers"):
        mod_obj = sys.modules.get(mod)
        if mod_obj is None:
            try:
                mod_obj = __import__(mod)
            except Exception:  # noqa: BLE001 - optional packages: absent or broken, just not recorded
                continue
        env[mod] = getattr(mod_obj, "__version__", "?")
    return env


def unavailable(backends, device: torch.device) -> dict[str, str]:
    """backend -> why it cannot run on `device` (absent: it can)."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise InvalidArgument(f"unknown backend(s) {unknown}; expected some of {BACKENDS}")
    why = {k: v for k, v in available_backends(device).items() if v is not None and k in backends}
    if "onnxruntime" in backends:
        try:
            import onnxruntime  # noqa: F401
            import onnx  # noqa: F401
        except ImportError as e:
            why["onnxruntime"] = f"needs the [export] extra ({e})"
    if "tensorrt" in backends:
        if device.type != "cuda":
            why["tensorrt"] = "needs an NVIDIA GPU (TensorRT engines run on CUDA tensors)"
        else:
            try:
                import tensorrt  # noqa: F401
            except ImportError as e:
                why["tensorrt"] = f"needs the [tensorrt] extra ({e})"
    return why


@dataclass
class BenchResult:
    rows: list[dict]
    skipped: list[dict]
    env: dict
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"env": self.env, "settings": self.settings, "rows": self.rows, "skipped": self.skipped}

    def markdown(self, title: str = "Sampler latency") -> str:
        s = self.settings
        lines = [f"# {title}", "",
                 f"{self.env.get('gpu') or self.env['cpu']}, device {self.env['device']}, {self.env['torch_threads']} "
                 f"torch thread(s), torch {self.env['torch']}, dtype {s.get('dtype')}. Median [q1, q3] of "
                 f"{s.get('repeats')} interleaved rounds after {s.get('warmup')} warm-up rounds. Floor: nfe x one "
                 "network forward in the backend's execution mode; eager floor: nfe x one eager forward. Parity: "
                 "max|x - ref| / max|ref| against the float32 eager sampler.", "",
                 "| schedule | solver | nfe | backend | batch | sampler ms | floor ms | x floor | x eager floor | "
                 "parity | first call s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            ms = r["sampler_ms"]
            floor = "-" if r["floor_ms"] is None else f"{r['floor_ms']:.3f}"
            rf = r["ratio_floor"]
            ratio = "-" if rf is None else f"{rf['median']:.3f} [{rf['q1']:.3f}, {rf['q3']:.3f}]"
            lines.append(f"| {r['schedule']} | {r['solver']} | {r['nfe']} | {r['backend']} | {r['batch']} | "
                         f"{ms['median']:.3f} [{ms['q1']:.3f}, {ms['q3']:.3f}] | {floor} | {ratio} | "
                         f"{r['ratio_eager_floor']['median']:.3f} | {r['parity']:.1e} | {r['first_call_s']:.2f} |")
        if self.skipped:
            lines += ["", "Not measured:"]
            lines += [f"- {k['backend']}" + (f" (batch {k['batch']}, {k['schedule']})" if k.get("batch") else "")
                      + f": {k['reason']}" for k in self.skipped]
        return "\n".join(lines) + "\n"


def quartiles(xs: list[float]) -> dict:
    """median, q1, q3, min and n of a list of timings."""
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4) if len(xs) >= 4 else [xs[0], statistics.median(xs), xs[-1]]
    return {"median": statistics.median(xs), "q1": q[0], "q3": q[2], "min": xs[0], "n": len(xs)}


def _timer(device: torch.device):
    """seconds of one call of fn: CUDA events and one synchronisation on a GPU, wall time on a CPU."""
    if device.type == "cuda":
        def measure(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return measure

    def measure(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return measure


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _floor(sampler: Sampler, z, cond, mode: str):
    """One forward as `sampler` makes it, in execution mode `mode` (eager, compile or cuda_graph)."""
    forward = sampler.network_forward(z, cond)
    if mode == "compile":
        compiled = torch.compile(forward, dynamic=False)

        def run():
            with torch.no_grad():
                return compiled()
        return run
    if mode == "cuda_graph":
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            forward()
        return graph.replay
    return forward


def onnx_backend(den, schedule, example_z, *, folder=None, threads=None, providers=None, **export_kwargs):
    """Export to a folder (a temporary one by default) and return (OnnxSampler, OnnxExport).

    The temporary folder lives as long as the returned sampler (`sampler._tmpdir`).
    """
    from .export import OnnxSampler, to_onnx

    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="ldd_fast_onnx_")
        folder = tmp.name
    info = to_onnx(den, schedule, os.path.join(folder, "sampler.onnx"), example_z, **export_kwargs)
    runner = OnnxSampler(info.path, providers=providers or ["CPUExecutionProvider"], threads=threads)
    runner._tmpdir = tmp
    return runner, info


def _runner(backend: str, dens: dict, sched, z, cond, *, solver, order, dtype, device, threads, force, options,
            max_batch):
    """A callable z, cond -> sample for `backend`. dens: the model with its network in float32 ("ref", which the
    exporter casts itself) and in the working dtype ("run", for the torch backends)."""
    kw = dict(solver=solver, order=order, force=force, **options)
    den = dens["ref"] if backend in ("onnxruntime", "tensorrt") else dens["run"]
    if backend in ("onnxruntime", "tensorrt"):
        providers = ["CUDAExecutionProvider"] if backend == "onnxruntime" and device.type == "cuda" else None
        # The example pairs one noise row with one condition row, leaf by leaf: a structured condition (SD3's
        # (prompt_embeds, pooled)) passed whole would hold `batch` rows against one, which the exporter refuses.
        runner, info = onnx_backend(den, sched, z[:1], threads=threads, providers=providers,
                                    cond=None if cond is None else map_cond(lambda c: c[:1], cond),
                                    dtype=None if dtype == torch.float32 else dtype, **kw)
        if backend == "onnxruntime":
            return runner
        from .export import TensorRTSampler, build_tensorrt

        engine = build_tensorrt(info.path, os.path.join(runner._tmpdir.name, "sampler.engine"), min_batch=1,
                                opt_batch=max_batch, max_batch=max_batch, fp16=dtype == torch.float16)
        trt = TensorRTSampler(engine, device=device)
        trt._keep = runner  # the temporary folder lives as long as the engine's runner
        return trt
    return Sampler(den, sched, backend=backend, dtype=dtype, device=device, **kw)


def _updates_only(sampler: Sampler, z, cond):
    """The sampler's call with its network replaced by one stored output: what a call costs besides the network
    (updates, allocation, python), measured directly rather than as a difference of two noisy times."""
    from .sampler import execute

    guided = sampler.den.guided(cond)
    tabs = sampler.programs[guided]
    with torch.no_grad():
        raw = sampler.network_forward(z, cond)()
    apply = sampler._apply(tabs)

    def run():
        with torch.no_grad():
            return execute(tabs["structure"], z, lambda x, i: raw, apply)
    return run


def _as_dict(schedules) -> dict[str, Schedule]:
    if isinstance(schedules, Schedule):
        schedules = {schedules.origin or "schedule": schedules}
    elif isinstance(schedules, (list, tuple)):
        schedules = {f"{s.origin or 'schedule'}#{i}": s for i, s in enumerate(schedules)}
    if not isinstance(schedules, dict) or not schedules:
        raise InvalidArgumentType("schedules: an lf.Schedule, a non-empty list of them, or a dict name -> Schedule")
    for name, s in schedules.items():
        if not isinstance(s, Schedule):
            raise InvalidArgumentType(f"schedules[{name!r}] is a {type(s).__name__}, not an lf.Schedule")
    return schedules


def _network_in(den: Denoiser, dtype: torch.dtype) -> Denoiser:
    """den, or a copy whose network runs in `dtype` (a float16 sampler feeds its network float16 inputs; the
    float32 reference needs float32 weights). The copy costs the network's memory once more."""
    import copy

    params = list(den.net.parameters()) if isinstance(den.net, torch.nn.Module) else []
    if not params or all(p.dtype == dtype for p in params if p.is_floating_point()):
        return den
    cast = copy.deepcopy(den)
    cast.net.to(dtype)
    return cast


def _fail(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def _bench_batch(dens, schedules, runnable, batch, *, shape, dtype, device, threads, solver, order, force, options,
                 cond_fn, seed, repeats, warmup, timer, updates_only, max_batch, skipped, dtype_name,
                 show_progress) -> list[dict]:
    """Every (schedule, backend) at one batch size, timed in the same interleaved rounds as the floors."""
    gen = torch.Generator().manual_seed(seed)
    z32 = torch.randn(batch, *shape, generator=gen).to(device)
    z = z32.to(dtype)
    cond = None if cond_fn is None else cond_fn(batch)
    runners, built, floors, plans = {}, {}, {}, {}
    for name, sched in schedules.items():
        kw = dict(solver=solver or sched.solver or "unipc", order=order, force=force, **options)
        reference = Sampler(dens["ref"], sched, backend="eager", dtype=torch.float32, device=device, **kw)
        plans[name] = reference.plan
        ref = reference(z32, cond)
        for backend in runnable:
            if show_progress:
                print(f"bench: batch {batch}, {name}: building {backend}"
                      + (" (torch.compile: its first call takes a while)" if backend == "compile" else ""),
                      file=sys.stderr, flush=True)
            try:
                t0 = time.perf_counter()
                run = _runner(backend, dens, sched, z, cond, solver=kw["solver"], order=order, dtype=dtype,
                              device=device, threads=threads, force=force, options=options, max_batch=max_batch)
                build_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                out = run(z, cond)
                _sync(device)
                first_s = time.perf_counter() - t0
                parity = float((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                mode = FLOOR_MODE[backend]
                if mode is not None and mode not in floors:  # one forward costs the same for every schedule
                    floor = _floor(run, z, cond, mode)
                    floor()
                    floors[mode] = floor
            except Exception as e:  # noqa: BLE001 - one backend failing on this row is a result, not a crash
                skipped.append({"backend": backend, "schedule": name, "batch": batch, "reason": _fail(e)})
                continue
            runners[(name, backend)] = run
            built[(name, backend)] = {"build_s": build_s, "first_call_s": first_s, "parity": parity,
                                      "impl": getattr(run, "update_impl", backend)}
    if not runners:
        return []
    if "eager" not in floors:
        name = next(iter(schedules))
        try:
            base = Sampler(dens["run"], schedules[name], backend="eager", dtype=dtype, device=device,
                           solver=solver or schedules[name].solver or "unipc", order=order, force=force, **options)
            floor = _floor(base, z, cond, "eager")
            floor()
            floors["eager"] = floor
        except Exception as e:  # noqa: BLE001 - e.g. float16 convolutions on a CPU
            skipped.append({"backend": "eager floor", "schedule": name, "batch": batch, "reason": _fail(e)})
    fns = {**{("sampler", k): (lambda r=r: r(z, cond)) for k, r in runners.items()},
           **{("floor", m): f for m, f in floors.items()}}
    if updates_only:
        fns.update({("updates", k): _updates_only(r, z, cond) for k, r in runners.items()
                    if k[1] in ("eager", "triton")})
    times = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        _sync(device)
        for _ in range(repeats):  # round-robin: drifts of the machine hit every sampler and floor alike
            for k, fn in fns.items():
                times[k].append(timer(fn))
    rows = []
    for (name, b), info in built.items():
        plan, mode, s_t = plans[name], FLOOR_MODE[b], times[("sampler", (name, b))]
        nfe = plan.nfe

        def ratio(m):
            if m is None or ("floor", m) not in times:
                return None
            return quartiles([s / (nfe * f) for s, f in zip(s_t, times[("floor", m)])])

        def floor_ms(m, stat=statistics.median):
            return None if ratio(m) is None else 1e3 * nfe * stat(times[("floor", m)])
        nan = {"median": float("nan"), "q1": float("nan"), "q3": float("nan")}
        rows.append({
            "schedule": name, "solver": f"{plan.solver}{plan.order}", "nfe": nfe, "backend": b,
            "update_impl": info["impl"], "batch": batch, "dtype": dtype_name, "threads": threads, "device": str(device),
            "sampler_ms": {k: (1e3 * v if k != "n" else v) for k, v in quartiles(s_t).items()},
            "floor_mode": mode, "floor_ms": floor_ms(mode), "floor_ms_min": floor_ms(mode, min),
            "ratio_floor": ratio(mode), "eager_floor_ms": floor_ms("eager"), "ratio_eager_floor": ratio("eager") or nan,
            "updates_only_ms": 1e3 * statistics.median(times[("updates", (name, b))])
            if ("updates", (name, b)) in times else None,
            "parity": info["parity"], "build_s": info["build_s"], "first_call_s": info["first_call_s"]})
    return rows


def bench(den: Denoiser, schedules, *, backends=("eager",), batches=(1,), dtype: torch.dtype | None = None,
          threads: int | None = None, device=None, solver: str | None = None, order: int | None = None,
          repeats: int = 20, warmup: int = 3, cond_fn=None, sample_shape=None, force: bool = False,
          show_progress: bool = True, seed: int = 0, updates_only: bool = False, **options) -> BenchResult:
    """Time fixed samplers of `den` per schedule x backend x batch (see the module docstring).

    schedules: an lf.Schedule, a list of them, or a dict name -> Schedule. solver / order / options: as
    lf.Sampler (default: the schedule's solver, else UniPC). dtype: the samplers' working dtype (default
    float32). threads: torch's (and onnxruntime's) intra-op threads on the CPU, pinned for the whole run
    and restored afterwards (default: `default_threads()`). cond_fn(batch) -> cond for conditional
    models. sample_shape: default den.sample_shape. updates_only: also time the eager / triton sampler with
    its network replaced by a stored output (row "updates_only_ms"). Returns a BenchResult (rows, skipped, env).
    """
    if not isinstance(den, Denoiser):
        raise InvalidArgumentType(f"expected an ldd_fast Denoiser, got {type(den).__name__}")
    schedules = _as_dict(schedules)
    # Every argument before anything is built or timed.
    if not isinstance(backends, (tuple, list)) or not all(isinstance(b, str) for b in backends):
        raise InvalidArgumentType(f"backends must be a list of backend names ({', '.join(BACKENDS)}), got "
                                  f"{backends!r:.60}")
    backends = tuple(backends)
    if not backends:
        raise InvalidArgument("backends: name at least one of " + ", ".join(BACKENDS))
    if not isinstance(batches, (tuple, list)):
        raise InvalidArgumentType(f"batches must be a list of positive integers, got {batches!r:.60}")
    batches = tuple(batches)
    if not batches or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in batches):
        raise InvalidArgument(f"batches must be positive integers, got {batches}")
    integer(repeats, "repeats")
    integer(warmup, "warmup")
    if not (repeats >= 1 and warmup >= 0):
        raise InvalidArgument(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    dtype = torch.float32 if dtype is None else dtype_of(dtype, "dtype", DTYPES)
    threads = None if threads is None else integer(threads, "threads")
    if threads is not None and threads < 1:
        raise InvalidArgument(f"threads must be >= 1, got {threads}")
    device = device_of(device)
    callable_or_none(cond_fn, "cond_fn")
    for name, v in (("force", force), ("show_progress", show_progress), ("updates_only", updates_only)):
        boolean(v, name)
    integer(seed, "seed")
    options = sampler_options(options)
    for sched in schedules.values():  # solver, order and options against every schedule, as the samplers will
        plan_for(den, sched, solver=solver or sched.solver or "unipc", order=order, force=force, **options)
    if sample_shape is not None:
        shape_of(sample_shape, "sample_shape")
    shape = tuple(sample_shape or getattr(den, "sample_shape", None) or ())
    if not shape:
        raise InvalidArgument("this model does not say its sample shape: pass sample_shape=(C, H, W)")
    params = [p for p in den.parameters()]
    device = device if device is not None else (params[0].device if params else torch.device("cpu"))
    threads = default_threads() if threads is None else threads
    why = unavailable(backends, device)
    skipped = [{"backend": b, "reason": why[b]} for b in backends if b in why]
    runnable = [b for b in backends if b not in why]
    env = environment(threads, device)
    settings = {"dtype": str(dtype).replace("torch.", ""), "repeats": repeats, "warmup": warmup,
                "batches": list(batches), "backends": list(backends), "sample_shape": list(shape), "seed": seed}
    dens = {"ref": _network_in(den, torch.float32), "run": _network_in(den, dtype)}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    timer = _timer(device)
    rows = []
    try:
        for batch in progress(batches, desc="bench", disable=not show_progress):
            rows += _bench_batch(dens, schedules, runnable, batch, shape=shape, dtype=dtype, device=device,
                                 threads=threads, solver=solver, order=order, force=force, options=options,
                                 cond_fn=cond_fn, seed=seed, repeats=repeats, warmup=warmup, timer=timer,
                                 updates_only=updates_only, max_batch=max(batches), skipped=skipped,
                                 dtype_name=settings["dtype"], show_progress=show_progress)
    finally:
        torch.set_num_threads(previous)
    return BenchResult(rows, skipped, env, settings)


class _CallableModule(type(sys)):
    """`lf.bench` is this module (importing a submodule binds its name on the package), and calling it
    runs `bench`: lf.bench(den, schedules, ...) and `from ldd_fast.bench import bench` are the same."""

    def __call__(self, *args, **kwargs) -> BenchResult:
        return bench(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
