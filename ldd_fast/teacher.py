"""Teacher data for LD3: seeded pairs (z, y = teacher sampler(z)) with their conditions.

The noise of pair i depends only on (seed, i), so the pairs are the same whether they are
made in one process or sharded over a torch.distributed group (gloo on CPU, nccl on GPU):
each rank solves the pairs i = rank, rank + world, ... and the results are all-gathered.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch

from . import solvers
from .cond import batch_size as cond_rows, digest, is_cond, leaves, map_cond
from .denoiser import Denoiser
from .errors import (ConditionError, InvalidArgument, InvalidArgumentType, boolean, device_of, dtype_of, integer,
                     shape_of, string)
from .noise import RectifiedFlow
from .io import Fields, load_state, save_state
from .progress import progress
from .sample import plan_for, run_plan
from .schedule import FLOW_KINDS, KIND_ALIASES, KINDS, discretize

KIND = "teacher pairs"


@dataclass(frozen=True)
class TeacherSpec:
    """How teacher samples are made: the paper's default is UniPC-3, 20 steps, EDM rho = 7.

    lower_order_final: None is the solver's default (on below 15 steps).
    """
    solver: str = "unipc"
    order: int = 3
    nfe: int = 20
    kind: str = "edm"
    final: str = "t_min"
    lower_order_final: bool | None = None

    def __post_init__(self):
        # Checked when made: a spec is compared and stored with the pairs long before it is used.
        spec = solvers.get_solver(self.solver)
        solvers.resolve_order(spec, self.order)
        solvers.steps_for_nfe(self.solver, self.nfe)
        string(self.kind, "kind", KINDS + FLOW_KINDS + tuple(KIND_ALIASES))
        string(self.final, "final", solvers.FINALS)
        solvers.check_option_types(lower_order_final=self.lower_order_final)

    @classmethod
    def default_for(cls, noise) -> "TeacherSpec":
        """The default teacher of a noise schedule: the paper's for diffusion models. For a rectified flow,
        UniPC-3 with 40 time-quadratic steps and lower-order final steps: measured on digits_flow against an
        800-step consensus, the paper's teacher is off by RMSE 0.08-0.11 there (the EDM grid spends its steps
        where a flow's path is easy; at 20 steps and above lower_order_final is off, and the last step from
        t ~ 0.05 to t_min = 1e-3 is a large jump in lambda), as much as the low-NFE errors LD3 is meant to
        remove; this one is off by 0.004 (20 time-quadratic steps: 0.010)."""
        if isinstance(noise, RectifiedFlow):
            return cls(nfe=40, kind="time_quadratic", lower_order_final=True)
        return cls()

    def describe(self) -> dict:
        d = asdict(self)
        if d["lower_order_final"] is None:
            del d["lower_order_final"]  # the solver's default: descriptions of earlier teachers stay valid
        return d


@dataclass
class TeacherData:
    z: torch.Tensor               # unit-normal noise, [n, *shape]
    y: torch.Tensor               # teacher samples, [n, *shape]
    cond: object                  # per-pair condition (a tensor or a tuple / dict of them), or None
    info: dict                    # spec, seed, model fingerprint, guidance, null condition

    def __len__(self):
        return self.z.shape[0]

    def subset(self, idx) -> "TeacherData":
        cond = None if self.cond is None else map_cond(lambda c: c[idx], self.cond)
        return TeacherData(self.z[idx], self.y[idx], cond, self.info)

    def save(self, path) -> None:
        save_state(path, KIND, {"z": self.z, "y": self.y, "cond": self.cond, "info": self.info})

    @classmethod
    def load(cls, path) -> "TeacherData":
        """Read a teacher file, checking every field (a StateFileError names the file and the field)."""
        path = os.fspath(path)
        f = Fields(load_state(path, KIND), f"{KIND} file {path}")
        z = f.tensor("z", floating=True, finite=True)
        if z.dim() < 2 or z.shape[0] < 1:
            raise f.error("z", f"expected [n, *sample_shape] with n >= 1, got shape {tuple(z.shape)}")
        y = f.tensor("y", shape=z.shape, floating=True, finite=True)
        cond = f.get("cond", (torch.Tensor, tuple, list, dict), optional=True)
        if cond is not None:
            if not is_cond(cond) or cond_rows(cond) != z.shape[0]:
                raise f.error("cond", f"expected one condition per pair ({z.shape[0]}) in every tensor")
            if any(c.is_floating_point() and not torch.isfinite(c).all() for c in leaves(cond)):
                raise f.error("cond", "holds NaN or inf")
        info = f.sub("info")
        n = info.int("n", 1)
        shape = info.get("shape", list)
        if n != z.shape[0] or shape != list(z.shape[1:]):
            raise f.error("info", f"says n={n}, shape={shape}, but z has shape {tuple(z.shape)}")
        info.get("teacher", dict)
        info.int("seed", -2**63, 2**63 - 1)
        info.get("fingerprint", str)
        return cls(z.float(), y.float(), cond, dict(info.tree))


def noise_for(n: int, shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((n, *shape), generator=g)


def _rank_world():
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def make_teacher(den: Denoiser, shape, n: int, *, spec: TeacherSpec | None = None, seed: int = 0, cond=None,
                 batch_size: int = 64, device=None, dtype=torch.float32, show_progress: bool = True) -> TeacherData:
    """Solve n seeded noises with the teacher sampler; sharded over a torch.distributed group if one is set up.

    cond: None, one condition per pair (a tensor [n, ...] or a tuple / dict of them), or a callable
    (n, generator) -> such a condition.
    """
    if not isinstance(den, Denoiser):
        raise InvalidArgumentType(f"expected an ldd_fast Denoiser, got {type(den).__name__}")
    if spec is not None and not isinstance(spec, TeacherSpec):
        raise InvalidArgumentType(f"spec must be a TeacherSpec or None, got {type(spec).__name__}")
    spec = spec or TeacherSpec.default_for(den.noise)
    if integer(n, "n") < 1:
        raise InvalidArgument(f"n must be positive, got {n}")
    if integer(batch_size, "batch_size") < 1:
        raise InvalidArgument(f"batch_size must be positive, got {batch_size}")
    shape = shape_of(shape, "shape")
    integer(seed, "seed")
    device = device_of(device)
    dtype_of(dtype, "dtype", (torch.float32, torch.float64))  # run_plan's solver dtypes
    boolean(show_progress, "show_progress")
    if cond is not None and not callable(cond) and not is_cond(cond):
        raise ConditionError(f"cond must hold one condition per pair ({n}), got {type(cond).__name__}")
    z = noise_for(n, shape, seed)
    if callable(cond):
        cond = cond(n, torch.Generator().manual_seed(int(seed) + 1))
    if cond is not None and (not is_cond(cond) or cond_rows(cond) != n):
        got = [tuple(c.shape) for c in leaves(cond)] if is_cond(cond) else type(cond).__name__
        raise ConditionError(f"cond must hold one condition per pair ({n}), got {got}")
    sched = discretize(den.noise, spec.nfe, spec.kind, solver=spec.solver, final=spec.final)
    options = {} if spec.lower_order_final is None else {"lower_order_final": spec.lower_order_final}
    plan = plan_for(den, sched, solver=spec.solver, order=spec.order, **options)
    rank, world = _rank_world()
    mine = torch.arange(rank, n, world)
    device = device or next((p.device for p in den.parameters()), torch.device("cpu"))
    out = []
    with torch.no_grad():
        for start in progress(range(0, len(mine), batch_size), desc=f"teacher {spec.solver}{spec.order} "
                              f"nfe={spec.nfe}", disable=not show_progress or rank != 0):
            idx = mine[start:start + batch_size]
            c = None if cond is None else map_cond(lambda v: v[idx].to(device), cond)
            out.append(run_plan(plan, den, z[idx].to(device, dtype), c).float().cpu())
    y_mine = torch.cat(out) if out else torch.empty((0, *shape))
    if world > 1:
        parts = [None] * world
        torch.distributed.all_gather_object(parts, (mine, y_mine))
        y = torch.empty((n, *shape))
        for idx, part in parts:
            y[idx] = part
    else:
        y = y_mine
    cond = None if cond is None else map_cond(lambda v: v.cpu(), cond)
    return TeacherData(z, y, cond, teacher_info(den, spec, shape, n, seed, cond))


def teacher_info(den: Denoiser, spec: TeacherSpec, shape, n: int, seed: int, cond=None) -> dict:
    """What identifies a set of teacher pairs (stored with them, compared before they are reused)."""
    return {"teacher": spec.describe(), "seed": int(seed), "n": int(n), "shape": [int(s) for s in shape],
            "fingerprint": den.fingerprint(), "guidance_scale": den.guidance_scale,
            "null_cond_sha256": None if den.null_cond is None else digest(den.null_cond),
            "cond_sha256": None if cond is None or callable(cond) else digest(cond)}


def pair_conditions(cond, n_train: int, n_valid: int):
    """One condition per teacher pair from P conditions (e.g. P encoded prompts), and how they were split.

    P == n_train + n_valid: one each, in order (the training pairs first). Otherwise the first
    P_train = round(P n_train / (n_train + n_valid)) conditions (at least 1, and at most P - 1 so that
    validation sees conditions training never saw) serve the training pairs in turn, the rest the
    validation pairs in turn. P == 1: every pair shares it (validation is then not condition-disjoint).
    """
    n = n_train + n_valid
    p = cond_rows(cond) if is_cond(cond) else None
    if p is None:
        raise ConditionError("cond must be a tensor (or a tuple / dict of tensors) with one row per condition")
    if p == n:
        return cond, {"conditions": p, "train": n_train, "valid": n_valid, "disjoint": True}
    if p == 1:
        idx = torch.zeros(n, dtype=torch.long)
        p_train = 1
    else:
        p_train = min(p - 1, max(1, round(p * n_train / n)))
        idx = torch.cat([torch.arange(n_train) % p_train, p_train + torch.arange(n_valid) % (p - p_train)])
    split = {"conditions": p, "train": p_train, "valid": p - p_train if p > 1 else 1, "disjoint": p > 1}
    return map_cond(lambda c: c[idx.to(c.device)], cond), split
