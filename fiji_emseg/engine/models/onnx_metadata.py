"""Metadata carried inside an exported ONNX file, so the file alone is enough to predict.

This is the ONNX side of a model on disk, next to :mod:`.model_store` (config.json and
weights): what an ONNX file says about itself, whether it still matches the weights in its model
folder, and whether its int8 copy passed verification. Prediction reads it; ``export/`` writes it.

Keys are stored in the ONNX ``metadata_props`` as strings. ``fiji_emseg.model_info`` holds the
full ``config.json`` content (architecture, normalisation, receptive field, training summary);
the other keys repeat the facts a consumer needs most, in plain form, for tools that do not
parse JSON (e.g. a Fiji macro reading model properties).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ModelFileError
from ..data.normalization import NormalizationConfig
from .model_config import ModelConfig
from .model_store import WEIGHTS_NAME, ModelInfo
from .receptive_field import ReceptiveField

__all__ = ["ONNX_FORMAT_VERSION", "OnnxModelMetadata", "describe_metadata", "is_current_export", "is_verified_int8",
           "metadata_props", "read_onnx_metadata", "weights_digest"]

ONNX_FORMAT_VERSION = 1
PREFIX = "fiji_emseg."


@dataclass(frozen=True)
class OnnxModelMetadata:
    """What an exported model says about itself."""

    info: ModelInfo
    format_version: int
    recommended_tile: tuple[int, int, int]
    precision: str  # "fp32" or "fp16"
    weights_sha256: str
    input_name: str = "input"
    output_name: str = "probabilities"

    @property
    def model(self) -> ModelConfig:
        return self.info.model

    @property
    def normalization(self) -> NormalizationConfig:
        return self.info.normalization

    @property
    def receptive_field(self) -> ReceptiveField:
        assert self.info.receptive_field is not None
        return self.info.receptive_field


def metadata_props(info: ModelInfo, recommended_tile: tuple[int, int, int], precision: str,
                   weights_sha256: str) -> dict[str, str]:
    rf = info.ensure_receptive_field()
    m = info.model
    return {
        PREFIX + "format_version": str(ONNX_FORMAT_VERSION),
        PREFIX + "model_info": json.dumps(info.to_dict()),
        PREFIX + "name": m.name,
        PREFIX + "classes": json.dumps(list(m.classes)),
        PREFIX + "output_mode": m.output,
        PREFIX + "dims": str(m.dims),
        PREFIX + "normalization": json.dumps(info.normalization.to_dict()),
        PREFIX + "spatial_multiple": json.dumps(list(m.spatial_multiple)),
        PREFIX + "halo": json.dumps(list(rf.halo)),
        PREFIX + "global_context": json.dumps(rf.global_context),
        PREFIX + "recommended_tile": json.dumps(list(recommended_tile)),
        PREFIX + "precision": precision,
        PREFIX + "weights_sha256": weights_sha256,
        PREFIX + "input_layout": "NCYX" if m.dims == 2 else "NCZYX",
        PREFIX + "output": "probabilities (sigmoid per class)" if m.output == "sigmoid"
        else "probabilities (softmax over background + classes; channel 0 = background)",
    }


def read_onnx_metadata(path: str | Path) -> OnnxModelMetadata:
    """Read the metadata of an ONNX file written by ``emseg export`` (not its weights)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist; check the model path")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelFileError(f"{path} is not a valid ONNX file ({exc}); export the model again with 'emseg export'") from exc
    props = {p.key: p.value for p in model.metadata_props}
    if PREFIX + "model_info" not in props:
        raise ModelFileError(
            f"{path} is an ONNX model without fiji-emseg metadata (classes, normalisation, tiling); "
            "export it with 'emseg export' from a fiji-emseg model folder")
    try:
        version = int(props[PREFIX + "format_version"])
        if version > ONNX_FORMAT_VERSION:
            raise ModelFileError(f"{path} was exported by a newer fiji-emseg (format {version}); update fiji-emseg")
        info = ModelInfo.from_dict(json.loads(props[PREFIX + "model_info"]), str(path))
        if info.receptive_field is None:
            halo = json.loads(props[PREFIX + "halo"])
            info.receptive_field = ReceptiveField(tuple(halo), json.loads(props.get(PREFIX + "global_context", "false")))  # type: ignore[arg-type]
        tile = tuple(int(t) for t in json.loads(props[PREFIX + "recommended_tile"]))
        inputs = [i.name for i in model.graph.input]
        outputs = [o.name for o in model.graph.output]
        return OnnxModelMetadata(info, version, tile, props.get(PREFIX + "precision", "fp32"),  # type: ignore[arg-type]
                                 props.get(PREFIX + "weights_sha256", ""), inputs[0], outputs[0])
    except ModelFileError:
        raise
    except Exception as exc:
        raise ModelFileError(f"{path} has damaged fiji-emseg metadata ({exc}); export the model again") from exc


def describe_metadata(meta: OnnxModelMetadata) -> dict[str, Any]:
    m = meta.model
    return {
        "name": m.name, "classes": list(m.classes), "output": m.output, "dims": m.dims,
        "normalization": meta.normalization.describe(), "spatial_multiple": list(m.spatial_multiple),
        "halo": list(meta.receptive_field.halo), "recommended_tile": list(meta.recommended_tile),
        "precision": meta.precision,
    }


def weights_digest(path: str | Path) -> str:
    """SHA-256 of a weights file: recorded in every export, so a stale export is recognised."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_current_export(onnx_path: str | Path, model_dir: str | Path) -> bool:
    """Whether *onnx_path* was exported from the weights now in *model_dir* (by content hash)."""
    weights = Path(model_dir) / WEIGHTS_NAME
    try:
        meta = read_onnx_metadata(onnx_path)
    except ModelFileError:
        return False
    return bool(meta.weights_sha256) and weights.is_file() and meta.weights_sha256 == weights_digest(weights)


def is_verified_int8(path: Path) -> bool:
    """An int8 file whose metadata records a passed verification (see ``export.quantize``)."""
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return bool(json.loads(props.get(PREFIX + "int8_verified", "false")))
    except Exception:  # unreadable file: treat as not verified
        return False
