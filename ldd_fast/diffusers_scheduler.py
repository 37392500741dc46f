"""Our Plan as a diffusers scheduler: `lf.to_diffusers_scheduler(schedule, solver=..., order=...)`.

diffusers' schedulers take custom `timesteps=` / `sigmas=` only for some solvers and only
on the integer training grid; this scheduler runs any of our solvers (UniPC, iPNDM, DDIM /
Euler, Heun, DPM-Solver++) on any Schedule, learned t_eval included, at continuous times.

Contract with a pipeline's denoising loop:
  - `set_timesteps(nfe)` (the schedule fixes nfe; another num_inference_steps is an error),
    then `timesteps` holds, per network call, what the pipeline reads as its timestep: the model's
    time input at t_eval for a UNet (for a DDPM-family UNet the continuous index N t_eval - 1,
    float32, never rounded), and 1000 t_eval for a flow (what StableDiffusion3Pipeline feeds its
    transformer and FluxPipeline divides by 1000 before feeding its own).
  - flow pipelines call `set_timesteps(..., sigmas=..., mu=...)` with their own grid (FluxPipeline
    always passes `sigmas`); the scheduler accepts and ignores both: the times are the schedule's,
    which is the point of a learned schedule (it replaces the pipeline's grid and its resolution
    shift). `timesteps=` is an error: there is no way to honour it.
  - the loop's starting noise is `init_noise_sigma * z` (1 for VP, sigma_max for EDM).
  - `scale_model_input(sample, t)` applies EDM's c_in (identity for eps / x0 / v models).
  - `step(model_output, t, sample).prev_sample` is the tensor the next UNet call reads (a plan
    register), and after the last call the sample. `model_output` is the raw UNet output
    (after the pipeline's own classifier-free guidance); the scheduler converts it with the
    configured prediction_type at t_eval, exactly as `lf.sample` does.
  - `sigmas` holds, per call, the noise level of t_eval in the ODE coordinates (a flow's t, a VP /
    EDM model's sigma / alpha: what diffusers' schedulers call sigmas), then the final one; read-only
    information for pipelines that pass it to their cache hooks.
  - the plan's other registers (multistep history, Heun's stage, UniPC's corrector state)
    live in the scheduler instance; `set_timesteps` resets them. One pipeline run at a time.

DDPMPipeline passes `scheduler.timesteps` entries to the UNet unchanged (0-dim float
tensors; UNet2DModel broadcasts them over the batch) and never calls
`scale_model_input` or multiplies by `init_noise_sigma`: with a VP model both are identities,
so it produces what `lf.sample` produces.

The scheduler is a diffusers SchedulerMixin + ConfigMixin whose config holds the Schedule
(times, t_eval, noise description) and the solver options as JSON, so `save_pretrained` /
`from_pretrained` rebuild the identical plan. diffusers is imported on first use only; the
class is `ldd_fast.diffusers_scheduler.LddFastScheduler` (created lazily, importable by name,
which is how a pipeline's `from_pretrained` finds it after `import ldd_fast`).
"""
from __future__ import annotations

import math

import torch

from .denoiser import PREDICTIONS, TIME_INPUTS, Denoiser
from .errors import InvalidArgument, InvalidArgumentType, MissingDependency, Unavailable, positive_number, string
from .plan import combine
from .sample import plan_for
from .noise import RectifiedFlow
from .schedule import Schedule

CLASS_NAME = "LddFastScheduler"
# diffusers' prediction_type spellings for ours (EDM's raw F has none in diffusers).
_TO_DIFFUSERS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction", "edm": "edm", "flow": "flow_prediction"}
_FROM_DIFFUSERS = {v: k for k, v in _TO_DIFFUSERS.items()}

_CLASS = None


def _prediction(p: str) -> str:
    if p in PREDICTIONS:
        return p
    if p in _FROM_DIFFUSERS:
        return _FROM_DIFFUSERS[p]
    raise InvalidArgument(f"unknown prediction_type {p!r}; expected one of {sorted(_FROM_DIFFUSERS)} "
                          f"(or ours: {list(PREDICTIONS)})")


def _no_network(x, t):
    raise RuntimeError("the diffusers scheduler never calls a network: the pipeline does")


def _plan_from_config(config: dict):
    """(plan, den) from a scheduler config: the one place where the config becomes a Plan.

    den is a network-less Denoiser: it supplies the time conversion and den.affine (the
    prediction-type conversion), so those live in one place (denoiser.py) for every executor.
    """
    schedule = Schedule.from_dict(dict(config["schedule"]))
    den = Denoiser(_no_network, schedule.noise, prediction=_prediction(config["prediction_type"]),
                   time_input=config["time_input"], sigma_data=config["sigma_data"])
    # The scheduler never sees the UNet's weights or the pipeline's guidance scale: those checks
    # happen in to_diffusers_scheduler(model=...); here the schedule is checked against the solver.
    plain = schedule.replace(fingerprint=None, guidance_scale=None)
    plan = plan_for(den, plain, solver=config["solver"], order=config["solver_order"], force=config["force"],
                    variant=config["variant"], lower_order_final=config["lower_order_final"])
    return plan, den


def _make_class():
    try:
        from diffusers.configuration_utils import ConfigMixin, register_to_config
        from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
    except ImportError as e:
        raise MissingDependency(f"lf.to_diffusers_scheduler needs diffusers ({e}); install it with "
                                f"pip install 'ldd-fast[diffusers]'") from e

    class LddFastScheduler(SchedulerMixin, ConfigMixin):
        """An ldd_fast Plan (any solver, any Schedule) behind diffusers' scheduler interface."""

        order = 1  # network calls per step(), as pipelines count it (config: solver_order)
        _compatibles = []

        @register_to_config
        def __init__(self, schedule: dict | None = None, solver: str | None = None, solver_order: int | None = None,
                     variant: str | None = None, lower_order_final: bool | None = None,
                     prediction_type: str = "epsilon", time_input: str | None = None, sigma_data: float = 0.5,
                     force: bool = False):
            if schedule is None:
                raise InvalidArgument(f"{CLASS_NAME} needs a schedule; create it with "
                                      "lf.to_diffusers_scheduler(schedule, solver=..., order=...)")
            self.plan, self._den = _plan_from_config({
                "schedule": schedule, "solver": solver, "solver_order": solver_order, "variant": variant,
                "lower_order_final": lower_order_final, "prediction_type": prediction_type,
                "time_input": time_input, "sigma_data": sigma_data, "force": force})
            self.init_noise_sigma = float(self._den.noise.prior_scale)
            self._t_net = self._den.time_net(self.plan.t_eval).to(torch.float32)
            self._affines = [self._den.affine(self.plan.t_eval[i]) for i in range(self.plan.nfe)]
            # diffusers' `sigmas` (some pipelines read sigmas[i] for their cache hooks): the noise level of each
            # call's time in the ODE coordinates (flow: t; VP / EDM: sigma / alpha), then the final one.
            last = self.plan.t[-1:]
            levels = self._den.noise.ode_coordinates(torch.cat([self.plan.t_eval, last.clamp_min(
                self._den.noise.t_min)]))[1]
            if float(last) == 0.0:
                levels[-1] = 0.0
            self._sigmas = levels.to(torch.float32)
            self.set_timesteps()

        @property
        def nfe(self) -> int:
            return self.plan.nfe

        @property
        def step_index(self) -> int | None:
            return self._step_index

        @property
        def begin_index(self) -> int:
            return 0

        def set_begin_index(self, begin_index: int = 0) -> None:
            if begin_index != 0:
                raise InvalidArgument(f"{CLASS_NAME} runs its plan from the first call (its registers start from "
                                      f"noise); it cannot begin at step {begin_index} (img2img strength < 1 is not "
                                      "supported)")

        def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None, sigmas=None,
                          mu: float | None = None, **kwargs) -> None:
            """Reset the plan's registers; the times are the schedule's (nfe calls at t_eval).

            sigmas / mu (a flow pipeline's own grid and resolution shift) are accepted and not used."""
            if timesteps is not None:
                raise InvalidArgument(f"{CLASS_NAME} runs the schedule in its config; for other times build another "
                                      f"scheduler with lf.to_diffusers_scheduler(new_schedule, ...)")
            if sigmas is not None and num_inference_steps is None:
                num_inference_steps = len(sigmas)
            if num_inference_steps is not None and num_inference_steps != self.nfe:
                raise InvalidArgument(f"this scheduler runs a fixed schedule of {self.nfe} network calls; call the "
                                      f"pipeline with num_inference_steps={self.nfe} (got {num_inference_steps})")
            self.num_inference_steps = self.nfe
            self.timesteps = self._t_net.to(device=device)
            self.sigmas = self._sigmas.clone()
            self._step_index = 0
            self._registers = None
            self._tables = None

        def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
            """The network input for the current call: c_in * sample for EDM preconditioning, else sample."""
            i = min(self._step_index, self.nfe - 1)
            c_in = self._affines[i].c_in
            return sample if c_in is None else sample * c_in.to(device=sample.device, dtype=sample.dtype)

        def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
                 return_dict: bool = True, **kwargs):
            """Apply call i's linear map to the registers; returns the next network input (or the sample)."""
            i, plan = self._step_index, self.plan
            if i >= self.nfe:
                raise Unavailable(f"all {self.nfe} calls of the plan are done; call set_timesteps() to start again")
            if i == 0:
                # One host read per run, as diffusers' own schedulers do when they locate the first step.
                t0 = float(timestep) if not isinstance(timestep, torch.Tensor) else float(timestep.reshape(-1)[0])
                if not math.isclose(t0, float(self.timesteps[0]), rel_tol=1e-6, abs_tol=1e-6):
                    raise InvalidArgument(f"the first step() got timestep {t0}, but the plan starts at "
                                          f"{float(self.timesteps[0])}: pass scheduler.timesteps in order (and call "
                                          f"set_timesteps() before each run)")
                # The single cast of the float64 plan to the working dtype, as in lf.run_plan.
                self._tables = (plan.cast(sample.dtype, sample.device),
                                [a.to(sample.device, sample.dtype) for a in self._affines])
                self._registers = [sample]
            coefs, affines = self._tables
            regs = list(self._registers)
            regs[plan.steps[i].input] = sample  # what the pipeline handed back (and the UNet read)
            if model_output.shape[1] == 2 * sample.shape[1] and model_output.shape[2:] == sample.shape[2:]:
                model_output = model_output[:, : sample.shape[1]]  # learned variance: the ODE uses the first half
            raw = model_output.to(sample.dtype)
            # D = a x + b raw at t_eval[i]; then the plan's linear map (same operations as lf.run_plan).
            _, a, b = affines[i]
            x_in = regs[plan.steps[i].input]
            d = None if a is None else a * x_in
            d = b[0] * raw if d is None else torch.addcmul(d, b[0], raw)
            src, rows = regs + [d], coefs[i]
            new = [src[sources[0]] if ident else combine(src, sources, rows[k])
                   for k, (sources, ident) in enumerate(zip(plan.steps[i].sources, plan.steps[i].identity))]
            self._registers = new
            self._step_index = i + 1
            prev = new[0] if i + 1 == self.nfe else new[plan.steps[i + 1].input]
            if not return_dict:
                return (prev,)
            return SchedulerOutput(prev_sample=prev)

        def __len__(self) -> int:
            return self.nfe

    LddFastScheduler.__module__ = __name__
    LddFastScheduler.__qualname__ = CLASS_NAME
    return LddFastScheduler


def scheduler_class():
    """The diffusers scheduler class (created on first use; needs diffusers)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _make_class()
    return _CLASS


def __getattr__(name):
    # PEP 562: `ldd_fast.diffusers_scheduler.LddFastScheduler` resolves lazily, so that a pipeline's
    # from_pretrained (which looks the class up by module path and name) finds it. The loader then
    # decides how to load it by looking up its base classes by name in the same module
    # (diffusers 0.42, pipeline_loading_utils.get_class_obj_and_candidates), hence SchedulerMixin.
    if name == CLASS_NAME:
        return scheduler_class()
    if name == "SchedulerMixin":
        scheduler_class()
        from diffusers.schedulers.scheduling_utils import SchedulerMixin
        return SchedulerMixin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_diffusers_scheduler(schedule: Schedule, *, solver: str | None = None, order: int | None = None,
                           model: Denoiser | None = None, prediction_type: str | None = None,
                           time_input: str | None = None, sigma_data: float | None = None, force: bool = False,
                           variant: str | None = None, lower_order_final: bool | None = None):
    """A diffusers scheduler that runs our Plan for `schedule` with `solver` / `order`.

    Args:
        schedule: an lf.Schedule (hand-made or learned; its t_eval is used as is).
        solver, order, variant, lower_order_final: as for lf.sample (checked against the schedule).
        model: optional lf.Denoiser of the pipeline's UNet (e.g. lf.from_diffusers(unet, scheduler)):
            then every lf.plan_for check applies (a schedule learned for another model raises
            IncompatibleSchedule unless force=True) and prediction_type / time_input / sigma_data
            default to the model's.
        prediction_type: what the UNet predicts: "epsilon" | "sample" | "v_prediction" (or our
            "eps" | "x0" | "v" | "edm"); default: the model's, else "epsilon".
        time_input: what the pipeline reads as its timestep (lf.Denoiser's time_input names); default:
            "t1000" (1000 t) for a flow, else the model's, else as lf.Denoiser: "index" (N t - 1) for a
            DDPM-family (VPDiscrete) schedule.
        sigma_data: EDM's sigma_data (prediction "edm" only).
    """
    if not isinstance(schedule, Schedule):
        raise InvalidArgumentType(f"expected an lf.Schedule, got {type(schedule).__name__}")
    # Every keyword's type before the plan is built or diffusers is imported.
    if prediction_type is not None:
        string(prediction_type, "prediction_type")
    if time_input is not None:
        string(time_input, "time_input", TIME_INPUTS)
    if sigma_data is not None:
        sigma_data = positive_number(sigma_data, "sigma_data")
    if time_input is None and isinstance(schedule.noise, RectifiedFlow):
        time_input = "t1000"  # what the flow pipelines read as their timestep, whatever their network takes
    options = {"variant": variant, "lower_order_final": lower_order_final}
    options = {k: v for k, v in options.items() if v is not None}
    if model is not None:
        if not isinstance(model, Denoiser):
            raise InvalidArgumentType(f"model must be an lf.Denoiser (e.g. lf.from_diffusers(unet, scheduler)), "
                                      f"got {type(model).__name__}")
        plan = plan_for(model, schedule, solver=solver, order=order, force=force, **options)
        if callable(model.time_input):
            raise InvalidArgument("the model's time_input is a callable, which a scheduler config cannot store; pass "
                                  f"time_input= one of {TIME_INPUTS}")
        prediction_type = prediction_type or model.prediction
        time_input = time_input or model.time_input
        sigma_data = model.sigma_data if sigma_data is None else sigma_data
    else:
        plan = plan_for(Denoiser(_no_network, schedule.noise), schedule.replace(fingerprint=None,
                        guidance_scale=None), solver=solver, order=order, force=force, **options)
    pred = _TO_DIFFUSERS[_prediction(prediction_type or "epsilon")]
    return scheduler_class()(
        schedule=schedule.to_dict(), solver=plan.solver, solver_order=plan.order,
        variant=plan.options.get("variant"), lower_order_final=plan.options.get("lower_order_final"),
        prediction_type=pred, time_input=time_input, sigma_data=0.5 if sigma_data is None else float(sigma_data),
        force=bool(force))
