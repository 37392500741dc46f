"""The Schedule artifact (solver times t, network times t_eval, metadata) and hand-made discretisations."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch

from . import solvers
from .io import atomic_write_text
from .noise import DTYPE, NoiseSchedule, from_description

FORMAT_VERSION = 1
KINDS = ("time_uniform", "time_quadratic", "logsnr", "edm")
_RANGE_RTOL = 1e-9


class ScheduleError(ValueError):
    """A schedule (or schedule file) is malformed; the message names the field."""


def _as_times(name: str, v) -> torch.Tensor:
    try:
        t = torch.as_tensor(v, dtype=DTYPE).detach().clone().cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ScheduleError(f"field {name!r}: not a list of numbers ({e})") from None
    if t.dim() != 1 or t.numel() == 0:
        raise ScheduleError(f"field {name!r}: expected a non-empty 1-D list of times, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ScheduleError(f"field {name!r}: contains NaN or inf at index {int((~torch.isfinite(t)).nonzero()[0])}")
    return t


def _in_range(t: torch.Tensor, noise: NoiseSchedule) -> torch.Tensor:
    lo, hi = noise.t_min * (1 - _RANGE_RTOL), noise.t_max * (1 + _RANGE_RTOL)
    return (t >= lo) & (t <= hi)


@dataclass
class Schedule:
    """Where a sampler steps (t) and the times its network sees (t_eval).

    t: strictly decreasing solver times from t_max to t_min (multistep: nfe + 1 of them;
       heun: (nfe + 1) / 2 + 1). With final="zero" the last entry is 0: the last step
       lands on sigma = 0 (k-diffusion / diffusers' default) without an extra call.
    t_eval: the nfe network times, in call order.
    solver / order / variant / lower_order_final: set when the schedule was made for one
       solver (learned schedules); None for hand-made ones, which fit any solver of their layout.
    fingerprint: the model's fingerprint for learned schedules (None: any model).
    """
    t: torch.Tensor
    t_eval: torch.Tensor
    noise: NoiseSchedule
    final: str = "t_min"
    solver: str | None = None
    order: int | None = None
    variant: str | None = None
    lower_order_final: bool | None = None
    guidance_scale: float | None = None
    fingerprint: str | None = None
    origin: str = ""
    metrics: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.noise, NoiseSchedule):
            raise ScheduleError(f"field 'noise': expected a NoiseSchedule, got {type(self.noise).__name__}")
        self.t = _as_times("t", self.t)
        self.t_eval = _as_times("t_eval", self.t_eval)
        t, te = self.t, self.t_eval
        if self.final not in solvers.FINALS:
            raise ScheduleError(f"field 'final': must be one of {solvers.FINALS}, got {self.final!r}")
        if t.numel() < 2:
            raise ScheduleError("field 't': needs at least 2 times")
        if not (t[1:] < t[:-1]).all():
            i = int((t[1:] >= t[:-1]).nonzero()[0])
            raise ScheduleError(f"field 't': times must be strictly decreasing, but t[{i}]={t[i].item()} "
                                f"<= t[{i + 1}]={t[i + 1].item()}")
        body = t
        if self.final == "zero":
            if t[-1] != 0:
                raise ScheduleError(f"field 't': with final='zero' the last time must be 0, got {t[-1].item()}")
            body = t[:-1]
        for name, v in (("t", body), ("t_eval", te)):
            ok = _in_range(v, self.noise)
            if not ok.all():
                i = int((~ok).nonzero()[0])
                raise ScheduleError(f"field {name!r}: {name}[{i}]={v[i].item()} is outside the noise schedule's "
                                    f"range [{self.noise.t_min}, {self.noise.t_max}]")
        if self.solver is not None:
            spec = solvers.get_solver(self.solver)
            if self.order is not None:
                solvers.resolve_order(spec, self.order)
            if self.variant is not None:
                solvers.resolve_variant(spec, self.variant)
            if not solvers.layout_matches(self.solver, t.numel(), te.numel()):
                raise ScheduleError(f"fields 't'/'t_eval': {t.numel()} times and {te.numel()} eval times do not "
                                    f"fit solver {self.solver!r}")
        elif not (solvers.layout_matches("euler", t.numel(), te.numel())
                  or solvers.layout_matches("heun", t.numel(), te.numel())):
            raise ScheduleError(f"fields 't'/'t_eval': {t.numel()} times do not fit {te.numel()} network calls "
                                f"(multistep: nfe + 1 times; heun: (nfe + 1) / 2 + 1 times)")

    @property
    def nfe(self) -> int:
        return self.t_eval.numel()

    @property
    def layout(self) -> str:
        if self.solver is not None:
            return solvers.get_solver(self.solver).layout
        return "multistep" if self.t.numel() == self.nfe + 1 else "heun"

    # ----- JSON -----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "nfe": self.nfe,
            "t": [float(v) for v in self.t],
            "t_eval": [float(v) for v in self.t_eval],
            "noise": self.noise.describe(),
            "final": self.final,
            "solver": self.solver,
            "order": self.order,
            "variant": self.variant,
            "lower_order_final": self.lower_order_final,
            "guidance_scale": self.guidance_scale,
            "fingerprint": self.fingerprint,
            "origin": self.origin,
            "metrics": self.metrics,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        if not isinstance(d, dict):
            raise ScheduleError(f"a schedule is a JSON object, got {type(d).__name__}")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ScheduleError(f"field 'format_version': this ldd-fast reads version {FORMAT_VERSION}, got {version!r}")
        for key in ("t", "t_eval", "noise"):
            if key not in d:
                raise ScheduleError(f"field {key!r}: missing")
        try:
            noise = from_description(d["noise"])
        except (ValueError, TypeError, KeyError) as e:
            raise ScheduleError(f"field 'noise': {e}") from None
        sched = cls(t=d["t"], t_eval=d["t_eval"], noise=noise, final=d.get("final", "t_min"),
                    solver=d.get("solver"), order=d.get("order"), variant=d.get("variant"),
                    lower_order_final=d.get("lower_order_final"), guidance_scale=d.get("guidance_scale"),
                    fingerprint=d.get("fingerprint"), origin=d.get("origin", ""),
                    metrics=dict(d.get("metrics") or {}), info=dict(d.get("info") or {}))
        if "nfe" in d and d["nfe"] != sched.nfe:
            raise ScheduleError(f"field 'nfe': says {d['nfe']} but t_eval has {sched.nfe} entries")
        return sched

    def save(self, path) -> None:
        """Write JSON atomically (temp file in the same folder, then rename)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path) -> "Schedule":
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"schedule file not found: {path}")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ScheduleError(f"schedule file {path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(d)
        except ScheduleError as e:
            raise ScheduleError(f"schedule file {path}: {e}") from None

    def __repr__(self):
        made = f", solver={self.solver}" if self.solver else ""
        return (f"Schedule(nfe={self.nfe}, {self.layout}, final={self.final}{made}, origin={self.origin!r}, "
                f"t=[{', '.join(f'{float(v):.4g}' for v in self.t)}])")


def discretize(noise: NoiseSchedule, nfe: int, kind: str = "logsnr", *, solver: str | None = None,
               rho: float = 7.0, final: str = "t_min") -> Schedule:
    """A hand-made schedule between t_max and t_min that spends exactly nfe network calls.

    kind: "time_uniform" (linear in t), "time_quadratic" (linear in sqrt t, as DPM-Solver),
    "logsnr" (linear in lambda), "edm" (Karras et al. 2022 eq. 5: linear in sigma^(1/rho)
    with sigma = sigma(t) / alpha(t) = exp(-lambda), mapped back to t).
    solver: decides how many times nfe needs (heun: nfe = 2K - 1 for K steps); default multistep.
    final: "t_min" ends at t_min; "zero" spreads the call times over [t_min, t_max] and lands
    the last step on sigma = 0 (k-diffusion / diffusers' convention).
    """
    if not isinstance(noise, NoiseSchedule):
        raise TypeError(f"noise must be a NoiseSchedule, got {type(noise).__name__}")
    if kind not in KINDS:
        raise ValueError(f"unknown discretisation kind {kind!r}; expected one of {KINDS}")
    if final not in solvers.FINALS:
        raise ValueError(f"final must be one of {solvers.FINALS}, got {final!r}")
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a positive number, got {rho!r}")
    layout_solver = solver or "euler"
    n = solvers.steps_for_nfe(layout_solver, nfe)
    m = n + 1 if final == "t_min" else n
    t_hi, t_lo = torch.tensor(noise.t_max, dtype=DTYPE), torch.tensor(noise.t_min, dtype=DTYPE)
    u = torch.linspace(0.0, 1.0, m, dtype=DTYPE) if m > 1 else torch.zeros(1, dtype=DTYPE)
    if kind == "time_uniform":
        t = t_hi + u * (t_lo - t_hi)
    elif kind == "time_quadratic":
        t = (t_hi.sqrt() + u * (t_lo.sqrt() - t_hi.sqrt())) ** 2
    elif kind == "logsnr":
        l_hi, l_lo = noise.lam(t_hi), noise.lam(t_lo)
        t = noise.t_of_lambda(l_hi + u * (l_lo - l_hi))
    else:
        s_hi, s_lo = noise.sigma_ve(t_hi) ** (1 / rho), noise.sigma_ve(t_lo) ** (1 / rho)
        t = noise.t_of_lambda(-rho * torch.log(s_hi + u * (s_lo - s_hi)))
    t[0] = t_hi  # exact ends: round trips through lambda must not step outside the range
    if m > 1:
        t[-1] = t_lo
    if final == "zero":
        t = torch.cat([t, torch.zeros(1, dtype=DTYPE)])
    info = {"kind": kind, **({"rho": float(rho)} if kind == "edm" else {})}
    return Schedule(t=t, t_eval=solvers.default_t_eval(layout_solver, t), noise=noise, final=final,
                    origin=f"discretize:{kind}", info=info)
