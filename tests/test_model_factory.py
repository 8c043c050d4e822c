"""Model factory: every architecture option takes effect; configs and weights round-trip safely."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from fiji_emseg.engine.models.architectures import build_model
from fiji_emseg.engine.models.model_config import ModelConfig
from fiji_emseg.engine.models.model_store import (
    ModelInfo,
    load_model,
    load_weights,
    read_model_info,
    save_weights,
    write_model_info,
)
from fiji_emseg.engine.models.receptive_field import measure_config_receptive_field, measure_receptive_field
from fiji_emseg.engine.models.unet import count_parameters
from fiji_emseg.errors import ConfigError, ModelFileError


def _types(net: nn.Module) -> set[type]:
    return {type(m) for m in net.modules()}


def test_default_is_deepscem_published_model() -> None:
    cfg = ModelConfig()
    assert (cfg.dims, cfg.depth, cfg.filters, cfg.residual, cfg.convs_per_block) == (2, 5, 32, True, 2)
    net = build_model(cfg)
    n = count_parameters(net)
    assert 7.9e6 < n < 8.3e6, n  # DeepSCEM: 8.1 M parameters
    assert cfg.name == "unet2d_f32_d5"
    assert cfg.spatial_multiple == (1, 16, 16)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 4


@pytest.mark.parametrize("norm, expected, absent", [
    ("batch", nn.BatchNorm2d, (nn.GroupNorm, nn.InstanceNorm2d)),
    ("group", nn.GroupNorm, (nn.BatchNorm2d, nn.InstanceNorm2d)),
    ("instance", nn.InstanceNorm2d, (nn.BatchNorm2d, nn.GroupNorm)),
])
def test_normalisation_option_takes_effect(norm: str, expected: type, absent: tuple[type, ...]) -> None:
    net = build_model(ModelConfig(depth=3, filters=8, norm=norm))  # type: ignore[arg-type]
    types = _types(net)
    assert expected in types
    assert not any(a in types for a in absent)


def test_no_normalisation_uses_biases_and_changes_output() -> None:
    torch.manual_seed(0)
    plain = build_model(ModelConfig(depth=2, filters=4, norm="none"))
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) for m in plain.modules())
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    batch = build_model(ModelConfig(depth=2, filters=4, norm="batch"))
    assert all(c.bias is None for c in batch.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3))


def test_residual_plain_blocks_dropout_kernel_and_blocks() -> None:
    res = build_model(ModelConfig(depth=3, filters=8))
    plain = build_model(ModelConfig(depth=3, filters=8, residual=False))
    assert count_parameters(res) > count_parameters(plain)  # 1x1 projections on the shortcut
    drop = build_model(ModelConfig(depth=3, filters=8, dropout=0.3))
    drops = [m for m in drop.modules() if isinstance(m, nn.Dropout2d)]
    assert len(drops) == 5 and all(d.p == 0.3 for d in drops)  # one per encoder and decoder level
    k5 = build_model(ModelConfig(depth=2, filters=4, kernel_size=5))
    assert {m.kernel_size for m in k5.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)} == {(5, 5)}
    more = build_model(ModelConfig(depth=2, filters=4, blocks_per_level=2, convs_per_block=3))
    base = build_model(ModelConfig(depth=2, filters=4))
    n_conv = lambda net: sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in net.modules())  # noqa: E731
    assert n_conv(more) == 3 * n_conv(base)


@pytest.mark.parametrize("output, classes, channels", [("sigmoid", ("a", "b"), 2), ("softmax", ("a", "b"), 3)])
def test_output_channels(output: str, classes: tuple[str, ...], channels: int) -> None:
    cfg = ModelConfig(classes=classes, depth=2, filters=4, output=output)  # type: ignore[arg-type]
    net = build_model(cfg).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 20, 28))
    assert out.shape == (1, channels, 20, 28)


def test_3d_model_anisotropic_pooling() -> None:
    cfg = ModelConfig(dims=3, depth=3, filters=4, z_poolings=1)
    assert cfg.spatial_multiple == (2, 4, 4)
    assert cfg.name == "unet3d_f4_d3"
    net = build_model(cfg).eval()
    pools = [m.kernel_size for m in net.modules() if isinstance(m, nn.MaxPool3d)]
    assert pools == [(2, 2, 2), (1, 2, 2)]
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 6, 12, 16)).shape == (1, 1, 6, 12, 16)


@pytest.mark.parametrize("bad, message", [
    ({"dims": 4}, "dims must be 2 or 3"),
    ({"depth": 0}, "depth"),
    ({"norm": "layer"}, "unknown normalisation"),
    ({"kernel_size": 4}, "odd"),
    ({"dropout": 1.5}, "dropout"),
    ({"classes": ("a", "a")}, "unique"),
    ({"norm": "group", "filters": 12, "groups": 8}, "divisible"),
    ({"z_poolings": 7}, "z_poolings"),
])
def test_invalid_configs_are_rejected(bad: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**bad)


def test_config_json_round_trip(tmp_path: Path) -> None:
    cfg = ModelConfig(classes=("mito", "er"), dims=3, depth=4, filters=16, residual=False, norm="group",
                      dropout=0.1, output="softmax", z_poolings=2, extra={"x": 1})
    info = ModelInfo(cfg)
    write_model_info(tmp_path, info)
    back = read_model_info(tmp_path)
    assert back.model == cfg
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["name"] == "unet3d_f16_d4_plain" and raw["format"] == "fiji-emseg-model"


def test_weights_are_safetensors_and_reload_exactly(tmp_path: Path) -> None:
    cfg = ModelConfig(depth=2, filters=4)
    torch.manual_seed(1)
    net = build_model(cfg)
    save_weights(net, tmp_path / "weights.safetensors")
    write_model_info(tmp_path, ModelInfo(cfg))
    # safetensors: a JSON header, never a pickle
    head = (tmp_path / "weights.safetensors").read_bytes()[:8]
    assert int.from_bytes(head, "little") > 0
    loaded = load_model(tmp_path)
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.module.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert not loaded.module.training


def test_weights_that_do_not_fit_name_the_problem(tmp_path: Path) -> None:
    save_weights(build_model(ModelConfig(depth=2, filters=4)), tmp_path / "weights.safetensors")
    with pytest.raises(ModelFileError, match="does not fit the architecture.*different shape"):
        load_weights(build_model(ModelConfig(depth=2, filters=8)), tmp_path / "weights.safetensors")


def test_corrupt_model_files_give_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="config.json is damaged"):
        read_model_info(tmp_path)
    write_model_info(tmp_path, ModelInfo(ModelConfig(depth=2, filters=4)))
    (tmp_path / "weights.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelFileError, match="weights.safetensors is damaged"):
        load_model(tmp_path)
    with pytest.raises(ModelFileError, match="not a fiji-emseg model folder"):
        read_model_info(tmp_path / "..")
    with pytest.raises(ModelFileError, match="does not exist"):
        read_model_info(tmp_path / "missing")


def test_custom_module_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "mynets.py"
    pkg.write_text(textwrap.dedent("""
        import torch
        def tiny(config):
            return torch.nn.Conv2d(config.in_channels, config.out_channels, 3, padding=1)
        def wrong(config):
            return torch.nn.Conv2d(1, 5, 3)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = ModelConfig(classes=("a", "b"), architecture="mynets:tiny", depth=1)
    net = build_model(cfg)
    assert isinstance(net, nn.Conv2d) and net.out_channels == 2
    save_weights(net, tmp_path / "weights.safetensors")
    write_model_info(tmp_path, ModelInfo(cfg))
    with pytest.raises(ModelFileError, match="trust_custom_code"):
        load_model(tmp_path)
    assert isinstance(load_model(tmp_path, trust_custom_code=True).module, nn.Conv2d)
    with pytest.raises(ConfigError, match="expected"):
        build_model(ModelConfig(architecture="mynets:wrong", depth=1))
    with pytest.raises(ModelFileError, match="cannot import"):
        build_model(ModelConfig(architecture="no_such_module_xyz:f", depth=1))
    sys.modules.pop("mynets", None)


def test_receptive_field_is_measured_exactly() -> None:
    # depth 2, one 3x3 conv per block, plain: radius = 1 (enc0) + 1 (pool) + 2 (bottom conv at scale 2)
    #   + 1 (transposed conv) + 1 (dec0) = 5 pixels in theory; the measurement must find it.
    cfg = ModelConfig(depth=2, filters=4, convs_per_block=1, residual=False)
    assert measure_config_receptive_field(cfg).radius == (0, 5, 5)
    # a single 5x5 convolution has radius 2
    conv = nn.Conv2d(1, 1, 5, padding=2)
    assert measure_receptive_field(conv, 2, (1, 1, 1)).radius == (0, 2, 2)
    # the thin-copy shortcut agrees with measuring the real network
    cfg = ModelConfig(depth=3, filters=8)
    assert measure_config_receptive_field(cfg).radius == measure_receptive_field(build_model(cfg), 2, cfg.spatial_multiple).radius
    # default model: the field notes' "about 200 px" receptive field
    r = measure_config_receptive_field(ModelConfig()).radius[1]
    assert 80 < r < 110, r
    gn = measure_config_receptive_field(ModelConfig(depth=2, filters=8, norm="group"))
    assert gn.global_context
