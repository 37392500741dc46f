"""lf.Sampler: a fixed schedule compiled once, then run as N network calls and N fused updates.

    fast = lf.Sampler(den, schedule, solver="unipc", order=3, backend="triton")
    x0 = fast(z, cond=None)

Building does all the planning: `plan_for` (every schedule / model / solver check),
`fold` (the model-output conversion and, when den.guidance_scale != 1, the guidance
weights inside the linear maps; a guided model is always called with a cond), `lower`
(below), and the one cast of every table to the device and accumulation dtype.
Calling does no planning, no Python branch on tensor values and no host-device
synchronisation: it walks a fixed list of network calls and updates.

`lower` turns a FoldedPlan into the Program the executors run, deciding on python
ints only what each update must really write:
  - the initial registers (prior_scale * z, and EDM's c_in * prior_scale * z) are folded
    into the first update's coefficients on z, so no pass over z precedes the first call
    unless the network must read a scaled copy of z (the prologue);
  - a register no later call reads is never written (dead);
  - a register that is a plain copy of an old register (DPM-Solver's and UniPC's history
    shift m2 <- m1, the kept state of Heun) is passed on by reference (an alias): no pass;
  - under guidance the register the next call reads is stored twice into a (2B, ...)
    buffer, the network's [x, x] batch, by the update itself (no torch.cat per call).
So every remaining elementwise operation of a step is one update: one fused Triton launch
(backend "triton" and "cuda_graph"), or its torch twin (backend "eager"), or one fused
inductor kernel (backend "compile").

Backends:
  eager:      torch ops, chained in place, coefficients as python floats (cast once).
  triton:     one ldd_fast.kernels launch per network call (CUDA, or the CPU interpreter).
  cuda_graph: network calls + fused updates captured as one CUDA graph per batch size
              (and condition shape), built lazily on the first call of that size.
  compile:    torch.compile of the unrolled loop; coefficient and time tables are tensor
              inputs, so schedules of the same structure share one compiled graph.

Not for gradients: the Sampler runs under torch.no_grad(); learning uses lf.sample / run_plan.
"""
from __future__ import annotations

import types
from typing import NamedTuple

import torch
from torch import nn

from .cond import is_cond, leaves, map_cond, same_structure, structure
from .denoiser import Denoiser, expand_null, halves, network_dtype
from .errors import ConditionError, InvalidArgument, InvalidArgumentType, Unavailable, boolean, device_of
from .plan import FoldedPlan, Plan, fold
from .sample import check_finite, check_noise, plan_for, sampler_options
from .schedule import Schedule

BACKENDS = ("eager", "triton", "cuda_graph", "compile")
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

# A source of an update: the unit noise z, an old register, or raw network output k.
Z, REG, RAW = "z", "reg", "raw"


class Update(NamedTuple):
    """One fused linear map: dsts[k] = sum_j coef[k, j] * srcs[j] over mask[k][j] (a fixed structure)."""
    srcs: tuple[tuple[str, int], ...]
    dsts: tuple[int, ...]               # indices of the new registers written
    mask: tuple[tuple[bool, ...], ...]  # structural non-zeros, len(dsts) x len(srcs)
    dup: int                            # position in dsts stored twice ([x, x] for the guided network), or -1


class Call(NamedTuple):
    update: Update
    aliases: tuple[tuple[int, tuple[str, int]], ...]  # (new register, source) passed on without a pass
    n_new: int                                        # registers after this call (dead ones stay None)
    next_input: int                                   # new register the next network call reads; -1 at the end


class Program(NamedTuple):
    """What executors run: plain tuples of python ints (the structure) plus float64 tables."""
    guided: bool
    prologue: Update | None   # z -> the first network input, when the network does not read z itself
    calls: tuple[Call, ...]
    coefs: tuple[torch.Tensor, ...]  # float64, one per update: prologue first (if any), then per call
    t_net: torch.Tensor              # float64 (nfe,): the network's own time input per call

    @property
    def structure(self) -> tuple:
        """Everything but the numbers: two schedules with equal structures share compiled code."""
        return (self.guided, self.prologue, self.calls)

    @property
    def updates(self) -> tuple[Update, ...]:
        return ((self.prologue,) if self.prologue else ()) + tuple(c.update for c in self.calls)


def lower(plan: Plan, folded: FoldedPlan, guided: bool) -> Program:
    """Decide, on python ints, what every update reads and writes (see the module docstring)."""
    steps, n = folded.steps, folded.nfe
    # Which old registers each call reads: its network input and every structural source.
    reads = [{s.input} | {j for src in s.sources for j in src if j < len(s.registers)} for s in steps]
    init_scale = folded.init_scale
    # An initial register is z itself when it is the state x and the prior scale is 1 (VP): structural,
    # as the prior scale belongs to the noise schedule, not to the times.
    init_is_z = tuple(name == "x" and float(init_scale[r]) == 1.0 for r, name in enumerate(folded.init_registers))
    first = steps[0].input
    prologue = None
    coefs = []
    if guided or not init_is_z[first]:
        prologue = Update(((Z, 0),), (0,), ((True,),), 0 if guided else -1)
        coefs.append(init_scale[first].reshape(1, 1))
    calls = []
    for i, s in enumerate(steps):
        n_old, n_new = len(s.registers), len(s.new_registers)
        live = [0] if i == n - 1 else sorted(reads[i + 1])
        next_input = steps[i + 1].input if i < n - 1 else -1
        identity = plan.steps[i].identity  # the plan's own registers; fold appends NET_IN after them

        def ref(col):
            if col >= n_old:
                return (RAW, col - n_old)
            return (Z, 0) if i == 0 else (REG, col)

        aliases, dsts = [], []
        for k in live:
            src = s.sources[k]
            copy = k < len(identity) and identity[k] and len(src) == 1 and src[0] < n_old
            if copy and i == 0:
                copy = init_is_z[src[0]]
            if copy and guided and k == next_input:
                copy = False  # the guided network reads it from the doubled buffer the update writes
            if copy:
                if float(s.coef[k, src[0]]) != 1.0:
                    raise AssertionError(f"call {i}: register {s.new_registers[k]} marked as a copy has "
                                         f"coefficient {float(s.coef[k, src[0]])}")
                aliases.append((k, ref(src[0])))
            else:
                dsts.append(k)
        # Columns of the kernel; in call 0 all old registers are multiples of z and merge into one column.
        srcs, col_of = [], {}
        for col in sorted({c for k in dsts for c in s.sources[k]}):
            r = ref(col)
            if r not in srcs:
                srcs.append(r)
            col_of[col] = srcs.index(r)
        coef = torch.zeros(len(dsts), len(srcs), dtype=s.coef.dtype)
        mask = [[False] * len(srcs) for _ in dsts]
        for p, k in enumerate(dsts):
            for col in s.sources[k]:
                c = s.coef[k, col] * (init_scale[col] if i == 0 and col < n_old else 1.0)
                coef[p, col_of[col]] += c
                mask[p][col_of[col]] = True
        dup = dsts.index(next_input) if guided and next_input >= 0 else -1
        update = Update(tuple(srcs), tuple(dsts), tuple(tuple(r) for r in mask), dup)
        calls.append(Call(update, tuple(aliases), n_new, next_input))
        coefs.append(coef)
    t_net = torch.stack([s.t_net for s in steps])
    return Program(guided, prologue, tuple(calls), tuple(coefs), t_net)


def execute(structure: tuple, z: torch.Tensor, network, apply) -> torch.Tensor:
    """Run a Program's structure: network(x_net, i) -> raw outputs; apply(u, update, srcs) -> destinations.

    The one loop every backend shares; it branches on python ints only.
    """
    guided, prologue, calls = structure
    batch = z.shape[0]
    u = 0
    if prologue is not None:
        x_net = apply(0, prologue, [z])[0]
        u = 1
    else:
        x_net = z
    regs: list = []
    for i, call in enumerate(calls):
        raw = network(x_net, i)

        def get(ref):
            kind, j = ref
            return z if kind == Z else regs[j] if kind == REG else raw[j]

        update = call.update
        outs = apply(u, update, [get(r) for r in update.srcs])
        u += 1
        new = [None] * call.n_new
        for k, r in call.aliases:
            new[k] = get(r)
        for p, k in enumerate(update.dsts):
            new[k] = outs[p][:batch] if p == update.dup else outs[p]
        if call.next_input >= 0:
            x_net = outs[update.dup] if guided else new[call.next_input]
        regs = new
    return regs[0]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation (and coefficient) dtype: fp32 for fp32 / fp16 / bf16 storage, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _model_device(den: Denoiser) -> torch.device:
    if isinstance(den.net, nn.Module):
        for t in list(den.net.parameters()) + list(den.net.buffers()):
            return t.device
    return torch.device("cpu")


class Sampler:
    """A fixed-schedule sampler: all planning at construction, nothing but network calls and updates per call.

    Args:
        den: the Denoiser (its guidance scale and null condition are fixed here).
        schedule: an lf.Schedule; checked against the model and solver as lf.sample does
            (pass force=True to use a schedule made for another model or solver anyway).
        solver, order, **options: as lf.sample (final, lower_order_final, variant).
        backend: "eager" | "triton" | "cuda_graph" | "compile".
        dtype: the working dtype of the registers and the network input (float32, float16,
            bfloat16, float64); default float32 (updates accumulate in float32, or float64 for
            float64). Calling with a z of another dtype is an error: the tables are cast once, here.
            The network runs in this dtype too, without a per-call cast: a network whose parameters
            have another dtype is refused here (cast it, e.g. den.net.half(), or pass its dtype).
        device: where the tables live; default the device of the network's parameters (CPU
            for a parameterless network). Calling with z elsewhere is an error.
        check_finite: also check, on every call, that z and the sample are finite (NonFiniteSample)
            and that class labels held on an accelerator are in the model's range (ConditionError).
            Off by default: these checks read the data, which on a GPU synchronises the host once
            per check. Conditions held on the host are always checked (no device is involved).
    The first call fixes the sample shape (z.shape[1:]); the batch size may vary.
    """

    def __init__(self, den: Denoiser, schedule: Schedule, *, solver: str | None = None, order: int | None = None,
                 backend: str = "eager", dtype: torch.dtype | None = None, device=None, force: bool = False,
                 check_finite: bool = False, **options):
        if not isinstance(backend, str) or backend not in BACKENDS:
            error = InvalidArgument if isinstance(backend, str) else InvalidArgumentType
            raise error(f"unknown backend {backend!r:.40}; expected one of {BACKENDS}")
        self.check_finite = boolean(check_finite, "check_finite")
        dtype = torch.float32 if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or dtype not in DTYPES:
            raise InvalidArgumentType(f"dtype must be one of {[str(d) for d in DTYPES]}, got {dtype!r:.40}")
        device = device_of(device)
        self.plan = plan_for(den, schedule, solver=solver, order=order, force=force, **sampler_options(options))
        net_dtype = network_dtype(den.net)
        if net_dtype is not None and net_dtype != dtype:
            # The fast path feeds the network its registers as they are: no per-call cast (lf.sample casts).
            raise InvalidArgumentType(
                f"dtype={dtype} is what this Sampler feeds its network, but the network's parameters are {net_dtype}: "
                f"pass dtype={net_dtype}, or cast the network first (den.net.to({dtype}))")
        self.den, self.backend, self.dtype = den, backend, dtype
        self.device = device if device is not None else _model_device(den)
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.acc_dtype = _acc_dtype(dtype)
        self._kernels = None
        if backend == "triton":
            self._kernels = _load_kernels(self.device, backend)
        elif backend == "cuda_graph":
            if self.device.type != "cuda" or not torch.cuda.is_available():
                raise Unavailable(f"backend='cuda_graph' captures CUDA graphs and needs a CUDA device; the sampler's "
                                  f"device is {self.device}"
                                  f"{'' if torch.cuda.is_available() else ' and this machine has no CUDA'}. "
                                  f"Use backend='eager' or backend='compile' (or 'triton' on a GPU).")
            # The graph replays fused Triton updates when triton can run here, else torch updates.
            try:
                self._kernels = _load_kernels(self.device, backend)
            except RuntimeError:
                self._kernels = None
        self.update_impl = "triton" if self._kernels is not None else "torch"
        # One program: a guided model refuses cond=None (check_noise), so it never runs unguided.
        self.guided = den.guidance_scale != 1.0
        self.programs = {self.guided: self._build(fold(self.plan, den, guided=self.guided), self.guided)}
        if self.guided:
            # Placed once: a per-call host-to-device copy would sync.
            self._null = map_cond(lambda c: c.to(self.device), den.null_cond)
            self._null_by_dtype = {}
        self.sample_shape: tuple[int, ...] | None = None
        self._graphs: dict = {}
        self._compiled = None

    # ----- building ---------------------------------------------------------------------------

    def _build(self, folded: FoldedPlan, guided: bool) -> dict:
        prog = lower(self.plan, folded, guided)
        # The single cast of the float64 tables: coefficients to the accumulation dtype (the kernel's
        # fp32, or fp64), network times to what Denoiser.net_call feeds the network, both to the device.
        cpu = [c.to(self.acc_dtype) for c in prog.coefs]
        t_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        return {
            "program": prog,
            "structure": prog.structure,
            "tables": tuple(c.to(self.device) for c in cpu),
            "floats": tuple(tuple(tuple(float(v) for v in row) for row in c.tolist()) for c in cpu),
            "t_net": tuple(prog.t_net.to(t_dtype).to(self.device).unbind(0)),
            "t_table": prog.t_net.to(t_dtype).to(self.device),
        }

    def __repr__(self):
        prog = self.program()
        return (f"Sampler({self.plan.solver}, order={self.plan.order}, nfe={self.plan.nfe}, backend={self.backend!r}"
                f" ({self.update_impl} updates), dtype={self.dtype}, device={self.device}, "
                f"{self.launches_per_call()} updates per call, {sum(len(c.aliases) for c in prog.calls)} aliased "
                f"copies, guided={'yes' if self.guided else 'no'})")

    def program(self, guided: bool | None = None) -> Program:
        return self.programs[self.guided if guided is None else guided]["program"]

    def launches_per_call(self, guided: bool | None = None) -> int:
        """Fused-update launches per sampler call: one per network call, plus the prologue if any."""
        return sum(1 for u in self.program(guided).updates if u.dsts)

    # ----- calling ----------------------------------------------------------------------------

    def _check(self, z: torch.Tensor, cond) -> None:
        on_host = cond is None or not is_cond(cond) or all(c.device.type == "cpu" for c in leaves(cond))
        check_noise(z, cond, self.den, values=self.check_finite or on_host)
        if z.dtype != self.dtype:
            raise InvalidArgumentType(f"z has dtype {z.dtype}, but this Sampler was built for {self.dtype} (its tables "
                                      f"are cast once when it is built): pass z.to({self.dtype}) or build a Sampler "
                                      f"with dtype={z.dtype}")
        if z.device != self.device:
            raise InvalidArgument(f"z is on {z.device}, but this Sampler's tables are on {self.device}: move z, or "
                                  f"build the Sampler with device={str(z.device)!r}")
        if self.sample_shape is None:
            self.sample_shape = tuple(z.shape[1:])
        elif tuple(z.shape[1:]) != self.sample_shape:
            raise InvalidArgument(f"z has sample shape {tuple(z.shape[1:])}, but this Sampler was first called with "
                                  f"{self.sample_shape}; build another Sampler for another sample shape")

    def __call__(self, z: torch.Tensor, cond=None) -> torch.Tensor:
        self._check(z, cond)
        if self.check_finite:
            check_finite(z, "the noise z")
        guided = self.den.guided(cond)
        tabs = self.programs[guided]
        with torch.no_grad():
            if self.backend == "cuda_graph":
                x = self._graph_call(z, cond, guided)
            elif self.backend == "compile":
                if self._compiled is None:
                    self._compiled = _compiled_for(tabs["structure"])
                x = self._compiled(tabs["structure"], self.den, z.contiguous(), self._pair(cond, guided),
                                   tabs["tables"], tabs["t_table"], self.dtype, self.acc_dtype)
            else:
                x = self._run(z.contiguous(), cond, guided)
        if self.check_finite:
            check_finite(x, f"the sample ({self.plan.solver}{self.plan.order}, nfe {self.plan.nfe}, "
                            f"backend {self.backend})")
        return x

    def network_forward(self, z: torch.Tensor, cond=None):
        """A callable making one network call exactly as this sampler makes it (the same input batch, time
        table, condition pairing and dtype), for the latency floor: nfe x this is what no sampler can beat.
        Under guidance it evaluates the doubled [x, x] batch, as the sampler's calls do."""
        self._check(z, cond)
        guided = self.den.guided(cond)
        tabs = self.programs[guided]
        x = torch.cat([z, z]) if guided else z.contiguous()
        network = self._network(tabs, self._pair(cond, guided), guided)

        def forward():
            with torch.no_grad():
                return network(x, 0)
        return forward

    def _pair(self, cond, guided: bool):
        """cond, or [cond, null] for the guided network's one batched call (made once per sampler call)."""
        if not guided:
            return cond
        key = (tuple(c.dtype for c in leaves(cond)), repr(structure(cond)))
        if key not in self._null_by_dtype:
            if not same_structure(cond, self._null):
                raise ConditionError(f"cond has the structure {structure(cond)}, null_cond {structure(self._null)}")
            self._null_by_dtype[key] = map_cond(
                lambda n, c: n.to(c.dtype) if n.dtype != c.dtype and n.is_floating_point() else n, self._null, cond)
        null = map_cond(expand_null, self._null_by_dtype[key], cond)
        return map_cond(lambda c, n: torch.cat([c, n]), cond, null)

    def _network(self, tabs: dict, cond, guided: bool):
        den, t_net = self.den, tabs["t_net"]
        if not guided:
            return lambda x, i: den.net_call(x, t_net[i], cond)
        if not den._net_takes_cond:
            raise InvalidArgumentType(f"cond was given but {type(den.net).__name__} takes no condition argument")
        # Denoiser.net_call's guided branch, with the [x, x] batch already written by the update.
        return lambda x, i: halves(den.net(x, t_net[i].expand(x.shape[0]), cond), x)

    def _apply(self, tabs: dict):
        dtype = self.dtype
        if self._kernels is not None:
            launch, tables = self._kernels.fused_update, tabs["tables"]

            def apply(u, update, srcs):
                srcs = [s if s.is_contiguous() else s.contiguous() for s in srcs]
                dsts = [_empty_like(srcs[0], dtype, p == update.dup) for p in range(len(update.dsts))]
                if dsts:
                    launch(srcs, dsts, tables[u], update.mask, dup=update.dup)
                return dsts
            return apply
        floats = tabs["floats"]

        def apply(u, update, srcs):
            rows = floats[u]
            dsts = []
            for p, mask in enumerate(update.mask):
                buf = _empty_like(srcs[0], dtype, p == update.dup)
                out = buf[:srcs[0].shape[0]] if p == update.dup else buf
                first = True
                for j, on in enumerate(mask):
                    if not on:
                        continue
                    if first:
                        torch.mul(srcs[j], rows[p][j], out=out)
                        first = False
                    else:
                        out.add_(srcs[j], alpha=rows[p][j])
                if p == update.dup:
                    buf[srcs[0].shape[0]:].copy_(out)
                dsts.append(buf)
            return dsts
        return apply

    def _run(self, z: torch.Tensor, cond, guided: bool) -> torch.Tensor:
        tabs = self.programs[guided]
        return execute(tabs["structure"], z, self._network(tabs, self._pair(cond, guided), guided), self._apply(tabs))

    # ----- CUDA graphs ------------------------------------------------------------------------

    def _graph_call(self, z: torch.Tensor, cond, guided: bool) -> torch.Tensor:
        key = (z.shape[0], guided, None if cond is None else
               (str(structure(cond)), tuple((tuple(c.shape), c.dtype) for c in leaves(cond))))
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = _CapturedSampler(self, z, cond, guided)
        return graph(z, cond)


class _CapturedSampler:
    """One CUDA graph of the whole sampler for a fixed batch size (and condition shape).

    Static buffers: `z` and `cond` (inputs, copied into before each replay) and `out`
    (the sample, cloned after the replay so the caller's result survives the next call).
    Everything in between (network activations, registers, raw outputs) lives in the
    graph's private memory pool, which the caching allocator reserves for this graph and
    never hands to other allocations, so replays cannot clobber or be clobbered by
    tensors outside it. Capture follows torch's recipe: a warm-up on a side stream first
    (lazy initialisation, cuDNN / cuBLAS heuristics and Triton compilation happen there,
    outside the capture), then capture on a stream; both synchronise once, on this first
    call of this batch size only.
    """

    def __init__(self, sampler: Sampler, z: torch.Tensor, cond, guided: bool):
        self.z = z.detach().clone().contiguous()
        self.cond = None if cond is None else map_cond(lambda c: c.detach().clone(), cond)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                sampler._run(self.z, self.cond, guided)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = sampler._run(self.z, self.cond, guided)

    def __call__(self, z: torch.Tensor, cond) -> torch.Tensor:
        self.z.copy_(z)
        if cond is not None:
            for static, new in zip(leaves(self.cond), leaves(cond)):
                static.copy_(new)
        self.graph.replay()
        return self.out.clone()


# ----- torch.compile ------------------------------------------------------------------------------

_COMPILED: dict = {}


def _compiled_for(structure: tuple):
    """torch.compile'd `_run_compiled`, one per program structure, shared by every Sampler of that structure.

    Dynamo caches compiled frames per code object, with a limit of 8 variants before it silently
    runs the function uncompiled; a code object per structure keeps samplers of different NFE or
    solver from using up each other's variants, while schedules of the same structure share one.
    """
    fn = _COMPILED.get(structure)
    if fn is None:
        name = f"_run_compiled_{len(_COMPILED)}"
        code = _run_compiled.__code__.replace(co_name=name)
        fn = _COMPILED[structure] = torch.compile(types.FunctionType(code, _run_compiled.__globals__, name),
                                                  dynamic=False)
    return fn


def _run_compiled(structure: tuple, den: Denoiser, z: torch.Tensor, cond, tables: tuple, t_table: torch.Tensor,
                  dtype: torch.dtype, acc: torch.dtype) -> torch.Tensor:
    """The unrolled sampler as torch.compile sees it: a module-level function whose only schedule-dependent
    inputs are tensors (tables, t_table), so a new schedule of the same structure reuses the compiled graph."""
    guided = structure[0]

    def network(x, i):
        if not guided:
            return den.net_call(x, t_table[i], cond)
        return halves(den.net(x, t_table[i].expand(x.shape[0]), cond), x)

    def apply(u, update, srcs):
        xs = [s.to(acc) for s in srcs]
        coef = tables[u]
        outs = []
        for p, mask in enumerate(update.mask):
            out = None
            for j, on in enumerate(mask):
                if on:
                    term = coef[p, j] * xs[j]
                    out = term if out is None else out + term
            out = out.to(dtype)
            outs.append(torch.cat([out, out]) if p == update.dup else out)
        return outs

    return execute(structure, z, network, apply)


# ----- helpers --------------------------------------------------------------------------------------

def available_backends(device=None) -> dict[str, str | None]:
    """Each backend -> None when it can run on `device` (default: cuda if available, else cpu), else why not."""
    import shutil

    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    out: dict[str, str | None] = {"eager": None}
    try:
        _load_kernels(device, "triton")
        out["triton"] = None
    except RuntimeError as e:
        out["triton"] = str(e).split(". Use backend=")[0]
    out["cuda_graph"] = None if device.type == "cuda" and torch.cuda.is_available() else "needs a CUDA device"
    compiler = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    out["compile"] = None if device.type == "cuda" or compiler else "torch.compile on the CPU needs a C++ compiler"
    return out


def _empty_like(x: torch.Tensor, dtype: torch.dtype, doubled: bool) -> torch.Tensor:
    shape = (2 * x.shape[0], *x.shape[1:]) if doubled else x.shape
    return torch.empty(shape, dtype=dtype, device=x.device)


def _load_kernels(device: torch.device, backend: str):
    """The one lazy import of ldd_fast.kernels, with an error that names the alternatives."""
    alternatives = "Use backend='eager' (torch ops) or backend='compile' (torch.compile) instead."
    try:
        import ldd_fast.kernels as kernels
    except ImportError as e:
        raise Unavailable(f"backend={backend!r} needs the fused Triton update (ldd_fast.kernels), which cannot be "
                          f"imported ({e}); install the [triton] extra. {alternatives}") from e
    reason = kernels.available(device)
    if reason is not None:
        raise Unavailable(f"backend={backend!r} cannot run the fused Triton update here: {reason}. {alternatives}")
    return kernels
