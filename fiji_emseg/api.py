"""High-level Python API: what the command line and the Fiji commands call.

>>> from fiji_emseg.api import TrainRequest, train, predict
>>> result = train(TrainRequest("mito_model", images=["stack.tif"], masks=[["mito.tif"]], plan="auto",
...                             train=TrainConfig(val_slices="12-15", time_limit_minutes=30)))
>>> pred = predict("mito_model", "other_stack.tif")        # in memory: xarray DataArrays
>>> pred.masks.sel(**{"class": "mito"})                      # dims (z, y, x, class)
>>> big = predict_volume("mito_model", "cell.ome.zarr", "cell_pred.ome.zarr", workers=4)  # block-wise, resumable
>>> print(big.summary())

Inputs may be file paths or arrays, so the same functions serve scripts, notebooks and Fiji.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine.callbacks import Callback, CallbackList
from .engine.data.normalization import NormalizationConfig
from .engine.data.sample import Sample, load_sample
from .engine.inference.predictor import PredictConfig, PredictionResult, Predictor, predict
from .engine.models.model_config import ModelConfig
from .engine.training.augment import AugmentConfig
from .engine.training.fingerprint import fingerprint
from .engine.training.planner import TrainingPlan, estimate_minutes, plan_training
from .engine.training.step_probe import probe_step_seconds
from .engine.training.train_config import TrainConfig
from .engine.training.trainer import TrainResult, train_model
from .engine.training.training_sources import DataSources, record_sources
from .errors import ConfigError, EmsegWarning, InputDataError

__all__ = ["TrainRequest", "train", "export_trained_model", "load_samples", "predict", "Predictor", "PredictConfig", "PredictionResult",
           "export", "package", "evaluate", "measure", "predict_volume"]


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
    #: ``auto``: plan the model and schedule from the data, the hardware and the time budget
    #: (``train.time_limit_minutes``, default 30 min on a CPU); the options named in
    #: ``model_overrides``/``train_overrides`` win over the plan. ``none``: ``model`` and ``train`` as given.
    plan: str = "none"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_cli(cls, a: argparse.Namespace) -> TrainRequest:
        # Options the planner chooses are None unless given; given ones override the plan.
        given_model = {k: v for k, v in (("dims", a.dims), ("depth", a.depth), ("filters", a.filters),
                                         ("slice_context", a.slice_context or None)) if v is not None}
        given_train = {k: v for k, v in (
            ("epochs", a.epochs), ("steps_per_epoch", a.steps), ("batch_size", a.batch_size),
            ("patch_size", tuple(a.patch_size) if a.patch_size else None), ("loss", a.loss), ("learning_rate", a.lr),
            ("lr_schedule", a.schedule), ("label_focus", a.label_focus), ("hard_fraction", a.hard_fraction),
            ("train_on_validation", a.train_on_validation)) if v is not None}
        dims = a.dims or (3 if a.slice_context else 2)
        patch = tuple(a.patch_size) if a.patch_size else ((256, 256) if dims == 2 or a.slice_context else (32, 128, 128))
        augment = AugmentConfig.none() if a.no_augment else AugmentConfig(
            flips=not a.no_flips, rot90=not a.no_rot90, brightness=a.brightness, contrast=a.contrast,
            gamma=a.gamma, noise=a.noise, p_spatial=a.spatial)
        train_cfg = TrainConfig(
            epochs=64 if a.epochs is None else a.epochs, steps_per_epoch=a.steps or 256, batch_size=a.batch_size or 8, patch_size=patch,
            loss=a.loss or "dice", class_weights=tuple(a.class_weights) if a.class_weights else None,
            optimizer=a.optimizer, learning_rate=a.lr or 1e-3, weight_decay=a.weight_decay,
            lr_schedule=a.schedule or "cosine", lr_patience=a.lr_patience,
            lr_factor=a.lr_factor, min_lr=a.min_lr, val_steps=a.val_steps, val_slices=a.val_slices,
            keep_best=not a.no_keep_best, monitor=a.monitor, early_stopping=a.early_stopping,
            label_focus=0.8 if a.label_focus is None else a.label_focus, augment=augment, seed=a.seed, device=a.device, amp=a.amp,
            threads=a.threads, deterministic=a.deterministic, bn_recalibration_batches=a.bn_recalibration,
            checkpoint_minutes=a.checkpoint_minutes, time_limit_minutes=a.time_limit,
            hard_fraction=a.hard_fraction or 0.0, ema_decay=a.ema or 0.0, deep_supervision=a.deep_supervision,
            train_on_validation=bool(a.train_on_validation))
        norm = None
        if a.normalization != "percentile" or a.norm_low is not None or a.norm_high is not None:
            kw: dict[str, Any] = {"method": a.normalization}
            if a.norm_low is not None:
                kw["low"] = a.norm_low
            if a.norm_high is not None:
                kw["high"] = a.norm_high
            norm = NormalizationConfig(**kw)
        model = {"dims": dims, "depth": a.depth or 5, "filters": a.filters or 32, "blocks_per_level": a.blocks,
                 "convs_per_block": a.convs, "residual": not a.plain, "norm": a.norm_layer, "dropout": a.dropout,
                 "kernel_size": a.kernel_size, "output": a.output, "z_poolings": a.z_poolings,
                 "slice_context": a.slice_context or 0,
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
                   trust_custom_code=a.trust_custom_code, plan=a.plan, model_overrides=given_model,
                   train_overrides=given_train)


def load_samples(images: Sequence[Any], masks: Sequence[Sequence[Any]], class_names: Sequence[str] | None = None,
                 annotated: Sequence[Any] | None = None, annotated_slices: str | None = None,
                 dataset: str | Path | None = None, role: str = "training") -> list[Sample]:
    """Samples from image/mask pairs and/or a DeepSCEM HDF5 dataset."""
    samples: list[Sample] = []
    if dataset is not None:
        from .engine.data.deepscem_io import read_deepscem_dataset

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
    cfg, plan = r.train, None
    messages = CallbackList(callbacks)
    if r.plan not in ("auto", "none"):
        raise ConfigError(f"unknown plan {r.plan!r}; use 'auto' (plan from the data, hardware and time budget) or 'none'")
    if r.plan == "auto" and not r.resume:
        plan, cfg, model_kw = plan_request(r, samples)
        messages.on_message(plan.describe())
        if r.init_from is None:
            model_config = ModelConfig(classes=samples[0].class_names, **model_kw)
    elif not r.resume and r.init_from is None:
        model_config = ModelConfig(classes=samples[0].class_names, **r.model)
    if not r.resume and plan is None:
        warn_before_the_wait(model_config or _init_model(r, samples), cfg, messages)
    sources = record_sources(r.images, r.masks, annotated=r.annotated, dataset=r.dataset, val_images=r.val_images,
                             val_masks=r.val_masks, val_dataset=r.val_dataset, class_names=r.class_names,
                             annotated_slices=r.annotated_slices)
    result = train_model(samples, r.model_dir, model_config=model_config, config=cfg, normalization=r.normalization,
                         val_samples=val or None, init_from=r.init_from, resume=r.resume, overwrite=r.overwrite,
                         epochs=r.resume_epochs if r.resume else None, callbacks=callbacks,
                         plan=None if plan is None else plan.to_dict(), sources=sources)
    if r.export_onnx and result.status != "interrupted":
        result.files.update(export_trained_model(
            result.model_dir, fp16=r.fp16_export, trust_custom_code=r.trust_custom_code,
            int8_from=(samples, val or samples) if r.int8_export else None))
    return result


def _with_recorded_sources(r: TrainRequest, callbacks: Sequence[Callback]) -> TrainRequest:
    """A resume request without data, completed with the files recorded in the model folder."""
    import dataclasses

    from .engine.models.model_store import CONFIG_NAME, read_model_info
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


def _init_model(r: TrainRequest, samples: Sequence[Sample]) -> ModelConfig:
    """The architecture a fine-tuning run starts from (a model folder or a bioimage.io package)."""
    from .engine.models.formats import open_model_source

    assert r.init_from is not None
    source = open_model_source(r.init_from)
    try:
        return source.info.model.with_classes(samples[0].class_names)
    finally:
        source.close()


def plan_request(r: TrainRequest, samples: Sequence[Sample]) -> tuple[TrainingPlan, TrainConfig, dict[str, Any]]:
    """The plan for *r* on *samples*: (plan, the TrainConfig to run, the ModelConfig fields)."""
    model_over = dict(r.model_overrides)
    if r.init_from is not None:  # fine-tuning keeps the architecture it starts from
        base = _init_model(r, samples)
        model_over.update(dims=base.dims, depth=base.depth, filters=base.filters)
        if base.slice_context:
            model_over["slice_context"] = base.slice_context
    plan = plan_training(fingerprint(samples), classes=tuple(samples[0].class_names),
                         time_limit_minutes=r.train.time_limit_minutes, device=r.train.device,
                         model_overrides=model_over, train_overrides=r.train_overrides, base=r.train)
    model_kw = {**{k: v for k, v in r.model.items() if k not in plan.model}, **plan.model}
    return plan, plan.train_config(r.train), model_kw


#: A schedule expected to take longer than this on a CPU, without a time limit, gets a warning.
LONG_CPU_MINUTES = 120.0


def warn_before_the_wait(model_config: ModelConfig, cfg: TrainConfig, messages: Callback) -> float:
    """Say how long *cfg* will take on this machine (measured step time); warn when it is hours on a CPU."""
    probe = probe_step_seconds(model_config, cfg)
    minutes = estimate_minutes(probe.seconds_per_step, cfg)
    messages.on_message(f"expected training time on this machine: about {_duration(minutes)} "
                        f"({cfg.total_steps} steps at {probe.seconds_per_step:.3g} s/step, {probe.describe()})")
    if probe.device == "cpu" and minutes > LONG_CPU_MINUTES and not cfg.time_limit_minutes:
        warnings.warn(
            f"this schedule takes about {_duration(minutes)} on this CPU; give a time budget instead "
            "(emseg train ... --time-limit 30, or time_limit_minutes=30 with plan='auto'), and the planner fits "
            "a smaller, faster model and schedule into it", EmsegWarning, stacklevel=3)
    return minutes


def _duration(minutes: float) -> str:
    return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{max(minutes, 0.1):.1f} min" if minutes < 10 else f"{minutes:.0f} min"


def export_trained_model(model_dir: str | Path, *, fp16: bool = False, trust_custom_code: bool = False,
                         int8_from: tuple[Sequence[Sample], Sequence[Sample]] | None = None,
                         log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """ONNX (and, from training data, a verified int8 copy) next to freshly trained weights.

    ``int8_from`` is (calibration samples, verification samples). A failure only warns: the
    weights are safe, and prediction exports on the fly.
    """
    from .engine.models.model_store import read_model_info
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


def package(model_dir: str | Path, output: str | Path, sample: Any, **options: Any) -> Any:
    """Write *model_dir* as a bioimage.io package (``.zip``); *sample* is a stack whose crop becomes the test tensors.

    What Fiji's *Package EM Model* command calls; returns a
    :class:`~fiji_emseg.export.bioimageio_package.PackageReport` (``.summary()`` for the Log).
    Options: ``crop``, ``authors``, ``license``, ``description``, ``weight_formats``, ``overwrite``, ``log``.
    """
    from .export.bioimageio_package import package_model

    return package_model(model_dir, output, sample, **options)


def evaluate(*args: Any, **kwargs: Any) -> Any:
    from .engine.evaluation.evaluation import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def measure(*args: Any, **kwargs: Any) -> Any:
    from .engine.evaluation.evaluation import measure as _measure

    return _measure(*args, **kwargs)


def predict_volume(model: str | Path, image: str | Path, output: str | Path, *, workers: int = 0,
                   scheduler: str | None = None, config: PredictConfig | None = None, chunks: Sequence[int] | None = None,
                   block: Sequence[int] | None = None, level: int | None = None, ngff_version: str = "0.4",
                   pyramid: bool = True, overwrite: bool = False, trust_custom_code: bool = False,
                   progress: Callable[[int, int, int], None] | None = None,
                   log: Callable[[str], None] | None = None, **options: Any) -> Any:
    """Predict a volume of any size block-wise into an OME-Zarr store (``emseg predict ... -o x.ome.zarr``).

    ``workers=N`` runs on a local Dask cluster of N processes, ``scheduler="tcp://host:8786"`` on an
    existing one; neither: in this process. Rerunning the same call resumes a stopped run. Returns a
    :class:`~fiji_emseg.engine.inference.dask_runner.BlockwiseResult` (``.output``, ``.summary()``).
    """
    from .engine.inference.blockwise import BlockwiseConfig
    from .engine.inference.dask_runner import predict_blockwise
    from .engine.inference.predictor import with_options

    cfg = with_options(config, options)
    bw = BlockwiseConfig(chunks=tuple(chunks) if chunks else None, block=tuple(block) if block else None,  # type: ignore[arg-type]
                         level=level, ngff_version=ngff_version, pyramid=pyramid)
    return predict_blockwise(model, image, output, cfg, bw, workers=workers, scheduler=scheduler, overwrite=overwrite,
                             trust_custom_code=trust_custom_code, progress=progress, log=log)
