"""The Schedule artifact (solver times t, network times t_eval, metadata) and hand-made discretisations."""
from __future__ import annotations

import copy
import json
import math
import re

import torch

from . import solvers
from .errors import (InvalidArgument, InvalidArgumentType, LddFastError, ScheduleError, finite_number, path_like,
                     string)
from .io import atomic_write_text, read_json
from .noise import DTYPE, NoiseSchedule, RectifiedFlow, from_description

# Written when a schedule holds learned solver coefficients in the generalized form (weights on every earlier
# output: a reader of version 2 would misread them); "exact" / "relaxed" coefficients stay version 2 and plain
# schedules version 1, so older readers keep reading everything they can run.
FORMAT_VERSION = 3
COEFFICIENTS_VERSION = {"exact": 2, "relaxed": 2, "generalized": 3}
READ_VERSIONS = (1, 2, 3)
KINDS = ("time_uniform", "time_quadratic", "logsnr", "edm")
KIND_ALIASES = {"karras": "edm"}  # k-diffusion's name for the EDM (Karras et al.) schedule
FLOW_KINDS = ("flowmatch", "flux")  # the flow-matching pipelines' own grids (rectified flows only)
_RANGE_RTOL = 1e-9  # round trips through lambda may land a hair outside [t_min, t_max]; never above a flow's t = 1
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
FIELDS = ("t", "t_eval", "noise", "final", "solver", "order", "variant", "lower_order_final", "guidance_scale",
          "fingerprint", "coefficients", "coefficient_form", "origin", "metrics", "info")
COEFFICIENT_LIMIT = 1e3  # |correction| in units of an update's total output weight; far beyond any learned one
_FILE_KEYS = {"format_version", "nfe", *FIELDS}

__all__ = ["Schedule", "ScheduleError", "discretize", "flux_mu", "hand_made", "KINDS", "FLOW_KINDS", "FLOW_SHIFTS",
           "FORMAT_VERSION"]


def _as_times(name: str, v) -> tuple[float, ...]:
    if isinstance(v, torch.Tensor):
        if v.is_complex() or v.dtype == torch.bool:
            raise ScheduleError(f"field {name!r}: expected real times, got a {v.dtype} tensor")
        v = v.detach().to("cpu", DTYPE).reshape(-1).tolist() if v.dim() == 1 else v
    if isinstance(v, torch.Tensor) or not isinstance(v, (list, tuple)):
        shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ScheduleError(f"field {name!r}: expected a non-empty 1-D list of times, got {shape}")
    if not v:
        raise ScheduleError(f"field {name!r}: expected a non-empty 1-D list of times, got an empty list")
    return tuple(finite_number(x, f"field {name!r}: {name}[{i}]", ScheduleError) for i, x in enumerate(v))


def _as_coefficients(v) -> tuple[tuple[float, ...], ...] | None:
    """Learned corrections: one list of numbers per network call (None: the base solver)."""
    if v is None:
        return None
    if isinstance(v, torch.Tensor) or not isinstance(v, (list, tuple)):
        raise ScheduleError(f"field 'coefficients': expected one list of numbers per network call, got "
                            f"{type(v).__name__}")
    out = []
    for i, row in enumerate(v):
        if isinstance(row, torch.Tensor):
            row = row.detach().to("cpu", DTYPE).reshape(-1).tolist() if row.dim() <= 1 else row
        if isinstance(row, torch.Tensor) or not isinstance(row, (list, tuple)):
            raise ScheduleError(f"field 'coefficients': entry {i} must be a list of numbers, got {type(row).__name__}")
        vals = tuple(finite_number(x, f"field 'coefficients': coefficients[{i}][{j}]", ScheduleError)
                     for j, x in enumerate(row))
        for j, x in enumerate(vals):
            if abs(x) > COEFFICIENT_LIMIT:
                raise ScheduleError(f"field 'coefficients': coefficients[{i}][{j}]={x} exceeds {COEFFICIENT_LIMIT:g} "
                                    f"(corrections are fractions of an update's total weight)")
        out.append(vals)
    return tuple(out)


def _optional(name: str, v, types, what: str):
    if v is None:
        return None
    if isinstance(v, bool) and bool not in types or not isinstance(v, types):
        raise ScheduleError(f"field {name!r}: expected {what} or null, got {type(v).__name__} {v!r:.60}")
    return v


def _json_dict(name: str, v) -> dict:
    if not isinstance(v, dict):
        raise ScheduleError(f"field {name!r}: expected a JSON object (dict), got {type(v).__name__}")
    _check_json(name, v)
    return v


def _check_json(name: str, v, depth: int = 0) -> None:
    """Metadata must survive a JSON round trip unchanged: str keys, JSON scalars, lists and dicts."""
    if depth > 64:
        raise ScheduleError(f"field {name!r}: nested too deeply")
    if v is None or isinstance(v, (bool, int, float, str)):
        return
    if isinstance(v, list):
        for x in v:
            _check_json(name, x, depth + 1)
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise ScheduleError(f"field {name!r}: keys must be strings, got {type(k).__name__} {k!r:.40}")
            _check_json(name, x, depth + 1)
        return
    raise ScheduleError(f"field {name!r}: holds a {type(v).__name__}, which JSON cannot store "
                        f"(use numbers, strings, lists and dicts)")


class Schedule:
    """Where a sampler steps (t) and the times its network sees (t_eval); immutable once validated.

    t: strictly decreasing solver times from t_max to t_min (multistep: nfe + 1 of them;
       heun: (nfe + 1) / 2 + 1). With final="zero" the last entry is 0: the last step
       lands on sigma = 0 (k-diffusion / diffusers' default) without an extra call.
    t_eval: the nfe network times, in call order.
    solver / order / variant / lower_order_final: set when the schedule was made for one
       solver (learned schedules); None for hand-made ones, which fit any solver of their layout.
    guidance_scale: the guidance the schedule was made with (None: any).
    fingerprint: the model's fingerprint for learned schedules (None: any model).
    coefficients: learned corrections of the solver's weights on buffered denoiser outputs (one list
       per network call, sizes given by the solver's plan: PlanBuilder.correct), or None for the
       base solver; they need solver and order. coefficient_form: "exact" (zero-sum, the default),
       "relaxed" or "generalized" (zero-sum over every earlier output; dpmpp, unipc, ipndm). A schedule with
       coefficients is written as format version 2, in the generalized form as version 3.
    origin, metrics, info: free-form description; metrics and info are dicts that code may add
       to (they never change a sample) but that must stay JSON-serialisable.

    Every field that decides a sample (t, t_eval, noise, final, solver, order, variant,
    lower_order_final, guidance_scale, fingerprint, coefficients) is checked once, here, and cannot change
    afterwards: `t` and `t_eval` return fresh float64 tensors, assigning a field raises, and
    `schedule.replace(field=...)` builds a new, validated Schedule.
    """

    __slots__ = ("_t", "_t_eval", "_noise", "_final", "_solver", "_order", "_variant", "_lower_order_final",
                 "_guidance_scale", "_fingerprint", "_coefficients", "_coefficient_form", "_origin", "_metrics",
                 "_info")

    def __init__(self, t, t_eval, noise: NoiseSchedule, final: str = "t_min", solver: str | None = None,
                 order: int | None = None, variant: str | None = None, lower_order_final: bool | None = None,
                 guidance_scale: float | None = None, fingerprint: str | None = None, coefficients=None,
                 coefficient_form: str = "exact", origin: str = "", metrics: dict | None = None,
                 info: dict | None = None):
        if not isinstance(noise, NoiseSchedule):
            raise ScheduleError(f"field 'noise': expected a NoiseSchedule, got {type(noise).__name__}")
        t, te = _as_times("t", t), _as_times("t_eval", t_eval)
        if not isinstance(final, str) or final not in solvers.FINALS:
            raise ScheduleError(f"field 'final': must be one of {solvers.FINALS}, got {final!r:.60}")
        solver = _optional("solver", solver, (str,), "a solver name")
        order = _optional("order", order, (int,), "an integer")
        variant = _optional("variant", variant, (str,), "a variant name")
        lower_order_final = _optional("lower_order_final", lower_order_final, (bool,), "true / false")
        if guidance_scale is not None:
            guidance_scale = finite_number(guidance_scale, "field 'guidance_scale'", ScheduleError)
        fingerprint = _optional("fingerprint", fingerprint, (str,), "a sha256 hex digest")
        if fingerprint is not None and not _FINGERPRINT.fullmatch(fingerprint):
            raise ScheduleError(f"field 'fingerprint': expected 64 lowercase hex digits, got {fingerprint!r:.80}")
        if not isinstance(origin, str):
            raise ScheduleError(f"field 'origin': expected a string, got {type(origin).__name__}")
        coefficients = _as_coefficients(coefficients)
        if not isinstance(coefficient_form, str) or coefficient_form not in solvers.COEFFICIENT_FORMS:
            raise ScheduleError(f"field 'coefficient_form': must be one of {solvers.COEFFICIENT_FORMS}, "
                                f"got {coefficient_form!r:.60}")
        metrics = _json_dict("metrics", {} if metrics is None else metrics)
        info = _json_dict("info", {} if info is None else info)
        _check_times(t, te, noise, final)
        if solver is not None:
            try:
                spec = solvers.get_solver(solver)
                if order is not None:
                    solvers.resolve_order(spec, order)
                if variant is not None:
                    solvers.resolve_variant(spec, variant)
            except ValueError as e:
                raise ScheduleError(f"fields 'solver' / 'order' / 'variant': {e}") from None
            if lower_order_final is not None and "lower_order_final" not in spec.options:
                raise ScheduleError(f"field 'lower_order_final': solver {solver!r} has no such option")
            if not solvers.layout_matches(solver, len(t), len(te)):
                raise ScheduleError(f"fields 't'/'t_eval': {len(t)} times and {len(te)} eval times do not "
                                    f"fit solver {solver!r}")
            if coefficients is not None:
                _check_coefficients(coefficients, coefficient_form, t, te, noise, final, solver, order, variant,
                                    lower_order_final)
        elif coefficients is not None:
            raise ScheduleError("field 'coefficients': learned coefficients need fields 'solver' and 'order' (they "
                                "correct one solver's weights)")
        elif order is not None or variant is not None or lower_order_final is not None:
            raise ScheduleError("fields 'order' / 'variant' / 'lower_order_final' need field 'solver': they "
                                "describe the solver the schedule was made for")
        elif not (solvers.layout_matches("euler", len(t), len(te))
                  or solvers.layout_matches("heun", len(t), len(te))):
            raise ScheduleError(f"fields 't'/'t_eval': {len(t)} times do not fit {len(te)} network calls "
                                f"(multistep: nfe + 1 times; heun: (nfe + 1) / 2 + 1 times)")
        for name, value in (("t", t), ("t_eval", te), ("noise", noise), ("final", final), ("solver", solver),
                            ("order", order), ("variant", variant), ("lower_order_final", lower_order_final),
                            ("guidance_scale", guidance_scale), ("fingerprint", fingerprint),
                            ("coefficients", coefficients), ("coefficient_form", coefficient_form), ("origin", origin),
                            ("metrics", metrics), ("info", info)):
            object.__setattr__(self, "_" + name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"a Schedule cannot change after it is validated: use schedule.replace({name}=...), "
                             f"which checks the result")

    __delattr__ = __setattr__

    # ----- fields ------------------------------------------------------------------------------

    @property
    def t(self) -> torch.Tensor:
        """The solver times (a new float64 tensor on each access: editing it leaves the schedule as it is)."""
        return torch.tensor(self._t, dtype=DTYPE)

    @property
    def t_eval(self) -> torch.Tensor:
        """The network times, one per call (a new float64 tensor on each access)."""
        return torch.tensor(self._t_eval, dtype=DTYPE)

    noise = property(lambda self: self._noise)
    final = property(lambda self: self._final)
    solver = property(lambda self: self._solver)
    order = property(lambda self: self._order)
    variant = property(lambda self: self._variant)
    lower_order_final = property(lambda self: self._lower_order_final)
    guidance_scale = property(lambda self: self._guidance_scale)
    fingerprint = property(lambda self: self._fingerprint)
    coefficients = property(lambda self: self._coefficients,
                            doc="Learned solver corrections, one tuple per call (None: the base solver).")
    coefficient_form = property(lambda self: self._coefficient_form)
    origin = property(lambda self: self._origin)
    metrics = property(lambda self: self._metrics, doc="Free-form results (JSON-serialisable); never change a sample.")
    info = property(lambda self: self._info, doc="Free-form description (JSON-serialisable); never changes a sample.")

    def fields(self) -> dict:
        """Every field, as the constructor takes them (metrics and info deep-copied)."""
        return {name: copy.deepcopy(getattr(self, name)) if name in ("metrics", "info") else getattr(self, name)
                for name in FIELDS}

    def replace(self, **changes) -> "Schedule":
        """A new Schedule with some fields changed, validated like any other."""
        unknown = set(changes) - set(FIELDS)
        if unknown:
            raise ScheduleError(f"unknown Schedule field(s) {sorted(unknown)}; fields: {', '.join(FIELDS)}")
        return Schedule(**{**self.fields(), **changes})

    def __eq__(self, other):
        if not isinstance(other, Schedule):
            return NotImplemented
        return all(getattr(self, "_" + n) == getattr(other, "_" + n) for n in FIELDS)

    __hash__ = None  # metrics and info may grow

    def __reduce__(self):
        return (_from_fields, (self.fields(),))

    @property
    def nfe(self) -> int:
        return len(self._t_eval)

    @property
    def layout(self) -> str:
        if self._solver is not None:
            return solvers.get_solver(self._solver).layout
        return "multistep" if len(self._t) == self.nfe + 1 else "heun"

    # ----- JSON -----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        _json_dict("metrics", self._metrics)  # code may have added to them since construction
        _json_dict("info", self._info)
        learned = {} if self._coefficients is None else {
            "coefficients": [list(row) for row in self._coefficients], "coefficient_form": self._coefficient_form}
        return {
            "format_version": COEFFICIENTS_VERSION[self._coefficient_form] if learned else 1,
            "nfe": self.nfe,
            "t": list(self._t),
            "t_eval": list(self._t_eval),
            "noise": self._noise.describe(),
            "final": self._final,
            "solver": self._solver,
            "order": self._order,
            "variant": self._variant,
            "lower_order_final": self._lower_order_final,
            "guidance_scale": self._guidance_scale,
            "fingerprint": self._fingerprint,
            **learned,
            "origin": self._origin,
            "metrics": copy.deepcopy(self._metrics),
            "info": copy.deepcopy(self._info),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        """A Schedule from its JSON form; any defect is a ScheduleError naming the field."""
        if not isinstance(d, dict):
            raise ScheduleError(f"a schedule is a JSON object, got {type(d).__name__}")
        version = d.get("format_version")
        if isinstance(version, bool) or version not in READ_VERSIONS:
            raise ScheduleError(f"field 'format_version': this ldd-fast reads versions "
                                f"{', '.join(map(str, READ_VERSIONS))}, got {version!r:.40}")
        if version == 1 and ("coefficients" in d or "coefficient_form" in d):
            raise ScheduleError("fields 'coefficients' / 'coefficient_form' need format_version 2")
        form = d.get("coefficient_form", "exact")
        if version == 2 and form == "generalized":
            raise ScheduleError("field 'coefficient_form': 'generalized' needs format_version 3")
        unknown = sorted(str(k) for k in d if k not in _FILE_KEYS)
        if unknown:
            raise ScheduleError(f"unknown field(s) {', '.join(repr(k) for k in unknown)[:200]}")
        for key in ("t", "t_eval", "noise"):
            if key not in d:
                raise ScheduleError(f"field {key!r}: missing")
        try:
            noise = from_description(d["noise"])
        except LddFastError as e:
            raise ScheduleError(f"field 'noise': {e}") from None
        sched = cls(t=d["t"], t_eval=d["t_eval"], noise=noise, final=d.get("final", "t_min"),
                    solver=d.get("solver"), order=d.get("order"), variant=d.get("variant"),
                    lower_order_final=d.get("lower_order_final"), guidance_scale=d.get("guidance_scale"),
                    fingerprint=d.get("fingerprint"), coefficients=d.get("coefficients"),
                    coefficient_form=d.get("coefficient_form", "exact"), origin=d.get("origin", ""),
                    metrics=copy.deepcopy(d.get("metrics", {})), info=copy.deepcopy(d.get("info", {})))
        if "nfe" in d and (isinstance(d["nfe"], bool) or d["nfe"] != sched.nfe):
            raise ScheduleError(f"field 'nfe': says {d['nfe']!r:.40} but t_eval has {sched.nfe} entries")
        return sched

    def save(self, path) -> None:
        """Write JSON atomically (temp file in the same folder, then rename)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path) -> "Schedule":
        path = path_like(path, "path")
        d = read_json(path, "schedule file", ScheduleError)
        try:
            return cls.from_dict(d)
        except ScheduleError as e:
            raise ScheduleError(f"schedule file {path}: {e}") from None

    def __repr__(self):
        made = f", solver={self._solver}" if self._solver else ""
        if self._coefficients is not None:
            made += f", learned coefficients ({self._coefficient_form})"
        return (f"Schedule(nfe={self.nfe}, {self.layout}, final={self._final}{made}, origin={self._origin!r}, "
                f"t=[{', '.join(f'{v:.4g}' for v in self._t)}])")


def _from_fields(fields: dict) -> Schedule:
    return Schedule(**fields)


def _check_coefficients(coefficients, form, t, te, noise, final, solver, order, variant, lower_order_final) -> None:
    """The corrections must fit the solver's plan: as many values per call as it has free weights."""
    if order is None:
        raise ScheduleError("field 'coefficients': learned coefficients need field 'order'")
    if len(coefficients) != len(te):
        raise ScheduleError(f"field 'coefficients': {len(coefficients)} lists for {len(te)} network calls")
    try:
        free = solvers.make_plan(noise, torch.tensor(t, dtype=DTYPE), torch.tensor(te, dtype=DTYPE), solver=solver,
                                 order=order, final=final, lower_order_final=lower_order_final, variant=variant,
                                 coefficient_form=form).free
    except (ValueError, RuntimeError) as e:
        raise ScheduleError(f"field 'coefficients': the solver's plan cannot be built: {e}") from None
    sizes = tuple(len(row) for row in coefficients)
    if sizes != free:
        raise ScheduleError(f"field 'coefficients': sizes per call {list(sizes)} do not fit {solver}{order} "
                            f"({form}), which has {list(free)} learnable weights per call")


def _check_times(t: tuple, te: tuple, noise: NoiseSchedule, final: str) -> None:
    if len(t) < 2:
        raise ScheduleError("field 't': needs at least 2 times")
    for i in range(len(t) - 1):
        if not t[i + 1] < t[i]:
            raise ScheduleError(f"field 't': times must be strictly decreasing, but t[{i}]={t[i]} <= "
                                f"t[{i + 1}]={t[i + 1]}")
    body = t
    if final == "zero":
        if t[-1] != 0:
            raise ScheduleError(f"field 't': with final='zero' the last time must be 0, got {t[-1]}")
        body = t[:-1]
    lo, hi = noise.t_min * (1 - _RANGE_RTOL), noise.t_max * (1 + _RANGE_RTOL)
    if isinstance(noise, RectifiedFlow):
        # Past t = 1 a flow is beyond pure noise (alpha = 1 - t < 0, lambda undefined): no tolerance there.
        hi = min(hi, 1.0)
    for name, v in (("t", body), ("t_eval", te)):
        for i, x in enumerate(v):
            if not lo <= x <= hi:
                raise ScheduleError(f"field {name!r}: {name}[{i}]={x} is outside the noise schedule's "
                                    f"range [{noise.t_min}, {noise.t_max}]")
    if noise.pure_noise_start:
        # t = t_max is pure noise (lambda = -inf): only the first solver time, and its network call, may sit there.
        if any(x >= noise.t_max for x in te[1:]):
            raise ScheduleError(f"field 't_eval': only the first network call may be at pure noise "
                                f"t = {noise.t_max}, got t_eval = {list(te)}")


def flux_mu(image_seq_len: int, *, base_image_seq_len: int = 256, max_image_seq_len: int = 4096,
            base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """The exponential time shift mu that FluxPipeline (and SD3.5 with dynamic shifting) computes from the
    image's token count: linear in image_seq_len through (base_image_seq_len, base_shift) and
    (max_image_seq_len, max_shift), the scheduler config's keys of the same names."""
    for name, v in (("image_seq_len", image_seq_len), ("base_image_seq_len", base_image_seq_len),
                    ("max_image_seq_len", max_image_seq_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            error = InvalidArgument if isinstance(v, int) and not isinstance(v, bool) else InvalidArgumentType
            raise error(f"{name} must be a positive int, got {v!r:.40}")
    if max_image_seq_len == base_image_seq_len:
        raise InvalidArgument("max_image_seq_len must differ from base_image_seq_len")
    m = (finite_number(max_shift, "max_shift") - finite_number(base_shift, "base_shift")) / \
        (max_image_seq_len - base_image_seq_len)
    return float(image_seq_len * m + base_shift - m * base_image_seq_len)


def _linear_shift(shift: float, u: torch.Tensor) -> torch.Tensor:
    return shift * u / (1.0 + (shift - 1.0) * u)


def _exponential_shift(mu: float, u: torch.Tensor) -> torch.Tensor:
    return math.exp(mu) / (math.exp(mu) + (1.0 / u - 1.0))


def _flow_grid(kind: str, m: int, final: str, t_end: float, shift: float | None, mu: float | None):
    """The flow pipelines' grids (diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps and FluxPipeline).

    final="zero": exactly the m call times the pipeline computes, before its appended 0: "flowmatch" takes
    linspace(sigma_max, sigma_min, m) of the scheduler's training sigmas (with a static shift those are
    already shifted once, so the smallest is shifted twice, as diffusers does) then shifts them; "flux"
    takes linspace(1, 1/m, m) and the exponential shift with mu. final="t_min": m points from 1 to
    exactly t_end, uniform before the same shift.
    """
    shift_fn = (lambda u: _exponential_shift(mu, u)) if mu is not None else (lambda u: _linear_shift(shift, u))
    if final == "t_min":
        lo = t_end / (math.exp(mu) * (1.0 - t_end) + t_end) if mu is not None \
            else t_end / (shift - (shift - 1.0) * t_end)  # the unshifted point that shifts onto t_end
        u = torch.linspace(1.0, lo, m, dtype=DTYPE)
    elif kind == "flux":
        u = torch.linspace(1.0, 1.0 / m, m, dtype=DTYPE)
    else:
        sigma_min = _FLOW_TRAIN_SIGMA_MIN if mu is not None else float(_linear_shift(shift, torch.tensor(
            _FLOW_TRAIN_SIGMA_MIN, dtype=DTYPE)))
        u = torch.linspace(1.0, sigma_min, m, dtype=DTYPE)
    return shift_fn(u)


_FLOW_TRAIN_SIGMA_MIN = 1e-3  # 1 / num_train_timesteps of every flow-matching pipeline we know


def discretize(noise: NoiseSchedule, nfe: int, kind: str = "logsnr", *, solver: str | None = None,
               rho: float = 7.0, final: str = "t_min", t_end: float | None = None, shift: float | None = None,
               mu: float | None = None) -> Schedule:
    """A hand-made schedule from t_max to t_end (default t_min) that spends exactly nfe network calls.

    kind: "time_uniform" (linear in t), "time_quadratic" (linear in sqrt t, as DPM-Solver),
    "logsnr" (linear in lambda), "edm" (alias "karras"; Karras et al. 2022 eq. 5: linear in sigma^(1/rho)
    with sigma = sigma(t) / alpha(t) = exp(-lambda), mapped back to t); for rectified flows also
    "flowmatch" (the grid of diffusers' FlowMatchEulerDiscreteScheduler with `shift`, or with `mu`
    for its dynamic shifting, as Stable Diffusion 3 samples) and "flux" (FluxPipeline's grid:
    linspace(1, 1/N, N) with the exponential time shift `mu`, see `flux_mu`). With final="zero"
    these two are exactly the pipelines' sigmas, whose last one is not t_min.
    From pure noise (a rectified flow's t = 1), "logsnr" and "edm" space the times over
    NoiseSchedule.lam_span() and then put the first time at t = 1 exactly.
    solver: decides how many times nfe needs (heun: nfe = 2K - 1 for K steps); default multistep.
    final: "t_min" ends at t_end; "zero" spreads the call times over [t_end, t_max] and lands
    the last step on sigma = 0 (k-diffusion / diffusers' convention).
    """
    if not isinstance(noise, NoiseSchedule):
        raise InvalidArgumentType(f"noise must be a NoiseSchedule, got {type(noise).__name__}")
    string(kind, "kind")
    kind = KIND_ALIASES.get(kind, kind)
    if kind not in KINDS + FLOW_KINDS:
        raise InvalidArgument(f"unknown discretisation kind {kind!r}; expected one of {KINDS + FLOW_KINDS} "
                              f"(or {', '.join(f'{a} = {k}' for a, k in KIND_ALIASES.items())})")
    string(final, "final", solvers.FINALS)
    if solver is not None:
        solvers.get_solver(solver)
    if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
        error = InvalidArgumentType if isinstance(rho, bool) or not isinstance(rho, (int, float)) else InvalidArgument
        raise error(f"rho must be a positive number, got {rho!r:.40}")
    shift = None if shift is None else finite_number(shift, "shift")
    mu = None if mu is None else finite_number(mu, "mu")
    t_end = noise.t_min if t_end is None else finite_number(t_end, "t_end")
    if not noise.t_min <= t_end < noise.t_max:
        raise InvalidArgument(f"t_end={t_end} must lie in the noise schedule's range [{noise.t_min}, {noise.t_max})")
    if kind in FLOW_KINDS:
        if not isinstance(noise, RectifiedFlow) or not noise.pure_noise_start:
            raise InvalidArgument(f"kind {kind!r} is a flow-matching pipeline's grid: it needs lf.RectifiedFlow() "
                                  f"(t_max = 1), got {noise!r}")
        if kind == "flux" and mu is None:
            raise InvalidArgument("kind 'flux' needs mu (lf.flux_mu(image_seq_len) computes the pipeline's)")
        if shift is not None and mu is not None:
            raise InvalidArgument("give shift (a static shift) or mu (dynamic shifting), not both")
        if mu is None:
            shift = 1.0 if shift is None else shift
            if shift <= 0:
                raise InvalidArgument(f"shift must be positive, got {shift}")
    elif shift is not None or mu is not None:
        raise InvalidArgument(f"shift and mu belong to the flow kinds {FLOW_KINDS}, not to kind {kind!r}")
    layout_solver = solver or "euler"
    n = solvers.steps_for_nfe(layout_solver, nfe)
    m = n + 1 if final == "t_min" else n
    t_hi, t_lo = torch.tensor(noise.t_max, dtype=DTYPE), torch.tensor(t_end, dtype=DTYPE)
    u = torch.linspace(0.0, 1.0, m, dtype=DTYPE) if m > 1 else torch.zeros(1, dtype=DTYPE)
    if kind in FLOW_KINDS:
        t = _flow_grid(kind, m, final, t_end, shift, mu)
    elif kind == "time_uniform":
        t = t_hi + u * (t_lo - t_hi)
    elif kind == "time_quadratic":
        t = (t_hi.sqrt() + u * (t_lo.sqrt() - t_hi.sqrt())) ** 2
    else:
        l_hi, l_lo = noise.lam_span()[0], noise.lam(t_lo)
        if kind == "logsnr":
            t = noise.t_of_lambda(l_hi + u * (l_lo - l_hi))
        else:
            s_hi, s_lo = math.exp(-l_hi / rho), torch.exp(-l_lo / rho)
            t = noise.t_of_lambda(-rho * torch.log(s_hi + u * (s_lo - s_hi)))
    t[0] = t_hi  # exact ends: round trips through lambda must not step outside the range
    if m > 1 and (final == "t_min" or kind not in FLOW_KINDS):
        t[-1] = t_lo
    if final == "zero":
        t = torch.cat([t, torch.zeros(1, dtype=DTYPE)])
    info = {"kind": kind, **({"rho": float(rho)} if kind == "edm" else {}),
            **({"shift": shift} if shift is not None else {}), **({"mu": mu} if mu is not None else {}),
            **({"t_end": t_end} if t_end != noise.t_min else {})}
    return Schedule(t=t, t_eval=solvers.default_t_eval(layout_solver, t), noise=noise, final=final,
                    origin=f"discretize:{kind}", info=info)


# Shifts of the "flowmatch" grid tried where the best hand-made flow schedule is chosen: SD3 ships 3.0.
FLOW_SHIFTS = (1.5, 2.0, 3.0, 4.0, 6.0)


def hand_made(noise: NoiseSchedule, nfe: int, *, solver: str | None = None) -> dict[str, Schedule]:
    """Every hand-made schedule of a noise schedule from t_max to t_min, by name: the KINDS, and for a flow
    from pure noise the flow-matching grid at each of FLOW_SHIFTS ("flowmatch_s3", ...)."""
    out = {kind: discretize(noise, nfe, kind, solver=solver) for kind in KINDS}
    if isinstance(noise, RectifiedFlow) and noise.pure_noise_start:
        for shift in FLOW_SHIFTS:
            out[f"flowmatch_s{shift:g}"] = discretize(noise, nfe, "flowmatch", solver=solver, shift=shift)
    return out
