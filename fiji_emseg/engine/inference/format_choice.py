"""Which weight format and runtime prediction uses: the one place that decides the order.

The predictor asks :func:`plan_candidates` for (format, runtime, device, precision) tuples in
order of preference and starts the first that really starts (:func:`build_backend`). The
order, measured on the project's machines:

- CPU, ``auto``: a verified int8 ONNX model (2.8x fp32 on VNNI CPUs), then PyTorch bf16 where
  the CPU has bf16 units (1.2x), then ONNX Runtime fp32 (TorchScript when a package has no ONNX).
- GPU: ONNX Runtime CUDA (the fp16 copy when it is current), then PyTorch CUDA (bf16/fp16 autocast).

What each format is and whether it is present and current is the format adapters' business
(:mod:`fiji_emseg.engine.models.formats`); this module only orders them and builds backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..models import device as device_mod
from ..models.formats import ModelSource, format_named
from ..models.model_store import ONNX_NAME, load_model
from ..models.onnx_graph import convert_to_onnx
from .backends import OnnxRuntimeBackend, TorchBackend, TorchScriptBackend, ort_cuda_available, torch_cuda_available

__all__ = ["Candidate", "build_backend", "plan_candidates"]


@dataclass(frozen=True)
class Candidate:
    """One way to run the model, with the reason it sits where it does in the order."""

    runtime: str  # "onnxruntime" or "torch"
    device: str
    precision: str
    reason: str

    def __iter__(self) -> Any:  # (runtime, device, precision), as the predictor used to list them
        return iter((self.runtime, self.device, self.precision))


def _torch_format(source: ModelSource) -> str | None:
    """The torch-runnable format of *source*: our state dict first (any precision), else TorchScript."""
    for name in ("pytorch_state_dict", "torchscript"):
        if format_named(name).status(source).usable:
            return name
    return None


def _onnx_available(source: ModelSource) -> bool:
    """Folders convert on the fly; files and packages must carry ONNX weights."""
    return source.kind == "folder" or format_named("onnx_fp32").status(source).present or (
        source.kind == "onnx")


def plan_candidates(source: ModelSource, backend: str = "auto", device: str = "auto",
                    precision: str = "auto") -> list[Candidate]:
    """(runtime, device, precision) to try in order: the fastest that really starts wins."""
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu or cuda[:N]")
    name = source.path.name
    onnx_precision = None
    if source.kind == "onnx":  # an .onnx file runs as it is
        from ..models.onnx_metadata import read_onnx_metadata

        onnx_precision = read_onnx_metadata(source.path).precision
        if backend == "torch":
            raise ConfigError("the torch backend needs a model folder with weights, not an .onnx file; use --backend onnxruntime")
        if precision not in ("auto", onnx_precision):
            raise ConfigError(f"{name} is a {onnx_precision} model; leave precision on auto or give the "
                              f"model folder to choose another precision")
        backend = "onnxruntime"
    torch_fmt = _torch_format(source)
    onnx_ok = _onnx_available(source)
    if backend == "torch" and torch_fmt is None:
        raise ConfigError(f"{name} has no PyTorch weights (state dict or TorchScript); use --backend onnxruntime")
    if backend == "onnxruntime" and not onnx_ok:
        raise ConfigError(f"{name} has no ONNX weights; use --backend torch (it has {torch_fmt})")
    if backend == "onnxruntime" and precision == "bf16":
        raise ConfigError("ONNX Runtime has no bf16 path; use --backend torch for bf16, or --precision fp32/int8")
    int8 = onnx_precision == "int8" or (source.kind == "folder" and format_named("onnx_int8").status(source).usable)
    if precision == "int8" and not int8:
        raise ConfigError(f"{source.path} has no verified int8 model; export one with "
                          "'emseg export MODEL --int8 --calibration STACK' or choose another precision")
    gpu = device if device.startswith("cuda") else "cuda"
    out: list[Candidate] = []
    if device != "cpu":
        if backend in ("auto", "onnxruntime") and onnx_ok and ort_cuda_available() and precision != "int8":
            out.append(Candidate("onnxruntime", gpu, precision, "GPU: ONNX Runtime CUDA comes first (fp16 copy when current)"))
        if backend in ("auto", "torch") and torch_fmt and torch_cuda_available() and precision != "int8":
            out.append(Candidate("torch", gpu, precision, f"GPU: PyTorch CUDA on the {torch_fmt} weights"))
        if device.startswith("cuda") and not out:
            raise ConfigError(
                "CUDA was requested but neither ONNX Runtime (onnxruntime-gpu) nor PyTorch can use a GPU here; "
                "install onnxruntime-gpu or a CUDA build of PyTorch, or use --device cpu")
    if device in ("auto", "cpu"):
        if backend in ("auto", "onnxruntime") and int8 and precision in ("auto", "int8"):
            out.append(Candidate("onnxruntime", "cpu", "int8", "CPU: a verified int8 model is 2.8x faster than fp32"))
        if precision != "int8":
            bf16_pays = precision == "bf16" or (precision == "auto" and device_mod.native_cpu_bf16())
            want_torch = torch_fmt is not None and (
                backend == "torch" or (backend == "auto" and torch_fmt == "pytorch_state_dict" and bf16_pays))
            if want_torch:
                out.append(Candidate("torch", "cpu", precision,
                                     "CPU: PyTorch bf16 (this CPU has bf16 units)" if bf16_pays and precision == "auto"
                                     else f"CPU: PyTorch, as asked, on the {torch_fmt} weights"))
            if backend in ("auto", "onnxruntime") and onnx_ok:
                fresh = source.kind == "folder" and not format_named("onnx_fp32").status(source).usable
                out.append(Candidate("onnxruntime", "cpu", "fp32" if onnx_precision is None else onnx_precision,
                                     "CPU: ONNX Runtime fp32" + (" (no verified int8 model)" if not int8 else "")
                                     + (", exported on the fly (no current model.onnx)" if fresh else "")))
            elif backend == "auto" and torch_fmt is not None and not want_torch:
                out.append(Candidate("torch", "cpu", precision, f"CPU: PyTorch on the {torch_fmt} weights (no ONNX weights)"))
    return out


def _onnx_path(source: ModelSource, device: str, precision: str, trust_custom_code: bool) -> Path:
    if source.kind == "onnx":
        return source.path
    if device == "cpu" and precision == "int8":
        path = format_named("onnx_int8").locate(source)
        assert path is not None
        return path
    if device.startswith("cuda") and precision in ("auto", "fp16"):
        fp16 = format_named("onnx_fp16").status(source)
        if fp16.usable and fp16.path is not None:
            return fp16.path
    fp32 = format_named("onnx_fp32").status(source)
    if fp32.usable and fp32.path is not None:
        if source.info.receptive_field is None and source.kind == "folder":  # measured at export time
            from ..models.onnx_metadata import read_onnx_metadata

            source.info.receptive_field = read_onnx_metadata(fp32.path).info.receptive_field
        return fp32.path
    # a folder without a current model.onnx: convert into a temporary folder, leave the folder untouched
    assert source.kind == "folder" and source.root is not None
    path = source.temp_dir("emseg-onnx-") / ONNX_NAME
    convert_to_onnx(load_model(source.root, "cpu", trust_custom_code), path)
    return path


def build_backend(source: ModelSource, candidate: Candidate, *, threads: int | None = None, compile: bool = False,
                  trust_custom_code: bool = False) -> Any:
    """Start the runtime for *candidate* on the right file of *source* (raises ConfigError when it cannot)."""
    if candidate.runtime == "onnxruntime":
        return OnnxRuntimeBackend(_onnx_path(source, candidate.device, candidate.precision, trust_custom_code),
                                  candidate.device, threads)
    fmt = _torch_format(source)
    mc = source.info.model
    if fmt == "pytorch_state_dict":
        assert source.root is not None
        loaded = load_model(source.root, "cpu", trust_custom_code)
        return TorchBackend(loaded.module, mc.output, mc.dims, candidate.device, candidate.precision, compile, threads)
    if fmt == "torchscript":
        path = format_named("torchscript").locate(source)
        assert path is not None
        return TorchScriptBackend(path, mc.dims, candidate.device, candidate.precision, threads)
    raise ConfigError(f"{source.path.name} has no PyTorch weights; use --backend onnxruntime")
