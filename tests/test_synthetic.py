"""The built-in synthetic EM volume: deterministic, realistic fractions, and not solvable by a threshold."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from fiji_emseg.engine.data.synthetic import (
    SYNTHETIC_CLASSES,
    make_synthetic_sample,
    write_synthetic_dataset,
)
from fiji_emseg.engine.data.volume_io import Calibration, read_volume
from fiji_emseg.errors import ConfigError, OutputError


@pytest.fixture(scope="module")
def default_sample():  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    sample = make_synthetic_sample()
    return sample, time.perf_counter() - start


def _best_threshold_f1(image: np.ndarray, truth: np.ndarray) -> tuple[float, int]:
    """F1 of the best global threshold 'image <= t' (an oracle: the threshold is tuned on the truth)."""
    hist_all = np.bincount(image.ravel(), minlength=256)
    hist_fg = np.bincount(image[truth.astype(bool)].ravel(), minlength=256)
    predicted = np.cumsum(hist_all)  # voxels with value <= t
    tp = np.cumsum(hist_fg)
    f1 = 2 * tp / (predicted + truth.sum())
    t = int(np.argmax(f1))
    return float(f1[t]), t


def test_default_sample_is_well_formed(default_sample) -> None:  # type: ignore[no-untyped-def]
    s, _ = default_sample
    assert s.name == "synthetic" and s.shape == (16, 256, 256)
    assert s.image.dtype == np.uint8
    assert s.class_names == SYNTHETIC_CLASSES == ("mitochondria", "membrane")
    assert s.calibration == Calibration((40.0, 5.0, 5.0), "nm")
    assert s.masks is not None and s.masks.dtype == np.uint8 and s.masks.shape == (2, 16, 256, 256)
    assert set(np.unique(s.masks)) == {0, 1}
    assert not (s.masks[0] & s.masks[1]).any()  # mutually exclusive: softmax models can use it too
    assert 20 < s.image.std() and 60 < s.image.mean() < 200  # uses the grey range, not saturated


def test_generation_is_fast(default_sample) -> None:  # type: ignore[no-untyped-def]
    _, seconds = default_sample
    assert seconds < 2.0, f"16x256x256 took {seconds:.2f} s"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_foreground_fractions_are_realistic(seed: int) -> None:
    s = make_synthetic_sample((8, 256, 256), seed=seed)
    assert s.masks is not None
    mito, membrane = (float(m.mean()) for m in s.masks)
    assert 0.05 <= mito <= 0.15, mito
    assert 0.05 <= membrane <= 0.20, membrane


def test_same_seed_same_volume_other_seed_other_volume() -> None:
    a = make_synthetic_sample((4, 96, 128), seed=7, name="a")
    b = make_synthetic_sample((4, 96, 128), seed=7, name="b")
    c = make_synthetic_sample((4, 96, 128), seed=8)
    assert a.masks is not None and b.masks is not None and c.masks is not None
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.image, c.image) and not np.array_equal(a.masks, c.masks)
    assert (a.name, b.name) == ("a", "b")


def test_a_global_threshold_cannot_find_the_membranes(default_sample) -> None:  # type: ignore[no-untyped-def]
    s, _ = default_sample
    membrane = s.masks[1]
    # membranes are visible: clearly darker than the rest of the image ...
    assert s.image[membrane == 1].mean() < s.image[membrane == 0].mean() - 30
    # ... but so are mitochondrial membranes, cristae and vesicles: even the best threshold is poor
    f1, t = _best_threshold_f1(s.image, membrane)
    assert 0.2 < f1 < 0.75, f"best threshold {t} gives membrane F1 {f1:.3f}"
    dark_other = (s.image <= t) & (membrane == 0)
    assert dark_other[s.masks[0] == 1].mean() > 0.2  # mitochondria contribute false positives


def test_unlabelled_vesicles_are_dark_distractors() -> None:
    with_v = make_synthetic_sample((4, 192, 192), seed=3)
    without = make_synthetic_sample((4, 192, 192), seed=3, vesicles=False)
    assert with_v.masks is not None and without.masks is not None
    assert np.array_equal(with_v.masks, without.masks)  # not labelled

    def dark_background(s) -> int:  # type: ignore[no-untyped-def]
        background = (s.masks.sum(axis=0) == 0) & ~ndimage.binary_dilation(s.masks.any(axis=0), iterations=3)
        return int(((s.image < 110) & background).sum())

    assert dark_background(with_v) > 2 * dark_background(without) + 200


def test_structures_continue_over_several_slices(default_sample) -> None:  # type: ignore[no-untyped-def]
    s, _ = default_sample
    membrane = s.masks[1].astype(bool)
    near = ndimage.binary_dilation(membrane, np.ones((1, 5, 5), bool))
    continued = [(membrane[z + 1] & near[z]).sum() / membrane[z + 1].sum() for z in range(s.shape[0] - 1)]
    assert min(continued) > 0.5  # most membrane pixels lie near the previous slice's membranes
    labels, n = ndimage.label(s.masks[0])
    depth = [sl[0].stop - sl[0].start for sl in ndimage.find_objects(labels)]
    assert n >= 10 and np.median(depth) >= 3  # mitochondria are 3D objects, not single-slice blobs


def test_small_and_odd_shapes_work() -> None:
    for shape in [(1, 64, 64), (3, 48, 100), (1, 32, 32)]:
        s = make_synthetic_sample(shape, seed=1)
        assert s.shape == shape and s.masks is not None
        assert float(s.masks[0].mean()) <= 0.2  # a single mitochondrion never swamps a small image


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"shape": (16, 20, 256)}, r"shape must be \(Z, Y, X\) with Z >= 1 and Y, X >= 32, got \(16, 20, 256\)"),
    ({"shape": (256, 256)}, r"shape must be \(Z, Y, X\)"),
    ({"voxel_size": (40.0, 0.0, 5.0)}, r"voxel size must be three positive numbers"),
    ({"mito_fraction": 0.5}, r"mitochondria fraction must be between 0 and 0.3, got 0.5"),
])
def test_bad_arguments_are_config_errors(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=message):
        make_synthetic_sample(**kwargs)


def test_write_synthetic_dataset(tmp_path: Path) -> None:
    paths = write_synthetic_dataset(tmp_path / "demo", (3, 64, 80), seed=2)
    assert [p.name for p in paths] == ["image.tif", "mitochondria.tif", "membrane.tif"]
    ref = make_synthetic_sample((3, 64, 80), seed=2)
    assert ref.masks is not None
    image, cal = read_volume(paths[0])
    assert np.array_equal(image, ref.image) and cal == Calibration((40.0, 5.0, 5.0), "nm")
    for path, mask in zip(paths[1:], ref.masks, strict=True):
        data, mcal = read_volume(path)
        assert data.dtype == np.uint8 and set(np.unique(data)) == {0, 255}
        assert np.array_equal(data, mask * 255) and mcal == cal


def test_write_synthetic_dataset_never_overwrites_silently(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "membrane.tif").write_bytes(b"mine")
    with pytest.raises(OutputError, match=r"membrane\.tif already exists.*--overwrite"):
        write_synthetic_dataset(folder, (1, 64, 64))
    assert sorted(p.name for p in folder.iterdir()) == ["membrane.tif"]  # nothing half-written
    assert (folder / "membrane.tif").read_bytes() == b"mine"
    write_synthetic_dataset(folder, (1, 64, 64), overwrite=True)
    assert read_volume(folder / "membrane.tif")[0].shape == (1, 64, 64)
