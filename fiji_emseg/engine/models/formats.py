"""Weight formats behind one interface: one adapter per format (bioimageio.core's shape).

A model reaches the predictor as a *source*: a fiji-emseg model folder, a single exported
``.onnx`` file, or an unpacked bioimage.io package. Each weight format a source can hold has one
adapter here that answers three questions for that source — is the file there, is it *current*
(made from the weights now in the folder; a stale ``model.onnx`` next to retrained weights is
not), and what is it — and names the runtime that runs it. Which format prediction uses is
decided in one place, :func:`fiji_emseg.engine.inference.format_choice.plan_candidates`, which
asks these adapters; building the backend for a format lives there too (inference stage).

Formats: ``pytorch_state_dict`` (``weights.safetensors``, or a package's ``.pt`` state dict
that our factory builds), ``onnx_fp32``, ``onnx_fp16``, ``onnx_int8`` (verified only),
``torchscript``, and ``bioimageio`` (the package itself, a container of the others).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ModelFileError
from .model_store import FP16_NAME, INT8_NAME, ONNX_NAME, WEIGHTS_NAME, ModelInfo, is_model_dir, read_model_info
from .onnx_metadata import is_current_export, is_verified_int8, read_onnx_metadata

__all__ = [
    "FORMATS",
    "TORCHSCRIPT_NAME",
    "FormatStatus",
    "ModelSource",
    "WeightFormat",
    "describe_formats",
    "format_named",
    "is_bioimageio_path",
    "open_model_source",
]

TORCHSCRIPT_NAME = "model.torchscript.pt"


@dataclass
class ModelSource:
    """A model as the predictor sees it: its description and where its weight files are.

    ``kind`` is ``folder`` (a model folder), ``onnx`` (one exported file) or ``bioimageio`` (a
    package, unpacked into ``root``). ``files`` maps format names to files the source declares
    (packages declare theirs in ``rdf.yaml``); folder formats are found by their file names.
    """

    path: Path
    kind: str
    info: ModelInfo
    root: Path | None
    files: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _tmp: list[tempfile.TemporaryDirectory[str]] = field(default_factory=list)

    def temp_dir(self, prefix: str) -> Path:
        """A folder removed with :meth:`close` (on-the-fly exports, unpacked packages)."""
        tmp = tempfile.TemporaryDirectory(prefix=prefix)
        self._tmp.append(tmp)
        return Path(tmp.name)

    def close(self) -> None:
        while self._tmp:
            self._tmp.pop().cleanup()


@dataclass(frozen=True)
class FormatStatus:
    """What one adapter says about one source."""

    format: str
    present: bool
    current: bool
    path: Path | None
    description: str
    note: str = ""

    @property
    def usable(self) -> bool:
        return self.present and self.current


class WeightFormat:
    """One weight format: its name, the runtime that runs it, its precision, and where it lives."""

    name = ""
    runtime = ""  # "onnxruntime" or "torch"
    precision = "fp32"
    summary = ""

    def locate(self, source: ModelSource) -> Path | None:
        """The file of this format in *source*, or None."""
        return source.files.get(self.name)

    def is_current(self, source: ModelSource, path: Path) -> tuple[bool, str]:
        """Whether *path* matches the weights of *source* (and why not)."""
        return True, ""

    def status(self, source: ModelSource) -> FormatStatus:
        path = self.locate(source)
        if path is None or not path.is_file():
            return FormatStatus(self.name, False, False, None, self.summary)
        current, note = self.is_current(source, path)
        return FormatStatus(self.name, True, current, path, self.summary, note)


def _folder_file(source: ModelSource, name: str) -> Path | None:
    if source.kind == "folder" and source.root is not None:
        return source.root / name
    return None


class TorchStateDict(WeightFormat):
    name = "pytorch_state_dict"
    runtime = "torch"
    summary = "PyTorch state dict (safetensors), rebuilt by fiji-emseg's model factory"

    def locate(self, source: ModelSource) -> Path | None:
        if source.kind in ("folder", "bioimageio") and source.root is not None and (source.root / WEIGHTS_NAME).is_file():
            return source.root / WEIGHTS_NAME  # packages made by fiji-emseg are unpacked into a model folder
        return None


class _OnnxInFolder(WeightFormat):
    runtime = "onnxruntime"
    file_name = ONNX_NAME

    def is_current(self, source: ModelSource, path: Path) -> tuple[bool, str]:
        if source.kind != "folder":
            return True, ""  # a lone .onnx file or a package's declared weights are what they are
        assert source.root is not None
        if is_current_export(path, source.root):
            return True, ""
        return False, f"{path.name} was exported from other weights (stale); 'emseg export' renews it"


class OnnxFp32(_OnnxInFolder):
    name = "onnx_fp32"
    summary = "ONNX fp32 (ONNX Runtime, CPU or CUDA)"

    def locate(self, source: ModelSource) -> Path | None:
        if source.kind == "onnx":
            return source.path if read_onnx_metadata(source.path).precision == "fp32" else None
        return _folder_file(source, ONNX_NAME) or source.files.get(self.name)


class OnnxFp16(_OnnxInFolder):
    name = "onnx_fp16"
    precision = "fp16"
    summary = "ONNX fp16 copy for GPUs (float32 inputs and outputs)"

    def locate(self, source: ModelSource) -> Path | None:
        if source.kind == "onnx":
            return source.path if read_onnx_metadata(source.path).precision == "fp16" else None
        return _folder_file(source, FP16_NAME)


class OnnxInt8(_OnnxInFolder):
    name = "onnx_int8"
    precision = "int8"
    summary = "ONNX int8 (static QDQ) for fast CPU prediction, verified against fp32"

    def locate(self, source: ModelSource) -> Path | None:
        if source.kind == "onnx":
            return source.path if read_onnx_metadata(source.path).precision == "int8" else None
        return _folder_file(source, INT8_NAME)

    def is_current(self, source: ModelSource, path: Path) -> tuple[bool, str]:
        if not is_verified_int8(path):
            return False, f"{path.name} did not pass verification against fp32; fp32 stays the default"
        return super().is_current(source, path)


class TorchScript(WeightFormat):
    name = "torchscript"
    runtime = "torch"
    summary = "TorchScript (traced; returns probabilities)"

    def locate(self, source: ModelSource) -> Path | None:
        return source.files.get(self.name) or _folder_file(source, TORCHSCRIPT_NAME)


class BioimageioPackage(WeightFormat):
    name = "bioimageio"
    runtime = ""
    summary = "bioimage.io model package (rdf.yaml 0.5); runs its ONNX or TorchScript weights"

    def locate(self, source: ModelSource) -> Path | None:
        return source.path if source.kind == "bioimageio" else None


#: Every adapter, in the order ``emseg info`` lists them.
FORMATS: tuple[WeightFormat, ...] = (TorchStateDict(), OnnxFp32(), OnnxFp16(), OnnxInt8(), TorchScript(), BioimageioPackage())


def format_named(name: str) -> WeightFormat:
    for f in FORMATS:
        if f.name == name:
            return f
    raise KeyError(name)


def describe_formats(source: ModelSource) -> list[FormatStatus]:
    """The status of every format for *source* (present ones first keep the registry order)."""
    return [f.status(source) for f in FORMATS]


def is_bioimageio_path(p: Path) -> bool:
    return (p.is_file() and (p.suffix.lower() == ".zip" or p.name.endswith(("rdf.yaml", "bioimageio.yaml")))) or (
        p.is_dir() and ((p / "rdf.yaml").is_file() or (p / "bioimageio.yaml").is_file()) and not is_model_dir(p))


def open_model_source(model: str | Path) -> ModelSource:
    """Resolve what the user gave (model folder, ``.onnx`` file, bioimage.io package) to a source."""
    p = Path(model)
    if not p.exists():
        raise ModelFileError(f"model {p} does not exist; give a model folder from 'emseg train', an exported .onnx "
                             "file or a bioimage.io package (.zip or rdf.yaml)")
    if p.is_file() and p.suffix.lower() == ".onnx":
        return ModelSource(p, "onnx", read_onnx_metadata(p).info, None)
    if is_bioimageio_path(p):
        from .bioimageio_source import open_package

        return open_package(p)
    if not is_model_dir(p):
        raise ModelFileError(f"{p} is neither a fiji-emseg model folder (config.json + weights), an .onnx file nor a "
                             "bioimage.io package (.zip or rdf.yaml)")
    return ModelSource(p, "folder", read_model_info(p), p)
