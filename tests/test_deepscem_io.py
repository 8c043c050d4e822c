"""DeepSCEM HDF5 datasets: exact layout, round trips, files built the way DeepSCEM builds them, clear errors."""

from __future__ import annotations

import hashlib
import re
import time
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from fiji_emseg.engine.data import deepscem_io
from fiji_emseg.engine.data.deepscem_io import (
    deepscem_normalize,
    read_deepscem_dataset,
    read_deepscem_info,
    write_deepscem_dataset,
)
from fiji_emseg.engine.data.sample import Sample
from fiji_emseg.engine.data.synthetic import make_synthetic_sample
from fiji_emseg.engine.data.volume_io import Calibration
from fiji_emseg.errors import ConfigError, EmsegWarning, InputDataError, OutputError


def _samples() -> list[Sample]:
    a = make_synthetic_sample((3, 48, 64), seed=1, name="cell_a")
    b = make_synthetic_sample((2, 40, 56), seed=2, name="cell_b")
    b.image = (b.image.astype(np.uint16) * 200 + 1000)  # 16-bit with an offset: normalisation matters
    return [a, b]


def _deepscem_like_file(path: Path, images: list[np.ndarray], labels: list[list[np.ndarray]], name: str = "I3",
                        aliases: list[str] | None = None) -> None:
    """Build a file with the same h5py calls as DeepSCEM's data.create_dataset / add_sample_to_dataset."""
    with h5py.File(path, "w") as f:
        f.attrs["name"] = name
        f.attrs["labels"] = len(labels[0])
        if aliases is not None:
            f.attrs["labels_aliases"] = aliases
        for i, (image, label_list) in enumerate(zip(images, labels, strict=True)):
            data = image.astype(np.float32)
            data = (data - data.min()) / (data.max() - data.min())  # DeepSCEM's read_image(normalize=True)
            g = f.create_group(f"i3{i + 1}")
            g.attrs["shape"] = data.shape
            g.create_dataset("image", data=data)
            for j, lab in enumerate(label_list):
                g.create_dataset(f"label_{j:04}", data=lab.astype(np.uint8))


def _digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


# ---------------------------------------------------------------- round trip


def test_round_trip_keeps_masks_names_shapes_and_normalises_images(tmp_path: Path) -> None:
    samples = _samples()
    out = write_deepscem_dataset(tmp_path / "d.hdf5", samples, name="DEMO")
    back = read_deepscem_dataset(out)
    assert [s.name for s in back] == ["cell_a", "cell_b"]
    for orig, got in zip(samples, back, strict=True):
        assert got.class_names == ("mitochondria", "membrane")
        assert got.shape == orig.shape and got.image.dtype == np.float32
        assert got.masks is not None and orig.masks is not None
        assert got.masks.dtype == np.uint8 and np.array_equal(got.masks, orig.masks)
        x = orig.image.astype(np.float32)
        assert np.array_equal(got.image, (x - x.min()) / (x.max() - x.min()))  # bit-identical to DeepSCEM
        assert got.image.min() == 0.0 and got.image.max() == 1.0
        assert got.calibration == Calibration((40.0, 5.0, 5.0), "nm")
    info = read_deepscem_info(out)
    assert (info.name, info.labels, info.aliases) == ("DEMO", 2, ("mitochondria", "membrane"))
    assert [(s.name, s.shape, s.n_labels) for s in info.samples] == [
        ("cell_a", (3, 48, 64), 2), ("cell_b", (2, 40, 56), 2)]


def test_written_file_has_exactly_deepscem_layout(tmp_path: Path) -> None:
    out = write_deepscem_dataset(tmp_path / "d.hdf5", _samples())
    with h5py.File(out, "r") as f:
        assert isinstance(f.attrs["name"], str) and f.attrs["name"] == "d"
        assert int(f.attrs["labels"]) == 2 and np.asarray(f.attrs["labels"]).dtype.kind == "i"
        assert list(f.attrs["labels_aliases"]) == ["mitochondria", "membrane"]
        for key in f:
            g = f[key]
            assert isinstance(g, h5py.Group)
            assert sorted(g) == ["image", "label_0000", "label_0001"]  # DeepSCEM refuses any other dataset
            assert tuple(g.attrs["shape"]) == g["image"].shape
            assert g["image"].dtype == np.float32
            assert g["label_0000"].dtype == np.uint8 and set(np.unique(g["label_0000"][()])) <= {0, 1}


def test_image_normalisation_matches_deepscem_and_handles_constant_images() -> None:
    img = np.array([[[3, 7], [11, 3]]], np.uint16)
    assert np.array_equal(deepscem_normalize(img), np.array([[[0, 0.5], [1, 0]]], np.float32))
    flat = deepscem_normalize(np.full((2, 3, 3), 9, np.uint8))
    assert flat.dtype == np.float32 and not np.isnan(flat).any() and not flat.any()


def test_images_are_normalised_slab_by_slab_identically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deepscem_io, "_SLAB_VOXELS", 1)  # one slice per slab
    s = make_synthetic_sample((5, 32, 32), seed=4, name="s")
    s.image = s.image.astype(np.float32) * 0.37 - 12.5
    write_deepscem_dataset(tmp_path / "d.hdf5", [s])
    (back,) = read_deepscem_dataset(tmp_path / "d.hdf5")
    assert np.array_equal(back.image, deepscem_normalize(s.image))


def test_gzip_compression_reads_back_the_same(tmp_path: Path) -> None:
    samples = _samples()
    write_deepscem_dataset(tmp_path / "z.hdf5", samples, compression="gzip")
    back = read_deepscem_dataset(tmp_path / "z.hdf5")
    assert all(np.array_equal(a.masks, b.masks) for a, b in zip(samples, back, strict=True))  # type: ignore[arg-type]
    with h5py.File(tmp_path / "z.hdf5", "r") as f:
        assert f["cell_a/label_0000"].compression == "gzip"
    with pytest.raises(ConfigError, match="compression must be None or 'gzip'"):
        write_deepscem_dataset(tmp_path / "x.hdf5", samples, compression="lzf")


# ---------------------------------------------------------------- files made by DeepSCEM


def test_file_built_like_deepscem_without_aliases_is_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images: list[np.ndarray] = [rng.integers(0, 255, (3, 16, 20)).astype(np.uint8),
                                rng.integers(0, 4000, (2, 12, 10)).astype(np.uint16)]
    labels = [[(rng.random(im.shape) > 0.7).astype(np.uint8), (rng.random(im.shape) > 0.9).astype(np.uint8)]
              for im in images]
    _deepscem_like_file(tmp_path / "I3.hdf5", images, labels)
    back = read_deepscem_dataset(tmp_path / "I3.hdf5")
    assert [s.name for s in back] == ["i31", "i32"]
    for s, im, labs in zip(back, images, labels, strict=True):
        assert s.class_names == ("label_0000", "label_0001")
        assert s.masks is not None and np.array_equal(s.masks, np.stack(labs))
        assert np.array_equal(s.image, deepscem_normalize(im))
        assert s.calibration == Calibration()  # DeepSCEM records none
    info = read_deepscem_info(tmp_path / "I3.hdf5")
    assert info.aliases is None and info.class_names == ("label_0000", "label_0001") and info.name == "I3"
    assert "i31: 3×16×20 (Z×Y×X), 2 labels" in info.format()


def test_deepscem_labels_saved_as_0_255_are_accepted(tmp_path: Path) -> None:
    """DeepSCEM casts label TIFFs to uint8 without binarising, so 0/255 masks end up in its files."""
    lab = np.zeros((2, 8, 8), np.uint8)
    lab[:, 2:5, 2:5] = 255
    _deepscem_like_file(tmp_path / "m.hdf5", [np.arange(128).reshape(2, 8, 8)], [[lab]], aliases=["mito"])
    (s,) = read_deepscem_dataset(tmp_path / "m.hdf5")
    assert s.class_names == ("mito",) and s.masks is not None and np.array_equal(s.masks[0], lab // 255)


def test_reading_never_modifies_the_file(tmp_path: Path) -> None:
    write_deepscem_dataset(tmp_path / "d.hdf5", _samples())
    before = _digest(tmp_path / "d.hdf5")
    time.sleep(0.01)
    read_deepscem_info(tmp_path / "d.hdf5")
    read_deepscem_dataset(tmp_path / "d.hdf5")
    assert _digest(tmp_path / "d.hdf5") == before


def test_info_reads_no_arrays(tmp_path: Path) -> None:
    """A 64 GB (virtual, never written) image: info answers at once, where reading it would not."""
    with h5py.File(tmp_path / "huge.hdf5", "w") as f:
        f.attrs["name"] = "huge"
        f.attrs["labels"] = 1
        g = f.create_group("s")
        g.attrs["shape"] = (1000, 4096, 4096)
        g.create_dataset("image", shape=(1000, 4096, 4096), dtype=np.float32, chunks=(1, 512, 512))
        g.create_dataset("label_0000", shape=(1000, 4096, 4096), dtype=np.uint8, chunks=(1, 512, 512))
    start = time.perf_counter()
    info = read_deepscem_info(tmp_path / "huge.hdf5")
    assert time.perf_counter() - start < 1.0
    assert info.samples[0].shape == (1000, 4096, 4096) and info.samples[0].n_labels == 1


def test_only_the_named_samples_are_read(tmp_path: Path) -> None:
    write_deepscem_dataset(tmp_path / "d.hdf5", _samples())
    assert [s.name for s in read_deepscem_dataset(tmp_path / "d.hdf5", samples=["cell_b"])] == ["cell_b"]
    with pytest.raises(InputDataError, match=r"d\.hdf5 has no sample 'cell_c'; its samples are \['cell_a', 'cell_b'\]"):
        read_deepscem_dataset(tmp_path / "d.hdf5", samples=["cell_c"])


# ---------------------------------------------------------------- predictions


def test_predictions_are_written_and_read_with_a_threshold(tmp_path: Path) -> None:
    samples = _samples()
    rng = np.random.default_rng(3)
    prob = rng.random((2, *samples[0].shape)).astype(np.float32)
    write_deepscem_dataset(tmp_path / "p.hdf5", samples, predictions={"cell_a": prob})
    with h5py.File(tmp_path / "p.hdf5", "r") as f:
        assert sorted(f["cell_a"]) == ["image", "label_0000", "label_0001", "prediction_0000", "prediction_0001"]
        assert np.array_equal(f["cell_a/prediction_0001"][()], prob[1])
    assert read_deepscem_info(tmp_path / "p.hdf5").samples[0].n_predictions == 2
    a, b = read_deepscem_dataset(tmp_path / "p.hdf5", predictions=True, threshold=0.5)
    assert a.masks is not None and np.array_equal(a.masks, (prob > 0.5).astype(np.uint8))
    assert a.class_names == ("mitochondria", "membrane") and b.masks is None
    with pytest.raises(InputDataError) as err:
        read_deepscem_dataset(tmp_path / "p.hdf5", predictions=True)
    assert "cell_a/prediction_0000 is a probability map" in str(err.value) and "--threshold 0.5" in str(err.value)


def test_binary_predictions_need_no_threshold_and_missing_ones_are_reported(tmp_path: Path) -> None:
    samples = _samples()
    assert samples[1].masks is not None
    write_deepscem_dataset(tmp_path / "p.hdf5", samples, predictions={"cell_b": samples[1].masks.astype(bool)})
    (got,) = read_deepscem_dataset(tmp_path / "p.hdf5", predictions=True, samples=["cell_b"])
    assert got.masks is not None and np.array_equal(got.masks, samples[1].masks)
    write_deepscem_dataset(tmp_path / "l.hdf5", samples)
    with pytest.raises(InputDataError, match=r"l\.hdf5 holds no predictions.*leave out --predictions"):
        read_deepscem_dataset(tmp_path / "l.hdf5", predictions=True)


def test_prediction_arguments_are_checked(tmp_path: Path) -> None:
    samples = _samples()
    with pytest.raises(InputDataError, match=r"prediction given for 'nope', which is not one of the samples"):
        write_deepscem_dataset(tmp_path / "p.hdf5", samples, predictions={"nope": np.zeros((3, 48, 64))})
    with pytest.raises(InputDataError, match=r"prediction for 'cell_a' has shape \(2, 3, 48, 63\); expected"):
        write_deepscem_dataset(tmp_path / "p.hdf5", samples, predictions={"cell_a": np.zeros((2, 3, 48, 63))})
    with pytest.raises(InputDataError, match=r"disagree on the number of classes \(\[1, 2\]\)"):
        write_deepscem_dataset(tmp_path / "p.hdf5", samples, predictions={"cell_a": np.zeros((3, 48, 64))})
    with pytest.raises(ConfigError, match=r"threshold must be in \[0, 1\)"):
        read_deepscem_dataset(tmp_path / "p.hdf5", predictions=True, threshold=2)
    assert not (tmp_path / "p.hdf5").exists()


# ---------------------------------------------------------------- writing safely


def test_existing_file_is_kept_unless_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "d.hdf5"
    target.write_bytes(b"not yours")
    with pytest.raises(OutputError, match=r"d\.hdf5 already exists; choose another name or pass overwrite=True"):
        write_deepscem_dataset(target, _samples())
    assert target.read_bytes() == b"not yours"
    write_deepscem_dataset(target, _samples(), overwrite=True)
    assert len(read_deepscem_dataset(target)) == 2


def test_failure_while_writing_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = deepscem_io._write_image

    def failing(*args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real(*args)

    monkeypatch.setattr(deepscem_io, "_write_image", failing)
    with pytest.raises(OutputError, match=r"the disk is full while writing .*d\.hdf5; free some space"):
        write_deepscem_dataset(tmp_path / "d.hdf5", _samples())
    assert list(tmp_path.iterdir()) == []


def test_writing_from_a_file_leaves_that_file_untouched(tmp_path: Path) -> None:
    write_deepscem_dataset(tmp_path / "in.hdf5", _samples())
    before = _digest(tmp_path / "in.hdf5")
    samples = read_deepscem_dataset(tmp_path / "in.hdf5")
    write_deepscem_dataset(tmp_path / "out.hdf5", samples[:1], name="subset")
    assert _digest(tmp_path / "in.hdf5") == before
    assert read_deepscem_info(tmp_path / "out.hdf5").name == "subset"


def test_inconsistent_samples_are_refused_before_writing(tmp_path: Path) -> None:
    a, b = _samples()
    b.class_names = ("mito", "er")
    with pytest.raises(InputDataError) as err:
        write_deepscem_dataset(tmp_path / "d.hdf5", [a, b])
    msg = str(err.value)
    assert "'cell_a' and 'cell_b' have different classes" in msg and "same classes in the same order" in msg
    a2, _ = _samples()
    with pytest.raises(InputDataError, match=r"two samples are named 'cell_a'; give every sample its own name"):
        write_deepscem_dataset(tmp_path / "d.hdf5", [a, a2])
    a.name = "x/y"
    with pytest.raises(InputDataError, match=r"sample name 'x/y' cannot be an HDF5 group name"):
        write_deepscem_dataset(tmp_path / "d.hdf5", [a])
    with pytest.raises(InputDataError, match="no samples to write"):
        write_deepscem_dataset(tmp_path / "d.hdf5", [])
    assert list(tmp_path.iterdir()) == []


def test_annotated_region_is_reported_as_lost(tmp_path: Path) -> None:
    s = make_synthetic_sample((3, 32, 32), seed=0, name="s")
    s.annotated = np.zeros(s.shape, bool)
    s.annotated[0] = True
    with pytest.warns(EmsegWarning, match=r"'s' has an annotated region, which DeepSCEM cannot store.*subset"):
        write_deepscem_dataset(tmp_path / "d.hdf5", [s])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_deepscem_dataset(tmp_path / "e.hdf5", [s.subset([0], name="s0")])


def test_unlabelled_samples_are_written_with_the_image_only(tmp_path: Path) -> None:
    raw = Sample("raw", np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8), None, ())
    write_deepscem_dataset(tmp_path / "r.hdf5", [raw])
    info = read_deepscem_info(tmp_path / "r.hdf5")
    assert info.labels == 0 and info.aliases is None and info.samples[0].n_labels == 0
    (back,) = read_deepscem_dataset(tmp_path / "r.hdf5")
    assert back.masks is None and np.array_equal(back.image, deepscem_normalize(raw.image))


# ---------------------------------------------------------------- broken files


def _write(path: Path, build: Any) -> Path:
    with h5py.File(path, "w") as f:
        build(f)
    return path


def _valid(f: h5py.File, labels: int = 1, shape: tuple[int, int, int] = (2, 4, 4)) -> h5py.Group:
    f.attrs["name"] = "x"
    f.attrs["labels"] = labels
    g = f.create_group("s1")
    g.attrs["shape"] = shape
    g.create_dataset("image", data=np.zeros(shape, np.float32))
    return g


def test_not_hdf5_missing_and_damaged_files(tmp_path: Path) -> None:
    (tmp_path / "text.hdf5").write_text("hello")
    with pytest.raises(InputDataError, match=r"text\.hdf5 is not an HDF5 file; give a DeepSCEM dataset"):
        read_deepscem_dataset(tmp_path / "text.hdf5")
    with pytest.raises(InputDataError, match=r"nope\.hdf5 does not exist; check the path"):
        read_deepscem_info(tmp_path / "nope.hdf5")
    write_deepscem_dataset(tmp_path / "ok.hdf5", _samples())
    raw = (tmp_path / "ok.hdf5").read_bytes()
    (tmp_path / "cut.hdf5").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(InputDataError) as err:
        read_deepscem_dataset(tmp_path / "cut.hdf5")
    assert "cut.hdf5" in str(err.value) and re.search(r"damaged|not an HDF5", str(err.value))


def test_missing_root_attributes_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.hdf5", lambda f: f.attrs.__setitem__("name", "x"))
    with pytest.raises(InputDataError) as err:
        read_deepscem_dataset(path)
    msg = str(err.value)
    assert "a.hdf5 is not a DeepSCEM dataset: the root attribute 'labels' is missing" in msg
    assert "'emseg convert'" in msg


def test_label_count_must_match_the_labels_attribute(tmp_path: Path) -> None:
    def build(f: h5py.File) -> None:
        g = _valid(f, labels=2)
        g.create_dataset("label_0000", data=np.zeros((2, 4, 4), np.uint8))

    with pytest.raises(InputDataError) as err:
        read_deepscem_dataset(_write(tmp_path / "n.hdf5", build))
    msg = str(err.value)
    assert "n.hdf5:s1 has 1 labels (label_0000) but the dataset declares labels = 2" in msg
    assert "one label per class" in msg


def test_image_shape_must_match_the_shape_attribute(tmp_path: Path) -> None:
    def build(f: h5py.File) -> None:
        g = _valid(f)
        g.attrs["shape"] = (2, 4, 5)
        g.create_dataset("label_0000", data=np.zeros((2, 4, 4), np.uint8))

    with pytest.raises(InputDataError) as err:
        read_deepscem_dataset(_write(tmp_path / "s.hdf5", build))
    msg = str(err.value)
    assert "s.hdf5:s1: image shape 2×4×4 (Z×Y×X) does not match the sample's shape attribute 2×4×5" in msg


def test_label_shape_must_match_the_image(tmp_path: Path) -> None:
    def build(f: h5py.File) -> None:
        g = _valid(f)
        g.create_dataset("label_0000", data=np.zeros((2, 4, 3), np.uint8))

    with pytest.raises(InputDataError, match=r"s1/label_0000: shape 2×4×3 \(Z×Y×X\) does not match the image 2×4×4"):
        read_deepscem_dataset(_write(tmp_path / "l.hdf5", build))


def test_non_binary_labels_list_their_values(tmp_path: Path) -> None:
    def build(f: h5py.File) -> None:
        g = _valid(f)
        g.create_dataset("label_0000", data=np.arange(32, dtype=np.uint8).reshape(2, 4, 4) % 3)

    with pytest.raises(InputDataError) as err:
        read_deepscem_dataset(_write(tmp_path / "v.hdf5", build))
    msg = str(err.value)
    assert "v.hdf5:s1/label_0000: mask is not binary (values found: 0, 1, 2)" in msg and "0/1 or 0/255" in msg


def test_other_layout_problems(tmp_path: Path) -> None:
    def no_shape(f: h5py.File) -> None:
        del _valid(f).attrs["shape"]

    with pytest.raises(InputDataError, match=r"s1 has no 'shape' attribute"):
        read_deepscem_dataset(_write(tmp_path / "a.hdf5", no_shape))

    def gap(f: h5py.File) -> None:
        g = _valid(f, labels=2)
        g.create_dataset("label_0000", data=np.zeros((2, 4, 4), np.uint8))
        g.create_dataset("label_0002", data=np.zeros((2, 4, 4), np.uint8))

    with pytest.raises(InputDataError, match=r"labels are numbered \['label_0000', 'label_0002'\], not from 0"):
        read_deepscem_dataset(_write(tmp_path / "b.hdf5", gap))

    def no_image(f: h5py.File) -> None:
        del _valid(f)["image"]

    with pytest.raises(InputDataError, match=r"c\.hdf5:s1 has no 'image' dataset"):
        read_deepscem_dataset(_write(tmp_path / "c.hdf5", no_image))

    def bad_aliases(f: h5py.File) -> None:
        _valid(f, labels=2).create_dataset("label_0000", data=np.zeros((2, 4, 4), np.uint8))
        f.attrs["labels_aliases"] = ["mito", "er", "golgi"]

    with pytest.raises(InputDataError, match=r"labels_aliases names 3 classes .* but labels = 2"):
        read_deepscem_dataset(_write(tmp_path / "d.hdf5", bad_aliases))

    def empty(f: h5py.File) -> None:
        f.attrs["name"] = "x"
        f.attrs["labels"] = 1

    with pytest.raises(InputDataError, match=r"e\.hdf5 contains no samples"):
        read_deepscem_dataset(_write(tmp_path / "e.hdf5", empty))

    def nan_image(f: h5py.File) -> None:
        g = _valid(f)
        g["image"][0, 0, 0] = np.nan
        g.create_dataset("label_0000", data=np.zeros((2, 4, 4), np.uint8))

    with pytest.raises(InputDataError, match=r"f\.hdf5:s1/image: 1 pixels are NaN or infinite"):
        read_deepscem_dataset(_write(tmp_path / "f.hdf5", nan_image))
