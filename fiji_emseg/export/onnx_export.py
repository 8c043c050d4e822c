"""Export a trained model to ONNX, with metadata, and prove the export right.

The exported graph returns *probabilities* (sigmoid or softmax included) for inputs with any
batch size and any spatial size that is a multiple of the model's spatial multiple. After
export, ONNX Runtime's output is compared with PyTorch's on random input; the export fails,
and no file is left behind, if they differ by more than the tolerance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.data.files import atomic_path
from ..engine.models.model_store import FP16_NAME, ONNX_NAME, LoadedModel, load_model
from ..engine.models.onnx_graph import FP16_TOLERANCE, FP32_TOLERANCE, add_metadata, convert_to_onnx, probability_net, verify_onnx
from ..engine.models.onnx_metadata import metadata_props
from ..errors import ModelFileError

__all__ = ["ExportReport", "export_onnx", "FP16_NAME"]


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
    out = Path(output) if output is not None else loaded.path / ONNX_NAME
    if out.suffix.lower() != ".onnx":
        raise ModelFileError(f"{out}: ONNX files must end in .onnx")
    with atomic_path(out, overwrite=overwrite) as tmp:
        graph = convert_to_onnx(loaded, tmp, opset=opset, exporter=exporter, tolerance=tolerance)
    report = ExportReport(out, graph.max_abs_diff, tolerance, graph.exporter, 0.0, checked_shapes=graph.checked_shapes)
    if fp16:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        out16 = out.with_name(FP16_NAME) if out.name == ONNX_NAME else out.with_suffix(".fp16.onnx")
        with atomic_path(out16, overwrite=overwrite) as tmp16:
            m16 = convert_float_to_float16(onnx.load(str(out)), keep_io_types=True)
            onnx.save(m16, str(tmp16))
            add_metadata(tmp16, metadata_props(info, graph.tile, "fp16", graph.digest))
            report.fp16_max_abs_diff, _ = verify_onnx(tmp16, probability_net(loaded), info.model, FP16_TOLERANCE)
        report.fp16_path = out16
    report.seconds = time.monotonic() - t0
    return report
