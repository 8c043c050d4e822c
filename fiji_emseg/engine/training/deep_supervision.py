"""Deep supervision: auxiliary losses on a U-Net's coarser decoder levels, for training only.

nnU-Net trains every U-Net this way: besides the full-resolution output, each of the next
coarser decoder levels gets a 1×1 convolution to logits and a loss against the target brought
to its size, weighted 1, 1/2, 1/4 … and normalised to sum to 1. The coarse levels then receive
a gradient of their own instead of only what flows back through the finer ones.

The heads live here, beside the trainer, not in the network: the saved model, its ONNX export
and its prediction are the plain U-Net. They are read from the decoders with forward hooks, so
any :class:`~fiji_emseg.engine.models.unet.UNet` (2D, 3D, or inside a 2.5D network) works.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ..models.unet import UNet

__all__ = ["DeepSupervision", "find_unet", "max_deep_supervision", "training_loss"]


def find_unet(model: nn.Module) -> UNet | None:
    """The built-in U-Net in *model* (itself, or inside a 2.5D network); None for other architectures."""
    for m in model.modules():
        if isinstance(m, UNet):
            return m
    return None


def max_deep_supervision(unet: UNet) -> int:
    """How many coarser decoder levels can be supervised: all but the full-resolution one."""
    return max(0, len(unet.decoders) - 1)


class DeepSupervision(nn.Module):
    """``levels`` auxiliary heads on the decoder levels just coarser than full resolution.

    In a training step: set ``capturing``, run the model, call the module for the auxiliary
    logits (inside the same autocast), then :meth:`loss`. With ``capturing`` off (validation,
    mining, prediction) the hooks keep nothing.
    """

    def __init__(self, model: nn.Module, levels: int, out_channels: int) -> None:
        super().__init__()
        unet = find_unet(model)
        if unet is None:
            raise ConfigError("deep supervision needs the built-in U-Net (architecture 'unet'); "
                              "set deep_supervision to 0 for this architecture")
        most = max_deep_supervision(unet)
        if most == 0:
            raise ConfigError(f"deep supervision needs a decoder level below full resolution, which a U-Net of depth "
                              f"{unet.config.depth} does not have; use depth 3 or more, or deep supervision 0")
        if not 1 <= levels <= most:
            raise ConfigError(f"deep supervision of {levels} levels, but this U-Net of depth {unet.config.depth} "
                              f"has {most} decoder levels below full resolution; use 1 to {most}, or 0 for off")
        decoders = list(unet.decoders)[-1 - levels:-1][::-1]  # finest first: 1/2, 1/4, ...
        conv = nn.Conv2d if unet.config.dims == 2 else nn.Conv3d
        self.heads = nn.ModuleList(conv(_width(d), out_channels, 1) for d in decoders)
        weights = torch.tensor([0.5 ** i for i in range(levels + 1)])
        self.register_buffer("weights", weights / weights.sum(), persistent=False)
        self._features: list[torch.Tensor | None] = [None] * levels
        self.capturing = False
        self._hooks = [d.register_forward_hook(self._hook(i)) for i, d in enumerate(decoders)]

    def _hook(self, i: int) -> Any:
        def keep(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            if self.capturing:
                self._features[i] = output
        return keep

    def forward(self) -> list[torch.Tensor]:
        """The auxiliary logits of the forward pass just made (call it inside the same autocast)."""
        if any(f is None for f in self._features):
            raise RuntimeError("deep supervision: the forward pass captured no decoder output (capturing was off)")
        aux = [head(f) for head, f in zip(self.heads, self._features, strict=True)]
        self._features = [None] * len(self._features)
        return aux

    def loss(self, loss_fn: nn.Module, logits: torch.Tensor, aux: list[torch.Tensor], target: torch.Tensor,
             valid: torch.Tensor | None) -> torch.Tensor:
        """The weighted sum of the full-resolution loss and each coarser level's, against the
        target and mask brought to that level's size (nearest neighbour, as nnU-Net does)."""
        total = self.weights[0] * loss_fn(logits, target, valid)
        for w, out in zip(self.weights[1:], aux, strict=True):
            if out.ndim == logits.ndim - 1:  # a 2.5D network's inner 2D U-Net: (N, K, Y, X) for (N, K, 1, Y, X)
                out = out.unsqueeze(2)
            size = out.shape[2:]
            total = total + w * loss_fn(out, _nearest(target, size), None if valid is None else _nearest(valid, size))
        return total

    def remove(self) -> None:
        """Take the hooks off the decoders (at the end of training)."""
        for h in self._hooks:
            h.remove()


def training_loss(model: nn.Module, x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None,
                  loss_fn: nn.Module, autocast: Callable[[], AbstractContextManager[Any]],
                  deep: DeepSupervision | None) -> torch.Tensor:
    """One training step's loss: the forward pass under *autocast*, with deep supervision's
    auxiliary logits read inside the same autocast when *deep* is given. The trainer and the
    step probe both call it, so the probe times the step the trainer takes."""
    if deep is None:
        with autocast():
            logits = model(x)
        return loss_fn(logits, target, valid)
    deep.capturing = True
    try:
        with autocast():
            logits = model(x)
            aux = deep()
    finally:
        deep.capturing = False
    return deep.loss(loss_fn, logits, aux, target, valid)


def _width(level: nn.Module) -> int:
    """Output channels of a decoder level (its last convolution's)."""
    convs = [m for m in level.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    return int(convs[-1].out_channels)


def _nearest(t: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """*t* brought to the spatial *size* by nearest neighbour, in its own dtype: (N, C, ...)
    sigmoid targets, or (N, ...) softmax label maps and annotated-region masks."""
    flat = t.ndim == len(size) + 1  # no channel axis
    out = F.interpolate((t[:, None] if flat else t).float(), size=tuple(size), mode="nearest")
    return (out[:, 0] if flat else out).to(t.dtype)
