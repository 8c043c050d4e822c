"""The Fiji commands (fiji_scripts/*.py), run the way Fiji's Python mode runs them (tests/fiji_harness.py).

Everything runs against a real JVM with real ImageJ1, real ONNX Runtime and real files:

- the scripts' headers, parameters, defaults and Jython-safe bodies, and the macro options the
  recorder would write for them (parsed back by ImageJ's own ``Macro.getValue``);
- file inputs (headless batch) and window-title inputs: windows are ImageJ batch-mode images here,
  exactly what a headless Fiji macro with ``setBatchMode(true)`` works with, so these tests need
  no display; the ``gui`` test then repeats the workflow on real windows under Xvfb;
- end to end on a small crop of ../shared/data/vnc_sstem (skipped when the data is absent):
  train -> predict -> evaluate -> measure, and a headless batch prediction over a folder;
- failures (Log, status output, error dialog, non-zero exit of a headless run) and cancelling.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import re
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from bridge_fixtures import (  # noqa: F401
    drain_edt,
    ij1,
    ij_log_capture,
    imagej_app,
    needs_display,
    screenshot,
    wait_for,
)
from emseg_testdata import SHARED_DATA, blob_volume
from fiji_harness import parse_run_args, parse_script, run_headless, run_script

from fiji_emseg.bridge import commands
from fiji_emseg.bridge.fiji_callbacks import TrainingProgress, training_status
from fiji_emseg.bridge.imageplus import imageplus_to_numpy, numpy_to_imageplus
from fiji_emseg.bridge.jvm import is_headless, jclass
from fiji_emseg.bridge.progress import FijiProgress
from fiji_emseg.bridge.results import find_table, table_to_dataframe
from fiji_emseg.engine.callbacks import EpochReport, StepReport
from fiji_emseg.engine.data.volume_io import (
    Calibration,
    open_volume,
    read_volume,
    write_volume,
)
from fiji_emseg.engine.evaluation.evaluation import evaluate, measure
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.models.model_store import read_model_info
from fiji_emseg.engine.training.train_config import TrainConfig

pytestmark = pytest.mark.imagej

REPO = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = REPO / "fiji_scripts"
VNC = SHARED_DATA / "vnc_sstem"
#: script file -> (menu label, command function)
SCRIPTS: dict[str, tuple[str, Any]] = {
    "Train_EM_Model.py": (commands.TRAIN_TITLE, commands.train_command),
    "Predict_EM_Model.py": (commands.PREDICT_TITLE, commands.predict_command),
    "Evaluate_EM_Segmentation.py": (commands.EVALUATE_TITLE, commands.evaluate_command),
    "Measure_EM_Objects.py": (commands.MEASURE_TITLE, commands.measure_command),
    "Package_EM_Model.py": (commands.PACKAGE_TITLE, commands.package_command),
}
#: A model small enough to train in seconds on 2 CPU cores.
TINY_TRAIN = {"epochs": 2, "steps": 3, "batch_size": 2, "patch_size": 64, "depth": 2, "filters": 4, "seed": 1,
              "use_gpu": False}
CAL = Calibration((45.0, 4.6, 4.6), "nm")  # vnc_sstem: 4.6 nm pixels, ~45 nm sections


def script(name: str) -> Path:
    return SCRIPTS_DIR / name


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Two cores shared with other jobs: torch's thread pool then thrashes (5x slower steps)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- helpers --------------------------------------------------------------------------------------

@contextlib.contextmanager
def batch_mode() -> Iterator[list[Any]]:
    """ImageJ macro batch mode (what ``setBatchMode(true)`` sets): images get titles but no windows.

    Yields a list; images appended to it, and every batch-mode image left over, are closed at the end.
    """
    interpreter = jclass("ij.macro.Interpreter")
    field = interpreter.class_.getDeclaredField("batchMode")
    field.setAccessible(True)
    field.setBoolean(None, True)
    opened: list[Any] = []
    try:
        yield opened
    finally:
        drain_edt_if_gui()
        for imp in opened:
            imp.changes = False
            imp.close()
        for _ in range(100):
            if int(interpreter.getBatchModeImageCount()) == 0:
                break
            imp = interpreter.getLastBatchModeImage()
            imp.changes = False
            imp.close()
        field.setBoolean(None, False)


def drain_edt_if_gui() -> None:
    if not is_headless():
        drain_edt()


def batch_image(array: np.ndarray, title: str, opened: list[Any], calibration: Calibration = CAL) -> Any:
    """An image known to ImageJ by its title (inside :func:`batch_mode`)."""
    imp = numpy_to_imageplus(array, title, calibration)
    imp.show()
    opened.append(imp)
    assert jclass("ij.WindowManager").getImage(title) is not None
    return imp


def pixels(imp: Any) -> np.ndarray:
    return imageplus_to_numpy(imp, squeeze=False)[0].reshape(int(imp.getStackSize()), int(imp.getHeight()),
                                                             int(imp.getWidth()))


def error_dialogs(title: str) -> list[Any]:
    dialog = jclass("java.awt.Dialog")
    return [w for w in jclass("java.awt.Window").getWindows()
            if isinstance(w, dialog) and w.isShowing() and str(w.getTitle()) == title]


def close_error_dialogs(title: str) -> int:
    """In the GUI a failure opens ImageJ's error dialog (asynchronously); close it, return how many."""
    if is_headless():
        return 0
    wait_for(lambda: bool(error_dialogs(title)), timeout_s=3.0)
    found = error_dialogs(title)
    for d in found:
        d.dispose()
    return len(found)


def close_windows(*titles: str) -> None:
    """Close the table (text) windows with these titles, without 'save changes?' prompts."""
    if is_headless():
        return
    from fiji_emseg.bridge.awt import run_on_edt

    for title in titles:
        win = jclass("ij.WindowManager").getWindow(title)
        if win is not None:
            run_on_edt(lambda w=win: w.close(False), wait=True)


def write_stack(path: Path, data: np.ndarray, calibration: Calibration = CAL) -> Path:
    write_volume(path, data, calibration, overwrite=True)
    return path


def csv_table(path: Path) -> pd.DataFrame:
    assert path.is_file(), f"{path} was not written"
    return pd.read_csv(path)


# -- data --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vnc_crop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """6 slices x 128 x 128 of vnc_sstem image.tif and mito.tif (read lazily; written to tmp only)."""
    if not (VNC / "image.tif").is_file() or not (VNC / "mito.tif").is_file():
        pytest.skip(f"real EM data not found: {VNC} (../shared/data is absent on this machine)")
    folder = tmp_path_factory.mktemp("vnc_crop")
    region = (slice(0, 6), slice(768, 896), slice(384, 512))  # mitochondria in every slice
    out: dict[str, Any] = {"folder": folder}
    for name in ("image", "mito"):
        with open_volume(VNC / f"{name}.tif") as vol:
            data = np.asarray(vol[region])
        out[name] = data
        out[f"{name}_file"] = write_stack(folder / f"{name}.tif", data)
    with open_volume(VNC / "image.tif") as vol:  # a second stack for batch prediction over a folder
        out["other"] = np.asarray(vol[6:10, 512:640, 384:512])
    assert set(np.unique(out["mito"])) == {0, 255}
    return out


@pytest.fixture(scope="module")
def trained(ij1, vnc_crop: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811
    """Train EM Model from files (a headless batch run's inputs), through the harness."""
    model = tmp_path_factory.mktemp("models") / "mito model"
    with ij_log_capture() as log:
        run = run_script(script("Train_EM_Model.py"), {
            "image_file": str(vnc_crop["image_file"]), "mask_files": str(vnc_crop["mito_file"]),
            "model_folder": str(model), "validation_slices": "5-6", **TINY_TRAIN}, autofill_image=False)
    assert run.ok, run.error
    if not is_headless():  # the live training plot (a GUI window): later tests tile the windows they open
        plot = jclass("ij.WindowManager").getWindow(f"Train EM Model: loss and validation F1 ({model.name})")
        assert plot is not None
        jclass("ij.WindowManager").getImage(f"Train EM Model: loss and validation F1 ({model.name})").close()
    return {"model": model, "run": run, "log": log}


# -- the scripts themselves -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_header_parameters_and_outputs(name: str) -> None:
    info = parse_script(script(name))
    label = SCRIPTS[name][0]
    assert info.language == "Python"  # #@script(language="Python"): the CPython runner, not Jython
    assert info.directives["menuPath"] == f"Plugins>EM Segmentation>{label}"
    assert info.directives["headless"] is True
    assert name == label.replace(" ", "_") + ".py"  # the file name gives the same menu entry
    assert info.invalid_lines == []
    names = [p.name for p in info.inputs]
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names), names  # macro keys are lower case
    assert all(p.attrs.get("label") for p in info.inputs)
    # String outputs only: Fiji displays every output, and an ImagePlus output would be shown twice
    assert info.outputs and all(p.type_name == "String" for p in info.outputs)
    assert info.outputs[0].name == "status"
    slice_inputs = [p for p in info.inputs if "slices" in p.name]
    assert all("from 1" in p.attrs["label"] for p in slice_inputs)  # 1-based, and the dialog says so
    assert "".join(p.attrs.get("description", "") for p in info.inputs)  # tool tips
    script(name).read_text(encoding="ascii")  # Jython 2 refuses non-ASCII source without a coding line


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_body_is_one_jython_safe_call(name: str) -> None:
    info = parse_script(script(name))
    tree = ast.parse(info.body, feature_version=(3, 4))  # no f-strings, walrus, annotations (Jython 2.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from lib2to3 import pygram, pytree
            from lib2to3.pgen2 import driver
        except ImportError:  # Python 3.13+
            pass
        else:  # parse with the Python 2 grammar (print statement and all), as Jython would
            driver.Driver(pygram.python_grammar, convert=pytree.convert).parse_string(info.body)
    assert {type(s).__name__ for s in tree.body} == {"ImportFrom", "Assign", "Delete"}
    imports = [s for s in tree.body if isinstance(s, ast.ImportFrom)]
    assert [(i.module, [a.name for a in i.names]) for i in imports] == [
        ("fiji_emseg.bridge.commands", [SCRIPTS[name][1].__name__])]
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    command_calls = [c for c in calls if isinstance(c.func, ast.Name) and c.func.id == SCRIPTS[name][1].__name__]
    assert len(command_calls) == 1
    others = [c for c in calls if c not in command_calls]
    # the one non-cast call: globals().get("org.scijava.script.ScriptModule"), the running module
    module_lookups = [c for c in others if isinstance(c.func, ast.Attribute)]
    assert [ast.unparse(c) for c in module_lookups] == ["globals().get('org.scijava.script.ScriptModule')"]
    assert {c.func.id for c in others if c not in module_lookups} <= {  # type: ignore[attr-defined]
        "int", "float", "bool", "str", "globals"}
    # every input goes into the call, under its own name, and the running module as ``module``
    inputs = {p.name for p in info.inputs}
    assert {k.arg for k in command_calls[0].keywords} == inputs | {"module"}
    # nothing but strings is left at top level, and the outputs are assigned
    assigned = {t.id for s in tree.body if isinstance(s, ast.Assign) for t in s.targets if isinstance(t, ast.Name)}
    deleted = {t.id for s in tree.body if isinstance(s, ast.Delete) for t in s.targets if isinstance(t, ast.Name)}
    assert assigned - deleted == {p.name for p in info.outputs}


def _engine_default(command: Any, name: str) -> Any:
    return inspect.signature(command).parameters[name].default


def test_script_defaults_equal_command_and_engine_defaults() -> None:
    for name, (_, command) in SCRIPTS.items():
        info = parse_script(script(name))
        signature = inspect.signature(command).parameters
        assert set(signature) == {p.name for p in info.inputs} | {"module"}, name  # + the running ScriptModule
        for p in info.inputs:
            if "value" in p.attrs:
                assert p.attrs["value"] == signature[p.name].default, (name, p.name)
    train, model = TrainConfig(), ModelConfig()
    cmd = commands.train_command
    # plan auto, as emseg train: every setting 0 = chosen by the planner (with plan none: the engine's defaults)
    from fiji_emseg.cli.main import build_parser
    from fiji_emseg.engine.training.planner import DEFAULT_BUDGET_MINUTES

    cli = build_parser().parse_args(["train", "m", "--image", "a.tif", "--masks", "b.tif"])
    assert _engine_default(cmd, "plan") == cli.plan == "auto"
    assert _engine_default(cmd, "time_budget") == DEFAULT_BUDGET_MINUTES["cpu"]
    for name in ("epochs", "steps", "batch_size", "patch_size", "learning_rate", "depth", "filters"):
        assert _engine_default(cmd, name) == 0, name
    assert _engine_default(cmd, "output") == model.output
    assert train.seed is None and _engine_default(cmd, "seed") == -1  # -1: draw one, as the engine does
    assert inspect.signature(evaluate).parameters["components"].default == \
        _engine_default(commands.evaluate_command, "components")
    assert inspect.signature(measure).parameters["components"].default == \
        _engine_default(commands.measure_command, "components")
    assert inspect.signature(evaluate).parameters["threshold"].default is None  # our 0 means "None"
    from fiji_emseg.engine.inference.cleanup import CleanupConfig
    from fiji_emseg.engine.inference.prediction_output import as_thresholds
    from fiji_emseg.engine.inference.predictor import PredictConfig

    predict = commands.predict_command
    # 0: the model's own threshold (calibrated on validation data, else 0.5), as PredictConfig's None
    assert _engine_default(predict, "threshold") == 0.0 and PredictConfig().thresholds is None
    assert as_thresholds(None, ["mito"])[0] == 0.5
    assert (_engine_default(predict, "min_size"), _engine_default(predict, "fill_holes")) == (
        CleanupConfig().min_object_size, CleanupConfig().max_hole_size)
    assert _engine_default(predict, "tta") is PredictConfig().tta is False
    assert _engine_default(predict, "use_gpu") is True and PredictConfig().device == train.device == "auto"


def _set_static(cls: str, name: str, value: bool) -> None:
    field = jclass(cls).class_.getDeclaredField(name)
    field.setAccessible(True)
    field.setBoolean(None, value)


def recorded_options(values: dict[str, str]) -> str:
    """The option string ImageJ's macro recorder builds (ij.plugin.frame.Recorder.recordOption)."""
    recorder = jclass("ij.plugin.frame.Recorder")
    _set_static("ij.plugin.frame.Recorder", "record", True)
    try:
        recorder.setCommand("EM test command")
        recorder.resetCommandOptions()
        for k, v in values.items():
            recorder.recordOption(k, v)
        return str(recorder.getCommandOptions())
    finally:
        recorder.resetCommandOptions()
        _set_static("ij.plugin.frame.Recorder", "record", False)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_recorded_macro_options_parse_back_for_every_parameter(ij1, name: str) -> None:  # noqa: F811
    """No parameter name hides another in ImageJ's key matching (e.g. 'file=' would match 'image_file=')."""
    info = parse_script(script(name))
    values = {p.name: f"value of {p.name}" for p in info.inputs}
    options = recorded_options(values)
    assert options.startswith(f"{info.inputs[0].name}=[value of ")
    macro = jclass("ij.Macro")
    for key, value in values.items():
        assert str(macro.getValue(options, key, None)) == value, key


def test_readme_macro_and_headless_examples_use_real_parameters(ij1) -> None:  # noqa: F811
    """The README's macro lines are exactly what ImageJ's recorder writes for these scripts."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    runs = re.findall(r'run\("([^"]+)", "([^"]*)"\);', readme)
    by_label = {label: parse_script(script(f)) for f, (label, _) in SCRIPTS.items()}
    assert sorted(label for label, _ in runs) == sorted(by_label)
    macro = jclass("ij.Macro")
    for label, options in runs:
        names = [p.name for p in by_label[label].inputs]
        assert re.findall(r"(?:^| )([a-z_0-9]+)=", options) == names, label  # every input, in order
        values = {n: str(macro.getValue(options, n, None)) for n in names}
        assert recorded_options(values) == options, label
    headless = re.findall(r"--run \S*/(\w+\.py)\s*\\?\s*'([^']*)'", readme)
    assert {file for file, _ in headless} >= {"Train_EM_Model.py", "Predict_EM_Model.py"}
    for file, args in headless:
        keys = set(parse_run_args(args))
        assert keys <= {p.name for p in parse_script(script(file)).inputs}, (file, keys)


def test_status_text_and_training_progress_adapter(ij1) -> None:  # noqa: F811
    step = StepReport(epoch=3, epochs=64, step=120, steps=256, loss=0.2149, lr=1e-3, elapsed_s=100, eta_s=725)
    assert training_status("Train EM Model", step, {"mito": 0.8812}) == \
        "Train EM Model: epoch 3/64 step 120/256 loss 0.21 — val F1 mito 0.88 — ETA 12 min 05 s"
    assert training_status("T", StepReport(1, 1, 1, 1, 0.5, 1e-3, 1, 0)) == "T: epoch 1/1 step 1/1 loss 0.50"
    with FijiProgress("adapter test", min_interval_s=0.0, show_eta=False) as progress, ij_log_capture() as log:
        adapter = TrainingProgress(progress, "Train EM Model")
        adapter.on_train_begin({"total_steps": 6, "start_step": 0})
        adapter.on_step(StepReport(1, 2, 1, 3, 0.5, 1e-3, 1, 5))
        report = EpochReport(1, 2, 0.5, 0.4, {"mito": 0.75}, 1e-3, 2.0, 2.0, True, 1)
        adapter.on_epoch_end(report)
        assert adapter.last_val_f1 == {"mito": 0.75}
        assert progress.updates_sent == 2
        assert not adapter.should_stop()
        progress.cancel()
        assert adapter.should_stop()
    assert f"Train EM Model: {report.summary()}" in log


def test_slice_numbers_are_converted_between_fiji_and_the_engine() -> None:
    assert commands.zero_based_ranges([11, 12, 13, 15, 19, 18]) == "11-13,15,18-19"
    assert commands._one_based("13-16, 20", 20) == [12, 13, 14, 15, 19]
    assert commands._one_based("", 20) is None
    from fiji_emseg.errors import InputDataError

    with pytest.raises(InputDataError, match="start at 1"):
        commands._one_based("0-3", 20)
    with pytest.raises(InputDataError, match="numbered 1 to 20"):
        commands._one_based("18-21", 20)
    df = pd.DataFrame({"slice": [0, 3], "centroid_z": [0.5, 2.0], "z_min": [-1, 0], "y_min": [0, 1]})
    shown = commands._slices_one_based(df)
    assert shown["slice"].tolist() == [1, 4] and shown["centroid_z"].tolist() == [1.5, 3.0]
    assert shown["z_min"].tolist() == [-1, 1] and shown["y_min"].tolist() == [0, 1]  # -1 = absent; x/y stay


# -- window inputs (batch-mode images: no display needed) ------------------------------------------

def test_train_from_mask_windows_with_annotated_slices_and_warning(ij1, tmp_path: Path) -> None:  # noqa: F811
    image, masks = blob_volume((4, 64, 64), n=30, half=5, seed=2)
    antialiased = masks[0] * 255
    antialiased[0, 0, 0] = 128  # a grey pixel: a mask drawn with antialiasing
    model = tmp_path / "window model"
    with batch_mode() as opened, ij_log_capture() as log:
        em = batch_image(image, "blobs em", opened)
        batch_image(antialiased.astype(np.uint8), "bright blobs", opened)
        run = run_script(script("Train_EM_Model.py"), {
            "image": em, "masks": "bright blobs", "model_folder": str(model), "annotated_slices": "1-3",
            "validation_slices": "3", **TINY_TRAIN, "patch_size": 32, "epochs": 1, "steps": 2})
    assert run.ok, run.error
    assert run.outputs["status"].startswith("ok: training completed after 1 epochs"), run.outputs
    assert run.outputs["model_path"] == str(model)
    info = read_model_info(model)
    assert info.model.classes == ("bright blobs",)  # the class is named after the mask window
    assert info.training["config"]["val_slices"] == "2"  # slice 3 as Fiji counts = index 2
    assert info.training["config"]["device"] == "cpu"  # use_gpu=false
    assert info.training["data"]["calibration"] == CAL.to_dict()  # the window's voxel size went along
    assert (model / "model.onnx").is_file()
    warned = [line for line in log if line.startswith("WARNING: bright blobs: mask is not binary")]
    assert warned, log  # an EmsegWarning from the bridge, routed to the Log
    assert any(line.startswith("Train EM Model: epoch 1/1, loss") for line in log)


@pytest.mark.data
def test_predict_evaluate_measure_on_windows(trained: dict[str, Any], vnc_crop: dict[str, Any],
                                             tmp_path: Path) -> None:
    model = trained["model"]
    out = tmp_path / "out"
    with batch_mode() as opened:
        em = batch_image(vnc_crop["image"], "crop em", opened)
        batch_image(vnc_crop["mito"], "mito truth", opened)
        run = run_script(script("Predict_EM_Model.py"), {
            "image": em, "model_folder": str(model), "output_folder": str(out), "show_probabilities": True,
            "show_overlay": True, "use_gpu": False})
        assert run.ok, run.error
        assert run.outputs["status"].startswith("ok: crop em: crop em pred mito (foreground mito ")
        assert run.outputs["mask_titles"] == "crop em pred mito"
        wm = jclass("ij.WindowManager")
        mask = wm.getImage("crop em pred mito")
        assert mask is not None and int(mask.getBitDepth()) == 8 and int(mask.getStackSize()) == 6
        values = pixels(mask)
        assert set(np.unique(values)) <= {0, 255} and 0 < (values == 255).mean() < 1
        cal = mask.getCalibration()
        assert (float(cal.pixelWidth), float(cal.pixelDepth), str(cal.getUnit())) == (4.6, 45.0, "nm")
        prob = wm.getImage("crop em prob mito")
        assert int(prob.getBitDepth()) == 32
        p = pixels(prob)
        own = read_model_info(model).training.get("thresholds", {}).get("mito", 0.5)
        assert ((p > own) == (values == 255)).all()  # the mask is the probability map at the model's threshold
        overlay = wm.getImage("crop em overlay")
        assert int(overlay.getNChannels()) == 2 and bool(overlay.isComposite())
        saved, saved_cal = read_volume(out / "crop_em_mito_mask.tif")  # output_folder: the masks as files too
        assert (saved == values).all() and saved_cal == CAL

        eval_dir = tmp_path / "evaluation"
        run = run_script(script("Evaluate_EM_Segmentation.py"), {
            "reference": "mito truth", "prediction": "crop em pred mito", "annotated_slices": "5-6",
            "output_folder": str(eval_dir)})
        assert run.ok, run.error
        assert run.outputs["table_title"] == "crop em evaluation"
        expected = evaluate({"mito": vnc_crop["mito"]}, {"mito": values}, annotated_slices="4-5")  # 0-based
        f1 = float(expected.summary["f1"].iloc[0])
        assert run.outputs["status"].startswith(f"ok: crop em: mito F1 {f1:.3f} IoU ")
        summary = csv_table(eval_dir / "crop_em_evaluation_summary.csv")
        assert summary["class"].tolist() == ["mito"] and summary["f1"].iloc[0] == pytest.approx(f1, abs=1e-5)
        per_slice = csv_table(eval_dir / "crop_em_evaluation_per_slice.csv")
        assert per_slice["slice"].tolist() == [5, 6]  # numbered as in Fiji
        if not is_headless():  # the table window exists too
            shown = table_to_dataframe(find_table("crop em evaluation"))
            assert shown["f1"].iloc[0] == pytest.approx(f1, abs=1e-9)

        run = run_script(script("Measure_EM_Objects.py"), {
            "masks": "crop em pred mito", "min_size": 30, "output_folder": str(eval_dir)})
        assert run.ok, run.error
        expected_objects = measure({"mito": values}, calibration=CAL, min_voxels=30)
        assert run.outputs["status"] == (f"ok: crop em: mito {len(expected_objects)} objects; table saved in "
                                         f"{eval_dir / 'crop_em_objects.csv'}")
        objects = csv_table(eval_dir / "crop_em_objects.csv")
        assert len(objects) == len(expected_objects) > 0
        assert (objects["z_min"] == expected_objects["z_min"] + 1).all()  # slices from 1
        assert objects["volume"].to_numpy() == pytest.approx(expected_objects["volume"].to_numpy(), rel=1e-5)
        assert set(objects["unit"]) == {"nm"}
        assert run.toplevel_arrays() == []
    close_windows("crop em evaluation", "crop em evaluation per slice", "crop em objects")


@pytest.mark.data
def test_end_to_end_from_files(trained: dict[str, Any], vnc_crop: dict[str, Any], tmp_path: Path) -> None:
    """Train (the fixture) -> predict -> evaluate -> measure, all with file inputs."""
    model, train_run = trained["model"], trained["run"]
    assert train_run.outputs["status"].startswith("ok: training completed after 2 epochs (best epoch ")
    assert train_run.outputs["model_path"] == str(model)
    for f in ("config.json", "weights.safetensors", "model.onnx", "training_log.csv"):
        assert (model / f).is_file(), f
    info = read_model_info(model)
    assert info.training["config"]["val_slices"] == "4-5"  # 'validation_slices=5-6' counted from 1
    assert (info.model.depth, info.model.filters, info.model.classes) == (2, 4, ("mito",))
    log = trained["log"]
    assert sum(line.startswith("Train EM Model: epoch ") and ", loss " in line for line in log) == 2
    assert any("exported" in line and "model.onnx" in line for line in log)

    pred_dir = tmp_path / "pred"
    run = run_script(script("Predict_EM_Model.py"), {
        "image_file": str(vnc_crop["image_file"]), "model_folder": str(model), "output_folder": str(pred_dir),
        "min_size": 20, "use_gpu": False})
    assert run.ok, run.error
    assert run.outputs["status"] == f"ok: predicted 1 stack; 1 files in {pred_dir}"
    assert run.outputs["mask_titles"] == ""  # files, no windows
    mask_file = pred_dir / "image_mito_mask.tif"
    imp = jclass("ij.IJ").openImage(str(mask_file))  # ImageJ reads it with its calibration
    assert int(imp.getBitDepth()) == 8 and int(imp.getStackSize()) == 6
    assert float(imp.getCalibration().pixelDepth) == 45.0
    mask = pixels(imp)
    assert set(np.unique(mask)) <= {0, 255}

    eval_dir = tmp_path / "eval"
    run = run_script(script("Evaluate_EM_Segmentation.py"), {
        "reference_files": str(vnc_crop["mito_file"]), "prediction_files": str(mask_file),
        "annotated_slices": "1-4", "components": "2d", "output_folder": str(eval_dir)})
    assert run.ok, run.error
    expected = evaluate(vnc_crop["mito_file"], mask_file, annotated_slices="0-3", components="2d")
    summary = csv_table(eval_dir / "image_mito_mask_evaluation_summary.csv")
    assert summary["f1"].iloc[0] == pytest.approx(float(expected.summary["f1"].iloc[0]), abs=1e-5)
    assert summary["pred_objects"].iloc[0] == expected.summary["pred_objects"].iloc[0]
    assert csv_table(eval_dir / "image_mito_mask_evaluation_per_slice.csv")["slice"].tolist() == [1, 2, 3, 4]
    objects = csv_table(eval_dir / "image_mito_mask_evaluation_objects.csv")
    assert len(objects) == len(expected.objects) and objects["z_min"].min() >= 1

    run = run_script(script("Measure_EM_Objects.py"), {
        "mask_files": str(mask_file), "classes": "mito", "min_size": 50, "output_folder": str(eval_dir)})
    assert run.ok, run.error
    table = csv_table(eval_dir / "image_mito_mask_objects.csv")
    assert set(table["class"]) == {"mito"} and table["voxels"].min() >= 50
    assert run.outputs["status"].startswith(f"ok: image_mito_mask: mito {len(table)} objects")
    again = run_script(script("Measure_EM_Objects.py"), {  # the table exists: refused without overwrite
        "mask_files": str(mask_file), "output_folder": str(eval_dir)})
    assert again.outputs["status"].startswith("error: ") and "already exists" in again.outputs["status"]
    close_error_dialogs(commands.MEASURE_TITLE)


@pytest.mark.data
def test_headless_batch_prediction_over_a_folder(trained: dict[str, Any], vnc_crop: dict[str, Any],
                                                 tmp_path: Path) -> None:
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    write_stack(stacks / "a.tif", vnc_crop["image"])
    write_stack(stacks / "b.tif", vnc_crop["other"])
    out = tmp_path / "out"
    proc = run_headless(script("Predict_EM_Model.py"),
                        f'model_folder="{trained["model"]}",image_file="{stacks}",output_folder="{out}",use_gpu=false',
                        env={"OMP_NUM_THREADS": "1"}, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"[output] status = ok: predicted 2 stacks; 2 files in {out}" in proc.stdout
    assert "Predict EM Model: [2/2] b.tif: predicted " in proc.stdout  # the Log goes to stdout
    assert "Predict EM Model: [2/2] b.tif slice 4 of 4" in proc.stdout  # the last status, logged headless
    for name, n in (("a", 6), ("b", 4)):
        mask, cal = read_volume(out / f"{name}_mito_mask.tif")
        assert mask.shape == (n, 128, 128) and set(np.unique(mask)) <= {0, 255} and cal == CAL


# -- failures ---------------------------------------------------------------------------------------

def _synthetic_files(folder: Path) -> dict[str, Path]:
    image, masks = blob_volume((3, 48, 48), n=12, half=4, seed=5)
    folder.mkdir(parents=True, exist_ok=True)
    labels = masks[0] * 3
    labels[:, :, :10] = np.where(labels[:, :, :10] > 0, 2, 0)
    (folder / "existing model").mkdir(exist_ok=True)
    (folder / "existing model" / "config.json").write_text("{}")
    return {
        "model": folder / "existing model",
        "image": write_stack(folder / "em.tif", image),
        "mask": write_stack(folder / "bright.tif", masks[0] * 255),
        "small_mask": write_stack(folder / "small.tif", masks[0, :, :40, :40] * 255),
        "labels": write_stack(folder / "labels.tif", labels.astype(np.uint8)),
    }


FAILURES = {
    "mask of another size": ("Train_EM_Model.py", lambda f, m: {
        "image_file": str(f["image"]), "mask_files": str(f["small_mask"]), "model_folder": str(m)},
        "small.tif: mask shape 3×40×40 (Z×Y×X) does not match image shape 3×48×48 (Z×Y×X)"),
    "non-binary mask file": ("Train_EM_Model.py", lambda f, m: {
        "image_file": str(f["image"]), "mask_files": str(f["labels"]), "model_folder": str(m)},
        "labels.tif: mask is not binary (values found: 0, 2, 3)"),
    "validation slice outside the stack": ("Train_EM_Model.py", lambda f, m: {
        "image_file": str(f["image"]), "mask_files": str(f["mask"]), "model_folder": str(m),
        "validation_slices": "3-4"}, "slice 4 is outside the stack, which has 3 slices (numbered 1 to 3)"),
    "model folder that already holds a model": ("Train_EM_Model.py", lambda f, m: {
        "image_file": str(f["image"]), "mask_files": str(f["mask"]), "model_folder": str(f["model"])},
        "already holds a model; choose another model folder, or tick 'Replace a model already in the folder'"),
    "missing model folder": ("Predict_EM_Model.py", lambda f, m: {
        "image_file": str(f["image"]), "model_folder": str(m), "output_folder": str(m.parent / "out")},
        "does not exist; choose the folder that Train EM Model wrote"),
    # what SciJava hands a command for a macro's image=[title] that names no window (title '', no pixels)
    "image that holds no pixels": ("Train_EM_Model.py", lambda f, m: {
        "image": jclass("ij.ImagePlus")(), "masks": "mask", "model_folder": str(m)},
        "the image given is not an open image (it holds no pixels); select its window, or name it with image=[title]"),
    # checked before the model loads: the model named here is broken ('{}' as config.json) and is never read
    "image that holds no pixels, given to Predict": ("Predict_EM_Model.py", lambda f, m: {
        "image": jclass("ij.ImagePlus")(), "model_folder": str(f["model"])},
        "the image given is not an open image (it holds no pixels); select its window, or name it with image=[title]"),
    "mask window that is not open": ("Measure_EM_Objects.py", lambda f, m: {"masks": "no such window"},
                                     "no image window is called 'no such window'"),
    "probability map without threshold": ("Evaluate_EM_Segmentation.py", lambda f, m: {
        "reference_files": str(f["mask"]), "prediction_files": str(f["labels"])},
        "is not a binary mask (values 0–3); give a threshold"),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failures_are_reported_in_the_log_and_the_status(ij1, tmp_path: Path, case: str,  # noqa: F811
                                                          request: pytest.FixtureRequest) -> None:
    name, inputs, message = FAILURES[case]
    if not is_headless():
        request.getfixturevalue("imagej_app")  # ImageJ's main window, as in Fiji: errors get a dialog
    files = _synthetic_files(tmp_path / "data")
    model = tmp_path / "model"
    with ij_log_capture() as log:
        run = run_script(script(name), inputs(files, model), autofill_image=False)
    assert run.ok  # nothing escaped to Fiji's runner, which would swallow it
    status = run.outputs["status"]
    assert status.startswith("error: ") and message in status, status
    assert "\n" not in status  # one line, naming the problem and the fix
    assert [line for line in log if line.startswith("ERROR: ") and message in line], log
    if name == "Train_EM_Model.py":
        assert not model.exists()  # nothing written before the inputs were checked
        assert sorted(p.name for p in files["model"].iterdir()) == ["config.json"]  # an existing model is kept
    closed = close_error_dialogs(SCRIPTS[name][0])
    assert closed == (0 if is_headless() else 1)  # the GUI shows ImageJ's error dialog


def test_headless_failure_exits_non_zero(tmp_path: Path) -> None:
    files = _synthetic_files(tmp_path / "data")
    proc = run_headless(script("Predict_EM_Model.py"),
                        f'image_file="{files["image"]}",model_folder="{tmp_path / "nowhere"}",'
                        f'output_folder="{tmp_path / "out"}"')
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"ERROR: model folder {tmp_path / 'nowhere'} does not exist" in proc.stdout  # the Log
    assert "Predict EM Model: ERROR: model folder" in proc.stderr
    assert "[output]" not in proc.stdout and not (tmp_path / "out").exists()


def test_cancelling_training_with_escape_keeps_a_resumable_model(ij1, tmp_path: Path) -> None:  # noqa: F811
    """Esc (ImageJ's cancel key) -> FijiProgress.cancelled() -> the trainer's should_stop()."""
    files = _synthetic_files(tmp_path / "data")
    model = tmp_path / "model"
    ij = jclass("ij.IJ")

    def press_escape_once_training_runs() -> None:
        if wait_for(lambda: (model / "config.json").is_file(), timeout_s=60):  # written as training starts
            time.sleep(0.3)
            ij.setKeyDown(jclass("java.awt.event.KeyEvent").VK_ESCAPE)

    presser = threading.Thread(target=press_escape_once_training_runs, daemon=True)
    presser.start()
    try:
        with ij_log_capture() as log:
            run = run_script(script("Train_EM_Model.py"), {
                "image_file": str(files["image"]), "mask_files": str(files["mask"]), "model_folder": str(model),
                **TINY_TRAIN, "epochs": 500, "patch_size": 32}, autofill_image=False)
    finally:
        presser.join(timeout=5)
        ij.resetEscape()
    assert run.ok, run.error
    status = run.outputs["status"]
    assert status.startswith("cancelled: training stopped after ") and " of 500 epochs" in status, status
    assert (model / "weights.safetensors").is_file() and (model / "checkpoint.pt").is_file()
    assert read_model_info(model).training["status"] == "interrupted"
    assert not (model / "model.onnx").exists()  # an interrupted run is not exported
    assert any("training stopped (cancelled)" in line for line in log), log
    assert not [line for line in log if line.startswith("ERROR")]


# -- a whole GUI session ------------------------------------------------------------------------------

@pytest.mark.gui
@pytest.mark.data
@needs_display()
def test_gui_session_with_open_windows(imagej_app, trained: dict[str, Any], vnc_crop: dict[str, Any],  # noqa: F811
                                       capsys: pytest.CaptureFixture[str]) -> None:
    wm, ij = jclass("ij.WindowManager"), jclass("ij.IJ")
    from fiji_emseg.bridge.awt import run_on_edt
    from fiji_emseg.bridge.outputs import show

    em = ij.openImage(str(vnc_crop["image_file"]))
    truth = ij.openImage(str(vnc_crop["mito_file"]))
    truth.setTitle("mito truth")
    show(truth)
    show(em)  # the EM window is the current image: Predict EM Model uses it (no image given)

    def em_is_current() -> bool:
        """AWT activates windows asynchronously (no window manager under Xvfb): a late activation of
        the first window can make it current again, so click the EM window as a user would."""
        current = wm.getCurrentImage()
        if current is not None and str(current.getTitle()) == "image.tif":
            return True
        if em.getWindow() is not None:
            wm.setCurrentWindow(em.getWindow())
        return False

    assert wait_for(em_is_current)
    time.sleep(0.5)
    assert wait_for(em_is_current)
    run = run_script(script("Predict_EM_Model.py"), {
        "model_folder": str(trained["model"]), "show_overlay": True, "min_size": 20, "use_gpu": False})
    assert run.ok, run.error
    assert run.outputs["mask_titles"] == "image.tif pred mito"
    run = run_script(script("Evaluate_EM_Segmentation.py"), {
        "reference": "mito truth", "prediction": "image.tif pred mito"})
    assert run.ok and run.outputs["status"].startswith("ok: image.tif: mito F1 "), run.outputs
    run = run_script(script("Measure_EM_Objects.py"), {"masks": "image.tif pred mito", "min_size": 50})
    assert run.ok and run.outputs["status"].startswith("ok: image.tif: mito "), run.outputs

    titles = ["image.tif", "mito truth", "image.tif pred mito", "image.tif overlay"]
    assert wait_for(lambda: all(wm.getImage(t) is not None and wm.getImage(t).getWindow() is not None
                                and wm.getImage(t).getWindow().isShowing() for t in titles))
    mask = wm.getImage("image.tif pred mito")
    assert int(mask.getBitDepth()) == 8 and set(np.unique(pixels(mask))) <= {0, 255}
    assert float(mask.getCalibration().pixelWidth) == pytest.approx(4.6)  # TIFF stores 1/4.6 as a fraction
    for table in ("image.tif evaluation", "image.tif evaluation per slice", "image.tif objects"):
        assert wait_for(lambda t=table: wm.getWindow(t) is not None), table
    assert int(find_table("image.tif evaluation per slice").size()) == 6
    assert int(find_table("image.tif objects").size()) > 0

    for title in titles:  # 128-pixel crops: show them at 200 %
        ij.run(wm.getImage(title), "Set... ", "zoom=200 x=64 y=64")

    def arrange() -> None:
        x = 0
        for title in titles:
            win = wm.getImage(title).getWindow()
            win.setLocation(x, 90)
            x += int(win.getWidth()) + 4
        for table, (y, h) in (("image.tif evaluation", (410, 110)), ("image.tif evaluation per slice", (525, 200)),
                              ("image.tif objects", (730, 260))):
            wm.getWindow(table).setBounds(0, y, 900, h)
        log = wm.getWindow("Log")
        if log is not None:
            log.setBounds(905, 410, 370, 580)

    run_on_edt(arrange, wait=True)
    drain_edt()
    time.sleep(1.0)  # let AWT paint before the X server is read
    path = screenshot("fiji_commands_session")
    with capsys.disabled():
        print(f"\nFiji commands screenshot: {path}")
    from PIL import Image

    shot = np.asarray(Image.open(path).convert("RGB")).astype(int)
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    assert ((r - g > 120) & (b - g > 120)).sum() > 300, "the overlay (magenta mito) is not on screen"
    for title in titles:
        imp = wm.getImage(title)
        imp.changes = False
        run_on_edt(imp.close, wait=True)
