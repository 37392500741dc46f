"""What every command shares: the parser class, argument types, the common argument groups, and the
rules of options that need (or exclude) another option.

A command module declares its rules in one table, `RULES`, of `needs(...)` / `excludes(...)`
entries; `check_rules` reads it against the options the user actually wrote (not argparse's
defaults), so an option that cannot take effect is one line naming both options.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import NamedTuple

from ..errors import LddFastError
from ..solvers import SOLVERS

FLOW_KINDS = ("flowmatch", "flux")  # the flow-matching pipelines' grids: rectified flows only
# Hand-made schedules by name; "pipeline" is a pipeline scheduler's own grid and solver.
KIND_CHOICES = ("time_uniform", "time_quadratic", "logsnr", "edm", "karras", *FLOW_KINDS, "pipeline")
DEFAULT_NFE = 6  # the hand-made schedules' NFE when --nfe is not given
BUILTIN = ("digits", "digits_vp", "digits_flow")
SEED_MAX = 2**63 - 1


class CLIError(LddFastError):
    """A one-line, user-facing error of the command line."""


class Parser(argparse.ArgumentParser):
    """argparse with errors raised as one-line CLIErrors (main prints them; exit status 2)."""

    def error(self, message):
        # argparse quotes what the user typed: an argument holding a line break stays on the one line
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        raise CLIError(f"{message} (see `{self.prog} --help`)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every default in --help: appended as "(default: X)" unless the help text already says it, or the
    option is a flag (off) or has no value by default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS))
                or not action.option_strings):
            return text
        return super()._get_help_string(action)


def check_folder(path: str, flag: str) -> None:
    """An output folder may be missing (it is made) but not a file."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIError(f"{flag} {path}: exists and is not a folder")


# ----- argument types ------------------------------------------------------------------------------

def int_in(lo: int, hi: int | None = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {'>= ' + str(lo) if hi is None else f'in [{lo}, {hi}]'}, "
                                             f"got {v}")
        return v
    parse.__name__ = "int"
    return parse


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return v


def backend_list(known):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(b.strip() for b in text.split(",") if b.strip())
        bad = [b for b in names if b not in known]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown backend(s) {bad or text!r}; choose from {','.join(known)}")
        return names
    parse.__name__ = "backends"
    return parse


POSITIVE = int_in(1)
SEED = int_in(0, SEED_MAX)


# ----- argument groups ---------------------------------------------------------------------------

def model_args(sp, *, guidance: bool = True) -> None:
    sp.add_argument("--model", default="digits",
                    help="digits | digits_vp | digits_flow | module.path:factory | local diffusers folder")
    if guidance:
        sp.add_argument("--guidance", type=finite_float, default=None,
                        help="classifier-free guidance scale (default: 1, off; with --pipeline the pipeline's "
                             "guidance_scale, e.g. 7.5 for Stable Diffusion, Flux's embedded 3.5)")
    sp.add_argument("--shape", type=POSITIVE, nargs="+", help="sample shape C H W if the model does not say it")


PIPELINE_OPTIONS = ("--negative-prompt", "--height", "--width", "--max-sequence-length", "--frames")


def pipeline_args(sp, condition: str) -> None:
    """--pipeline and the options that only it reads; a command's RULES say that they need it."""
    sp.add_argument("--pipeline", help="a local diffusers pipeline folder (Stable Diffusion, SDXL, SD3, Flux or Wan; "
                                       f"safetensors weights, nothing fetched) instead of --model; {condition}")
    sp.add_argument("--negative-prompt", default=None,
                    help="with --pipeline: the null condition of guidance (default: the pipeline's own, the empty "
                         "prompt; SDXL: zeros)")
    sp.add_argument("--height", type=POSITIVE, help="with --pipeline: image height (default: the pipeline's)")
    sp.add_argument("--width", type=POSITIVE, help="with --pipeline: image width (default: the pipeline's)")
    sp.add_argument("--max-sequence-length", type=POSITIVE,
                    help="with --pipeline: T5 prompt length (SD3, Flux and Wan only)")
    sp.add_argument("--frames", type=POSITIVE,
                    help="with --pipeline: video frames (Wan: 4k + 1; default the pipeline's)")


def pipeline_rules() -> list:
    """The rules every command with --pipeline shares."""
    return [*(needs(o, "--pipeline") for o in PIPELINE_OPTIONS),
            excludes("--model", "--pipeline", "a pipeline folder is the model"),
            excludes("--shape", "--pipeline", "the latent shape follows --height and --width")]


def schedule_args(sp, *, several: bool) -> None:
    """--schedule (a kind or a file; several for bench) and the flow grids' --shift / --mu."""
    kinds = " | ".join(KIND_CHOICES)
    if several:
        sp.add_argument("--schedule", nargs="+", default=["edm"],
                        help=f"schedule files and / or hand-made kinds ({kinds}) with --nfe")
    else:
        sp.add_argument("--schedule", default="logsnr",
                        help=f"{kinds} | path/to/schedule.json (karras = edm, k-diffusion's name; flowmatch / flux: "
                             f"a flow's pipeline grid; pipeline: the pipeline scheduler's own grid and solver)")
    sp.add_argument("--shift", type=finite_float, help="flowmatch: the static time shift (default: the pipeline's, "
                                                       "else 1)")
    sp.add_argument("--mu", type=finite_float, help="flowmatch / flux: the dynamic shift (default: the pipeline's)")


def check_schedule_kinds(args) -> None:
    """What the schedule kinds need, checked on the words alone (before any model or file is read)."""
    specs = args.schedule if isinstance(args.schedule, list) else [args.schedule]
    if "pipeline" in specs and not getattr(args, "pipeline", None):
        raise CLIError("--schedule pipeline is a pipeline scheduler's own grid and solver: it needs --pipeline")
    if (args.shift is not None or args.mu is not None) and not set(specs) & set(FLOW_KINDS):
        raise CLIError(f"--shift / --mu shape the flow grids ({', '.join(FLOW_KINDS)}): give --schedule flowmatch "
                       f"or flux")
    if args.shift is not None and args.mu is not None:
        raise CLIError("--shift (a static shift) and --mu (dynamic shifting) cannot be given together")
    if "flux" in specs and args.mu is None and not getattr(args, "pipeline", None):
        raise CLIError("--schedule flux needs --mu (a Flux pipeline folder gives its own)")


def solver_args(sp, default="unipc") -> None:
    sp.add_argument("--solver", default=default, choices=sorted(SOLVERS),
                    help="ODE solver" + ("" if default else " (default: the schedule file's, else unipc)"))
    sp.add_argument("--order", type=POSITIVE, help="solver order (default: the solver's)")
    sp.add_argument("--variant", help="unipc: bh1 | bh2; dpmpp: diffusers | taylor")


# ----- options that need other options -----------------------------------------------------------

class Rule(NamedTuple):
    option: str     # e.g. "--prompt"
    other: str      # the option it needs (or one of several, "--label or --pipeline"), or excludes
    needed: bool    # True: `option` needs `other`; False: they cannot be given together
    why: str = ""


def needs(option: str, other: str, why: str = "") -> Rule:
    """`other` may name alternatives: needs("--guidance", "--label or --pipeline")."""
    return Rule(option, other, True, why)


def excludes(option: str, other: str, why: str = "") -> Rule:
    return Rule(option, other, False, why)


def _dest(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def given_options(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The dests of the options the user wrote: argparse fills in every default, so parse once more with
    the defaults suppressed (the first parse already checked the arguments)."""
    saved = [(a, a.default) for a in parser._actions]
    try:
        for a, _ in saved:
            a.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for a, default in saved:
            a.default = default


def check_rules(rules, given: set[str], args, parser: argparse.ArgumentParser) -> None:
    """Refuse an option written without the option it needs (written, and not left at its default, as
    `--learn none`), or written together with one it excludes."""
    for r in rules:
        if _dest(r.option) not in given:
            continue
        why = f" ({r.why})" if r.why else ""
        others = [_dest(o) for o in r.other.split(" or ")]
        if r.needed and not any(o in given and getattr(args, o) != parser.get_default(o) for o in others):
            raise CLIError(f"{r.option} needs {r.other}{why}: without it, {r.option} cannot take effect")
        if not r.needed and others[0] in given:
            raise CLIError(f"{r.option} and {r.other} cannot be given together{why}")
