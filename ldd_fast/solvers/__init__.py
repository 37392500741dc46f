"""Solver registry: name -> how a schedule compiles into a Plan.

| name  | orders | default | layout    |
|-------|--------|---------|-----------|
| euler | 1      | 1       | multistep |
| heun  | 2      | 2       | heun      |
| dpmpp | 1-3    | 2       | multistep |
| unipc | 1-3    | 3       | multistep |
| ipndm | 1-4    | 4       | multistep |

Multistep layout: nfe steps, nfe + 1 times, calls at t[0..nfe-1].
Heun layout: nfe = 2K - 1 calls for K steps over K + 1 times.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from . import dpmpp, euler, heun, ipndm, unipc
from ..errors import InvalidArgument, InvalidArgumentType, optional_boolean, string
from ..noise import NoiseSchedule

FINALS = ("t_min", "zero")
LOWER_ORDER_FINAL_BELOW = 15  # steps; diffusers' threshold


@dataclass(frozen=True)
class SolverSpec:
    name: str
    orders: tuple[int, ...]
    default_order: int
    layout: str
    build: Callable
    variants: tuple[str, ...] = ()
    options: tuple[str, ...] = field(default=("final",))

    @property
    def default_variant(self):
        return self.variants[-1] if self.name == "unipc" else (self.variants[0] if self.variants else None)


SOLVERS = {
    "euler": SolverSpec("euler", (1,), 1, "multistep", euler.plan),
    "heun": SolverSpec("heun", (2,), 2, "heun", heun.plan),
    "dpmpp": SolverSpec("dpmpp", (1, 2, 3), 2, "multistep", dpmpp.plan, dpmpp.VARIANTS,
                        ("final", "lower_order_final", "variant")),
    "unipc": SolverSpec("unipc", (1, 2, 3), 3, "multistep", unipc.plan, unipc.VARIANTS,
                        ("final", "lower_order_final", "variant")),
    "ipndm": SolverSpec("ipndm", (1, 2, 3, 4), 4, "multistep", ipndm.plan, (),
                        ("final", "lower_order_final")),
}


def get_solver(name: str) -> SolverSpec:
    if not isinstance(name, str):
        raise InvalidArgumentType(f"solver must be a solver name ({', '.join(SOLVERS)}), got {type(name).__name__} "
                                  f"{name!r:.40}")
    if name not in SOLVERS:
        raise InvalidArgument(f"unknown solver {name!r}; available: {', '.join(SOLVERS)}")
    return SOLVERS[name]


def check_option_types(*, final=None, lower_order_final=None, variant=None) -> None:
    """The types of the solver options, checked before any of them is compared or used: every entry point
    (plan_for, hence lf.sample, lf.Sampler and the exporters; resolve_options and make_plan, hence
    lf.learn) calls this. A string such as "no" for lower_order_final would otherwise be truthy."""
    optional_boolean(lower_order_final, "lower_order_final")
    for name, v in (("final", final), ("variant", variant)):
        if v is not None and not isinstance(v, str):
            raise InvalidArgumentType(f"{name} must be a string or None, got {type(v).__name__} {v!r:.40}")


def resolve_order(spec: SolverSpec, order: int | None) -> int:
    if order is None:
        return spec.default_order
    if isinstance(order, bool) or not isinstance(order, int):
        raise InvalidArgumentType(f"order must be an int (solver {spec.name!r} supports orders {list(spec.orders)}), "
                                  f"got {type(order).__name__} {order!r:.40}")
    if order not in spec.orders:
        raise InvalidArgument(f"solver {spec.name!r} supports orders {list(spec.orders)}, got order={order!r}")
    return order


def resolve_variant(spec: SolverSpec, variant: str | None) -> str | None:
    if variant is None:
        return spec.default_variant
    check_option_types(variant=variant)
    if variant not in spec.variants:
        allowed = list(spec.variants) or "none"
        raise InvalidArgument(f"solver {spec.name!r} has variants {allowed}, got variant={variant!r}")
    return variant


def resolve_options(solver: str, order: int | None, nfe: int, options: dict) -> tuple[int, dict]:
    """The order and the full solver options a plan uses: the defaults make_plan fills in, filled in here."""
    spec = get_solver(solver)
    order = resolve_order(spec, order)
    options = dict(options)
    check_option_types(**{k: v for k, v in options.items() if k in ("final", "lower_order_final", "variant")})
    if "lower_order_final" in spec.options and options.get("lower_order_final") is None:
        options["lower_order_final"] = steps_for_nfe(solver, nfe) < LOWER_ORDER_FINAL_BELOW
    if "variant" in spec.options:
        options["variant"] = resolve_variant(spec, options.get("variant"))
    return order, options


def steps_for_nfe(solver: str, nfe: int) -> int:
    """Number of solver steps (len(t) - 1) that spend exactly nfe network calls."""
    spec = get_solver(solver)
    if isinstance(nfe, bool) or not isinstance(nfe, int):
        raise InvalidArgumentType(f"nfe must be a positive integer, got {type(nfe).__name__} {nfe!r:.40}")
    if nfe < 1:
        raise InvalidArgument(f"nfe must be a positive integer, got {nfe!r}")
    if spec.layout == "heun":
        if nfe % 2 == 0:
            raise InvalidArgument("heun needs an odd nfe = 2K - 1 (K steps, the last without correction), got "
                                  f"nfe={nfe}")
        return (nfe + 1) // 2
    return nfe


def default_t_eval(solver: str, t: torch.Tensor) -> torch.Tensor:
    """Network times when they are not learned: the step starts (and Heun's stage ends), in call order."""
    if get_solver(solver).layout == "heun":
        k = len(t) - 1
        idx = [0] + [j for i in range(1, k) for j in (i, i)]
        return t[idx]
    return t[:-1]


def layout_matches(solver: str, n_times: int, nfe: int) -> bool:
    spec = get_solver(solver)
    if spec.layout == "heun":
        return nfe % 2 == 1 and n_times == (nfe + 1) // 2 + 1
    return n_times == nfe + 1


COEFFICIENT_FORMS = ("exact", "relaxed", "generalized")
# The generalized form weights every earlier output a solver buffers: the multistep solvers' history.
# Euler buffers nothing and Heun's two slopes belong to one step, so they keep the exact and relaxed forms.
GENERALIZED_SOLVERS = ("dpmpp", "unipc", "ipndm")


def make_plan(noise, t: torch.Tensor, t_eval: torch.Tensor, *, solver: str, order: int | None = None,
              final: str = "t_min", lower_order_final: bool | None = None, variant: str | None = None,
              coefficients=None, coefficient_form: str = "exact"):
    """Compile solver times t (len n + 1) and network times t_eval into a Plan.

    coefficients: learned corrections of the solver's weights on buffered denoiser outputs, one 1-D
    float64 tensor (or list) per call, as many values as `plan.free` says (PlanBuilder.correct);
    None: the base solver. coefficient_form: "exact" (zero-sum corrections: the solver stays exact for
    a constant denoiser), "relaxed" (one more value per update: a scale of its total weight) or
    "generalized" (dpmpp, unipc, ipndm: the history keeps every earlier output and each update's zero-sum
    correction spans all of them, as GAS's generalized solver; exact for a constant denoiser).
    """
    spec = get_solver(solver)
    order = resolve_order(spec, order)
    check_option_types(final=final, lower_order_final=lower_order_final, variant=variant)
    if not isinstance(noise, NoiseSchedule):
        raise InvalidArgumentType(f"noise must be a NoiseSchedule, got {type(noise).__name__}")
    for name, v in (("t", t), ("t_eval", t_eval)):
        if not isinstance(v, torch.Tensor) or v.dim() != 1 or not v.is_floating_point():
            what = f"a {v.dtype} tensor of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
            raise InvalidArgumentType(f"{name} must be a 1-D floating-point tensor of times, got {what}")
    if final not in FINALS:
        raise InvalidArgument(f"final must be one of {FINALS}, got {final!r}")
    if not layout_matches(solver, len(t), len(t_eval)):
        raise InvalidArgument(f"solver {solver!r}: {len(t)} times and {len(t_eval)} eval times do not fit its "
                              f"{spec.layout} layout (multistep: nfe + 1 times; heun: (nfe + 1) / 2 + 1 times, nfe "
                              "odd)")
    kwargs = {"order": order, "final": final}
    if "lower_order_final" in spec.options:
        n = len(t) - 1
        kwargs["lower_order_final"] = (n < LOWER_ORDER_FINAL_BELOW) if lower_order_final is None \
            else lower_order_final
    elif lower_order_final is not None:
        raise InvalidArgument(f"solver {solver!r} takes no lower_order_final option")
    if "variant" in spec.options:
        kwargs["variant"] = resolve_variant(spec, variant)
    elif variant is not None:
        raise InvalidArgument(f"solver {solver!r} has no variants, got variant={variant!r}")
    string(coefficient_form, "coefficient_form", COEFFICIENT_FORMS)
    if coefficient_form == "generalized" and solver not in GENERALIZED_SOLVERS:
        raise InvalidArgument(f"solver {solver!r} has no generalized coefficient form (it buffers no history of "
                              f"outputs; {', '.join(GENERALIZED_SOLVERS)} do): use 'exact' or 'relaxed'")
    if coefficients is not None:
        if not isinstance(coefficients, (list, tuple)) or not all(
                isinstance(c, (torch.Tensor, list, tuple)) for c in coefficients):
            raise InvalidArgumentType(f"coefficients must be a list of 1-D tensors or lists (one per network call), "
                                      f"got {type(coefficients).__name__}")
        if len(coefficients) != len(t_eval):
            raise InvalidArgument(f"coefficients: {len(coefficients)} lists for {len(t_eval)} network calls")
        coefficients = [c if isinstance(c, torch.Tensor) else torch.tensor(c, dtype=torch.float64).reshape(-1)
                        for c in coefficients]
    return spec.build(noise, t, t_eval, corrections=coefficients, coefficient_form=coefficient_form,
                      **kwargs)
