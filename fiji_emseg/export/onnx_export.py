"""Export a trained model to ONNX, with metadata, and prove the export right.

The exported graph returns *probabilities* (sigmoid or softmax included) for inputs with any
batch size and any spatial size that is a multiple of the model's spatial multiple. After
export, ONNX Runtime's output is compared with PyTorch's on random input; the export fails,
and no file is left behind, if they differ by more than the tolerance.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.files import atomic_path
from ..engine.model_config import ModelConfig
from ..engine.model_store import FP16_NAME, ONNX_NAME, WEIGHTS_NAME, LoadedModel, load_model
from ..engine.receptive_field import ReceptiveField
from ..engine.unet import ProbabilityHead
from ..errors import ModelFileError
from .metadata import metadata_props

__all__ = ["ExportReport", "export_onnx", "is_current_export", "recommended_tile", "weights_digest", "FP16_NAME"]

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2


@dataclass
class ExportReport:
    path: Path
    max_abs_diff: float
    tolerance: float
    exporter: str
    seconds: float
    fp16_path: Path | None = None
    fp16_max_abs_diff: float | None = None
    checked_shapes: list[tuple[int, ...]] = field(default_factory=list)

    def summary(self) -> str:
        s = (f"exported {self.path} ({self.exporter} exporter, {self.seconds:.1f} s); ONNX Runtime vs PyTorch max abs "
             f"difference {self.max_abs_diff:.2e} (tolerance {self.tolerance:.0e})")
        if self.fp16_path is not None:
            s += f"; fp16 model {self.fp16_path} (max abs difference {self.fp16_max_abs_diff:.2e})"
        return s


def weights_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_current_export(onnx_path: str | Path, model_dir: str | Path) -> bool:
    """Whether *onnx_path* was exported from the weights now in *model_dir* (by content hash)."""
    from .metadata import read_onnx_metadata

    weights = Path(model_dir) / WEIGHTS_NAME
    try:
        meta = read_onnx_metadata(onnx_path)
    except ModelFileError:
        return False
    return bool(meta.weights_sha256) and weights.is_file() and meta.weights_sha256 == weights_digest(weights)


def recommended_tile(config: ModelConfig, rf: ReceptiveField, xy: int = 1024, z: int = 32) -> tuple[int, int, int]:
    """A tile that keeps the overlap overhead low: at least 2×halo + 2×multiple per axis."""
    mz, my, mx = config.spatial_multiple

    def axis(default: int, halo: int, m: int) -> int:
        t = max(default, 2 * halo + 2 * m)
        return int(-(-t // m) * m)

    ty, tx = axis(xy, rf.halo[1], my), axis(xy, rf.halo[2], mx)
    tz = 1 if config.dims == 2 else axis(z, rf.halo[0], mz)
    return (tz, ty, tx)


def _example_shape(config: ModelConfig, scale: tuple[int, int, int], batch: int) -> tuple[int, ...]:
    mz, my, mx = config.spatial_multiple
    sz, sy, sx = scale
    if config.dims == 2:
        return (batch, config.in_channels, sy * my, sx * mx)
    return (batch, config.in_channels, sz * mz, sy * my, sx * mx)


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """The dynamo exporter logs progress and missing-torchvision notes; users need none of it."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def _export_graph(net: torch.nn.Module, config: ModelConfig, path: Path, opset: int, exporter: str) -> str:
    example = torch.randn(_example_shape(config, (3, 3, 2), 2))
    names: dict[str, Any] = {"input_names": ["input"], "output_names": ["probabilities"]}
    errors = []
    if exporter in ("auto", "dynamo"):
        try:
            mz, my, mx = config.spatial_multiple
            dims = {0: torch.export.Dim("batch", min=1, max=4096)}
            spatial = [("z", mz), ("y", my), ("x", mx)][-config.dims:]
            for axis, (nm, m) in enumerate(spatial, start=2):
                dims[axis] = torch.export.Dim(f"{nm}_blocks", min=1, max=65536 // m) * m if m > 1 else torch.export.Dim(nm, min=1)
            with _quiet_exporter():
                torch.onnx.export(net, (example,), str(path), dynamo=True, dynamic_shapes={"x": dims},
                                  opset_version=opset, external_data=False, verbose=False, report=False, **names)
            return "dynamo"
        except Exception as exc:  # fall back to the TorchScript exporter
            errors.append(f"dynamo: {exc}")
            if exporter == "dynamo":
                raise ModelFileError(f"ONNX export failed: {exc}") from exc
    axes = {0: "batch", **{i + 2: n for i, n in enumerate(["z", "y", "x"][-config.dims:])}}
    try:
        with _quiet_exporter():
            torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=min(opset, 17),
                              dynamic_axes={"input": axes, "probabilities": axes}, **names)
        return "torchscript"
    except Exception as exc:
        errors.append(f"torchscript: {exc}")
        raise ModelFileError("ONNX export failed with both exporters: " + " | ".join(errors)) from exc


def _verify(path: Path, net: torch.nn.Module, config: ModelConfig, tolerance: float,
            seed: int = 0) -> tuple[float, list[tuple[int, ...]]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelFileError(f"ONNX Runtime cannot load the exported model ({exc})") from exc
    gen = torch.Generator().manual_seed(seed)
    worst, shapes = 0.0, []
    for scale, batch in (((2, 4, 3), 2), ((1, 2, 5), 1)):
        shape = _example_shape(config, scale, batch)
        x = torch.randn(shape, generator=gen)
        with torch.no_grad():
            ref = net(x).numpy()
        out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        if out.shape != ref.shape:
            raise ModelFileError(f"exported model returns shape {out.shape} for input {shape}; PyTorch returns {ref.shape}")
        diff = float(np.max(np.abs(out.astype(np.float64) - ref)))
        if not np.isfinite(diff):
            diff = float("inf")
        worst = max(worst, diff)
        shapes.append(shape)
    if worst > tolerance:
        raise ModelFileError(
            f"export check failed: ONNX Runtime and PyTorch outputs differ by up to {worst:.3g} "
            f"(tolerance {tolerance:g}); the exported file was not written. Please report this model's config.json")
    return worst, shapes


def _add_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "fiji-emseg"
    onnx.save(model, str(path))


def export_onnx(model: str | Path | LoadedModel, output: str | Path | None = None, *, fp16: bool = False,
                opset: int = 18, tolerance: float = FP32_TOLERANCE, overwrite: bool = False,
                exporter: str = "auto", trust_custom_code: bool = False) -> ExportReport:
    """Export *model* (a model folder or a loaded model) to ONNX and verify it.

    ``output`` defaults to ``model.onnx`` in the model folder. ``fp16`` also writes a
    half-precision copy (``model.fp16.onnx``) for GPUs, with float32 inputs and outputs.
    """
    t0 = time.monotonic()
    loaded = model if isinstance(model, LoadedModel) else load_model(model, "cpu", trust_custom_code)
    info = loaded.info
    rf = info.ensure_receptive_field()
    out = Path(output) if output is not None else loaded.path / ONNX_NAME
    if out.suffix.lower() != ".onnx":
        raise ModelFileError(f"{out}: ONNX files must end in .onnx")
    net = ProbabilityHead(loaded.module, info.model.output).cpu().float().eval()
    digest = weights_digest(loaded.path / WEIGHTS_NAME) if (loaded.path / WEIGHTS_NAME).exists() else ""
    tile = recommended_tile(info.model, rf)
    with atomic_path(out, overwrite=overwrite) as tmp:
        used = _export_graph(net, info.model, tmp, opset, exporter)
        _add_metadata(tmp, metadata_props(info, tile, "fp32", digest))
        diff, shapes = _verify(tmp, net, info.model, tolerance)
    report = ExportReport(out, diff, tolerance, used, 0.0, checked_shapes=shapes)
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16
        import onnx

        out16 = out.with_name(FP16_NAME) if out.name == ONNX_NAME else out.with_suffix(".fp16.onnx")
        with atomic_path(out16, overwrite=overwrite) as tmp16:
            m16 = convert_float_to_float16(onnx.load(str(out)), keep_io_types=True)
            onnx.save(m16, str(tmp16))
            _add_metadata(tmp16, metadata_props(info, tile, "fp16", digest))
            report.fp16_max_abs_diff, _ = _verify(tmp16, net, info.model, FP16_TOLERANCE)
        report.fp16_path = out16
    report.seconds = time.monotonic() - t0
    return report
