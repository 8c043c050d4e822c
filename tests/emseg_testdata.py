"""Small deterministic volumes and models for fast tests (imported by test modules)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fiji_emseg.engine.data.sample import Sample
from fiji_emseg.engine.models.architectures import build_model
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.models.model_store import ModelInfo, save_weights, write_model_info

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def blob_volume(shape: tuple[int, int, int] = (8, 96, 96), n: int = 60, half: int = 5, seed: int = 0,
                classes: int = 1, noise: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image with bright squares (class 0) and, for ``classes == 2``, dark squares (class 1).

    Returns (image, masks (C, Z, Y, X) uint8 0/1); classes never overlap.
    """
    rng = np.random.default_rng(seed)
    z_, y_, x_ = shape
    masks = np.zeros((classes, *shape), dtype=np.uint8)
    for i in range(n):
        c = i % classes
        z, y, x = rng.integers(0, z_), rng.integers(0, y_), rng.integers(0, x_)
        sl = (z, slice(max(0, y - half), y + half), slice(max(0, x - half), x + half))
        if masks[(slice(None), *sl)].any():
            continue
        masks[(c, *sl)] = 1
    image = np.full(shape, 110.0)
    image += masks[0] * 90.0
    if classes > 1:
        image -= masks[1] * 80.0
    image += rng.normal(0, noise, shape)
    return np.clip(image, 0, 255).astype(np.uint8), masks


def blob_sample(shape: tuple[int, int, int] = (8, 96, 96), seed: int = 0, classes: int = 1, name: str = "blobs",
                **kw: object) -> Sample:
    image, masks = blob_volume(shape, seed=seed, classes=classes, **kw)  # type: ignore[arg-type]
    names = ("bright", "dark")[:classes]
    return Sample(name, image, masks, names)


def random_model_dir(folder: Path, config: ModelConfig, seed: int = 0) -> Path:
    """A model folder with random (but sane) weights, for inference tests that need no training."""
    import torch

    torch.manual_seed(seed)
    net = build_model(config)
    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():  # make BatchNorm statistics non-trivial so eval mode is really exercised
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.2, 0.2, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(net, folder / "weights.safetensors")
    info = ModelInfo(config)
    info.ensure_receptive_field()  # as a trained model folder has it
    write_model_info(folder, info)
    return folder


def f1(pred: np.ndarray, ref: np.ndarray) -> float:
    pred, ref = pred.astype(bool), ref.astype(bool)
    tp = np.logical_and(pred, ref).sum()
    denom = pred.sum() + ref.sum()
    return 1.0 if denom == 0 else float(2 * tp / denom)
