"""The Sample data model and its checks: every user error names the problem and the fix."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from fiji_emseg.engine.data.sample import (
    Sample,
    as_binary_mask,
    as_image_volume,
    check_finite,
    check_min_size,
    class_name_from_path,
    load_sample,
    parse_slice_ranges,
    slices_to_region,
    validate_dataset,
)
from fiji_emseg.engine.data.volume_io import Calibration, write_volume
from fiji_emseg.errors import EmsegWarning, InputDataError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _sample(name: str = "s", classes: tuple[str, ...] = ("mito",), shape: tuple[int, int, int] = (4, 16, 16),
            fill: int = 1) -> Sample:
    masks = np.zeros((len(classes), *shape), np.uint8)
    masks[:, :, 2:6, 2:6] = fill
    return Sample(name, np.zeros(shape, np.uint8), masks, classes)


# ---------------------------------------------------------------- shapes


def test_mask_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(InputDataError) as err:
        Sample("cell1", np.zeros((4, 16, 16)), np.zeros((1, 4, 16, 15), np.uint8), ("mito",))
    msg = str(err.value)
    assert "cell1" in msg and "4×16×15 (Z×Y×X)" in msg and "4×16×16 (Z×Y×X)" in msg
    assert "same number of slices" in msg


def test_load_sample_mask_file_of_wrong_size_names_the_file(tmp_path: Path) -> None:
    write_volume(tmp_path / "image.tif", np.zeros((3, 20, 30), np.uint8))
    write_volume(tmp_path / "mito.tif", np.zeros((2, 20, 30), np.uint8))
    with pytest.raises(InputDataError) as err:
        load_sample(tmp_path / "image.tif", [tmp_path / "mito.tif"])
    msg = str(err.value)
    assert msg.startswith("mito.tif:") and "2×20×30" in msg and "3×20×30" in msg


def test_mask_and_class_name_counts_must_agree(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match=r"s: 2 mask volumes but 1 class names \['a'\]; give one name per mask"):
        Sample("s", np.zeros((2, 8, 8)), np.zeros((2, 2, 8, 8), np.uint8), ("a",))
    img = np.zeros((2, 8, 8), np.uint8)
    with pytest.raises(InputDataError, match=r"1 masks but 2 class names; give one name per mask"):
        load_sample(img, [np.zeros((2, 8, 8), np.uint8)], ["a", "b"])
    with pytest.raises(InputDataError, match=r"class names must be unique, got \['a', 'a'\]"):
        load_sample(img, [np.zeros((2, 8, 8), np.uint8)] * 2, ["a", "a"])


def test_images_that_are_not_grayscale_stacks_are_refused() -> None:
    with pytest.raises(InputDataError, match=r"looks like an RGB image.*Type > 8-bit"):
        as_image_volume(np.zeros((40, 50, 3), np.uint8), "photo")
    with pytest.raises(InputDataError, match=r"pixel type complex64 is not a grayscale number type"):
        as_image_volume(np.zeros((2, 5, 5), np.complex64))
    with pytest.raises(InputDataError, match=r"expected a 2D image or a \(Z, Y, X\) stack, got 4 dimensions"):
        as_image_volume(np.zeros((2, 5, 5, 2)))
    with pytest.raises(InputDataError, match=r"the image is empty"):
        as_image_volume(np.zeros((0, 5, 5)))
    assert as_image_volume(np.zeros((5, 6))).shape == (1, 5, 6)


# ---------------------------------------------------------------- mask values


@pytest.mark.parametrize("values", [(0, 1), (0, 255)])
def test_binary_masks_0_1_and_0_255_become_0_1(values: tuple[int, int]) -> None:
    m = np.array([[values[0], values[1]], [values[1], values[0]]], np.uint8)
    out = as_binary_mask(m)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 2)
    assert np.array_equal(out[0], [[0, 1], [1, 0]])
    assert np.array_equal(as_binary_mask(m.astype(np.float32))[0], [[0, 1], [1, 0]])
    assert np.array_equal(as_binary_mask(m > 0)[0], [[0, 1], [1, 0]])


def test_non_binary_mask_lists_the_values_found() -> None:
    with pytest.raises(InputDataError) as err:
        as_binary_mask(np.array([[0, 1, 2, 7]], np.uint8), "labels.tif")
    msg = str(err.value)
    assert msg.startswith("labels.tif: mask is not binary (values found: 0, 1, 2, 7)")
    assert "0/1 or 0/255" in msg and "one binary mask per class" in msg


def test_probability_map_as_mask_asks_for_a_threshold() -> None:
    with pytest.raises(InputDataError) as err:
        as_binary_mask(np.array([[0.0, 0.25, 0.9]], np.float32), "prob.tif")
    msg = str(err.value)
    assert "values found: 0, 0.25, 0.9" in msg and "probability map; give a threshold" in msg


def test_long_value_lists_are_shortened_and_empty_masks_can_be_refused() -> None:
    with pytest.raises(InputDataError, match=r"values found: 0, 1, 2, 3, 4, 5, 6, 7, …\)"):
        as_binary_mask(np.arange(100, dtype=np.uint16).reshape(10, 10))
    with pytest.raises(InputDataError, match=r"the mask is empty \(no foreground voxel\)"):
        as_binary_mask(np.zeros((3, 3), np.uint8), allow_empty=False)


def test_sample_keeps_masks_0_1_whatever_it_is_given() -> None:
    s = Sample("s", np.zeros((2, 4, 4)), np.full((1, 2, 4, 4), 255, np.uint8), ("mito",))
    assert s.masks is not None and s.masks.dtype == np.uint8 and s.masks.max() == 1
    b = Sample("b", np.zeros((2, 4, 4)), np.ones((2, 4, 4), bool), ("mito",))
    assert b.masks is not None and b.masks.shape == (1, 2, 4, 4) and b.masks.max() == 1
    with pytest.raises(InputDataError) as err:
        Sample("bad", np.zeros((2, 4, 4)), np.full((1, 2, 4, 4), 0.5), ("mito",))
    assert "bad: mask 'mito': mask is not binary (values found: 0.5)" in str(err.value)


def test_load_sample_reads_0_255_mask_files_as_0_1(tmp_path: Path) -> None:
    img = np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8)
    mask = np.zeros((2, 8, 8), np.uint8)
    mask[:, 2:4, 2:4] = 255
    write_volume(tmp_path / "cell.tif", img, Calibration((40.0, 5.0, 5.0), "nm"))
    write_volume(tmp_path / "mito.tif", mask)
    s = load_sample(tmp_path / "cell.tif", [tmp_path / "mito.tif"])
    assert s.name == "cell" and s.class_names == ("mito",)
    assert s.masks is not None and np.array_equal(s.masks[0], mask // 255)
    assert np.array_equal(s.image, img) and s.calibration == Calibration((40.0, 5.0, 5.0), "nm")


def test_load_sample_with_a_non_binary_mask_file_names_it(tmp_path: Path) -> None:
    write_volume(tmp_path / "image.tif", np.zeros((2, 8, 8), np.uint8))
    write_volume(tmp_path / "labels.tif", np.arange(128, dtype=np.uint8).reshape(2, 8, 8) % 3)
    with pytest.raises(InputDataError, match=r"^labels\.tif: mask is not binary \(values found: 0, 1, 2\)"):
        load_sample(tmp_path / "image.tif", [tmp_path / "labels.tif"])


# ---------------------------------------------------------------- image values


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_pixels_are_refused_with_their_slice(bad: float) -> None:
    img = np.zeros((3, 4, 4), np.float32)
    img[2, 1, 1] = bad
    img[2, 3, 0] = bad
    with pytest.raises(InputDataError) as err:
        load_sample(img, name="em")
    msg = str(err.value)
    assert msg.startswith("em: 2 pixels are NaN or infinite (first in slice 2)") and "Remove NaNs" in msg
    check_finite(np.zeros((2, 2, 2), np.float32))  # finite images pass
    check_finite(np.zeros((2, 2, 2), np.uint8))


# ---------------------------------------------------------------- size


def test_too_small_image_says_which_patch_would_fit() -> None:
    s = Sample("tiny", np.zeros((4, 40, 100)), None, ())
    with pytest.raises(InputDataError) as err:
        check_min_size(s, (64, 64), 16)
    msg = str(err.value)
    assert "tiny: image 4×40×100 (Z×Y×X) is smaller than the training patch 1×64×64" in msg
    assert "Y: 40 < 64 (largest patch that fits: 32, a multiple of 16)" in msg and "X:" not in msg
    assert "choose a smaller patch size (--patch-size)" in msg
    check_min_size(s, (32, 96), 16)  # fits: no error


def test_image_smaller_than_one_network_step_says_no_patch_fits() -> None:
    s = Sample("sliver", np.zeros((4, 10, 100)), None, ())
    with pytest.raises(InputDataError) as err:
        check_min_size(s, (64, 64), (16, 16))
    msg = str(err.value)
    assert "Y: 10 < 64 (no patch fits: the network needs at least 16)" in msg and "fits: 0" not in msg
    with pytest.raises(InputDataError, match=r"Z: 4 < 8 \(largest patch that fits: 4, a multiple of 1\)"):
        check_min_size(s, (8, 8, 8), (1, 4, 4))


# ---------------------------------------------------------------- datasets


def test_samples_with_different_class_counts_are_refused() -> None:
    a, b = _sample("a", ("mito",)), _sample("b", ("mito", "er"))
    with pytest.raises(InputDataError) as err:
        validate_dataset([a, b])
    msg = str(err.value)
    assert "different class counts" in msg and "'a' has 1 ['mito']" in msg and "'b' has 2 ['mito', 'er']" in msg
    assert "same classes in the same order" in msg


def test_samples_with_differently_named_classes_are_refused() -> None:
    with pytest.raises(InputDataError, match=r"name their classes differently: \['mito'\] vs \['er'\] in 'b'"):
        validate_dataset([_sample("a", ("mito",)), _sample("b", ("er",))], role="validation")


def test_dataset_needs_samples_with_masks() -> None:
    with pytest.raises(InputDataError, match=r"no training samples given; give at least one image"):
        validate_dataset([])
    with pytest.raises(InputDataError, match=r"training sample 'raw' has no masks; give one mask per class"):
        validate_dataset([Sample("raw", np.zeros((1, 4, 4)), None, ())])


def test_class_empty_everywhere_warns_but_does_not_stop() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = validate_dataset([_sample("a", ("mito", "er"), fill=0), _sample("b", ("mito", "er"), fill=0)])
    assert names == ("mito", "er")
    messages = [str(w.message) for w in caught if issubclass(w.category, EmsegWarning)]
    assert len(messages) == 2 and "class 'mito' is empty in every training sample" in messages[0]
    assert "check the mask files" in messages[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_dataset([_sample("a", ("mito",), fill=1)])  # foreground present: silent


def test_foreground_outside_the_annotated_region_does_not_count() -> None:
    masks = np.zeros((1, 4, 8, 8), np.uint8)
    masks[0, 3, 2:4, 2:4] = 1  # only in slice 3
    s = Sample("s", np.zeros((4, 8, 8)), masks, ("mito",), annotated=slices_to_region([0, 1], (4, 8, 8)))
    with pytest.warns(EmsegWarning, match="class 'mito' is empty"):
        validate_dataset([s])


# ---------------------------------------------------------------- slice ranges and annotated slices


def test_parse_slice_ranges_zero_based() -> None:
    assert parse_slice_ranges("0-3, 5,7:8", 10) == [0, 1, 2, 3, 5, 7, 8]
    assert parse_slice_ranges(" 4 , 2-3,3 ") == [2, 3, 4]
    assert parse_slice_ranges("1,,2", 10) == [1, 2]
    assert parse_slice_ranges([3, 1, 3]) == [1, 3]
    assert parse_slice_ranges(None) == []


def test_parse_slice_ranges_one_based_as_in_fiji() -> None:
    assert parse_slice_ranges("1-3,10", 10, one_based=True) == [0, 1, 2, 9]
    with pytest.raises(InputDataError, match=r"slice numbers start at 1 \(as in Fiji\), got 0 in '0-3'"):
        parse_slice_ranges("0-3", 10, one_based=True)
    with pytest.raises(InputDataError, match=r"slice 11 is outside the stack, which has 10 slices \(numbered 1 to"):
        parse_slice_ranges("9-11", 10, one_based=True)


@pytest.mark.parametrize(("spec", "message"), [
    ("a-b", r"cannot read slice range 'a-b' in 'a-b'; write e\.g\. '0-11,14'"),
    ("-1", r"cannot read slice range '-1'"),
    ("1-2-3", r"cannot read slice range '1-2-3'"),
    ("3-1", r"slice range '3-1' goes backwards; write the smaller index first"),
    ("5-12", r"slice 12 is outside the stack, which has 10 slices \(numbered 0 to 9\); give slices inside it"),
])
def test_bad_slice_ranges_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(InputDataError, match=message):
        parse_slice_ranges(spec, 10)


def test_negative_slice_in_a_list_is_named() -> None:
    with pytest.raises(InputDataError, match=r"slice -1 is outside the stack, which has 10 slices"):
        parse_slice_ranges([-1, 3], 10)
    with pytest.raises(InputDataError, match=r"slice -2 is outside the stack"):
        parse_slice_ranges([-2])


def test_annotated_slices_limit_the_region(tmp_path: Path) -> None:
    img = np.zeros((5, 8, 8), np.uint8)
    mask = np.zeros((5, 8, 8), np.uint8)
    s = load_sample(img, [mask], ["mito"], annotated_slices="1,3")
    assert s.annotated is not None and list(s.annotated_slices()) == [1, 3]
    assert s.annotated[1].all() and not s.annotated[2].any()
    part = s.subset([1, 2, 3])
    assert part.name == "sample[1-3]" and part.shape == (3, 8, 8)
    assert part.annotated is not None and list(part.annotated_slices()) == [0, 2]
    assert s.subset([1, 3], name="odd").name == "odd"
    assert list(load_sample(img, [mask], ["mito"]).annotated_slices()) == [0, 1, 2, 3, 4]

    region = np.zeros((5, 8, 8), np.uint8)
    region[:, :4] = 255
    write_volume(tmp_path / "region.tif", region)
    both = load_sample(img, [mask], ["mito"], annotated=tmp_path / "region.tif", annotated_slices="2-3")
    assert both.annotated is not None and int(both.annotated.sum()) == 2 * 4 * 8
    with pytest.raises(InputDataError, match=r"slice 7 is outside the stack, which has 5 slices"):
        load_sample(img, [mask], ["mito"], annotated_slices="7")


def test_empty_or_misshapen_annotated_region_is_refused() -> None:
    with pytest.raises(InputDataError, match=r"s: the annotated region is empty; mark at least one annotated slice"):
        Sample("s", np.zeros((2, 4, 4)), None, (), annotated=np.zeros((2, 4, 4), bool))
    with pytest.raises(InputDataError, match=r"annotated-region shape 2×4×5 \(Z×Y×X\) does not match image shape "
                                             r"2×4×4 \(Z×Y×X\); give a region mask with the image's slices"):
        Sample("s", np.zeros((2, 4, 4)), None, (), annotated=np.ones((2, 4, 5), bool))


def test_class_names_default_to_mask_file_names() -> None:
    assert class_name_from_path("/data/cell_mito.tif") == "cell_mito"
    assert class_name_from_path("er.ome.tiff") == "er"
    assert class_name_from_path("x.TIF") == "x"
    assert class_name_from_path("vol.zarr") == "vol"
    assert class_name_from_path("/data/mito.ome.zarr/") == "mito"  # not 'mito.ome'
    assert class_name_from_path("ER.OME.ZARR") == "ER"
    assert class_name_from_path("membrane.n5") == "membrane"


# ---------------------------------------------------------------- real data


@pytest.mark.data
def test_real_isbi_sample_loads_with_binary_masks() -> None:
    folder = DATA / "isbi2012"
    if not (folder / "image.tif").exists():
        pytest.skip(f"real data not found in {folder}")
    s = load_sample(folder / "image.tif", [folder / "membrane.tif"], annotated_slices="0-11")
    assert s.shape == (30, 512, 512) and s.class_names == ("membrane",)
    assert s.masks is not None and s.masks.dtype == np.uint8 and s.masks.max() == 1
    assert 0.15 < float(s.masks.mean()) < 0.3  # about 22 % membrane, as documented
    assert list(s.annotated_slices()) == list(range(12))
    check_min_size(s, (256, 256), 16)
    assert validate_dataset([s]) == ("membrane",)
