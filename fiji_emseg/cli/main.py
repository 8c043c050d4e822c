"""Entry point of the ``emseg`` command.

Each subcommand lives in ``fiji_emseg/cli/<name>_cmd.py`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable taking the parsed arguments and returning
an exit code. Heavy imports (torch, onnxruntime) happen inside those callables so that
``emseg --help`` answers at once. User errors (:class:`~fiji_emseg.errors.EmsegError`) print one
line and exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from .. import __version__
from ..errors import EmsegError

#: Subcommands in the order ``emseg --help`` lists them.
SUBCOMMANDS: tuple[str, ...] = ("demo", "train", "plan", "predict", "export", "package", "evaluate", "measure", "convert", "info", "fiji")


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    return f"emseg: warning: {message}\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emseg",
        description="Deep-learning segmentation of volume electron microscopy: train U-Nets on "
                    "annotated slices, predict whole stacks, evaluate and measure the results.",
        epilog="Run 'emseg COMMAND --help' for the options of each command. "
               "Start with 'emseg demo' to see the whole workflow on built-in example data.",
    )
    parser.add_argument("--version", action="version", version=f"fiji-emseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"fiji_emseg.cli.{name}_cmd")
        except ModuleNotFoundError as exc:
            if exc.name == f"fiji_emseg.cli.{name}_cmd":
                continue  # subcommand not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _format_warning  # type: ignore[assignment]
    try:
        code = args.func(args)
    except EmsegError as exc:
        print(f"emseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"emseg {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
