"""LD3: learning the time discretisation (Tong et al., "Learning to Discretize Denoising
Diffusion ODEs", ICLR 2025, arXiv 2405.15506), on the Plans that every executor runs.

Parameters (paper sec. 3.2): logits xi in R^N give u = cumsum(softmax(xi)) with u_0 = 0 and
u_N = 1 pinned, so the N + 1 solver times are strictly monotone without constraints:
lambda mode places them at lambda(t_max) + u (lambda(t_min) - lambda(t_max)) (xi = 0 is
logSNR-uniform), time mode at t_max + u (t_min - t_max) (xi = 0 is time-uniform). The
network times are decoupled (sec. 3.3): every call after the first is shifted by
clip(xi_c, -d, d) in the same coordinate, d = win_rate x the smallest adjacent gap.

Objective (sec. 3.4): the soft surrogate min over ||z' - z|| <= r of d(student(z'), y) with
r = gamma D / N^2, optimised by one SGD step on z' per iteration, projected back into the
ball, a sample keeping its new z' only if its loss went down; the hard objective
d(student(z), y) is an option. Two phases: xi only, then xi and xi_c. RMSprop on xi, SGD on
xi_c, gradient norms clipped per vector. Validation once per round on held-out pairs, both
hard (from the true z) and soft; the parameters with the best held-out *hard* loss win.

Not copied from the authors' code (see shared/design/LD3.md): their UniPC cut gradients
(torch.tensor of tensors), their solvers spend an unused extra call, their lambda-mode window
is measured in logit units, and they select on the soft validation loss, which overfits.
"""
from __future__ import annotations

import dataclasses
import math
import os
import resource
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from . import solvers
from .cond import is_cond, map_cond
from .denoiser import Denoiser
from .errors import (ConditionError, InvalidArgument, InvalidArgumentType, StateFileError, boolean, callable_or_none,
                     finite_number, integer, path_like, shape_of, string)
from .io import Fields, load_state, save_state
from .losses import get_loss
from .noise import DTYPE, NoiseSchedule
from .progress import progress
from .sample import run_plan
from .schedule import Schedule
from .teacher import TeacherData, TeacherSpec, make_teacher, pair_conditions, teacher_info

MODES = ("lambda", "time")
OPTIMIZERS = ("ld3", "adam")
CHECKPOINT = "ld3_checkpoint.safetensors"
TEACHER_FILE = "teacher.safetensors"
LD3_SCHEDULE_FILE = "ld3_schedule.json"  # with learned coefficients: LD3's rounds' own best
# coefficients=True: the form that measured best at NFE <= 4 on the built-in models
# (benchmarks/results/generalized_solver.md); solvers without it (euler, heun) take "exact".
DEFAULT_COEFFICIENT_FORM = "generalized"
# Held-out pairs (learn(heldout=...)): extra teacher pairs from seeds far from the training ones, used by
# neither training nor selection; they measure the validation -> held-out gap of the result.
HELDOUT_PAIRS = 16
# Default teacher pairs (n_train, n_valid): LD3's paper default for the times alone; for the learned solver
# the pair count of {50+50, 100+100, 200+100} with the lowest held-out RMSE on the built-in EDM model at NFE 4
# for both DPM-Solver++ 3M and UniPC-3 (benchmarks/results/generalized_solver.md: 0.0683 / 0.0598 / 0.0576
# and 0.0623 / 0.0619 / 0.0542; validation -> held-out gap +0.008 at 50 + 50, -0.001 at 200 + 100).
LD3_PAIRS = (50, 50)
COEFFICIENT_PAIRS = (200, 100)
HELDOUT_SEED_OFFSET = 1_000_003
CHECKPOINT_KIND = "LD3 checkpoint"
# Files of the pickle-based format (ldd-fast 0.1 before issue 9); never read, named in a warning.
OLD_FILES = ("ld3_checkpoint.pt", "teacher.pt")


@dataclass
class LD3Config:
    """Hyper-parameters; defaults are the paper's for pixel-space models (LD3.md)."""
    mode: str = "lambda"
    n_train: int = 50
    n_valid: int = 50
    batch_size: int = 2
    rounds_xi: int = 2          # phase 1: xi only
    rounds_both: int = 5        # phase 2: xi and xi_c
    lr_xi: float = 0.005        # RMSprop
    momentum_xi: float = 0.9
    lr_xi_c: float | None = None  # SGD; None: 0.1 / nfe (latent models: 0.001 / nfe)
    lr_z: float | None = None     # SGD on z'; None: 12 / nfe
    gamma: float = 0.001        # ball radius r = gamma * D / nfe^2, z in unit-variance units
    soft: bool = True
    decoupled: bool = True      # learn the network times (xi_c)
    win_rate: float = 0.5
    clip: float = 1.0
    patience: int = 5
    lr_decay: float = 0.8
    min_lr_xi: float = 5e-5
    min_lr_xi_c: float = 1e-6
    seed: int = 0
    # The learned solver (learn(coefficients=...)): phase 3 learns corrections of the solver's weights on
    # buffered denoiser outputs jointly with xi and xi_c, starting from LD3's best (phases 1-2).
    coefficients: str | None = None  # None (LD3 only) | "exact" | "relaxed" | "generalized"
    rounds_coef: int = 6        # one fewer than LD3's 7: the learned solver (LD3 + these) costs 13/7 = 1.86x LD3
    lr_coef: float = 0.03       # Adam on the corrections (fractions of an update's total output weight)
    # lambda * sum u^2: pulls the corrections toward the base solver. Kept at 1e-4 for the generalized form's
    # larger weight count too: 1e-3 / 1e-2 raised held-out RMSE (EDM, NFE 4, 100 + 100 pairs, DPM-Solver++ 3M
    # 0.0598 -> 0.0612 / 0.0685; benchmarks/results/generalized_solver.md).
    coef_reg: float = 1e-4
    min_lr_coef: float = 1e-4
    coef_joint: bool = True     # phase 3 also updates xi and xi_c (False: the corrections alone, times fixed)
    # "ld3": RMSprop on xi, SGD on xi_c (the paper's); "adam": Adam on both at lr_xi (lr_xi_c if given),
    # the plain hard-loss learner of the baselines with soft=False.
    optimizer: str = "ld3"

    def __post_init__(self):
        self.validate()

    def validate(self):
        string(self.mode, "mode")
        if self.mode not in MODES:
            raise InvalidArgument(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("n_train", "n_valid", "batch_size"):
            if integer(getattr(self, name), name) < 1:
                raise InvalidArgument(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("rounds_xi", "rounds_both", "rounds_coef", "patience", "seed"):
            integer(getattr(self, name), name)
        for name in ("lr_xi", "momentum_xi", "lr_xi_c", "lr_z", "gamma", "win_rate", "clip", "lr_decay", "min_lr_xi",
                     "min_lr_xi_c", "lr_coef", "coef_reg", "min_lr_coef"):
            if getattr(self, name) is not None:  # lr_xi_c and lr_z: None is "the default for this nfe"
                finite_number(getattr(self, name), name)
        for name in ("soft", "decoupled", "coef_joint"):
            boolean(getattr(self, name), name)
        if self.rounds_xi < 0 or self.rounds_both < 0 or self.rounds_xi + self.rounds_both < 1:
            raise InvalidArgument("need at least one training round (rounds_xi + rounds_both >= 1)")
        if self.coefficients is not None and not isinstance(self.coefficients, str):
            raise InvalidArgumentType(f"coefficients must be None or one of {solvers.COEFFICIENT_FORMS}, got "
                                      f"{type(self.coefficients).__name__}")
        if self.coefficients not in (None,) + solvers.COEFFICIENT_FORMS:
            raise InvalidArgument(f"coefficients must be False, True or one of {solvers.COEFFICIENT_FORMS}, "
                                  f"got {self.coefficients!r}")
        if self.coefficients is not None and self.rounds_coef < 1:
            raise InvalidArgument("learning coefficients needs rounds_coef >= 1")
        if not (self.coef_reg >= 0 and self.lr_coef > 0):
            raise InvalidArgument(f"need coef_reg >= 0 and lr_coef > 0, got {self.coef_reg}, {self.lr_coef}")
        string(self.optimizer, "optimizer", OPTIMIZERS)
        if not 0 < self.win_rate <= 0.5:
            raise InvalidArgument("win_rate must be in (0, 0.5] so shifted times stay between neighbours, got "
                                  f"{self.win_rate}")


class TimeParams(nn.Module):
    """xi (N logits) and xi_c (nfe - 1 shifts) -> solver times t and network times t_eval (float64)."""

    def __init__(self, noise: NoiseSchedule, solver: str, nfe: int, mode: str = "lambda",
                 win_rate: float = 0.5, decoupled: bool = True, init: Schedule | None = None):
        super().__init__()
        if mode not in MODES:
            raise InvalidArgument(f"mode must be one of {MODES}, got {mode!r}")
        self.noise, self.solver, self.nfe, self.mode = noise, solver, nfe, mode
        self.win_rate, self.decoupled = win_rate, decoupled
        self.n_steps = solvers.steps_for_nfe(solver, nfe)
        t_hi, t_lo = torch.tensor(noise.t_max, dtype=DTYPE), torch.tensor(noise.t_min, dtype=DTYPE)
        self.register_buffer("t_hi", t_hi)
        self.register_buffer("t_lo", t_lo)
        # lambda mode spans NoiseSchedule.lam_span(): finite from a flow's pure noise (lambda(1) = -inf).
        c_hi = torch.tensor(noise.lam_span()[0], dtype=DTYPE) if mode == "lambda" else t_hi.clone()
        self.register_buffer("c_hi", c_hi)
        self.register_buffer("c_lo", self.coord(t_lo))
        self.xi = nn.Parameter(torch.zeros(self.n_steps, dtype=DTYPE))
        self.xi_c = nn.Parameter(torch.zeros(max(nfe - 1, 0), dtype=DTYPE))
        if init is not None:
            self.init_from(init)

    def coord(self, t):
        """The mode's coordinate; in lambda mode never below the span's start (t = 1 of a flow maps there)."""
        return torch.maximum(self.noise.lam(t), self.c_hi) if self.mode == "lambda" else t

    def inv(self, c):
        return self.noise.t_of_lambda(c) if self.mode == "lambda" else c

    def fractions(self) -> torch.Tensor:
        """u_0 = 0 < u_1 < ... < u_N = 1, both ends pinned exactly."""
        u = torch.cumsum(torch.softmax(self.xi, 0), 0)[:-1]
        return torch.cat([torch.zeros(1, dtype=DTYPE), u, torch.ones(1, dtype=DTYPE)])

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        u = self.fractions()
        c = self.c_hi + u * (self.c_lo - self.c_hi)
        t = torch.cat([self.t_hi[None], self.inv(c[1:-1]), self.t_lo[None]])
        c_eval = solvers.default_t_eval(self.solver, c)
        if self.decoupled and self.nfe > 1:
            window = self.win_rate * (c[1:] - c[:-1]).abs().min().detach()
            shift = torch.maximum(torch.minimum(self.xi_c, window), -window)
            t_eval = torch.cat([t[:1], self.inv(c_eval[1:] + shift)])
        else:
            t_eval = solvers.default_t_eval(self.solver, t)
        return t, t_eval

    @torch.no_grad()
    def init_from(self, sched: Schedule) -> None:
        """Set xi (and xi_c) so that the parameters reproduce `sched` exactly (up to the window clip)."""
        if not solvers.layout_matches(self.solver, sched.t.numel(), sched.nfe) or sched.nfe != self.nfe:
            raise InvalidArgument(f"init schedule has {sched.nfe} calls and {sched.t.numel()} times: it does not fit "
                                  f"{self.solver} at nfe={self.nfe}")
        if sched.final != "t_min":
            raise InvalidArgument("LD3 learns schedules that end at t_min; the init schedule has final='zero'")
        t = sched.t
        if not (math.isclose(float(t[0]), self.noise.t_max, rel_tol=1e-9)
                and math.isclose(float(t[-1]), self.noise.t_min, rel_tol=1e-9)):
            raise InvalidArgument(f"init schedule must run from t_max={self.noise.t_max} to t_min={self.noise.t_min}, "
                                  f"got {float(t[0])} .. {float(t[-1])}")
        c = self.coord(t)
        p = ((c[1:] - c[:-1]) / (self.c_lo - self.c_hi)).clamp_min(1e-300)
        self.xi.copy_(torch.log(p) - torch.log(p).mean())
        if self.decoupled and self.nfe > 1:
            self.xi_c.copy_(self.coord(sched.t_eval[1:]) - solvers.default_t_eval(self.solver, c)[1:])


class CoefParams(nn.Module):
    """The learned solver's corrections (PlanBuilder.correct): one flat float64 vector, split per call."""

    def __init__(self, free: tuple[int, ...]):
        super().__init__()
        self.free = tuple(free)
        self.u = nn.Parameter(torch.zeros(sum(self.free), dtype=DTYPE))

    def forward(self) -> list[torch.Tensor]:
        return list(torch.split(self.u, list(self.free)))


def project_ball(z_new: torch.Tensor, z0: torch.Tensor, radius: float) -> torch.Tensor:
    """The point of the ball ||z - z0|| <= radius (per sample) nearest to z_new."""
    d = (z_new - z0).flatten(1)
    norm = d.norm(dim=1, keepdim=True)
    scale = torch.clamp(radius / norm.clamp_min(1e-30), max=1.0)
    return z0 + (d * scale).view_as(z0)


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class LearnResult:
    schedule: Schedule
    history: list[dict]
    stats: dict = field(default_factory=dict)
    # With learned coefficients: the best schedule of LD3's rounds in the same run (same teacher pairs).
    ld3_schedule: Schedule | None = None


class LD3Trainer:
    """One LD3 run; `fit()` trains round by round with a checkpoint after each round."""

    def __init__(self, den: Denoiser, *, solver: str, order: int | None, nfe: int, teacher: TeacherData,
                 config: LD3Config, loss="pseudo_huber", decoder=None, init: Schedule | None = None, out: str | None = None,
                 checkpoint_calls: bool = False, show_progress: bool = True, **solver_options):
        config.validate()
        self.order, self.solver_options = solvers.resolve_options(solver, order, nfe, solver_options)
        self.solver, self.nfe, self.cfg, self.den = solver, nfe, config, den
        need = config.n_train + config.n_valid
        if len(teacher) < need:
            raise InvalidArgument(f"teacher data has {len(teacher)} pairs; n_train + n_valid = {need}")
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "callable")
        self.dist, self.decoder = get_loss(loss), decoder
        self.out, self.checkpoint_calls, self.show_progress = out, checkpoint_calls, show_progress
        self.train = teacher.subset(slice(0, config.n_train))
        self.valid = teacher.subset(slice(config.n_train, need))
        self.teacher_info = teacher.info
        self.device = next((p.device for p in den.parameters()), torch.device("cpu"))
        self.dtype = torch.float32
        self.y_train, self.y_valid = self._decoded(self.train.y), self._decoded(self.valid.y)
        self.params = TimeParams(den.noise, solver, nfe, config.mode, config.win_rate, config.decoupled, init)
        self.params.to(self.device)
        with torch.no_grad():
            free = solvers.make_plan(den.noise, *self.params(), solver=solver, order=self.order,
                                     coefficient_form=config.coefficients or "exact", **self.solver_options).free
        self.coef = CoefParams(free).to(self.device)
        self.opt_coef = torch.optim.Adam([self.coef.u], lr=config.lr_coef)
        self.lr_xi_c = config.lr_xi_c if config.lr_xi_c is not None else 0.1 / nfe
        self.lr_z = config.lr_z if config.lr_z is not None else 12.0 / nfe
        dim = math.prod(teacher.z.shape[1:])
        self.radius = config.gamma * dim / nfe**2 if config.soft else 0.0
        if config.optimizer == "adam":
            self.lr_xi_c = config.lr_xi_c if config.lr_xi_c is not None else config.lr_xi
            self.opt_xi = torch.optim.Adam([self.params.xi], lr=config.lr_xi)
            self.opt_xi_c = torch.optim.Adam([self.params.xi_c], lr=self.lr_xi_c)
        else:
            self.opt_xi = torch.optim.RMSprop([self.params.xi], lr=config.lr_xi, momentum=config.momentum_xi)
            self.opt_xi_c = torch.optim.SGD([self.params.xi_c], lr=self.lr_xi_c)
        self.z_train = self.train.z.clone()
        self.z_valid = self.valid.z.clone()
        self.round, self.count_worse, self.calls = 0, 0, 0
        self.evaluations = 0  # per-sample network evaluations (calls counts batched ones)
        self.history: list[dict] = []
        self.best = None  # (valid hard loss, round, xi, xi_c, coef)
        self.best_ld3 = None  # the same over LD3's rounds only (the learned solver's phases 1-2)
        self.elapsed = 0.0
        self.reuse_plans = True
        self._plan_cache = None  # (parameter versions, plan, graph spent by a backward pass)

    # ----- the student ----------------------------------------------------------------

    def _decoded(self, y):
        y = y.to(self.device, self.dtype)
        if self.decoder is None:
            return y
        with torch.no_grad():
            return self.decoder(y)

    def plan(self):
        """The student's Plan at the current parameters, always built with its autograd graph.

        Planning is the one non-network cost that grows with the steps taken (profile:
        benchmarks/learn_profile.py), so a plan is reused until a parameter changes (the tensors'
        in-place version counters: optimiser steps and restores bump them) or a backward pass has
        consumed its graph. A training step's accept check (after the parameter update) therefore
        builds the plan that the next step trains through: one plan per step instead of two.
        """
        learned = self.cfg.coefficients is not None and self.round >= self.ld3_rounds
        key = (self.params.xi._version, self.params.xi_c._version, self.coef.u._version, learned)
        cache = self._plan_cache
        if (self.reuse_plans and cache is not None and cache[0] == key
                and not (cache[2] and torch.is_grad_enabled())):
            return cache[1]
        with torch.enable_grad():
            t, t_eval = self.params()
            plan = solvers.make_plan(self.den.noise, t, t_eval, solver=self.solver, order=self.order,
                                     coefficients=self.coef() if learned else None,
                                     coefficient_form=self.cfg.coefficients or "exact", **self.solver_options)
        self._plan_cache = [key, plan, False]
        return plan

    def student(self, z: torch.Tensor, cond) -> torch.Tensor:
        plan = self.plan()
        if torch.is_grad_enabled():
            self._plan_cache[2] = True  # the caller's backward pass frees this plan's graph
        self.calls += plan.nfe
        self.evaluations += plan.nfe * z.shape[0]
        x = run_plan(plan, self.den, z.to(self.device, self.dtype), cond, checkpoint=self.checkpoint_calls)
        return x if self.decoder is None else self.decoder(x)

    def distances(self, z, y, cond) -> torch.Tensor:
        return self.dist(self.student(z, cond), y)

    def _cond(self, data: TeacherData, idx):
        return None if data.cond is None else map_cond(lambda c: c[idx].to(self.device), data.cond)

    # ----- one round ------------------------------------------------------------------

    def phase(self, r: int) -> int:
        return 1 if r < self.cfg.rounds_xi else 2 if r < self.ld3_rounds else 3

    @property
    def ld3_rounds(self) -> int:
        return self.cfg.rounds_xi + self.cfg.rounds_both

    @property
    def total_rounds(self) -> int:
        return self.ld3_rounds + (self.cfg.rounds_coef if self.cfg.coefficients is not None else 0)

    def _soft_step(self, z_store, z_true, y, cond, idx, update_params: bool):
        """Loss at the stored z', one SGD step on z' (and the time parameters), accept-if-better."""
        z = z_store[idx].to(self.device, self.dtype).requires_grad_(self.cfg.soft)
        losses = self.distances(z, y[idx], cond)
        if not torch.isfinite(losses).all():
            raise NonFiniteLoss(f"non-finite loss {losses.detach().tolist()} at round {self.round}")
        self.opt_xi.zero_grad()
        self.opt_xi_c.zero_grad()
        self.opt_coef.zero_grad()
        phase = self.phase(self.round)
        objective = losses.mean()
        if phase == 3 and update_params and self.cfg.coef_reg:
            objective = objective + self.cfg.coef_reg * self.coef.u.square().sum()
        objective.backward()
        if update_params and (phase < 3 or self.cfg.coef_joint):
            nn.utils.clip_grad_norm_([self.params.xi], self.cfg.clip)
            nn.utils.clip_grad_norm_([self.params.xi_c], self.cfg.clip)
            self.opt_xi.step()
            if phase >= 2 and self.cfg.decoupled:
                self.opt_xi_c.step()
        if update_params:
            if phase == 3:
                nn.utils.clip_grad_norm_([self.coef.u], self.cfg.clip)
                self.opt_coef.step()
        if self.cfg.soft:
            with torch.no_grad():
                z0 = z_true[idx].to(self.device, self.dtype)
                z_new = project_ball(z.detach() - self.lr_z * z.grad, z0, self.radius)
                accept = self.distances(z_new, y[idx], cond) < losses.detach()
                z_store[idx[accept.cpu()]] = z_new[accept].cpu()
        return losses.detach()

    def validate(self) -> dict:
        """Held-out losses: hard (from the true z) and soft (after this round's z' step)."""
        idx = torch.arange(len(self.valid))
        cond = self._cond(self.valid, idx)
        with torch.no_grad():
            hard = self.distances(self.valid.z.to(self.device, self.dtype), self.y_valid, cond)
        if self.cfg.soft:
            self._soft_step(self.z_valid, self.valid.z, self.y_valid, cond, idx, update_params=False)
            with torch.no_grad():
                soft = self.distances(self.z_valid.to(self.device, self.dtype), self.y_valid, cond)
        else:
            soft = hard
        return {"valid_hard": hard.mean().item(), "valid_soft": soft.mean().item()}

    def train_round(self) -> dict:
        r = self.round
        if self.best is not None:  # every round starts from the best parameters so far
            self._set_params(self.best["xi"], self.best["xi_c"], self.best["coef"])
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(self.cfg.seed * 7919 + r))
        batches = order.split(self.cfg.batch_size)
        losses, message = [], None
        bar = progress(batches, desc=f"LD3 round {r} of 0..{self.total_rounds - 1} (phase {self.phase(r)})",
                       disable=not self.show_progress)
        for idx in bar:
            good = (self.params.xi.detach().clone(), self.params.xi_c.detach().clone(), self.coef.u.detach().clone())
            try:
                loss = self._soft_step(self.z_train, self.train.z, self.y_train, self._cond(self.train, idx), idx,
                                       update_params=True)
            except NonFiniteLoss as e:
                self._set_params(*good)
                message = f"{e}; round stopped, last good parameters kept"
                warnings.warn(f"LD3: {message}", stacklevel=2)
                break
            if not (torch.isfinite(self.params.xi).all() and torch.isfinite(self.params.xi_c).all()
                    and torch.isfinite(self.coef.u).all()):
                self._set_params(*good)
                message = f"non-finite parameters after a step at round {r}; round stopped, last good parameters kept"
                warnings.warn(f"LD3: {message}", stacklevel=2)
                break
            losses.append(loss.mean().item())
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(train=f"{sum(losses) / len(losses):.4f}")
        rec = {"round": r, "phase": self.phase(r), "train_soft": sum(losses) / len(losses) if losses else float("nan"),
               **self.validate(), "lr_xi": self.opt_xi.param_groups[0]["lr"],
               "lr_xi_c": self.opt_xi_c.param_groups[0]["lr"], "calls": self.calls, "evaluations": self.evaluations}
        if self.phase(r) == 3:
            rec["lr_coef"] = self.opt_coef.param_groups[0]["lr"]
            rec["coef_norm"] = float(self.coef.u.detach().norm())
        if message:
            rec["stopped"] = message
        self._select(rec)
        return rec

    def _select(self, rec: dict) -> None:
        if self.best is None or rec["valid_hard"] < self.best["valid_hard"]:
            self.best = {"valid_hard": rec["valid_hard"], "valid_soft": rec["valid_soft"], "round": rec["round"],
                         "xi": self.params.xi.detach().clone(), "xi_c": self.params.xi_c.detach().clone(),
                         "coef": self.coef.u.detach().clone()}
            self.count_worse = 0
            if rec["round"] < self.ld3_rounds:
                self.best_ld3 = self.best
        else:
            self.count_worse += 1
            if self.count_worse >= self.cfg.patience:
                self.count_worse = 0
                for opt, floor in ((self.opt_xi, self.cfg.min_lr_xi), (self.opt_xi_c, self.cfg.min_lr_xi_c),
                                   (self.opt_coef, self.cfg.min_lr_coef)):
                    opt.param_groups[0]["lr"] = max(opt.param_groups[0]["lr"] * self.cfg.lr_decay, floor)
        rec["best_round"] = self.best["round"]

    def _set_params(self, xi, xi_c, coef=None):
        with torch.no_grad():
            self.params.xi.copy_(xi)
            self.params.xi_c.copy_(xi_c)
            if coef is not None:
                self.coef.u.copy_(coef)

    @torch.no_grad()
    def choose_init(self) -> Schedule:
        """Start from the hand-made schedule (schedule.hand_made) with the lowest hard loss on the *training*
        pairs."""
        from .schedule import hand_made

        idx = torch.arange(len(self.train))
        cond = self._cond(self.train, idx)
        z = self.train.z.to(self.device, self.dtype)
        candidates = hand_made(self.den.noise, self.nfe, solver=self.solver)
        scores = {}
        for name, sched in candidates.items():
            self.params.init_from(sched)
            scores[name] = self.distances(z, self.y_train, cond).mean().item()
        best = min(scores, key=scores.get)
        sched = candidates[best]
        self.params.init_from(sched)
        self.init_choice = {"kind": best, "train_hard": scores}
        return sched

    # ----- checkpoints ----------------------------------------------------------------

    def identity(self) -> dict:
        return run_identity(self.den, self.solver, self.order, self.nfe, self.solver_options, self.cfg,
                            self.loss_name, self.teacher_info)

    def state_dict(self) -> dict:
        return {"identity": self.identity(), "round": self.round, "count_worse": self.count_worse,
                "calls": self.calls, "evaluations": self.evaluations, "elapsed": self.elapsed,
                "history": self.history, "best": self.best, "best_ld3": self.best_ld3,
                "params": self.params.state_dict(), "opt_xi": self.opt_xi.state_dict(),
                "opt_xi_c": self.opt_xi_c.state_dict(), "coef": self.coef.u.detach(),
                "opt_coef": self.opt_coef.state_dict(), "z_train": self.z_train, "z_valid": self.z_valid}

    def load_state_dict(self, state: dict, where: str = "LD3 checkpoint") -> None:
        """Restore a run from a checkpoint, checking every field first (StateFileError names the field)."""
        f = Fields(state, where)
        check_identity(f, self.identity())
        n_steps, n_shift = self.params.xi.numel(), self.params.xi_c.numel()
        rnd = f.int("round", 0, self.total_rounds)
        count_worse, calls, elapsed = f.int("count_worse"), f.int("calls"), f.number("elapsed")
        evaluations = f.int("evaluations")
        history = f.get("history", list)
        if len(history) != rnd + 1 or not all(isinstance(h, dict) and isinstance(h.get("valid_hard"), float)
                                                 for h in history):
            raise f.error("history", f"expected {rnd + 1} round records with a 'valid_hard' loss")
        best, best_ld3 = f.sub("best"), f.sub("best_ld3")
        for rec, last in ((best, self.total_rounds), (best_ld3, self.ld3_rounds)):
            rec.number("valid_hard")
            rec.int("round", -1, last)
            rec.tensor("xi", shape=(n_steps,), floating=True, finite=True)
            rec.tensor("xi_c", shape=(n_shift,), floating=True, finite=True)
            rec.tensor("coef", shape=self.coef.u.shape, floating=True, finite=True)
        coef = f.tensor("coef", shape=self.coef.u.shape, floating=True, finite=True)
        z_train = f.tensor("z_train", shape=self.z_train.shape, floating=True, finite=True)
        z_valid = f.tensor("z_valid", shape=self.z_valid.shape, floating=True, finite=True)
        params = f.sub("params")
        for key, value in self.params.state_dict().items():
            params.tensor(key, shape=value.shape, floating=True, finite=True)
        opt_states = {}
        for key, param in (("opt_xi", self.params.xi), ("opt_xi_c", self.params.xi_c), ("opt_coef", self.coef.u)):
            opt = f.sub(key)
            for slot in opt.get("state", dict).values():
                for name, v in (slot.items() if isinstance(slot, dict) else [("?", slot)]):
                    if not isinstance(v, torch.Tensor) or (v.dim() > 0 and v.shape != param.shape):
                        raise f.error(key, f"optimizer state {name!r} does not fit the parameter {tuple(param.shape)}")
            opt_states[key] = opt.tree
        try:
            self.params.load_state_dict(params.tree)
            self.opt_xi.load_state_dict(opt_states["opt_xi"])
            self.opt_xi_c.load_state_dict(opt_states["opt_xi_c"])
            self.opt_coef.load_state_dict(opt_states["opt_coef"])
            self._set_params(self.params.xi.detach(), self.params.xi_c.detach(), coef)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise StateFileError(f"{where}: does not fit this run ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
        self.round, self.count_worse, self.calls, self.elapsed = rnd, count_worse, calls, elapsed
        self.evaluations = evaluations
        self.history, self.best, self.best_ld3 = history, best.tree, best_ld3.tree
        self.z_train, self.z_valid = z_train.to(self.z_train.dtype), z_valid.to(self.z_valid.dtype)

    def save_checkpoint(self) -> None:
        if self.out is None:
            return
        save_state(os.path.join(self.out, CHECKPOINT), CHECKPOINT_KIND, self.state_dict())

    # ----- the run --------------------------------------------------------------------

    def initial_record(self) -> dict:
        rec = {"round": -1, "phase": 0, "train_soft": float("nan"), **self.validate(), "calls": self.calls,
               "evaluations": self.evaluations}
        self._select(rec)
        return rec

    def fit(self) -> LearnResult:
        start = time.perf_counter() - self.elapsed
        if not self.history:
            self.history.append(self.initial_record())
            self.save_checkpoint()
        while self.round < self.total_rounds:
            self.history.append(self.train_round())
            self.round += 1
            self.elapsed = time.perf_counter() - start
            self.history[-1]["seconds"] = self.elapsed  # cumulative: what each phase cost
            self.save_checkpoint()
        ld3 = None
        if self.cfg.coefficients is not None:  # LD3's own result in this run, for an equal-teacher comparison
            self._set_params(self.best_ld3["xi"], self.best_ld3["xi_c"], self.best_ld3["coef"])
            ld3 = self.schedule(ld3_only=True)
        self._set_params(self.best["xi"], self.best["xi_c"], self.best["coef"])
        return LearnResult(self.schedule(), self.history, self.stats(), ld3)

    def stats(self) -> dict:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        s = {"network_calls": self.calls, "network_evaluations": self.evaluations, "seconds": self.elapsed,
             "peak_rss_mib": peak}
        if torch.cuda.is_available() and self.device.type == "cuda":
            s["peak_cuda_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return s

    def schedule(self, ld3_only: bool = False) -> Schedule:
        """The schedule at the current parameters, recorded as the selection self.best; ld3_only: as
        self.best_ld3, LD3's alone (origin "ld3", no coefficients, the cost of LD3's rounds)."""
        best = self.best_ld3 if ld3_only else self.best
        with torch.no_grad():
            t, t_eval = self.params()
        init = self.history[0]
        learned, stats = {}, self.stats()
        if ld3_only:
            last = [h for h in self.history if h["round"] < self.ld3_rounds][-1]
            stats.update(network_calls=last["calls"], network_evaluations=last["evaluations"],
                         seconds=last.get("seconds", float("nan")))
        elif self.cfg.coefficients is not None:
            ld3 = min(h["valid_hard"] for h in self.history if h["round"] < self.ld3_rounds)
            learned = {"coefficients": [c.cpu() for c in self.coef()], "coefficient_form": self.cfg.coefficients}
        return Schedule(
            t=t.cpu(), t_eval=t_eval.cpu(), noise=self.den.noise, final="t_min", solver=self.solver,
            order=self.order, variant=self.solver_options.get("variant"),
            lower_order_final=self.solver_options.get("lower_order_final"),
            guidance_scale=self.den.guidance_scale, fingerprint=self.den.fingerprint(),
            origin="ld3+coefficients" if learned else "ld3", **learned,
            metrics={"valid_hard": best["valid_hard"], "valid_soft": best["valid_soft"],
                     "valid_hard_init": init["valid_hard"], "valid_soft_init": init["valid_soft"],
                     **({"valid_hard_ld3": ld3} if learned else {}),
                     "best_round": best["round"], "loss": self.loss_name},
            info={"mode": self.cfg.mode, "teacher": self.teacher_info.get("teacher"),
                  "teacher_seed": self.teacher_info.get("seed"), "n_train": self.cfg.n_train,
                  "n_valid": self.cfg.n_valid, "seed": self.cfg.seed, "soft": self.cfg.soft,
                  "decoupled": self.cfg.decoupled, "rounds": [self.cfg.rounds_xi, self.cfg.rounds_both]
                  + ([self.cfg.rounds_coef] if learned else []),
                  **({"coef_reg": self.cfg.coef_reg, "lr_coef": self.cfg.lr_coef} if learned else {}),
                  "init": getattr(self, "init_choice", None),
                  "stats": stats})


def run_identity(den, solver, order, nfe, options, cfg, loss_name, teacher_info) -> dict:
    """What a checkpoint must match to be resumed by this run."""
    return {"solver": solver, "order": order, "nfe": nfe, "options": options, "fingerprint": den.fingerprint(),
            "config": dataclasses.asdict(cfg), "loss": loss_name, "teacher": teacher_info}


def check_identity(f: Fields, mine: dict) -> None:
    theirs = f.get("identity", dict)
    diff = [k for k in mine if mine[k] != theirs.get(k)]
    if diff:
        raise StateFileError(f"{f.where}: belongs to another run (differs in {', '.join(diff)}); remove it or "
                             f"start without --resume")


def _teacher_source(den, teacher, shape, n, seed, out, cond):
    """(TeacherData or None, TeacherSpec or None, the teacher's info) without making or writing anything."""
    if isinstance(teacher, TeacherData):
        return teacher, None, teacher.info
    if isinstance(teacher, (str, os.PathLike)):
        data = TeacherData.load(teacher)
        return data, None, data.info
    spec = TeacherSpec(**teacher) if isinstance(teacher, dict) else (teacher or TeacherSpec.default_for(den.noise))
    if not isinstance(spec, TeacherSpec):
        raise InvalidArgumentType(f"teacher must be a TeacherSpec, a dict of its fields, TeacherData or a file path, "
                                  f"got {type(teacher).__name__}")
    path = None if out is None else os.path.join(out, TEACHER_FILE)
    if path and os.path.isfile(path):
        data = TeacherData.load(path)
        if data.info == teacher_info(den, spec, shape, len(data), seed, cond) and len(data) >= n:
            return data, spec, data.info
    return None, spec, teacher_info(den, spec, shape, n, seed, cond)


def learn(den: Denoiser, *, solver: str, order: int | None = None, nfe: int, shape, mode: str = "lambda",
          teacher=None, n_train: int | None = None, n_valid: int | None = None, loss="pseudo_huber", decoder=None,
          cond=None,
          init: Schedule | str | None = None, out: str | None = None, resume: bool = False, seed: int = 0,
          checkpoint_calls: bool = False, show_progress: bool = True, config: LD3Config | None = None,
          coefficients: bool | str = False, heldout: int | None = None, **solver_options) -> LearnResult:
    """Learn a schedule (t and t_eval) for one model, solver, order and nfe with LD3.

    shape: of one sample (e.g. (1, 8, 8)). teacher: a TeacherSpec (default TeacherSpec.default_for the
    noise schedule: UniPC-3, 20 steps, EDM rho = 7, the paper's; for a flow 40 time-quadratic steps), a
    dict of its fields, TeacherData, or the path of a saved teacher file.
    n_train, n_valid: teacher pairs to learn from and to select the best round with; None: 50 + 50 (LD3,
    the paper's) or, with coefficients, 200 + 100 (COEFFICIENT_PAIRS: more weights need more pairs).
    cond: conditions (a tensor, or a tuple / dict of tensors such as den.encode_prompt(prompts)), or a
    callable (n, generator) -> such. With one row per pair (n_train + n_valid) they are used in
    order; with P rows otherwise, training pairs cycle over the first P_train of them and validation
    pairs over the rest (P_train in proportion to n_train, validation conditions disjoint from the
    training ones when P > 1): teacher.pair_conditions; schedule.info["conditions"] records the split.
    loss: "pseudo_huber" (default) | "l2" | "l1" | "lpips" | callable (x, y) -> [B]. The paper's
    default, LPIPS, needs downloaded weights; of the rest, pseudo-Huber matched the held-out teacher
    best on the built-in model (benchmarks/results/ld3_summary.md: L2 is worse at NFE 4 and 6). decoder: applied to
    student and teacher samples before the distance (latent models).
    init: None (uniform in the mode's coordinate, the paper's start), a Schedule to start from, or
    "best": the hand-made schedule (ldd_fast.schedule.hand_made: the KINDS, and for a flow the
    flow-matching grid at several shifts) with the lowest loss on the training pairs.
    out: folder for the teacher pairs, a checkpoint after every round (resume=True continues
    an interrupted run), the schedule and its plots. solver_options: variant, lower_order_final.
    coefficients: False (LD3: times only), or the learned solver: after LD3's rounds, config.rounds_coef
    more rounds learn corrections of the solver's weights on denoiser outputs jointly with the times,
    zero-sum per update so the solver stays exact for a constant denoiser; the best round on the
    validation pairs wins, LD3's included. "exact": on the outputs the base solver buffers; "generalized"
    (dpmpp, unipc, ipndm): on every earlier output (GAS's generalized solver); "relaxed": as exact plus a
    scale of each update's total weight; True: DEFAULT_COEFFICIENT_FORM (generalized; exact for euler and
    heun), the form that measured best at NFE <= 4. The schedule then carries `coefficients` (format
    version 2; 3 for generalized); result.ld3_schedule (out/ld3_schedule.json) is the best of LD3's rounds
    in the same run.
    heldout: extra teacher pairs that neither training nor selection sees (seeds seed + 1,000,003 on, the
    same teacher), scored once at the end for the result and LD3's round: schedule.metrics
    "heldout_hard" / "heldout_hard_ld3", the validation -> held-out gap. None: HELDOUT_PAIRS (16) with
    coefficients, 0 without. With a teacher given as data, the pairs after n_train + n_valid serve
    (up to `heldout`); with conditions (cond) none are made.
    mode: "lambda" (the paper's choice for pixel models), "time" (latent models), or "auto": learn
    both (in out/lambda and out/time) and keep the one with the lower validation hard loss; the
    result's history is the winner's, schedule.info["mode_selection"] records both losses.
    """
    _check_learn_arguments(den, solver, order, nfe, shape, mode, teacher, n_train, n_valid, loss, decoder, cond, init,
                           out, resume, seed, checkpoint_calls, show_progress, config, coefficients, solver_options)
    if heldout is not None:
        integer(heldout, "heldout", 0)
    if out is not None:
        out = os.fspath(out)
        if os.path.exists(out) and not os.path.isdir(out):
            raise NotADirectoryError(f"the LD3 work folder {out} exists and is not a folder")
    if mode == "auto":
        runs = {}
        for m in MODES:
            sub = None if out is None else os.path.join(out, m)
            runs[m] = learn(den, solver=solver, order=order, nfe=nfe, shape=shape, mode=m, teacher=teacher,
                            n_train=n_train, n_valid=n_valid, loss=loss, decoder=decoder, cond=cond, init=init,
                            out=sub, resume=resume, seed=seed, checkpoint_calls=checkpoint_calls,
                            show_progress=show_progress, config=config, coefficients=coefficients,
                            heldout=heldout, **solver_options)
        best = min(runs, key=lambda m: runs[m].schedule.metrics["valid_hard"])
        result = runs[best]
        result.schedule.info["mode_selection"] = {m: r.schedule.metrics["valid_hard"] for m, r in runs.items()}
        if out is not None:
            result.schedule.save(os.path.join(out, "schedule.json"))
        return result
    coefficients = coefficient_form_for(solver, coefficients)
    learned = bool(coefficients or (config and config.coefficients))
    if heldout is None:
        heldout = HELDOUT_PAIRS if learned else 0
    pairs = COEFFICIENT_PAIRS if learned else LD3_PAIRS
    n_train = pairs[0] if n_train is None else n_train
    n_valid = pairs[1] if n_valid is None else n_valid
    cfg = dataclasses.replace(config or LD3Config(), mode=mode, n_train=n_train, n_valid=n_valid, seed=seed,
                              coefficients=coefficients if coefficients is not None else (config or LD3Config()).coefficients)
    cfg.validate()
    split = None
    if callable(cond):  # drawn now (as make_teacher draws it), so that the pairs' identity includes it
        cond = cond(n_train + n_valid, torch.Generator().manual_seed(int(seed) + 1))
    if cond is not None and not isinstance(teacher, (TeacherData, str, os.PathLike)):
        cond, split = pair_conditions(cond, n_train, n_valid)
    ckpt = None if out is None else os.path.join(out, CHECKPOINT)
    if out is not None:
        if os.path.isfile(ckpt) and not resume:
            raise FileExistsError(f"{ckpt} exists from an earlier run: pass resume=True (--resume) to continue it, "
                                  "or remove it to start over")
        old = [name for name in OLD_FILES if os.path.isfile(os.path.join(out, name))]
        if old:
            warnings.warn(f"{out}: {', '.join(old)} from an older ldd-fast (pickle format) are never read; this "
                          f"run starts over. Remove them.", stacklevel=2)
    # LD3 needs a deterministic network (eval mode) and no gradients for its weights.
    den.eval()
    frozen = [(p, p.requires_grad) for p in den.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        result = _learn(den, solver, order, nfe, shape, cfg, teacher, loss, decoder, cond, init, out, resume,
                        ckpt, checkpoint_calls, show_progress, solver_options, heldout)
        if split is not None:
            result.schedule.info["conditions"] = split
            if out is not None:
                result.schedule.save(os.path.join(out, "schedule.json"))
        return result
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)


def _check_learn_arguments(den, solver, order, nfe, shape, mode, teacher, n_train, n_valid, loss, decoder, cond, init,
                           out, resume, seed, checkpoint_calls, show_progress, config, coefficients, solver_options):
    """Every argument of learn, before a teacher is made or a file is touched (a wrong one fails in
    milliseconds, not after minutes of work)."""
    if not isinstance(den, Denoiser):
        raise InvalidArgumentType(f"expected an ldd_fast Denoiser, got {type(den).__name__}")
    unknown = set(solver_options) - {"variant", "lower_order_final"}
    if unknown:
        raise InvalidArgumentType(f"unknown solver option(s) {sorted(unknown)}; known: variant, lower_order_final")
    solvers.steps_for_nfe(solver, nfe)
    solvers.resolve_options(solver, order, nfe, solver_options)
    shape_of(shape, "shape")
    string(mode, "mode")
    if mode not in MODES + ("auto",):
        raise InvalidArgument(f"mode must be one of {MODES + ('auto',)}, got {mode!r}")
    if teacher is not None and not isinstance(teacher, (TeacherSpec, dict, TeacherData, str, os.PathLike)):
        raise InvalidArgumentType(f"teacher must be a TeacherSpec, a dict of its fields, TeacherData or a file path, "
                                  f"got {type(teacher).__name__}")
    for name, v in (("n_train", n_train), ("n_valid", n_valid)):
        if v is not None:
            integer(v, name, 1)
    if not callable(loss) and not isinstance(loss, str):
        raise InvalidArgumentType(f"loss must be a loss name or a callable f(x, y) -> [B], got {type(loss).__name__}")
    callable_or_none(decoder, "decoder")
    if cond is not None and not callable(cond) and not is_cond(cond):
        raise ConditionError(f"cond must be a tensor, a tuple / dict of tensors or a callable (n, generator) -> such, "
                             f"got {type(cond).__name__}")
    if init is not None and not isinstance(init, (Schedule, str)):
        raise InvalidArgumentType(f"init must be a Schedule, None or 'best', got {type(init).__name__}")
    if isinstance(init, str) and init != "best":
        raise InvalidArgument(f"init must be a Schedule, None or 'best', got {init!r}")
    if out is not None:
        path_like(out, "out")
    for name, v in (("resume", resume), ("checkpoint_calls", checkpoint_calls), ("show_progress", show_progress)):
        boolean(v, name)
    integer(seed, "seed")
    if config is not None and not isinstance(config, LD3Config):
        raise InvalidArgumentType(f"config must be an LD3Config or None, got {type(config).__name__}")
    if not isinstance(coefficients, (bool, str)):
        raise InvalidArgumentType(f"coefficients must be False, True or one of {solvers.COEFFICIENT_FORMS}, got "
                                  f"{type(coefficients).__name__}")
    if isinstance(coefficients, str) and coefficients not in solvers.COEFFICIENT_FORMS:
        raise InvalidArgument(f"coefficients must be False, True or one of {solvers.COEFFICIENT_FORMS}, "
                              f"got {coefficients!r:.40}")
    coefficient_form_for(solver, coefficients)


def coefficient_form_for(solver: str, coefficients) -> str | None:
    """learn()'s `coefficients` as an LD3Config.coefficients: None (LD3), or a form this solver has."""
    if coefficients is False:
        return None
    if coefficients is True:
        return DEFAULT_COEFFICIENT_FORM if solver in solvers.GENERALIZED_SOLVERS else "exact"
    string(coefficients, "coefficients", solvers.COEFFICIENT_FORMS)
    if coefficients == "generalized" and solver not in solvers.GENERALIZED_SOLVERS:
        raise InvalidArgument(f"coefficients='generalized': solver {solver!r} has no generalized form (it buffers no "
                              f"history of outputs; {', '.join(solvers.GENERALIZED_SOLVERS)} do); use True, 'exact' "
                              "or 'relaxed'")
    return coefficients


def _heldout_pairs(den, data, spec, shape, n: int, cfg, cond, show_progress):
    """The held-out pairs (learn's `heldout`), or None where there are none to score."""
    need = cfg.n_train + cfg.n_valid
    if n == 0:
        return None
    if spec is None:  # teacher data given: the pairs after training and validation, if any
        return data.subset(slice(need, need + n)) if len(data) > need else None
    if cond is not None:
        return None
    return make_teacher(den, shape, n, spec=spec, seed=cfg.seed + HELDOUT_SEED_OFFSET, show_progress=show_progress)


def _score_heldout(trainer, result: LearnResult, pairs) -> None:
    """metrics heldout_hard (and heldout_hard_ld3) of the result's schedules on the held-out pairs."""
    from .sample import sample

    z = pairs.z.to(trainer.device, trainer.dtype)
    y = trainer._decoded(pairs.y)
    cond = trainer._cond(pairs, torch.arange(len(pairs)))
    scores = {}
    for key, sched in (("heldout_hard", result.schedule), ("heldout_hard_ld3", result.ld3_schedule)):
        if sched is not None:
            with torch.no_grad():
                x = sample(trainer.den, z, sched, cond=cond)
                scores[key] = trainer.dist(x if trainer.decoder is None else trainer.decoder(x), y).mean().item()
    result.schedule = result.schedule.replace(metrics={**result.schedule.metrics, **scores},
                                              info={**result.schedule.info, "heldout_pairs": len(pairs)})
    if result.ld3_schedule is not None:
        result.ld3_schedule = result.ld3_schedule.replace(
            metrics={**result.ld3_schedule.metrics, "heldout_hard": scores["heldout_hard_ld3"]},
            info={**result.ld3_schedule.info, "heldout_pairs": len(pairs)})


def _learn(den, solver, order, nfe, shape, cfg, teacher, loss, decoder, cond, init, out, resume, ckpt,
           checkpoint_calls, show_progress, solver_options, heldout=0) -> LearnResult:
    if isinstance(init, str) and init != "best":
        raise InvalidArgument(f"init must be a Schedule, None or 'best', got {init!r}")
    n = cfg.n_train + cfg.n_valid
    data, spec, info = _teacher_source(den, teacher, shape, n, cfg.seed, out, cond)
    state = None
    if resume and ckpt and os.path.isfile(ckpt):
        # Checked before anything is made or written: a refused resume leaves the folder as it was.
        state = load_state(ckpt, CHECKPOINT_KIND)
        order_, options = solvers.resolve_options(solver, order, nfe, solver_options)
        loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "callable")
        check_identity(Fields(state, f"{CHECKPOINT_KIND} file {ckpt}"),
                       run_identity(den, solver, order_, nfe, options, cfg, loss_name, info))
    if out is not None:
        os.makedirs(out, exist_ok=True)
    if data is None:
        data = make_teacher(den, shape, n, spec=spec, seed=cfg.seed, cond=cond, show_progress=show_progress)
        if out is not None:
            data.save(os.path.join(out, TEACHER_FILE))
    trainer = LD3Trainer(den, solver=solver, order=order, nfe=nfe, teacher=data, config=cfg, loss=loss,
                         decoder=decoder, init=None if isinstance(init, str) else init, out=out,
                         checkpoint_calls=checkpoint_calls, show_progress=show_progress, **solver_options)
    if init == "best":
        init = trainer.choose_init()
    if state is not None:
        trainer.load_state_dict(state, where=f"{CHECKPOINT_KIND} file {ckpt}")
    result = trainer.fit()
    pairs = _heldout_pairs(den, data, spec, shape, heldout, cfg, cond, show_progress)
    if pairs is not None:
        _score_heldout(trainer, result, pairs)
    if out is not None:
        result.schedule.save(os.path.join(out, "schedule.json"))
        if result.ld3_schedule is not None:
            result.ld3_schedule.save(os.path.join(out, LD3_SCHEDULE_FILE))
        try:
            from .plots import plot_learning
            plot_learning(result, init_schedule=init, out=out, model=den)
        except ImportError:
            pass
    return result
