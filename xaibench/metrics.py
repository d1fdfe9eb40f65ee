"""Metrics of classifiers, explanations and segmentations against ground truth.

Rules: saliency maps are min-max normalised per image before binarising; an image whose ground-truth
mask is empty has no defined overlap score and gives NaN, which means exclude (``nanmean``) and count.
"""

from __future__ import annotations

import numpy as np


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of argmax predictions equal to ``labels``; logits (N, C), labels int (N,)."""
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def normalise(maps: np.ndarray) -> np.ndarray:
    """Per-image min-max scaling of (N, H, W) maps to [0, 1]; a constant map becomes all zeros."""
    maps = np.asarray(maps, dtype=np.float32)
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


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
