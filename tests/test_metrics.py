import numpy as np
import pytest

from xaibench.pipeline import metrics


def test_iou_on_hand_computed_masks():
    pred = np.zeros((2, 4, 4), bool)
    truth = np.zeros((2, 4, 4), bool)
    pred[0, :2, :2] = True  # 4 pixels
    truth[0, :2, :3] = True  # 6 pixels, 4 shared -> 4 / 6
    pred[1, 0, 0] = True  # truth empty -> undefined
    scores = metrics.iou(pred, truth)
    assert scores[0] == pytest.approx(4 / 6)
    assert np.isnan(scores[1])
    assert metrics.mean_excluding_nan(scores) == (pytest.approx(4 / 6), 1)


def test_iou_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differs"):
        metrics.iou(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5), bool))


def test_binarise_normalises_each_map_first():
    maps = np.array([[[0.0, 1.0], [2.0, 4.0]], [[5.0, 5.0], [5.0, 5.0]]])
    assert metrics.binarise(maps, 0.5).tolist() == [[[False, False], [True, True]], [[False, False], [False, False]]]


def test_accuracy():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert metrics.accuracy(logits, np.array([0, 1, 1])) == pytest.approx(2 / 3)
