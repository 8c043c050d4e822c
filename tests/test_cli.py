"""The emseg command line: help, the main job, training options, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from emseg_testdata import blob_volume

from fiji_emseg.cli.main import SUBCOMMANDS, build_parser, main
from fiji_emseg.engine.data.volume_io import Calibration, read_volume, write_volume


def test_help_lists_and_documents_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in ("demo", "train", "predict", "export", "evaluate", "measure", "convert", "info", "fiji"):
        assert name in text
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == set(SUBCOMMANDS)  # every subcommand module exists and registers
    for name in sub.choices:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert len(capsys.readouterr().out) > 200


def test_entry_point_is_installed() -> None:
    out = subprocess.run(["emseg", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("fiji-emseg ")


@pytest.fixture()
def stack(tmp_path: Path) -> Path:
    image, masks = blob_volume((8, 96, 96), classes=2)
    cal = Calibration((0.05, 0.005, 0.005), "micron")
    write_volume(tmp_path / "img.tif", image, cal)
    write_volume(tmp_path / "bright.tif", masks[0] * 255, cal)
    write_volume(tmp_path / "dark.tif", masks[1] * 255, cal)
    return tmp_path


TINY_ARGS = ["--depth", "2", "--filters", "4", "--epochs", "2", "--steps", "3", "--batch-size", "2",
             "--patch-size", "32", "32", "--val-steps", "1", "--bn-recalibration", "1", "--seed", "1", "-q"]


def test_deep_supervision_reaches_the_trainer_and_a_too_shallow_net_is_refused_before_anything_is_written(
        stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = stack / "ds_model"
    code = main(["train", str(model), "--image", str(stack / "img.tif"), "--masks", str(stack / "bright.tif"),
                 "--deep-supervision", "1", *TINY_ARGS])  # depth 2: no level below full resolution
    assert code != 0
    assert "use depth 3 or more, or deep supervision 0" in capsys.readouterr().err
    assert not model.exists()


def test_train_predict_evaluate_from_the_command_line(stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = stack / "model"
    code = main(["train", str(model), "--image", str(stack / "img.tif"), "--masks", str(stack / "bright.tif"),
                 str(stack / "dark.tif"), "--val-slices", "6-7", "--output", "softmax", "--loss", "dice_ce",
                 "--schedule", "plateau", "--optimizer", "adamw", "--weight-decay", "0.01", "--label-focus", "0.5",
                 "--no-rot90", "--normalization", "minmax", "--early-stopping", "5", "--ema", "0.99", *TINY_ARGS])
    assert code == 0
    out = capsys.readouterr().out
    assert "training completed" in out and "exported" in out
    info = json.loads((model / "config.json").read_text())
    assert info["model"]["classes"] == ["bright", "dark"] and info["model"]["output"] == "softmax"
    assert info["normalization"]["method"] == "minmax"
    cfg = info["training"]["config"]
    assert (cfg["loss"], cfg["lr_schedule"], cfg["optimizer"], cfg["label_focus"]) == ("dice_ce", "plateau", "adamw", 0.5)
    assert cfg["ema_decay"] == 0.99
    assert cfg["augment"]["rot90"] is False and cfg["val_slices"] == "6-7"
    assert main(["info", str(model)]) == 0 and "bright, dark (softmax output)" in capsys.readouterr().out
    assert main(["predict", str(model), str(stack / "img.tif"), "-o", str(stack / "out"), "-q", "--outputs", "labels"]) == 0
    labels, cal = read_volume(stack / "out" / "img_labels.tif")
    assert labels.shape == (8, 96, 96) and set(np.unique(labels)) <= {0, 1, 2} and cal.unit == "micron"


def test_resume_from_the_command_line(stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--image", str(stack / "img.tif"), "--masks", str(stack / "bright.tif"), "--val-slices", "6-7"]
    assert main(["train", str(stack / "m"), *args, *TINY_ARGS, "--no-export"]) == 0
    assert main(["train", str(stack / "m"), *args, *TINY_ARGS]) == 2
    assert "already holds a model" in capsys.readouterr().err
    assert main(["train", str(stack / "m"), "--resume", "--epochs", "3", *args, "-q", "--no-export"]) == 0
    assert "after 3 epochs" in capsys.readouterr().out


@pytest.mark.parametrize("problem, expected", [
    ("shape", "does not match image shape"),
    ("binary", "mask is not binary (values found: 0, 7, 200"),
    ("missing", "does not exist"),
    ("counts", "1 --image but 2 --masks"),
])
def test_user_errors_are_one_line_and_exit_2(stack: Path, capsys: pytest.CaptureFixture[str], problem: str,
                                             expected: str) -> None:
    image = str(stack / "img.tif")
    masks = [str(stack / "bright.tif")]
    extra: list[str] = []
    if problem == "shape":
        write_volume(stack / "small.tif", np.zeros((8, 50, 96), np.uint8))
        masks = [str(stack / "small.tif")]
    elif problem == "binary":
        bad = np.zeros((8, 96, 96), np.uint8)
        bad[0, :2, :2] = (7, 200, 0, 7)[:2]
        bad[1, 0, 0] = 200
        bad[2, 0, 0] = 7
        write_volume(stack / "bad.tif", bad)
        masks = [str(stack / "bad.tif")]
    elif problem == "missing":
        image = str(stack / "nope.tif")
    elif problem == "counts":
        extra = ["--masks", str(stack / "dark.tif")]
    code = main(["train", str(stack / "m"), "--image", image, "--masks", *masks, *extra, *TINY_ARGS])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("emseg train: error:") and expected in err, err
    assert not (stack / "m").exists()  # nothing half-written


def test_demo_quick(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "fiji_emseg.cli.main", "demo", str(tmp_path / "demo"), "--quick", "-q"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "per-class F1: mitochondria" in out.stdout
    demo = tmp_path / "demo"
    assert (demo / "overlay.png").read_bytes()[:4] == b"\x89PNG"
    for rel in ("data/train/image.tif", "data/test/membrane.tif", "model/model.onnx", "model/training_curves.png",
                "predictions/test_mitochondria_mask.tif", "evaluation/evaluation_summary.csv"):
        assert (demo / rel).exists(), rel
    again = subprocess.run([sys.executable, "-m", "fiji_emseg.cli.main", "demo", str(demo), "--quick", "-q"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already exists" in again.stderr
