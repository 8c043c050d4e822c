"""evaluate()/measure() and the `emseg evaluate` / `emseg measure` commands, end to end on small TIFFs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fiji_emseg.cli.main import main
from fiji_emseg.engine.data.volume_io import Calibration, write_volume
from fiji_emseg.engine.evaluation.evaluation import OBJECT_SUMMARY_COLUMNS, SUMMARY_COLUMNS, evaluate
from fiji_emseg.errors import EmsegWarning, InputDataError, OutputError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vnc_sstem"


def _pair() -> tuple[np.ndarray, np.ndarray]:
    """2 slices of 8x8. Slice 0: ref square 4x4 (16), pred = left half (8) -> tp 8, fn 8.
    Slice 1: ref square 2x2 (4) fully predicted, plus a 1-voxel false positive."""
    ref = np.zeros((2, 8, 8), np.uint8)
    pred = np.zeros_like(ref)
    ref[0, 0:4, 0:4] = 255
    pred[0, 0:4, 0:2] = 255
    ref[1, 5:7, 5:7] = 255
    pred[1, 5:7, 5:7] = 255
    pred[1, 0, 7] = 255
    return ref, pred


@pytest.fixture
def pair_files(tmp_path: Path) -> tuple[Path, Path]:
    ref, pred = _pair()
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    write_volume(tmp_path / "gt" / "mito.tif", ref)
    write_volume(tmp_path / "pred" / "mito.tif", pred)
    return tmp_path / "gt" / "mito.tif", tmp_path / "pred" / "mito.tif"


# ---------------------------------------------------------------- library


def test_evaluate_hand_computed_summary() -> None:
    ref, pred = _pair()
    rep = evaluate(ref, pred, class_names=["mito"], components="2d")
    row = rep.summary.iloc[0]
    assert list(rep.summary.columns) == list(SUMMARY_COLUMNS) + list(OBJECT_SUMMARY_COLUMNS)
    assert row["class"] == "mito"
    assert (row["tp"], row["fp"], row["fn"]) == (12, 1, 8)
    assert row["f1"] == pytest.approx(24 / 33)
    assert row["precision"] == pytest.approx(12 / 13)
    # slice f1: 16/24 and 8/9
    assert row["f1_slice_mean"] == pytest.approx((16 / 24 + 8 / 9) / 2)
    assert row["f1_slice_min"] == pytest.approx(16 / 24)
    # objects: square half covered (recall 0.5, under-detected), small square detected, 1 FP
    assert (row["ref_objects"], row["detected"], row["under_detected"], row["missed"], row["false_positives"]) == (
        2, 1, 1, 0, 1)
    assert row["pq"] == pytest.approx(1.0 * 1 / (1 + 1 + 0.5))  # 1 match (IoU 1), FP 2 (half + speck), FN 1
    assert not rep.summary.drop(columns="class").isna().any().any()
    assert len(rep.per_slice) == 2 and set(rep.per_slice["class"]) == {"mito"}


def test_evaluate_does_not_modify_inputs_and_honours_region() -> None:
    ref, pred = _pair()
    ref01, pred01 = ref // 255, pred // 255
    before = pred01.copy()
    region = np.zeros(ref.shape, bool)
    region[1] = True
    rep = evaluate(ref01, pred01, annotated=region)
    assert np.array_equal(pred01, before)
    row = rep.summary.iloc[0]
    assert (row["tp"], row["fp"], row["fn"], row["n_slices"]) == (4, 1, 0, 1)
    by_slices = evaluate(ref01, pred01, annotated_slices="1").summary.iloc[0]
    assert by_slices["f1"] == row["f1"]
    assert list(evaluate(ref01, pred01, annotated_slices=[1]).per_slice["slice"]) == [1]


def test_evaluate_read_only_npy_files_with_region(tmp_path: Path) -> None:
    ref, pred = _pair()
    np.save(tmp_path / "ref.npy", ref // 255)  # uint8 0/1, opened memory-mapped read-only
    np.save(tmp_path / "pred.npy", pred // 255)
    row = evaluate(tmp_path / "ref.npy", tmp_path / "pred.npy", annotated_slices="1").summary.iloc[0]
    assert row["class"] == "ref"
    assert (row["tp"], row["fp"], row["fn"]) == (4, 1, 0)


def test_evaluate_multiclass_arrays_and_dicts() -> None:
    ref, pred = _pair()
    four = np.stack([ref, ref])
    rep = evaluate(four, np.stack([pred, ref]), class_names=["a", "b"])
    assert list(rep.summary["class"]) == ["a", "b"]
    assert rep.summary.iloc[1]["f1"] == 1.0
    named = evaluate({"b": ref, "a": ref}, {"a": pred, "b": ref}, class_names=["a"])
    assert list(named.summary["class"]) == ["a"] and named.summary.iloc[0]["f1"] < 1
    with pytest.raises(InputDataError, match="class 'c'"):
        evaluate({"c": ref}, {"a": pred})


def test_inter_expert_agreement_is_symmetric_in_f1() -> None:
    ref, pred = _pair()
    ab = evaluate(ref, pred).summary.iloc[0]
    ba = evaluate(pred, ref).summary.iloc[0]
    assert ab["f1"] == pytest.approx(ba["f1"]) and ab["iou"] == pytest.approx(ba["iou"])
    assert ab["precision"] == pytest.approx(ba["recall"])


def test_empty_reference_warns_and_scores_defined() -> None:
    empty = np.zeros((1, 4, 4), np.uint8)
    with pytest.warns(EmsegWarning, match="reference is empty"):
        rep = evaluate(empty, empty)
    assert rep.summary.iloc[0]["f1"] == 1.0 and rep.summary.iloc[0]["pq"] == 1.0
    assert rep.objects.empty


def test_report_save_and_to_dict(tmp_path: Path) -> None:
    ref, pred = _pair()
    rep = evaluate(ref, pred, class_names=["mito"])
    files = rep.save(tmp_path / "out")
    assert sorted(p.name for p in files) == ["evaluation.json", "evaluation_objects.csv",
                                             "evaluation_per_slice.csv", "evaluation_summary.csv"]
    d = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert d["summary"][0]["class"] == "mito" and d["settings"]["components"] == "3d"
    assert "empty" in d["conventions"]
    with pytest.raises(OutputError, match="already exists"):
        rep.save(tmp_path / "out")
    rep.save(tmp_path / "out", overwrite=True)
    table = rep.format_table()
    assert table.splitlines()[0].startswith("class") and "mito" in table


# ---------------------------------------------------------------- command line


def test_cli_evaluate_files_prints_table_and_writes_nothing(pair_files: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    ref, pred = pair_files
    before = set(tmp_path.rglob("*"))
    assert main(["evaluate", "--reference", str(ref), "--prediction", str(pred)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["class", "F1", "IoU"]
    assert out.splitlines()[1].split()[:2] == ["mito", f"{24 / 33:.3f}"]
    assert set(tmp_path.rglob("*")) == before


def test_cli_evaluate_output_dir_and_overwrite(pair_files: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ref, pred = pair_files
    out = tmp_path / "eval"
    args = ["evaluate", "-r", str(ref.parent), "-p", str(pred.parent), "--output-dir", str(out), "--components", "2d"]
    assert main(args) == 0
    summary = pd.read_csv(out / "evaluation_summary.csv")
    assert list(summary["class"]) == ["mito"]
    assert summary.loc[0, "f1"] == pytest.approx(24 / 33, abs=1e-6)
    assert (summary.loc[0, "detected"], summary.loc[0, "under_detected"]) == (1, 1)
    assert len(pd.read_csv(out / "evaluation_per_slice.csv")) == 2
    objects = pd.read_csv(out / "evaluation_objects.csv")
    assert sorted(objects["category"]) == ["detected", "false_positive", "overlapping", "overlapping",
                                           "under_detected"]
    json.loads((out / "evaluation.json").read_text())
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--overwrite"]) == 0


def test_cli_probability_map_needs_threshold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref, _ = _pair()
    prob = np.where(ref > 0, 0.9, 0.2).astype(np.float32)
    prob[0, 7, 7] = 0.4  # background, below the threshold
    write_volume(tmp_path / "ref.tif", ref)
    write_volume(tmp_path / "prediction.tif", prob)
    args = ["evaluate", "-r", str(tmp_path / "ref.tif"), "-p", str(tmp_path / "prediction.tif")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "prediction.tif is a probability map" in err and "--threshold" in err
    assert main([*args, "--threshold", "0.5"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1] == "1.000"


def test_cli_shape_mismatch_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_volume(tmp_path / "a.tif", np.zeros((2, 8, 8), np.uint8))
    write_volume(tmp_path / "b.tif", np.zeros((2, 8, 9), np.uint8))
    assert main(["evaluate", "-r", str(tmp_path / "a.tif"), "-p", str(tmp_path / "b.tif")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shape" in err and "2×8×9" in err


def test_cli_folder_missing_class(pair_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    ref, pred = pair_files
    write_volume(ref.parent / "synapse.tif", np.zeros((2, 8, 8), np.uint8))
    assert main(["evaluate", "-r", str(ref.parent), "-p", str(pred.parent)]) == 2
    err = capsys.readouterr().err.strip()
    assert "class 'synapse'" in err and "mito.tif" in err and len(err.splitlines()) == 1
    assert main(["evaluate", "-r", str(ref.parent), "-p", str(pred.parent), "--classes", "mito"]) == 0


def test_cli_annotated_slices(pair_files: tuple[Path, Path], tmp_path: Path) -> None:
    ref, pred = pair_files
    out = tmp_path / "e"
    assert main(["evaluate", "-r", str(ref), "-p", str(pred), "--annotated-slices", "1", "-o", str(out)]) == 0
    s = pd.read_csv(out / "evaluation_summary.csv")
    assert (s.loc[0, "tp"], s.loc[0, "fp"], s.loc[0, "fn"], s.loc[0, "n_slices"]) == (4, 1, 0, 1)


def test_cli_measure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = np.zeros((4, 16, 16), np.uint8)
    m[1:3, 2:6, 2:6] = 255  # 32 voxels, label 2 (labels follow the first voxel in z, y, x order)
    m[0:4, 10:12, 10:12] = 255  # 16 voxels, label 1
    write_volume(tmp_path / "mito.tif", m, Calibration((50.0, 5.0, 5.0), "nm"))
    out = tmp_path / "objects.csv"
    assert main(["measure", "--masks", str(tmp_path / "mito.tif"), "--output", str(out)]) == 0
    t = pd.read_csv(out)
    assert list(t["voxels"]) == [16, 32]
    assert t.loc[1, "volume"] == pytest.approx(32 * 50 * 25)
    assert set(t["unit"]) == {"nm"}
    assert "mito" in capsys.readouterr().out
    assert main(["measure", "--masks", str(tmp_path / "mito.tif"), "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["measure", "-m", str(tmp_path / "mito.tif"), "-o", str(out), "--overwrite",
                 "--voxel-size", "1", "1", "1", "--unit", "micron", "--min-voxels", "20"]) == 0
    t = pd.read_csv(out)
    assert list(t["volume"]) == [32.0] and set(t["unit"]) == {"micron"}


def test_cli_measure_voxel_size_needs_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_volume(tmp_path / "m.tif", np.ones((2, 4, 4), np.uint8))
    assert main(["measure", "-m", str(tmp_path / "m.tif"), "-o", str(tmp_path / "o.csv"),
                 "--voxel-size", "2", "1", "1"]) == 2
    assert "--unit" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


# ---------------------------------------------------------------- real data (skipped where absent)


@pytest.mark.data
def test_real_mito_against_eroded_copy() -> None:
    if not (DATA / "mito.tif").exists():
        pytest.skip(f"real data not found at {DATA}")
    from scipy import ndimage as ndi

    from fiji_emseg.engine.data.volume_io import read_volume

    mito, _ = read_volume(DATA / "mito.tif")
    ref = mito[:4] > 0
    pred = ndi.binary_erosion(ref, structure=np.ones((1, 3, 3), bool))
    rep = evaluate(ref, pred, components="3d")
    row = rep.summary.iloc[0]
    assert row["precision"] == 1.0 and 0.5 < row["recall"] < 1.0
    assert row["tp"] == int(pred.sum()) and row["fn"] == int(ref.sum() - pred.sum())
    assert row["false_positives"] == 0 and row["ref_objects"] > 5
    self_rep = evaluate(ref, ref).summary.iloc[0]
    assert (self_rep["f1"], self_rep["pq"], self_rep["aji"], self_rep["detected_frac"]) == (1.0, 1.0, 1.0, 1.0)


def test_cli_file_against_folder_matches_by_name(pair_files: tuple[Path, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ref, pred = pair_files
    assert main(["evaluate", "-r", str(ref), "-p", str(pred.parent)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["mito", f"{24 / 33:.3f}"]
    assert main(["evaluate", "-r", str(ref), "-p", str(pred.parent), "--classes", "synapse"]) == 2
    assert "class 'synapse'" in capsys.readouterr().err
