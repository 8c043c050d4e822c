"""The main job on built-in example data: train, predict, evaluate, draw (``emseg demo``).

Runs on a fresh machine with no data and no GPU in a few minutes: a synthetic EM volume
(cells, membranes, mitochondria, distractor vesicles, noise and contrast drift) is generated,
a compact U-Net is trained on it, an independent synthetic stack is predicted through the
ONNX engine, per-class F1/IoU are computed against its ground truth, and an overlay PNG is
written. Every file goes into one output folder, which must not exist yet (or ``overwrite``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine.callbacks import Callback
from .engine.data.files import ensure_folder
from .errors import OutputError

__all__ = ["DemoResult", "run_demo", "DEMO_PRESETS"]

#: (train shape, test shape, model settings, training settings) per preset.
DEMO_PRESETS: dict[str, dict[str, Any]] = {
    "standard": {"train": (24, 256, 256), "test": (12, 256, 256),
                 "model": {"depth": 4, "filters": 16},
                 "train_cfg": {"epochs": 8, "steps_per_epoch": 25, "batch_size": 8, "patch_size": (128, 128),
                               "learning_rate": 3e-3, "val_steps": 4, "val_slices": "20-23",
                               "bn_recalibration_batches": 4}},
    "quick": {"train": (8, 128, 128), "test": (4, 128, 128),
              "model": {"depth": 3, "filters": 8},
              "train_cfg": {"epochs": 2, "steps_per_epoch": 6, "batch_size": 4, "patch_size": (64, 64),
                            "learning_rate": 3e-3, "val_steps": 1, "val_slices": "6-7",
                            "bn_recalibration_batches": 1}},
}


@dataclass
class DemoResult:
    output_dir: Path
    f1: dict[str, float]
    iou: dict[str, float]
    train_seconds: float
    predict_seconds: float
    files: dict[str, Path] = field(default_factory=dict)
    table: str = ""


def run_demo(output_dir: str | Path = "emseg_demo", *, preset: str = "standard", overwrite: bool = False,
             seed: int = 0, callbacks: Sequence[Callback] = (), log: Callable[[str], None] = print) -> DemoResult:
    """Generate data, train, predict, evaluate and draw; see the module docstring."""
    import numpy as np

    from .api import export_trained_model
    from .engine.data.synthetic import make_synthetic_sample
    from .engine.data.volume_io import read_volume, write_volume
    from .engine.evaluation.evaluation import evaluate
    from .engine.evaluation.overlay import write_overlay_png
    from .engine.inference.predictor import PredictConfig, predict
    from .engine.models.model_config import ModelConfig
    from .engine.training.train_config import TrainConfig
    from .engine.training.trainer import train_model

    if preset not in DEMO_PRESETS:
        raise OutputError(f"unknown demo preset {preset!r}; use {', '.join(DEMO_PRESETS)}")
    p = DEMO_PRESETS[preset]
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file, not a folder; give a folder name for the demo (it will be created)")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(f"{out} already exists and is not empty; choose another folder or pass --overwrite")
        shutil.rmtree(out)
    ensure_folder(out, "demo folder")

    log(f"1/4 generating synthetic EM data ({'x'.join(map(str, p['train']))} training, "
        f"{'x'.join(map(str, p['test']))} test) in {out}")
    train_sample = make_synthetic_sample(p["train"], seed=seed, name="train")
    test_sample = make_synthetic_sample(p["test"], seed=seed + 1, name="test")
    data = out / "data"
    files: dict[str, Path] = {}
    for s in (train_sample, test_sample):
        folder = data / s.name
        files[f"{s.name}_image"] = write_volume(folder / "image.tif", s.image, s.calibration)
        assert s.masks is not None
        for k, cls in enumerate(s.class_names):
            write_volume(folder / f"{cls}.tif", s.masks[k] * 255, s.calibration)

    log("2/4 training a U-Net on the CPU or GPU (the best epoch is kept)")
    model_dir = out / "model"
    model_config = ModelConfig(classes=train_sample.class_names, **p["model"])
    result = train_model([train_sample], model_dir, model_config=model_config,
                         config=TrainConfig(seed=seed, **p["train_cfg"]), callbacks=callbacks)
    export_trained_model(model_dir, int8_from=([train_sample], [train_sample]), log=log)
    files["model"] = model_dir

    log("3/4 predicting the independent test stack")
    pred_dir = out / "predictions"
    pred = predict(model_dir, data / "test" / "image.tif", pred_dir,
                   config=PredictConfig(outputs=("masks", "probabilities"), probability_dtype="uint8"), name="test")
    files["predictions"] = pred_dir
    log(pred.summary())

    log("4/4 evaluating against the test stack's ground truth")
    reference = {c: data / "test" / f"{c}.tif" for c in test_sample.class_names}
    prediction = {c: pred_dir / f"test_{c}_mask.tif" for c in test_sample.class_names}
    report = evaluate(reference, prediction, class_names=list(test_sample.class_names), components="3d")
    report.save(out / "evaluation")
    files["evaluation"] = out / "evaluation"
    f1 = dict(zip(report.summary["class"], (float(v) for v in report.summary["f1"]), strict=True))
    iou = dict(zip(report.summary["class"], (float(v) for v in report.summary["iou"]), strict=True))

    z = test_sample.shape[0] // 2
    pred_masks = np.stack([read_volume(prediction[c])[0][z] > 0 for c in test_sample.class_names]).astype(np.uint8)
    assert test_sample.masks is not None
    files["overlay"] = write_overlay_png(
        out / "overlay.png", test_sample.image[z],
        [("ground truth", test_sample.masks[:, z]), ("prediction", pred_masks)],
        test_sample.class_names,
        title=f"test slice {z}: " + ", ".join(f"{c} F1 {v:.3f}" for c, v in f1.items()))
    return DemoResult(out, f1, iou, result.duration_s, pred.seconds, files, report.format_table())
