"""What a biologist sees: the commands in the real ImageJ2 GUI under Xvfb, with screenshots.

One interactive ImageJ2 (pyimagej ``mode="interactive"``) in a subprocess: the menu entries, the
Train EM Model input dialog, a macro that trains (live plot), predicts, evaluates and measures
by window title, a failing command's error dialog, and no extra SciJava output-table window.
The screenshots are saved under the test's temporary folder and their paths printed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile
from imagej2_fixtures import IMAGEJ2_MARKS, crop, f1  # noqa: F401 - crop is a fixture
from imagej2_runtime import prepare_fiji, run_driver

pytestmark = [*IMAGEJ2_MARKS, pytest.mark.gui,
              pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="no X display (run under xvfb-run)"),
              pytest.mark.skipif(shutil.which("import") is None, reason="no ImageMagick 'import' for screenshots")]

COMMANDS = ("Train EM Model", "Predict EM Model", "Evaluate EM Segmentation", "Measure EM Objects", "Package EM Model")


def _keys(**values: Any) -> str:
    """An ImageJ macro option string with every key given (a missing key opens the dialog in the GUI)."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        else:
            parts.append(f"{key}=[{value}]")
    return " ".join(parts)


@pytest.fixture(scope="module")
def gui_run(crop: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: F811 - fixture
    work = tmp_path_factory.mktemp("gui")
    app, _ = prepare_fiji(work)
    model, pred = work / "model", work / "pred"
    shots = {name: work / f"{name}.png" for name in ("train_dialog", "results", "error_dialog")}
    train = _keys(image="stack", masks="mito mask", image_file="", mask_files="", classes="mito", model_folder=model,
                  output="sigmoid", plan="auto", time_budget=30, epochs=2, steps=2, batch_size=2, patch_size=64, learning_rate=0.001,
                  validation_slices="7-8", annotated_slices="", depth=2, filters=4, seed=1, use_gpu=False,
                  overwrite=False)
    predict = _keys(image="stack", image_file="", model_folder=model, model_package="", output_folder=pred, threshold=0, min_size=0,
                    fill_holes=0, tta=False, show_probabilities=False, show_overlay=False, use_gpu=False,
                    overwrite=False)
    evaluate = _keys(reference="mito mask", prediction="stack pred mito", reference_files="", prediction_files="",
                     classes="", annotated_slices="", threshold=0, components="3d", output_folder="", overwrite=False)
    measure = _keys(masks="stack pred mito", mask_files="", classes="", threshold=0, components="3d", min_size=0,
                    output_folder="", overwrite=False)
    bad = _keys(reference="no such window", prediction="nor this", reference_files="", prediction_files="",
                classes="", annotated_slices="", threshold=0, components="3d", output_folder="", overwrite=False)
    steps = [
        {"kind": "menu", "text": "EM "},
        {"kind": "command_async", "name": "Train EM Model"},
        {"kind": "sleep", "s": 4},
        {"kind": "windows"},
        {"kind": "screenshot", "path": str(shots["train_dialog"])},
        {"kind": "close_dialog", "title": "Train EM Model"},
        {"kind": "sleep", "s": 1},
        # selectImage before each rename: when a window takes over 2 s to activate (a loaded machine),
        # ImageJ makes it the macro's "temporary" current image and keeps it so after the next open(),
        # and a bare rename() renames the wrong window (seen once in CI)
        {"kind": "macro", "code": f"open('{crop['image']}'); selectImage('{crop['image'].name}'); rename('stack'); "
            f"open('{crop['mito']}'); selectImage('{crop['mito'].name}'); rename('mito mask'); "
            f"run('Train EM Model', '{train}'); run('Predict EM Model', '{predict}'); "
            f"run('Evaluate EM Segmentation', '{evaluate}'); run('Measure EM Objects', '{measure}'); return 'done';"},
        {"kind": "sleep", "s": 3},
        {"kind": "windows"},
        {"kind": "table", "title": "stack evaluation"},
        {"kind": "table", "title": "stack objects"},
        {"kind": "screenshot", "path": str(shots["results"])},
        {"kind": "macro", "code": f"run('Evaluate EM Segmentation', '{bad}'); return 'went on';"},
        {"kind": "sleep", "s": 2},
        {"kind": "windows"},
        {"kind": "screenshot", "path": str(shots["error_dialog"])},
        {"kind": "close_dialog", "title": "Evaluate EM Segmentation"},
        {"kind": "log"},
    ]
    rc, results, texts = run_driver(app, work / "home", steps, work / "driver", mode="interactive")
    for name, path in shots.items():
        print(f"screenshot {name}: {path}")
    return {"rc": rc, "results": results, "texts": texts, "shots": shots, "pred": pred, "model": model,
            "crop": crop}


def _ok(run: dict[str, Any], i: int) -> dict[str, Any]:
    assert run["rc"] == 0, run["texts"][-1][-3000:]
    result = run["results"][i]
    assert "exception" not in result, result
    return result


def test_the_five_commands_are_under_plugins_em_segmentation(gui_run: dict[str, Any]) -> None:
    menu = _ok(gui_run, 0)
    for name in COMMANDS:
        file = name.replace(" ", "_") + ".py"
        assert menu["classes"][name] == f"script:Plugins/EM_Segmentation/{file}"


def test_train_dialog_opens_with_its_labels(gui_run: dict[str, Any]) -> None:
    windows = _ok(gui_run, 3)["showing"]
    assert any(w.endswith("|Train EM Model") and "Dialog" in w for w in windows), windows
    shot = gui_run["shots"]["train_dialog"]
    assert shot.stat().st_size > 10_000
    assert _ok(gui_run, 5)["closed"] == 1


def test_a_macro_run_shows_masks_tables_and_the_training_plot_and_no_status_table(gui_run: dict[str, Any]) -> None:
    assert _ok(gui_run, 7)["value"] == "done", (gui_run["results"][18], gui_run["results"][9])  # the Log, the windows
    windows = _ok(gui_run, 9)
    assert {"stack", "mito mask", "stack pred mito"} <= set(windows["images"])
    plots = [t for t in windows["images"] if t.startswith("Train EM Model: loss and validation F1")]
    assert plots == ["Train EM Model: loss and validation F1 (model)"], windows["images"]
    assert {"stack evaluation", "stack evaluation per slice", "stack objects", "Log"} <= set(windows["non_image"])
    # SciJava's Name/Value window for the #@output values is not opened (the status is in the Log)
    assert not [w for w in windows["showing"] if "SwingDisplayWindow" in w], windows["showing"]
    table = _ok(gui_run, 10)["table"]
    expected = f1(tifffile.imread(gui_run["pred"] / "stack_mito_mask.tif"), tifffile.imread(gui_run["crop"]["mito"]))
    assert table["class"] == ["mito"] and table["f1"][0] == pytest.approx(expected, abs=1e-4)
    objects = _ok(gui_run, 11)["table"]
    assert objects is not None and min(objects["z_min"] or [1]) >= 1
    assert gui_run["shots"]["results"].stat().st_size > 10_000
    log = _ok(gui_run, 18)["log"]
    assert "Train EM Model: epoch 2/2" in log and "validation slices 7-8 (from 1)" in log
    assert np.isfinite(pd.Series(table["iou"])).all()


def test_a_failed_command_shows_an_error_dialog_in_the_gui(gui_run: dict[str, Any]) -> None:
    assert _ok(gui_run, 13)["value"] in (None, "[aborted]")
    windows = _ok(gui_run, 15)["showing"]
    assert any(w.endswith("|Evaluate EM Segmentation") for w in windows), windows
    assert "ERROR: no image window is called 'no such window'" in _ok(gui_run, 18)["log"]
    assert _ok(gui_run, 17)["closed"] >= 1
