"""Every bad input is one line that names the fix (exit 2); no crash leaves debris or a wrong answer.

One test per class of failure that an external campaign of bad inputs found (issue 14). The
command line is called in-process (``main``) with real files and a tiny real model; the SIGKILL
tests run real ``emseg`` subprocesses and kill them.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from emseg_testdata import blob_volume, random_model_dir

from fiji_emseg.cli.main import main
from fiji_emseg.engine.data.files import describe_os_error
from fiji_emseg.engine.data.volume_io import read_volume, write_volume
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.errors import InputDataError

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(classes=("mito",), depth=2, filters=4)
TRAIN_TINY = ["--depth", "2", "--filters", "4", "--steps", "2", "--batch-size", "1", "--patch-size", "32", "32",
              "--val-steps", "1", "--bn-recalibration", "1", "--seed", "1", "--no-export", "-q"]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code: int, err: str, command: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith(f"emseg {command}: error:"), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def model2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_model_dir(tmp_path_factory.mktemp("m") / "m2d", TINY)


@pytest.fixture()
def stack(tmp_path: Path) -> Path:
    image, masks = blob_volume((4, 64, 64))
    write_volume(tmp_path / "img.tif", image)
    write_volume(tmp_path / "mito.tif", masks[0] * 255)
    return tmp_path


def _patch_tag(src: Path, dst: Path, code: int, value: int) -> None:
    """Overwrite one numeric tag of every page in place (what a damaged copy looks like)."""
    data = bytearray(src.read_bytes())
    with tifffile.TiffFile(src) as tif:
        for page in tif.pages:
            tag = page.tags[code]
            struct.pack_into({3: "<H", 4: "<I"}[tag.dtype], data, tag.valueoffset, value)
    dst.write_bytes(data)


# --------------------------------------------------------------------------- inputs that reached a traceback


def test_boolean_image_is_refused_by_train_and_predict(stack: Path, model2d: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    np.save(stack / "bool.npy", read_volume(stack / "img.tif")[0] > 120)
    code, _, err = run_cli(["train", str(stack / "m"), "--image", str(stack / "bool.npy"), "--masks",
                            str(stack / "mito.tif"), "--epochs", "1", *TRAIN_TINY], capsys)
    assert_one_line(code, err, "train", "binary (true/false)", "EM stack")
    assert not (stack / "m").exists()
    code, _, err = run_cli(["predict", str(model2d), str(stack / "bool.npy"), "-o", str(stack / "out"), "-q"], capsys)
    assert_one_line(code, err, "predict", "binary (true/false)")
    assert not list((stack / "out").glob("*")) if (stack / "out").exists() else True


@pytest.mark.parametrize("field, value, named", [
    ("training", True, "'training'"),
    ("model.classes", {"mito": 1}, "'model/classes'"),
    ("model.residual", "yes", "'model/residual'"),
    ("model.dims", True, "'model/dims'"),
    ("normalization.method", False, "'normalization/method'"),
    ("training.best_metrics", [1, 2], "'training/best_metrics'"),
    ("training.thresholds", {"mito": "high"}, "'training/thresholds/mito'"),
    ("receptive_field.radius", "wide", "'receptive_field/radius'"),
])
def test_config_json_with_wrong_types_is_one_line_for_info_and_predict(
        tmp_path: Path, stack: Path, capsys: pytest.CaptureFixture[str], field: str, value: object, named: str) -> None:
    model = random_model_dir(tmp_path / "bad", TINY)
    d = json.loads((model / "config.json").read_text())
    node = d
    *parents, last = field.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    (model / "config.json").write_text(json.dumps(d))
    code, _, err = run_cli(["info", str(model)], capsys)
    assert_one_line(code, err, "info", named, "config.json")
    code, _, err = run_cli(["predict", str(model), str(stack / "img.tif"), "-o", str(tmp_path / "out"), "-q"], capsys)
    assert_one_line(code, err, "predict", named)


# --------------------------------------------------------------------------- inputs accepted that should not be


@pytest.mark.parametrize("argv, option", [
    (["train", "M", "--epochs", "0"], "--epochs"),
    (["train", "M", "--steps", "0"], "--steps"),
    (["train", "M", "--batch-size", "-2"], "--batch-size"),
    (["train", "M", "--depth", "12"], "--depth"),
    (["train", "M", "--patch-size", "0", "64"], "--patch-size"),
    (["train", "M", "--lr", "0"], "--lr"),
    (["train", "M", "--val-steps", "-1"], "--val-steps"),
    (["predict", "M", "x.tif", "-o", "o", "--tile", "0"], "--tile"),
    (["predict", "M", "x.tif", "-o", "o", "--threads", "0"], "--threads"),
    (["predict", "M", "x.tif", "-o", "o", "--min-size", "-5"], "--min-size"),
    (["measure", "x.tif", "--min-voxels", "-1"], "--min-voxels"),
])
def test_integer_options_have_real_ranges(argv: list[str], option: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(argv, capsys)
    assert_one_line(code, err, argv[0], f"argument {option}", "out of range", "give")


def test_nan_image_is_refused_by_predict_as_by_train(stack: Path, model2d: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    image = read_volume(stack / "img.tif")[0].astype(np.float32)
    image[2, 10, 10] = np.nan
    image[3, 0, 0] = np.inf
    np.save(stack / "nan.npy", image)
    code, _, err_train = run_cli(["train", str(stack / "m"), "--image", str(stack / "nan.npy"), "--masks",
                                  str(stack / "mito.tif"), "--epochs", "1", *TRAIN_TINY], capsys)
    assert_one_line(code, err_train, "train", "NaN or infinite", "Remove NaNs")
    code, _, err = run_cli(["predict", str(model2d), str(stack / "nan.npy"), "-o", str(stack / "out"), "-q"], capsys)
    assert_one_line(code, err, "predict", "NaN or infinite", "first in slice 2", "Remove NaNs")
    assert not [p for p in (stack / "out").iterdir()]  # no mask of the poisoned image, no temporary left


def test_3d_model_on_a_single_slice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = random_model_dir(tmp_path / "m3d", ModelConfig(classes=("mito",), dims=3, depth=2, filters=4))
    np.save(tmp_path / "one.npy", blob_volume((1, 64, 64))[0])
    code, _, err = run_cli(["predict", str(model), str(tmp_path / "one.npy"), "-o", str(tmp_path / "out"), "-q"], capsys)
    assert_one_line(code, err, "predict", "single slice", "3D model", "2D model")


# --------------------------------------------------------------------------- silently wrong results


@pytest.mark.parametrize("tag, value, needle", [
    (257, 39, "39×64 pixels"),  # ImageLength damaged: would read 39 of 64 rows
    (256, 0, "damaged"),  # ImageWidth 0
])
def test_tiff_with_damaged_tags_is_refused_not_predicted(stack: Path, model2d: Path, capsys: pytest.CaptureFixture[str],
                                                         tag: int, value: int, needle: str) -> None:
    _patch_tag(stack / "img.tif", stack / "bad.tif", tag, value)
    with pytest.raises(InputDataError, match=needle):
        read_volume(stack / "bad.tif")
    code, _, err = run_cli(["predict", str(model2d), str(stack / "bad.tif"), "-o", str(stack / "out"), "-q"], capsys)
    assert_one_line(code, err, "predict", "damaged", "re-save it from Fiji")
    assert not (stack / "out").exists() or not list((stack / "out").iterdir())


def test_tiff_whose_imagej_header_undercounts_its_pages_is_refused(stack: Path) -> None:
    data = (stack / "img.tif").read_bytes().replace(b"images=4", b"images=2").replace(b"slices=4", b"slices=2")
    (stack / "short_header.tif").write_bytes(data)
    with pytest.raises(InputDataError, match="describes 2 image"):
        read_volume(stack / "short_header.tif")


# --------------------------------------------------------------------------- errors that were not one clear line


def test_library_log_lines_are_held_back_unless_verbose(stack: Path, model2d: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = (stack / "img.tif").read_bytes()
    (stack / "cut.tif").write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(["predict", str(model2d), str(stack / "cut.tif"), "-o", str(stack / "out"), "-q"], capsys)
    assert_one_line(code, err, "predict", "truncated", "library log lines held back; --verbose shows them")
    code, _, err = run_cli(["predict", str(model2d), str(stack / "cut.tif"), "-o", str(stack / "out"), "-q", "--verbose"],
                           capsys)
    assert code == 2
    assert any(line.startswith("emseg: log: tifffile") for line in err.splitlines()), err
    assert err.strip().splitlines()[-1].startswith("emseg predict: error:")


def test_full_disk_names_the_cause_and_the_fix(stack: Path, model2d: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # numpy's short write carries no errno; the free space tells that the disk is full
    import shutil

    usage = shutil.disk_usage(stack)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: type(usage)(usage.total, usage.total, 0))
    msg = describe_os_error(OSError("16384 requested and 11168 written"), stack / "x.tif")
    assert "disk is full" in msg and "free some space" in msg
    monkeypatch.undo()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile.TiffWriter, "write", full)
    code, _, err = run_cli(["predict", str(model2d), str(stack / "img.tif"), "-o", str(stack / "out"), "-q"], capsys)
    assert_one_line(code, err, "predict", "disk is full", "free some space")
    assert not list((stack / "out").iterdir())  # nothing half-written, no temporary


def test_output_folder_that_is_a_file_and_input_folder_named_tif(stack: Path, model2d: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["predict", str(model2d), str(stack / "img.tif"), "-o", str(stack / "mito.tif"), "-q"], capsys)
    assert_one_line(code, err, "predict", "is a file, not a folder", "give a folder name")
    (stack / "dir.tif").mkdir()
    code, _, err = run_cli(["train", str(stack / "m"), "--image", str(stack / "dir.tif"), "--masks",
                            str(stack / "mito.tif"), "--epochs", "1", *TRAIN_TINY], capsys)
    assert_one_line(code, err, "train", "is a folder, not a .tif file")
    assert "re-save" not in err


def test_predict_prints_nothing_before_an_input_error(stack: Path, model2d: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    image = read_volume(stack / "img.tif")[0].astype(np.float32)
    image[3, 5, 5] = np.nan  # found only when slice 3 is read, after the model has started
    np.save(stack / "late_nan.npy", image)
    code, out, err = run_cli(["predict", str(model2d), str(stack / "late_nan.npy"), "-o", str(stack / "out")], capsys)
    assert_one_line(code, err, "predict", "NaN")
    assert "backend" not in err and out == ""


# --------------------------------------------------------------------------- the checkpoint


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {_Payload.marker}",))

    marker = ""


def test_foreign_checkpoint_is_never_opened_and_never_advises_unsafe_loading(
        stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = stack / "m"
    args = ["--image", str(stack / "img.tif"), "--masks", str(stack / "mito.tif"), "--val-slices", "3"]
    assert run_cli(["train", str(model), *args, "--epochs", "1", *TRAIN_TINY], capsys)[0] == 0
    assert len(json.loads((model / "config.json").read_text())["training"]["checkpoint_sha256"][0]) == 64
    _Payload.marker = str(stack / "pwned")
    (model / "checkpoint.pt").write_bytes(pickle.dumps({"format": "fiji-emseg-checkpoint", "x": _Payload()}))
    code, _, err = run_cli(["train", str(model), "--resume", "--epochs", "2", "-q", "--no-export"], capsys)
    assert_one_line(code, err, "train", "not the checkpoint this training wrote", "was not opened")
    assert "weights_only" not in err and not (stack / "pwned").exists()
    # a folder that records no checksum (older or foreign) is refused as well, before torch.load
    d = json.loads((model / "config.json").read_text())
    d["training"].pop("checkpoint_sha256")
    (model / "config.json").write_text(json.dumps(d))
    code, _, err = run_cli(["train", str(model), "--resume", "--epochs", "2", "-q", "--no-export", "--verbose"], capsys)
    assert code == 2 and "records no checksum" in err and "weights_only" not in err
    assert not (stack / "pwned").exists()


def test_unreadable_verified_checkpoint_message_does_not_relay_torch_advice(
        stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Even a checkpoint whose hash matches (e.g. written by a patched build) never yields
    PyTorch's 'weights_only=False will likely succeed' advice, not even in the --verbose log."""
    from fiji_emseg.engine.training.training_sources import file_sha256

    model = stack / "m"
    args = ["--image", str(stack / "img.tif"), "--masks", str(stack / "mito.tif"), "--val-slices", "3"]
    assert run_cli(["train", str(model), *args, "--epochs", "1", *TRAIN_TINY], capsys)[0] == 0
    _Payload.marker = str(stack / "pwned")
    import torch

    torch.save({"format": "fiji-emseg-checkpoint", "x": _Payload()}, model / "checkpoint.pt")
    d = json.loads((model / "config.json").read_text())
    d["training"]["checkpoint_sha256"] = [file_sha256(model / "checkpoint.pt")]
    (model / "config.json").write_text(json.dumps(d))
    code, _, err = run_cli(["train", str(model), "--resume", "--epochs", "2", "-q", "--no-export", "--verbose"], capsys)
    assert code == 2 and "cannot be read as a fiji-emseg checkpoint" in err
    assert "weights_only" not in err and not (stack / "pwned").exists()


# --------------------------------------------------------------------------- resume remembers its data


def test_resume_alone_continues_with_the_recorded_data(stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = stack / "m"
    args = ["--image", str(stack / "img.tif"), "--masks", str(stack / "mito.tif"), "--val-slices", "3"]
    assert run_cli(["train", str(model), *args, "--epochs", "1", *TRAIN_TINY], capsys)[0] == 0
    code, out, err = run_cli(["train", str(model), "--resume", "--epochs", "2", "--no-export"], capsys)
    assert code == 0, err
    assert f"resuming with the data recorded in {model / 'config.json'}: img.tif with 1 mask file(s)" in err
    assert "after 2 epochs" in out
    # changed data: a clear line, nothing trained
    image = read_volume(stack / "img.tif")[0]
    write_volume(stack / "img.tif", 255 - image, overwrite=True)
    code, _, err = run_cli(["train", str(model), "--resume", "--epochs", "3", "-q", "--no-export"], capsys)
    assert_one_line(code, err, "train", "img.tif has changed since training started", "checksum")
    # moved data
    write_volume(stack / "img.tif", image, overwrite=True)  # the original back: same bytes, same checksum
    (stack / "mito.tif").rename(stack / "moved.tif")
    code, _, err = run_cli(["train", str(model), "--resume", "--epochs", "3", "-q", "--no-export"], capsys)
    assert_one_line(code, err, "train", "mito.tif", "is no longer there", "--image/--masks")
    assert json.loads((model / "config.json").read_text())["training"]["epochs_run"] == 2


# --------------------------------------------------------------------------- kill debris


def _emseg(*argv: str) -> list[str]:
    return [sys.executable, "-m", "fiji_emseg.cli.main", *argv]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _kill_when(proc: subprocess.Popen[bytes], ready: object, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():  # type: ignore[operator]
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_during_prediction_leaves_debris_that_the_next_run_removes(tmp_path: Path, model2d: Path) -> None:
    image, _ = blob_volume((96, 256, 256), n=300)
    write_volume(tmp_path / "big.tif", image)
    out = tmp_path / "out"
    proc = subprocess.Popen(_emseg("predict", str(model2d), str(tmp_path / "big.tif"), "-o", str(out), "-q",
                                   "--outputs", "masks", "probabilities", "--backend", "torch", "--threads", "1"),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, lambda: out.is_dir() and any(p.stat().st_size > 150_000 for p in out.glob(".*.part.tif")))
    debris = list(out.glob(".*.part*"))
    assert debris and not [p for p in out.iterdir() if not p.name.startswith(".")]  # never a final name
    small = tmp_path / "small.tif"
    write_volume(small, image[:2, :64, :64])
    again = subprocess.run(_emseg("predict", str(model2d), str(small), "-o", str(out), "-q"), env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "removed" in again.stderr and "left in" in again.stderr and "interrupted run" in again.stderr
    assert not list(out.glob(".*part*")) and (out / "small_mito_mask.tif").is_file()


def test_sigkill_during_training_then_info_reports_the_saved_state(stack: Path) -> None:
    model = stack / "m"
    proc = subprocess.Popen(_emseg("train", str(model), "--image", str(stack / "img.tif"), "--masks",
                                   str(stack / "mito.tif"), "--val-slices", "3", "--epochs", "500",
                                   "--checkpoint-minutes", "0.001", "--threads", "1", *TRAIN_TINY),
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def epochs_logged() -> int:
        try:
            return len((model / "training_log.csv").read_text().splitlines()) - 1
        except OSError:
            return 0

    _kill_when(proc, lambda: epochs_logged() >= 3)
    (model / ".training_curves.999999999-deadbeef.part.png").write_bytes(b"")  # as a kill mid-plot leaves it
    rows = (model / "training_log.csv").read_text().splitlines()[1:]
    done = max(int(r.split(",")[0]) for r in rows)
    best = max(int(r.split(",")[0]) for r in rows if r.endswith(",1"))
    info = subprocess.run(_emseg("info", str(model)), env=_env(), capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    assert f"{done} of 500 epochs done, best saved epoch {best}" in info.stdout, info.stdout
    assert "--resume" in info.stdout and "temporary files: " in info.stdout
    resumed = subprocess.run(_emseg("train", str(model), "--resume", "--epochs", str(done + 1), "-q", "--no-export"),
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "removed" in resumed.stderr and "interrupted run" in resumed.stderr
    assert not [p.name for p in model.iterdir() if ".part" in p.name]
    info = subprocess.run(_emseg("info", str(model)), env=_env(), capture_output=True, text=True, timeout=120)
    assert f"completed, {done + 1} epochs" in info.stdout, info.stdout


def test_stale_temporaries_of_a_live_process_are_kept(tmp_path: Path) -> None:
    from fiji_emseg.engine.data.files import remove_stale_temporaries

    mine = tmp_path / f".x_mask.{os.getpid()}-abcdefgh.part.tif"
    dead = tmp_path / ".x_mask.999999999-abcdefgh.part.tif"
    user = tmp_path / ".notes.part.txt"
    for f in (mine, dead, user):
        f.write_bytes(b"1")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert mine.exists() and user.exists()


def test_predict_with_copy_of_config_keeps_working(tmp_path: Path, stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The schema accepts every config.json that fiji-emseg writes (a trained folder included)."""
    model = stack / "m"
    args = ["--image", str(stack / "img.tif"), "--masks", str(stack / "mito.tif"), "--val-slices", "3"]
    assert run_cli(["train", str(model), *args, "--epochs", "1", *TRAIN_TINY], capsys)[0] == 0
    d = copy.deepcopy(json.loads((model / "config.json").read_text()))
    assert d["training"]["data"]["sources"]["images"][0]["path"] == str((stack / "img.tif").resolve())
    code, out, err = run_cli(["info", str(model)], capsys)
    assert code == 0 and "completed, 1 epochs" in out, err
