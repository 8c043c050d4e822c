"""Argument helpers shared by the ``emseg`` subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["add_progress_flags", "parse_class_values", "TqdmProgress", "collect_inputs", "int_range", "float_range"]


def int_range(low: int | None = None, high: int | None = None) -> Any:
    """An argparse ``type`` for integers in [low, high]: '--epochs 0' is refused, not read as 'default'.

    A value outside the range is an argparse error (usage line plus one message, exit 2), which
    names the accepted range so the fix is obvious.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range; give {_describe_range(low, high)}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def float_range(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> Any:
    """An argparse ``type`` for finite numbers in [low, high] (``(low, high]`` with *low_open*)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        bad = value != value or value in (float("inf"), float("-inf"))
        bad = bad or (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high)
        if bad:
            lo = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
            hi = "" if high is None else f"<= {high:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range; give a number {' and '.join(filter(None, [lo, hi]))}")
        return value

    parse.__name__ = "number"
    return parse


def _describe_range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"a whole number from {low} to {high}"
    if low is not None:
        return f"a whole number >= {low}"
    return f"a whole number <= {high}"


def add_progress_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, only the final summary")


def parse_class_values(values: Sequence[str] | None, classes: Sequence[str] | None = None,
                       what: str = "value") -> float | tuple[float, ...] | dict[str, float] | None:
    """'0.5' (all classes), '0.4 0.6' (one per class) or 'mito=0.4 er=0.6' (by name)."""
    if not values:
        return None
    try:
        if all("=" in v for v in values):
            out = {}
            for v in values:
                k, _, num = v.partition("=")
                out[k.strip()] = float(num)
            return out
        nums = tuple(float(v) for v in values)
    except ValueError as exc:
        raise ConfigError(f"cannot read {what}s {list(values)}; write e.g. 0.5, or 0.4 0.6, or mito=0.4 er=0.6") from exc
    return nums[0] if len(nums) == 1 else nums


class TqdmProgress:
    """A tqdm bar driven by ``on_progress(done, total, text)`` (prediction: slices)."""

    def __init__(self, desc: str, unit: str = "slice", disable: bool = False) -> None:
        self.desc, self.unit, self.disable = desc, unit, disable
        self._bar: Any = None

    def on_progress(self, done: int, total: int, text: str) -> None:
        from tqdm.auto import tqdm

        if self._bar is None:
            self._bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr, disable=self.disable,
                             dynamic_ncols=True)
        self._bar.n = done
        self._bar.refresh()
        if done >= total:
            self.close()

    def on_message(self, text: str) -> None:
        if not self.disable:
            print(text, file=sys.stderr)

    def should_stop(self) -> bool:
        return False

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def collect_inputs(paths: Sequence[str]) -> list[Path]:
    """Files as given; a folder stands for the TIFF stacks inside it (sorted by name)."""
    from ..engine.data.volume_io import expand_stack_paths

    return expand_stack_paths(paths, "input")
