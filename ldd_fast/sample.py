"""The eager executor: the reference every fast path is compared with, autograd-capable."""
from __future__ import annotations

import warnings

import torch
import torch.utils.checkpoint

from . import solvers
from .denoiser import Denoiser, _all_finite, check_state
from .errors import (ConditionError, ForcedSchedule, IncompatibleSchedule, InvalidArgument, InvalidArgumentType,
                     NonFiniteSample, ScheduleError, boolean)
from .plan import Plan, combine
from .schedule import Schedule


def plan_for(den: Denoiser, schedule: Schedule, *, solver: str | None = None, order: int | None = None,
             force: bool = False, final: str | None = None, lower_order_final: bool | None = None,
             variant: str | None = None) -> Plan:
    """Check that `schedule` fits this model and solver, and compile it into a Plan."""
    # Types first: "no" for lower_order_final would compare unequal to the schedule's and pass with force.
    solvers.check_option_types(final=final, lower_order_final=lower_order_final, variant=variant)
    boolean(force, "force")
    if not isinstance(den, Denoiser):
        raise InvalidArgumentType("expected an ldd_fast Denoiser (wrap your network with lf.Denoiser), got "
                                  f"{type(den).__name__}")
    if not isinstance(schedule, Schedule):
        raise InvalidArgumentType(f"expected an lf.Schedule (from lf.discretize, lf.learn or lf.Schedule.load), "
                                  f"got {type(schedule).__name__}")
    solver = schedule.solver if solver is None else solver
    if solver is None:
        raise InvalidArgument("this schedule was not made for one solver: pass solver=... "
                              f"(one of {', '.join(solvers.SOLVERS)})")
    spec = solvers.get_solver(solver)
    if final is not None and final != schedule.final:
        raise InvalidArgument(f"final={final!r} differs from the schedule's final={schedule.final!r}: the final time "
                              f"is part of the schedule (lf.discretize(..., final=...))")
    if not solvers.layout_matches(solver, schedule.t.numel(), schedule.nfe):
        raise InvalidArgument(f"a schedule of {schedule.t.numel()} times and {schedule.nfe} calls ({schedule.layout} "
                              f"layout) cannot run solver {solver!r} ({spec.layout} layout); make one with "
                              f"lf.discretize(noise, nfe, kind, solver={solver!r})")
    mismatch = []
    if schedule.solver is not None and schedule.solver != solver:
        mismatch.append(f"solver {schedule.solver!r} (asked: {solver!r})")
    same_solver = schedule.solver == solver
    if same_solver and schedule.order is not None:
        if order is None:
            order = schedule.order
        elif order != schedule.order:
            mismatch.append(f"order {schedule.order} (asked: {order})")
    if same_solver and schedule.variant is not None:
        if variant is None:
            variant = schedule.variant
        elif variant != schedule.variant:
            mismatch.append(f"variant {schedule.variant!r} (asked: {variant!r})")
    if same_solver and schedule.lower_order_final is not None:
        if lower_order_final is None:
            lower_order_final = schedule.lower_order_final
        elif lower_order_final != schedule.lower_order_final:
            mismatch.append(f"lower_order_final={schedule.lower_order_final} (asked: {lower_order_final})")
    if schedule.noise != den.noise:
        mismatch.append(f"noise schedule {schedule.noise!r} (model: {den.noise!r})")
    if schedule.fingerprint is not None and schedule.fingerprint != den.fingerprint():
        mismatch.append(f"another model (fingerprint {schedule.fingerprint[:12]}..., this model "
                        f"{den.fingerprint()[:12]}...)")
    if schedule.guidance_scale is not None and schedule.guidance_scale != den.guidance_scale:
        mismatch.append(f"guidance scale {schedule.guidance_scale} (model: {den.guidance_scale})")
    if schedule.coefficients is not None:
        # Learned coefficients correct one solver's weights: no force runs them on another solver.
        asked = {"solver": solver, "order": order, "variant": variant, "lower_order_final": lower_order_final}
        made_spec = solvers.get_solver(schedule.solver)  # options left unset were validated at their defaults
        _, made = solvers.resolve_options(schedule.solver, schedule.order, schedule.nfe, {
            k: getattr(schedule, k) for k in ("variant", "lower_order_final") if k in made_spec.options})
        made.update(solver=schedule.solver, order=schedule.order)
        wrong = [f"{k} {made[k]!r} (asked: {asked[k]!r})" for k in made
                 if made[k] is not None and asked[k] is not None and asked[k] != made[k]]
        if wrong:
            raise IncompatibleSchedule("this schedule holds solver coefficients learned for " + "; ".join(wrong)
                                       + ": they cannot run on another solver, even with force")
    if mismatch and not force:
        raise IncompatibleSchedule("the schedule was made for " + "; ".join(mismatch)
                                   + ". Pass force=True to use it anyway.")
    if mismatch:
        warnings.warn("force=True: running a schedule made for " + "; ".join(mismatch), ForcedSchedule, stacklevel=3)
    if force and schedule.noise != den.noise:
        # force takes the model's noise schedule; the times must still lie in its range.
        try:
            schedule = schedule.replace(noise=den.noise)
        except ScheduleError as e:
            raise IncompatibleSchedule(f"even with force=True the schedule cannot run on this model's noise "
                                       f"schedule {den.noise!r}: {e}") from None
    return solvers.make_plan(schedule.noise, schedule.t, schedule.t_eval, solver=solver,
                             order=order, final=schedule.final, lower_order_final=lower_order_final,
                             variant=variant, coefficients=schedule.coefficients,
                             coefficient_form=schedule.coefficient_form)


def check_noise(z, cond=None, den: Denoiser | None = None, *, values: bool = True) -> None:
    """z is a batch of floating-point noise and cond fits the model (one entry per sample, labels in
    range); values=False skips what would read the data of an accelerator tensor (a host sync)."""
    check_state(z)
    if den is not None:
        den.check_cond(cond, z.shape[0], values=values)
    elif cond is not None and (not isinstance(cond, torch.Tensor) or cond.dim() == 0 or cond.shape[0] != z.shape[0]):
        shape = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
        raise ConditionError(f"cond must be a tensor with one entry per sample ({z.shape[0]}), got {shape}")


def check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    """x, or a NonFiniteSample error saying where NaN / inf appeared (reads x: a host sync on a GPU)."""
    if not _all_finite(x):
        bad = int((~torch.isfinite(x.detach())).flatten(1).any(1).sum())
        raise NonFiniteSample(f"{what} holds NaN or inf in {bad} of {x.shape[0]} samples")
    return x


def call_tables(den: Denoiser, plan: Plan, guided: bool):
    """Per network call, in float64: the network time and the (c_in, a, b) of den.affine."""
    return den.time_net(plan.t_eval), [den.affine(plan.t_eval[i], guided) for i in range(plan.nfe)]


def run_plan(plan: Plan, den: Denoiser, z: torch.Tensor, cond=None, *, checkpoint: bool = False,
             trace: list | None = None) -> torch.Tensor:
    """Execute a Plan with torch ops: x = prior_scale * z, then per call D and the linear map.

    checkpoint: recompute each network call in the backward pass instead of keeping its
    activations (torch.utils.checkpoint), so backpropagation through nfe calls of a large
    model needs the memory of about one call.
    trace: a list that receives (network input register, D) of every call, in call order (the
    trajectory of a fine solver, as GITS needs: ldd_fast.baselines).
    dtypes: as lf.sample (the solver in z's dtype, float32 or float64; the network in its own).
    """
    if not isinstance(plan, Plan):
        raise InvalidArgumentType(f"plan must be an lf.Plan (lf.plan_for), got {type(plan).__name__}")
    if not isinstance(den, Denoiser):
        raise InvalidArgumentType(f"expected an ldd_fast Denoiser, got {type(den).__name__}")
    check_noise(z, cond, den)
    check_solver_dtype(z)
    boolean(checkpoint, "checkpoint")
    if trace is not None and not isinstance(trace, list):
        raise InvalidArgumentType(f"trace must be a list or None, got {type(trace).__name__}")
    x = z * den.noise.prior_scale
    t_net, affines = call_tables(den, plan, den.guided(cond))
    dtype, device = x.dtype, x.device
    # The single cast of plan coefficients (float64) to the working dtype.
    coefs = plan.cast(dtype, device)
    affines = [a.to(device, dtype) for a in affines]
    t_net = t_net.to(device)  # once; net_call casts on the device
    regs = [x]
    for i, step in enumerate(plan.steps):
        c_in, a, b = affines[i]
        x_in = regs[step.input]
        x_net = x_in if c_in is None else c_in * x_in
        if checkpoint and torch.is_grad_enabled():
            raw = torch.utils.checkpoint.checkpoint(den.net_call, x_net, t_net[i], cond, use_reentrant=False)
        else:
            raw = den.net_call(x_net, t_net[i], cond)
        d = None if a is None else a * x_in
        for r, w in zip(raw, b):
            d = w * r if d is None else torch.addcmul(d, w, r)
        if trace is not None:
            trace.append((x_in, d))
        src = regs + [d]
        rows = coefs[i]
        # A register that is a plain copy (m1 = D, x unchanged) aliases its source.
        regs = [src[sources[0]] if ident else combine(src, sources, rows[k])
                for k, (sources, ident) in enumerate(zip(step.sources, step.identity))]
    return regs[0]


def sample(den: Denoiser, z: torch.Tensor, schedule: Schedule, *, solver: str | None = None,
           order: int | None = None, cond=None, force: bool = False, **options) -> torch.Tensor:
    """Run a deterministic ODE solver on `schedule` from unit-normal noise z; returns the x0 sample.

    z is multiplied by the noise schedule's prior scale (sigma_max for EDM, 1 for VP).
    The solver runs in z's dtype, float32 or float64 (plan coefficients are cast once), and supports
    autograd; a float16 / bfloat16 z is refused (use lf.Sampler(..., dtype=...) for half precision). The
    network runs in its own dtype: its input is cast to the dtype of its parameters and its output back
    to z's (one cast each per call, the same boundary as the exported graph's).
    options: lower_order_final, variant, final (must match the schedule's).
    Raises NonFiniteSample when z or the sample holds NaN / inf, and ConditionError when cond does
    not fit the model (lf.Sampler checks these only with check_finite=True: the checks read the data).
    """
    plan = plan_for(den, schedule, solver=solver, order=order, force=force, **sampler_options(options))
    check_state(z)
    check_solver_dtype(z)
    check_finite(z, "the noise z")
    return check_finite(run_plan(plan, den, z, cond), f"the sample ({plan.solver}{plan.order}, nfe {plan.nfe})")


SAMPLER_OPTIONS = ("final", "lower_order_final", "variant")


def sampler_options(options: dict) -> dict:
    """The **options of lf.sample, lf.Sampler and the exporters: only the solver options, of the right types."""
    unknown = set(options) - set(SAMPLER_OPTIONS)
    if unknown:
        raise InvalidArgumentType(f"unknown sampler option(s) {sorted(unknown)}; known: {', '.join(SAMPLER_OPTIONS)}")
    solvers.check_option_types(**options)
    return options


def check_solver_dtype(z: torch.Tensor) -> None:
    """lf.sample and run_plan compute the solver in z's dtype: float32 or float64. In float16 / bfloat16 the
    coefficients and every register would keep 2 to 3 significant digits at each step, which is not a
    reference; the network itself runs in its own dtype whatever z's (Denoiser.net_call)."""
    if z.dtype not in (torch.float32, torch.float64):
        raise InvalidArgumentType(
            f"z has dtype {z.dtype}: lf.sample (and run_plan) run the solver in z's dtype and take float32 or float64 "
            f"noise. Pass z.float() (a half-precision network still runs in its own dtype), or sample in half "
            f"precision with lf.Sampler(den, schedule, dtype={z.dtype}) and the network cast to {z.dtype}")
