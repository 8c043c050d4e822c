"""Entry point of the ``emseg`` command.

Each subcommand lives in ``fiji_emseg/cli/<name>_cmd.py`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable taking the parsed arguments and returning
an exit code. Heavy imports (torch, onnxruntime) happen inside those callables so that
``emseg --help`` answers at once. User errors (:class:`~fiji_emseg.errors.EmsegError`) print one
line and exit 2; Ctrl-C exits 130. Library log lines are held back unless ``--verbose``
(:mod:`fiji_emseg.cli.logs`), so that the error line is the only line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from ..errors import EmsegError
from .logs import captured_library_output

#: Subcommands in the order ``emseg --help`` lists them.
SUBCOMMANDS: tuple[str, ...] = ("demo", "train", "plan", "predict", "export", "package", "evaluate", "measure", "convert", "info", "fiji")


VERBOSE_HELP = "print the libraries' own log lines (tifffile, onnxruntime, torch) and tracebacks to stderr"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage block is what ``--help`` is for."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="emseg",
        description="Deep-learning segmentation of volume electron microscopy: train U-Nets on "
                    "annotated slices, predict whole stacks, evaluate and measure the results.",
        epilog="Run 'emseg COMMAND --help' for the options of each command. "
               "Start with 'emseg demo' to see the whole workflow on built-in example data.",
    )
    parser.add_argument("--version", action="version", version=f"fiji-emseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"fiji_emseg.cli.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name == f"fiji_emseg.cli.{name}_cmd":
                continue  # subcommand not built yet
            raise
        module.register(sub)
    for command in sub.choices.values():  # '--verbose' also works after the subcommand
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    with captured_library_output(verbose) as log:
        try:
            code = args.func(args)
        except EmsegError as exc:
            if verbose:
                traceback.print_exc(file=sys.stderr)
            hidden = f" ({log.hidden} library log lines held back; --verbose shows them)" if log.hidden else ""
            print(f"emseg {args.command}: error: {_one_line(str(exc))}{hidden}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"emseg {args.command}: interrupted", file=sys.stderr)
            return 130
    return int(code or 0)


def _one_line(text: str) -> str:
    """Messages relayed from libraries may carry newlines; the error stays one line."""
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
