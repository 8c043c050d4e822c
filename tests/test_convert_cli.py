"""`emseg convert`: TIFF stacks to DeepSCEM HDF5 and back, end to end through the command line."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from fiji_emseg.cli.main import main
from fiji_emseg.engine.data.deepscem_io import (
    deepscem_normalize,
    read_deepscem_dataset,
    write_deepscem_dataset,
)
from fiji_emseg.engine.data.synthetic import make_synthetic_sample, write_synthetic_dataset
from fiji_emseg.engine.data.volume_io import Calibration, read_volume, write_volume

CAL = Calibration((40.0, 5.0, 5.0), "nm")


@pytest.fixture
def two_samples(tmp_path: Path) -> list[Path]:
    """Two folders with image.tif, mitochondria.tif and membrane.tif (0/255 masks)."""
    folders = []
    for i, shape in enumerate([(3, 48, 64), (2, 40, 40)]):
        write_synthetic_dataset(tmp_path / f"cell{i + 1}", shape, seed=i)
        folders.append(tmp_path / f"cell{i + 1}")
    return folders


def _args(folder: Path) -> list[str]:
    return ["--sample", str(folder / "image.tif"), str(folder / "mitochondria.tif"), str(folder / "membrane.tif")]


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("emseg convert: error: ") and err.count("\n") == 1  # one line
    return err


def test_help_describes_both_directions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ex:
        main(["convert", "--help"])
    assert ex.value.code == 0
    out = capsys.readouterr().out
    for text in ("TIFF -> DeepSCEM", "DeepSCEM -> TIFF", "--sample", "--deepscem", "--overwrite", "--classes",
                 "--threshold", "labels_aliases", "examples:"):
        assert text in out, text


def test_tiffs_to_deepscem(tmp_path: Path, two_samples: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data.hdf5"
    rc = main(["convert", *_args(two_samples[0]), *_args(two_samples[1]), "--name", "DEMO", "-o", str(out)])
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    back = read_deepscem_dataset(out)
    # both images are called image.tif, so the folder name tells the samples apart
    assert [s.name for s in back] == ["cell1_image", "cell2_image"]
    for s, folder in zip(back, two_samples, strict=True):
        assert s.class_names == ("mitochondria", "membrane")
        image, cal = read_volume(folder / "image.tif")
        assert np.array_equal(s.image, deepscem_normalize(image)) and s.calibration == cal == CAL
        assert s.masks is not None
        assert np.array_equal(s.masks[0] * 255, read_volume(folder / "mitochondria.tif")[0])
        assert np.array_equal(s.masks[1] * 255, read_volume(folder / "membrane.tif")[0])
    with h5py.File(out, "r") as f:
        assert f.attrs["name"] == "DEMO" and int(f.attrs["labels"]) == 2


def test_class_names_sample_names_slices_and_voxel_size(tmp_path: Path, two_samples: list[Path]) -> None:
    out = tmp_path / "d.hdf5"
    rc = main(["convert", *_args(two_samples[0]), "--classes", "mito", "mem", "--sample-names", "A",
               "--slices", "1-2", "--voxel-size", "50", "4", "4", "--unit", "nm", "--compress", "-o", str(out)])
    assert rc == 0
    (s,) = read_deepscem_dataset(out)
    assert s.name == "A" and s.class_names == ("mito", "mem") and s.shape == (2, 48, 64)
    assert s.calibration == Calibration((50.0, 4.0, 4.0), "nm")
    full = make_synthetic_sample((3, 48, 64), seed=0)
    assert s.masks is not None and full.masks is not None and np.array_equal(s.masks, full.masks[:, 1:3])


def test_unlabelled_images_are_allowed(tmp_path: Path, two_samples: list[Path]) -> None:
    rc = main(["convert", "--sample", str(two_samples[0] / "image.tif"), "-o", str(tmp_path / "raw.hdf5")])
    assert rc == 0
    (s,) = read_deepscem_dataset(tmp_path / "raw.hdf5")
    assert s.masks is None and s.name == "image"


def test_existing_output_is_never_replaced_without_overwrite(tmp_path: Path, two_samples: list[Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.hdf5"
    out.write_bytes(b"keep me")
    assert main(["convert", *_args(two_samples[0]), "-o", str(out)]) == 2
    err = _error(capsys)
    assert "d.hdf5 already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"keep me"
    assert main(["convert", *_args(two_samples[0]), "-o", str(out), "--overwrite"]) == 0
    assert len(read_deepscem_dataset(out)) == 1


def test_masks_in_another_order_are_refused(tmp_path: Path, two_samples: list[Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    second = ["--sample", str(two_samples[1] / "image.tif"), str(two_samples[1] / "membrane.tif"),
              str(two_samples[1] / "mitochondria.tif")]
    assert main(["convert", *_args(two_samples[0]), *second, "-o", str(tmp_path / "d.hdf5")]) == 2
    err = _error(capsys)
    assert "['membrane', 'mitochondria'] are not in the class order ['mitochondria', 'membrane']" in err
    assert not (tmp_path / "d.hdf5").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--classes", "only_one"], "1 class names for 2 masks per sample; give one name per mask"),
    (["--threshold", "0.5"], "--threshold only applies to --deepscem input; leave it out with --sample"),
    (["--unit", "nm"], "--unit needs --voxel-size"),
    (["--slices", "5-9"], "slice 9 is outside the stack, which has 3 slices"),
])
def test_bad_tiff_options_are_one_line_errors(tmp_path: Path, two_samples: list[Path], extra: list[str],
                                              message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", *_args(two_samples[0]), *extra, "-o", str(tmp_path / "d.hdf5")]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "d.hdf5").exists()


def test_mismatched_inputs_are_named(tmp_path: Path, two_samples: list[Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    write_volume(tmp_path / "small.tif", np.zeros((3, 48, 60), np.uint8))
    assert main(["convert", "--sample", str(two_samples[0] / "image.tif"), str(tmp_path / "small.tif"),
                 "-o", str(tmp_path / "d.hdf5")]) == 2
    err = _error(capsys)
    assert "small.tif: mask shape 3×48×60 (Z×Y×X) does not match image shape 3×48×64" in err
    assert main(["convert", *_args(two_samples[0]), "--sample", str(two_samples[1] / "image.tif"),
                 str(two_samples[1] / "membrane.tif"), "-o", str(tmp_path / "d.hdf5")]) == 2
    assert "different numbers of masks ([1, 2])" in _error(capsys)
    assert main(["convert", *_args(two_samples[0]), "-o", str(tmp_path / "d.tif")]) == 2
    assert "must be a DeepSCEM .hdf5 file" in _error(capsys)
    assert main(["convert", "--sample", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "d.hdf5")]) == 2
    assert "missing.tif does not exist; check the path" in _error(capsys)


# ---------------------------------------------------------------- DeepSCEM -> TIFF


def test_deepscem_to_tiff_folders(tmp_path: Path, two_samples: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "d.hdf5"
    assert main(["convert", *_args(two_samples[0]), *_args(two_samples[1]), "-o", str(src)]) == 0
    out = tmp_path / "exported"
    assert main(["convert", "--deepscem", str(src), "-o", str(out)]) == 0
    assert "wrote 6 TIFF files for 2 samples" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["cell1_image", "cell2_image"]
    for folder, original in zip(sorted(out.iterdir()), two_samples, strict=True):
        assert sorted(p.name for p in folder.iterdir()) == ["image.tif", "membrane.tif", "mitochondria.tif"]
        image, cal = read_volume(folder / "image.tif")
        assert image.dtype == np.float32 and cal == CAL
        assert np.array_equal(image, deepscem_normalize(read_volume(original / "image.tif")[0]))
        for cls in ("mitochondria", "membrane"):
            mask, mcal = read_volume(folder / f"{cls}.tif")
            assert mask.dtype == np.uint8 and mcal == CAL
            assert np.array_equal(mask, read_volume(original / f"{cls}.tif")[0])  # 0/255 again


def test_deepscem_files_without_aliases_export_label_names(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "I3.hdf5", "w") as f:  # as DeepSCEM writes it
        f.attrs["name"] = "I3"
        f.attrs["labels"] = 1
        g = f.create_group("i31")
        g.attrs["shape"] = (2, 8, 8)
        g.create_dataset("image", data=np.linspace(0, 1, 128, dtype=np.float32).reshape(2, 8, 8))
        g.create_dataset("label_0000", data=np.eye(8, dtype=np.uint8)[None].repeat(2, axis=0))
    assert main(["convert", "-d", str(tmp_path / "I3.hdf5"), "-o", str(tmp_path / "out")]) == 0
    mask, cal = read_volume(tmp_path / "out" / "i31" / "label_0000.tif")
    assert np.array_equal(mask, np.eye(8, dtype=np.uint8)[None].repeat(2, axis=0) * 255)
    assert not cal.is_calibrated


def test_export_checks_every_target_before_writing(tmp_path: Path, two_samples: list[Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "d.hdf5"
    assert main(["convert", *_args(two_samples[0]), *_args(two_samples[1]), "-o", str(src)]) == 0
    out = tmp_path / "exported"
    (out / "cell2_image").mkdir(parents=True)
    (out / "cell2_image" / "membrane.tif").write_bytes(b"mine")
    assert main(["convert", "--deepscem", str(src), "-o", str(out)]) == 2
    assert "membrane.tif already exists" in _error(capsys)
    assert not (out / "cell1_image").exists()  # nothing written for the first sample either
    assert (out / "cell2_image" / "membrane.tif").read_bytes() == b"mine"
    assert main(["convert", "--deepscem", str(src), "-o", str(out), "--overwrite", "--only", "cell2_image"]) == 0
    assert read_volume(out / "cell2_image" / "membrane.tif")[0].shape == (2, 40, 40)
    assert not (out / "cell1_image").exists()


def test_export_predictions_with_a_threshold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = make_synthetic_sample((2, 32, 32), seed=5, name="s")
    prob = np.random.default_rng(0).random((2, 2, 32, 32)).astype(np.float32)
    write_deepscem_dataset(tmp_path / "p.hdf5", [s], predictions={"s": prob})
    assert main(["convert", "-d", str(tmp_path / "p.hdf5"), "--predictions", "-o", str(tmp_path / "p")]) == 2
    assert "probability map" in _error(capsys)
    assert not (tmp_path / "p" / "s" / "image.tif").exists()
    assert main(["convert", "-d", str(tmp_path / "p.hdf5"), "--predictions", "-t", "0.5",
                 "-o", str(tmp_path / "p")]) == 0
    mask, _ = read_volume(tmp_path / "p" / "s" / "membrane.tif")
    assert np.array_equal(mask, (prob[1] > 0.5).astype(np.uint8) * 255)


def test_bad_export_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = make_synthetic_sample((2, 32, 32), seed=5, name="s")
    write_deepscem_dataset(tmp_path / "d.hdf5", [s])
    assert main(["convert", "-d", str(tmp_path / "d.hdf5"), "--classes", "a", "-o", str(tmp_path / "o")]) == 2
    assert "--classes only applies to --sample input; leave it out with --deepscem" in _error(capsys)
    assert main(["convert", "-d", str(tmp_path / "d.hdf5"), "-t", "0.5", "-o", str(tmp_path / "o")]) == 2
    assert "--threshold applies to --predictions" in _error(capsys)
    assert main(["convert", "-d", str(tmp_path / "d.hdf5"), "--only", "x", "-o", str(tmp_path / "o")]) == 2
    assert "d.hdf5 has no sample 'x'; its samples are ['s']" in _error(capsys)
    (tmp_path / "file").write_text("x")
    assert main(["convert", "-d", str(tmp_path / "d.hdf5"), "-o", str(tmp_path / "file")]) == 2
    assert "is a file; give a folder" in _error(capsys)
    (tmp_path / "fake.hdf5").write_text("x")
    assert main(["convert", "-d", str(tmp_path / "fake.hdf5"), "-o", str(tmp_path / "o")]) == 2
    assert "fake.hdf5 is not an HDF5 file" in _error(capsys)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- real data


@pytest.mark.data
def test_real_isbi_stack_to_deepscem_and_back(tmp_path: Path) -> None:
    folder = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012"
    if not (folder / "membrane.tif").exists():
        pytest.skip(f"real data not found in {folder}")
    out = tmp_path / "isbi.hdf5"
    assert main(["convert", "--sample", str(folder / "image.tif"), str(folder / "membrane.tif"),
                 "--slices", "0-3", "-o", str(out)]) == 0
    assert main(["convert", "--deepscem", str(out), "-o", str(tmp_path / "back")]) == 0
    mask, _ = read_volume(tmp_path / "back" / "image" / "membrane.tif")
    assert np.array_equal(mask, read_volume(folder / "membrane.tif")[0][:4])
    image, _ = read_volume(tmp_path / "back" / "image" / "image.tif")
    assert np.array_equal(image, deepscem_normalize(read_volume(folder / "image.tif")[0][:4]))
