"""Shared pieces of the real-ImageJ2 tests (test_imagej2_*.py): skips, the Fiji copy, the vnc crop.

Import what a module needs: ``from imagej2_fixtures import IMAGEJ2_MARKS, crop, ij2_fiji, f1``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from imagej2_runtime import VNC, imagej2_available, prepare_fiji

from fiji_emseg.engine.data.volume_io import write_volume


def _has_pyimagej() -> bool:
    import importlib.util

    return importlib.util.find_spec("imagej") is not None


IMAGEJ2_MARKS = [
    pytest.mark.imagej2,
    pytest.mark.skipif(not imagej2_available(), reason="no real ImageJ2 in ../shared/imagej2"),
    pytest.mark.skipif(not (VNC / "image.tif").is_file(), reason="no ../shared/data/vnc_sstem"),
    pytest.mark.skipif(shutil.which("java") is None or not _has_pyimagej(), reason="no Java or no pyimagej"),
]

#: What Predict writes for image.tif and a model of class mito (engine.prediction_output.output_file_names).
PRED_MASK = "image_mito_mask.tif"
TINY = {"epochs": 1, "steps": 2, "batch_size": 2, "patch_size": 64, "depth": 2, "filters": 4, "seed": 1,
        "use_gpu": False, "learning_rate": 0.001, "output": "sigmoid"}


def tiny_args() -> str:
    return ",".join(f"{k}={'false' if v is False else v!r}" if isinstance(v, str) else
                    f"{k}={'false' if v is False else v}" for k, v in TINY.items())


def f1(pred: np.ndarray, ref: np.ndarray) -> float:
    """The F1 (Dice) of two binary masks, computed here, independently of the package."""
    p, r = pred > 0, ref > 0
    denom = int(p.sum()) + int(r.sum())
    return 1.0 if denom == 0 else 2.0 * float(np.logical_and(p, r).sum()) / denom


@pytest.fixture(scope="session")
def ij2_fiji(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return prepare_fiji(tmp_path_factory.mktemp("fiji"))


@pytest.fixture(scope="session")
def crop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """8 x 128 x 128 of vnc_sstem's image and mito masks (0/255), and a mask of the wrong shape."""
    folder = tmp_path_factory.mktemp("crop")
    image = tifffile.imread(VNC / "image.tif", key=range(8))[:, 768:896, 384:512]  # 26-35 % mito per slice
    mito = tifffile.imread(VNC / "mito.tif", key=range(8))[:, 768:896, 384:512]
    paths = {"image": folder / "image.tif", "mito": folder / "mask" / "mito.tif",
             "bad": folder / "bad" / "mito.tif", "shifted": folder / "shifted" / "mito.tif", "folder": folder}
    for key in ("mito", "bad", "shifted"):
        paths[key].parent.mkdir()
    write_volume(paths["image"], image)
    write_volume(paths["mito"], mito)
    write_volume(paths["bad"], mito[:, :64, :64])
    write_volume(paths["shifted"], np.roll(mito, 6, axis=2))  # a "prediction" with a known, middling F1
    return paths


