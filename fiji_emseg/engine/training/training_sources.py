"""Where a training run's data came from, recorded so that ``--resume`` alone can find it again.

``emseg train MODEL --resume`` (as the README and ``--help`` show it) must continue with the
same images and masks. Their paths are stored in ``config.json`` (``training.data.sources``)
with a SHA-256 per file; on resume every file must still be there and unchanged, otherwise one
line says which file moved or changed and how to continue. Folders (zarr stores) are checked
for existence only, since hashing a tree of chunks would cost as much as training on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import InputDataError

__all__ = ["file_sha256", "DataSources", "record_sources"]


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _entry(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, (str, Path)):
        return None  # an in-memory array: nothing to find again
    p = Path(item).expanduser().resolve()
    return {"path": str(p), "sha256": file_sha256(p) if p.is_file() else None}


@dataclass
class DataSources:
    """Training and validation inputs as file paths (the fields of a TrainRequest that are files)."""

    images: list[str] = field(default_factory=list)
    masks: list[list[str]] = field(default_factory=list)
    annotated: list[str] | None = None
    dataset: str | None = None
    val_images: list[str] = field(default_factory=list)
    val_masks: list[list[str]] = field(default_factory=list)
    val_dataset: str | None = None
    class_names: list[str] | None = None
    annotated_slices: str | None = None

    @classmethod
    def from_record(cls, record: Any, config_path: Path) -> DataSources:
        """Read the recorded sources back, checking that every file is still there and unchanged."""
        if not isinstance(record, dict):
            raise InputDataError(
                f"cannot resume without data: {config_path} records no training files (the data were given as arrays, "
                "or by an older fiji-emseg); give them again with --image/--masks or --dataset")

        def one(e: Any, what: str) -> str:
            if not isinstance(e, dict) or not isinstance(e.get("path"), str):
                raise InputDataError(f"cannot resume: the {what} entry in {config_path} is damaged; "
                                     "give the data again with --image/--masks or --dataset")
            p = Path(e["path"])
            if not p.exists():
                raise InputDataError(
                    f"cannot resume: the {what} {p} recorded in {config_path.name} is no longer there; move it back, "
                    "or give the data again with --image/--masks or --dataset")
            want = e.get("sha256")
            if want and p.is_file() and file_sha256(p) != want:
                raise InputDataError(
                    f"cannot resume: the {what} {p} has changed since training started (its checksum differs); "
                    "restore the original, or start a new training with the new data")
            return str(p)

        def many(key: str, what: str) -> list[str]:
            return [one(e, what) for e in record.get(key) or []]

        def nested(key: str, what: str) -> list[list[str]]:
            return [[one(e, what) for e in group] for group in record.get(key) or [] if isinstance(group, list)]

        def single(key: str, what: str) -> str | None:
            return one(record[key], what) if record.get(key) else None

        names = record.get("class_names")
        slices = record.get("annotated_slices")
        return cls(
            images=many("images", "training image"), masks=nested("masks", "training mask"),
            annotated=many("annotated", "annotated-region mask") or None, dataset=single("dataset", "training dataset"),
            val_images=many("val_images", "validation image"), val_masks=nested("val_masks", "validation mask"),
            val_dataset=single("val_dataset", "validation dataset"),
            class_names=[str(c) for c in names] if isinstance(names, list) else None,
            annotated_slices=str(slices) if isinstance(slices, str) else None)

    def describe(self) -> str:
        files = [Path(p).name for p in self.images] + ([Path(self.dataset).name] if self.dataset else [])
        n_masks = sum(len(m) for m in self.masks)
        extra = f" with {n_masks} mask file(s)" if n_masks else ""
        val = len(self.val_images) + (1 if self.val_dataset else 0)
        return ", ".join(files) + extra + (f"; validation: {val} file(s)" if val else "")


def record_sources(images: Sequence[Any], masks: Sequence[Sequence[Any]], *, annotated: Sequence[Any] | None = None,
                   dataset: Any = None, val_images: Sequence[Any] = (), val_masks: Sequence[Sequence[Any]] = (),
                   val_dataset: Any = None, class_names: Sequence[str] | None = None,
                   annotated_slices: str | None = None) -> dict[str, Any] | None:
    """The ``training.data.sources`` record, or None when any input is an in-memory array."""
    every = [*images, *(m for ms in masks for m in ms), *(annotated or []), *val_images,
             *(m for ms in val_masks for m in ms)] + [d for d in (dataset, val_dataset) if d is not None]
    if not every or not all(isinstance(x, (str, Path)) for x in every):
        return None
    return {
        "images": [_entry(x) for x in images],
        "masks": [[_entry(m) for m in ms] for ms in masks],
        "annotated": [_entry(x) for x in annotated or []],
        "dataset": _entry(dataset) if dataset is not None else None,
        "val_images": [_entry(x) for x in val_images],
        "val_masks": [[_entry(m) for m in ms] for ms in val_masks],
        "val_dataset": _entry(val_dataset) if val_dataset is not None else None,
        "class_names": list(class_names) if class_names is not None else None,
        "annotated_slices": annotated_slices,
    }
