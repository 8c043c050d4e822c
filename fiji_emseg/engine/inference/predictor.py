"""Tiled, streaming prediction of whole stacks (nnU-Net's predictor, with explicit defaults).

The volume is read one slab at a time (one slice for 2D models, one tile-row of slices for 3D
models) from any array-like source (numpy, memmap, zarr, lazily read TIFF pages), tiles are
batched across slabs, blended into per-slice accumulators and each slice is handed to the
output writer as soon as no further tile can touch it. Peak memory therefore depends on the
slice size and tile batch, not on the number of slices.

:meth:`Predictor.predict_block` computes any z-range of the output from the *global* tile grid,
so blocks predicted independently (e.g. by a distributed runner) join seamlessly and equal
the sequential result.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, EmsegWarning, InputDataError, ModelFileError
from ..callbacks import Callback
from ..data.normalization import IntensityStats, apply_normalization, compute_stats
from ..data.sample import check_finite, check_image_dtype
from ..data.volume_io import ArrayLike3D, Calibration, LazyVolume, open_volume
from ..models.formats import open_model_source
from ..models.receptive_field import recommended_tile
from .cleanup import CleanupConfig
from .format_choice import build_backend, plan_candidates
from .prediction_output import OutputSpec, PredictionWriter, as_thresholds, trained_thresholds
from .tiling import BLEND_MODES, TilingPlan, plan_tiling

__all__ = ["PredictConfig", "PredictionResult", "Predictor", "predict", "with_options"]

BACKENDS = ("auto", "onnxruntime", "torch")


@dataclass(frozen=True)
class PredictConfig:
    """Prediction settings; every default is explicit (nnU-Net style) and documented here.

    - ``tile``: (y, x) or (z, y, x); None = the model's recommendation (1024² in 2D), shrunk to
      the image when the image is smaller, so small images are predicted in one piece.
    - ``overlap``: voxels shared by neighbouring tiles; None = 2 × the measured receptive-field
      radius (rounded up to the spatial multiple), which makes tiled output equal whole-image output.
    - ``blend``: cosine (default), gaussian or constant weighting of overlaps.
    - ``batch_size``: tiles per network call; None = about 1 M voxels per batch on CPU, 8 M on GPU.
    - ``tta``: average over flips (and 90° rotations for square 2D tiles).
    """

    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    tile: tuple[int, ...] | None = None
    overlap: tuple[int, ...] | int | None = None
    blend: str = "cosine"
    batch_size: int | None = None
    tta: bool = False
    compile: bool = False
    threads: int | None = None
    outputs: tuple[str, ...] = ("masks",)
    probability_dtype: str = "float32"
    thresholds: float | tuple[float, ...] | dict[str, float] | None = None
    cleanup: CleanupConfig | None = None
    storage: str = "tiff"
    compression: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; use auto, onnxruntime or torch")
        if self.blend not in BLEND_MODES:
            raise ConfigError(f"unknown blending {self.blend!r}; use {', '.join(BLEND_MODES)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.precision not in ("auto", "fp32", "fp16", "bf16", "int8"):
            raise ConfigError(f"unknown precision {self.precision!r}; use auto, fp32, fp16, bf16 or int8")


@dataclass
class PredictionResult:
    """Files written (by kind and class) and, for in-memory prediction, xarray DataArrays."""

    classes: tuple[str, ...]
    shape: tuple[int, int, int]
    calibration: Calibration
    backend: str
    seconds: float
    plan: dict[str, Any]
    files: dict[tuple[str, str], Path] = field(default_factory=dict)
    arrays: dict[str, Any] = field(default_factory=dict)

    @property
    def voxels_per_second(self) -> float:
        return float(np.prod(self.shape)) / max(self.seconds, 1e-9)

    @property
    def probabilities(self) -> Any:
        return self.arrays.get("probabilities")

    @property
    def masks(self) -> Any:
        return self.arrays.get("masks")

    @property
    def labels(self) -> Any:
        return self.arrays.get("labels")

    def summary(self) -> str:
        z, y, x = self.shape
        return (f"predicted {z}×{y}×{x} voxels in {self.seconds:.1f} s ({self.voxels_per_second / 1e6:.2f} M voxels/s) "
                f"with {self.backend}")


def _to_xarray(arrays: dict[str, np.ndarray], classes: Sequence[str], cal: Calibration) -> dict[str, Any]:
    import xarray as xr

    out: dict[str, Any] = {}
    for kind, data in arrays.items():
        z, y, x = data.shape[-3:]
        coords: dict[str, Any] = {
            "z": np.arange(z) * cal.voxel_size[0], "y": np.arange(y) * cal.voxel_size[1], "x": np.arange(x) * cal.voxel_size[2]}
        if data.ndim == 4:
            coords["class"] = list(classes)
            da = xr.DataArray(np.moveaxis(data, 0, -1), dims=("z", "y", "x", "class"), coords=coords, name=kind)
        else:
            da = xr.DataArray(data, dims=("z", "y", "x"), coords=coords, name=kind)
        da.attrs.update({"unit": cal.unit, "voxel_size": list(cal.voxel_size)})
        out[kind] = da
    return out


# ----------------------------------------------------------------------------- predictor


class Predictor:
    """Sliding-window predictor over one model (see module docstring).

    *model* is a model folder, an exported ``.onnx`` file or a bioimage.io package (``.zip`` or
    ``rdf.yaml``); the weight format and runtime come from :mod:`.format_choice`.
    """

    def __init__(self, model: str | Path, config: PredictConfig | None = None, *, trust_custom_code: bool = False) -> None:
        self.config = config or PredictConfig()
        cfg = self.config
        self.notes: list[str] = []
        self._source = open_model_source(model)
        try:
            self._start(cfg, trust_custom_code)
        except BaseException:
            self._source.close()
            raise

    def _start(self, cfg: PredictConfig, trust_custom_code: bool) -> None:
        self.notes.extend(self._source.notes)
        candidates = plan_candidates(self._source, cfg.backend, cfg.device, cfg.precision)
        self.candidates = candidates
        self.info = self._source.info
        self.model_config = self.info.model
        errors: list[str] = []
        self.backend: Any = None
        for cand in candidates:
            try:
                self.backend = build_backend(self._source, cand, threads=cfg.threads, compile=cfg.compile,
                                             trust_custom_code=trust_custom_code)
                break
            except ConfigError as exc:
                if len(candidates) == 1:
                    raise
                errors.append(f"{cand.runtime} on {cand.device}: {exc}")
        if self.backend is None:
            raise ConfigError("no inference backend could start: " + " | ".join(errors))
        self.rf = self.info.ensure_receptive_field()
        if self.rf.global_context:
            warnings.warn(
                f"this model uses {self.model_config.norm} normalisation, whose statistics span the whole tile; "
                "tiled output can differ slightly from whole-image output", EmsegWarning, stacklevel=3)
        self.notes.extend(errors)
        self.on_gpu = self.backend.device.startswith("cuda")

    # ------------------------------------------------------------------ planning

    def plan(self, shape: Sequence[int]) -> TilingPlan:
        mc = self.model_config
        cfg = self.config
        tile3 = recommended_tile(mc, self.rf, xy=2048 if self.on_gpu else 1024)
        if cfg.tile is not None:
            t = tuple(int(v) for v in cfg.tile)
            tile3 = (1, *t) if len(t) == 2 else t  # type: ignore[assignment]
            if mc.dims == 2 and tile3[0] != 1:
                raise ConfigError(f"a 2D model takes (y, x) tiles, got {cfg.tile}")
        mult = mc.spatial_multiple
        bad = [(t, m) for t, m in zip(tile3[1:] if mc.dims == 2 else tile3, mult[1:] if mc.dims == 2 else mult, strict=True) if t % m]
        if bad:
            raise ConfigError(f"tile {tuple(cfg.tile or ())} must be a multiple of {mult[3 - mc.dims:]} for this model")
        if cfg.overlap is None:
            overlap = tuple(int(-(-2 * h // m) * m) for h, m in zip(self.rf.halo, mult, strict=True))
        elif isinstance(cfg.overlap, int):
            overlap = (cfg.overlap,) * 3
        else:
            ov = tuple(int(o) for o in cfg.overlap)
            overlap = (0, *ov) if len(ov) == 2 else ov
        if cfg.overlap is None:
            small = [(t, o, m) for t, o, m, n in zip(tile3, overlap, mult, shape, strict=True)
                     if t - o < m and t < -(-int(n) // m) * m and not (mc.dims == 2 and t == 1)]
            if small:
                need = tuple(max(t, o + m) for t, o, m in zip(tile3, overlap, mult, strict=True))
                raise ConfigError(
                    f"tile {tuple(tile3[3 - mc.dims:])} is too small for this model's receptive field (halo "
                    f"{tuple(self.rf.halo[3 - mc.dims:])}); exact tiling needs tiles of at least {need[3 - mc.dims:]}: use a "
                    "larger tile (--tile), or set the overlap yourself (--overlap) (then outputs near tile borders differ slightly)")
        return plan_tiling(shape, tile3, overlap, mult, self.rf.halo, mc.dims, cfg.blend)

    def _batch_size(self, plan: TilingPlan) -> int:
        if self.config.batch_size:
            return self.config.batch_size
        voxels = int(np.prod(plan.tile_shape))
        budget = (8 << 20) if self.on_gpu else (1 << 20)
        return max(1, min(64, budget // voxels))

    # ------------------------------------------------------------------ network calls

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if not self.config.tta:
            return self.backend.run(batch)  # type: ignore[no-any-return]
        spatial = list(range(2, batch.ndim))
        y_ax, x_ax = spatial[-2], spatial[-1]
        variants: list[tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = []
        flip_sets = [()] + [(a,) for a in spatial] + ([(y_ax, x_ax)] if len(spatial) == 2 else
                                                        [(spatial[0], y_ax), (spatial[0], x_ax), (y_ax, x_ax), tuple(spatial)])
        for axes in flip_sets:
            variants.append((lambda a, ax=axes: np.flip(a, ax) if ax else a, lambda a, ax=axes: np.flip(a, ax) if ax else a))
        if len(spatial) == 2 and batch.shape[-1] == batch.shape[-2]:
            for k in (1, 3):
                variants.append((lambda a, k=k: np.rot90(a, k, axes=(y_ax, x_ax)), lambda a, k=k: np.rot90(a, -k, axes=(y_ax, x_ax))))
            variants.append((lambda a: np.swapaxes(a, y_ax, x_ax), lambda a: np.swapaxes(a, y_ax, x_ax)))
            anti = (lambda a: np.flip(np.swapaxes(a, y_ax, x_ax), (y_ax, x_ax)))  # an involution
            variants.append((anti, anti))
        acc = None
        for fwd, inv in variants:
            out = inv(self.backend.run(np.ascontiguousarray(fwd(batch))))
            acc = out.astype(np.float32) if acc is None else acc + out
        assert acc is not None
        return acc / np.float32(len(variants))

    # ------------------------------------------------------------------ the streaming engine

    def _slabs(self, volume: ArrayLike3D, plan: TilingPlan, stats: IntensityStats,
               rows: Sequence[int]) -> Iterator[tuple[int, int, np.ndarray]]:
        """Normalised, reflect-padded input slabs per z-row, read one row ahead on a thread."""
        tz = plan.z.tile
        z_total = volume.shape[0]
        pad_y, pad_x = plan.y.padded - plan.y.size, plan.x.padded - plan.x.size

        name = Path(str(getattr(volume, "source", "image"))).name

        def load(iz: int) -> np.ndarray:
            zs = plan.z.starts[iz]
            raw = np.asarray(volume[zs:min(zs + tz, z_total)])
            check_finite(raw, name, first_slice=zs)  # the rule training applies, slab by slab
            slab = apply_normalization(raw, stats)
            pz = tz - slab.shape[0]
            if pz or pad_y or pad_x:
                slab = np.pad(slab, ((0, pz), (0, pad_y), (0, pad_x)), mode="reflect" if slab.shape[0] > 1 or not pz else "edge")
            return slab

        with cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="emseg-read") as pool:
            pending: cf.Future[np.ndarray] | None = pool.submit(load, rows[0]) if rows else None
            for i, iz in enumerate(rows):
                assert pending is not None
                slab = pending.result()
                pending = pool.submit(load, rows[i + 1]) if i + 1 < len(rows) else None
                yield iz, plan.z.starts[iz], slab

    def _run(self, volume: ArrayLike3D, plan: TilingPlan, stats: IntensityStats, emit: Callable[[int, np.ndarray], None],
             z_range: tuple[int, int] | None = None, progress: Callback | None = None) -> None:
        """Predict and hand each finished output slice (K, Y, X), in z order, to *emit*."""
        mc = self.model_config
        z_total, y_size, x_size = (int(s) for s in volume.shape)
        z0, z1 = z_range or (0, z_total)
        tz, ty, tx = plan.tile_shape
        k_out = mc.out_channels
        rows = [iz for iz, zs in enumerate(plan.z.starts) if zs < z1 and zs + tz > z0]
        # Separable normalisation: the weight sum of a full tile grid is the product of 1D sums.
        wsum_yx = _axis_sum(plan.y)[:y_size, None] * _axis_sum(plan.x)[None, :x_size]
        wsum_z = _axis_sum(plan.z)[:z_total]
        single = len(plan.y.starts) == 1 and len(plan.x.starts) == 1 and plan.z.tile == 1
        acc: dict[int, np.ndarray] = {}
        batch_size = self._batch_size(plan)
        queue: list[tuple[int, int, int, int, int, int, np.ndarray]] = []
        next_emit = z0
        dims = mc.dims

        def flush(limit: int) -> None:
            nonlocal next_emit
            while next_emit < min(limit, z1):
                a = acc.pop(next_emit)
                if not single:
                    a /= wsum_yx[None] * wsum_z[next_emit]
                emit(next_emit, a)
                if progress is not None:
                    progress.on_progress(next_emit - z0 + 1, z1 - z0, f"slice {next_emit + 1} of {z_total}")
                next_emit += 1

        def run_queue() -> None:
            if not queue:
                return
            tiles = np.stack([q[6] for q in queue])
            inp = tiles[:, None] if dims == 3 else tiles[:, 0][:, None]
            out = self._infer(inp)
            if dims == 2:
                out = out[:, :, None]  # (N, K, 1, ty, tx)
            for (iz, zs, iy, ix, ys, xs, _), o in zip(queue, out, strict=True):
                ye, xe = min(ys + ty, y_size), min(xs + tx, x_size)
                w = None if single else plan.weight(iz, iy, ix)
                for dz in range(tz):
                    z = zs + dz
                    if z < z0 or z >= z1 or z >= z_total:
                        continue
                    if z not in acc:
                        acc[z] = np.zeros((k_out, y_size, x_size), dtype=np.float32)
                    part = o[:, dz, :ye - ys, :xe - xs]
                    if w is None:
                        acc[z][:, ys:ye, xs:xe] = part
                    else:
                        acc[z][:, ys:ye, xs:xe] += part * w[dz, :ye - ys, :xe - xs]
            queue.clear()

        for iz, zs, slab in self._slabs(volume, plan, stats, rows):
            for iy, ix, ys, xs in ((iy, ix, ys, xs) for iy, ys in enumerate(plan.y.starts) for ix, xs in enumerate(plan.x.starts)):
                queue.append((iz, zs, iy, ix, ys, xs, slab[:, ys:ys + ty, xs:xs + tx]))
                if len(queue) >= batch_size:
                    first_pending = zs  # tiles of this row may remain after the batch
                    run_queue()
                    flush(first_pending)
            if progress is not None and progress.should_stop():
                raise InterruptedError("prediction cancelled")
        run_queue()
        flush(z1)

    # ------------------------------------------------------------------ public API

    def _prepare(self, image: str | Path | ArrayLike3D | LazyVolume, calibration: Calibration | None,
                 stats: IntensityStats | None = None) -> tuple[LazyVolume, IntensityStats]:
        vol = open_volume(image, calibration)
        try:
            name = Path(str(vol.source)).name
            check_image_dtype(vol.dtype, name)
            mc = self.model_config
            if mc.in_channels != 1:
                raise ModelFileError(f"this model expects {mc.in_channels} input channels; fiji-emseg predicts single-channel stacks")
            if mc.dims == 3 and vol.shape[0] < 2:
                raise InputDataError(
                    f"{name} is a single slice but {mc.name} is a 3D model, which needs a stack of slices; "
                    "give the whole stack, or use a 2D model")
            if stats is None:
                stats = compute_stats(vol, self.info.normalization, name)
        except BaseException:
            if isinstance(image, (str, Path)):
                vol.close()
            raise
        return vol, stats

    def intensity_stats(self, image: str | Path | ArrayLike3D) -> IntensityStats:
        """The whole stack's normalisation statistics, to pass to :meth:`predict_block` for each block."""
        vol, stats = self._prepare(image, None)
        if isinstance(image, (str, Path)):
            vol.close()
        return stats

    def thresholds(self) -> tuple[float, ...]:
        """Mask thresholds: as given, else those calibrated on validation data at training, else 0.5."""
        if self.config.thresholds is None:
            return trained_thresholds(self.info.training, self.model_config.classes)
        return as_thresholds(self.config.thresholds, self.model_config.classes)

    def predict_block(self, image: str | Path | ArrayLike3D, z_range: tuple[int, int],
                      calibration: Calibration | None = None, stats: IntensityStats | None = None) -> np.ndarray:
        """Network probabilities (K, z1 - z0, Y, X) for slices [z0, z1), from the global tile grid.

        A distributed runner can call this per block; the blocks equal the corresponding part of
        a whole-stack prediction (the intensity statistics are computed on the whole stack, or
        given once from :meth:`intensity_stats` so that each block does not recompute them).
        """
        vol, stats = self._prepare(image, calibration, stats)
        try:
            z0, z1 = (int(v) for v in z_range)
            if not 0 <= z0 < z1 <= vol.shape[0]:
                raise ConfigError(f"block {z_range} is outside the stack of {vol.shape[0]} slices")
            plan = self.plan(vol.shape)
            out = np.empty((self.model_config.out_channels, z1 - z0, *vol.shape[1:]), dtype=np.float32)

            def emit(z: int, probs: np.ndarray) -> None:
                out[:, z - z0] = probs

            self._run(vol, plan, stats, emit, (z0, z1))
            return out
        finally:
            if isinstance(image, (str, Path)):
                vol.close()

    def predict(self, image: str | Path | ArrayLike3D, output_dir: str | Path | None = None, *, name: str | None = None,
                calibration: Calibration | None = None, overwrite: bool = False,
                progress: Callback | None = None) -> PredictionResult:
        """Predict a whole stack; write files to *output_dir*, or return xarray arrays when it is None."""
        cfg = self.config
        mc = self.model_config
        t0 = time.monotonic()
        vol, stats = self._prepare(image, calibration)
        try:
            if name is None:
                name = Path(str(vol.source)).name.split(".")[0] if isinstance(image, (str, Path)) else "prediction"
            spec = OutputSpec(mc.classes, mc.output, tuple(cfg.outputs), self.thresholds(), cfg.probability_dtype,
                              cfg.cleanup)
            plan = self.plan(vol.shape)
            if plan.overhead > 3:
                warnings.warn(
                    f"tiles of {plan.tile_shape[1:]} with this overlap compute every voxel {plan.overhead:.1f} times; "
                    "a larger tile (--tile) is faster", EmsegWarning, stacklevel=2)
            storage = "memory" if output_dir is None else cfg.storage
            writer = PredictionWriter(spec, vol.shape, vol.calibration, storage, output_dir, name, overwrite, cfg.compression)
            try:
                self._run(vol, plan, stats, lambda z, p: writer.write_slice(p), progress=progress)
                files = writer.close()
            except BaseException:
                writer.abort()
                raise
        finally:
            if isinstance(image, (str, Path)):
                vol.close()
        seconds = time.monotonic() - t0
        arrays = _to_xarray(writer.arrays, mc.classes, vol.calibration) if storage == "memory" else {}
        plan_info = {"thresholds": dict(zip(mc.classes, spec.thresholds, strict=True)) if mc.output == "sigmoid" else "argmax",
                     "tile": list(plan.tile_shape), "overlap_overhead": round(plan.overhead, 3), "tiles": plan.n_tiles,
                     "batch_size": self._batch_size(plan), "blend": cfg.blend, "halo": list(self.rf.halo),
                     "normalization": {"offset": stats.offset, "scale": stats.scale}}
        return PredictionResult(mc.classes, tuple(vol.shape), vol.calibration, self.backend.description,  # type: ignore[arg-type]
                                seconds, plan_info, files, arrays)

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _axis_sum(axis: Any) -> np.ndarray:
    """Sum of the 1D blending weights of all tiles placed along one axis (padded extent)."""
    total = np.zeros(axis.padded if axis.tile > 1 else axis.size, dtype=np.float64)
    for s, w in zip(axis.starts, axis.weights, strict=True):
        total[s:s + axis.tile] += w
    if np.any(total[: axis.size] <= 0):
        raise ConfigError("the tiling leaves voxels with no valid tile; increase the overlap or the tile size")
    return total.astype(np.float32)


def with_options(config: PredictConfig | None, options: dict[str, Any]) -> PredictConfig:
    """*config* (default: the defaults) with keyword *options* applied; an unknown name is one line."""
    cfg = config or PredictConfig()
    if not options:
        return cfg
    try:
        return replace(cfg, **options)
    except TypeError as exc:
        raise ConfigError(f"unknown prediction option: {exc}") from exc


def predict(model: str | Path, image: str | Path | ArrayLike3D, output_dir: str | Path | None = None, *,
            config: PredictConfig | None = None, name: str | None = None, overwrite: bool = False,
            calibration: Calibration | None = None, progress: Callback | None = None,
            trust_custom_code: bool = False, **options: Any) -> PredictionResult:
    """One-call prediction: ``predict("model/", "stack.tif", "out/")``; keyword options override ``config``."""
    cfg = with_options(config, options)
    with Predictor(model, cfg, trust_custom_code=trust_custom_code) as predictor:
        return predictor.predict(image, output_dir, name=name, calibration=calibration, overwrite=overwrite,
                                 progress=progress)
