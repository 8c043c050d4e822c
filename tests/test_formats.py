"""The model-format layer: one adapter per weight format, and the format order decided in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from emseg_testdata import random_model_dir

import fiji_emseg.engine.models.device as device_mod
from fiji_emseg.engine.inference.format_choice import plan_candidates
from fiji_emseg.engine.models.formats import FORMATS, describe_formats, open_model_source
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.models.model_store import ONNX_NAME, WEIGHTS_NAME
from fiji_emseg.export.onnx_export import export_onnx

PACKAGE = Path(__file__).resolve().parents[1] / "fiji_emseg"


def test_every_format_has_one_adapter() -> None:
    names = [f.name for f in FORMATS]
    assert names == ["pytorch_state_dict", "onnx_fp32", "onnx_fp16", "onnx_int8", "torchscript", "bioimageio"]
    assert all(f.summary for f in FORMATS)


def test_a_stale_onnx_export_is_present_but_not_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = random_model_dir(tmp_path / "m", ModelConfig(depth=2, filters=4), seed=0)
    export_onnx(folder)
    source = open_model_source(folder)
    status = {s.format: s for s in describe_formats(source)}
    assert status["onnx_fp32"].usable and status["pytorch_state_dict"].usable and not status["onnx_int8"].present
    random_model_dir(folder, ModelConfig(depth=2, filters=4), seed=1)  # retrained: new weights, old model.onnx
    status = {s.format: s for s in describe_formats(source)}
    assert status["onnx_fp32"].present and not status["onnx_fp32"].current and "stale" in status["onnx_fp32"].note
    monkeypatch.setattr(device_mod, "native_cpu_bf16", lambda: False)
    first = plan_candidates(source, device="cpu")[0]
    assert (first.runtime, first.precision) == ("onnxruntime", "fp32") and "on the fly" in first.reason
    monkeypatch.setattr(device_mod, "native_cpu_bf16", lambda: True)
    assert plan_candidates(source, device="cpu")[0].runtime == "torch"
    only_onnx = open_model_source(folder / ONNX_NAME)
    assert [c.runtime for c in plan_candidates(only_onnx, device="cpu")] == ["onnxruntime"]
    assert (folder / WEIGHTS_NAME).is_file()


def _names_used(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}


def test_the_format_order_is_decided_in_one_place() -> None:
    """Only format_choice knows runtimes' availability, weight file names and backend classes."""
    decisive = {"ort_cuda_available", "torch_cuda_available", "native_cpu_bf16", "OnnxRuntimeBackend", "TorchBackend",
                "TorchScriptBackend", "INT8_NAME", "FP16_NAME", "is_verified_int8", "is_current_export"}
    inference = PACKAGE / "engine" / "inference"
    users = {p.name for p in inference.glob("*.py") if _names_used(p) & decisive}
    assert users == {"format_choice.py", "backends.py"}
    assert not _names_used(inference / "predictor.py") & decisive
