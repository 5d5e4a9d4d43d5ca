"""The ``xprop`` command line (also ``python -m xprop``).

Subcommands::

    xprop train       train a network (default: the bundled digits), write model, history, curves
    xprop sweep       train every combination of swept settings as stacked runs, rank them
    xprop evaluate    loss and accuracy of a saved model on a dataset
    xprop predict     one prediction per example, to stdout or a file
    xprop gradcheck   analytic vs numeric gradients on every usable backend
    xprop check       the same net on every usable backend vs NumPy (does my GPU agree?)
    xprop info        versions, usable backends, GPU or why there is none
    xprop doctor      look at this machine: driver, devices, caches, MPI/NCCL, BLAS
    xprop explain     the forward and backward equations with concrete shapes

Exit status: 0 success; 1 an error (one line ``xprop: error: ...`` on
stderr, no traceback; set ``XPROP_TRACEBACK=1`` to see one) or a failed
check; 2 a bad command line (argparse's usage error); 130 interrupted (Ctrl-C), 143
terminated (SIGTERM).

One module per family of subcommands (``train``, ``sweep``, ``models``: evaluate and
predict, ``checks``: gradcheck and check, ``info``: info, doctor, explain),
each with ``add_parsers(add)`` and its ``cmd_*`` functions; ``common`` holds
what they share. This is the only package that uses argparse.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from ..version import __version__
from ..backend import BackendError
from ..distributed.errors import DistributedError
from ..io import ModelFileError
from ..signals import exit_status, handlers_kept, ignore_further, signal_name
from ..train import TrainingDiverged
from . import checks, info, models, sweep, train
from .common import PROG, Formatter, Parser, one_line, say_err

__all__ = ["build_parser", "main"]

# Errors that mean "the input was wrong", reported as one line and exit 1.
ERRORS = (ValueError, TypeError, OSError, ModelFileError, BackendError, TrainingDiverged,
          DistributedError, MemoryError, train.RankFailed)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``xprop`` with every subcommand."""
    parser = Parser(
        prog=PROG, allow_abbrev=False, formatter_class=Formatter,
        description="Backpropagation from the derivation: train, check and explain hand-written "
                    "MLPs on NumPy or CuPy.",
        epilog="Run 'xprop COMMAND --help' for the flags of a command. Errors print one line; "
               "set XPROP_TRACEBACK=1 to get the traceback.")
    parser.add_argument("--version", action="version", version=f"xprop {__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND",
                                parser_class=Parser)

    parser.commands = {}

    def add(name, help_, description=None):
        description = description or f"{help_[0].upper()}{help_[1:]}."
        p = sub.add_parser(name, help=help_, description=description, allow_abbrev=False,
                           formatter_class=Formatter)
        parser.commands[name] = p
        return p

    for family in (train, sweep, models, checks, info):    # the order of `xprop --help`
        family.add_parsers(add)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status.

    Called with ``argv`` (from Python, a test), SIGINT's and SIGTERM's
    handlers are put back as they were when it returns; as the program
    (``argv`` None) it leaves them ignored after a first stop signal, until
    the process is gone.
    """
    in_process = argv is not None
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the subcommand's parser, which names the right --help
        parser.commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    args.argv = argv
    with handlers_kept() if in_process else contextlib.nullcontext():
        return _run(args)


def _run(args) -> int:
    """``args.func(args)``, with every failure the user can cause as one line and a status."""
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        ignore_further()
        name = signal_name(exc)
        say_err("xprop: interrupted" if name == "SIGINT" else f"xprop: terminated by {name}")
        return exit_status(exc)
    except BrokenPipeError:
        # The reader went away (xprop predict ... | head): stop quietly.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except ERRORS as exc:
        if os.environ.get("XPROP_TRACEBACK", "").strip() not in ("", "0"):
            raise
        say_err(f"xprop: error: {one_line(exc)}")
        return 1
