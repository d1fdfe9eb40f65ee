"""Metrics of classifiers, explanations and segmentations against ground truth.

Rules, for every per-image metric here:

- Saliency maps are float (N, H, W), ground truth bool (N, H, W); a shape mismatch is a ``ValueError``.
- Maps are min-max normalised per image first (``normalise``); a constant map becomes all zeros, i.e. it
  points nowhere.
- An image whose ground-truth mask is empty has no defined score and gives NaN, which means exclude
  (``mean_excluding_nan``) and count. Threshold-free ranking metrics (ROC AUC, average precision) are also
  NaN for a mask covering the whole image.
- Ties between saliency values are decided at ``VALUE_RESOLUTION``; where a top-k selection cuts through a
  tie, the rank metrics (pointing game, relevance rank, top-k intersection) count the expected hits of a
  random pick among the tied pixels, so a constant map scores the chance level |G| / (H W); binarising to
  exactly k pixels (``binarise_top_percent``) takes the tied pixels in raster order.
- ``max_box_acc`` (MaxBoxAccV2) is the one explanation metric whose per-image score depends on the set of
  images: its threshold per IoU level is chosen over them, so a set is scored whole (``explanation_set``
  takes it chunk by chunk).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

# Saliency values closer than this count as equal (bilinear upsampling of equal neighbours is not
# bit-exact in float32).
VALUE_RESOLUTION = 1e-6

DEFAULT_SWEEP = np.linspace(0.05, 0.95, 19)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of argmax predictions equal to ``labels``; logits (N, C), labels int (N,)."""
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def normalise(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max scaling of (N, H, W) maps to [0, 1], float64; a constant map becomes all zeros.

    Computed in float64, so maps of fine values far from zero keep their distinct values (in float32 the
    subtraction of the minimum would merge them into ties)."""
    maps = np.asarray(maps, dtype=np.float64)
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)


def binarise(maps: np.ndarray, threshold: float) -> np.ndarray:
    """bool (N, H, W): normalised map >= ``threshold``."""
    return normalise(maps) >= threshold


def iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-image Jaccard index |P ∩ T| / |P ∪ T| of bool (N, H, W) arrays; NaN where T is empty."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {truth.shape}")
    inter = np.logical_and(pred, truth).sum(axis=(1, 2)).astype(np.float64)
    union = np.logical_or(pred, truth).sum(axis=(1, 2)).astype(np.float64)
    scores = inter / np.maximum(union, 1)
    scores[truth.sum(axis=(1, 2)) == 0] = np.nan
    return scores


def mean_excluding_nan(values: np.ndarray) -> tuple[float, int]:
    """(mean over finite values, number of NaNs excluded); NaN mean when nothing is finite."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    mean = float(values[finite].mean()) if finite.any() else float("nan")
    return mean, int((~finite).sum())


# -- checks and helpers ------------------------------------------------------------------------------------


def _pair(maps: np.ndarray, masks: np.ndarray, what: str = "map") -> tuple[np.ndarray, np.ndarray]:
    """``(maps as float, masks as bool)`` of one shape (N, H, W); ValueError otherwise."""
    maps = np.asarray(maps)
    masks = np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape:
        raise ValueError(f"{what} shape {maps.shape} differs from ground truth {masks.shape}")
    if maps.ndim != 3:
        raise ValueError(f"{what}s must have shape (N, H, W), got {maps.shape}")
    return maps, masks


def _flat(stack: np.ndarray) -> np.ndarray:
    return stack.reshape(stack.shape[0], stack.shape[1] * stack.shape[2])


def _levels(maps: np.ndarray) -> np.ndarray:
    """Normalised maps as integer levels at ``VALUE_RESOLUTION``, flattened to (N, H*W)."""
    normalised = normalise(maps)
    return np.round(_flat(normalised).astype(np.float64) / VALUE_RESOLUTION).astype(np.int64)


def _expected_top_hits(levels: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Expected number of ``truth`` pixels among the ``k`` highest ``levels`` (1-D), ties picked at random."""
    cut = np.partition(levels, levels.size - k)[levels.size - k]
    above = levels > cut
    tied = levels == cut
    return float((above & truth).sum() + (k - above.sum()) * (tied & truth).sum() / tied.sum())


def _empty_to_nan(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    scores[~masks.any(axis=(1, 2))] = np.nan
    return scores


# -- overlap ---------------------------------------------------------------------------------------------


def dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-image Dice coefficient 2 |P ∩ T| / (|P| + |T|) of bool (N, H, W) arrays; NaN where T is empty."""
    pred, truth = _pair(np.asarray(pred, dtype=bool), truth, "prediction")
    inter = np.logical_and(pred, truth).sum(axis=(1, 2)).astype(np.float64)
    total = pred.sum(axis=(1, 2)) + truth.sum(axis=(1, 2)).astype(np.float64)
    return _empty_to_nan(2 * inter / np.maximum(total, 1), truth)


# -- binarisation ----------------------------------------------------------------------------------------


def binarise_top_percent(maps: np.ndarray, p: float) -> np.ndarray:
    """bool (N, H, W): the ``p / 100 * H * W`` most salient pixels of each map (rounded, halves up).

    ``p`` in [0, 100]. Exactly that many pixels per image; ties at the cut go in raster order."""
    if not 0 <= p <= 100:
        raise ValueError(f"p is a percentage in [0, 100], got {p}")
    maps = np.asarray(maps)
    levels = _levels(maps)
    count = int(np.floor(p / 100 * levels.shape[1] + 0.5))
    order = np.argsort(-levels, axis=1, kind="stable")[:, :count]
    chosen = np.zeros(levels.shape, dtype=bool)
    np.put_along_axis(chosen, order, True, axis=1)
    return chosen.reshape(maps.shape)


def binarise_otsu(maps: np.ndarray) -> np.ndarray:
    """bool (N, H, W): normalised map > its Otsu threshold (``skimage.filters.threshold_otsu``), per image.

    A constant map gives no pixel."""
    from skimage.filters import threshold_otsu

    normalised = normalise(maps)
    return np.stack([m > threshold_otsu(m) for m in normalised]) if len(normalised) else normalised.astype(bool)


def threshold_sweep(
    maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray = DEFAULT_SWEEP
) -> tuple[np.ndarray, float, float, float]:
    """Mean IoU of the fixed-threshold binarisation at each threshold.

    Returns ``(curve, best_threshold, best_mean_iou, curve_mean)``: ``curve`` float64 (T,) of mean IoU over
    the images with a non-empty mask; the first threshold reaching the curve's maximum and that maximum
    (an optimistic score: the threshold is chosen on the images it is scored on); and the curve's mean,
    a threshold-free summary. All NaN when no mask is non-empty."""
    return sweep_summary(sweep_per_image(maps, masks, thresholds), thresholds)


def sweep_per_image(maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray = DEFAULT_SWEEP) -> np.ndarray:
    """float64 (N, T): each image's IoU at each threshold of the fixed-threshold binarisation (NaN rows
    for empty masks). Computed on chunks of images and stacked, it is the whole set's."""
    maps, masks = _pair(maps, masks)
    normalised = normalise(maps)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    return np.stack([iou(normalised >= t, masks) for t in thresholds], axis=1) if len(thresholds) else \
        np.zeros((len(maps), 0))


def sweep_summary(per_image: np.ndarray, thresholds: np.ndarray = DEFAULT_SWEEP):
    """``threshold_sweep``'s ``(curve, best_threshold, best_mean_iou, curve_mean)`` from ``sweep_per_image``."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    curve = np.array([mean_excluding_nan(per_image[:, j])[0] for j in range(per_image.shape[1])])
    if len(curve) == 0 or not np.isfinite(curve).any():
        return curve, float("nan"), float("nan"), float("nan")
    best = int(np.nanargmax(curve))
    return curve, float(thresholds[best]), float(curve[best]), float(np.nanmean(curve))


# -- threshold-free --------------------------------------------------------------------------------------


def _per_image_ranking(score_fn, maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    maps, masks = _pair(maps, masks)
    normalised = normalise(maps)
    scores = np.full(len(maps), np.nan)
    for i, (saliency, truth) in enumerate(zip(normalised, masks)):
        inside = truth.sum()
        if 0 < inside < truth.size:
            scores[i] = score_fn(truth.ravel(), saliency.ravel().astype(np.float64))
    return scores


def _roc_auc_score(truth: np.ndarray, saliency: np.ndarray) -> float:
    """Mann-Whitney form of the ROC AUC with average ranks for ties (equals sklearn's roc_auc_score)."""
    from scipy.stats import rankdata

    positives = int(truth.sum())
    negatives = truth.size - positives
    rank_sum = rankdata(saliency)[truth].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def _average_precision_score(truth: np.ndarray, saliency: np.ndarray) -> float:
    """Step-wise average precision over distinct thresholds (equals sklearn's average_precision_score)."""
    order = np.argsort(-saliency, kind="mergesort")
    ranked, hits = saliency[order], truth[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    true_positives = np.cumsum(hits)[last_of_value]
    precision = true_positives / (last_of_value + 1)
    recall = true_positives / hits.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-image area under the ROC curve of saliency as a pixel classifier of the mask (the value of
    ``sklearn.metrics.roc_auc_score``, computed from ranks); 0.5 is chance. NaN where the mask is empty
    or full."""
    return _per_image_ranking(_roc_auc_score, maps, masks)


def average_precision(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-image average precision of saliency ranking the mask's pixels (the value of
    ``sklearn.metrics.average_precision_score``); chance is the mask's area fraction. NaN where the
    mask is empty or full."""
    return _per_image_ranking(_average_precision_score, maps, masks)


def top_k_intersection(maps: np.ndarray, masks: np.ndarray, k: int) -> np.ndarray:
    """Per-image fraction of the ``k`` most salient pixels that lie inside the mask; NaN for an empty mask.

    ``1 <= k <= H * W``; ties at the cut count as the expected hits of a random pick."""
    maps, masks = _pair(maps, masks)
    levels = _levels(maps)
    if not 1 <= k <= levels.shape[1]:
        raise ValueError(f"k must be between 1 and the pixel count {levels.shape[1]}, got {k}")
    flat = _flat(masks)
    scores = np.array([_expected_top_hits(lv, truth, k) / k for lv, truth in zip(levels, flat)])
    return _empty_to_nan(scores, masks)


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-image hit of the most salient pixel: 1 inside the mask, 0 outside; NaN for an empty mask.

    Where several pixels share the maximum, the fraction of them inside the mask."""
    return top_k_intersection(maps, masks, 1)


def relevance_rank(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-image |top-|G| salient pixels ∩ G| / |G| for the mask G; NaN for an empty mask."""
    maps, masks = _pair(maps, masks)
    levels = _levels(maps)
    flat = _flat(masks)
    scores = np.full(len(maps), np.nan)
    for i, (lv, truth) in enumerate(zip(levels, flat)):
        size = int(truth.sum())
        if size:
            scores[i] = _expected_top_hits(lv, truth, size) / size
    return scores


def relevance_mass(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per-image share of the saliency inside the mask, sum over G of a / sum of a, with a the normalised
    map (so a = a⁺); NaN for an empty mask, 0 for a constant map (it places no relevance)."""
    maps, masks = _pair(maps, masks)
    normalised = normalise(maps).astype(np.float64)
    inside = (normalised * masks).sum(axis=(1, 2))
    total = normalised.sum(axis=(1, 2))
    return _empty_to_nan(np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0), masks)


# -- boundaries ------------------------------------------------------------------------------------------


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it; the image edge counts as outside."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=0)


def boundary_f1(pred: np.ndarray, truth: np.ndarray, tolerance: float = 2) -> np.ndarray:
    """Per-image boundary F1 of bool (N, H, W) segmentations: the harmonic mean of boundary precision (share
    of predicted boundary pixels within ``tolerance`` pixels, Euclidean, of a true boundary pixel) and
    recall (the converse). Boundaries are the masks' inner 4-connected edges, with the image edge counted
    as outside. NaN where the truth is empty; 0 where the prediction is empty."""
    from scipy import ndimage

    pred, truth = _pair(np.asarray(pred, dtype=bool), truth, "prediction")
    scores = np.full(len(pred), np.nan)
    for i, (p, t) in enumerate(zip(pred, truth)):
        if not t.any():
            continue
        if not p.any():
            scores[i] = 0.0
            continue
        pred_edge, true_edge = _boundary(p), _boundary(t)
        to_true = ndimage.distance_transform_edt(~true_edge)
        to_pred = ndimage.distance_transform_edt(~pred_edge)
        precision = float((to_true[pred_edge] <= tolerance).mean())
        recall = float((to_pred[true_edge] <= tolerance).mean())
        scores[i] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return scores


# -- boxes (MaxBoxAccV2) ----------------------------------------------------------------------------------

# The box IoU levels δ of MaxBoxAccV2 (Choe et al., "Evaluating Weakly Supervised Object Localization Methods
# Right", CVPR 2020): its score is the mean over δ of the best share of images with a box of IoU >= δ.
BOX_IOU_LEVELS = (0.3, 0.5, 0.7)
# Pixels of the thresholded planes labelled at once (their labels take 4 bytes each), so a chunk of large
# maps at every threshold of the sweep is not in memory together.
_BOX_PIXELS = 1 << 22
# Component and ground-truth box pairs compared at once.
_BOX_PAIRS = 1 << 22


def component_boxes(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bounding box of every 8-connected component of each plane of a bool (S, H, W) stack.

    Returns ``(plane, boxes)``: int64 (n,), the plane of each component, ascending; int64 (n, 4), its box
    as inclusive pixel coordinates ``(row0, col0, row1, col1)``."""
    from scipy import ndimage

    planes = np.asarray(planes, dtype=bool)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected within a plane, never across planes
    labels, count = ndimage.label(planes, structure=structure)
    # Each row of a plane is runs of one component each: a component's box spans its runs.
    starts, ends = planes.copy(), planes.copy()
    starts[..., 1:] &= ~planes[..., :-1]
    ends[..., :-1] &= ~planes[..., 1:]
    starts, ends = np.flatnonzero(starts), np.flatnonzero(ends)  # in raster order: the i-th run's ends
    height, width = planes.shape[1:]
    plane, within = np.divmod(starts, height * width)
    row, first = np.divmod(within, width)
    last = ends % width
    run_label = labels.reshape(-1)[starts] - 1
    boxes = np.empty((count, 4), dtype=np.int64)
    boxes[:, :2] = np.iinfo(np.int64).max
    boxes[:, 2:] = -1
    np.minimum.at(boxes[:, 0], run_label, row)
    np.minimum.at(boxes[:, 1], run_label, first)
    np.maximum.at(boxes[:, 2], run_label, row)
    np.maximum.at(boxes[:, 3], run_label, last)
    of_plane = np.empty(count, dtype=np.int64)
    of_plane[run_label] = plane  # every run of a component is in its plane
    order = np.argsort(of_plane, kind="stable")
    return of_plane[order], boxes[order]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``(row0, col0, row1, col1)`` in inclusive pixel coordinates, broadcast over ``(..., 4)``:
    a box covers ``(row1 - row0 + 1) * (col1 - col0 + 1)`` pixels (wsolevaluation's ``calculate_multiple_iou``).
    float64."""
    a, b = np.asarray(a), np.asarray(b)
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    rows = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    cols = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = rows * cols
    return inter / (area_a + area_b - inter)


def box_iou_sweep(maps: np.ndarray, masks: np.ndarray, thresholds: np.ndarray = DEFAULT_SWEEP) -> np.ndarray:
    """float64 (N, T): each image's best box IoU at each threshold τ, as MaxBoxAccV2 scores a map.

    The ground-truth boxes are those of the mask's 8-connected components (one per crown); the predicted
    boxes those of every 8-connected component of the normalised map >= τ. An image's IoU at τ is the
    largest ``box_iou`` of any predicted box with any ground-truth box; 0 where nothing reaches τ (a
    constant map: always). NaN rows for empty masks. Computed on chunks of images and stacked, it is the
    whole set's."""
    maps, masks = _pair(maps, masks)
    normalised = normalise(maps)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    count, height, width = maps.shape
    out = np.zeros((count, len(thresholds)))
    truth_plane, truth_boxes = component_boxes(masks)
    truth_count = np.bincount(truth_plane, minlength=count)
    step = max(1, _BOX_PIXELS // max(1, len(thresholds) * height * width))
    for start in range(0, count if len(thresholds) else 0, step):
        stop = min(count, start + step)
        # each image's ground-truth boxes, padded to the most any image of the chunk has
        most = int(truth_count[start:stop].max(initial=0))
        if not most:
            continue
        valid = np.arange(most)[None, :] < truth_count[start:stop, None]
        slots = np.searchsorted(truth_plane, np.arange(start, stop))[:, None] + np.arange(most)[None, :]
        padded = truth_boxes[np.where(valid, slots, 0)]
        above = normalised[start:stop, None] >= thresholds[None, :, None, None]
        plane, boxes = component_boxes(above.reshape(-1, height, width))
        image, at = np.divmod(plane, len(thresholds))
        best = np.empty(len(boxes))
        block = max(1, _BOX_PAIRS // most)
        for lo in range(0, len(boxes), block):
            rows = image[lo:lo + block]
            ious = box_iou(boxes[lo:lo + block, None, :], padded[rows])
            best[lo:lo + block] = np.where(valid[rows], ious, 0.0).max(axis=1)
        np.maximum.at(out, (start + image, at), best)
    out[truth_count == 0] = np.nan
    return out


def box_accuracy_curves(box_sweep: np.ndarray) -> np.ndarray:
    """float64 (D, T): BoxAcc(τ, δ) for each level δ of ``BOX_IOU_LEVELS`` and threshold τ of the sweep, the
    share of the images with a mask (finite rows of ``box_iou_sweep``) whose box IoU at τ is at least δ;
    NaN where no image has a mask."""
    box_sweep = np.asarray(box_sweep, dtype=np.float64)
    scored = box_sweep[np.isfinite(box_sweep).all(axis=1)]
    if not len(scored):
        return np.full((len(BOX_IOU_LEVELS), box_sweep.shape[1]), np.nan)
    return np.stack([(scored >= level).mean(axis=0) for level in BOX_IOU_LEVELS])


def box_thresholds(box_sweep: np.ndarray) -> np.ndarray:
    """int64 (D,): for each level δ of ``BOX_IOU_LEVELS``, the position in the sweep of the threshold with the
    highest BoxAcc (``box_accuracy_curves``) over these images, ties to the first (the lower τ); -1 where
    no image has a mask."""
    curves = box_accuracy_curves(box_sweep)
    if not curves.shape[1] or not np.isfinite(curves).any():
        return np.full(len(BOX_IOU_LEVELS), -1, dtype=np.int64)
    return np.argmax(curves, axis=1).astype(np.int64)


def box_accuracy(box_sweep: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """float64 (N,): per image, the share of the levels δ of ``BOX_IOU_LEVELS`` whose box IoU at the threshold
    ``chosen[δ]`` (a position in the sweep) is at least δ; its mean over images is the mean over δ of BoxAcc
    at those thresholds. NaN for an empty mask, and for every image where a position is -1 (nothing
    chosen)."""
    box_sweep = np.asarray(box_sweep, dtype=np.float64)
    chosen = np.asarray(chosen, dtype=np.int64)
    if (chosen < 0).any():
        return np.full(len(box_sweep), np.nan)
    hits = np.stack([box_sweep[:, at] >= level for at, level in zip(chosen, BOX_IOU_LEVELS)], axis=1)
    return np.where(np.isfinite(box_sweep).all(axis=1), hits.mean(axis=1), np.nan)


def max_box_accuracy(box_sweep: np.ndarray) -> np.ndarray:
    """float64 (N,): ``box_accuracy`` at the thresholds chosen on these images themselves (``box_thresholds``);
    its mean over the images is MaxBoxAccV2, the optimistic score of the paper (the threshold of each level
    is chosen on the images it scores)."""
    return box_accuracy(box_sweep, box_thresholds(box_sweep))


# -- summaries -------------------------------------------------------------------------------------------


def summary(scores: dict[str, np.ndarray]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, values in scores.items():
        out[name], out[f"{name}_excluded"] = mean_excluding_nan(values)
    return out


@dataclasses.dataclass(frozen=True)
class Sweeps:
    """Each image's score at each threshold of ``DEFAULT_SWEEP``, float64 (N, T) with NaN rows for empty
    masks: ``jaccard``, the IoU of the binarised map (``sweep_per_image``); ``box``, the best box IoU
    (``box_iou_sweep``)."""

    jaccard: np.ndarray
    box: np.ndarray

    @classmethod
    def of(cls, maps: np.ndarray, masks: np.ndarray) -> "Sweeps":
        return cls(sweep_per_image(maps, masks), box_iou_sweep(maps, masks))

    @classmethod
    def concatenate(cls, parts: list["Sweeps"]) -> "Sweeps":
        """The sweeps of the images of ``parts`` in order (none: zero rows)."""
        empty = np.zeros((0, len(DEFAULT_SWEEP)))
        return cls(np.concatenate([empty, *(p.jaccard for p in parts)]),
                   np.concatenate([empty, *(p.box for p in parts)]))


def _image_level(maps: np.ndarray, masks: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """The explanation metrics each image has on its own (every one but ``max_box_acc``)."""
    fixed = binarise(maps, threshold)
    return {
        "jaccard": iou(fixed, masks),
        "dice": dice(fixed, masks),
        "jaccard_otsu": iou(binarise_otsu(maps), masks),
        "jaccard_top20": iou(binarise_top_percent(maps, 20), masks),
        "roc_auc": roc_auc(maps, masks),
        "average_precision": average_precision(maps, masks),
        "pointing_game": pointing_game(maps, masks),
        "relevance_mass": relevance_mass(maps, masks),
        "relevance_rank": relevance_rank(maps, masks),
    }


def explanation_set(chunks: Iterable[tuple[np.ndarray, np.ndarray]], *, threshold: float
                    ) -> tuple[dict[str, np.ndarray], Sweeps]:
    """Per-image scores (N,) of every explanation metric over a set of images given as ``(maps, masks)``
    chunks whose concatenation is the set (so its maps need not be in memory together), and its ``Sweeps``.

    The scores are ``explanation_per_image``'s; ``max_box_acc``, whose thresholds are chosen over the set,
    is computed from the whole set's box sweep, never chunk by chunk."""
    parts, sweeps = [], []
    for maps, masks in chunks:
        maps, masks = _pair(maps, masks)
        parts.append(_image_level(maps, masks, threshold))
        sweeps.append(Sweeps.of(maps, masks))
    if not parts:
        parts = [_image_level(np.zeros((0, 1, 1)), np.zeros((0, 1, 1), bool), threshold)]
    scores = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    swept = Sweeps.concatenate(sweeps)
    scores["max_box_acc"] = max_box_accuracy(swept.box)
    return scores, swept


def explanation_per_image(maps: np.ndarray, masks: np.ndarray, *, threshold: float) -> dict[str, np.ndarray]:
    """Per-image scores (N,) of every explanation metric; NaN where undefined.

    Keys: ``jaccard`` and ``dice`` (binarised at ``threshold``), ``jaccard_otsu``, ``jaccard_top20`` (top
    20 % of pixels), ``roc_auc``, ``average_precision``, ``pointing_game``, ``relevance_mass``,
    ``relevance_rank``, and ``max_box_acc`` (``max_box_accuracy``: its thresholds are chosen over these N
    images, so a set scored in chunks goes through ``explanation_set``)."""
    return explanation_set([(maps, masks)], threshold=threshold)[0]


def explanation_summary(per_image: dict[str, np.ndarray], sweep: np.ndarray) -> dict[str, float]:
    """Mean of every explanation metric over the images, and ``<name>_excluded``: how many images gave NaN,
    from the per-image scores and ``sweep_per_image`` of the same images (which
    may have been computed chunk by chunk and concatenated)."""
    out = summary(per_image)
    _, _, best, curve_mean = sweep_summary(sweep)
    empty = int(np.isnan(sweep).all(axis=1).sum()) if sweep.shape[1] else 0
    out.update(sweep_mean=curve_mean, sweep_mean_excluded=empty, sweep_best=best, sweep_best_excluded=empty)
    return out


def segmentation_per_image(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image ``seg_iou``, ``seg_dice`` and ``seg_boundary_f1`` (tolerance 2 px) of bool (N, H, W)."""
    pred, truth = _pair(np.asarray(pred, dtype=bool), truth, "prediction")
    return {"seg_iou": iou(pred, truth), "seg_dice": dice(pred, truth), "seg_boundary_f1": boundary_f1(pred, truth)}
