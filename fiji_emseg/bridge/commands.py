"""The Fiji commands: everything the ``fiji_scripts/*.py`` menu commands do, one function each.

A script body only casts its SciJava inputs and calls one of these functions, because Fiji's
Python-mode runner is a poor place for logic: it swallows exceptions (a headless run then exits
0), converts every top-level variable to Java, and an old Fiji would run the file under Jython.
Here each command

- takes plain Python values (plus ``ImagePlus`` objects) — images either as open windows (window
  titles, what the GUI and macros use) or as files (what headless batch runs use; a file input,
  when given, wins over the image window that Fiji fills in automatically);
- converts images with the bridge, calls the engine, shows result windows and tables;
- reports progress in ImageJ's status and progress bars and the Log, routes EmsegWarnings to
  the Log, and lets the user cancel (Esc, or the Stop window during training);
- catches every error and reports it with :func:`~fiji_emseg.bridge.failure.report_failure`
  (Log, error dialog in the GUI, non-zero exit in a headless batch run);
- returns the values of the script's ``#@output`` s as strings: ``status`` starts with ``ok:``,
  ``cancelled:`` or ``error:``.

Slice numbers typed by Fiji users, and shown in the tables here, start at 1 as in Fiji's slice
slider; the engine's 0-based indices are converted at this boundary.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.callbacks import Callback
from ..engine.data.sample import (
    Sample,
    class_name_from_path,
    parse_slice_ranges,
    slices_to_region,
)
from ..engine.data.volume_io import Calibration
from ..engine.inference.cleanup import CleanupConfig
from ..engine.inference.predictor import PredictConfig
from ..engine.models.model_config import ModelConfig
from ..engine.training.planner import DEFAULT_BUDGET_MINUTES
from ..engine.training.train_config import TrainConfig
from ..errors import ConfigError, InputDataError, ModelFileError, OutputError
from .environment import check_command_environment
from .failure import report_failure
from .fiji_callbacks import PredictionProgress, TrainingProgress
from .imageplus import image_to_volume, mask_from_imageplus
from .jvm import ensure_jvm, is_headless, jclass
from .outputs import (
    masks_to_imageplus,
    overlay_composite,
    probabilities_to_imageplus,
    show,
)
from .progress import FijiProgress, ij_log, log_warnings
from .results import show_table
from .stdio import safe_stdio
from .training_plot import TrainingPlot

__all__ = [
    "EVALUATE_TITLE",
    "MEASURE_TITLE",
    "PACKAGE_TITLE",
    "PREDICT_TITLE",
    "TRAIN_TITLE",
    "evaluate_command",
    "measure_command",
    "package_command",
    "predict_command",
    "run_command",
    "split_list",
    "train_command",
    "zero_based_ranges",
]

TRAIN_TITLE = "Train EM Model"
PREDICT_TITLE = "Predict EM Model"
EVALUATE_TITLE = "Evaluate EM Segmentation"
MEASURE_TITLE = "Measure EM Objects"
PACKAGE_TITLE = "Package EM Model"

# The engine's defaults, which the commands (and the scripts' parameter defaults) repeat.
_TRAIN = TrainConfig()
_MODEL = ModelConfig()
#: The Train command's time budget (minutes): the planner's CPU default, shown as a number in the dialog.
_BUDGET_MINUTES = DEFAULT_BUDGET_MINUTES["cpu"]
#: 0 = the model's own threshold (calibrated on validation data at training, else 0.5), as in the engine
_PREDICT_THRESHOLD = 0.0
#: Table columns holding slice indices: shown 1-based in Fiji.
_SLICE_COLUMNS = ("slice", "centroid_z", "z_min", "z_max")
_PRED_TITLE = re.compile(r"^(?P<image>.+) pred (?P<cls>.+)$")


# -- small conversions ---------------------------------------------------------------------------

def _text(value: Any) -> str:
    """A script's String input as a stripped Python str ('' for None)."""
    return "" if value is None else str(value).strip()


def split_list(text: Any) -> list[str]:
    """'a, b ,c' -> ['a', 'b', 'c'] (empty items dropped)."""
    return [part.strip() for part in _text(text).split(",") if part.strip()]


def zero_based_ranges(indices: Sequence[int]) -> str:
    """Sorted 0-based indices as the engine's range syntax: [11, 12, 13, 19] -> '11-13,19'."""
    parts: list[str] = []
    run: list[int] = []
    for i in sorted({int(v) for v in indices}):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def _one_based(spec: Any, n_slices: int) -> list[int] | None:
    """Slices typed by a Fiji user ('13-16,20', numbered from 1) as 0-based indices; None when empty."""
    text = _text(spec)
    if not text:
        return None
    indices = parse_slice_ranges(text, n_slices, one_based=True)
    if not indices:
        raise InputDataError(f"slices {text!r} select nothing; give slice numbers from 1 to {n_slices}, e.g. '1-4'")
    return indices


def _slices_one_based(df: Any) -> Any:
    """A copy of a table with its slice-index columns numbered from 1 (as Fiji's slices)."""
    out = df.copy()
    for col in _SLICE_COLUMNS:
        if col in out.columns and len(out):
            values = out[col]
            out[col] = values.where(values < 0, values + 1)  # -1 marks "absent" and stays
    return out


def _stem(name: str) -> str:
    """A file-name stem from a window title or file name ('stack.tif' -> 'stack')."""
    stem = class_name_from_path(name) or "image"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)


def _class_from_title(title: str) -> str:
    """Class name of a mask window: 'stack pred mito' -> 'mito', 'mito.tif' -> 'mito'."""
    m = _PRED_TITLE.match(title)
    return m.group("cls") if m else class_name_from_path(title)


def _class_names(classes: Any, sources: Sequence[str], what: str) -> list[str]:
    names = split_list(classes)
    if not names:
        return [_class_from_title(s) for s in sources]
    if len(names) != len(sources):
        raise ConfigError(f"{len(names)} class names ({', '.join(names)}) for {len(sources)} {what}; "
                          "give one name per mask, in the same order, or leave classes empty")
    return names


# -- images by window title and by file ----------------------------------------------------------

def _titles(text: Any) -> list[str]:
    """Window titles from a comma-separated list (a title that itself contains a comma also works)."""
    whole = _text(text)
    if not whole:
        return []
    if jclass("ij.WindowManager").getImage(whole) is not None:
        return [whole]
    return split_list(whole)


def _no_window_called(title: str, hint: str = "") -> InputDataError:
    return InputDataError(f"no image window is called {title!r}; open it, or check the title in the Window menu{hint}")


def _image_by_title(title: str) -> Any:
    imp = jclass("ij.WindowManager").getImage(title)
    if imp is None:
        raise _no_window_called(title, " (titles are separated by commas)")
    return imp


def _current_image(what: str) -> Any:
    imp = jclass("ij.WindowManager").getCurrentImage()
    if imp is None:
        raise InputDataError(f"no {what} given and no image is open; open one, or give the file(s) for batch runs")
    return imp


def _given_image(image: Any, what: str) -> Any:
    """The ImagePlus a command was given (its ``image`` input), else the current image.

    A macro's ``image=[title]`` naming no open window does not fail in SciJava: with the title
    converter declining, a fallback converter builds ``new ImagePlus(title)``, which opens no file
    and holds no pixels (title '', bit depth 0). Caught here, so the user reads which title was not
    found instead of an unsupported bit depth.
    """
    if image is None:
        return _current_image(what)
    if image.getProcessor() is not None:
        return image
    macro = jclass("ij.Macro")
    options = macro.getOptions()
    title = _text(macro.getValue(options, "image", "")) if options is not None else ""
    if title:
        raise _no_window_called(title)
    raise InputDataError(f"the {what} given is not an open image (it holds no pixels); select its window, "
                         "or name it with image=[title]")


def _files(text: Any, what: str, folder_ok: bool = True) -> list[Path]:
    """Comma-separated files; a folder stands for the TIFF stacks in it (sorted by name)."""
    from ..engine.data.volume_io import expand_stack_paths

    return expand_stack_paths(split_list(text), what, folder_ok)


def _mask_source(text: Any, what: str) -> Any:
    """What the engine's evaluate/measure take: one folder (classes named by file), a file, or a list."""
    entries = split_list(text)
    if len(entries) == 1 and Path(entries[0]).is_dir() and Path(entries[0]).suffix.lower() != ".zarr":
        return Path(entries[0])
    paths = _files(text, what, folder_ok=False)
    return paths[0] if len(paths) == 1 else paths


def _same_size(mask: Any, image: Any) -> None:
    def dims(imp: Any) -> str:
        return f"{imp.getWidth()}×{imp.getHeight()}×{imp.getStackSize()}"

    if dims(mask) != dims(image):
        raise InputDataError(
            f"mask window {str(mask.getTitle())!r} is {dims(mask)} (width×height×slices) but the image "
            f"{str(image.getTitle())!r} is {dims(image)}; each mask must have the image's size and slices")


def _display(imp: Any) -> None:
    """Show a result image; headless inside a batch-mode macro, register it so later commands find it by title."""
    if not is_headless():
        show(imp)
    elif bool(jclass("ij.macro.Interpreter").isBatchMode()):
        imp.show()  # ImageJ keeps it as a batch-mode image: no window, but WindowManager knows its title


def _device(use_gpu: bool) -> str:
    return "auto" if use_gpu else "cpu"


# -- running a command ----------------------------------------------------------------------------

def run_command(title: str, work: Callable[[], dict[str, str]], failed: dict[str, str],
                module: Any = None) -> dict[str, str]:
    """Run ``work`` as a Fiji command: usable stdout/stderr, EmsegWarnings in the Log, the
    environment checked; report any error and return ``failed`` + ``status``.

    ``module`` is the running ``ScriptModule`` (a script finds it in its globals under
    ``org.scijava.script.ScriptModule``). In the GUI its outputs are marked resolved, so SciJava
    does not open a Name/Value table window for them (the status is in the Log); the values still
    go back to a caller of the script service.
    """
    ensure_jvm()
    with safe_stdio():
        try:
            with log_warnings():
                check_command_environment(title)
                result = work()
        except Exception as exc:  # noqa: BLE001 - every error must be reported, never swallowed by Fiji
            message = report_failure(exc, title=title)
            result = {**failed, "status": f"error: {message}"}
        _hide_outputs(module, result)
        return result


def _hide_outputs(module: Any, outputs: dict[str, str]) -> None:
    if module is None or is_headless():
        return
    try:
        for name in outputs:
            module.resolveOutput(name)
    except Exception:  # noqa: BLE001 - only a window less or more: never fail a finished command for it
        ij_log("(fiji-emseg could not hide the output table; close it, it only repeats the Log)")



def _make_folder(folder: Path) -> None:
    """Create an output folder named by the user (the engine's 3D clean-up needs it to exist)."""
    from ..engine.data.files import describe_os_error

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, folder)) from exc
    if not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder; choose a folder for the results")


def _writable(paths: Sequence[Path], overwrite: bool) -> None:
    """Fail before any work when a result file exists and may not be replaced."""
    from ..engine.data.files import check_writable

    for p in paths:
        if p.exists() and not overwrite:
            raise OutputError(f"{p} already exists; choose another output_folder or tick overwrite")
        check_writable(p, overwrite)


# -- Train EM Model -------------------------------------------------------------------------------

def train_command(*, image: Any = None, masks: str = "", image_file: str = "", mask_files: str = "",
                  classes: str = "", model_folder: str = "", output: str = _MODEL.output, plan: str = "auto",
                  time_budget: float = _BUDGET_MINUTES, epochs: int = 0, steps: int = 0, batch_size: int = 0,
                  patch_size: int = 0, learning_rate: float = 0.0, validation_slices: str = "",
                  annotated_slices: str = "", depth: int = 0, filters: int = 0,
                  seed: int = -1, use_gpu: bool = True, overwrite: bool = False, module: Any = None) -> dict[str, str]:
    """Train a 2D or 3D U-Net on an EM stack and its class masks; returns ``status`` and ``model_path``.

    ``plan="auto"`` (the default, as ``emseg train``): the planner chooses the network, patch,
    batch, loss, learning rate and the number of steps that fit ``time_budget`` minutes on this
    machine (0: its default for the device); every setting given as a positive number (epochs,
    steps, batch size, patch size, learning rate, depth, filters) overrides the plan. ``plan="none"``:
    the settings as given, 0 standing for the engine's defaults (DeepSCEM's 64 x 256 steps of a
    32-filter depth-5 network), with ``time_budget`` as a time limit (0: none).

    Masks are window titles (``masks``, comma-separated, one per class) or files (``mask_files``,
    or one folder of one TIFF per class); class names default to the masks' titles/file names.
    ``validation_slices``/``annotated_slices`` are 1-based ('13-16'). ``seed`` < 0 draws a seed
    (recorded in the model). Esc or the Stop window ends training after the current step and keeps
    the best model so far.
    """
    folder = _text(model_folder)

    def work() -> dict[str, str]:
        if not folder:
            raise ConfigError("model_folder is empty; choose a folder for the new model")
        if (Path(folder) / "config.json").is_file() and not bool(overwrite):
            raise OutputError(f"{folder} already holds a model; choose another model folder, or tick 'Replace a "
                              "model already in the folder' (overwrite=true)")
        mode = _text(plan) or "auto"
        if mode not in ("auto", "none"):
            raise ConfigError(f"plan {mode!r} is not known; choose auto (planned from the data, this machine and the "
                              "time budget) or none (the settings as given)")
        if float(time_budget) < 0:
            raise ConfigError(f"time budget {float(time_budget):g} minutes is negative; give minutes, or 0 for "
                              + ("the planner's default" if mode == "auto" else "no limit"))
        sample = _training_sample(image, masks, image_file, mask_files, classes, annotated_slices)
        val = _one_based(validation_slices, sample.shape[0])
        if val:
            _check_validation(sample, val, _text(validation_slices), _text(annotated_slices))
        given_model = {k: int(v) for k, v in (("depth", depth), ("filters", filters)) if int(v) > 0}
        given_train: dict[str, Any] = {k: v for k, v in (
            ("epochs", int(epochs)), ("steps_per_epoch", int(steps)), ("batch_size", int(batch_size)),
            ("learning_rate", float(learning_rate))) if v > 0}
        if int(patch_size) > 0:
            given_train["patch_size"] = (int(patch_size), int(patch_size))
        base = TrainConfig(val_slices=zero_based_ranges(val) if val else None,
                           seed=None if int(seed) < 0 else int(seed), device=_device(bool(use_gpu)),
                           time_limit_minutes=float(time_budget) if float(time_budget) > 0 else None)
        ij_log(f"{TRAIN_TITLE}: {sample.name} {'×'.join(map(str, sample.shape))} (Z×Y×X), classes "
               f"{', '.join(sample.class_names)}" + (f", validation slices {_text(validation_slices)} (from 1)"
                                                     if val else "")
               + (f", annotated slices {_text(annotated_slices)} (from 1)" if _text(annotated_slices) else "")
               + f" -> {folder}")
        output_kind = _text(output) or _MODEL.output
        planned = None
        if mode == "auto":
            from ..api import TrainRequest, plan_request

            request = TrainRequest(model_dir=folder, plan="auto", train=base, model={"output": output_kind},
                                   model_overrides=given_model, train_overrides=given_train)
            jclass("ij.IJ").showStatus(f"{TRAIN_TITLE}: planning (measuring the step time on this machine)")
            planned, config, model_kw = plan_request(request, [sample])
            model_config = ModelConfig(classes=sample.class_names, **model_kw)
            for line in planned.describe().splitlines():
                ij_log(f"{TRAIN_TITLE}: {line}")
        else:
            from ..api import warn_before_the_wait

            model_config = ModelConfig(classes=sample.class_names, output=output_kind,  # type: ignore[arg-type]
                                       **given_model)
            config = base.replace(**given_train)
            warn_before_the_wait(model_config, config, _LogMessages())
        result = _train(sample, Path(folder), model_config, config, bool(overwrite),
                        None if planned is None else planned.to_dict())
        _record_fiji_inputs(Path(folder), {"annotated_slices": _text(annotated_slices),
                                           "validation_slices": _text(validation_slices),
                                           "classes": ",".join(sample.class_names), "plan": mode,
                                           "time_budget": f"{float(time_budget):g}"})
        return result

    return run_command(TRAIN_TITLE, work, {"model_path": folder}, module)


class _LogMessages(Callback):
    """The engine's messages (the expected training time, ...) as Log lines."""

    def on_message(self, text: str) -> None:
        ij_log(f"{TRAIN_TITLE}: {text}")


def _check_validation(sample: Sample, val: Sequence[int], spec: str, annotated_spec: str) -> None:
    """The engine's validation-slice checks, with the slice numbers the Fiji user typed (from 1)."""
    held = np.zeros(sample.shape[0], dtype=bool)
    held[list(val)] = True
    annotated = (np.ones(sample.shape[0], dtype=bool) if sample.annotated is None
                 else sample.annotated.reshape(sample.shape[0], -1).any(axis=1))
    where = f"the annotated slices {annotated_spec}" if annotated_spec else f"slices 1-{sample.shape[0]}"
    if not (annotated & ~held).any():
        raise InputDataError(f"validation slices {spec} (from 1) leave no annotated slice for training; hold out "
                             f"fewer slices of {where}")
    if not (annotated & held).any():
        raise InputDataError(f"validation slices {spec} (from 1) hold no annotated slice; choose them among {where}")


def _record_fiji_inputs(model_dir: Path, inputs: dict[str, str]) -> None:
    """Keep the slice choices as the Fiji user typed them (1-based) in the model's config.json."""
    from ..engine.models.model_store import read_model_info, write_model_info

    if not (model_dir / "config.json").is_file():
        return
    info = read_model_info(model_dir)
    info.training["fiji_inputs"] = dict(inputs)
    write_model_info(model_dir, info)


def _training_sample(image: Any, masks: Any, image_file: Any, mask_files: Any, classes: Any,
                     annotated_slices: Any) -> Sample:
    from ..engine.data.sample import load_sample
    from ..engine.data.volume_io import open_volume

    if _text(image_file):
        paths = _files(image_file, "image_file", folder_ok=False)
        if len(paths) != 1:
            raise ConfigError(f"image_file names {len(paths)} files; train on one stack at a time (or use emseg train)")
        mask_paths = _files(mask_files, "mask_files")
        if not mask_paths:
            raise ConfigError("image_file is set but mask_files is empty; give one mask file per class "
                              "(comma-separated) or a folder of them")
        with open_volume(paths[0]) as vol:
            n = int(vol.shape[0])
        slices = _one_based(annotated_slices, n)
        names = split_list(classes) or None
        return load_sample(paths[0], mask_paths, names, annotated_slices=slices)
    imp = _given_image(image, "image")
    titles = _titles(masks)
    if not titles:
        raise ConfigError("masks is empty; give the mask window titles, one per class (e.g. masks=[mito mask]), "
                          "or image_file with mask_files")
    if str(imp.getTitle()) in titles:
        raise InputDataError(f"the image {str(imp.getTitle())!r} is also given as a mask; select the EM image window "
                             "(or name it with image=[title]) and list only the masks in masks")
    volume, calibration = image_to_volume(imp)
    mask_imps = [_image_by_title(t) for t in titles]
    arrays = []
    for t, m in zip(titles, mask_imps, strict=True):
        _same_size(m, imp)
        arrays.append(mask_from_imageplus(m, t))
    names = _class_names(classes, titles, "mask windows")
    annotated = _one_based(annotated_slices, volume.shape[0])
    region = slices_to_region(annotated, volume.shape) if annotated else None
    return Sample(str(imp.getTitle()), volume, np.stack(arrays), tuple(names), calibration, region)


def _train(sample: Sample, model_dir: Path, model_config: ModelConfig, config: TrainConfig,
           overwrite: bool, plan: dict[str, Any] | None = None) -> dict[str, str]:
    from ..engine.training.trainer import train_model

    with FijiProgress(TRAIN_TITLE, show_eta=False, cancel_button=True) as progress:
        plot = TrainingPlot(f"{TRAIN_TITLE}: loss and validation F1 ({model_dir.name})")
        callback = TrainingProgress(progress, TRAIN_TITLE, plot if plot.enabled else None)
        result = train_model([sample], model_dir, model_config=model_config, config=config,
                             overwrite=overwrite, callbacks=[callback], plan=plan)
    if result.status == "interrupted":
        status = (f"cancelled: training stopped after {result.epochs_run} of {config.epochs} epochs; the best model "
                  f"so far is in {model_dir} (continue it with: emseg train {model_dir} --resume)")
        ij_log(f"{TRAIN_TITLE}: {status}")
        return {"status": status, "model_path": str(model_dir)}
    _export(model_dir, sample)
    ij_log(f"{TRAIN_TITLE}: {result.summary()}")
    return {"status": f"ok: {result.summary()}", "model_path": str(model_dir)}


def _export(model_dir: Path, sample: Sample) -> None:
    """ONNX and a verified int8 copy next to the weights, as ``emseg train`` does."""
    from ..api import export_trained_model

    jclass("ij.IJ").showStatus(f"{TRAIN_TITLE}: exporting ONNX")
    files = export_trained_model(model_dir, int8_from=([sample], [sample]),
                                 log=lambda text: ij_log(f"{TRAIN_TITLE}: {text}"))
    for path in files.values():
        ij_log(f"{TRAIN_TITLE}: exported {path}")


# -- Predict EM Model -----------------------------------------------------------------------------

def predict_command(*, image: Any = None, image_file: str = "", model_folder: str = "", model_package: str = "",
                    output_folder: str = "", threshold: float = _PREDICT_THRESHOLD, min_size: int = 0,
                    fill_holes: int = 0, tta: bool = False, show_probabilities: bool = False,
                    show_overlay: bool = False, use_gpu: bool = True, overwrite: bool = False,
                    module: Any = None) -> dict[str, str]:
    """Predict an image window (result windows ``<image> pred <class>``) or files (a stack or a folder
    of stacks, written to ``output_folder`` slice by slice; an OME-Zarr/N5 volume, written block-wise
    to ``output_folder/<name>.ome.zarr``); returns ``status`` and ``mask_titles``.

    The model is a folder written by Train EM Model, or (``model_package``) a bioimage.io package
    (``.zip`` or ``rdf.yaml``) with ONNX or TorchScript weights. ``threshold`` applies to sigmoid
    models (softmax models take the most probable class); 0 uses the model's own, chosen on
    validation data at training (0.5 for models without one); ``min_size``/``fill_holes`` (voxels,
    0 = off) clean the masks up. With a window, ``output_folder`` (optional) also receives the
    masks as TIFF files.
    """

    def work() -> dict[str, str]:
        from ..engine.inference.predictor import Predictor

        model = _model_source(model_folder, model_package)
        cleanup = None
        if int(min_size) > 0 or int(fill_holes) > 0:
            cleanup = CleanupConfig(min_object_size=int(min_size), max_hole_size=int(fill_holes))
        file_mode = bool(_text(image_file))
        kinds = ("masks", "probabilities") if bool(show_probabilities) and not file_mode else ("masks",)
        config = PredictConfig(device=_device(bool(use_gpu)), tta=bool(tta), outputs=kinds,
                               thresholds=float(threshold) if float(threshold) > 0 else None, cleanup=cleanup)
        store = _chunked_input(image_file) if file_mode else None
        if store is not None:
            return _predict_store(model, store, output_folder, config, bool(overwrite))
        imp = None if file_mode else _given_image(image, "image")  # a misspelt title fails before the model loads
        with Predictor(model, config) as predictor:
            mc = predictor.model_config
            ij_log(f"{PREDICT_TITLE}: model {model} ({', '.join(mc.classes)}, {mc.output}); "
                   f"backend {predictor.backend.description}")
            with FijiProgress(PREDICT_TITLE) as progress:
                try:
                    if file_mode:
                        return _predict_files(predictor, progress, image_file, output_folder, bool(overwrite))
                    return _predict_window(predictor, progress, imp, output_folder, bool(show_probabilities),
                                           bool(show_overlay), bool(overwrite))
                except InterruptedError:
                    status = "cancelled: prediction stopped; no result was shown or written"
                    ij_log(f"{PREDICT_TITLE}: {status}")
                    return {"status": status, "mask_titles": ""}

    return run_command(PREDICT_TITLE, work, {"mask_titles": ""}, module)


def _model_source(model_folder: Any, model_package: Any) -> Path:
    """The model to run: a bioimage.io package when one is given, else the model folder."""
    folder, package = _text(model_folder), _text(model_package)
    if folder and package:
        raise ConfigError(f"both a model folder ({folder}) and a model package ({package}) are given; give one")
    if package:
        path = Path(package)
        if not path.exists():
            raise ModelFileError(f"model package {package} does not exist; choose a bioimage.io package "
                                 "(.zip, or the rdf.yaml of an unpacked one)")
        if path.is_dir() or path.suffix.lower() not in (".zip", ".yaml", ".yml"):
            raise ModelFileError(f"model package {package} is not a .zip or rdf.yaml; choose a bioimage.io "
                                 "package, or give a model folder in 'Model folder' instead")
        return path
    path = Path(folder)
    if not folder or not path.exists():
        raise ModelFileError(f"model folder {folder or '(empty)'} does not exist; choose the folder that Train EM "
                             "Model wrote (it holds config.json and weights.safetensors), or a bioimage.io package")
    return path


def _chunked_input(image_file: Any) -> Path | None:
    """The OME-Zarr / zarr / N5 volume named by ``image_file``, or None for TIFF stacks and folders of them."""
    from ..engine.data.chunked_io import is_n5, is_zarr

    entries = split_list(image_file)
    stores = [Path(e) for e in entries if Path(e).is_dir() and (is_zarr(Path(e)) or is_n5(Path(e)))]
    if not stores:
        return None
    if len(entries) > 1:
        raise ConfigError(f"image_file names {len(entries)} inputs, of which {stores[0]} is a chunked volume; "
                          "predict one OME-Zarr/N5 volume per run (or use: emseg predict MODEL VOLUMES... -o OUT)")
    return stores[0]


def _store_name(path: Path) -> str:
    """'cell.ome.zarr' -> 'cell', 'raw.n5' -> 'raw'."""
    name = path.name
    for suffix in (".ome.zarr", ".zarr", ".n5"):
        if name.lower().endswith(suffix):
            return _stem(name[: -len(suffix)] or name)
    return _stem(name)


def _predict_store(model: Path, store: Path, output_folder: Any, config: PredictConfig,
                   overwrite: bool) -> dict[str, str]:
    """An OME-Zarr/N5 volume, block by block, into ``<output_folder>/<name>.ome.zarr`` (resumable)."""
    from ..api import predict_volume
    from ..engine.data.volume_io import open_volume

    out = _text(output_folder)
    if not out:
        raise ConfigError(f"output_folder is empty; an OME-Zarr/N5 volume ({store.name}) is predicted block by block "
                          "into <output folder>/<name>.ome.zarr, so give an output folder")
    with open_volume(store) as vol:  # a store that is not an image fails here, before the output folder is made
        shape = tuple(int(v) for v in vol.shape)
    target = Path(out) / f"{_store_name(store)}.ome.zarr"
    ij_log(f"{PREDICT_TITLE}: {store} ({'×'.join(map(str, shape))} Z×Y×X) -> {target}, block by block; "
           "a stopped run resumes when run again with the same settings")
    _make_folder(Path(out))
    with FijiProgress(PREDICT_TITLE) as progress:
        def on_block(done: int, total: int, voxels: int) -> None:
            progress.on_progress(done, total, f"{PREDICT_TITLE}: {store.name} block {done} of {total}")
            if progress.cancelled():
                raise InterruptedError

        try:
            result = predict_volume(model, store, target, config=config, overwrite=overwrite, progress=on_block,
                                    log=lambda text: ij_log(f"{PREDICT_TITLE}: {text}"))
        except InterruptedError:
            status = (f"cancelled: prediction of {store.name} stopped; the finished blocks are kept in {target} — "
                      "run the same command again to compute only the missing ones")
            ij_log(f"{PREDICT_TITLE}: {status}")
            return {"status": status, "mask_titles": ""}
    ij_log(f"{PREDICT_TITLE}: {result.summary()}")
    return {"status": f"ok: {result.summary()}", "mask_titles": ""}


def _predict_files(predictor: Any, progress: FijiProgress, image_file: Any, output_folder: Any,
                   overwrite: bool) -> dict[str, str]:
    out = _text(output_folder)
    if not out:
        raise ConfigError("output_folder is empty; give a folder for the masks predicted from image_file")
    inputs = _files(image_file, "image_file")
    _make_folder(Path(out))
    written = 0
    for k, path in enumerate(inputs, start=1):
        label = f"[{k}/{len(inputs)}] {path.name}" if len(inputs) > 1 else path.name
        result = predictor.predict(path, Path(out), overwrite=overwrite,
                                   progress=PredictionProgress(progress, PREDICT_TITLE, label))
        written += len(result.files)
        ij_log(f"{PREDICT_TITLE}: {label}: {result.summary()}")
        for f in result.files.values():
            ij_log(f"  {f}")
    status = f"ok: predicted {len(inputs)} stack{'s' if len(inputs) != 1 else ''}; {written} files in {out}"
    ij_log(f"{PREDICT_TITLE}: {status}")
    return {"status": status, "mask_titles": ""}


def _predict_window(predictor: Any, progress: FijiProgress, imp: Any, output_folder: Any,
                    show_probabilities: bool, show_overlay: bool, overwrite: bool) -> dict[str, str]:
    from ..engine.data.volume_io import write_volume
    from ..engine.inference.prediction_output import OutputSpec, output_file_names

    title = str(imp.getTitle())
    classes = list(predictor.model_config.classes)
    out = _text(output_folder)
    targets: dict[tuple[str, str], Path] = {}
    if out:
        spec = OutputSpec(tuple(classes), predictor.model_config.output, ("masks",))
        targets = {key: Path(out) / name for key, name in output_file_names(_stem(title), spec).items()}
        _writable(list(targets.values()), overwrite)
    _check_room(imp, len(classes), show_probabilities, show_overlay)
    volume, calibration = image_to_volume(imp)
    result = predictor.predict(volume, None, name=_stem(title), calibration=calibration,
                               progress=PredictionProgress(progress, PREDICT_TITLE, title))
    ij_log(f"{PREDICT_TITLE}: {title}: {result.summary()}")
    masks = np.moveaxis(np.asarray(result.masks.values), -1, 0)  # (C, Z, Y, X) 0/1
    mask_imps = masks_to_imageplus(masks, title, classes, calibration)
    for m in mask_imps:
        _display(m)
    if show_probabilities:
        probs = np.moveaxis(np.asarray(result.probabilities.values), -1, 0)
        for p in probabilities_to_imageplus(probs, title, classes, calibration):
            _display(p)
    if show_overlay:
        _display(overlay_composite(volume, masks, title, classes, calibration))
    for (_, cls), path in targets.items():
        write_volume(path, np.multiply(masks[classes.index(cls)] != 0, 255, dtype=np.uint8), calibration, overwrite)
        ij_log(f"  {path}")
    titles = [str(m.getTitle()) for m in mask_imps]
    voxels = ", ".join(f"{c} {100.0 * float(masks[i].mean()):.1f} %" for i, c in enumerate(classes))
    status = f"ok: {title}: {', '.join(titles)} (foreground {voxels})"
    if targets:
        status += f"; saved in {out}"
    ij_log(f"{PREDICT_TITLE}: {status}")
    return {"status": status, "mask_titles": ",".join(titles)}


def window_prediction_bytes(voxels: int, bytes_per_voxel: int, n_classes: int, probabilities: bool,
                            overlay: bool) -> tuple[int, int]:
    """Memory a window prediction needs: (Python bytes, Java heap bytes).

    Python holds the image as an array, float32 probabilities and uint8 masks per class; Java
    receives one 8-bit mask image per class, float probability images when shown, and an RGB
    overlay composite (image + classes) when shown.
    """
    python = voxels * (bytes_per_voxel + 5 * n_classes)
    java = voxels * (n_classes + (4 * n_classes if probabilities else 0) + ((n_classes + 1) if overlay else 0))
    return python, java


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def _check_room(imp: Any, n_classes: int, probabilities: bool, overlay: bool) -> None:
    """Refuse, before copying anything, a window too large to predict in memory (a big virtual stack)."""
    import psutil

    voxels = int(imp.getWidth()) * int(imp.getHeight()) * int(imp.getStackSize())
    bpv = max(1, int(imp.getBitDepth()) // 8)  # 8-, 16- or 32-bit (image_to_volume refuses the rest)
    need_py, need_java = window_prediction_bytes(voxels, bpv, n_classes, probabilities, overlay)
    runtime = jclass("java.lang.Runtime").getRuntime()
    free_java = int(runtime.maxMemory()) - (int(runtime.totalMemory()) - int(runtime.freeMemory()))
    free_py = int(psutil.virtual_memory().available) - max(0, int(runtime.maxMemory()) - int(runtime.totalMemory()))
    short = []
    if need_java > free_java:
        short.append(f"{_gb(need_java)} of Java memory for the result images but {_gb(free_java)} is free "
                     "(Edit > Options > Memory & Threads)")
    if need_py > free_py:
        short.append(f"{_gb(need_py)} of system memory but {_gb(free_py)} is available")
    if not short:
        return
    info = imp.getOriginalFileInfo()
    source = ""
    if info is not None and info.directory is not None and info.fileName is not None:
        source = str(Path(str(info.directory)) / str(info.fileName))
    where = source or "the stack's file"
    raise InputDataError(
        f"{str(imp.getTitle())!r} ({imp.getWidth()}×{imp.getHeight()}×{imp.getStackSize()}, "
        f"{_gb(voxels * bpv)}) is too large to predict into windows: it needs {' and '.join(short)}; predict it "
        f"from its file instead: give image_file [{where}] and an output folder (written slice by slice), or run "
        f"headless: emseg predict MODEL {shlex.quote(source) if source else 'STACK.tif'} -o OUT.ome.zarr --workers N")


# -- Evaluate EM Segmentation ---------------------------------------------------------------------

def evaluate_command(*, reference: str = "", prediction: str = "", reference_files: str = "",
                     prediction_files: str = "", classes: str = "", annotated_slices: str = "",
                     threshold: float = 0.0, components: str = "3d", output_folder: str = "",
                     overwrite: bool = False, module: Any = None) -> dict[str, str]:
    """Score predicted masks against reference masks, class by class; returns ``status`` and ``table_title``.

    Windows (``reference``/``prediction``: titles in the same class order) or files (each a folder
    of one mask per class, matched by file name, or files in class order). ``threshold`` 0 means
    the masks must be binary (0/1 or 0/255); give e.g. 0.5 to score probability maps.
    """

    def work() -> dict[str, str]:
        from ..engine.data.volume_io import open_volume
        from ..engine.evaluation.evaluation import evaluate, resolve_mask_set

        if _text(reference_files) or _text(prediction_files):
            if not (_text(reference_files) and _text(prediction_files)):
                raise ConfigError("give both reference_files and prediction_files (folders or files), or neither")
            ref: Any = _mask_source(reference_files, "reference_files")
            pred: Any = _mask_source(prediction_files, "prediction_files")
            first = resolve_mask_set(ref, "reference")[0][0].source
            with open_volume(first) as vol:
                n = int(vol.shape[0])
            names: list[str] | None = split_list(classes) or None
            name = _stem((pred[0] if isinstance(pred, list) else pred).name)
        else:
            ref_titles, pred_titles = _titles(reference), _titles(prediction)
            if not ref_titles or not pred_titles:
                raise ConfigError("give the reference and prediction mask windows (titles, one per class, in the same "
                                  "order), or reference_files and prediction_files")
            if len(ref_titles) != len(pred_titles):
                raise InputDataError(f"{len(ref_titles)} reference windows but {len(pred_titles)} prediction windows; "
                                     "give one prediction per reference mask, in the same order")
            names = _class_names(classes, pred_titles, "mask windows")
            ref = {c: image_to_volume(_image_by_title(t))[0] for c, t in zip(names, ref_titles, strict=True)}
            pred = {c: image_to_volume(_image_by_title(t))[0] for c, t in zip(names, pred_titles, strict=True)}
            n = int(next(iter(ref.values())).shape[0])
            m = _PRED_TITLE.match(pred_titles[0])
            name = m.group("image") if m else pred_titles[0]
        region = _one_based(annotated_slices, n)
        out = _text(output_folder)
        files = {k: Path(out) / f"{_stem(name)}_evaluation_{k}.csv" for k in ("summary", "per_slice", "objects")}
        if out:
            _writable(list(files.values()), bool(overwrite))
        report = evaluate(ref, pred, class_names=names, annotated_slices=region,
                          threshold=float(threshold) if float(threshold) > 0 else None,
                          components=_text(components) or "3d")
        per_slice = _slices_one_based(report.per_slice)
        objects = _slices_one_based(report.objects)
        table = f"{name} evaluation"
        show_table(report.summary, table)
        show_table(per_slice, f"{name} evaluation per slice")
        ij_log(f"{EVALUATE_TITLE}: {name} (slices numbered from 1; "
               f"{'annotated slices ' + _text(annotated_slices) if region else 'all slices'})")
        for line in report.format_table().splitlines():
            ij_log("  " + line)
        if out:
            _save_csv(files["summary"], report.summary, bool(overwrite))
            _save_csv(files["per_slice"], per_slice, bool(overwrite))
            _save_csv(files["objects"], objects, bool(overwrite))
        scores = "; ".join(f"{r['class']} F1 {r['f1']:.3f} IoU {r['iou']:.3f}" for _, r in report.summary.iterrows())
        status = f"ok: {name}: {scores}" + (f"; tables saved in {out}" if out else "")
        return {"status": status, "table_title": table}

    return run_command(EVALUATE_TITLE, work, {"table_title": ""}, module)


def _save_csv(path: Path, df: Any, overwrite: bool) -> None:
    from ..engine.data.files import atomic_write_text

    atomic_write_text(path, df.to_csv(index=False, float_format="%.6g", lineterminator="\n"), overwrite)
    ij_log(f"  {path}")


# -- Measure EM Objects ---------------------------------------------------------------------------

def measure_command(*, masks: str = "", mask_files: str = "", classes: str = "", threshold: float = 0.0,
                    components: str = "auto", min_size: int = 0, output_folder: str = "",
                    overwrite: bool = False, module: Any = None) -> dict[str, str]:
    """Label and measure the objects of mask windows (default: the current image) or files; one
    results table with one row per object; returns ``status`` and ``table_title``.

    Sizes are calibrated with the images' voxel size (Image > Properties…); ``min_size`` leaves
    objects of fewer voxels out of the table; ``threshold`` 0 means the masks must be binary.
    """

    def work() -> dict[str, str]:
        from ..engine.evaluation.evaluation import measure

        calibration: Calibration | None = None
        if _text(mask_files):
            source: Any = _mask_source(mask_files, "mask_files")
            names: list[str] | None = split_list(classes) or None
            first = source if isinstance(source, Path) else Path(source[0])
            name = _stem(first.name)
        else:
            titles = _titles(masks) or [str(_current_image("mask").getTitle())]
            names = _class_names(classes, titles, "mask windows")
            source = {}
            for c, t in zip(names, titles, strict=True):
                volume, cal = image_to_volume(_image_by_title(t))
                source[c] = volume
                calibration = calibration or cal
            names = None  # the dict keys name the classes
            m = _PRED_TITLE.match(titles[0])
            name = m.group("image") if m else titles[0]
        out = _text(output_folder)
        target = Path(out) / f"{_stem(name)}_objects.csv"
        if out:
            _writable([target], bool(overwrite))
        df = measure(source, names, calibration, threshold=float(threshold) if float(threshold) > 0 else None,
                     components=_text(components) or "auto", min_voxels=int(min_size))
        shown = _slices_one_based(df)
        table = f"{name} objects"
        show_table(shown, table)
        counts = shown["class"].value_counts() if len(shown) else {}
        order = list(source) if isinstance(source, dict) else list(dict.fromkeys(shown["class"]))
        summary = ", ".join(f"{c} {int(counts.get(c, 0))} objects" for c in order) or "no object found"
        unit = str(shown["unit"].iloc[0]) if len(shown) else ""
        ij_log(f"{MEASURE_TITLE}: {name}: {summary}" + (f" (sizes in {unit}; slices numbered from 1)" if unit else ""))
        if out:
            _save_csv(target, shown, bool(overwrite))
        status = f"ok: {name}: {summary}" + (f"; table saved in {target}" if out else "")
        return {"status": status, "table_title": table}

    return run_command(MEASURE_TITLE, work, {"table_title": ""}, module)


# -- Package EM Model -----------------------------------------------------------------------------

def package_command(*, model_folder: str = "", image: Any = None, image_file: str = "", package_file: str = "",
                    authors: str = "", license: str = "CC-BY-4.0", description: str = "", masks: bool = False,
                    weights: str = "onnx, torchscript, pytorch_state_dict", crop_xy: int = 0, crop_z: int = 0,
                    overwrite: bool = False, module: Any = None) -> dict[str, str]:
    """Write a model folder as a bioimage.io package (``.zip``); returns ``status`` and ``package_path``.

    The sample (the image window, or ``image_file``) is a stack like the training data: a crop of
    it becomes the test input, and our predictor's output on it the test output that deepImageJ,
    ``bioimageio test`` and the Model Zoo reproduce. ``masks`` declares a sigmoid model's
    thresholds as postprocessing (0/1 masks instead of probability maps). ``weights`` names the
    weight formats to include (comma-separated; empty: all); ``crop_xy``/``crop_z`` size the test
    crop (0: 256 px in 2D, 96 x 96 x 16 in 3D): a smaller crop makes a smaller package.
    """
    target = _text(package_file)

    def work() -> dict[str, str]:
        from ..api import package
        from ..export.bioimageio_package import WEIGHT_FORMATS

        # package() checks the names and sizes, before it writes anything
        formats = tuple(dict.fromkeys(f.lower() for f in split_list(weights))) or WEIGHT_FORMATS
        crop = (int(crop_z), int(crop_xy), int(crop_xy))  # 0 on an axis: package()'s default there
        folder = _text(model_folder)
        if not folder or not (Path(folder) / "config.json").is_file():
            raise ModelFileError(f"model folder {folder or '(empty)'} holds no model (no config.json); choose the "
                                 "folder that Train EM Model wrote")
        if not target:
            raise ConfigError("package_file is empty; give the .zip to write, e.g. mito_model.zip")
        out = Path(target)  # package() checks these too, but only after the folder is made and the image copied
        if out.suffix.lower() != ".zip":
            raise ConfigError(f"{out.name}: a bioimage.io package is a .zip file; name it e.g. "
                              f"{out.with_suffix('.zip').name}")
        if out.exists() and not bool(overwrite):
            raise OutputError(f"{out} already exists; choose another package file or tick 'Replace an existing "
                              "package file' (overwrite=true)")
        if _text(image_file):
            paths = _files(image_file, "image_file", folder_ok=False)
            if len(paths) != 1:
                raise ConfigError(f"image_file names {len(paths)} files; give one sample stack")
            sample: Any = paths[0]
            name = paths[0].name
        else:
            imp = _given_image(image, "sample image")
            sample, _ = image_to_volume(imp)
            name = str(imp.getTitle())
        _make_folder(out.parent)
        ij_log(f"{PACKAGE_TITLE}: {folder} -> {out} (test tensors from a crop of {name})")
        jclass("ij.IJ").showStatus(f"{PACKAGE_TITLE}: exporting weights and checking the package")
        report = package(Path(folder), out, sample, authors=tuple(split_list(authors)),
                         license=_text(license) or "CC-BY-4.0", description=_text(description) or None,
                         masks=bool(masks), weight_formats=formats, crop=crop, overwrite=bool(overwrite),
                         log=lambda text: ij_log(f"{PACKAGE_TITLE}: {text}"))
        jclass("ij.IJ").showStatus("")
        for note in report.notes:
            ij_log(f"{PACKAGE_TITLE}: note: {note}")
        ij_log(f"{PACKAGE_TITLE}: {report.summary()}")
        return {"status": f"ok: {report.summary()}", "package_path": str(report.path)}

    return run_command(PACKAGE_TITLE, work, {"package_path": target}, module)
