"""The `ldd-fast` command line: sample, learn, quality, bench, plan, export, serve, demo.

One module per command, each with its parser (`add_parser`), its table of options that need or
exclude another option (`RULES`, read by `parse_args`), its other argument checks (`validate`,
which touches no file) and its `run`. What they share lives in `common` (parser, argument types and
groups, the rules), `load` (models, pipeline folders, schedules) and `limits` (threads, device,
memory). Nothing in the library imports this package.

Exit statuses (ldd_fast/exit_status.py): 0 done; 2 a user's mistake (an `LddFastError`, an OS
error about one path, a bad argument), printed as one line that names the argument or file; 1
anything else, a bug, printed as one line that says so (LDD_FAST_TRACEBACK=1 shows the
traceback); 130 interrupted.
"""
from __future__ import annotations

import os
import re
import sys
import warnings

import torch

from .._version import __version__
from ..exit_status import run_command
from . import bench, demo, export, learn, plan, quality, sample, serve
from .common import CLIError, HelpFormatter, Parser, check_rules, given_options
from .load import DIFFUSERS_NETWORKS

COMMANDS = {m.__name__.rsplit(".", 1)[1]: m for m in (sample, learn, quality, bench, plan, export, serve, demo)}

__all__ = ["main", "parse_args", "build_parser", "CLIError", "COMMANDS", "DIFFUSERS_NETWORKS"]


def build_parser() -> Parser:
    p = Parser(
        prog="ldd-fast",
        description="Fast low-NFE sampling for diffusion models: learned time steps (LD3), standard ODE solvers, "
                    "fused and exported samplers. Start with `ldd-fast demo`.",
        epilog="Each command has its own --help, e.g. `ldd-fast sample --help`.")
    p.add_argument("--version", action="version", version=f"ldd-fast {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS.values():
        module.add_parser(sub, HelpFormatter)
    return p


def parse_args(argv):
    """Parse and check the arguments of any command without touching files or running anything."""
    argv = [os.fspath(a) for a in argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    module = COMMANDS[args.command]
    command_parser = parser._subparsers._group_actions[0].choices[args.command]
    given = given_options(command_parser, argv[1:])
    check_rules(module.RULES, given, args, command_parser)
    module.validate(args, given)
    return args


# Library messages name Python arguments; the command line names its flags.
_CLI_WORDS = [(re.compile(r"[Pp]ass force=True"), "pass --force"), (re.compile(r"\bforce=True\b"), "--force"),
              (re.compile(r"pass resume=True \(--resume\)"), "pass --resume"),
              (re.compile(r"\bresume=True\b"), "--resume"),
              (re.compile(r"pass solver=\.\.\."), "pass --solver"),
              (re.compile(r"\bguidance_scale=(\S+)"), r"--guidance \1")]


def cli_words(msg: str) -> str:
    for pattern, words in _CLI_WORDS:
        msg = pattern.sub(words, msg)
    return msg


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    threads = torch.get_num_threads()

    def body() -> int:
        args = parse_args(argv)
        return COMMANDS[args.command].run(args)

    said = set()

    def warn(message, *_, **__):  # a warning is one line too, in the command line's words, said once
        line = f"ldd-fast: warning: {cli_words(str(message))}"
        if line not in said:
            said.add(line)
            print(line, file=sys.stderr, flush=True)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = warn
            return run_command("ldd-fast", body, cli_words)
    finally:
        torch.set_num_threads(threads)  # in-process callers (tests, notebooks) keep their setting
