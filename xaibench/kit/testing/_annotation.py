"""The conformance checks of the annotation side: seeders (maps to prompts), segmenters (prompts to
masks) and acceptors (whether a mask replaces an annotation)."""

from __future__ import annotations

import numpy as np

from xaibench.kit import contracts
from xaibench.kit.contracts import Prompts
from xaibench.kit.testing._core import _call, _expect, _label, _valid
from xaibench.kit.testing._inputs import HEIGHT, WIDTH, _bump_map, _smooth_map, _uint8_image

# -- seeders -----------------------------------------------------------------------------------------------


def check_seeder(seeder, *, name: str | None = None) -> None:
    """``seeder(saliency)``: ``Prompts`` with float32 (N, 2) points (x, y) inside the image and int64 labels
    in {0, 1}, boxes inside the image, a dense map of its size, and no kind of prompt it does not declare
    (``prompt_kinds``); at least one prompt marking an object on a map with a peak; deterministic; the map
    unmodified."""
    label = _label("seeders", seeder, name)
    kinds = contracts.capability(seeder, "prompt_kinds", "seeders")
    _expect(isinstance(kinds, tuple) and kinds and set(kinds) <= set(contracts.PROMPT_KINDS), label,
            f"prompt_kinds is {kinds!r}", f"declare a tuple of the kinds it gives, from {contracts.PROMPT_KINDS}")
    maps = {"a smooth map": _smooth_map(), "a single bump": _bump_map(),
            "a constant map": np.full((HEIGHT, WIDTH), 0.5, np.float32), "an all-zero map": np.zeros((HEIGHT, WIDTH),
                                                                                                       np.float32)}
    for what, saliency in maps.items():
        before = saliency.copy()
        call = f"seeder(saliency) with {what}, float32 ({HEIGHT}, {WIDTH})"
        found = _call(label, call, seeder, saliency)
        _valid(label, call, contracts.validate_prompt_sets, [found], saliency[None], kinds)
        if what in ("a smooth map", "a single bump"):
            _expect(not found.empty, label, f"{call} gave no prompt marking an object",
                    "return at least one positive point, box or dense map where the map has a peak")
        again = _call(label, call, seeder, saliency)
        _expect(_same_prompts(again, found), label, f"{call} differs between two calls",
                "make seeding deterministic for a given map")
        _expect(np.array_equal(saliency, before), label, f"{call} modified the map", "never write into the map")


def _same_prompts(a: Prompts, b: Prompts) -> bool:
    same = [np.array_equal(a.points, b.points), np.array_equal(a.labels, b.labels)]
    for x, y in ((a.boxes, b.boxes), (a.dense, b.dense)):
        same.append((x is None) == (y is None) and (x is None or np.array_equal(x, y)))
    return all(same)


# -- segmenters --------------------------------------------------------------------------------------------


def _prompts(points, labels) -> Prompts:
    return Prompts(np.asarray(points, np.float32).reshape(-1, 2), np.asarray(labels, np.int64))


def check_segmenter(segmenter, *, name: str | None = None) -> None:
    """``segment(image, prompts[, saliency=...])``: one bool (H, W) mask per prompt set (none for none),
    deterministic, inputs unmodified; ``uses_saliency`` segmenters also get one map per prompt set. The
    prompt sets hold points; a segmenter that declares ``prompt_kinds`` with boxes or dense also gets a
    set of boxes, a dense map, and both with points."""
    label = _label("segmenters", segmenter, name)
    kinds = contracts.capability(segmenter, "prompt_kinds", "segmenters")
    _expect(isinstance(kinds, tuple) and kinds and set(kinds) <= set(contracts.PROMPT_KINDS), label,
            f"prompt_kinds is {kinds!r}", f"declare a tuple of the kinds it takes, from {contracts.PROMPT_KINDS}")
    uses_saliency = getattr(segmenter, "uses_saliency", False)
    _expect(isinstance(uses_saliency, bool), label, f"uses_saliency is {uses_saliency!r}",
            "set the class attribute uses_saliency = True or False")
    image = _uint8_image()
    prompt_sets = [_prompts([[22, 14], [3, 3]], [1, 0]), _prompts([[20, 12]], [1]), _prompts([], [])]
    shown = ["positive+negative", "positive", "empty prompts"]
    box = np.array([[13, 7, 33, 23]], np.float32)  # round the red rectangle
    dense = np.full((HEIGHT, WIDTH), -8.0, np.float32)
    dense[8:22, 14:32] = 8.0
    if "boxes" in kinds:
        prompt_sets.append(Prompts(np.zeros((0, 2), np.float32), np.zeros(0, np.int64), box))
        shown.append("a box")
    if "dense" in kinds:
        prompt_sets.append(Prompts(np.zeros((0, 2), np.float32), np.zeros(0, np.int64), dense=dense))
        shown.append("a dense map")
    if {"points", "boxes"} <= set(kinds):
        prompt_sets.append(Prompts(np.array([[22, 14]], np.float32), np.ones(1, np.int64), box))
        shown.append("a box with a point")
    n = len(prompt_sets)
    saliency = [_bump_map() for _ in prompt_sets]
    before = image.copy(), [Prompts(p.points.copy(), p.labels.copy(), None if p.boxes is None else p.boxes.copy(),
                                    None if p.dense is None else p.dense.copy()) for p in prompt_sets], \
        [s.copy() for s in saliency]
    extra = {"saliency": saliency} if uses_saliency else {}
    call = (f"segment(image uint8 ({HEIGHT}, {WIDTH}, 3), [{', '.join(shown)}]"
            + (f", saliency=[{n} maps])" if uses_saliency else ")"))
    masks = _call(label, call, segmenter.segment, image, prompt_sets, **extra)
    _expect(isinstance(masks, list), label, f"{call} returned {type(masks).__name__}",
            "return a list with one mask per prompt set")
    _valid(label, call, contracts.validate_segmentation, masks, n, HEIGHT, WIDTH)
    again = _call(label, call, segmenter.segment, image, prompt_sets, **extra)
    _expect(all(np.array_equal(a, b) for a, b in zip(masks, again)), label, f"{call} differs between calls",
            "make segmentation deterministic (seed any randomness)")
    empty = _call(label, "segment(image, [])", segmenter.segment, image, [], **({"saliency": []} if extra else {}))
    _expect(list(empty) == [], label, f"segment(image, []) returned {empty!r}", "return [] for no prompt sets")
    _expect(np.array_equal(image, before[0]) and all(_same_prompts(p, kept) for p, kept in zip(prompt_sets, before[1]))
            and all(np.array_equal(s, b) for s, b in zip(saliency, before[2])), label,
            f"{call} modified its inputs", "never write into the image, the prompts or the maps")
    if hasattr(segmenter, "segment_with_scores"):
        scored = _call(label, call.replace("segment(", "segment_with_scores(", 1), segmenter.segment_with_scores,
                       image, prompt_sets, **extra)
        _expect(isinstance(scored, tuple) and len(scored) == 2 and len(scored[0]) == n
                and all(np.array_equal(a, b) for a, b in zip(masks, scored[0])), label,
                "segment_with_scores did not return (the masks of segment, one score per mask)",
                "return (masks, scores) with the same masks as segment() and a float score per mask")
        _valid(label, "segment_with_scores(...)", contracts.validate_segmentation, scored[0], n, HEIGHT, WIDTH,
               scored[1])
        _expect(all(isinstance(v, (float, np.floating)) for v in scored[1]), label,
                f"segment_with_scores gave scores {scored[1]!r}",
                "scores are floats in [0, 1], or NaN where a mask has no confidence")


# -- acceptors ---------------------------------------------------------------------------------------------


def check_acceptor(acceptor, *, name: str | None = None) -> None:
    """``acceptor(annotation, proposal, *, saliency, score)``: None or a bool (H, W) mask, for a confident
    and an unscored (NaN) proposal and an empty annotation; deterministic; inputs unmodified."""
    label = _label("acceptors", acceptor, name)
    _expect(callable(acceptor), label, "it is not callable",
            "define __call__(self, annotation, proposal, *, saliency, score)")
    saliency = _bump_map()
    proposal = saliency >= 0.5
    annotation = np.roll(proposal, 2, axis=1)
    cases = [(annotation, 0.9), (annotation, float("nan")), (np.zeros_like(annotation), 0.9)]
    for current, score in cases:
        inputs = current.copy(), proposal.copy(), saliency.copy()
        call = f"acceptor(annotation ({current.sum()} pixels), proposal, saliency=map, score={score})"
        out = _call(label, call, acceptor, inputs[0], inputs[1], saliency=inputs[2], score=score)
        _valid(label, call, contracts.validate_annotation, out, proposal.shape)
        again = _call(label, call, acceptor, current.copy(), proposal.copy(), saliency=saliency.copy(), score=score)
        _expect((out is None and again is None) or (out is not None and again is not None
                                                    and np.array_equal(out, again)),
                label, f"{call} differs between calls", "make the rule deterministic")
        _expect(np.array_equal(inputs[0], current) and np.array_equal(inputs[1], proposal)
                and np.array_equal(inputs[2], saliency), label, f"{call} modified its inputs",
                "never write into the annotation, the proposal or the map")
