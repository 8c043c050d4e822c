"""Training patch sampling with a real label-focus fraction.

With probability ``label_focus`` a patch is centred on a labelled voxel of a randomly chosen
class (uniform over classes that have labels, so rare organelles are seen as often as common
ones); otherwise it is placed at random (inside the annotated region when there is one).
Finding a labelled voxel must not require a list of every positive coordinate of a large volume,
so each class keeps a coarse *occupancy grid*: voxel counts per (1 × 32 × 32) block. A block is
drawn with probability proportional to its count, then a voxel inside it — exactly uniform over
labelled voxels, at a memory cost of 1/1024 of the volume.

With ``hard_fraction`` > 0 and hard examples set (:meth:`PatchSampler.set_hard_examples`, mined
from the model's own errors during training, see :mod:`.hard_examples`), that share of the
patches is centred, with a small random shift, on places where the current model is most wrong.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InputDataError
from ..data.normalization import IntensityStats, NormalizationConfig, apply_normalization, compute_stats
from ..data.sample import Sample
from .augment import AugmentConfig, augment_patch

__all__ = ["OccupancyGrid", "TrainingVolume", "PatchSampler", "Batch", "BatchStream"]

BLOCK = 32


class OccupancyGrid:
    """Counts of True voxels per (1, BLOCK, BLOCK) block, for proportional sampling."""

    def __init__(self, mask: np.ndarray, block: int = BLOCK) -> None:
        z, y, x = mask.shape
        self.block = block
        self.shape = mask.shape
        yb, xb = -(-y // block), -(-x // block)
        counts = np.zeros((z, yb, xb), dtype=np.int64)
        for k in range(z):  # one slice at a time keeps temporaries small
            sl = np.zeros((yb * block, xb * block), dtype=np.uint8)
            sl[:y, :x] = mask[k]
            counts[k] = sl.reshape(yb, block, xb, block).sum(axis=(1, 3), dtype=np.int64)
        self._mask = mask
        self.cumsum = np.cumsum(counts.ravel())
        self.total = int(self.cumsum[-1]) if self.cumsum.size else 0
        self._grid = counts.shape

    def sample(self, rng: np.random.Generator) -> tuple[int, int, int]:
        """A uniformly random True voxel (z, y, x)."""
        r = int(rng.integers(self.total))
        flat = int(np.searchsorted(self.cumsum, r, side="right"))
        k, by, bx = np.unravel_index(flat, self._grid)
        y0, x0 = by * self.block, bx * self.block
        sub = self._mask[k, y0:y0 + self.block, x0:x0 + self.block]
        idx = np.flatnonzero(sub)
        j = int(idx[int(rng.integers(len(idx)))])
        dy, dx = divmod(j, sub.shape[1])
        return int(k), int(y0 + dy), int(x0 + dx)


@dataclass
class TrainingVolume:
    """A sample made ready for sampling: raw image + stats, targets, ignore mask, occupancy."""

    name: str
    image: np.ndarray
    stats: IntensityStats
    target: np.ndarray  # (C, Z, Y, X) uint8 for sigmoid, (Z, Y, X) label map for softmax
    valid: np.ndarray | None
    class_grids: list[OccupancyGrid | None]
    region_grid: OccupancyGrid | None

    @classmethod
    def prepare(cls, sample: Sample, normalization: NormalizationConfig, output: str) -> TrainingVolume:
        assert sample.masks is not None
        stats = compute_stats(sample.image, normalization, sample.name)
        masks = sample.masks
        valid = sample.annotated
        if output == "softmax":
            overlap = masks.sum(axis=0, dtype=np.uint8) > 1
            if valid is not None:
                overlap &= valid
            if overlap.any():
                raise InputDataError(
                    f"{sample.name}: classes overlap in {int(overlap.sum())} voxels, but a softmax model needs "
                    "mutually exclusive classes; use sigmoid output (--output sigmoid) or fix the masks")
            label_dtype = np.uint8 if masks.shape[0] < 255 else np.uint16
            target = np.zeros(masks.shape[1:], dtype=label_dtype)
            for c in range(masks.shape[0]):
                target[masks[c].astype(bool)] = c + 1
        else:
            target = masks
        grids: list[OccupancyGrid | None] = []
        for c in range(masks.shape[0]):
            m = masks[c] if valid is None else (masks[c] & valid)
            g = OccupancyGrid(m)
            grids.append(g if g.total > 0 else None)
        region = OccupancyGrid(valid) if valid is not None else None
        return cls(sample.name, sample.image, stats, target, valid, grids, region)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.image.shape  # type: ignore[return-value]


@dataclass
class Batch:
    image: np.ndarray  # (N, 1, [Z,] Y, X) float32
    target: np.ndarray  # (N, C, [Z,] Y, X) uint8 or (N, [Z,] Y, X) label map
    valid: np.ndarray | None  # (N, [Z,] Y, X) bool
    focused: np.ndarray  # (N,) bool: centred on a labelled voxel


class PatchSampler:
    """Draws augmented training patches from several :class:`TrainingVolume` objects."""

    def __init__(self, volumes: Sequence[TrainingVolume], patch_size: Sequence[int], label_focus: float,
                 augment: AugmentConfig, dims: int, hard_fraction: float = 0.0, slice_context: int = 0) -> None:
        if not 0.0 <= label_focus <= 1.0:
            raise InputDataError(f"label focus must be a fraction between 0 and 1, got {label_focus}")
        self.volumes = list(volumes)
        ps = tuple(int(p) for p in patch_size)
        #: 2.5D: patches of 2s+1 slices whose target is the centre slice; every slice can be the
        #: centre, its missing neighbours at a stack's ends repeating the end slice, as in prediction
        self.context = int(slice_context)
        if self.context:
            ps = (2 * self.context + 1, *ps[-2:])
        self.patch = (1, *ps) if len(ps) == 2 else ps
        self.label_focus = label_focus
        if not 0.0 <= hard_fraction < 1.0:
            raise InputDataError(f"hard-example fraction must be in [0, 1), got {hard_fraction}")
        self.hard_fraction = hard_fraction
        #: (N, 4) int64 rows (volume, z, y, x) and their (N,) sampling probabilities; None until mined.
        self.hard_centres: np.ndarray | None = None
        self.hard_weights: np.ndarray | None = None
        self.augment = augment
        self.dims = dims
        self.n_classes = len(self.volumes[0].class_grids)
        counts = np.array([[g.total if g else 0 for g in v.class_grids] for v in self.volumes], dtype=np.float64)
        self._class_volume_weights = counts  # (V, C)
        self.labelled_classes = [c for c in range(self.n_classes) if counts[:, c].sum() > 0]
        self.has_region = any(v.valid is not None for v in self.volumes)
        sizes = np.array([np.prod(v.shape) for v in self.volumes], dtype=np.float64)
        regions = np.array([v.region_grid.total if v.region_grid else np.prod(v.shape) for v in self.volumes], dtype=np.float64)
        self._volume_weights = regions / regions.sum() if regions.sum() > 0 else sizes / sizes.sum()

    def _start(self, centre: tuple[int, int, int], shape: tuple[int, int, int]) -> tuple[int, int, int]:
        m = self.context
        z = int(min(max(centre[0] - self.patch[0] // 2, -m), shape[0] - self.patch[0] + m))
        return (z, *(int(min(max(c - p // 2, 0), s - p)) for c, p, s in zip(centre[1:], self.patch[1:], shape[1:], strict=True)))  # type: ignore[return-value]

    def target_origin(self, start: Sequence[int]) -> tuple[int, int, int]:
        """Where a patch's target begins in its volume: the start, or its centre slice in 2.5D."""
        return (int(start[0]) + self.context, int(start[1]), int(start[2]))

    def set_hard_examples(self, centres: np.ndarray | None, weights: np.ndarray | None) -> None:
        """Centres (volume, z, y, x) where the model errs, with weights; None or empty clears them.

        Not thread-safe against a running :class:`BatchStream`: the trainer restarts its stream
        around this call, so which batches use the new centres does not depend on thread timing.
        """
        if centres is None or len(centres) == 0:
            self.hard_centres = self.hard_weights = None
            return
        w = np.asarray(weights, np.float64)
        self.hard_centres = np.asarray(centres, np.int64).reshape(-1, 4)
        self.hard_weights = w / w.sum()

    def random_location(self, rng: np.random.Generator) -> tuple[int, tuple[int, int, int]]:
        """(volume, patch start) placed at random, inside the annotated region when there is one."""
        vi = int(rng.choice(len(self.volumes), p=self._volume_weights))
        vol = self.volumes[vi]
        if vol.region_grid is not None:
            return vi, self._start(vol.region_grid.sample(rng), vol.shape)
        m = self.context
        z = int(rng.integers(-m, vol.shape[0] - self.patch[0] + m + 1))
        return vi, (z, *(int(rng.integers(0, s - p + 1)) for s, p in zip(vol.shape[1:], self.patch[1:], strict=True)))  # type: ignore[return-value]

    def extract(self, vi: int, start: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The normalised image, target and valid mask of the patch of volume *vi* at *start*."""
        vol = self.volumes[vi]
        if self.context:
            return self._extract_centred(vol, start)
        sl = tuple(slice(s, s + p) for s, p in zip(start, self.patch, strict=True))
        image = apply_normalization(vol.image[sl], vol.stats)
        target = vol.target[(slice(None), *sl)] if vol.target.ndim == 4 else vol.target[sl]
        if vol.valid is not None:
            valid: np.ndarray | None = vol.valid[sl]
        elif self.has_region:
            valid = np.ones(self.patch, dtype=bool)
        else:
            valid = None
        return image, target, valid

    def _extract_centred(self, vol: TrainingVolume, start: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """A 2.5D patch: 2s+1 slices of image (the end slices repeated past the stack), the centre's target."""
        yx = tuple(slice(s, s + p) for s, p in zip(start[1:], self.patch[1:], strict=True))
        zs = np.clip(np.arange(start[0], start[0] + self.patch[0]), 0, vol.shape[0] - 1)
        image = apply_normalization(np.stack([vol.image[(int(z), *yx)] for z in zs]), vol.stats)
        zc = slice(int(start[0]) + self.context, int(start[0]) + self.context + 1)
        target = vol.target[(slice(None), zc, *yx)] if vol.target.ndim == 4 else vol.target[(zc, *yx)]
        if vol.valid is not None:
            valid: np.ndarray | None = vol.valid[(zc, *yx)]
        elif self.has_region:
            valid = np.ones((1, *self.patch[1:]), dtype=bool)
        else:
            valid = None
        return image, target, valid

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bool]:
        """One (image, target, valid, focused) patch, before augmentation."""
        if self.hard_centres is not None and self.hard_fraction > 0 and rng.random() < self.hard_fraction:
            k = int(rng.choice(len(self.hard_centres), p=self.hard_weights))
            vi, *centre = (int(v) for v in self.hard_centres[k])
            jitter = [int(rng.integers(-(p // 4), p // 4 + 1)) for p in self.patch]
            vol = self.volumes[vi]
            start = self._start(tuple(c + j for c, j in zip(centre, jitter, strict=True)), vol.shape)  # type: ignore[arg-type]
            return (*self.extract(vi, start), False)
        focused = bool(self.labelled_classes) and rng.random() < self.label_focus
        if focused:
            c = self.labelled_classes[int(rng.integers(len(self.labelled_classes)))]
            w = self._class_volume_weights[:, c]
            vi = int(rng.choice(len(self.volumes), p=w / w.sum()))
            vol = self.volumes[vi]
            grid = vol.class_grids[c]
            assert grid is not None
            centre = grid.sample(rng)
            start = self._start(centre, vol.shape)
        else:
            vi, start = self.random_location(rng)
        return (*self.extract(vi, start), focused)

    def batch(self, batch_size: int, rng: np.random.Generator, augment: bool = True) -> Batch:
        images, targets, valids, focus = [], [], [], []
        for _ in range(batch_size):
            image, target, valid, focused = self.draw(rng)
            if augment:
                image, target, valid = augment_patch(image, target, valid, self.augment, rng)
            images.append(image)
            targets.append(target)
            valids.append(valid)
            focus.append(focused)
        img = np.stack(images)[:, None]  # (N, 1, Z, Y, X)
        tgt = np.stack(targets)
        val = None if valids[0] is None else np.stack(valids)
        if self.dims == 2:  # drop the singleton Z axis
            img = img[:, :, 0]
            tgt = tgt[:, :, 0] if tgt.ndim == 5 else tgt[:, 0]
            val = None if val is None else val[:, 0]
        return Batch(np.ascontiguousarray(img), np.ascontiguousarray(tgt),
                     None if val is None else np.ascontiguousarray(val), np.array(focus))


_STOP = object()


class BatchStream:
    """Produces training batches on a background thread, so sampling overlaps compute.

    The generator's state *after* each batch travels with it, so a checkpoint can record
    exactly where the sequence resumes (see :attr:`resume_state`), keeping interrupted and
    uninterrupted runs identical for a given seed.
    """

    def __init__(self, sampler: PatchSampler, batch_size: int, rng: np.random.Generator, prefetch: int = 3) -> None:
        self._sampler = sampler
        self._batch_size = batch_size
        self._rng = rng
        self.resume_state: dict[str, Any] = copy.deepcopy(rng.bit_generator.state)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emseg-batches", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._sampler.batch(self._batch_size, self._rng)
                state = copy.deepcopy(self._rng.bit_generator.state)
                while not self._stop.is_set():
                    try:
                        self._queue.put((batch, state), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as exc:  # surfaced in next()
            self._queue.put((exc, None))

    def next(self) -> Batch:
        item, state = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        self.resume_state = state
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        self._stop.set()
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._thread.join(timeout=5)

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
