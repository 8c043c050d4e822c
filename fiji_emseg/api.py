"""High-level Python API: what the command line and the Fiji commands call.

>>> from fiji_emseg.api import TrainRequest, train, predict
>>> result = train(TrainRequest("mito_model", images=["stack.tif"], masks=[["mito.tif"]], val_slices="12-15"))
>>> pred = predict("mito_model", "other_stack.tif")        # in memory: xarray DataArrays
>>> pred.masks.sel(**{"class": "mito"})                      # dims (z, y, x, class)

Inputs may be file paths or arrays, so the same functions serve scripts, notebooks and Fiji.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine.augment import AugmentConfig
from .engine.callbacks import Callback
from .engine.model_config import ModelConfig
from .engine.normalization import NormalizationConfig
from .engine.predictor import PredictConfig, PredictionResult, Predictor, predict
from .engine.sample import Sample, load_sample
from .engine.train_config import TrainConfig
from .engine.trainer import TrainResult, train_model
from .engine.training_sources import DataSources, record_sources
from .errors import ConfigError, EmsegWarning, InputDataError

__all__ = ["TrainRequest", "train", "export_trained_model", "load_samples", "predict", "Predictor", "PredictConfig", "PredictionResult",
           "export", "evaluate", "measure"]


@dataclass
class TrainRequest:
    """Everything a training run needs; inputs may be paths or arrays."""

    model_dir: str | Path
    images: Sequence[Any] = ()
    masks: Sequence[Sequence[Any]] = ()
    class_names: Sequence[str] | None = None
    dataset: str | Path | None = None
    annotated: Sequence[Any] | None = None
    annotated_slices: str | None = None
    val_images: Sequence[Any] = ()
    val_masks: Sequence[Sequence[Any]] = ()
    val_dataset: str | Path | None = None
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    normalization: NormalizationConfig | None = None
    init_from: str | Path | None = None
    resume: bool = False
    overwrite: bool = False
    #: With ``resume``: extend the interrupted run to this many epochs (None: as it was planned).
    resume_epochs: int | None = None
    export_onnx: bool = True
    fp16_export: bool = False
    #: Also write a verified int8 model for fast CPU prediction (calibrated on the training data).
    int8_export: bool = True
    trust_custom_code: bool = False

    @classmethod
    def from_cli(cls, a: argparse.Namespace) -> TrainRequest:
        dims = a.dims
        patch = tuple(a.patch_size) if a.patch_size else ((256, 256) if dims == 2 else (32, 128, 128))
        augment = AugmentConfig.none() if a.no_augment else AugmentConfig(
            flips=not a.no_flips, rot90=not a.no_rot90, brightness=a.brightness, contrast=a.contrast,
            gamma=a.gamma, noise=a.noise)
        train_cfg = TrainConfig(
            epochs=64 if a.epochs is None else a.epochs, steps_per_epoch=a.steps, batch_size=a.batch_size, patch_size=patch, loss=a.loss,
            class_weights=tuple(a.class_weights) if a.class_weights else None, optimizer=a.optimizer,
            learning_rate=a.lr, weight_decay=a.weight_decay, lr_schedule=a.schedule, lr_patience=a.lr_patience,
            lr_factor=a.lr_factor, min_lr=a.min_lr, val_steps=a.val_steps, val_slices=a.val_slices,
            keep_best=not a.no_keep_best, monitor=a.monitor, early_stopping=a.early_stopping,
            label_focus=a.label_focus, augment=augment, seed=a.seed, device=a.device, amp=a.amp,
            threads=a.threads, deterministic=a.deterministic, bn_recalibration_batches=a.bn_recalibration,
            checkpoint_minutes=a.checkpoint_minutes, time_limit_minutes=a.time_limit)
        norm = None
        if a.normalization != "percentile" or a.norm_low is not None or a.norm_high is not None:
            kw: dict[str, Any] = {"method": a.normalization}
            if a.norm_low is not None:
                kw["low"] = a.norm_low
            if a.norm_high is not None:
                kw["high"] = a.norm_high
            norm = NormalizationConfig(**kw)
        model = {"dims": dims, "depth": a.depth, "filters": a.filters, "blocks_per_level": a.blocks,
                 "convs_per_block": a.convs, "residual": not a.plain, "norm": a.norm_layer, "dropout": a.dropout,
                 "kernel_size": a.kernel_size, "output": a.output, "z_poolings": a.z_poolings,
                 "architecture": a.architecture}
        images = a.image or []
        masks = a.masks or []
        if len(images) != len(masks) and not a.resume:
            raise ConfigError(f"{len(images)} --image but {len(masks)} --masks; give one --masks list after each --image")
        return cls(model_dir=a.model_dir, images=images, masks=masks, class_names=a.classes, dataset=a.dataset,
                   annotated=a.annotated, annotated_slices=a.annotated_slices, val_images=a.val_image or [],
                   val_masks=a.val_masks or [], val_dataset=a.val_dataset, model=model, train=train_cfg,
                   normalization=norm, init_from=a.init_from, resume=a.resume, overwrite=a.overwrite,
                   resume_epochs=a.epochs if a.resume else None,
                   export_onnx=not a.no_export, fp16_export=a.fp16_export, int8_export=not a.no_int8,
                   trust_custom_code=a.trust_custom_code)


def load_samples(images: Sequence[Any], masks: Sequence[Sequence[Any]], class_names: Sequence[str] | None = None,
                 annotated: Sequence[Any] | None = None, annotated_slices: str | None = None,
                 dataset: str | Path | None = None, role: str = "training") -> list[Sample]:
    """Samples from image/mask pairs and/or a DeepSCEM HDF5 dataset."""
    samples: list[Sample] = []
    if dataset is not None:
        from .engine.deepscem_io import read_deepscem_dataset

        samples.extend(read_deepscem_dataset(dataset))
    if len(images) != len(masks):
        raise InputDataError(f"{len(images)} {role} images but {len(masks)} mask lists; give the masks of every image")
    if annotated is not None and len(annotated) not in (0, len(images)):
        raise InputDataError(f"{len(annotated)} annotated-region masks for {len(images)} images; give one per image")
    for i, (img, msk) in enumerate(zip(images, masks, strict=True)):
        region = annotated[i] if annotated else None
        samples.append(load_sample(img, list(msk), class_names, annotated=region, annotated_slices=annotated_slices,
                                   name=None if isinstance(img, (str, Path)) else f"{role} sample {i + 1}"))
    if class_names is not None and dataset is not None:
        samples = [Sample(s.name, s.image, s.masks, tuple(class_names), s.calibration, s.annotated) for s in samples]
    return samples


def train(request: TrainRequest, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Load the data, train, then export ONNX next to the weights."""
    r = request
    if r.resume and not r.images and r.dataset is None:
        r = _with_recorded_sources(r, callbacks)
    samples: list[Sample] = []
    if r.images or r.dataset is not None:
        samples = load_samples(r.images, r.masks, r.class_names, r.annotated, r.annotated_slices, r.dataset)
    if not samples:
        raise InputDataError("no training data given; give --image with --masks, or --dataset")
    val: list[Sample] = []
    if r.val_images or r.val_dataset is not None:
        val = load_samples(r.val_images, r.val_masks, r.class_names or samples[0].class_names,
                           dataset=r.val_dataset, role="validation")
    model_config = None
    if not r.resume and r.init_from is None:
        model_config = ModelConfig(classes=samples[0].class_names, **r.model)
    sources = record_sources(r.images, r.masks, annotated=r.annotated, dataset=r.dataset, val_images=r.val_images,
                             val_masks=r.val_masks, val_dataset=r.val_dataset, class_names=r.class_names,
                             annotated_slices=r.annotated_slices)
    result = train_model(samples, r.model_dir, model_config=model_config, config=r.train, normalization=r.normalization,
                         val_samples=val or None, init_from=r.init_from, resume=r.resume, overwrite=r.overwrite,
                         epochs=r.resume_epochs if r.resume else None, callbacks=callbacks, sources=sources)
    if r.export_onnx and result.status != "interrupted":
        result.files.update(export_trained_model(
            result.model_dir, fp16=r.fp16_export, trust_custom_code=r.trust_custom_code,
            int8_from=(samples, val or samples) if r.int8_export else None))
    return result


def _with_recorded_sources(r: TrainRequest, callbacks: Sequence[Callback]) -> TrainRequest:
    """A resume request without data, completed with the files recorded in the model folder."""
    import dataclasses

    from .engine.model_store import CONFIG_NAME, read_model_info
    from .errors import ModelFileError

    config_path = Path(r.model_dir) / CONFIG_NAME
    if not config_path.is_file():
        raise ModelFileError(f"cannot resume: {r.model_dir} holds no model (no {CONFIG_NAME}); check the folder")
    info = read_model_info(r.model_dir)
    src = DataSources.from_record((info.training.get("data") or {}).get("sources"), config_path)
    for cb in callbacks:
        cb.on_message(f"resuming with the data recorded in {config_path}: {src.describe()}")
    return dataclasses.replace(
        r, images=src.images, masks=src.masks, annotated=src.annotated, dataset=src.dataset, val_images=src.val_images,
        val_masks=src.val_masks, val_dataset=src.val_dataset, class_names=r.class_names or src.class_names,
        annotated_slices=r.annotated_slices or src.annotated_slices)


def export_trained_model(model_dir: str | Path, *, fp16: bool = False, trust_custom_code: bool = False,
                         int8_from: tuple[Sequence[Sample], Sequence[Sample]] | None = None,
                         log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """ONNX (and, from training data, a verified int8 copy) next to freshly trained weights.

    ``int8_from`` is (calibration samples, verification samples). A failure only warns: the
    weights are safe, and prediction exports on the fly.
    """
    from .engine.model_store import read_model_info
    from .export.onnx_export import export_onnx

    files: dict[str, Path] = {}
    try:
        files["onnx"] = export_onnx(model_dir, overwrite=True, fp16=fp16, trust_custom_code=trust_custom_code).path
    except Exception as exc:  # the trained weights are safe either way
        warnings.warn(f"ONNX export failed ({exc}); prediction will export on the fly", EmsegWarning, stacklevel=2)
        return files
    if int8_from is not None:
        from .export.quantize import quantize_int8, tiles_from_samples

        try:
            info = read_model_info(model_dir)
            patch = info.training.get("config", {}).get("patch_size") or [256, 256]
            calib = tiles_from_samples(int8_from[0], info, patch, 32, seed=11)
            check = tiles_from_samples(int8_from[1], info, patch, 16, seed=12)
            report = quantize_int8(model_dir, calib, check)
            files["int8"] = report.path
            if log is not None:
                log(report.summary())
            if not report.verified:
                warnings.warn(report.summary(), EmsegWarning, stacklevel=2)
        except Exception as exc:  # int8 is an optimisation; fp32 remains
            warnings.warn(f"int8 quantisation failed ({exc}); CPU prediction uses fp32", EmsegWarning, stacklevel=2)
    return files


def export(model_dir: str | Path, output: str | Path | None = None, **options: Any) -> Any:
    from .export.onnx_export import export_onnx

    return export_onnx(model_dir, output, **options)


def evaluate(*args: Any, **kwargs: Any) -> Any:
    from .engine.evaluation import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def measure(*args: Any, **kwargs: Any) -> Any:
    from .engine.evaluation import measure as _measure

    return _measure(*args, **kwargs)
