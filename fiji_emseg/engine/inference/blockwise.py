"""Block-wise, resumable prediction of volumes larger than memory into OME-Zarr.

How it stays identical to :meth:`Predictor.predict`:

- One *global* tile plan is made for the whole volume. A block (a chunk-aligned box in z, y and
  x) takes exactly the global tiles that touch it, reads only their input extent (the block plus
  the receptive-field halo and the rest of those tiles), pads at the volume end exactly as the
  whole-volume run does, and blends with the global weights and weight sums. Every output voxel
  therefore gets the same tiles with the same weights in the same order as in one process.
- Intensity statistics are computed once, on the bounded sample of
  :func:`~fiji_emseg.engine.normalization.compute_stats`, recorded in the output store and handed
  to every block.

Why blocks are aligned to the output chunks: every chunk of every output array (and pyramid
level) is written by exactly one block, so any number of workers write without locks, and a
block that is recomputed (after a crash or a worker death) rewrites the same bytes.

Resume: the output store holds ``.emseg/run.json`` (what was asked: model hash, settings, input,
statistics, grid) and one marker file per finished block, written after its data. A rerun with
the same settings computes only blocks without markers; one with different settings is refused.
The run is marked complete (``run.json`` and the root attributes) only when every block of every
pyramid level is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, OutputError
from ..data.files import atomic_write_json, describe_os_error
from ..data.normalization import IntensityStats, apply_normalization
from ..data.ome_zarr import (
    DOWNSAMPLE_METHOD,
    LevelSpec,
    create_image,
    downsample,
    open_root,
    pyramid_levels,
)
from ..data.volume_io import Calibration, LazyVolume, open_volume
from .prediction_output import OutputSpec
from .tiling import TilingPlan

__all__ = [
    "PROB_DTYPES",
    "BlockContext",
    "BlockGrid",
    "BlockJob",
    "BlockwiseConfig",
    "ResumeStore",
    "finish_job",
    "predict_region",
    "prepare_job",
    "run_block",
    "run_pyramid_block",
]

PROB_DTYPES = ("uint8", "float16", "float32")
STATE_DIR = ".emseg"
RUN_FILE = "run.json"
FORMAT = "fiji-emseg blockwise 1"


@dataclass(frozen=True)
class BlockwiseConfig:
    """Layout of a block-wise run.

    - ``chunks``: output chunk (z, y, x), what viewers fetch; None = (32, 256, 256) capped to the volume.
    - ``block``: the unit of work, a multiple of ``chunks``; None = chunk z (2D models) or four tiles
      (3D models) deep and as wide as about 1 GiB of float32 probabilities allows (see :func:`auto_block`).
    - ``level``: input scale level (OME-Zarr/N5), default full resolution.
    - ``ngff_version``: "0.4" (zarr v2, read by Fiji today) or "0.5" (zarr v3).
    - ``pyramid``: write downsampled levels.
    """

    chunks: tuple[int, int, int] | None = None
    block: tuple[int, int, int] | None = None
    level: int | None = None
    ngff_version: str = "0.4"
    pyramid: bool = True

    def __post_init__(self) -> None:
        for name in ("chunks", "block"):
            v = getattr(self, name)
            if v is not None:
                v = tuple(int(a) for a in v)
                if len(v) != 3 or min(v) < 1:
                    raise ConfigError(f"{name} must be three positive sizes (z, y, x), got {getattr(self, name)}")
                object.__setattr__(self, name, v)
        if self.ngff_version not in ("0.4", "0.5"):
            raise ConfigError(f"unknown OME-Zarr version {self.ngff_version!r}; use 0.4 or 0.5")


@dataclass(frozen=True)
class BlockGrid:
    """A regular grid of blocks over a (z, y, x) shape; the last block per axis may be smaller."""

    shape: tuple[int, int, int]
    block: tuple[int, int, int]

    @property
    def counts(self) -> tuple[int, int, int]:
        return tuple(-(-n // b) for n, b in zip(self.shape, self.block, strict=True))  # type: ignore[return-value]

    def __len__(self) -> int:
        z, y, x = self.counts
        return z * y * x

    def indices(self) -> Iterator[tuple[int, int, int]]:
        return itertools.product(*(range(n) for n in self.counts))  # type: ignore[return-value]

    def region(self, index: Sequence[int]) -> tuple[tuple[int, int], ...]:
        return tuple((i * b, min((i + 1) * b, n)) for i, b, n in zip(index, self.block, self.shape, strict=True))


# ----------------------------------------------------------------------------- exact region prediction


def _tiles_touching(axis: Any, lo: int, hi: int) -> list[int]:
    return [i for i, s in enumerate(axis.starts) if s < hi and s + axis.tile > lo]


def _axis_sum(axis: Any) -> np.ndarray:
    from .predictor import _axis_sum as global_axis_sum

    return global_axis_sum(axis)


def predict_region(predictor: Any, volume: Any, plan: TilingPlan, stats: IntensityStats,
                   region: Sequence[tuple[int, int]]) -> np.ndarray:
    """Network probabilities (K, z1-z0, y1-y0, x1-x0) of *region*, equal to that part of a whole-volume run."""
    (z0, z1), (y0, y1), (x0, x1) = region
    Z, Y, X = (int(s) for s in volume.shape)
    tz, ty, tx = plan.tile_shape
    k_out = predictor.model_config.out_channels
    dims = predictor.model_config.dims
    zi = _tiles_touching(plan.z, z0, z1)
    yi = _tiles_touching(plan.y, y0, y1)
    xi = _tiles_touching(plan.x, x0, x1)
    ylo, yhi = plan.y.starts[yi[0]], plan.y.starts[yi[-1]] + ty
    xlo, xhi = plan.x.starts[xi[0]], plan.x.starts[xi[-1]] + tx
    single = len(plan.y.starts) == 1 and len(plan.x.starts) == 1 and plan.z.tile == 1
    pad_y, pad_x = plan.y.padded - Y, plan.x.padded - X
    acc = np.zeros((k_out, z1 - z0, y1 - y0, x1 - x0), dtype=np.float32)
    batch_size = predictor._batch_size(plan)
    queue: list[tuple[int, int, int, int, int, int, np.ndarray]] = []

    # One read of the whole input extent (chunked stores decompress a chunk per read, so reading
    # row by row would decompress each chunk once per slice); y/x reflect sources lie inside it.
    zr0, zr1 = plan.z.starts[zi[0]], min(plan.z.starts[zi[-1]] + tz, Z)
    maps = {m: ((np.pad(np.arange(Y), (0, pad_y), mode=m) if pad_y else np.arange(Y))[ylo:yhi],  # type: ignore[call-overload]
                (np.pad(np.arange(X), (0, pad_x), mode=m) if pad_x else np.arange(X))[xlo:xhi])  # type: ignore[call-overload]
            for m in ("reflect", "edge")}
    ya = int(min(v[0].min() for v in maps.values()))
    yb = int(max(v[0].max() for v in maps.values())) + 1
    xa = int(min(v[1].min() for v in maps.values()))
    xb = int(max(v[1].max() for v in maps.values())) + 1
    raw_all = np.asarray(volume[zr0:zr1, ya:yb, xa:xb])

    def load(iz: int) -> np.ndarray:
        zs = plan.z.starts[iz]
        n = min(zs + tz, Z) - zs
        pz = tz - n
        mode = "reflect" if n > 1 or not pz else "edge"  # as Predictor._slabs pads a slab
        zmap = np.pad(np.arange(n), (0, pz), mode=mode) if pz else np.arange(n)
        ymap, xmap = maps[mode]
        slab = apply_normalization(raw_all[zs - zr0:zs - zr0 + n], stats)
        if pz or pad_y or pad_x:
            slab = slab[zmap][:, ymap - ya][:, :, xmap - xa]
        return slab

    def run_queue() -> None:
        if not queue:
            return
        tiles = np.stack([q[6] for q in queue])
        inp = tiles[:, None] if dims == 3 else tiles[:, 0][:, None]
        out = predictor._infer(inp)
        if dims == 2:
            out = out[:, :, None]
        for (iz, zs, iy, ix, ys, xs, _), o in zip(queue, out, strict=True):
            ye, xe = min(ys + ty, Y), min(xs + tx, X)
            a, b, c, d = max(ys, y0), min(ye, y1), max(xs, x0), min(xe, x1)
            if a >= b or c >= d:
                continue
            w = None if single else plan.weight(iz, iy, ix)
            for dz in range(tz):
                z = zs + dz
                if z < z0 or z >= z1 or z >= Z:
                    continue
                part = o[:, dz, a - ys:b - ys, c - xs:d - xs]
                if w is None:
                    acc[:, z - z0, a - y0:b - y0, c - x0:d - x0] = part
                else:
                    acc[:, z - z0, a - y0:b - y0, c - x0:d - x0] += part * w[dz, a - ys:b - ys, c - xs:d - xs]
        queue.clear()

    for iz in zi:
        zs = plan.z.starts[iz]
        slab = load(iz)
        for iy in yi:
            ys = plan.y.starts[iy]
            for ix in xi:
                xs = plan.x.starts[ix]
                queue.append((iz, zs, iy, ix, ys, xs, slab[:, ys - ylo:ys - ylo + ty, xs - xlo:xs - xlo + tx]))
                if len(queue) >= batch_size:
                    run_queue()
    run_queue()
    if not single:
        wsum_yx = _axis_sum(plan.y)[:Y, None] * _axis_sum(plan.x)[None, :X]
        wsum_yx = wsum_yx[y0:y1, x0:x1]
        wsum_z = _axis_sum(plan.z)[:Z]
        for k, z in enumerate(range(z0, z1)):
            acc[:, k] /= wsum_yx[None] * wsum_z[z]
    return acc


# ----------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to compute any block: small, picklable, the same on every worker."""

    model: str
    config: Any  # PredictConfig with the plan's tile and overlap fixed
    input: str
    level: int | None
    output: str
    stats: tuple[float, float]
    shape: tuple[int, int, int]
    calibration: dict[str, Any]
    plan: TilingPlan
    chunks: tuple[int, int, int]
    block: tuple[int, int, int]
    kinds: tuple[str, ...]
    classes: tuple[str, ...]
    output_mode: str
    thresholds: tuple[float, ...]
    probability_dtype: str
    levels: tuple[LevelSpec, ...]
    ngff_version: str
    trust_custom_code: bool = False
    token: str = ""

    @property
    def grid(self) -> BlockGrid:
        return BlockGrid(self.shape, self.block)

    def level_grid(self, level: int) -> BlockGrid:
        return BlockGrid(self.levels[level].shape, self.block)

    @property
    def n_blocks(self) -> int:
        return len(self.grid)

    def spec(self) -> OutputSpec:
        return OutputSpec(self.classes, self.output_mode, self.kinds, self.thresholds,
                          "uint8" if self.probability_dtype == "uint8" else "float32", None)


class ResumeStore:
    """Run record and per-block completion markers inside the output store (``.emseg/``)."""

    def __init__(self, output: str | Path) -> None:
        self.root = Path(output)
        self.state = self.root / STATE_DIR

    @property
    def run_file(self) -> Path:
        return self.state / RUN_FILE

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.run_file.read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise OutputError(f"{self.run_file} is damaged ({exc}); pass --overwrite to start this output again") from exc

    def write(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.run_file, record, overwrite=True)

    def marker(self, level: int, index: Sequence[int]) -> Path:
        return self.state / "done" / str(level) / ".".join(str(i) for i in index)

    def done(self, level: int) -> set[tuple[int, ...]]:
        d = self.state / "done" / str(level)
        if not d.is_dir():
            return set()
        return {tuple(int(v) for v in f.name.split(".")) for f in d.iterdir() if not f.name.startswith(".")}

    def mark(self, level: int, index: Sequence[int]) -> None:
        m = self.marker(level, index)
        m.parent.mkdir(parents=True, exist_ok=True)
        tmp = m.parent / f".{m.name}.{os.getpid()}.tmp"
        tmp.write_bytes(b"")
        os.replace(tmp, m)


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_fingerprint(model: str | Path) -> str:
    """A hash of the model's weights (folder) or the .onnx file: what makes two results comparable."""
    from ..models.model_store import WEIGHTS_NAME

    p = Path(model)
    if p.is_file():
        return _file_hash(p)
    parts = [_file_hash(p / WEIGHTS_NAME) if (p / WEIGHTS_NAME).is_file() else ""]
    cfg = p / "config.json"
    if cfg.is_file():
        with contextlib.suppress(ValueError, OSError):
            d = json.loads(cfg.read_text())
            parts.append(hashlib.sha256(json.dumps(d.get("model", d), sort_keys=True).encode()).hexdigest()[:16])
    return "-".join(parts)


def _settings(job: BlockJob) -> dict[str, Any]:
    """What must match for a rerun to continue a stored run (names shown when they differ)."""
    cfg = job.config
    return {
        "model": model_fingerprint(job.model),
        "input": {"path": str(Path(job.input).resolve()), "level": job.level, "shape": list(job.shape)},
        "tile": list(job.plan.tile_shape),
        "tiles": [list(job.plan.z.starts[:2]), list(job.plan.y.starts), list(job.plan.x.starts)],
        "blend": cfg.blend, "tta": cfg.tta, "precision": cfg.precision,
        "outputs": list(job.kinds), "thresholds": list(job.thresholds), "probability_dtype": job.probability_dtype,
        "normalization": list(job.stats), "chunks": list(job.chunks), "block": list(job.block),
        "levels": len(job.levels), "ngff_version": job.ngff_version,
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def auto_chunks(shape: Sequence[int]) -> tuple[int, int, int]:
    return (min(int(shape[0]), 32), min(int(shape[1]), 256), min(int(shape[2]), 256))


#: Default budget of one block's float32 probabilities (voxels × output channels): about 1 GiB.
BLOCK_BUDGET = 256 << 20


def auto_block(shape: Sequence[int], chunks: Sequence[int], plan: TilingPlan, dims: int,
               channels: int = 1) -> tuple[int, int, int]:
    """The default unit of work: as wide as the memory budget allows, since tiles that straddle a
    block border are computed by both blocks (the extra work is about tile / block width per axis)."""
    def fit(n: int, c: int, want: int) -> int:
        return int(max(c, min(-(-n // c) * c, (want // c) * c)))

    tz, ty, _ = plan.tile_shape
    bz = chunks[0] if dims == 2 else fit(shape[0], chunks[0], max(4 * tz, chunks[0]))
    side = int((BLOCK_BUDGET / max(1, channels * bz)) ** 0.5)
    side = max(side, 2 * ty, chunks[1], chunks[2])
    return (bz, fit(shape[1], chunks[1], side), fit(shape[2], chunks[2], side))


def prepare_job(predictor: Any, model: str | Path, image: str | Path, output: str | Path, bw: BlockwiseConfig,
                *, overwrite: bool = False, trust_custom_code: bool = False) -> tuple[BlockJob, dict[str, Any]]:
    """Plan the run, create (or check and reuse) the output store; returns the job and the run record."""
    from dataclasses import replace

    from ..data.normalization import compute_stats

    cfg = predictor.config
    mc = predictor.model_config
    if cfg.cleanup is not None and cfg.cleanup.enabled:
        raise ConfigError("mask clean-up needs whole objects and is not done block-wise; predict without clean-up "
                          "options, or predict to TIFF (-o FOLDER) to clean in one piece")
    if cfg.probability_dtype not in PROB_DTYPES:
        raise ConfigError(f"probability type {cfg.probability_dtype!r} is not available; use {', '.join(PROB_DTYPES)}")
    out = Path(output)
    if out.suffix.lower() not in (".zarr",):
        raise ConfigError(f"{out.name}: a block-wise output is an OME-Zarr store; name it <name>.ome.zarr")
    vol = open_volume(image, level=bw.level)
    try:
        shape = tuple(int(s) for s in vol.shape)
        plan = predictor.plan(shape)
        stats_record = ResumeStore(out).read() if out.exists() and not overwrite else None
        if stats_record is not None and "normalization" in stats_record.get("settings", {}):
            offset, scale = stats_record["settings"]["normalization"]
            stats = IntensityStats(float(offset), float(scale))  # the stored run's statistics (cheap, identical)
        else:
            stats = compute_stats(vol, predictor.info.normalization, Path(str(image)).name)
        cal = vol.calibration
    finally:
        vol.close()
    chunks = tuple(min(c, n) for c, n in zip(bw.chunks or auto_chunks(shape), shape, strict=True))
    block = bw.block or auto_block(shape, chunks, plan, mc.dims, mc.out_channels)
    bad = [a for a, b, c, n in zip("zyx", block, chunks, shape, strict=True) if b % c and b < n]
    if bad:
        raise ConfigError(f"block {tuple(block)} must be a multiple of the chunks {tuple(chunks)} (axes {', '.join(bad)})")
    levels = pyramid_levels(shape, cal.voxel_size, chunks) if bw.pyramid else [LevelSpec(shape, (1, 1, 1), cal.voxel_size)]  # type: ignore[arg-type]
    fixed = replace(cfg, tile=plan.tile_shape[1:] if mc.dims == 2 else plan.tile_shape)
    job = BlockJob(str(model), fixed, str(image), bw.level, str(out), (stats.offset, stats.scale), shape,  # type: ignore[arg-type]
                   cal.to_dict(), plan, chunks, tuple(block), tuple(cfg.outputs), tuple(mc.classes), mc.output,  # type: ignore[arg-type]
                   tuple(predictor.thresholds()), cfg.probability_dtype, tuple(levels), bw.ngff_version, trust_custom_code)
    settings = _settings(job)
    token = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    job = replace(job, token=token)
    store = ResumeStore(out)
    record = store.read() if out.exists() else None
    if out.exists() and overwrite:
        shutil.rmtree(out)
        record = None
    elif out.exists() and record is None:
        raise OutputError(f"{out} exists and is not a fiji-emseg block-wise output; choose another output or pass --overwrite")
    if record is not None:
        diff = _differences(record.get("settings", {}), settings)
        if diff:
            raise OutputError(f"{out} holds a run with a different {', '.join(diff)}; refusing to mix results: use "
                              "another output, the same settings to resume, or --overwrite to start again")
        return job, record
    _create_store(job)
    record = {"format": FORMAT, "settings": settings, "token": token, "blocks": job.n_blocks,
              "levels": [list(lv.shape) for lv in levels], "complete": False}
    store.write(record)
    return job, record


def _create_store(job: BlockJob) -> None:
    out = Path(job.output)
    try:
        root = open_root(out, job.ngff_version, mode="w")
        root.attrs.update({"emseg": {"complete": False, "classes": list(job.classes), "output_mode": job.output_mode,
                                     "thresholds": list(job.thresholds)}})
        cal = Calibration.from_dict(job.calibration)
        c = len(job.classes)
        for kind in job.kinds:
            if kind == "probabilities":
                create_image(root, kind, c, job.levels, job.probability_dtype, job.chunks, cal, job.ngff_version, job.classes)
            elif kind == "masks":
                create_image(root, kind, c, job.levels, np.uint8, job.chunks, cal, job.ngff_version, job.classes)
            else:
                create_image(root, kind, None, job.levels, job.spec().label_dtype, job.chunks, cal, job.ngff_version,
                             extra={"image-label": {"version": job.ngff_version}} if job.ngff_version == "0.4" else None)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, out)) from exc


# ----------------------------------------------------------------------------- worker side


@dataclass
class BlockContext:
    """What a worker keeps between blocks of one job: the model, the open input and outputs."""

    job: BlockJob
    predictor: Any
    volume: LazyVolume
    arrays: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, job: BlockJob, predictor: Any = None) -> BlockContext:
        from .predictor import Predictor

        if predictor is None:
            predictor = Predictor(job.model, job.config, trust_custom_code=job.trust_custom_code)
        volume = open_volume(job.input, level=job.level)
        root = open_root(job.output, job.ngff_version, mode="r+")
        arrays = {kind: [root[f"{kind}/{i}"] for i in range(len(job.levels))] for kind in job.kinds}
        return cls(job, predictor, volume, arrays)

    def close(self) -> None:
        self.volume.close()


def _write(arr: Any, key: tuple[Any, ...], data: np.ndarray, output: str) -> None:
    try:
        arr[key] = data
    except OSError as exc:
        raise OutputError(describe_os_error(exc, Path(output))) from exc


def run_block(ctx: BlockContext, index: Sequence[int]) -> int:
    """Predict one level-0 block, write every requested output, then mark it done; returns its voxels."""
    job = ctx.job
    region = job.grid.region(index)
    probs = predict_region(ctx.predictor, ctx.volume, job.plan, IntensityStats(*job.stats), region)
    spec = job.spec()
    per_kind: dict[str, list[np.ndarray]] = {k: [] for k in job.kinds}
    for k in range(probs.shape[1]):
        outs = spec.convert(probs[:, k])
        for kind in job.kinds:
            per_kind[kind].append(outs[kind])
    (z0, z1), (y0, y1), (x0, x1) = region
    for kind, planes in per_kind.items():
        if kind == "labels":
            _write(ctx.arrays[kind][0], (slice(z0, z1), slice(y0, y1), slice(x0, x1)), np.stack(planes), job.output)
            continue
        data = np.stack(planes, axis=1)
        if kind == "masks":
            data = data * np.uint8(255)
        elif job.probability_dtype == "float16":
            data = data.astype(np.float16)
        _write(ctx.arrays[kind][0], (slice(None), slice(z0, z1), slice(y0, y1), slice(x0, x1)), data, job.output)
    _mark(job, 0, index)
    return (z1 - z0) * (y1 - y0) * (x1 - x0)


def _mark(job: BlockJob, level: int, index: Sequence[int]) -> None:
    try:
        ResumeStore(job.output).mark(level, index)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, Path(job.output))) from exc


def run_pyramid_block(job: BlockJob, arrays: dict[str, list[Any]], level: int, index: Sequence[int]) -> int:
    """Downsample level-1 data into one chunk-aligned block of *level*, then mark it done."""
    region = job.level_grid(level).region(index)
    f = job.levels[level].factor
    src = tuple(slice(a * fi, b * fi) for (a, b), fi in zip(region, f, strict=True))
    dst = tuple(slice(a, b) for a, b in region)
    for kind in job.kinds:
        lead = () if kind == "labels" else (slice(None),)
        data = np.asarray(arrays[kind][level - 1][lead + src])
        small = downsample(data, f, DOWNSAMPLE_METHOD[kind])
        want = tuple(b - a for a, b in region)
        small = small[(...,) + tuple(slice(0, n) for n in want)]
        _write(arrays[kind][level], lead + dst, small, job.output)
    _mark(job, level, index)
    return int(np.prod([b - a for a, b in region]))


def pending(job: BlockJob, level: int) -> list[tuple[int, int, int]]:
    """Blocks of *level* without a completion marker, in grid order."""
    done = ResumeStore(job.output).done(level)
    grid = job.grid if level == 0 else job.level_grid(level)
    return [i for i in grid.indices() if i not in done]


def finish_job(job: BlockJob, record: dict[str, Any]) -> dict[str, Any]:
    """Mark the run complete once every block of every level has its marker (never before)."""
    store = ResumeStore(job.output)
    missing = sum(len(pending(job, lv)) for lv in range(len(job.levels)))
    if missing:
        raise OutputError(f"{job.output}: {missing} blocks are not written; rerun the same command to finish them")
    record = {**record, "complete": True}
    root = open_root(job.output, job.ngff_version, mode="r+")
    attrs = dict(root.attrs.get("emseg", {}))
    attrs["complete"] = True
    root.attrs["emseg"] = attrs
    store.write(record)
    return record


def run_record(output: str | Path) -> dict[str, Any] | None:
    """The stored run record of a block-wise output (None when there is none)."""
    return ResumeStore(output).read()


def settings_json(job: BlockJob) -> str:
    return json.dumps(_settings(job), sort_keys=True)


def job_summary(job: BlockJob) -> dict[str, Any]:
    return {"shape": list(job.shape), "chunks": list(job.chunks), "block": list(job.block), "blocks": job.n_blocks,
            "levels": [asdict(lv) for lv in job.levels], "tile": list(job.plan.tile_shape)}
