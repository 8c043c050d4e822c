"""Turning streamed probability slices into the outputs a user asked for, slice by slice.

Outputs per class: probability maps (float32, or uint8 = round(255 × p)), binary masks at a
per-class threshold (sigmoid models) or by argmax (softmax models), and for softmax models an
argmax label map (0 = background, c = class c). Storage: ImageJ TIFF stacks with calibration
(one file per class and kind, written by background threads), a zarr group, or memory (for the
Python API, returned as xarray). Clean-up is applied per slice in 2D mode while streaming; 3D
clean-up needs whole objects, so masks are then collected in a temporary memory-mapped file,
cleaned at the end and written out.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, OutputError
from ..data.files import announce_removed, check_writable, ensure_folder, remove_stale_temporaries, temporary_folder
from ..data.volume_io import Calibration, StackWriter
from .cleanup import CleanupConfig, clean_mask, clean_mask_slice

__all__ = ["OUTPUT_KINDS", "OutputSpec", "PredictionWriter", "output_file_names"]

OUTPUT_KINDS = ("probabilities", "masks", "labels")


@dataclass(frozen=True)
class OutputSpec:
    classes: tuple[str, ...]
    output_mode: str  # sigmoid | softmax
    kinds: tuple[str, ...] = ("masks",)
    thresholds: tuple[float, ...] = (0.5,)
    probability_dtype: str = "float32"
    cleanup: CleanupConfig | None = None

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in OUTPUT_KINDS]
        if bad or not self.kinds:
            raise ConfigError(f"unknown outputs {bad or '(none)'}; choose from {', '.join(OUTPUT_KINDS)}")
        if "labels" in self.kinds and self.output_mode != "softmax" and len(self.classes) > 1:
            pass  # for sigmoid models the label map is the argmax over classes above threshold
        if self.probability_dtype not in ("float32", "uint8"):
            raise ConfigError(f"probability type must be float32 or uint8, got {self.probability_dtype!r}")
        th = tuple(float(t) for t in self.thresholds)
        if len(th) == 1 and len(self.classes) > 1:
            th = th * len(self.classes)
        if len(th) != len(self.classes):
            raise ConfigError(f"{len(th)} thresholds for {len(self.classes)} classes; give one, or one per class")
        if not all(0.0 < t < 1.0 for t in th):
            raise ConfigError(f"thresholds must be between 0 and 1 (exclusive), got {list(th)}")
        object.__setattr__(self, "thresholds", th)

    @property
    def label_dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if len(self.classes) < 255 else np.uint16)

    @property
    def needs_volume_cleanup(self) -> bool:
        return (self.cleanup is not None and self.cleanup.enabled and not self.cleanup.per_slice
                and ("masks" in self.kinds or "labels" in self.kinds))

    def convert(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """Network probabilities (K, Y, X) for one slice → requested outputs."""
        out: dict[str, np.ndarray] = {}
        c = len(self.classes)
        cls_probs = probs[1:] if self.output_mode == "softmax" else probs
        if "probabilities" in self.kinds:
            if self.probability_dtype == "uint8":
                out["probabilities"] = np.rint(np.clip(cls_probs, 0, 1) * 255).astype(np.uint8)
            else:
                out["probabilities"] = np.ascontiguousarray(cls_probs, dtype=np.float32)
        if "masks" in self.kinds or "labels" in self.kinds:
            if self.output_mode == "softmax":
                lab = probs.argmax(axis=0).astype(self.label_dtype)
                masks = np.stack([lab == k + 1 for k in range(c)]).astype(np.uint8)
            else:
                thr = np.asarray(self.thresholds, dtype=np.float32)[:, None, None]
                masks = (cls_probs > thr).astype(np.uint8)
                if "labels" in self.kinds:
                    best = cls_probs.argmax(axis=0)
                    lab = np.where(masks.any(axis=0), best + 1, 0).astype(self.label_dtype)
            if self.cleanup is not None and self.cleanup.enabled and self.cleanup.per_slice:
                for k in range(c):
                    clean_mask_slice(masks[k], self.cleanup, inplace=True)
                if "labels" in self.kinds:  # keep the label map consistent with the cleaned masks
                    lab = self.labels_from_masks(masks)
            if "masks" in self.kinds or self.needs_volume_cleanup:
                out["masks"] = masks
            if "labels" in self.kinds:
                out["labels"] = lab
        return out

    def labels_from_masks(self, masks: np.ndarray) -> np.ndarray:
        """A label map from (cleaned) binary masks (C, …): class k+1 where mask k is set."""
        lab = np.zeros(masks.shape[1:], dtype=self.label_dtype)
        for k in range(masks.shape[0]):
            lab[masks[k].astype(bool)] = k + 1
        return lab


def output_file_names(name: str, spec: OutputSpec, suffix: str = ".tif") -> dict[tuple[str, str], str]:
    """File names per (kind, class): ``<name>_<class>_mask.tif``, ``…_prob.tif``, ``<name>_labels.tif``."""
    names: dict[tuple[str, str], str] = {}
    for kind in spec.kinds:
        if kind == "labels":
            names[(kind, "")] = f"{name}_labels{suffix}"
            continue
        tag = "prob" if kind == "probabilities" else "mask"
        for cls in spec.classes:
            names[(kind, cls)] = f"{name}_{_safe(cls)}_{tag}{suffix}"
    return names


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


class PredictionWriter:
    """Receives probability slices in order and stores the requested outputs.

    ``storage`` is ``"tiff"`` (files in ``folder``), ``"zarr"`` (a group at ``folder/<name>.zarr``)
    or ``"memory"`` (arrays, see :attr:`arrays`).
    """

    def __init__(self, spec: OutputSpec, shape: tuple[int, int, int], calibration: Calibration, storage: str = "memory",
                 folder: str | Path | None = None, name: str = "prediction", overwrite: bool = False,
                 compression: str | None = None) -> None:
        self.spec = spec
        self.shape = tuple(int(s) for s in shape)
        self.calibration = calibration
        self.storage = storage
        self.name = name
        self._overwrite = overwrite
        self.files: dict[tuple[str, str], Path] = {}
        self._z = 0
        self._tmpdir: Path | None = None
        self._writers: dict[tuple[str, str], Any] = {}
        self.arrays: dict[str, np.ndarray] = {}
        z, y, x = self.shape
        c = len(spec.classes)
        prob_dtype = np.dtype(spec.probability_dtype)
        layout = {"probabilities": ((c, z, y, x), prob_dtype), "masks": ((c, z, y, x), np.dtype(np.uint8)),
                  "labels": ((z, y, x), spec.label_dtype)}
        if storage not in ("tiff", "zarr", "memory"):
            raise ConfigError(f"unknown output format {storage!r}; use tiff or zarr")
        if storage != "memory" and folder is None:
            raise ConfigError("an output folder is needed to write files")
        self._masks_later = spec.needs_volume_cleanup
        if storage == "memory":
            for kind in spec.kinds:
                shp, dt = layout[kind]
                self.arrays[kind] = np.zeros(shp, dtype=dt)
            return
        folder = ensure_folder(Path(folder))  # type: ignore[arg-type]
        announce_removed(remove_stale_temporaries(folder), folder)
        if storage == "tiff":
            names = output_file_names(name, spec)
            for key, fname in names.items():  # check every name before writing anything
                check_writable(folder / fname, overwrite)
            for (kind, cls), fname in names.items():
                if kind in ("masks", "labels") and self._masks_later:
                    self.files[(kind, cls)] = folder / fname
                    continue
                dt = prob_dtype if kind == "probabilities" else (spec.label_dtype if kind == "labels" else np.uint8)
                self._writers[(kind, cls)] = StackWriter(folder / fname, self.shape, dt, calibration, overwrite, compression)
                self.files[(kind, cls)] = folder / fname
        else:
            import zarr

            self._zarr_path = folder / f"{name}.zarr"
            if self._zarr_path.exists() and not overwrite:
                raise OutputError(f"{self._zarr_path} already exists; choose another name or pass --overwrite")
            folder.mkdir(parents=True, exist_ok=True)
            self._zarr_tmp = folder / f".{name}.zarr.part"
            if self._zarr_tmp.exists():
                shutil.rmtree(self._zarr_tmp)
            group = zarr.open_group(str(self._zarr_tmp), mode="w")
            group.attrs.update({"classes": list(spec.classes), "output_mode": spec.output_mode,
                                "voxel_size": list(calibration.voxel_size), "unit": calibration.unit,
                                "axes": "CZYX", "thresholds": list(spec.thresholds)})
            for kind in spec.kinds:
                shp, dt = layout[kind]
                chunks = (1, 1, min(y, 1024), min(x, 1024)) if len(shp) == 4 else (1, min(y, 1024), min(x, 1024))
                self.arrays[kind] = group.create_array(kind, shape=shp, dtype=dt, chunks=chunks)  # type: ignore[assignment]
            self.files[("zarr", "")] = self._zarr_path
        if self._masks_later and storage != "memory":
            folder.mkdir(parents=True, exist_ok=True)
            self._tmpdir = temporary_folder(folder, "masks")
            self._mask_mm = np.lib.format.open_memmap(self._tmpdir / "masks.npy", mode="w+", dtype=np.uint8,
                                                      shape=(len(spec.classes), *self.shape))

    def write_slice(self, probs: np.ndarray) -> None:
        if self._z >= self.shape[0]:
            raise OutputError("more slices than the stack has were written")
        z = self._z
        outs = self.spec.convert(probs)
        if self._masks_later:  # masks and labels wait for the 3D clean-up
            masks = outs.pop("masks")
            outs.pop("labels", None)
            if self.storage == "memory":
                self._mask_store()[:, z] = masks
            else:
                self._mask_mm[:, z] = masks
        for kind, data in outs.items():
            if self.storage in ("memory", "zarr"):
                if data.ndim == 3:
                    self.arrays[kind][:, z] = data
                else:
                    self.arrays[kind][z] = data
            elif kind == "labels":
                self._writers[(kind, "")].write(data)
            else:
                for k, cls in enumerate(self.spec.classes):
                    plane = data[k] * np.uint8(255) if kind == "masks" else data[k]
                    self._writers[(kind, cls)].write(plane)
        self._z += 1

    def _mask_store(self) -> np.ndarray:
        if "masks" not in self.arrays:
            self.arrays["masks"] = np.zeros((len(self.spec.classes), *self.shape), dtype=np.uint8)
        return self.arrays["masks"]

    def close(self) -> dict[tuple[str, str], Path]:
        try:
            if self._z != self.shape[0]:
                raise OutputError(f"only {self._z} of {self.shape[0]} slices were predicted")
            if self._masks_later:
                self._finish_volume_cleanup()
            for w in self._writers.values():
                w.close()
            if self.storage == "zarr":
                if self._zarr_path.exists():
                    shutil.rmtree(self._zarr_path)
                self._zarr_tmp.rename(self._zarr_path)
        except BaseException:
            self.abort()
            raise
        finally:
            self._drop_tmp()
        return self.files

    def _finish_volume_cleanup(self) -> None:
        assert self.spec.cleanup is not None
        masks = self._mask_store() if self.storage == "memory" else self._mask_mm
        for k in range(len(self.spec.classes)):
            cleaned = clean_mask(masks[k], self.spec.cleanup, inplace=True)
            if cleaned is not masks[k]:
                masks[k] = cleaned
        kinds = self.spec.kinds
        if self.storage == "memory":
            if "labels" in kinds:
                self.arrays["labels"][:] = self.spec.labels_from_masks(masks)
            if "masks" not in kinds:
                del self.arrays["masks"]
            return
        if self.storage == "zarr":
            for z in range(self.shape[0]):
                if "masks" in kinds:
                    self.arrays["masks"][:, z] = masks[:, z]
                if "labels" in kinds:
                    self.arrays["labels"][z] = self.spec.labels_from_masks(masks[:, z])
            return
        if "masks" in kinds:
            for k, cls in enumerate(self.spec.classes):
                w = StackWriter(self.files[("masks", cls)], self.shape, np.uint8, self.calibration, self._overwrite)
                self._writers[("masks", cls)] = w
                for z in range(self.shape[0]):
                    w.write(masks[k, z] * np.uint8(255))
        if "labels" in kinds:
            w = StackWriter(self.files[("labels", "")], self.shape, self.spec.label_dtype, self.calibration, self._overwrite)
            self._writers[("labels", "")] = w
            for z in range(self.shape[0]):
                w.write(self.spec.labels_from_masks(masks[:, z]))

    def abort(self) -> None:
        for w in self._writers.values():
            w.abort()
        if self.storage == "zarr" and getattr(self, "_zarr_tmp", None) is not None and self._zarr_tmp.exists():
            shutil.rmtree(self._zarr_tmp, ignore_errors=True)
        self._drop_tmp()

    def _drop_tmp(self) -> None:
        if self._tmpdir is not None:
            self._mask_mm = None  # type: ignore[assignment]
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


def trained_thresholds(training: dict[str, Any], classes: Sequence[str]) -> tuple[float, ...]:
    """What a model predicts with when no threshold is given: those chosen on validation data at
    training (config.json ``training.thresholds``), else 0.5."""
    return as_thresholds(training.get("thresholds") or None, classes)


def as_thresholds(value: float | Sequence[float] | dict[str, float] | None, classes: Sequence[str]) -> tuple[float, ...]:
    """Accept one threshold, one per class, or a {class: threshold} mapping (others 0.5)."""
    if value is None:
        return (0.5,) * len(classes)
    if isinstance(value, dict):
        unknown = set(value) - set(classes)
        if unknown:
            raise ConfigError(f"thresholds given for unknown classes {sorted(unknown)}; the model's classes are {list(classes)}")
        return tuple(float(value.get(c, 0.5)) for c in classes)
    if isinstance(value, (int, float)):
        return (float(value),) * len(classes)
    return tuple(float(v) for v in value)
