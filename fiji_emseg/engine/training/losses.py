"""Segmentation losses that honour an ignore mask (voxels outside the annotated region).

All losses take *logits* and compute in float32 even under mixed precision. For sigmoid models
the target is a (N, C, ...) 0/1 tensor; for softmax models it is a (N, ...) integer label map
with 0 = background and c = class c. ``valid`` is a (N, ...) bool tensor or ``None``.
Dice is computed over the whole batch (not per patch), which keeps it defined and stable for
patches in which a class is absent; for softmax models background is left out of Dice, as in
nnU-Net, so that it does not dominate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from ...errors import ConfigError

__all__ = ["LOSSES", "LossName", "SegmentationLoss"]

LossName = Literal["dice", "weighted_dice", "ce", "dice_ce", "focal", "mse"]
LOSSES: tuple[str, ...] = ("dice", "weighted_dice", "ce", "dice_ce", "focal", "mse")
_SMOOTH = 1.0


class SegmentationLoss(torch.nn.Module):
    """One configurable loss for both output modes.

    - ``dice``: 1 − mean soft Dice over classes.
    - ``weighted_dice``: 1 − class-weighted mean soft Dice (weights given, or inverse square
      root of class frequency in the batch when none are given).
    - ``ce``: binary cross-entropy (sigmoid) or cross-entropy (softmax), class-weighted if weights are given.
    - ``dice_ce``: sum of the two.
    - ``focal``: focal loss (γ = ``focal_gamma``), class-weighted if weights are given.
    - ``mse``: mean squared error between probabilities and targets.
    """

    def __init__(self, name: str, output: str, n_classes: int,
                 class_weights: Sequence[float] | None = None, focal_gamma: float = 2.0) -> None:
        super().__init__()
        if name not in LOSSES:
            raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
        if class_weights is not None:
            if len(class_weights) != n_classes:
                raise ConfigError(f"{len(class_weights)} class weights given for {n_classes} classes; give one weight per class")
            if any(w < 0 for w in class_weights) or sum(class_weights) <= 0:
                raise ConfigError(f"class weights must be non-negative and not all zero, got {list(class_weights)}")
        self.name = name
        self.output = output
        self.n_classes = n_classes
        self.focal_gamma = focal_gamma
        w = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", w, persistent=False)

    # -------------------------------------------------------------- helpers

    def _probs_and_onehot(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Foreground-class probabilities and targets, both (N, C, ...)."""
        if self.output == "softmax":
            probs = torch.softmax(logits, dim=1)[:, 1:]
            onehot = F.one_hot(target.long(), self.n_classes + 1).movedim(-1, 1)[:, 1:].float()
            return probs, onehot
        return torch.sigmoid(logits), target.float()

    def _dice(self, probs: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor | None,
              weighted: bool) -> torch.Tensor:
        if valid is not None:
            v = valid.unsqueeze(1).float()
            probs, onehot = probs * v, onehot * v
        dims = [0, *range(2, probs.ndim)]
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + _SMOOTH) / (denom + _SMOOTH)
        if weighted:
            if self.class_weights is not None:
                w = self.class_weights
            else:  # inverse square-root frequency: rare classes count more, but not explosively
                freq = onehot.sum(dims)
                w = torch.where(freq > 0, freq.clamp_min(1.0).rsqrt(), torch.zeros_like(freq))
                if float(w.sum()) == 0:
                    w = torch.ones_like(freq)
            return 1 - (dice * w).sum() / w.sum()
        return 1 - dice.mean()

    def _ce(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        if self.output == "softmax":
            tgt = target.long()
            if valid is not None:
                tgt = torch.where(valid, tgt, torch.full_like(tgt, -100))
            weight = None
            if self.class_weights is not None:  # background weight 1
                weight = torch.cat([self.class_weights.new_ones(1), self.class_weights])
            if valid is not None and not bool(valid.any()):
                return logits.sum() * 0
            return F.cross_entropy(logits, tgt, weight=weight, ignore_index=-100)
        per = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
        return self._masked_mean(per, valid)

    def _focal(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        g = self.focal_gamma
        if self.output == "softmax":
            logp = torch.log_softmax(logits, dim=1)
            tgt = target.long()
            logp_t = logp.gather(1, tgt.unsqueeze(1)).squeeze(1)
            per = -((1 - logp_t.exp()) ** g) * logp_t
            if self.class_weights is not None:
                w = torch.cat([self.class_weights.new_ones(1), self.class_weights])[tgt]
                per = per * w
            return self._masked_mean(per.unsqueeze(1), valid)
        t = target.float()
        bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * t + (1 - p) * (1 - t)
        per = ((1 - p_t) ** g) * bce
        return self._masked_mean(per, valid)

    def _masked_mean(self, per: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Mean over voxels (and classes) of a (N, C, ...) map, with optional class weights."""
        if self.class_weights is not None and self.output == "sigmoid":
            shape = [1, -1] + [1] * (per.ndim - 2)
            per = per * self.class_weights.view(shape) * (per.shape[1] / self.class_weights.sum())
        if valid is None:
            return per.mean()
        v = valid.unsqueeze(1).to(per.dtype)
        n = v.sum() * per.shape[1]
        if float(n) == 0:
            return per.sum() * 0
        return (per * v).sum() / n

    # -------------------------------------------------------------- forward

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        logits = logits.float()
        if self.name in ("dice", "weighted_dice"):
            probs, onehot = self._probs_and_onehot(logits, target)
            return self._dice(probs, onehot, valid, weighted=self.name == "weighted_dice")
        if self.name == "ce":
            return self._ce(logits, target, valid)
        if self.name == "dice_ce":
            probs, onehot = self._probs_and_onehot(logits, target)
            return self._dice(probs, onehot, valid, weighted=False) + self._ce(logits, target, valid)
        if self.name == "focal":
            return self._focal(logits, target, valid)
        probs, onehot = self._probs_and_onehot(logits, target)  # mse
        if self.output == "softmax":
            full = torch.softmax(logits, dim=1)
            oh = F.one_hot(target.long(), self.n_classes + 1).movedim(-1, 1).float()
            return self._masked_mean((full - oh) ** 2, valid)
        return self._masked_mean((probs - onehot) ** 2, valid)
