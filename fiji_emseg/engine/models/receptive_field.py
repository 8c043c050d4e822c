"""Measuring a network's receptive field from its impulse response, rather than guessing it.

Tiled prediction equals whole-image prediction only if every kept output voxel lies at least one
receptive-field radius away from a tile edge, so the tiling halo comes from this measurement.

Method: on a float64 copy of the network, every weight is made positive and normalised
(each output a weighted average of its inputs), max-pooling becomes average pooling and
normalisation layers become affine maps. All activations are then positive, no ReLU is ever
inactive, and no contribution can cancel another, so the input gradient of the central output
voxel is non-zero exactly where some path reaches it: the theoretical receptive field,
measured on the real module graph. The result is united with the support of an ordinary input
gradient on random data, which covers custom modules whose operations the substitution
does not capture.

Group and instance normalisation compute statistics over the whole input, so strictly every
input voxel influences every output voxel; :attr:`ReceptiveField.global_context` then says
so, and the radius reported is that of the convolutional path.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["ReceptiveField", "measure_receptive_field", "measure_config_receptive_field"]

_NORMS_WITH_GLOBAL_STATS = (nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm)


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive-field radius per axis (z, y, x), in voxels; z is 0 for 2D models."""

    radius: tuple[int, int, int]
    global_context: bool = False

    @property
    def halo(self) -> tuple[int, int, int]:
        """Margin a tile must discard on each interior side for exact tiled output."""
        return self.radius

    def to_dict(self) -> dict[str, Any]:
        return {"radius": list(self.radius), "global_context": self.global_context, "method": "impulse-response"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReceptiveField:
        return cls(tuple(int(r) for r in d["radius"]), bool(d.get("global_context", False)))  # type: ignore[arg-type]


class _Affine(nn.Module):
    """Stands in for a normalisation layer: a positive per-channel scale, no statistics."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5 + 0.1


def _positive_copy(net: nn.Module) -> tuple[nn.Module, bool]:
    probe = copy.deepcopy(net).double().eval()
    global_ctx = False

    def swap(module: nn.Module) -> None:
        nonlocal global_ctx
        for name, child in module.named_children():
            if isinstance(child, (nn.MaxPool2d, nn.MaxPool3d)):
                cls = nn.AvgPool2d if isinstance(child, nn.MaxPool2d) else nn.AvgPool3d
                setattr(module, name, cls(child.kernel_size, child.stride, child.padding))
            elif isinstance(child, _NORMS_WITH_GLOBAL_STATS):
                global_ctx = True
                setattr(module, name, _Affine(0))
            elif isinstance(child, (nn.BatchNorm2d, nn.BatchNorm3d, nn.BatchNorm1d)):
                setattr(module, name, _Affine(child.num_features))
            elif isinstance(child, (nn.Dropout, nn.Dropout2d, nn.Dropout3d)):
                setattr(module, name, nn.Identity())
            else:
                swap(child)

    swap(probe)
    with torch.no_grad():
        for p in probe.parameters():
            p.abs_().add_(1e-3)
        for m in probe.modules():  # each output a weighted average of its inputs: no blow-up
            if isinstance(m, nn.modules.conv._ConvTransposeNd):
                w = m.weight  # (in, out, k...): an output sums over in and k
                w.div_(w.sum(dim=[d for d in range(w.ndim) if d != 1], keepdim=True))
            elif isinstance(m, nn.modules.conv._ConvNd):
                w = m.weight  # (out, in, k...)
                w.div_(w.sum(dim=list(range(1, w.ndim)), keepdim=True))
    return probe, global_ctx


def _support(net: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, positive: bool,
             generator: torch.Generator) -> np.ndarray:
    x = torch.rand(shape, dtype=dtype, generator=generator)
    if not positive:
        x = x * 2 - 1
    x.requires_grad_(True)
    out = net(x)
    centre = tuple(s // 2 for s in out.shape[2:])
    out[(slice(None), slice(None), *centre)].sum().backward()
    assert x.grad is not None
    return (x.grad[0].abs().sum(0) > 0).numpy()


def _radius(support: np.ndarray) -> list[int]:
    """Per-axis radius of a support around the centre voxel."""
    centre = [s // 2 for s in support.shape]
    radii = []
    for axis in range(support.ndim):
        other = tuple(a for a in range(support.ndim) if a != axis)
        idx = np.flatnonzero(support.any(axis=other) if other else support)
        radii.append(0 if idx.size == 0 else int(max(centre[axis] - idx[0], idx[-1] - centre[axis])))
    return radii


def measure_receptive_field(net: nn.Module, dims: int, spatial_multiple: tuple[int, int, int],
                            in_channels: int = 1, max_size: int = 1024, seed: int = 0) -> ReceptiveField:
    """Measure the receptive-field radius of *net* (see module docstring).

    Only the axes whose support reaches the probe's border are enlarged, up to *max_size*.
    """
    was_training = net.training
    probe, global_ctx = _positive_copy(net)
    plain = copy.deepcopy(net).double().eval()
    gen = torch.Generator().manual_seed(seed)
    mz, my, mx = spatial_multiple
    size = [max(8, 4 * mz), max(64, 4 * my), max(64, 4 * mx)] if dims == 3 else [max(64, 4 * my), max(64, 4 * mx)]
    try:
        while True:
            shape = (1, in_channels, *size)
            sup = _support(probe, shape, torch.float64, True, gen) | _support(plain, shape, torch.float64, False, gen)
            radii = _radius(sup)
            grow = [r >= s // 2 - 1 and s < max_size for r, s in zip(radii, size, strict=True)]
            if not any(grow):
                break
            size = [s * 2 if g else s for s, g in zip(size, grow, strict=True)]
    finally:
        net.train(was_training)
    radius = (0, radii[0], radii[1]) if dims == 2 else (radii[0], radii[1], radii[2])
    return ReceptiveField(radius, global_ctx)  # type: ignore[arg-type]


def measure_config_receptive_field(config: Any) -> ReceptiveField:
    """Receptive field of the architecture described by a :class:`ModelConfig`.

    For the built-in U-Net the support depends on kernel sizes, poolings and depth only, not on
    channel counts, so it is measured on a one-filter instance of the same graph (seconds
    instead of minutes for the default model). Custom architectures are measured as built.
    """
    from .architectures import build_model

    if config.architecture == "unet":
        thin = config.from_dict({**config.to_dict(), "filters": 1, "groups": 1, "dropout": 0.0})
        net = build_model(thin)
    else:
        net = build_model(config)
    return measure_receptive_field(net, config.dims, config.spatial_multiple, config.in_channels)


def recommended_tile(config: Any, rf: ReceptiveField, xy: int = 1024, z: int = 32) -> tuple[int, int, int]:
    """A tile that keeps the overlap overhead low: at least 2×halo + 2×multiple per axis."""
    mz, my, mx = config.spatial_multiple

    def axis(default: int, halo: int, m: int) -> int:
        t = max(default, 2 * halo + 2 * m)
        return int(-(-t // m) * m)

    ty, tx = axis(xy, rf.halo[1], my), axis(xy, rf.halo[2], mx)
    # a 2.5D network costs a 2D one per slice: few slices (overlap 2 x its context) at full width
    tz = 1 if config.dims == 2 else axis(8 if getattr(config, "slice_context", 0) else z, rf.halo[0], mz)
    return (tz, ty, tx)
