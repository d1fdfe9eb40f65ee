"""The built-in acceptance rules of the annotation loop, on hand-made masks."""

import numpy as np
import pytest

from xaibench.errors import ComponentParamsError


def square(top, left, side, size=20):
    mask = np.zeros((size, size), bool)
    mask[top : top + side, left : left + side] = True
    return mask


@pytest.fixture
def saliency():
    """High (1.0) on the 10×10 square at (5, 5), low (0.2) elsewhere, minimum 0."""
    sal = np.full((20, 20), 0.2, np.float32)
    sal[0, 0] = 0.0
    sal[5:15, 5:15] = 1.0
    return sal


def accept(registry, name, annotation, proposal, saliency, score=float("nan"), **params):
    return registry.create("acceptors", name, **params)(annotation, proposal, saliency=saliency, score=score)


def test_always_takes_every_proposal_with_enough_pixels(registry, saliency):
    proposal = square(0, 0, 3)
    assert accept(registry, "always", square(5, 5, 10), proposal, saliency) is proposal
    assert accept(registry, "always", square(5, 5, 10), proposal, saliency, min_pixels=10) is None
    assert accept(registry, "always", square(5, 5, 10), square(0, 0, 0), saliency) is None


def test_agreement_takes_a_tighter_outline_of_the_salient_region(registry, saliency):
    annotation = square(4, 4, 12)  # a loose outline: 144 px around the 100 px region
    proposal = square(5, 5, 10)
    assert accept(registry, "agreement", annotation, proposal, saliency) is proposal
    assert accept(registry, "agreement", annotation, proposal, saliency, score=0.9, min_score=0.8) is proposal


@pytest.mark.parametrize("why, proposal, score, params", [
    ("the segmenter is unsure", square(5, 5, 10), 0.5, {"min_score": 0.8}),
    ("the explanation disagrees", square(4, 4, 12), float("nan"), {"min_saliency": 0.9}),
    ("it strays from the annotation", square(9, 9, 10), float("nan"), {"min_overlap": 0.5}),
    ("it is far larger", square(0, 0, 20), float("nan"), {"min_saliency": 0.0, "min_overlap": 0.0}),
    ("it is far smaller", square(8, 8, 4), float("nan"), {"min_overlap": 0.0}),
    ("it is too small", square(8, 8, 4), float("nan"), {"min_overlap": 0.0, "max_growth": 100, "min_pixels": 17}),
])
def test_agreement_keeps_the_annotation_when(registry, saliency, why, proposal, score, params):
    annotation = square(5, 5, 10)
    assert accept(registry, "agreement", annotation, proposal, saliency, score=score, **params) is None


def test_agreement_fills_in_an_annotation_that_is_empty(registry, saliency):
    proposal = square(5, 5, 10)
    assert accept(registry, "agreement", np.zeros((20, 20), bool), proposal, saliency) is proposal


def test_agreement_checks_its_parameters_and_inputs(registry, saliency):
    with pytest.raises(ComponentParamsError, match="max_growth"):
        registry.create("acceptors", "agreement", max_growth=0.5)
    with pytest.raises(ValueError, match="bool masks of one shape"):
        accept(registry, "agreement", square(5, 5, 10), square(5, 5, 10, size=10), saliency)
