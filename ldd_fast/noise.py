"""Noise schedules: x_t = alpha(t) x_0 + sigma(t) eps, in float64, differentiable in t.

Every schedule exposes alpha, sigma, lambda = log(alpha / sigma) (the half
log-SNR of DPM-Solver, Lu et al. 2022) and its inverse t(lambda), the time
range [t_min, t_max] a sampler runs over, and the scale of the prior that
unit-normal noise z is multiplied by. The solvers only ever see these
functions, so every solver runs under every schedule.

A rectified-flow schedule may start at pure noise, t = 1 (alpha = 0, lambda = -inf), as the
flow pipelines do. Two rules keep that point finite everywhere: lambda-coordinate constructions
(logSNR / EDM discretisations, LD3's lambda mode) take their span from `lam_span()`, which starts
at the mirror of the other end, -lambda(t_min), instead of -inf; and the solvers take the first
step from t = 1 in its finite form and never use the output at t = 1 as history in lambda
(see plan.StepTimes).
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings

import torch

from .errors import NoiseScheduleError, finite_number

DTYPE = torch.float64
# |lambda| at t_min and t_max (the half log-SNR): sigma / alpha within [e^-30, e^30] = [9e-14, 1e13]. Every
# model we know of sits far inside (EDM 80 / 0.002: -4.4 / 6.2; Stable Diffusion: -2.7 / 3.5); beyond it
# alpha or sigma / alpha leave what float32 samples and coefficients can carry.
LAMBDA_LIMIT = 30.0


def _number(cls: str, name: str, v, *, positive: bool = False, nonnegative: bool = False) -> float:
    """A finite float parameter, or a NoiseScheduleError naming the schedule and the parameter."""
    v = finite_number(v, f"{cls}: {name}", NoiseScheduleError)
    if positive and v <= 0 or nonnegative and v < 0:
        raise NoiseScheduleError(f"{cls}: {name} must be {'positive' if positive else '>= 0'}, got {v}")
    return v


def as_time(t) -> torch.Tensor:
    """Times are float64 tensors; python numbers are promoted, tensors keep their graph."""
    if isinstance(t, torch.Tensor):
        return t if t.dtype == DTYPE else t.to(DTYPE)
    return torch.as_tensor(t, dtype=DTYPE)


class NoiseSchedule:
    """Base class. Subclasses define log_alpha, sigma-or-lambda and the inverse of lambda."""

    t_min: float
    t_max: float
    prior_scale: float = 1.0
    # True when t_max is pure noise (alpha(t_max) = 0, lambda = -inf): only RectifiedFlow(t_max=1).
    pure_noise_start: bool = False

    def log_alpha(self, t):
        raise NotImplementedError

    def alpha(self, t):
        return torch.exp(self.log_alpha(as_time(t)))

    def sigma(self, t):
        raise NotImplementedError

    def lam(self, t):
        """lambda(t) = log(alpha / sigma), strictly decreasing in t."""
        raise NotImplementedError

    def t_of_lambda(self, lam):
        raise NotImplementedError

    def sigma_ve(self, t):
        """sigma / alpha: the noise level of the scaled state x / alpha (EDM's sigma)."""
        return torch.exp(-self.lam(as_time(t)))

    def ode_coordinates(self, t):
        """(scale, level) in which the PF-ODE reads dy/dlevel = (y - D) / level for y = x / scale.

        EDM's coordinates (Karras et al. 2022, sec. 4): scale = alpha, level = sigma / alpha. Heun and
        iPNDM integrate in them; a schedule whose start is pure noise overrides them with finite ones.
        """
        return self.alpha(t), self.sigma_ve(t)

    def t_of_level(self, level):
        """The inverse of the level of `ode_coordinates`."""
        return self.t_of_lambda(-torch.log(as_time(level)))

    def lam_span(self) -> tuple[float, float]:
        """(lambda at the start, lambda at t_min) of every lambda-coordinate construction; finite."""
        return float(self.lam(self.t_max)), float(self.lam(self.t_min))

    def describe(self) -> dict:
        raise NotImplementedError

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            raise AttributeError(f"{type(self).__name__} cannot change after it is validated; build a new one")
        object.__setattr__(self, name, value)

    def _finish(self) -> None:
        """Check the time range and its log-SNR, then freeze: every parameter is final from here on."""
        name = type(self).__name__
        if not (0 < self.t_min < self.t_max):
            raise NoiseScheduleError(f"{name}: need 0 < t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}")
        with torch.no_grad():
            lam_lo, lam_hi = self.lam_span()
        if not (math.isfinite(lam_lo) and math.isfinite(lam_hi) and lam_hi > lam_lo):
            raise NoiseScheduleError(f"{name}: degenerate parameters: the log-SNR over [t_min, t_max] runs from "
                                     f"{lam_hi} to {lam_lo}, not a finite decreasing range")
        if lam_lo < -LAMBDA_LIMIT or lam_hi > LAMBDA_LIMIT:
            raise NoiseScheduleError(f"{name}: the log-SNR lambda = log(alpha / sigma) over [t_min, t_max] runs "
                                     f"from {lam_hi:.4g} to {lam_lo:.4g}, beyond +-{LAMBDA_LIMIT:g} (sigma / alpha "
                                     f"outside [{math.exp(-LAMBDA_LIMIT):.1e}, {math.exp(LAMBDA_LIMIT):.1e}])")
        self._frozen = True

    def __eq__(self, other):
        return isinstance(other, NoiseSchedule) and self.describe() == other.describe()

    def __hash__(self):
        return hash(json.dumps(self.describe(), sort_keys=True))

    def __repr__(self):
        d = {k: v for k, v in self.describe().items() if k != "alphas_cumprod"}
        return f"{d.pop('type')}({', '.join(f'{k}={v}' for k, v in d.items())})"


class EDM(NoiseSchedule):
    """Variance exploding in EDM's parameterisation (Karras et al. 2022): alpha = 1, sigma = t."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.t_min = _number("EDM", "sigma_min", sigma_min, positive=True)
        self.t_max = _number("EDM", "sigma_max", sigma_max, positive=True)
        self.prior_scale = self.t_max
        self._finish()

    def log_alpha(self, t):
        return torch.zeros_like(as_time(t))

    def sigma(self, t):
        return as_time(t)

    def lam(self, t):
        return -torch.log(as_time(t))

    def t_of_lambda(self, lam):
        return torch.exp(-as_time(lam))

    def describe(self):
        return {"type": "EDM", "sigma_min": self.t_min, "sigma_max": self.t_max}


class _VP(NoiseSchedule):
    """Variance preserving: alpha^2 + sigma^2 = 1, so everything follows from log alpha."""

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(as_time(t))))

    def lam(self, t):
        la = self.log_alpha(as_time(t))
        return la - 0.5 * torch.log(-torch.expm1(2.0 * la))

    @staticmethod
    def _log_alpha_of_lambda(lam):
        # alpha^2 = 1 / (1 + exp(-2 lambda)) for VP.
        return -0.5 * torch.nn.functional.softplus(-2.0 * as_time(lam))


class VPLinear(_VP):
    """VP-SDE with linear beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        self.beta_min = _number("VPLinear", "beta_min", beta_min, nonnegative=True)
        self.beta_max = _number("VPLinear", "beta_max", beta_max, positive=True)
        if not self.beta_min < self.beta_max:
            raise NoiseScheduleError(f"VPLinear: need beta_min < beta_max, got {self.beta_min}, {self.beta_max}")
        self.t_min = _number("VPLinear", "t_min", t_min, positive=True)
        self.t_max = _number("VPLinear", "t_max", t_max, positive=True)
        self._finish()

    def log_alpha(self, t):
        t = as_time(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_of_lambda(self, lam):
        # Solve 0.5 (b1 - b0) t^2 + b0 t = -2 log alpha(lambda), rationalised for accuracy at small t.
        b0, db = self.beta_min, self.beta_max - self.beta_min
        two_l = 2.0 * db * torch.nn.functional.softplus(-2.0 * as_time(lam))
        return two_l / (torch.sqrt(b0**2 + two_l) + b0) / db

    def describe(self):
        return {"type": "VPLinear", "beta_min": self.beta_min, "beta_max": self.beta_max,
                "t_min": self.t_min, "t_max": self.t_max}


class VPCosine(_VP):
    """Cosine schedule (Nichol & Dhariwal 2021); T = 0.9946 keeps lambda(T) finite, as DPM-Solver."""

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        self.s = _number("VPCosine", "s", s, nonnegative=True)
        self.t_min = _number("VPCosine", "t_min", t_min, positive=True)
        t_max = _number("VPCosine", "t_max", t_max, positive=True)
        self._log_alpha_0 = math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2.0))
        if t_max >= 1.0:
            # alpha(1) = cos(pi / 2) = 0 exactly: zero terminal SNR.
            warnings.warn(f"VPCosine: t_max={t_max} has zero terminal SNR (lambda = -inf); clipping t_max to 0.9946",
                          stacklevel=2)
            t_max = 0.9946
        self.t_max = t_max
        self._finish()

    def log_alpha(self, t):
        t = as_time(t)
        return torch.log(torch.cos((t + self.s) / (1.0 + self.s) * math.pi / 2.0)) - self._log_alpha_0

    def t_of_lambda(self, lam):
        la = self._log_alpha_of_lambda(lam)
        return 2.0 * (1.0 + self.s) / math.pi * torch.arccos(torch.exp(la + self._log_alpha_0)) - self.s

    def describe(self):
        return {"type": "VPCosine", "s": self.s, "t_min": self.t_min, "t_max": self.t_max}


class VPDiscrete(_VP):
    """The N-step DDPM family (DDPM, LDM, Stable Diffusion): alphas_cumprod[k] at t_k = (k + 1) / N.

    log alpha is interpolated piecewise-linearly in t between the grid points, as
    DPM-Solver's NoiseScheduleVP('discrete') does; its inverse is exact on that
    interpolant. The network's discrete index k corresponds to t = (k + 1) / N.
    """

    def __init__(self, alphas_cumprod, t_min: float | None = None, t_max: float | None = None):
        if isinstance(alphas_cumprod, (list, tuple)) and any(isinstance(a, bool) or not isinstance(a, (int, float))
                                                            for a in alphas_cumprod):
            raise NoiseScheduleError("VPDiscrete: alphas_cumprod must be a list of numbers")
        try:
            ac = torch.as_tensor(alphas_cumprod, dtype=DTYPE).detach().cpu().flatten()
        except (TypeError, ValueError, RuntimeError, OverflowError) as e:
            raise NoiseScheduleError(f"VPDiscrete: alphas_cumprod is not a list of numbers ({e})") from None
        if ac.numel() < 2:
            raise NoiseScheduleError("VPDiscrete: alphas_cumprod needs at least 2 entries")
        if not torch.isfinite(ac).all() or (ac < 0).any() or (ac > 1).any():
            raise NoiseScheduleError("VPDiscrete: alphas_cumprod must be finite and within [0, 1]")
        if not (ac[1:] < ac[:-1]).all():
            raise NoiseScheduleError("VPDiscrete: alphas_cumprod must be strictly decreasing")
        self._alphas_cumprod = ac
        self.N = ac.numel()
        self._t_grid = torch.arange(1, self.N + 1, dtype=DTYPE) / self.N
        self._log_alpha_grid = 0.5 * torch.log(ac)  # may end in -inf (zero terminal SNR)
        self._on_device = {}
        self.t_min = float(self._t_grid[0]) if t_min is None else _number("VPDiscrete", "t_min", t_min, positive=True)
        t_max = 1.0 if t_max is None else _number("VPDiscrete", "t_max", t_max, positive=True)
        if ac[-1] == 0 and t_max > float(self._t_grid[-2]):
            warnings.warn(
                f"VPDiscrete: alphas_cumprod[-1] = 0 (zero terminal SNR); clipping t_max from {t_max} "
                f"to the last finite grid point {float(self._t_grid[-2])}", stacklevel=2)
            t_max = float(self._t_grid[-2])
        self.t_max = t_max
        if self.t_min < float(self._t_grid[0]) or self.t_max > 1.0:
            raise NoiseScheduleError(f"VPDiscrete: [t_min, t_max] must lie within [1/N, 1] = [{1 / self.N}, 1]")
        self._finish()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """The training schedule's cumulative alphas (a copy: the schedule itself cannot change)."""
        return self._alphas_cumprod.clone()

    @classmethod
    def from_betas(cls, betas, **kw):
        betas = torch.as_tensor(betas, dtype=DTYPE)
        return cls(torch.cumprod(1.0 - betas, 0), **kw)

    @classmethod
    def linear(cls, beta_start: float = 1e-4, beta_end: float = 0.02, num_train_timesteps: int = 1000, **kw):
        """DDPM's linear betas (diffusers' beta_schedule='linear')."""
        return cls.from_betas(torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=DTYPE), **kw)

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012, num_train_timesteps: int = 1000, **kw):
        """Stable Diffusion's betas (diffusers' beta_schedule='scaled_linear')."""
        b = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=DTYPE) ** 2
        return cls.from_betas(b, **kw)

    @staticmethod
    def _interp(x, xp, fp):
        # Differentiable in x (slope of the segment), linear extrapolation at both ends.
        idx = torch.searchsorted(xp, x.detach().contiguous()).clamp(1, xp.numel() - 1)
        x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
        return f0 + (x - x0) * (f1 - f0) / (x1 - x0)

    def _tables(self, device):
        """(t grid, log alpha grid, finite mask) on `device`, copied there once (no copy per call)."""
        key = str(device)
        if key not in self._on_device:
            la = self._log_alpha_grid.to(device)
            self._on_device[key] = (self._t_grid.to(device), la, torch.isfinite(la))
        return self._on_device[key]

    def log_alpha(self, t):
        t = as_time(t)
        grid, la, _ = self._tables(t.device)
        return self._interp(t, grid, la)

    def t_of_lambda(self, lam):
        lam = as_time(lam)
        neg_la = -self._log_alpha_of_lambda(lam)
        grid, la, finite = self._tables(lam.device)
        return self._interp(neg_la, -la[finite], grid[finite])

    def index(self, t):
        """The continuous network index k = N t - 1 (integer k at t = (k + 1) / N); never rounded."""
        return as_time(t) * self.N - 1.0

    def describe(self):
        ac = self._alphas_cumprod.tolist()
        return {"type": "VPDiscrete", "t_min": self.t_min, "t_max": self.t_max, "alphas_cumprod": ac,
                "sha256": hashlib.sha256(json.dumps(ac).encode()).hexdigest()[:16]}


class RectifiedFlow(NoiseSchedule):
    """Rectified flow / flow matching (Liu et al. 2023; Lipman et al. 2023), as Stable Diffusion 3 and Flux:
    x_t = (1 - t) x0 + t eps, so alpha = 1 - t, sigma = t and lambda = log((1 - t) / t).

    t equals diffusers' flow sigma and the prior scale is 1. t_max = 1 (the default) is pure noise,
    where the pipelines start: only the first solver time may sit there. The ODE is integrated in
    (x, t) by Heun and iPNDM (dx/dt = (x - D) / t, the velocity), which is finite at t = 1.
    """

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0):
        self.t_min = _number("RectifiedFlow", "t_min", t_min, positive=True)
        self.t_max = _number("RectifiedFlow", "t_max", t_max, positive=True)
        if self.t_max > 1.0:
            raise NoiseScheduleError(f"RectifiedFlow: t_max must be <= 1 (pure noise), got {self.t_max}")
        self.pure_noise_start = self.t_max == 1.0
        self._finish()

    def log_alpha(self, t):
        return torch.log1p(-as_time(t))

    def alpha(self, t):
        return 1.0 - as_time(t)

    def sigma(self, t):
        return as_time(t)

    def lam(self, t):
        t = as_time(t)
        return torch.log1p(-t) - torch.log(t)

    def t_of_lambda(self, lam):
        return torch.sigmoid(-as_time(lam))

    def ode_coordinates(self, t):
        t = as_time(t)
        return torch.ones_like(t), t

    def t_of_level(self, level):
        return as_time(level)

    def lam_span(self) -> tuple[float, float]:
        lam_lo = float(self.lam(self.t_min))
        # From pure noise, lambda constructions start at the mirror of the other end (t = 1 - t_min).
        return (-lam_lo if self.pure_noise_start else float(self.lam(self.t_max))), lam_lo

    def describe(self):
        return {"type": "RectifiedFlow", "t_min": self.t_min, "t_max": self.t_max}


_TYPES = {"EDM": EDM, "VPLinear": VPLinear, "VPCosine": VPCosine, "VPDiscrete": VPDiscrete,
          "RectifiedFlow": RectifiedFlow}
_PARAMS = {"EDM": ("sigma_min", "sigma_max"), "VPLinear": ("beta_min", "beta_max", "t_min", "t_max"),
           "VPCosine": ("s", "t_min", "t_max"), "VPDiscrete": ("alphas_cumprod", "t_min", "t_max", "sha256"),
           "RectifiedFlow": ("t_min", "t_max")}


def from_description(d: dict) -> NoiseSchedule:
    """Rebuild a noise schedule from `describe()` output (as stored in a Schedule file).

    Every key is checked: an unknown or missing parameter, a wrong type or a value out of range
    is a NoiseScheduleError; a VPDiscrete description must match its own sha256.
    """
    if not isinstance(d, dict) or not isinstance(d.get("type"), str) or d["type"] not in _TYPES:
        kind = d.get("type") if isinstance(d, dict) else type(d).__name__
        raise NoiseScheduleError(f"unknown noise schedule description: type={kind!r:.60}; expected one of "
                                 f"{sorted(_TYPES)}")
    d = dict(d)
    kind = d.pop("type")
    unknown = sorted(str(k) for k in d if k not in _PARAMS[kind])
    if unknown:
        raise NoiseScheduleError(f"{kind}: unknown parameter(s) {', '.join(unknown)[:200]}")
    missing = [k for k in _PARAMS[kind] if k not in d and k != "sha256"]
    if missing:
        raise NoiseScheduleError(f"{kind}: parameter(s) {', '.join(missing)} missing")
    if kind == "EDM":
        return EDM(d["sigma_min"], d["sigma_max"])
    if kind == "VPDiscrete":
        digest = d.pop("sha256", None)
        ac = d.pop("alphas_cumprod", None)
        if not isinstance(ac, list):
            raise NoiseScheduleError(f"VPDiscrete: alphas_cumprod must be a list of numbers, got {type(ac).__name__}")
        noise = VPDiscrete(ac, **d)
        if digest is not None and digest != noise.describe()["sha256"]:
            raise NoiseScheduleError("VPDiscrete: alphas_cumprod does not match its sha256 (edited or corrupt)")
        return noise
    return _TYPES[kind](**d)
