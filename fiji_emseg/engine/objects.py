"""Connected components and object-level agreement between a reference and a predicted mask.

Pixel scores hide what biologists count: a prediction can reach F1 = 0.9 while merging or
missing half of the organelles. This module labels objects (3D components, or 2D components
slice by slice), measures how each reference object is covered by the prediction, and reports
the categories of Meyer et al. (ISBI 2021, DeepSCEM): *detected* (recall of its voxels > 0.8),
*missed* (recall < 0.1), *under-detected* (otherwise); predicted objects that overlap no
reference object are *false positives*. Panoptic quality (Kirillov et al. 2019) and the
aggregated Jaccard index (Kumar et al. 2017) score instance-style agreement.

Everything is vectorised: one labelling per mask, then one pass over the voxels where both
masks are foreground to count intersections of every (reference, predicted) object pair.
Label volumes are int32 and large passes go block by block, so peak memory stays a few bytes
per voxel.

Empty cases (never NaN):

* no reference object and no predicted object: PQ = SQ = RQ = AJI = 1.0 (perfect agreement);
* otherwise, no match: SQ = 0 and PQ = 0; AJI = 0 when no reference object overlaps a prediction;
* fractions of reference objects (detected/under-detected/missed) are 0.0 when there is no
  reference object; the false-positive fraction is 0.0 when there is no predicted object.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..errors import ConfigError, InputDataError

__all__ = [
    "COMPONENTS",
    "Overlap",
    "PanopticQuality",
    "ObjectEvaluation",
    "normalize_connectivity",
    "check_components",
    "connectivity_structure",
    "label_components",
    "label_sizes",
    "compute_overlap",
    "detection_categories",
    "panoptic_quality",
    "aggregated_jaccard_index",
    "evaluate_objects",
    "check_detection_thresholds",
]

#: Allowed values of the ``components`` option.
COMPONENTS = ("3d", "2d")

#: Voxels per block for block-wise passes (keeps temporaries at a few tens of MB).
_BLOCK_VOXELS = 1 << 22
#: Largest pair-key space counted with a dense ``np.bincount`` (8 bytes per key).
_DENSE_KEYS = 1 << 22

#: Neighbour counts accepted as connectivity, with the rank they mean (3D counts, 2D counts).
_NEIGHBOURS_3D = {6: 1, 18: 2, 26: 3}
_NEIGHBOURS_2D = {4: 1, 8: 2}


def normalize_connectivity(connectivity: int, ndim: int) -> int:
    """Turn a connectivity into scipy's rank (1 .. ndim) for an ``ndim``-dimensional labelling.

    Accepted: the rank itself (1 = faces only, ``ndim`` = faces, edges and corners, as in
    scikit-image) or the neighbour count (6, 18, 26 in 3D; 4, 8 in 2D). In 2D, rank 3 and the
    3D counts are read as their restriction to a plane (6 -> 4, 18 and 26 -> 8), so one setting
    serves both 2D and 3D components.
    """
    try:
        c = int(connectivity)
    except (TypeError, ValueError):
        raise ConfigError(f"connectivity must be a whole number, got {connectivity!r}; use 1 (faces) to {ndim} (full), "
                          "or 6/18/26 in 3D, 4/8 in 2D") from None
    if isinstance(connectivity, float) and connectivity != c:
        raise ConfigError(f"connectivity must be a whole number, got {connectivity!r}; use e.g. 1 or 26")
    if ndim == 3:
        if 1 <= c <= 3:
            return c
        if c in _NEIGHBOURS_3D:
            return _NEIGHBOURS_3D[c]
        raise ConfigError(f"connectivity {c} is not valid for 3D components; use 1, 2, 3 or 6, 18, 26 neighbours")
    if ndim == 2:
        if 1 <= c <= 3:
            return min(c, 2)
        if c in _NEIGHBOURS_2D:
            return _NEIGHBOURS_2D[c]
        if c in _NEIGHBOURS_3D:
            return 1 if c == 6 else 2
        raise ConfigError(f"connectivity {c} is not valid for 2D components; use 1, 2 or 4, 8 neighbours")
    raise ValueError(f"ndim must be 2 or 3, got {ndim}")


def connectivity_structure(connectivity: int, ndim: int) -> np.ndarray:
    """The structuring element scipy uses for a connectivity (see :func:`normalize_connectivity`)."""
    return ndi.generate_binary_structure(ndim, normalize_connectivity(connectivity, ndim))


def check_components(components: str) -> str:
    """Validate the ``components`` option ('3d' or '2d', case-insensitive)."""
    c = str(components).strip().lower()
    if c not in COMPONENTS:
        raise ConfigError(f"components must be '3d' (objects across slices) or '2d' (objects per slice), "
                          f"got {components!r}")
    return c


def check_detection_thresholds(detected_above: float, missed_below: float) -> tuple[float, float]:
    """Both in [0, 1] with missed_below <= detected_above."""
    d, m = float(detected_above), float(missed_below)
    if not (0.0 <= m <= d <= 1.0):
        raise ConfigError(
            f"detection thresholds must satisfy 0 <= missed-below ({m}) <= detected-above ({d}) <= 1; "
            "the usual values are 0.1 and 0.8")
    return d, m


def _as_zyx(mask: Any) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputDataError(f"expected a 2D mask or a (Z, Y, X) mask stack, got shape {arr.shape}")
    return arr


def z_blocks(shape: tuple[int, ...], block_voxels: int | None = None) -> Iterator[slice]:
    """Slices along Z covering a (Z, Y, X) volume in blocks of about ``block_voxels`` voxels."""
    plane = max(1, int(np.prod(shape[1:])))
    step = max(1, (block_voxels or _BLOCK_VOXELS) // plane)
    for z0 in range(0, shape[0], step):
        yield slice(z0, min(shape[0], z0 + step))


def label_components(mask: Any, components: str = "3d", connectivity: int = 1) -> tuple[np.ndarray, int]:
    """Label the connected components of a binary (Z, Y, X) mask.

    Returns an int32 label volume (0 = background, objects 1..n) and n. With
    ``components='2d'`` every slice is labelled on its own and labels continue across slices,
    so an organelle cut by 10 sections counts as 10 objects.
    """
    comp = check_components(components)
    m = _as_zyx(mask)
    out = np.zeros(m.shape, dtype=np.int32)
    if comp == "3d":
        n = ndi.label(m, structure=connectivity_structure(connectivity, 3), output=out)
        return out, int(n)
    structure = connectivity_structure(connectivity, 2)
    total = 0
    for z in range(m.shape[0]):
        plane = out[z]
        k = int(ndi.label(m[z], structure=structure, output=plane))
        if k and total:
            np.add(plane, total, out=plane, where=plane > 0)
        total += k
    return out, total


def label_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxel count of every label 0..n (int64), counted block by block to avoid an int64 copy."""
    sizes = np.zeros(n + 1, dtype=np.int64)
    lab = labels if labels.ndim == 3 else labels[None]
    total = 0
    for zs in z_blocks(lab.shape):
        block = lab[zs]
        fg = block[block > 0]  # objects are usually a small fraction: count only them
        total += block.size
        if fg.size:
            sizes += np.bincount(fg, minlength=n + 1)[: n + 1]
    sizes[0] = total - int(sizes[1:].sum())
    return sizes


@dataclass(frozen=True)
class Overlap:
    """Sizes of the objects of two label volumes and the intersection of every touching pair.

    ``ref_sizes[i]`` is the voxel count of reference object i (index 0 unused, = 0 background
    not counted); pairs are listed once with a positive intersection.
    """

    ref_sizes: np.ndarray
    pred_sizes: np.ndarray
    ref_ids: np.ndarray
    pred_ids: np.ndarray
    intersections: np.ndarray

    @property
    def n_ref(self) -> int:
        return len(self.ref_sizes) - 1

    @property
    def n_pred(self) -> int:
        return len(self.pred_sizes) - 1

    def pair_iou(self) -> np.ndarray:
        """IoU of each listed pair."""
        inter = self.intersections.astype(np.float64)
        union = self.ref_sizes[self.ref_ids] + self.pred_sizes[self.pred_ids] - self.intersections
        return inter / np.maximum(union, 1)

    def ref_covered(self) -> np.ndarray:
        """Voxels of each reference object (index 0..n_ref) that are predicted foreground."""
        return np.bincount(self.ref_ids, weights=self.intersections, minlength=self.n_ref + 1).astype(np.int64)

    def pred_covered(self) -> np.ndarray:
        """Voxels of each predicted object (index 0..n_pred) that are reference foreground."""
        return np.bincount(self.pred_ids, weights=self.intersections, minlength=self.n_pred + 1).astype(np.int64)

    def best_match(self, of: str) -> tuple[np.ndarray, np.ndarray]:
        """For each object of ``of`` ('ref' or 'pred'): the other side's label with the highest
        IoU (ties: smallest label; 0 when nothing overlaps) and that IoU."""
        iou = self.pair_iou()
        if of == "ref":
            own, other, n = self.ref_ids, self.pred_ids, self.n_ref
        elif of == "pred":
            own, other, n = self.pred_ids, self.ref_ids, self.n_pred
        else:
            raise ValueError(of)
        best_id = np.zeros(n + 1, dtype=np.int64)
        best_iou = np.zeros(n + 1, dtype=np.float64)
        if len(own):
            order = np.lexsort((other, -iou, own))  # by own id, then IoU descending, then other id
            own_sorted = own[order]
            first = np.ones(len(order), dtype=bool)
            first[1:] = own_sorted[1:] != own_sorted[:-1]
            pick = order[first]
            best_id[own[pick]] = other[pick]
            best_iou[own[pick]] = iou[pick]
        return best_id, best_iou


def compute_overlap(ref_labels: np.ndarray, n_ref: int, pred_labels: np.ndarray, n_pred: int) -> Overlap:
    """Count the intersection of every (reference, predicted) object pair in one pass.

    Pair keys ``ref * (n_pred + 1) + pred`` are counted block by block (``np.bincount`` when
    the key space is small, ``np.unique`` otherwise), so the cost is one pass over the volume
    plus a sort of the voxels where both masks are foreground — never a loop over objects.
    """
    if ref_labels.shape != pred_labels.shape:
        raise InputDataError(f"label volumes differ in shape: {ref_labels.shape} vs {pred_labels.shape}")
    ref_sizes = label_sizes(ref_labels, n_ref)
    pred_sizes = label_sizes(pred_labels, n_pred)
    ref_sizes[0] = 0
    pred_sizes[0] = 0
    stride = n_pred + 1
    n_keys = (n_ref + 1) * stride
    dense = n_keys <= _DENSE_KEYS
    dense_counts = np.zeros(n_keys, dtype=np.int64) if dense else None
    keys_parts: list[np.ndarray] = []
    count_parts: list[np.ndarray] = []
    r3 = ref_labels if ref_labels.ndim == 3 else ref_labels[None]
    p3 = pred_labels if pred_labels.ndim == 3 else pred_labels[None]
    for zs in z_blocks(r3.shape):
        r = r3[zs]
        p = p3[zs]
        both = (r > 0) & (p > 0)
        if not both.any():
            continue
        keys = r[both].astype(np.int64) * stride + p[both]
        if dense_counts is not None:
            dense_counts += np.bincount(keys, minlength=n_keys)
        else:
            u, c = np.unique(keys, return_counts=True)
            keys_parts.append(u)
            count_parts.append(c)
    if dense_counts is not None:
        keys = np.flatnonzero(dense_counts)
        counts = dense_counts[keys]
    elif keys_parts:
        keys, inverse = np.unique(np.concatenate(keys_parts), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate(count_parts)).astype(np.int64)
    else:
        keys = np.zeros(0, dtype=np.int64)
        counts = np.zeros(0, dtype=np.int64)
    return Overlap(ref_sizes, pred_sizes, (keys // stride).astype(np.int64), (keys % stride).astype(np.int64),
                   counts.astype(np.int64))


def detection_categories(recall: np.ndarray, detected_above: float = 0.8, missed_below: float = 0.1) -> np.ndarray:
    """'detected' (recall > detected_above), 'missed' (recall < missed_below), else 'under_detected'."""
    d, m = check_detection_thresholds(detected_above, missed_below)
    r = np.asarray(recall, dtype=np.float64)
    return np.where(r > d, "detected", np.where(r < m, "missed", "under_detected")).astype(object)


@dataclass(frozen=True)
class PanopticQuality:
    """PQ = SQ × RQ with matches = object pairs of IoU > threshold (>= 0.5 makes them unique)."""

    pq: float
    sq: float
    rq: float
    tp: int
    fp: int
    fn: int


def panoptic_quality(overlap: Overlap, iou_threshold: float = 0.5) -> PanopticQuality:
    """Panoptic quality (Kirillov et al. 2019).

    SQ is the mean IoU of matched pairs, RQ = TP / (TP + FP/2 + FN/2). Both sides empty gives
    1.0 everywhere; no match (but some object) gives SQ = RQ = PQ = 0.
    """
    thr = float(iou_threshold)
    if not 0.5 <= thr < 1.0:
        raise ConfigError(f"the PQ matching IoU must be in [0.5, 1) so that matches are unique, got {thr}")
    if overlap.n_ref == 0 and overlap.n_pred == 0:
        return PanopticQuality(1.0, 1.0, 1.0, 0, 0, 0)
    iou = overlap.pair_iou()
    matched = iou > thr
    tp = int(matched.sum())
    fp = overlap.n_pred - tp
    fn = overlap.n_ref - tp
    rq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(iou[matched].mean()) if tp else 0.0
    return PanopticQuality(sq * rq, sq, float(rq), tp, fp, fn)


def aggregated_jaccard_index(overlap: Overlap) -> float:
    """Aggregated Jaccard index (Kumar et al. 2017, IEEE TMI).

    Each reference object G is paired with the predicted object S of highest IoU (ties: smallest
    label); AJI = Σ|G ∩ S| / (Σ|G ∪ S| + Σ|S'|) where S' are predicted objects paired with no
    reference object. A reference object that overlaps no prediction adds |G| to the union
    (the usual reading, e.g. HoVer-Net's implementation). Both sides empty gives 1.0.
    """
    if overlap.n_ref == 0 and overlap.n_pred == 0:
        return 1.0
    best_pred, best_iou = overlap.best_match("ref")
    rs, ps = overlap.ref_sizes, overlap.pred_sizes
    ref_ids = np.arange(1, overlap.n_ref + 1)
    paired = best_iou[1:] > 0
    pr = ref_ids[paired]
    pp = best_pred[1:][paired]
    # intersection of each chosen pair, looked up from the pair list
    stride = overlap.n_pred + 1
    pair_keys = overlap.ref_ids * stride + overlap.pred_ids
    order = np.argsort(pair_keys)
    want = pr * stride + pp
    inter = (overlap.intersections[order][np.searchsorted(pair_keys[order], want)] if len(want)
             else np.zeros(0, np.int64))
    c = int(inter.sum())
    u = int((rs[pr] + ps[pp] - inter).sum()) + int(rs[ref_ids[~paired]].sum())
    used = np.zeros(overlap.n_pred + 1, dtype=bool)
    used[pp] = True
    used[0] = True
    u += int(ps[~used].sum())
    return c / u if u > 0 else 1.0


@dataclass
class ObjectEvaluation:
    """Object-level result for one class: summary numbers and one row per object."""

    summary: dict[str, float | int]
    table: Any  # pandas.DataFrame


#: Columns of the per-object table, in order.
OBJECT_COLUMNS = ("source", "label", "voxels", "covered_voxels", "coverage", "best_match", "best_iou",
                  "category", "z_min", "z_max", "y_min", "y_max", "x_min", "x_max")


def _bboxes(labels: np.ndarray, n: int) -> np.ndarray:
    """(n, 6) inclusive bounding boxes z_min, z_max, y_min, y_max, x_min, x_max (-1 if absent)."""
    out = np.full((n, 6), -1, dtype=np.int64)
    if n == 0:
        return out
    for i, sl in enumerate(ndi.find_objects(labels, max_label=n)):
        if sl is None:
            continue
        out[i] = (sl[0].start, sl[0].stop - 1, sl[1].start, sl[1].stop - 1, sl[2].start, sl[2].stop - 1)
    return out


def evaluate_objects(reference: Any, prediction: Any, *, components: str = "3d", connectivity: int = 1,
                     detected_above: float = 0.8, missed_below: float = 0.1, iou_threshold: float = 0.5,
                     table: bool = True) -> ObjectEvaluation:
    """Object-level comparison of two binary (Z, Y, X) masks (restrict them to the annotated
    region beforehand: voxels outside must be 0 in both).

    Summary keys: ``ref_objects``, ``pred_objects``, ``detected``, ``under_detected``, ``missed``,
    ``false_positives`` (predicted objects overlapping no reference object), the matching
    ``*_frac`` fractions, ``matched`` (PQ pairs), ``pq``, ``sq``, ``rq``, ``aji``. The table has
    one row per reference object (``source='reference'``, category detected/under_detected/missed,
    ``coverage`` = recall of its voxels) and per predicted object (``source='prediction'``,
    category overlapping/false_positive, ``coverage`` = fraction of it inside the reference).
    """
    import pandas as pd

    d, m = check_detection_thresholds(detected_above, missed_below)
    ref = _as_zyx(reference)
    pred = _as_zyx(prediction)
    if ref.shape != pred.shape:
        raise InputDataError(f"reference shape {ref.shape} and prediction shape {pred.shape} differ")
    ref_lab, n_ref = label_components(ref, components, connectivity)
    pred_lab, n_pred = label_components(pred, components, connectivity)
    ov = compute_overlap(ref_lab, n_ref, pred_lab, n_pred)
    ref_cov = ov.ref_covered()[1:]
    pred_cov = ov.pred_covered()[1:]
    ref_size = ov.ref_sizes[1:]
    pred_size = ov.pred_sizes[1:]
    recall = ref_cov / np.maximum(ref_size, 1)
    cats = detection_categories(recall, d, m)
    n_det = int(np.count_nonzero(cats == "detected"))
    n_under = int(np.count_nonzero(cats == "under_detected"))
    n_missed = int(np.count_nonzero(cats == "missed"))
    fp_mask = pred_cov == 0
    n_fp = int(fp_mask.sum())
    pq = panoptic_quality(ov, iou_threshold)
    aji = aggregated_jaccard_index(ov)
    summary: dict[str, float | int] = {
        "ref_objects": n_ref,
        "pred_objects": n_pred,
        "detected": n_det,
        "under_detected": n_under,
        "missed": n_missed,
        "false_positives": n_fp,
        "detected_frac": n_det / n_ref if n_ref else 0.0,
        "under_detected_frac": n_under / n_ref if n_ref else 0.0,
        "missed_frac": n_missed / n_ref if n_ref else 0.0,
        "false_positive_frac": n_fp / n_pred if n_pred else 0.0,
        "matched": pq.tp,
        "pq": pq.pq,
        "sq": pq.sq,
        "rq": pq.rq,
        "aji": aji,
    }
    if not table:
        return ObjectEvaluation(summary, pd.DataFrame(columns=list(OBJECT_COLUMNS)))
    ref_best, ref_best_iou = ov.best_match("ref")
    pred_best, pred_best_iou = ov.best_match("pred")
    ref_box = _bboxes(ref_lab, n_ref)
    del ref_lab
    pred_box = _bboxes(pred_lab, n_pred)
    del pred_lab
    pred_cat = np.where(fp_mask, "false_positive", "overlapping").astype(object)

    def block(source: str, n: int, size: np.ndarray, cov: np.ndarray, best: np.ndarray, best_iou: np.ndarray,
              cat: np.ndarray, box: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({
            "source": np.full(n, source, dtype=object),
            "label": np.arange(1, n + 1, dtype=np.int64),
            "voxels": size,
            "covered_voxels": cov,
            "coverage": cov / np.maximum(size, 1),
            "best_match": best[1:],
            "best_iou": best_iou[1:],
            "category": cat,
            "z_min": box[:, 0], "z_max": box[:, 1], "y_min": box[:, 2], "y_max": box[:, 3],
            "x_min": box[:, 4], "x_max": box[:, 5],
        })

    tab = pd.concat([
        block("reference", n_ref, ref_size, ref_cov, ref_best, ref_best_iou, cats, ref_box),
        block("prediction", n_pred, pred_size, pred_cov, pred_best, pred_best_iou, pred_cat, pred_box),
    ], ignore_index=True)
    return ObjectEvaluation(summary, tab)
