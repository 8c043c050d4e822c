"""Deep supervision: the auxiliary losses are what nnU-Net defines, and the saved model is the plain U-Net."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from emseg_testdata import blob_sample
from safetensors.torch import load_file

from fiji_emseg.engine.models.architectures import build_model
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.training.deep_supervision import DeepSupervision
from fiji_emseg.engine.training.losses import SegmentationLoss
from fiji_emseg.engine.training.train_config import TrainConfig
from fiji_emseg.engine.training.trainer import train_model
from fiji_emseg.errors import ConfigError


def _decoder_outputs(net: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every decoder level's output, computed by hand (coarsest first), as UNet.forward does."""
    skips, outs = [], []
    for i, enc in enumerate(net.encoders):
        x = enc(x)
        if i < len(net.pools):
            skips.append(x)
            x = net.pools[i](x)
    for up, dec in zip(net.ups, net.decoders, strict=True):
        x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        outs.append(x)
    return outs


@pytest.mark.parametrize("output", ["sigmoid", "softmax"])
def test_the_loss_is_the_weighted_sum_over_levels_against_downsampled_targets(output: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig(classes=("a", "b"), depth=4, filters=4, output=output)
    net = build_model(config).eval()
    ds = DeepSupervision(net, 2, config.out_channels)
    loss_fn = SegmentationLoss("dice_ce", output, 2)
    x = torch.randn(2, 1, 32, 32)
    if output == "sigmoid":
        y = (torch.rand(2, 2, 32, 32) > 0.6).float()
    else:
        y = torch.randint(0, 3, (2, 32, 32))
    valid = torch.rand(2, 32, 32) > 0.2
    ds.capturing = True
    logits = net(x)
    aux = ds()
    got = ds.loss(loss_fn, logits, aux, y, valid)
    assert [tuple(a.shape[2:]) for a in aux] == [(16, 16), (8, 8)]
    with torch.no_grad():
        outs = _decoder_outputs(net, x)
        half, quarter = ds.heads[0](outs[-2]), ds.heads[1](outs[-3])
        expected = (loss_fn(logits, y, valid) + 0.5 * loss_fn(half, y[..., ::2, ::2], valid[..., ::2, ::2])
                    + 0.25 * loss_fn(quarter, y[..., ::4, ::4], valid[..., ::4, ::4])) / 1.75
    assert float(got.detach()) == pytest.approx(float(expected), rel=1e-5)
    got.backward()
    assert all(float(h.weight.grad.abs().sum()) > 0 for h in ds.heads)  # the heads are trained


def test_hooks_keep_nothing_unless_capturing_and_levels_are_checked() -> None:
    with pytest.raises(ConfigError, match="use depth 3 or more"):
        DeepSupervision(build_model(ModelConfig(classes=("a",), depth=2, filters=4)), 1, 1)
    config = ModelConfig(classes=("a",), depth=3, filters=4)
    net = build_model(config)
    with pytest.raises(ConfigError, match="use 1 to 1, or 0 for off"):
        DeepSupervision(net, 2, config.out_channels)
    ds = DeepSupervision(net, 1, config.out_channels)
    net(torch.randn(1, 1, 16, 16))  # validation, mining, prediction: nothing kept
    with pytest.raises(RuntimeError, match="captured no decoder output"):
        ds()
    with pytest.raises(ConfigError, match="deep supervision must be 0"):
        TrainConfig(deep_supervision=-1)


@pytest.mark.parametrize("model", [
    {"dims": 3, "depth": 3, "filters": 4, "z_poolings": 0},  # anisotropic: Z never pooled
    {"dims": 3, "depth": 3, "filters": 4, "slice_context": 1},  # 2.5D: the inner 2D U-Net's levels
])
def test_3d_and_2_5d_networks_train_with_it_and_save_the_plain_model(tmp_path: Path, model: dict) -> None:
    config = ModelConfig(classes=("bright",), **model)
    patch = (32, 32) if config.slice_context else (4, 32, 32)  # 2.5D: (Y, X), the slices added
    cfg = TrainConfig(epochs=1, steps_per_epoch=3, batch_size=2, patch_size=patch, val_steps=1, seed=1,
                      bn_recalibration_batches=1, val_slices="6-7", deep_supervision=1, calibrate_thresholds=False)
    net = build_model(config)
    result = train_model([blob_sample()], tmp_path / "m", model_config=config, config=cfg, module=net)
    assert result.status == "completed"
    assert not any(m._forward_hooks for m in net.modules())  # the hooks went with the training
    saved = load_file(str(tmp_path / "m" / "weights.safetensors"))
    assert set(saved) == set(build_model(config).state_dict())  # no auxiliary head in the model
    info = (tmp_path / "m" / "config.json").read_text()
    assert '"deep_supervision": 1' in info
