"""Our schedules and solvers in k-diffusion's calling convention (k-diffusion, ComfyUI's KSAMPLER, A1111 / Forge).

k-diffusion (Crowson) works in the variance-exploding frame of Karras et al. (2022): the state is
x = x0 + sigma eps, a model is the denoiser `model(x, sigma * s_in, **extra_args) -> x0 estimate` with
s_in = x.new_ones([batch]), and a sampler is `sample_*(model, x, sigmas, extra_args=None, callback=None,
disable=None)` started from x = noise * sigmas[0] over descending sigmas that end in 0 (`append_zero`).

A Schedule lives on its noise schedule's axis, x_t = alpha x0 + sigma eps; k-diffusion's sigma and state
are its VE view sigma / alpha and x_t / alpha (Karras et al. 2022, sec. 4). `k_sampler` runs the
schedule's own Plan (the very one lf.sample runs) and converts at the edges: the start x_t = alpha x,
the end x = x_t / alpha (nothing at sigma = 0), and every call feeds the model x_t / alpha(t_eval) at
sigma(t_eval) / alpha(t_eval), which a VE model turns back into the network input x_t (its c_in is
alpha). Converting the whole plan to the VE axis instead would be the same sampler only where t_eval
equals the solver times: a learned network time sees the state of another solver time, and its
scale alpha(t) / alpha(t_eval) is not a function of t_eval alone.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch

from . import solvers
from .denoiser import Affine, Denoiser, check_state
from .errors import (ForcedSchedule, IncompatibleSchedule, InvalidArgument, InvalidArgumentType, boolean,
                     callable_or_none, dtype_of, optional_boolean)
from .noise import DTYPE, RectifiedFlow, as_time
from .plan import Plan
from .sample import plan_for, run_plan, sampler_options
from .schedule import Schedule

__all__ = ["to_sigmas", "k_sampler", "KDiffusionSampler"]

# The caller's sigmas may be float32 copies of ours (6e-8 relative); anything further apart is another grid.
SIGMA_RTOL = 1e-6


def _check_schedule(schedule) -> Schedule:
    if not isinstance(schedule, Schedule):
        raise InvalidArgumentType(f"expected an lf.Schedule (from lf.discretize, lf.learn or lf.Schedule.load), got "
                                  f"{type(schedule).__name__}")
    if isinstance(schedule.noise, RectifiedFlow):
        raise InvalidArgument(
            "a rectified-flow schedule has no k-diffusion sigmas: k-diffusion's sigma is sigma / alpha = t / (1 - t) "
            "(x = x0 + sigma eps), infinite at the flows' pure-noise start t = 1, and ComfyUI samples flow models "
            "(SD3, Flux) in another convention (sigma = t, x = (1 - t) x0 + t eps), in which a VE sigma would be "
            "the wrong time; use lf.sample or lf.to_diffusers_scheduler for flows")
    return schedule


def _ve_times(schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma / alpha (float64) at the solver times (0 at a final time of 0) and at the network times."""
    noise, t = schedule.noise, schedule.t
    body = t[:-1] if schedule.final == "zero" else t
    sig = noise.sigma(body) / noise.alpha(body)  # lf.Denoiser's time_input="sigma"; exactly t for EDM
    if schedule.final == "zero":
        sig = torch.cat([sig, torch.zeros(1, dtype=DTYPE)])
    t_eval = schedule.t_eval
    return sig, noise.sigma(t_eval) / noise.alpha(t_eval)


def to_sigmas(schedule: Schedule, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """k-diffusion's `sigmas` for a Schedule: sigma(t) / alpha(t) at its solver times, descending.

    The last entry is 0 only where the schedule lands on 0 (final="zero", as k-diffusion's get_sigmas_*
    and append_zero): then k-diffusion's samplers take their last step to sigma = 0 and return the
    denoised sample, as ours do. A schedule with final="t_min" (every learned one) ends at
    sigma(t_min) / alpha(t_min) > 0 with no 0 appended: a k-diffusion sampler steps to it and returns the
    state there, x0 + sigma_min eps (sample_euler is then our Euler, sample_dpmpp_2m our dpmpp 2 with
    lower_order_final=False, and sample_heun takes its second stage on that last step too, a network call
    our Heun does not make). A trailing 0 would add a step and a network call the schedule does not hold.
    The network times t_eval are not in `sigmas` (k-diffusion evaluates at sigmas[i]); `lf.k_sampler` runs
    them. dtype: float32 (k-diffusion's and ComfyUI's) or float64. For the "edm" discretisation with
    final="zero" these are k-diffusion's get_sigmas_karras(n, sigma_min, sigma_max) for its n steps (to the
    float32 rounding of its ramp).
    Rectified-flow schedules are refused: their start t = 1 has sigma = inf.
    """
    schedule = _check_schedule(schedule)
    dtype_of(dtype, "dtype", (torch.float32, torch.float64))
    return _ve_times(schedule)[0].to(dtype)


class _ModelDenoiser(Denoiser):
    """A k-diffusion model as our Denoiser: D(x_t, t) = model(x_t / alpha(t), sigma(t) / alpha(t)), so prediction
    "x0", time input "sigma", and c_in = 1 / alpha at the network time."""

    def affine(self, t, guided: bool = False) -> Affine:
        return super().affine(t, guided)._replace(c_in=1.0 / self.noise.alpha(as_time(t)))


def _no_model(x, sigma):
    raise InvalidArgument("the plan's Denoiser has no model: a KDiffusionSampler calls the one it is given")


class _Calls(list):
    """run_plan's trace hook as k-diffusion's live callback; nothing is kept."""

    def __init__(self, on_call):
        super().__init__()
        self.on_call, self.calls = on_call, 0

    def append(self, item):
        self.on_call(self.calls, *item)
        self.calls += 1


class KDiffusionSampler:
    """A Plan behind k-diffusion's sampler signature; made by `lf.k_sampler` (see there)."""

    def __init__(self, schedule: Schedule, plan: Plan, force: bool):
        self.schedule, self.plan, self.force = schedule, plan, force
        noise, t = schedule.noise, schedule.t
        # float64: the sigmas the caller must pass (to_sigmas) and the sigma each network call is fed.
        self.sigmas, self.sigma_eval = _ve_times(schedule)
        self._alpha_start = float(noise.alpha(t[0]))
        self._alpha_end = 1.0 if schedule.final == "zero" else float(noise.alpha(t[-1]))
        # alpha at the solver time of each call's input register (Heun's stage call reads the next step's
        # state), for the callback's VE state; the steps start at the calls that read the state "x".
        self._alpha_reg = noise.alpha(solvers.default_t_eval(plan.solver, t))
        self._starts = {j: i for i, j in enumerate(j for j, s in enumerate(plan.steps) if s.registers[s.input] == "x")}

    def __repr__(self):
        return (f"KDiffusionSampler({self.plan.solver}{self.plan.order}, nfe={self.plan.nfe}, "
                f"steps={len(self.sigmas) - 1}, final={self.schedule.final})")

    def check_sigmas(self, sigmas) -> str | None:
        """None when `sigmas` are this sampler's (within SIGMA_RTOL relative), else what differs."""
        if isinstance(sigmas, torch.Tensor):
            got = sigmas.detach().to("cpu", DTYPE) if sigmas.dim() == 1 else None
        else:
            try:
                got = torch.tensor(list(sigmas), dtype=DTYPE)
            except (TypeError, ValueError, RuntimeError):
                got = None
        if got is None or got.dim() != 1:
            shape = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
            raise InvalidArgumentType(f"sigmas must be a 1-D tensor (or list) of noise levels, got {shape}")
        if got.numel() != self.sigmas.numel():
            return f"{got.numel()} sigmas were given, the schedule has {self.sigmas.numel()}"
        diff = (got - self.sigmas).abs()
        off = ~(diff <= SIGMA_RTOL * self.sigmas)  # NaN is off too
        if not off.any():
            return None
        i = int(off.nonzero()[0])
        return (f"sigmas[{i}] = {float(got[i]):.9g} where the schedule has {float(self.sigmas[i]):.9g} (largest "
                f"relative difference {float((diff / self.sigmas.clamp_min(1e-300)).max()):.3g}; {int(off.sum())} "
                f"of {got.numel()} differ by more than {SIGMA_RTOL:g})")

    def __call__(self, model: Callable, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback: Callable | None = None, disable: bool | None = None) -> torch.Tensor:
        """k-diffusion's sampler call; returns the state at sigmas[-1] (the denoised sample where that is 0)."""
        if not callable(model):
            raise InvalidArgumentType(f"model must be a k-diffusion denoiser model(x, sigma, **extra_args) -> "
                                      f"denoised, got {type(model).__name__}")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            what = f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
            raise InvalidArgumentType(f"x must be a floating-point tensor (noise * sigmas[0]), got {what}")
        check_state(x)
        if extra_args is not None and not isinstance(extra_args, dict):
            raise InvalidArgumentType(f"extra_args must be a dict of the model's keyword arguments or None, got "
                                      f"{type(extra_args).__name__}")
        callable_or_none(callback, "callback")
        optional_boolean(disable, "disable")  # k-diffusion's progress-bar switch: there is no bar here
        problem = self.check_sigmas(sigmas)
        if problem is not None:
            if not self.force:
                raise IncompatibleSchedule(f"this sampler runs the times of its schedule (lf.to_sigmas(schedule)): "
                                           f"{problem}. Pass lf.to_sigmas(schedule), or build it with "
                                           f"lf.k_sampler(..., force=True) to run the schedule's times anyway")
            warnings.warn(f"force=True: running the schedule's own times; {problem}", ForcedSchedule, stacklevel=2)
        kwargs = {} if extra_args is None else extra_args

        def net(x_in, sigma):
            return model(x_in, sigma, **kwargs)

        den = _ModelDenoiser(net, self.schedule.noise, prediction="x0", time_input="sigma")
        # lf.run_plan's rule: the solver runs in float32 or float64; a half-precision x is carried in float32.
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        trace = None
        if callback is not None:
            sig, sig_eval = self.sigmas.to(x.device, dtype), self.sigma_eval.to(x.device, dtype)
            inv_alpha = (1.0 / self._alpha_reg).to(x.device, dtype)

            def on_call(j, x_in, denoised):
                if j in self._starts:
                    i = self._starts[j]
                    callback({"x": x_in * inv_alpha[j], "i": i, "sigma": sig[i], "sigma_hat": sig_eval[j],
                              "denoised": denoised})
            trace = _Calls(on_call)
        with torch.no_grad():  # as k-diffusion's samplers; gradients: lf.sample
            # run_plan starts from prior_scale * z, here the state x_t = alpha(t_0) x.
            z = x.to(dtype) * (self._alpha_start / self.schedule.noise.prior_scale)
            out = run_plan(self.plan, den, z, trace=trace)
        return (out if self._alpha_end == 1.0 else out / self._alpha_end).to(x.dtype)


def k_sampler(schedule: Schedule, *, solver: str | None = None, order: int | None = None, force: bool = False,
              **options) -> KDiffusionSampler:
    """A k-diffusion sampler function that runs our solver on `schedule`, learned times and coefficients included.

    The result is called as k-diffusion's `sample_*(model, x, sigmas, extra_args=None, callback=None,
    disable=None)`, so it drops in where they do (ComfyUI: `comfy.samplers.KSAMPLER(lf.k_sampler(s))`):
      - model: k-diffusion's denoiser `model(x, sigma * s_in, **extra_args) -> denoised`, the x0 estimate for
        the VE state x = x0 + sigma eps (k_diffusion.external.DiscreteEpsDDPMDenoiser, CompVisDenoiser,
        ComfyUI's wrapped model), called once per network call of the plan, with extra_args.
      - x: the start, k-diffusion's noise * sigmas[0]. lf.sample's start for a VP schedule is
        x = z * sqrt(1 + sigmas[0]**2) = z / alpha(t_0) (what ComfyUI passes at full denoise).
      - sigmas: must be `lf.to_sigmas(schedule)` (float32 is fine): the times are baked into the plan, and
        other sigmas raise IncompatibleSchedule naming the difference, unless the sampler was built with
        force=True (then the schedule's times run, with a ForcedSchedule warning).
      - callback: once per solver step i = 0 .. len(sigmas) - 2, after the step's first network call, with
        k-diffusion's dict {"x": the state at sigmas[i], "i", "sigma": sigmas[i], "sigma_hat": the sigma the
        model was fed (that of the call's t_eval), "denoised"}.
      - disable: k-diffusion's progress-bar switch, accepted and ignored (the callback carries progress).
    It runs `lf.plan_for(den, schedule, solver=..., order=..., **options)`, the Plan lf.sample runs, in x's
    dtype (float32 / float64; half precision is carried in float32), under torch.no_grad() as k-diffusion's
    samplers, and converts at the edges (module docstring). Each call feeds the model sigma(t_eval) /
    alpha(t_eval), where a learned schedule's t_eval differs from sigmas[i], and the state x_t / alpha(t_eval).
    It returns the state at sigmas[-1]: the denoised sample where that is 0 (final="zero"), else the VE state
    at sigma(t_min), lf.sample's result divided by alpha(t_min).
    The network time is the model wrapper's: k-diffusion's DiscreteEpsDDPMDenoiser (and ComfyUI) map sigma to a
    training index by interpolating log sigma over the training grid, lf.VPDiscrete interpolates log alpha in
    t; the two agree on the grid and differ slightly between its points.
    A schedule's fingerprint and guidance scale cannot be checked against a model we never see: use it with the
    model (and guidance) it was made for. Rectified-flow schedules are refused (see to_sigmas).
    options: lower_order_final, variant, final (as lf.sample).
    """
    schedule = _check_schedule(schedule)
    boolean(force, "force")
    options = sampler_options(options)
    plain = schedule.replace(fingerprint=None, guidance_scale=None)
    den = _ModelDenoiser(_no_model, schedule.noise, prediction="x0", time_input="sigma")
    plan = plan_for(den, plain, solver=solver, order=order, force=force, **options)
    return KDiffusionSampler(plain, plan, force)
