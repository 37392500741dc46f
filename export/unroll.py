"""The sampler unrolled into one `nn.Module`: nfe network calls and the folded linear maps between them.

Built on `fold()`: the model-output conversion (eps / v / x0 / EDM c_skip, c_out,
c_in) and classifier-free guidance are already inside the per-call coefficient
tables, so forward() is nothing but

    regs = init_scale * z
    for each call i (a Python loop over plan-time ints):
        raw  = net(regs[input_i], t_net[i], cond)           # one (batched, when guided) call
        regs = coef_i @ [regs..., raw_0, ..., raw_{n_raw-1}] # only its structural non-zeros

There is no tensor-valued branch, host sync or data-dependent shape, so
`torch.export` traces it into one straight-line graph (no Loop / If nodes in
ONNX) and every call refers to the same network parameters (stored once).

Precision: the registers and the linear maps run in `state_dtype` (float32);
only the network runs in `net_dtype` (e.g. float16), with one cast of its input
and one of its output per call. Keeping the state in float32 is what diffusers'
and k-diffusion's mixed-precision samplers do: EDM's state starts at 80 z and
the multistep maps combine up to 7 terms with coefficients of both signs, so
float16 registers would add rounding at every call while saving only the memory
traffic of the maps (a few state-sized tensors per call, against the network's
activations).

Coefficients are either constants (buffers, baked in: the deployable default)
or, with `schedule_as_input=True`, forward() arguments `coef`, `init_scale`
and `t_net`, so that a newly learned schedule with the same structure (solver,
order, variant, nfe, final, lower_order_final, guidance) can be swapped in
without re-exporting; `schedule_tensors()` computes them.
"""
from __future__ import annotations

import copy
import hashlib
import json

import torch
from torch import nn

from ldd_fast.cond import rebuild
from ldd_fast.denoiser import Denoiser
from ldd_fast.errors import InvalidArgumentType, LddFastError, boolean, optional_boolean
from ldd_fast.plan import FoldedPlan, Plan, fold
from ldd_fast.sample import plan_for, sampler_options
from ldd_fast.schedule import Schedule

STATE_DTYPE = torch.float32


class UnrollError(LddFastError):
    """The sampler cannot be unrolled as asked (the message names the option or the mismatch)."""


def _net_dtype(den: Denoiser) -> torch.dtype:
    params = [p for p in den.net.parameters()] if isinstance(den.net, nn.Module) else []
    floats = [p.dtype for p in params if p.is_floating_point()]
    return floats[0] if floats else STATE_DTYPE


def structure_of(folded: FoldedPlan) -> dict:
    """The plan-time structure an exported graph is specialised to (everything but coefficient values)."""
    return {
        "nfe": folded.nfe,
        "n_raw": folded.n_raw,
        "init_registers": list(folded.init_registers),
        "steps": [{"input": s.input, "registers": list(s.registers), "new_registers": list(s.new_registers),
                   "sources": [list(src) for src in s.sources]} for s in folded.steps],
    }


def structure_hash(folded: FoldedPlan) -> str:
    return hashlib.sha256(json.dumps(structure_of(folded), sort_keys=True).encode()).hexdigest()[:16]


def table_shape(folded: FoldedPlan) -> tuple[int, int, int]:
    """(nfe, rows, cols) of the padded coefficient tensor fed when schedule_as_input=True."""
    rows = max(s.coef.shape[0] for s in folded.steps)
    cols = max(s.coef.shape[1] for s in folded.steps)
    return folded.nfe, rows, cols


def schedule_tensors(folded: FoldedPlan, dtype: torch.dtype = STATE_DTYPE) -> dict[str, torch.Tensor]:
    """The graph inputs of a schedule_as_input export: padded coef [nfe, R, C], init_scale, t_net.

    The one place where the folded float64 tables are cast for a swappable graph.
    """
    nfe, rows, cols = table_shape(folded)
    coef = torch.zeros(nfe, rows, cols, dtype=torch.float64)
    for i, s in enumerate(folded.steps):
        coef[i, : s.coef.shape[0], : s.coef.shape[1]] = s.coef.detach()
    t_net = torch.stack([s.t_net.detach() for s in folded.steps])
    return {"coef": coef.to(dtype), "init_scale": folded.init_scale.detach().to(dtype),
            "t_net": t_net.to(torch.float32)}


def rebuild_leaf_count(spec) -> list:
    """The leaves of a condition structure (placeholders), to count a graph's condition inputs."""
    if spec == "tensor":
        return [None]
    kind, sub = spec
    parts = sub.values() if kind == "dict" else sub
    return [x for part in parts for x in rebuild_leaf_count(part)]


class NetCall(nn.Module):
    """One network call as the exported graph makes it: (x, t_net, cond) -> raw outputs in the state dtype.

    x is the (already c_in-scaled) register in the state dtype, t_net a 0-dim network time.
    The casts to and from the network's dtype are the one precision boundary of the graph.
    """

    def __init__(self, den: Denoiser, *, guided: bool, net_dtype: torch.dtype, state_dtype: torch.dtype,
                 cond_spec=None):
        super().__init__()
        self.den = den
        self.guided = guided
        self.net_dtype = net_dtype
        self.state_dtype = state_dtype
        self.cond_spec = cond_spec  # the condition's structure: its leaves are separate inputs

    def forward(self, x: torch.Tensor, t_net: torch.Tensor, *cond_leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cond = rebuild(self.cond_spec, list(cond_leaves)) if cond_leaves else None
        raw = self.den.net_call(x.to(self.net_dtype), t_net, cond)
        return tuple(r.to(self.state_dtype) for r in raw)


class UnrolledSampler(nn.Module):
    """z (unit normal noise) [, cond] [, coef, init_scale, t_net] -> the sample, in straight-line code.

    Build it with `unroll()`. `forward` signature depends on the options fixed at build time:
    `forward(z)`, `forward(z, cond)`, and with schedule_as_input also `coef, init_scale, t_net`.
    """

    def __init__(self, den: Denoiser, folded: FoldedPlan, *, conditional: bool, net_dtype: torch.dtype,
                 schedule_as_input: bool, state_dtype: torch.dtype = STATE_DTYPE, cond_spec="tensor"):
        super().__init__()
        self.net_call = NetCall(den, guided=folded.n_raw == 2, net_dtype=net_dtype, state_dtype=state_dtype,
                                cond_spec=cond_spec)
        self.conditional = conditional
        self.n_cond = len(rebuild_leaf_count(cond_spec)) if conditional else 0
        self.net_dtype = net_dtype
        self.state_dtype = state_dtype
        self.schedule_as_input = schedule_as_input
        self.nfe = folded.nfe
        self.n_raw = folded.n_raw
        self.n_init = len(folded.init_registers)
        # Plan-time structure: python ints only, so the traced graph has no branches.
        self.inputs = tuple(s.input for s in folded.steps)
        self.sources = tuple(s.sources for s in folded.steps)
        self.structure_hash = structure_hash(folded)
        tensors = schedule_tensors(folded, state_dtype)
        # Plain copies (a single source with coefficient exactly 1) skip the multiply; decided
        # on the float64 values now, and only when the values are baked in.
        self.copies = tuple(
            tuple(len(src) == 1 and not schedule_as_input and float(s.coef[k, src[0]]) == 1.0
                  for k, src in enumerate(s.sources))
            for s in folded.steps)
        if not schedule_as_input:
            self.register_buffer("coef", tensors["coef"], persistent=False)
            self.register_buffer("init_scale", tensors["init_scale"], persistent=False)
            self.register_buffer("t_net", tensors["t_net"], persistent=False)

    def forward(self, z: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        args = list(args)
        cond_leaves, args = args[:self.n_cond], args[self.n_cond:]
        if self.schedule_as_input:
            coef, init_scale, t_net = args
        else:
            if args:
                raise InvalidArgumentType(f"unexpected extra inputs: this sampler was unrolled with conditional="
                                          f"{self.conditional}, schedule_as_input=False")
            coef, init_scale, t_net = self.coef, self.init_scale, self.t_net
        z = z.to(self.state_dtype)
        regs = [init_scale[r] * z for r in range(self.n_init)]
        for i in range(self.nfe):
            raw = self.net_call(regs[self.inputs[i]], t_net[i], *cond_leaves)
            src = regs + list(raw)
            new = []
            for k, sources in enumerate(self.sources[i]):
                if self.copies[i][k]:
                    new.append(src[sources[0]])
                    continue
                out = coef[i, k, sources[0]] * src[sources[0]]
                for j in sources[1:]:
                    out = out + coef[i, k, j] * src[j]
                new.append(out)
            regs = new
        return regs[0]


def unroll(den: Denoiser, schedule: Schedule, *, solver: str | None = None, order: int | None = None,
           conditional: bool | None = None, dtype: torch.dtype | None = None, schedule_as_input: bool = False,
           force: bool = False, cond_spec="tensor", **options) -> UnrolledSampler:
    """The fixed sampler as an nn.Module mapping unit normal noise z (and cond) to the sample.

    Args:
        den, schedule, solver, order, force, **options: as for `lf.sample` (all compatibility
            checks, incl. a schedule made for another model, happen in `lf.plan_for`).
        conditional: whether forward takes `cond` (default: True when the Denoiser guides,
            i.e. guidance_scale != 1). Guidance is folded in: one batched call per step.
        dtype: the network's dtype in the module (default: its own); the state stays float32.
            A different dtype works on a copy of the network: the caller's model is not touched.
        schedule_as_input: coefficients and network times become forward arguments.
        cond_spec: the structure of the condition (`ldd_fast.cond.structure(cond)`; default one
            tensor): forward takes its leaves as separate arguments, in `ldd_fast.cond.leaves` order.
    """
    optional_boolean(conditional, "conditional")
    boolean(schedule_as_input, "schedule_as_input")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise InvalidArgumentType(f"dtype must be a torch dtype or None, got {type(dtype).__name__}")
    try:
        rebuild_leaf_count(cond_spec)
    except (TypeError, ValueError, AttributeError):
        raise InvalidArgumentType(f"cond_spec must be 'tensor' or ldd_fast.cond.structure(cond), got "
                                  f"{cond_spec!r:.60}") from None
    plan = plan_for(den, schedule, solver=solver, order=order, force=force, **sampler_options(options))
    return unroll_plan(den, plan, conditional=conditional, dtype=dtype, schedule_as_input=schedule_as_input,
                       cond_spec=cond_spec)


def unroll_plan(den: Denoiser, plan: Plan, *, conditional: bool | None = None, dtype: torch.dtype | None = None,
                schedule_as_input: bool = False, cond_spec="tensor") -> UnrolledSampler:
    """`unroll` for an already checked Plan."""
    if not isinstance(den, Denoiser):
        raise InvalidArgumentType(f"expected an ldd_fast Denoiser, got {type(den).__name__}")
    guided = den.guidance_scale != 1.0
    if conditional is None:
        conditional = guided
    if guided and not conditional:
        raise UnrollError(f"the Denoiser guides (guidance_scale={den.guidance_scale}) but conditional=False: "
                          f"guidance needs the condition as a graph input")
    if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise UnrollError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
    own = _net_dtype(den)
    if dtype is not None and dtype != own:
        if not isinstance(den.net, nn.Module):
            raise UnrollError(f"dtype={dtype} needs the network to be an nn.Module (to cast a copy of it), "
                              f"got {type(den.net).__name__}")
        den = copy.deepcopy(den)
        den.net.to(dtype)
    folded = fold(plan, den, guided=guided and conditional)
    with torch.no_grad():
        mod = UnrolledSampler(den, folded, conditional=conditional, net_dtype=dtype or own,
                              schedule_as_input=schedule_as_input, cond_spec=cond_spec)
    mod.plan, mod.folded = plan, folded
    return mod
