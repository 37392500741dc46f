"""A sampler as N network calls with one small linear map between them.

A solver compiles (noise schedule, t, t_eval) into a `Plan`. Before call i the
sampler holds a few registers (tensors of the sample's shape: the state, past
model outputs, a stage); call i evaluates the denoiser on one of them at
t_eval[i], and then every new register is a linear combination of the old
registers and the new output D. The combination coefficients are float64
tensors built with differentiable torch ops, so LD3 trains through them, and
the executors (eager, Triton, CUDA graph, ONNX) only apply them.

Solvers write their update in the paper's notation on `Lin` objects (symbolic
linear combinations of named registers), so the algebra reads like the paper
and the coefficient tables fall out of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import InvalidArgument
from .noise import DTYPE, NoiseSchedule, as_time

D = "D"  # the name of the network output (x0 estimate) of the current call
# The generalized form's first call has no history, so its only possible learned value is a relaxed-style
# scale of its weight (giving up exactness for a constant denoiser). Measured at NFE 3 on the built-in EDM
# model, 100 + 100 pairs (benchmarks/generalized_solver.py "first"): held-out RMSE DPM-Solver++ 3M 0.1088 ->
# 0.1078 (-0.9%), UniPC-3 0.1068 -> 0.1071 (+0.3%); short of the 5% that would keep it, so it is off (the
# benchmark switches it on to measure it).
GENERALIZED_FIRST_STEP = False


class Lin:
    """A linear combination sum_k c_k * register_k, with float64 tensor (or python float) coefficients."""

    __slots__ = ("terms",)

    def __init__(self, terms=None):
        self.terms = dict(terms or {})

    @classmethod
    def of(cls, name: str) -> "Lin":
        return cls({name: 1.0})

    def __add__(self, other: "Lin") -> "Lin":
        if not isinstance(other, Lin):
            return NotImplemented
        out = dict(self.terms)
        for k, c in other.terms.items():
            out[k] = out[k] + c if k in out else c
        return Lin(out)

    def __neg__(self) -> "Lin":
        return Lin({k: -c for k, c in self.terms.items()})

    def __sub__(self, other: "Lin") -> "Lin":
        return self + (-other)

    def __mul__(self, c) -> "Lin":
        if isinstance(c, Lin):
            raise TypeError("a linear combination can only be scaled by a coefficient, not multiplied by another")
        return Lin({k: v * c for k, v in self.terms.items()})

    __rmul__ = __mul__

    def __truediv__(self, c) -> "Lin":
        return self * (1.0 / c)

    def __repr__(self):
        return " + ".join(f"{float(c):.6g}*{k}" for k, c in self.terms.items()) or "0"


def lin_sum(terms) -> Lin:
    out = Lin()
    for t in terms:
        out = out + t
    return out


@dataclass(frozen=True)
class Step:
    """One network call and the linear map after it.

    input: index of the register the network is evaluated on.
    sources: for each new register, the tuple of source indices into [registers..., D]
        with a structurally non-zero coefficient (decided at plan time, on python ints).
    coef: float64 tensor (n_new, n_old + 1), zeros where structurally zero.
    identity: for each new register, True when it is a plain copy (alias) of one source.
    """
    input: int
    registers: tuple[str, ...]      # names before the call
    new_registers: tuple[str, ...]  # names after the update
    sources: tuple[tuple[int, ...], ...]
    coef: torch.Tensor
    identity: tuple[bool, ...]


class _Calls:
    """What every plan form knows: one step per network call."""

    @property
    def nfe(self) -> int:
        return len(self.steps)

    @property
    def max_registers(self) -> int:
        return max(len(s.registers) for s in self.steps)


@dataclass
class Plan(_Calls):
    """The compiled sampler: eval times and one linear map per network call.

    The initial registers are ("x",) holding prior_scale * z; after the last call
    the only register is the sample.
    """
    t: torch.Tensor       # solver times (float64)
    t_eval: torch.Tensor  # network times, one per call, in call order (float64)
    steps: tuple[Step, ...]
    solver: str
    order: int
    options: dict
    free: tuple[int, ...] = ()  # learnable coefficient corrections per call (PlanBuilder.correct)

    def cast(self, dtype: torch.dtype, device=None) -> list[torch.Tensor]:
        """The one place where plan coefficients leave float64: one table per step."""
        return [s.coef.to(device=device, dtype=dtype) for s in self.steps]

    def __repr__(self):
        lines = [f"Plan({self.solver}, order={self.order}, nfe={self.nfe}, {self.options})"]
        for i, s in enumerate(self.steps):
            lines.append(f"  call {i}: D(x={s.registers[s.input]}, t={float(self.t_eval[i]):.6g}) -> "
                         f"{', '.join(s.new_registers)}")
        return "\n".join(lines)


class PlanBuilder:
    """Records network calls and register updates written with `Lin` algebra."""

    def __init__(self, t, t_eval, solver: str, order: int, options: dict, corrections=None, form: str = "exact"):
        self.t, self.t_eval = t, t_eval
        self.solver, self.order, self.options = solver, order, options
        self.registers: tuple[str, ...] = ("x",)
        self.steps: list[Step] = []
        self._input: int | None = None
        self.corrections = corrections
        # "exact" / "relaxed": corrections on the outputs the base solver buffers; "generalized": every
        # earlier output is kept (history_keep) and every update may weight all of them (GAS's solver).
        self.relaxed, self.generalized = form == "relaxed", form == "generalized"
        self.first_scale = self.generalized and GENERALIZED_FIRST_STEP
        self.free: list[int] = []  # corrections consumed per call
        self._used = 0

    def reg(self, name: str) -> Lin:
        if name not in self.registers:
            raise KeyError(f"register {name!r} is not live (live: {self.registers})")
        return Lin.of(name)

    def call(self, register: str) -> Lin:
        """The network is evaluated on `register` at the next t_eval; returns its output D."""
        if self._input is not None:
            raise RuntimeError("call() twice without update()")
        self._input = self.registers.index(register)
        self._used = 0
        return Lin.of(D)

    def correct(self, weight, outputs: list[Lin], at=None, h=None) -> Lin:
        """The learned correction of one update's weights on buffered denoiser outputs.

        outputs: the update's output sources, newest first (D, then m1, m2, ...; for iPNDM and
        Heun their slopes eps / velocity, which are constant where D is); weight: the update's
        total weight on them in the base solver (alpha_t (1 - e^-h) for the data-prediction
        solvers). With learned values u_1..u_{n-1} the correction is
            weight * sum_k u_k (outputs[k] - outputs[0]),
        which moves weight between outputs and sums to zero: on a trajectory where every output
        is the same (a constant denoiser), the update is the base solver's, and the state
        coefficient is never touched. `relaxed` adds g * weight * outputs[0] (the total weight
        scaled by 1 + g: exactness on a constant denoiser is then given up).
        In the generalized form the solvers pass every earlier output (PlanBuilder.buffered), `at`:
        the outputs' positions in the solver's coordinate (lambda; iPNDM: its level), and h: the
        update's step in it; each difference enters as a slope over the step,
            (outputs[k] - outputs[0]) * h / (at[0] - at[k]),
        the same linear space with dimensionless weights: a unit of u_k moves the update about as much
        for a far output as for a near one (raw far differences are O(1), near ones O(h)), so Adam's
        step and the L2 pull treat them alike; each term is O(h), zero-sum, 0 for a constant denoiser.
        (On the tests' Gaussian mixture both scalings measured the same: held-out 0.130 vs 0.128 over 3
        seeds.) With GENERALIZED_FIRST_STEP the first call (no history) takes the relaxed scale.
        Without corrections (None) this is the empty combination: the plan is the base solver's
        bit for bit; the number of values this update takes is recorded in any case.
        """
        if self._input is None:
            raise RuntimeError("correct() belongs between call() and update()")
        scale = self.relaxed or (self.first_scale and not self.steps and len(outputs) == 1)
        n = len(outputs) - 1 + int(scale)
        start, self._used = self._used, self._used + n
        if self.corrections is None or n == 0:
            return Lin()
        u = self.corrections[len(self.steps)]
        if start + n > len(u):
            raise InvalidArgument(f"call {len(self.steps)}: {len(u)} coefficient corrections given, the plan needs "
                                  "more")
        u = u[start:start + n]
        if self.generalized:
            u = [u[k - 1] * (h / (at[0] - at[k])) for k in range(1, len(outputs))] + list(u[len(outputs) - 1:])
            u = torch.stack(u) if u else u
        out = lin_sum(u[k - 1] * (outputs[k] - outputs[0]) for k in range(1, len(outputs)))
        if scale:
            out = out + u[n - 1] * outputs[0]
        return out * weight

    def buffered(self, newest: Lin, order: int, prefix: str = "m") -> list[Lin]:
        """The outputs an update of `order` corrects: `newest`, then the history prefix1, prefix2, ...
        (newest first): the order - 1 the base solver uses, or in the generalized form every live one."""
        if self.generalized:
            live = sum(1 for r in self.registers if r.startswith(prefix) and r[len(prefix):].isdigit())
        else:
            live = order - 1
        return [newest] + [self.reg(f"{prefix}{k}") for k in range(1, live + 1)]

    @staticmethod
    def positions(coord: torch.Tensor, newest: int, count: int) -> list[torch.Tensor]:
        """`at` for correct(): coord at the outputs of steps newest, newest - 1, ... (count of them)."""
        return [coord[newest - k] for k in range(count)]

    def update(self, **new: Lin) -> None:
        if self._input is None:
            raise RuntimeError("update() without call()")
        cols = self.registers + (D,)
        zero = torch.zeros((), dtype=DTYPE)
        sources, rows, identity = [], [], []
        for name, lin in new.items():
            unknown = set(lin.terms) - set(cols)
            if unknown:
                raise KeyError(f"register {name!r} refers to {sorted(unknown)}, not live in {cols}")
            src = tuple(j for j, c in enumerate(cols) if c in lin.terms)
            sources.append(src)
            identity.append(len(src) == 1 and isinstance(lin.terms[cols[src[0]]], float)
                            and lin.terms[cols[src[0]]] == 1.0)
            rows.append(torch.stack([as_time(lin.terms[c]) if c in lin.terms else zero for c in cols]))
        if self.corrections is not None and len(self.corrections[len(self.steps)]) != self._used:
            raise InvalidArgument(f"call {len(self.steps)}: {len(self.corrections[len(self.steps)])} coefficient "
                                  f"corrections given, the plan takes {self._used}")
        self.free.append(self._used)
        self.steps.append(Step(self._input, self.registers, tuple(new), tuple(sources),
                               torch.stack(rows), tuple(identity)))
        self.registers = tuple(new)
        self._input = None

    def build(self) -> Plan:
        if len(self.steps) != len(self.t_eval):
            raise RuntimeError(f"{self.solver}: planned {len(self.steps)} calls for {len(self.t_eval)} eval times")
        if self.registers != ("x",):
            raise RuntimeError(f"{self.solver}: plan must end with the single register 'x', has {self.registers}")
        if self.corrections is not None and len(self.corrections) != len(self.steps):
            raise InvalidArgument(f"{len(self.corrections)} lists of coefficient corrections for {len(self.steps)} "
                                  "calls")
        return Plan(self.t, self.t_eval, tuple(self.steps), self.solver, self.order, self.options, tuple(self.free))


class StepTimes:
    """alpha, sigma, lambda at the solver times t[0..n], with t[n] = 0 allowed for final='zero'.

    Everything is float64 and differentiable in t. With final='zero' the entries at n
    are never used: every solver's last step then returns the data estimate D.
    scale, level: the coordinates Heun and iPNDM integrate in (NoiseSchedule.ode_coordinates).

    Pure-noise start (`open_start`: t[0] = 1 of a rectified flow, lambda = -inf): lambda[0] is the
    constant -inf, so the first step's h = inf gives the exact limit of every data-prediction
    update (e^-h = 0: x_1 = (sigma_1 / sigma_0) x + alpha_1 D, the finite form) and no gradient
    passes through it; `first_history` = 1 tells the multistep solvers that the output at t = 1
    is never history in lambda (its distance there is infinite): their warm-up starts at step 1.
    """

    def __init__(self, noise: NoiseSchedule, t: torch.Tensor, final: str):
        self.n = len(t) - 1
        self.final = final
        tt = t[:-1] if final == "zero" else t
        self.t = t
        self.alpha = noise.alpha(tt)
        self.sigma = noise.sigma(tt)
        self.open_start = noise.pure_noise_start and float(tt[0].detach()) == noise.t_max
        if self.open_start:
            head = torch.full((1,), -math.inf, dtype=DTYPE, device=tt.device)
            self.lam = torch.cat([head, noise.lam(tt[1:])])
        else:
            self.lam = noise.lam(tt)
        self.first_history = 1 if self.open_start else 0
        self.scale, self.level = noise.ode_coordinates(tt)

    def d_weight(self, s: int) -> torch.Tensor:
        """alpha_{s+1} (1 - e^-h): the total weight on D of an exponential-integrator step s -> s + 1
        (alpha_{s+1} from pure noise, h = inf)."""
        return -self.alpha[s + 1] * torch.expm1(self.lam[s] - self.lam[s + 1])

    def lands_on_zero(self, i: int) -> bool:
        """True for the last step when it goes to sigma = 0."""
        return self.final == "zero" and i == self.n - 1


def step_orders(n: int, order: int, lower_order_final: bool, warmup: bool = True, first: int = 0) -> list[int]:
    """Per-step order of a multistep method: warm-up min(order, i + 1 - first) and, with
    lower_order_final, min(order, n - i) (the rule of diffusers' UniPC; for
    DPM-Solver++ order <= 3 it is the same as diffusers' lower_order_final/second).
    first: the first step whose output may serve as history (StepTimes.first_history)."""
    out = []
    for i in range(n):
        p = max(1, min(order, i + 1 - first)) if warmup else order
        if lower_order_final:
            p = min(p, n - i)
        out.append(p)
    return out


def history_keep(b: PlanBuilder, i: int, n: int, keep: int, first: int = 0) -> int:
    """How many outputs to hold after step i of n: the base solver's `keep`, or in the generalized form
    every output so far from step `first` on (StepTimes.first_history); none after the last step, the
    only point where no later update can use one."""
    if not b.generalized or i + 1 >= n:
        return keep
    return max(i + 1 - first, 0)


def shift_history(b: PlanBuilder, d: Lin, keep: int, prefix: str = "m") -> dict[str, Lin]:
    """New history registers m1 = d (this call's output), m2 = old m1, ..., keeping `keep` of them."""
    hist = [d] + [b.reg(f"{prefix}{k}") for k in range(1, keep)]
    return {f"{prefix}{k + 1}": h for k, h in enumerate(hist[:keep])}


@dataclass(frozen=True)
class FoldedStep:
    """One call with the model-output conversion folded into the linear map.

    The network reads register `input` at time `t_net` and returns n_raw outputs
    (the cond / uncond halves when guided). The new registers are
    coef @ [registers..., raw_0, ..., raw_{n_raw-1}], with structural non-zeros in
    `sources`. When the model scales its input (EDM's c_in), the last new register
    is the next call's network input, already scaled.
    """
    input: int
    t_net: torch.Tensor
    registers: tuple[str, ...]
    new_registers: tuple[str, ...]
    sources: tuple[tuple[int, ...], ...]
    coef: torch.Tensor


@dataclass
class FoldedPlan(_Calls):
    """A Plan with den.affine folded in: what the fused kernels and the exported graph run.

    Initial registers: register r holds init_scale[r] * z (the prior scale, and c_in of
    the first call for the network-input register). After the last call register 0 is
    the sample.
    """
    steps: tuple[FoldedStep, ...]
    n_raw: int
    init_registers: tuple[str, ...]
    init_scale: torch.Tensor


NET_IN = "net_in"


def fold(plan: Plan, den, guided: bool = False) -> FoldedPlan:
    """Fold the denoiser's (c_in, a, b) at every t_eval into the plan's linear maps (float64)."""
    affines = [den.affine(plan.t_eval[i], guided) for i in range(plan.nfe)]
    t_net = den.time_net(plan.t_eval)
    scaled = [a.c_in is not None for a in affines]
    n_raw = len(affines[0].b)
    zero = torch.zeros((), dtype=DTYPE)
    prior = torch.tensor(float(den.noise.prior_scale), dtype=DTYPE)
    init_regs = ("x", NET_IN) if scaled[0] else ("x",)
    init_scale = torch.stack([prior, affines[0].c_in * prior]) if scaled[0] else prior[None]
    steps, regs = [], init_regs
    for i, step in enumerate(plan.steps):
        aff = affines[i]
        r_old = len(step.registers)
        cols = list(regs)  # may carry NET_IN after the plan's own registers
        # D = a * x_in + sum_k b_k raw_k, with x_in the (unscaled) plan register step.input.
        rows, sources = [], []
        for k in range(len(step.new_registers)):
            m = step.coef[k]
            row = [m[c] for c in range(r_old)] + [zero] * (len(cols) - r_old)
            src = set(step.sources[k]) - {r_old}
            if r_old in step.sources[k]:
                if aff.a is not None:
                    row[step.input] = row[step.input] + m[r_old] * aff.a
                    src.add(step.input)
                row += [m[r_old] * b for b in aff.b]
                src |= {len(cols) + j for j in range(n_raw)}
            else:
                row += [zero] * n_raw
            rows.append(torch.stack(row))
            sources.append(tuple(sorted(src)))
        new_regs = step.new_registers
        if i + 1 < plan.nfe and scaled[i + 1]:
            nxt = plan.steps[i + 1].input
            rows.append(affines[i + 1].c_in * rows[nxt])
            sources.append(sources[nxt])
            new_regs = new_regs + (NET_IN,)
        net_input = cols.index(NET_IN) if scaled[i] else step.input
        steps.append(FoldedStep(net_input, t_net[i], tuple(cols), new_regs, tuple(sources), torch.stack(rows)))
        regs = new_regs
    return FoldedPlan(tuple(steps), n_raw, init_regs, init_scale)


def run_folded(folded: FoldedPlan, den, z: torch.Tensor, cond=None) -> torch.Tensor:
    """A plain torch executor of a FoldedPlan (the twin of the fused kernels and the export)."""
    coefs = [s.coef.to(z.device, z.dtype) for s in folded.steps]
    scale = folded.init_scale.to(z.device, z.dtype)
    regs = [scale[r] * z for r in range(len(folded.init_registers))]
    for step, coef in zip(folded.steps, coefs):
        raw = den.net_call(regs[step.input], step.t_net, cond)
        src = regs + list(raw)
        regs = [combine(src, sources, coef[k]) for k, sources in enumerate(step.sources)]
    return regs[0]


def combine(src: list[torch.Tensor], sources: tuple[int, ...], row: torch.Tensor) -> torch.Tensor:
    """sum_j row[j] * src[j] over the structural non-zeros `sources` (one multiply, then fused multiply-adds)."""
    out = row[sources[0]] * src[sources[0]]
    for j in sources[1:]:
        out = torch.addcmul(out, row[j], src[j])
    return out
