"""Losses honour the ignore mask and class weights; the sampler honours label focus; augmentation keeps alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fiji_emseg.engine.data.normalization import NormalizationConfig
from fiji_emseg.engine.data.sample import Sample
from fiji_emseg.engine.training.augment import AugmentConfig, augment_patch
from fiji_emseg.engine.training.losses import LOSSES, SegmentationLoss
from fiji_emseg.engine.training.sampling import BatchStream, OccupancyGrid, PatchSampler, TrainingVolume
from fiji_emseg.errors import ConfigError, InputDataError


def _targets(output: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    if output == "sigmoid":
        t = (torch.rand(2, 2, 16, 16, generator=gen) > 0.7).long()
        perfect = (t.float() * 2 - 1) * 12  # logits agreeing with the target
        return t, perfect
    t = torch.randint(0, 3, (2, 16, 16), generator=gen)
    perfect = torch.nn.functional.one_hot(t, 3).movedim(-1, 1).float() * 24 - 12
    return t, perfect


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
def test_losses_prefer_correct_predictions(name: str, output: str) -> None:
    loss = SegmentationLoss(name, output, 2)
    target, perfect = _targets(output)
    worst = -perfect
    good, bad = float(loss(perfect, target)), float(loss(worst, target))
    assert np.isfinite(good) and np.isfinite(bad)
    assert good < 0.05 and bad > good + 0.3, (good, bad)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
def test_voxels_outside_the_annotated_region_do_not_count(name: str, output: str) -> None:
    loss = SegmentationLoss(name, output, 2)
    target, perfect = _targets(output)
    valid = torch.zeros(2, 16, 16, dtype=torch.bool)
    valid[:, :8] = True
    corrupted = perfect.clone()
    corrupted[..., 8:, :] = -perfect[..., 8:, :]  # wrong only where ignored
    assert float(loss(corrupted, target, valid)) == pytest.approx(float(loss(perfect, target, valid)), abs=1e-6)
    assert float(loss(corrupted, target)) > float(loss(perfect, target)) + 0.1


def test_class_weights_shift_the_loss() -> None:
    target, perfect = _targets("sigmoid")
    logits = perfect.clone()
    logits[:, 1] = -logits[:, 1]  # class 1 wrong, class 0 right
    light = SegmentationLoss("weighted_dice", "sigmoid", 2, class_weights=[1.0, 0.01])
    heavy = SegmentationLoss("weighted_dice", "sigmoid", 2, class_weights=[0.01, 1.0])
    assert float(light(logits, target)) < 0.1 < float(heavy(logits, target))
    ce_light = SegmentationLoss("ce", "sigmoid", 2, class_weights=[1.0, 0.01])
    ce_heavy = SegmentationLoss("ce", "sigmoid", 2, class_weights=[0.01, 1.0])
    assert float(ce_light(logits, target)) < float(ce_heavy(logits, target))
    with pytest.raises(ConfigError, match="one weight per class"):
        SegmentationLoss("dice", "sigmoid", 2, class_weights=[1.0])
    with pytest.raises(ConfigError, match="unknown loss"):
        SegmentationLoss("hinge", "sigmoid", 2)


def _sparse_sample(fg_fraction: float = 0.002, seed: int = 0) -> Sample:
    rng = np.random.default_rng(seed)
    shape = (4, 256, 256)
    masks = np.zeros((2, *shape), dtype=np.uint8)
    masks[0] = rng.random(shape) < fg_fraction  # sparse isolated voxels
    masks[1, 2, 100:104, 100:104] = 1  # one tiny object
    image = rng.integers(0, 255, shape, dtype=np.uint8)
    return Sample("sparse", image, masks, ("dots", "speck"))


@pytest.mark.parametrize("focus", [0.0, 0.3, 0.8, 1.0])
def test_label_focus_fraction_is_honoured(focus: float) -> None:
    vol = TrainingVolume.prepare(_sparse_sample(fg_fraction=0.0002), NormalizationConfig(), "sigmoid")
    rng = np.random.default_rng(1)
    n = 3000

    def hits(f: float) -> tuple[float, float]:
        sampler = PatchSampler([vol], (16, 16), f, AugmentConfig.none(), dims=2)
        focused = labelled = 0
        for _ in range(n):
            _, target, _, was_focused = sampler.draw(rng)
            focused += was_focused
            labelled += bool(target.any())
        return focused / n, labelled / n

    measured, labelled = hits(focus)
    assert abs(measured - focus) < 0.03, measured
    # focused patches always contain a labelled voxel; random ones rarely do (measured baseline)
    _, baseline = hits(0.0)
    assert baseline < 0.15
    assert abs(labelled - (focus + (1 - focus) * baseline)) < 0.04, (labelled, baseline)
    if focus == 1.0:  # a random *class* is drawn: the single tiny 'speck' gets about half the patches
        sampler = PatchSampler([vol], (16, 16), 1.0, AugmentConfig.none(), dims=2)
        speck = sum(bool(sampler.draw(rng)[1][1].any()) for _ in range(400)) / 400
        assert 0.4 < speck < 0.62, speck


def test_occupancy_grid_samples_only_and_uniformly_labelled_voxels() -> None:
    mask = np.zeros((2, 70, 90), dtype=np.uint8)
    mask[0, 5, 5] = 1
    mask[1, 60:62, 80:82] = 1  # 4 voxels in another block
    grid = OccupancyGrid(mask)
    assert grid.total == 5
    rng = np.random.default_rng(0)
    draws = [grid.sample(rng) for _ in range(5000)]
    assert all(mask[d] for d in draws)
    share = sum(d == (0, 5, 5) for d in draws) / len(draws)
    assert abs(share - 0.2) < 0.03  # each labelled voxel equally likely


def test_random_patches_stay_in_the_annotated_region() -> None:
    s = _sparse_sample()
    region = np.zeros(s.shape, dtype=bool)
    region[1] = True
    s = Sample(s.name, s.image, s.masks, s.class_names, annotated=region)
    vol = TrainingVolume.prepare(s, NormalizationConfig(), "sigmoid")
    sampler = PatchSampler([vol], (16, 16), 0.5, AugmentConfig.none(), dims=2)
    rng = np.random.default_rng(0)
    for _ in range(200):
        _, _, valid, _ = sampler.draw(rng)
        assert valid is not None and valid.all()  # every patch comes from the annotated slice


def test_softmax_needs_exclusive_classes() -> None:
    s = _sparse_sample()
    masks = s.masks.copy()
    masks[1] = masks[0]
    with pytest.raises(InputDataError, match="overlap.*sigmoid"):
        TrainingVolume.prepare(Sample("x", s.image, masks, s.class_names), NormalizationConfig(), "softmax")


def test_augmentation_keeps_image_target_and_mask_aligned() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((1, 32, 32)).astype(np.float32)
    target = (image > 0.5).astype(np.uint8)[None]  # target is a function of the image
    valid = image > 0.2
    cfg = AugmentConfig(brightness=0.0, contrast=0.0, gamma=0.0, noise=0.0)
    seen = set()
    for _ in range(40):
        im, tg, va = augment_patch(image, target, valid, cfg, rng)
        assert np.array_equal(tg[0], (im > 0.5).astype(np.uint8))
        assert va is not None and np.array_equal(va, im > 0.2)
        seen.add(im.tobytes())
    assert len(seen) >= 6  # flips and rotations really vary the patch
    # intensity augmentation changes the image but never the target
    im, tg, _ = augment_patch(image, target, None, AugmentConfig(p_intensity=1.0, flips=False, rot90=False, flip_z=False), rng)
    assert not np.allclose(im, image) and np.array_equal(tg, target)


def _blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A smooth random field: objects wide enough that resampling moves only their boundaries."""
    from scipy import ndimage as ndi

    field = ndi.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 4.0)
    return ((field - field.min()) / (field.max() - field.min())).astype(np.float32)


def test_spatial_augmentation_moves_image_target_and_mask_together() -> None:
    image = _blobs((1, 96, 96), 0)
    target = np.stack([(image > 0.5), (image > 0.6)]).astype(np.uint8)  # (C, Z, Y, X), functions of the image
    valid = image > 0.2
    cfg = AugmentConfig(flips=False, rot90=False, flip_z=False, p_intensity=0.0, p_spatial=1.0)
    rng = np.random.default_rng(1)
    changed = []
    for _ in range(10):
        im, tg, va = augment_patch(image, target, valid, cfg, rng)
        assert im.shape == image.shape and tg.shape == target.shape and tg.dtype == np.uint8
        assert set(np.unique(tg)) <= {0, 1} and va is not None and va.dtype == bool
        # linear image vs nearest masks: they disagree only on a thin boundary
        assert np.mean(tg[0] != (im > 0.5)) < 0.03 and np.mean(tg[1] != (im > 0.6)) < 0.03
        assert np.mean(va != (im > 0.2)) < 0.03
        changed.append(np.mean(tg[0] != target[0]))
    assert min(changed) > 0.02  # every patch was really moved
    # no transform at all: rotation 0, zoom 1, no elastic -> exactly the input
    still = AugmentConfig(flips=False, rot90=False, flip_z=False, p_intensity=0.0, p_spatial=1.0, rotation=0.0,
                          scale=0.0, elastic=0.0)
    im, tg, va = augment_patch(image, target, valid, still, rng)
    assert np.array_equal(im, image) and np.array_equal(tg, target) and np.array_equal(va, valid)
    # the same seed, the same patch; p_spatial 0 draws no random numbers (old seeds keep their patches)
    a = augment_patch(image, target, None, cfg, np.random.default_rng(5))[0]
    b = augment_patch(image, target, None, cfg, np.random.default_rng(5))[0]
    assert np.array_equal(a, b)
    r1, r2 = np.random.default_rng(7), np.random.default_rng(7)
    augment_patch(image, target, None, AugmentConfig(), r1)
    augment_patch(image, target, None, AugmentConfig(p_spatial=0.0, elastic=3.0), r2)
    assert r1.random() == r2.random()


def test_spatial_augmentation_of_a_3d_patch_is_the_same_for_every_slice_and_keeps_labels() -> None:
    plane = _blobs((1, 64, 64), 2)
    image = np.repeat(plane, 6, axis=0)
    labels = np.digitize(image, [0.3, 0.6]).astype(np.int64)  # softmax targets: a label map 0/1/2
    cfg = AugmentConfig(flips=False, rot90=False, flip_z=False, p_intensity=0.0, p_spatial=1.0)
    im, tg, _ = augment_patch(image, labels, None, cfg, np.random.default_rng(3))
    assert all(np.array_equal(im[0], im[z]) for z in range(6)) and all(np.array_equal(tg[0], tg[z]) for z in range(6))
    assert set(np.unique(tg)) <= {0, 1, 2} and tg.dtype == np.int64


def test_spatial_augmentation_settings_are_checked_and_saved() -> None:
    cfg = AugmentConfig(p_spatial=0.3, rotation=45.0, scale=0.1, elastic=4.0)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    from fiji_emseg.engine.training.train_config import TrainConfig

    assert TrainConfig().replace(augment=cfg).augment == cfg  # an AugmentConfig, not only its dict
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("p_spatial", "rotation", "scale", "elastic")}
    assert AugmentConfig.from_dict(old).p_spatial == 0.0  # a config.json from before: no spatial transform
    for bad, match in (({"p_spatial": 1.5}, "p_spatial must be a probability"), ({"rotation": 270.0}, "0 to 180"),
                       ({"scale": 1.0}, "scale must be in"), ({"elastic": -1.0}, "elastic must be")):
        with pytest.raises(ConfigError, match=match):
            AugmentConfig(**bad)


def test_batch_stream_resumes_the_same_sequence() -> None:
    vol = TrainingVolume.prepare(_sparse_sample(), NormalizationConfig(), "sigmoid")
    sampler = PatchSampler([vol], (16, 16), 0.8, AugmentConfig(), dims=2)
    rng = np.random.default_rng(5)
    with BatchStream(sampler, 4, rng) as stream:
        first = [stream.next() for _ in range(3)]
        state = stream.resume_state
        rest = [stream.next() for _ in range(2)]
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = state
    with BatchStream(sampler, 4, rng2) as stream2:
        again = [stream2.next() for _ in range(2)]
    for a, b in zip(rest, again, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.target, b.target)
    assert first[0].image.shape == (4, 1, 16, 16) and first[0].target.shape == (4, 2, 16, 16)
