"""A trained model on disk: a folder with ``config.json`` beside ``weights.safetensors``.

``config.json`` holds everything needed to rebuild and use the network: the architecture
(:class:`ModelConfig`), the intensity normalisation, the measured receptive field, and a summary
of how it was trained. Weights are stored as safetensors, which cannot execute code on load
(unlike pickle), so a model folder received from someone else is safe to open. The exported
``model.onnx`` and the training log/plot live in the same folder.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ... import __version__
from ...errors import ModelFileError
from ..data.files import atomic_path, atomic_write_json
from ..data.normalization import NormalizationConfig
from .architectures import build_model
from .config_schema import validate_model_info
from .model_config import ModelConfig
from .receptive_field import ReceptiveField, measure_config_receptive_field

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "ONNX_NAME",
    "FP16_NAME",
    "INT8_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "ModelInfo",
    "LoadedModel",
    "save_weights",
    "load_weights",
    "write_model_info",
    "read_model_info",
    "load_model",
    "is_model_dir",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
ONNX_NAME = "model.onnx"
FP16_NAME = "model.fp16.onnx"
INT8_NAME = "model.int8.onnx"
FORMAT = "fiji-emseg-model"
FORMAT_VERSION = 1


@dataclass
class ModelInfo:
    """The contents of ``config.json``."""

    model: ModelConfig
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    receptive_field: ReceptiveField | None = None
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    software: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def keeps_last_epoch(self) -> bool:
        """Trained without keep-best: the weights (and the recorded "best" epoch) are the last epoch's."""
        return not (self.training.get("config") or {}).get("keep_best", True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.model.name,
            "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "software": self.software or {
                "fiji_emseg": __version__, "torch": torch.__version__, "python": platform.python_version()},
            "model": self.model.to_dict(),
            "normalization": self.normalization.to_dict(),
            "receptive_field": None if self.receptive_field is None else self.receptive_field.to_dict(),
            "weights": WEIGHTS_NAME,
            "training": self.training,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> ModelInfo:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            fmt = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ModelFileError(f"{source} is not a fiji-emseg model description (format {fmt!r}); "
                                 "give a model folder written by 'emseg train'")
        validate_model_info(d, source)
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise ModelFileError(
                f"{source} was written by a newer fiji-emseg (format {d['format_version']}); update fiji-emseg")
        try:
            rf = d.get("receptive_field")
            return cls(
                model=ModelConfig.from_dict(d["model"]),
                normalization=NormalizationConfig.from_dict(d.get("normalization")),
                receptive_field=ReceptiveField.from_dict(rf) if rf else None,
                training=dict(d.get("training") or {}),
                created=str(d.get("created", "")),
                software=dict(d.get("software") or {}),
            )
        except ModelFileError:
            raise
        except Exception as exc:
            raise ModelFileError(f"{source} is damaged or incomplete ({exc}); re-export or retrain the model") from exc

    def ensure_receptive_field(self) -> ReceptiveField:
        if self.receptive_field is None:
            self.receptive_field = measure_config_receptive_field(self.model)
        return self.receptive_field


@dataclass
class LoadedModel:
    """A network ready for inference (eval mode), with its description and location."""

    module: nn.Module
    info: ModelInfo
    path: Path

    @property
    def config(self) -> ModelConfig:
        return self.info.model


def is_model_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file()


def save_weights(module: nn.Module, path: str | Path, overwrite: bool = True) -> Path:
    """Write the state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    return Path(path)


def load_weights(module: nn.Module, path: str | Path, strict: bool = True) -> list[str]:
    """Load safetensors weights into *module*; explain mismatches in terms of the model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; the model folder is incomplete (was training interrupted before the first epoch?)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is damaged and cannot be read ({exc}); retrain or copy the model again") from exc
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if strict and (missing or unexpected or wrong):
        detail = "; ".join(filter(None, [
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
            f"{len(wrong)} of different shape (e.g. {wrong[0]})" if wrong else ""]))
        raise ModelFileError(f"{path} does not fit the architecture in {CONFIG_NAME}: {detail}")
    compatible = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    module.load_state_dict(compatible, strict=False)
    return sorted(set(missing) | {w.split(":")[0] for w in wrong})


def write_model_info(folder: str | Path, info: ModelInfo) -> Path:
    return atomic_write_json(Path(folder) / CONFIG_NAME, info.to_dict(), overwrite=True)


def read_model_info(path: str | Path) -> ModelInfo:
    """Read ``config.json`` from a model folder (or the file itself)."""
    p = Path(path)
    cfg = p / CONFIG_NAME if p.is_dir() else p
    if not p.exists():
        raise ModelFileError(f"model {p} does not exist; check the path")
    if p.is_dir() and not cfg.is_file():
        raise ModelFileError(f"{p} is not a fiji-emseg model folder (no {CONFIG_NAME} inside); give the folder written by 'emseg train'")
    try:
        d = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{cfg} is damaged and cannot be read ({exc}); retrain or copy the model again") from exc
    if not isinstance(d, dict):
        raise ModelFileError(f"{cfg} is not a fiji-emseg model description")
    return ModelInfo.from_dict(d, str(cfg))


def load_model(path: str | Path, device: str | torch.device = "cpu", trust_custom_code: bool = False) -> LoadedModel:
    """Rebuild the network from ``config.json`` and load ``weights.safetensors`` (no unpickling)."""
    p = Path(path)
    info = read_model_info(p)
    folder = p if p.is_dir() else p.parent
    module = build_model(info.model, trust_custom_code=trust_custom_code)
    load_weights(module, folder / WEIGHTS_NAME)
    module.to(device).eval()
    return LoadedModel(module, info, folder)
