"""The four Fiji commands in a real ImageJ2 (``../shared/imagej2``): script service, macro, ``--run``.

Every scenario starts a fresh JVM in a subprocess (tests/imagej2_runtime.py) on a writable copy
of the shared Fiji.app with the commands installed by ``emseg fiji install``, and the SciJava
preferences in a throwaway folder. One tiny model, trained through the script service on a
8 x 128 x 128 crop of vnc_sstem, is shared by the scenarios that predict.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tifffile
from imagej2_fixtures import (  # noqa: F401 - fixtures
    IMAGEJ2_MARKS,
    PRED_MASK,
    TINY,
    crop,
    f1,
    ij2_fiji,
    tiny_args,
)
from imagej2_runtime import run_driver

pytestmark = IMAGEJ2_MARKS


# -- one JVM: the script service and macros, headless ---------------------------------------------

PRINTING_COMMAND = """#@output String status
import sys, warnings
from fiji_emseg.bridge.commands import run_command

def work():
    print("package code printing inside a Fiji command")
    sys.stdout.flush()
    sys.stderr.write("and writing to stderr\\n")
    sys.stderr.flush()
    warnings.warn("a plain warning")
    from tqdm import tqdm
    for _ in tqdm(range(3), file=sys.stdout):
        pass
    return {"status": "ok: printed"}

status = run_command("Printing probe", work, {})["status"]
"""

UNPROTECTED = """#@output String status
import sys
print("no safety net")
sys.stdout.flush()
status = "ok: reached the end"
"""


@pytest.fixture(scope="session")
def headless_run(ij2_fiji: tuple[Path, str], crop: dict[str, Path],  # noqa: F811 - fixture
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app, _ = ij2_fiji
    work = tmp_path_factory.mktemp("headless")
    model, pred, evals, objects = work / "model", work / "pred", work / "eval", work / "objects"
    macro_eval, macro_objects, macro_model = work / "macro_eval", work / "macro_objects", work / "macro_model"
    marker = work / "after_failure.txt"
    image, mito, bad = str(crop["image"]), str(crop["mito"]), str(crop["bad"])
    open_windows = (f"setBatchMode(true); open('{image}'); rename('stack'); open('{mito}'); rename('mito mask'); "
                    "selectImage('stack'); ")
    steps = [
        {"kind": "script", "name": "Train_EM_Model.py", "inputs": {
            **TINY, "image_file": image, "mask_files": mito, "model_folder": str(model), "validation_slices": "7-8"}},
        {"kind": "script", "name": "Predict_EM_Model.py", "inputs": {
            "image_file": image, "model_folder": str(model), "output_folder": str(pred), "use_gpu": False}},
        {"kind": "script", "name": "Evaluate_EM_Segmentation.py", "inputs": {
            "reference_files": mito, "prediction_files": str(pred / PRED_MASK), "classes": "mito",
            "output_folder": str(evals)}},
        {"kind": "script", "name": "Measure_EM_Objects.py", "inputs": {
            "mask_files": str(pred), "output_folder": str(objects), "components": "3d"}},
        # bad inputs: each must come back as status "error: ..." with one ERROR line in the Log
        {"kind": "script", "name": "Train_EM_Model.py", "inputs": {
            **TINY, "image_file": image, "mask_files": bad, "model_folder": str(work / "never")}},
        {"kind": "script", "name": "Evaluate_EM_Segmentation.py", "inputs": {
            "reference": "no such window", "prediction": "no such window either"}},
        {"kind": "script", "name": "Predict_EM_Model.py", "inputs": {
            "image_file": image, "model_folder": str(work / "missing model"), "output_folder": str(work / "p2")}},
        # stdout/stderr are None writers inside the real runner
        {"kind": "script_text", "name": "printing_probe.py", "code": PRINTING_COMMAND},
        {"kind": "script_text", "name": "unprotected_probe.py", "code": UNPROTECTED},
        # an ImageJ macro: images by window title in batch mode, the README's macro lines
        {"kind": "macro", "code": open_windows
            + f"run('Predict EM Model', 'image=stack model_folder=[{model}] use_gpu=false'); "
            + "return '' + isOpen('stack pred mito') + '|' + nImages;"},
        {"kind": "macro", "code": open_windows
            + f"run('Predict EM Model', 'image=stack model_folder=[{model}] use_gpu=false'); "
            + f"run('Evaluate EM Segmentation', 'reference=[mito mask] prediction=[stack pred mito] "
              f"output_folder=[{macro_eval}]'); "
            + f"run('Measure EM Objects', 'masks=[stack pred mito] output_folder=[{macro_objects}]'); "
            + "return 'done';"},
        {"kind": "macro", "code": open_windows
            + f"run('Train EM Model', 'image=stack masks=[mito mask] model_folder=[{macro_model}] epochs=1 steps=2 "
              "batch_size=2 patch_size=64 depth=2 filters=4 seed=2 use_gpu=false'); return 'trained';"},
        {"kind": "macro", "code": "setBatchMode(true); "
            + "run('Evaluate EM Segmentation', 'reference=[no such window] prediction=[nor this]'); "
            + f"File.saveString('the macro went on', '{marker}'); return 'went on';"},
        {"kind": "script", "name": "Evaluate_EM_Segmentation.py", "inputs": {
            "reference_files": mito, "prediction_files": str(crop["shifted"]), "output_folder": str(work / "shift")}},
        # a misspelt image=[title]: SciJava hands the command an empty ImagePlus, not an error
        {"kind": "macro", "code": open_windows
            + f"run('Predict EM Model', 'image=[stak] model_folder=[{model}] use_gpu=false'); return 'went on';"},
        {"kind": "macro", "code": open_windows
            + f"run('Train EM Model', 'image=[stak] masks=[mito mask] model_folder=[{work / 'misspelt'}] epochs=1 "
              "steps=2 batch_size=2 patch_size=64 depth=2 filters=4 use_gpu=false'); return 'went on';"},
    ]
    rc, results, texts = run_driver(app, work / "home", steps, work / "driver")
    return {"rc": rc, "results": results, "texts": texts, "work": work, "model": model, "pred": pred,
            "evals": evals, "objects": objects, "macro_eval": macro_eval, "macro_objects": macro_objects,
            "macro_model": macro_model, "marker": marker, "crop": crop}


def _outputs(run: dict[str, Any], i: int) -> dict[str, str]:
    result = run["results"][i]
    assert "exception" not in result, result
    return result["outputs"]


def test_script_service_runs_the_four_commands_on_a_real_crop(headless_run: dict[str, Any]) -> None:
    run = headless_run
    assert run["rc"] == 0, run["texts"][-1][-3000:]
    train = _outputs(run, 0)
    assert train["status"].startswith("ok: "), train
    assert Path(train["model_path"]) == run["model"] and (run["model"] / "model.onnx").is_file()
    assert "validation slices 7-8 (from 1)" in run["texts"][1]  # the user's own numbering in the Log

    predict = _outputs(run, 1)
    assert predict["status"].startswith("ok: predicted 1 stack"), predict
    masks = sorted(run["pred"].glob("*.tif"))
    assert len(masks) == 1 and "mito" in masks[0].name

    evaluate = _outputs(run, 2)
    assert evaluate["status"].startswith("ok: "), evaluate
    summary = pd.read_csv(run["evals"] / f"{masks[0].stem}_evaluation_summary.csv")
    expected = f1(tifffile.imread(masks[0]), tifffile.imread(run["crop"]["mito"]))
    assert summary.loc[0, "class"] == "mito"
    assert summary.loc[0, "f1"] == pytest.approx(expected, abs=1e-5)
    assert f"F1 {expected:.3f}" in evaluate["status"]

    measure = _outputs(run, 3)
    assert measure["status"].startswith("ok: "), measure
    table = pd.read_csv(next(run["objects"].glob("*_objects.csv")))
    assert (f"{len(table)} objects" if len(table) else "no object found") in measure["status"]
    assert not len(table) or table["z_min"].min() >= 1  # slices numbered from 1 in Fiji's tables

    # the same check on a prediction whose F1 is neither 0 nor 1
    shifted = _outputs(run, 13)
    assert shifted["status"].startswith("ok: "), shifted
    expected = f1(tifffile.imread(run["crop"]["shifted"]), tifffile.imread(run["crop"]["mito"]))
    assert 0.3 < expected < 0.95
    summary = pd.read_csv(next((run["work"] / "shift").glob("*_evaluation_summary.csv")))
    assert summary.loc[0, "f1"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize(("step", "needle"), [
    (4, "mask"),  # wrong-shape mask file
    (5, "no image window is called 'no such window'"),
    (6, "missing model"),
])
def test_bad_inputs_give_an_error_status_and_one_log_line(headless_run: dict[str, Any], step: int,
                                                         needle: str) -> None:
    outputs = _outputs(headless_run, step)
    assert outputs["status"].startswith("error: "), outputs
    assert needle in outputs["status"]
    assert "bug in fiji-emseg" not in outputs["status"]
    log = headless_run["texts"][step + 1]
    errors = [line for line in log.splitlines() if line.startswith("ERROR: ")]
    assert errors == [f"ERROR: {outputs['status'][len('error: '):]}"]
    assert "Traceback" not in log


def test_a_command_can_print_in_the_real_runner_which_has_no_output_writer(headless_run: dict[str, Any]) -> None:
    protected = _outputs(headless_run, 7)
    assert protected["status"] == "ok: printed"
    # the control: the same print outside a command dies in scyjava's writer, as the README says
    unprotected = headless_run["results"][8]
    assert unprotected["outputs"]["status"] is None
    assert "AttributeError" in headless_run["texts"][9]


def test_macros_run_the_commands_by_window_title_in_headless_batch_mode(headless_run: dict[str, Any]) -> None:
    run = headless_run
    assert run["results"][9].get("value") == "1|3", run["results"][9]  # the result window, by its title
    assert run["results"][10].get("value") == "done", run["texts"][11][-2000:]
    summary = pd.read_csv(run["macro_eval"] / "stack_evaluation_summary.csv")
    masks = sorted(run["pred"].glob("*.tif"))
    expected = f1(tifffile.imread(masks[0]), tifffile.imread(run["crop"]["mito"]))
    assert summary.loc[0, "f1"] == pytest.approx(expected, abs=1e-5)  # same model, same image: same masks
    assert (run["macro_objects"] / "stack_objects.csv").is_file()
    assert run["results"][11].get("value") == "trained"
    assert (run["macro_model"] / "config.json").is_file()


def test_a_failed_command_aborts_its_macro(headless_run: dict[str, Any]) -> None:
    run = headless_run
    assert run["results"][12].get("value") in (None, "[aborted]")  # IJ.runMacro's answer for an aborted macro
    assert not run["marker"].exists()  # the next macro line never ran
    assert "ERROR: no image window is called 'no such window'" in run["texts"][13]


@pytest.mark.parametrize("step", [14, 15])  # Predict, Train
def test_a_misspelt_image_title_in_a_macro_is_named_in_the_error(headless_run: dict[str, Any], step: int) -> None:
    assert headless_run["results"][step].get("value") in (None, "[aborted]"), headless_run["texts"][step + 1][-2000:]
    errors = [line for line in headless_run["texts"][step + 1].splitlines() if line.startswith("ERROR: ")]
    assert errors == ["ERROR: no image window is called 'stak'; open it, or check the title in the Window menu"], errors
    assert not (headless_run["work"] / "misspelt").exists()


# -- headless --run: one fresh process each, exit code read by the test -------------------------------

def test_headless_run_chains_the_four_commands_and_exits_0(ij2_fiji: tuple[Path, str], crop: dict[str, Path],  # noqa: F811 - fixture
                                                           tmp_path: Path) -> None:
    app, _ = ij2_fiji
    model, pred, evals, objects = (tmp_path / n for n in ("model", "pred", "eval", "objects"))
    steps = [
        {"kind": "run", "name": "Train_EM_Model.py",
         "args": f"image_file='{crop['image']}',mask_files='{crop['mito']}',model_folder='{model}',{tiny_args()}"},
        {"kind": "run", "name": "Predict_EM_Model.py",
         "args": f"image_file='{crop['image']}',model_folder='{model}',output_folder='{pred}',use_gpu=false"},
        {"kind": "run", "name": "Evaluate_EM_Segmentation.py",
         "args": f"reference_files='{crop['mito']}',prediction_files='{pred / PRED_MASK}',classes='mito',"
                 f"output_folder='{evals}'"},
        {"kind": "run", "name": "Measure_EM_Objects.py", "args": f"mask_files='{pred}',output_folder='{objects}'"},
    ]
    rc, results, texts = run_driver(app, tmp_path / "home", steps, tmp_path / "driver")
    assert rc == 0, texts[-1][-3000:]
    assert len(results) == 4 and all("exception" not in r for r in results)
    assert (model / "model.onnx").is_file()
    mask = next(pred.glob("*.tif"))
    summary = pd.read_csv(next(evals.glob("*_evaluation_summary.csv")))
    assert summary.loc[0, "f1"] == pytest.approx(f1(tifffile.imread(mask), tifffile.imread(crop["mito"])), abs=1e-5)
    assert next(objects.glob("*_objects.csv")).is_file()
    assert not any(line.startswith("ERROR") for t in texts for line in t.splitlines())


@pytest.mark.parametrize("case", ["wrong-shape mask", "unknown window title", "missing model folder"])
def test_a_failed_headless_run_exits_non_zero_with_the_error_in_the_log(ij2_fiji: tuple[Path, str],  # noqa: F811 - fixture
                                                                       crop: dict[str, Path], tmp_path: Path,  # noqa: F811 - fixture
                                                                       case: str) -> None:
    app, _ = ij2_fiji
    name, args, needle = {
        "wrong-shape mask": ("Train_EM_Model.py", (f"image_file='{crop['image']}',mask_files='{crop['bad']}',"
                             f"model_folder='{tmp_path / 'm'}',{tiny_args()}"), "mask"),
        "unknown window title": ("Evaluate_EM_Segmentation.py", "reference='no such window',prediction='nor this'",
                                 "no image window is called 'no such window'"),
        "missing model folder": ("Predict_EM_Model.py", (f"image_file='{crop['image']}',model_folder="
                                 f"'{tmp_path / 'nothing here'}',output_folder='{tmp_path / 'out'}'"),
                                 "does not exist"),
    }[case]
    rc, results, texts = run_driver(app, tmp_path / "home", [{"kind": "run", "name": name, "args": args}],
                                    tmp_path / "driver")
    assert rc == 1, texts[-1][-3000:]
    assert len(results) <= 1  # the failure ended the process in (or right after) the step
    errors = [line for line in texts[1].splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1 and needle in errors[0], texts[1][-2000:]
    assert "bug in fiji-emseg" not in errors[0]
    assert not (tmp_path / "m").exists() and not (tmp_path / "out").exists()  # nothing half-written


# -- remembered inputs ---------------------------------------------------------------------------

REMEMBERING_PROBE = """#@ String (value="default") remembered_probe
#@output String status
status = "got " + str(remembered_probe)
"""


def test_no_remembered_input_leaks_between_commands_or_runs(ij2_fiji: tuple[Path, str], crop: dict[str, Path],  # noqa: F811 - fixture
                                                            tmp_path: Path) -> None:
    app, _ = ij2_fiji
    home = tmp_path / "home"  # the same preferences for both JVM starts, as for one user
    probe = app / "scripts" / "Plugins" / "Remembering_Probe.py"
    probe.write_text(REMEMBERING_PROBE)
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(crop["mito"], pred / "mito.tif")
    first = [
        {"kind": "run", "name": "Evaluate_EM_Segmentation.py",
         "args": f"reference_files='{crop['mito']}',prediction_files='{pred / 'mito.tif'}',annotated_slices='7-8',"
                 f"classes='from evaluate',output_folder='{tmp_path / 'eval'}'"},
        {"kind": "script", "name": "../Remembering_Probe.py", "inputs": {"remembered_probe": "typed earlier"}},
    ]
    rc, results, texts = run_driver(app, home, first, tmp_path / "first")
    assert rc == 0, texts[-1][-3000:]
    model = tmp_path / "model"
    second = [
        {"kind": "run", "name": "Train_EM_Model.py",
         "args": f"image_file='{crop['image']}',mask_files='{crop['mito']}',model_folder='{model}',{tiny_args()}"},
        {"kind": "script", "name": "../Remembering_Probe.py", "inputs": {}},
    ]
    rc, results, texts = run_driver(app, home, second, tmp_path / "second")
    assert rc == 0, texts[-1][-3000:]
    # the control: SciJava does remember a script input across JVM starts in this runtime
    assert results[1]["outputs"]["status"] == "got typed earlier"
    # ... but Train did not take Evaluate's annotated_slices or classes
    saved = json.loads((model / "config.json").read_text())
    assert saved["training"]["fiji_inputs"]["annotated_slices"] == ""
    assert saved["model"]["classes"] == ["mito"]
    prefs = "".join(p.read_text() for p in (home / "prefs").rglob("prefs.xml"))
    assert "remembered_probe" in prefs
    for name in ("annotated_slices", "classes", "output_folder", "model_folder", "threshold", "overwrite"):
        assert f'key="{name}"' not in prefs, name
