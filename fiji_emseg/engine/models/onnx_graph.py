"""Torch → ONNX conversion of a model, checked against PyTorch before anyone uses it.

The exported graph returns *probabilities* (sigmoid or softmax included) for inputs with any
batch size and any spatial size that is a multiple of the model's spatial multiple. After
conversion, ONNX Runtime's output is compared with PyTorch's on random input; a graph that
differs by more than the tolerance is refused. Both the user-facing ``emseg export``
(``fiji_emseg.export``) and the predictor's on-the-fly conversion of a model folder without a
current ``model.onnx`` use this one function.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import ModelFileError
from .model_config import ModelConfig
from .model_store import WEIGHTS_NAME, LoadedModel
from .onnx_metadata import metadata_props, weights_digest
from .receptive_field import recommended_tile
from .unet import ProbabilityHead

__all__ = ["FP16_TOLERANCE", "FP32_TOLERANCE", "ConvertedGraph", "add_metadata", "convert_to_onnx", "probability_net",
           "verify_onnx"]

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2


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


def verify_onnx(path: Path, net: torch.nn.Module, config: ModelConfig, tolerance: float,
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


def add_metadata(path: Path, props: dict[str, str], max_ir_version: int | None = None) -> None:
    """Write fiji-emseg metadata into *path*; optionally cap the IR version for older runtimes.

    ONNX Runtime 1.13 (deepImageJ's) reads IR version 8 at most; a graph of opset <= 17 uses
    nothing newer, so lowering the version field is safe (the checker confirms it).
    """
    import onnx

    model = onnx.load(str(path))
    if max_ir_version is not None and model.ir_version > max_ir_version:
        model.ir_version = max_ir_version
        onnx.checker.check_model(model)
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "fiji-emseg"
    onnx.save(model, str(path))


@dataclass(frozen=True)
class ConvertedGraph:
    """What :func:`convert_to_onnx` wrote: the exporter used and the check against PyTorch."""

    exporter: str
    max_abs_diff: float
    checked_shapes: list[tuple[int, ...]]
    tile: tuple[int, int, int]
    digest: str  # SHA-256 of the weights it came from ("" for an in-memory model)


def probability_net(loaded: LoadedModel) -> torch.nn.Module:
    """The network with its sigmoid/softmax head, on the CPU in fp32, as every export runs it."""
    return ProbabilityHead(loaded.module, loaded.info.model.output).cpu().float().eval()


def convert_to_onnx(loaded: LoadedModel, path: Path, *, opset: int = 18, exporter: str = "auto",
                    tolerance: float = FP32_TOLERANCE, max_ir_version: int | None = None) -> ConvertedGraph:
    """Write *loaded* as an fp32 ONNX graph with metadata to *path* and check it against PyTorch.

    *path* is written in place: callers pass a temporary path (``atomic_path``) or a temporary
    folder, so a refused graph never appears under a final name.
    """
    info = loaded.info
    rf = info.ensure_receptive_field()
    net = probability_net(loaded)
    digest = weights_digest(loaded.path / WEIGHTS_NAME) if (loaded.path / WEIGHTS_NAME).exists() else ""
    tile = recommended_tile(info.model, rf)
    used = _export_graph(net, info.model, path, opset, exporter)
    add_metadata(path, metadata_props(info, tile, "fp32", digest), max_ir_version)
    diff, shapes = verify_onnx(path, net, info.model, tolerance)
    return ConvertedGraph(used, diff, shapes, tile, digest)
