"""Package EM Model, Predict EM Model on packages and OME-Zarr volumes, and the planned Train EM
Model, in a real ImageJ2 (``../shared/imagej2``): script service, macros, headless.

The model is trained here (a few steps of a tiny network on an 8 x 128 x 128 crop of vnc_sstem);
what is asserted is what the Fiji commands add: the package the command writes passes the real
bioimage.io validator and predicts what the model folder predicts; an OME-Zarr volume given to
Predict is written block-wise as OME-Zarr equal to ``Predictor.predict``; a virtual stack too large
for Fiji's memory is refused with the way out instead of running out of memory; Train plans itself
within the time budget the dialog gives.
"""

from __future__ import annotations

import json
import re
import shlex
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from imagej2_fixtures import IMAGEJ2_MARKS, TINY, crop, ij2_fiji  # noqa: F401 - fixtures
from imagej2_runtime import VNC, run_driver

from fiji_emseg.engine.data.ome_zarr import validate_ome_zarr, write_ome_zarr
from fiji_emseg.engine.data.volume_io import Calibration, _wrap_array, open_volume
from fiji_emseg.engine.inference.predictor import PredictConfig, Predictor
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.training.train_config import TrainConfig
from fiji_emseg.engine.training.trainer import train_model
from fiji_emseg.export.onnx_export import export_onnx

pytestmark = IMAGEJ2_MARKS

MASK = "image_mito_mask.tif"
FP32 = PredictConfig(backend="onnxruntime", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def model(crop: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811 - fixture
    from fiji_emseg.engine.data.sample import load_sample

    folder = tmp_path_factory.mktemp("pkgmodel") / "mito model"
    sample = load_sample(crop["image"], [crop["mito"]], ["mito"])
    train_model([sample], folder, model_config=ModelConfig(classes=("mito",), depth=2, filters=4),
                config=TrainConfig(epochs=1, steps_per_epoch=4, batch_size=2, patch_size=(64, 64), seed=0,
                                   val_steps=0, bn_recalibration_batches=1, device="cpu"))
    export_onnx(folder)
    return folder


@pytest.fixture(scope="module")
def session(ij2_fiji: tuple[Path, str], crop: dict[str, Path], model: Path,  # noqa: F811 - fixture
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app, _ = ij2_fiji
    work = tmp_path_factory.mktemp("pkgsession")
    image = str(crop["image"])
    volume = tifffile.imread(crop["image"])
    # 8 x 300 x 300: wider than the output's 256 x 256 chunks, so the store gets a second pyramid level
    big = tifffile.imread(VNC / "image.tif", key=range(8))[:, 500:800, 300:600]
    store = write_ome_zarr(_wrap_array(big, "crop", Calibration((0.045, 0.0046, 0.0046), "micron")),
                           work / "vol.ome.zarr", chunks=(4, 64, 64), pyramid=False)
    pkg, pkg2 = work / "mito.zip", work / "macro" / "mito.zip"
    planned, default_model = work / "planned model", work / "default model"
    steps = [
        {"kind": "script", "name": "Package_EM_Model.py", "inputs": {  # 0
            "model_folder": str(model), "image_file": image, "package_file": str(pkg),
            "authors": "A. Person, B. Person"}},
        {"kind": "script", "name": "Predict_EM_Model.py", "inputs": {  # 1: the package, not the folder
            "model_package": str(pkg), "image_file": image, "output_folder": str(work / "pred_pkg"),
            "use_gpu": False}},
        {"kind": "script", "name": "Predict_EM_Model.py", "inputs": {  # 2: the folder
            "model_folder": str(model), "image_file": image, "output_folder": str(work / "pred_folder"),
            "use_gpu": False}},
        {"kind": "macro", "code": f"setBatchMode(true); open('{image}'); rename('stack'); "  # 3
            f"run('Package EM Model', 'model_folder=[{model}] image=stack package_file=[{pkg2}] "
            "authors=[Macro User] masks=true weights=onnx crop_xy=64'); return 'packaged';"},
        {"kind": "script", "name": "Package_EM_Model.py", "inputs": {  # 4: exists, no overwrite
            "model_folder": str(model), "image_file": image, "package_file": str(pkg)}},
        {"kind": "script", "name": "Package_EM_Model.py", "inputs": {  # 5: not a .zip
            "model_folder": str(model), "image_file": image, "package_file": str(work / "mito.txt")}},
        {"kind": "script", "name": "Predict_EM_Model.py", "inputs": {  # 6: OME-Zarr in, OME-Zarr out
            "model_folder": str(model), "image_file": str(store), "output_folder": str(work / "zarr_out"),
            "use_gpu": False}},
        {"kind": "script", "name": "Predict_EM_Model.py", "inputs": {  # 7: OME-Zarr without an output folder
            "model_folder": str(model), "image_file": str(store), "use_gpu": False}},
        {"kind": "script", "name": "Predict_EM_Model.py", "inputs": {  # 8: a folder and a package
            "model_folder": str(model), "model_package": str(pkg), "image_file": image,
            "output_folder": str(work / "never"), "use_gpu": False}},
        {"kind": "script", "name": "Train_EM_Model.py", "inputs": {  # 9: planned within 0.1 min
            "image_file": image, "mask_files": str(crop["mito"]), "model_folder": str(planned),
            "time_budget": 0.1, "batch_size": 2, "patch_size": 64, "depth": 2, "filters": 4, "seed": 1,
            "use_gpu": False}},
        {"kind": "script", "name": "Train_EM_Model.py", "inputs": {  # 10: plan none, zeros = engine defaults
            "image_file": image, "mask_files": str(crop["mito"]), "model_folder": str(default_model),
            "plan": "none", "epochs": 1, "steps": 1, "batch_size": 1, "patch_size": 64, "seed": 1,
            "use_gpu": False}},
        {"kind": "script", "name": "Package_EM_Model.py", "inputs": {  # 11: a weight format we do not write
            "model_folder": str(model), "image_file": image, "package_file": str(work / "tf.zip"),
            "weights": "onnx, tensorflow_saved_model_bundle"}},
    ]
    rc, results, texts = run_driver(app, work / "home", steps, work / "driver", timeout=600)
    return {"rc": rc, "results": results, "texts": texts, "work": work, "pkg": pkg, "pkg2": pkg2,
            "store": store, "volume": volume, "planned": planned, "default_model": default_model}


def _outputs(run: dict[str, Any], i: int) -> dict[str, str]:
    assert run["rc"] == 0, run["texts"][-1][-3000:]
    result = run["results"][i]
    assert "exception" not in result, result
    return result["outputs"]


def _one_error_line(run: dict[str, Any], i: int, needle: str) -> str:
    status = _outputs(run, i)["status"]
    assert status.startswith("error: ") and needle in status, status
    errors = [line for line in run["texts"][i + 1].splitlines() if line.startswith("ERROR: ")]
    assert errors == [f"ERROR: {status[len('error: '):]}"]
    assert "Traceback" not in run["texts"][i + 1] and "bug in fiji-emseg" not in status
    return status


def test_package_command_writes_a_package_the_bioimageio_validator_passes(session: dict[str, Any]) -> None:
    from bioimageio.core import test_model
    from bioimageio.spec import load_description

    out = _outputs(session, 0)
    assert out["status"].startswith("ok: wrote bioimage.io package"), out
    assert Path(out["package_path"]) == session["pkg"] and session["pkg"].is_file()
    summary = test_model(session["pkg"])  # the real validator: loads every weight format, reproduces the tensors
    assert summary.status == "passed", [d.name for d in summary.details if d.status != "passed"]
    descr = load_description(session["pkg"], perform_io_checks=False)
    assert [a.name for a in descr.authors] == ["A. Person", "B. Person"]
    assert str(descr.license) == "CC-BY-4.0"
    # the macro form, from an image window, with masks as postprocessing
    assert session["results"][3].get("value") == "packaged", session["texts"][4][-2000:]
    macro_descr = load_description(session["pkg2"], perform_io_checks=False)
    assert [a.name for a in macro_descr.authors] == ["Macro User"]
    assert "binarize" in json.dumps(macro_descr.model_dump(mode="json")["outputs"][0]["postprocessing"])
    # the macro's weights=onnx crop_xy=64: ONNX weights only, a 64 x 64 test input (the dialog's
    # default, all three formats and 256 px, is what step 0 wrote: the crop's whole 128 x 128)
    assert macro_descr.weights.onnx is not None
    assert macro_descr.weights.torchscript is None and macro_descr.weights.pytorch_state_dict is None
    assert descr.weights.torchscript is not None and descr.weights.pytorch_state_dict is not None
    for pkg, side in ((session["pkg2"], 64), (session["pkg"], 128)):
        with zipfile.ZipFile(pkg) as z:
            test_input = np.load(z.open("test_input.npy"))
        assert test_input.shape[-2:] == (side, side), (pkg, test_input.shape)
    assert session["pkg2"].stat().st_size < session["pkg"].stat().st_size


def test_predict_runs_a_package_like_the_model_folder(session: dict[str, Any], model: Path) -> None:
    assert _outputs(session, 1)["status"].startswith("ok: predicted 1 stack"), _outputs(session, 1)
    assert _outputs(session, 2)["status"].startswith("ok: predicted 1 stack")
    from_pkg = tifffile.imread(session["work"] / "pred_pkg" / MASK)
    from_folder = tifffile.imread(session["work"] / "pred_folder" / MASK)
    with Predictor(session["pkg"], PredictConfig(device="cpu")) as p:  # what the command ran, in this process
        expected = p.predict(session["volume"]).masks.values[..., 0]
        backend = p.backend.description
    np.testing.assert_array_equal(from_pkg > 0, expected > 0)
    assert backend.split(" ")[0] in session["texts"][2]  # the Log names the backend it chose for the package
    # the package's ONNX weights in fp32 agree but for boundary voxels (the CPU default may be bf16)
    with Predictor(session["pkg"], FP32) as p:
        onnx_fp32 = p.predict(session["volume"]).masks.values[..., 0]
    assert np.mean((from_pkg > 0) != (onnx_fp32 > 0)) < 0.01
    assert np.mean((from_pkg > 0) != (from_folder > 0)) < 0.01
    assert "package" in session["texts"][2] or str(session["pkg"]) in session["texts"][2]


def test_predict_writes_an_ome_zarr_volume_block_wise_equal_to_predict(session: dict[str, Any], model: Path) -> None:
    out = _outputs(session, 6)
    target = session["work"] / "zarr_out" / "vol.ome.zarr"
    assert out["status"].startswith(f"ok: predicted 8×300×300 voxels into {target}"), out
    assert "computed 1 of 1 blocks, 2 pyramid levels" in out["status"]  # the default block holds it all
    assert validate_ome_zarr(target) == ["masks"]
    with open_volume(target / "masks") as vol:
        written = vol[:]
        assert vol.calibration.voxel_size == pytest.approx((0.045, 0.0046, 0.0046))
    with Predictor(model, PredictConfig(device="cpu")) as p:
        expected = p.predict(session["store"]).masks.values[..., 0]
    np.testing.assert_array_equal(written > 0, expected > 0)


@pytest.mark.parametrize(("step", "needle"), [
    (4, "already exists; choose another package file"),
    (5, "a bioimage.io package is a .zip file"),
    (7, "output_folder is empty; an OME-Zarr/N5 volume"),
    (8, "give one"),
    (11, "unknown weight formats ['tensorflow_saved_model_bundle']; choose from onnx, torchscript, pytorch_state_dict"),
])
def test_bad_package_and_volume_inputs_give_one_error_line_and_write_nothing(session: dict[str, Any], step: int,
                                                                            needle: str) -> None:
    before = session["pkg"].stat().st_mtime_ns
    _one_error_line(session, step, needle)
    assert session["pkg"].stat().st_mtime_ns == before  # the existing package was left alone
    assert not (session["work"] / "mito.txt").exists() and not (session["work"] / "never").exists()
    assert not (session["work"] / "tf.zip").exists()


def test_train_plans_itself_within_the_time_budget_and_takes_given_settings(session: dict[str, Any]) -> None:
    out = _outputs(session, 9)
    assert out["status"].startswith("ok: "), out
    saved = json.loads((session["planned"] / "config.json").read_text())
    plan = saved["training"]["plan"]
    assert plan["budget_minutes"] == pytest.approx(0.1)
    assert set(plan["overridden"]) == {"batch_size", "patch_size", "depth", "filters"}
    assert (saved["model"]["depth"], saved["model"]["filters"]) == (2, 4)  # given: they override the plan
    assert plan["train"]["time_limit_minutes"] == pytest.approx(0.1)  # and training stops at the budget
    fit = re.search(r"(\d+) steps fit in 0.1 min", session["texts"][10])  # the plan's reasons are in the Log
    assert fit, session["texts"][10][-3000:]
    assert int(fit.group(1)) * plan["seconds_per_step"] <= 0.1 * 60 * 0.9 * 1.01  # budget less 10 % overhead
    assert saved["training"]["fiji_inputs"]["plan"] == "auto"
    # plan none: 0 stands for the engine's defaults (DeepSCEM's 32-filter, depth-5 network)
    out = _outputs(session, 10)
    assert out["status"].startswith("ok: "), out
    saved = json.loads((session["default_model"] / "config.json").read_text())
    defaults = ModelConfig()
    assert (saved["model"]["depth"], saved["model"]["filters"]) == (defaults.depth, defaults.filters)
    assert "plan" not in saved["training"] or saved["training"]["plan"] is None
    assert "expected training time on this machine" in session["texts"][11]


def test_a_virtual_stack_too_large_for_fijis_memory_is_refused_with_the_way_out(
        ij2_fiji: tuple[Path, str], model: Path, tmp_path: Path) -> None:  # noqa: F811 - fixture
    app, _ = ij2_fiji
    big = tmp_path / "big stack.tif"
    with tifffile.TiffWriter(big) as tif:  # 420 MB: more than the 320 MB Java heap this Fiji gets
        for z in range(100):
            tif.write(np.full((2048, 2048), z, dtype=np.uint8), contiguous=True)
    steps = [
        {"kind": "macro", "code": f"setBatchMode(true); run('TIFF Virtual Stack...', 'open=[{big}]'); "
            f"run('Predict EM Model', 'image=[big stack.tif] model_folder=[{model}] use_gpu=false'); "
            "return 'went on';"},
        {"kind": "windows"},
    ]
    rc, results, texts = run_driver(app, tmp_path / "home", steps, tmp_path / "driver", max_heap="320m")
    assert rc == 0, texts[-1][-3000:]
    assert results[0].get("value") in (None, "[aborted]"), texts[1][-2000:]  # the macro stopped there
    errors = [line for line in texts[1].splitlines() if line.startswith("ERROR: ")]
    assert len(errors) == 1, texts[1][-3000:]
    assert "too large to predict into windows" in errors[0] and "Java memory" in errors[0]
    assert f"image_file [{big}]" in errors[0] and f"emseg predict MODEL {shlex.quote(str(big))} -o OUT.ome.zarr" in errors[0]
    assert "OutOfMemory" not in texts[1]
    assert not any("pred" in t for t in results[1]["images"])  # no half-made result window
