"""Error-driven sampling: find where the current model is most wrong on the annotated training data.

Random and label-centred patches rarely show the network the rare, hard background — myelin
sheaths, dark debris, membranes that look like organelles — so a model can reach a good
validation F1 on its own stack and still call every myelin sheath a mitochondrion. Every few
epochs the trainer predicts a set of random candidate patches of the training volumes (no
augmentation, eval mode: a few forward passes, about the cost of a handful of training steps),
counts the wrong voxels in each (false positives in background and misses in foreground, inside
the annotated region), and keeps the worst candidates as *hard examples*: the centre of the
densest errors in each, weighted by its error count. The sampler then centres a share of the
next patches there (see :class:`.sampling.PatchSampler`). Only the chosen centres are kept, never
a per-voxel error map, so memory does not grow with the volumes.

Wrong voxels within ``EDGE_TOLERANCE`` pixels (in-plane) of the other mask are not counted: a
false positive next to a labelled voxel, or a miss next to a predicted one, is a boundary drawn
a pixel wider or shifted, which annotators themselves disagree on. On thin classes such edge
disagreements are most of the wrong voxels (vnc membrane: ~70 %, isbi2012: ~60 %), so counting
them ranks a patch by how much edge it holds rather than by the missed or invented structures
that mining is for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn

from ..models.device import DeviceChoice
from .sampling import PatchSampler

__all__ = ["EDGE_TOLERANCE", "HardExamples", "errors_beyond_edges", "mine_hard_examples"]

#: Errors are pooled over blocks of this many pixels (per axis) to find the densest place.
POOL = 16
#: Wrong voxels this close (pixels, in-plane) to the other mask are edge disagreements, not counted.
EDGE_TOLERANCE = 1


@dataclass(frozen=True)
class HardExamples:
    centres: np.ndarray  # (N, 4) int64: volume, z, y, x
    weights: np.ndarray  # (N,) error voxels in the candidate patch
    candidates: int
    error_fraction: float  # wrong voxels (edges left out) / valid voxels over all candidates

    def describe(self) -> str:
        return (f"hard examples: {len(self.centres)} of {self.candidates} candidate patches kept; "
                f"{self.error_fraction:.2%} of their voxels wrong beyond {EDGE_TOLERANCE} px of an edge")


def errors_beyond_edges(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False positives and misses farther than ``EDGE_TOLERANCE`` px (in-plane) from the other mask.

    Boolean arrays of any shape ending in (Y, X); leading axes (batch, class, Z) are never crossed,
    as sections can be thick. The benchmarks score the same definition, so the share they print is
    what mining leaves out.
    """

    def grown(masks: np.ndarray) -> np.ndarray:
        if EDGE_TOLERANCE < 1:  # (scipy reads 0 iterations as "grow until nothing changes")
            return masks
        square = np.ones((1,) * (masks.ndim - 2) + (3, 3), bool)
        return ndi.binary_dilation(masks, square, iterations=EDGE_TOLERANCE)

    return pred & ~grown(truth), truth & ~grown(pred)


def _errors(logits: torch.Tensor, target: np.ndarray, valid: np.ndarray | None, output: str) -> np.ndarray:
    """(N, [Z,] Y, X) boolean map of wrong voxels (any class), edge disagreements left out."""
    if output == "softmax":
        labels = logits.argmax(1).cpu().numpy()
        classes = np.arange(logits.shape[1]).reshape((1, -1) + (1,) * (labels.ndim - 1))
        pred, truth = labels[:, None] == classes, target[:, None] == classes  # one-hot, background included
    else:
        pred, truth = (logits > 0).cpu().numpy(), target > 0
    false_pos, missed = errors_beyond_edges(pred, truth)
    wrong = (false_pos | missed).any(axis=1)
    if valid is not None:
        wrong &= valid
    return wrong


def _densest(wrong: np.ndarray) -> tuple[int, ...]:
    """Offset, inside one patch (Z, Y, X), of the centre of the block with the most errors."""
    z, y, x = wrong.shape
    py, px = -(-y // POOL), -(-x // POOL)
    padded = np.zeros((z, py * POOL, px * POOL), np.int32)
    padded[:, :y, :x] = wrong
    counts = padded.reshape(z, py, POOL, px, POOL).sum(axis=(2, 4))
    k, by, bx = np.unravel_index(int(np.argmax(counts)), counts.shape)
    return int(k), int(min(y - 1, by * POOL + POOL // 2)), int(min(x - 1, bx * POOL + POOL // 2))


@torch.no_grad()
def mine_hard_examples(model: nn.Module, sampler: PatchSampler, choice: DeviceChoice, output: str, *,
                       candidates: int, keep_fraction: float, batch_size: int, rng: np.random.Generator) -> HardExamples:
    """Predict *candidates* random patches and keep the worst *keep_fraction* of them (see module docstring)."""
    was_training = model.training
    model.eval()
    dims = sampler.dims
    locs, scores, offsets = [], [], []
    wrong_total = valid_total = 0
    try:
        for b0 in range(0, candidates, batch_size):
            chunk = [sampler.random_location(rng) for _ in range(min(batch_size, candidates - b0))]
            patches = [sampler.extract(vi, start) for vi, start in chunk]
            img = np.stack([p[0] for p in patches])[:, None]
            tgt = np.stack([p[1] for p in patches])
            val = None if patches[0][2] is None else np.stack([p[2] for p in patches])  # type: ignore[misc]
            if dims == 2:
                img, val = img[:, :, 0], None if val is None else val[:, 0]
                tgt = tgt[:, :, 0] if tgt.ndim == 5 else tgt[:, 0]
            x = torch.from_numpy(np.ascontiguousarray(img)).to(choice.device)
            if choice.channels_last:
                x = x.contiguous(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
            with choice.autocast():
                logits = model(x).float()
            wrong = _errors(logits, tgt, val, output)
            for (vi, start), w, v in zip(chunk, wrong, [None] * len(chunk) if val is None else val, strict=True):
                w3 = w[None] if dims == 2 else w
                locs.append((vi, *sampler.target_origin(start)))
                scores.append(int(w3.sum()))
                offsets.append(_densest(w3))
                wrong_total += int(w3.sum())
                valid_total += int(w3.size if v is None else v.sum())
    finally:
        model.train(was_training)
    order = np.argsort(scores, kind="stable")[::-1]
    keep = [int(i) for i in order[: max(1, round(keep_fraction * candidates))] if scores[int(i)] > 0]
    centres = np.array([[locs[i][0], *(s + o for s, o in zip(locs[i][1:], offsets[i], strict=True))] for i in keep],
                       dtype=np.int64).reshape(-1, 4)
    return HardExamples(centres, np.array([scores[i] for i in keep], np.float64), candidates,
                        wrong_total / max(valid_total, 1))
