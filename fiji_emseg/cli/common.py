"""Argument helpers shared by the ``emseg`` subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["add_progress_flags", "parse_class_values", "TqdmProgress", "collect_inputs"]


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
