"""Grouped, label-stratified assignment of samples to splits.

Samples that look alike (tiles of one photo, neighbouring tiles on a map) form a group, and a group must
land in one split whole, or the test split would hold near-copies of training samples. Within that
constraint each split should hold about its fraction of every class. ``grouped_stratified_split`` does
this for any dataset: it sees only group names, per-group label counts, the fractions and a seed.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np

# Names the assignment rule below. Change it whenever the same inputs can give a different assignment:
# datasets that save an assignment store or key it with METHOD, so one saved under an older rule is
# generated again instead of being reused.
METHOD = "greedy-largest-first-1"


def grouped_stratified_split(
    group_counts: Mapping[Hashable, Mapping[Hashable, int]],
    fractions: Mapping[str, float],
    seed: int,
) -> dict[Hashable, str]:
    """Assign whole groups to splits so that each split holds about its fraction of every class.

    ``group_counts``: group name -> label -> number of samples of that label in the group (labels a group
    lacks may be left out). Group names must be sortable among themselves, and so must labels; every group
    holds at least one sample. ``fractions``: split name -> share in [0, 1], summing to 1; a split with
    share 0 gets no group. ``seed``: a non-negative int.

    Returns group name -> split name for every group.

    Rule: groups are taken largest first (by sample count; equal sizes in an order drawn from ``seed``
    over the sorted group names). Each goes to the split, among those with a non-zero share, where it
    most reduces the squared shortfall of the per-class counts against their targets (share x class
    total), every class weighted by its inverse total so that rare classes count as much as common ones;
    ties go to the split listed first in ``fractions``. Once the groups left are no more than the
    non-zero-share splits still empty, each goes to one of those (the best by the same measure).

    Guarantees: groups are never divided; the result depends only on ``group_counts``, ``fractions`` and
    ``seed``, not on the order groups or their labels are given in (the order of ``fractions`` only
    breaks ties); with at least as many groups as non-zero-share splits every such split gets a group,
    and with fewer each group gets a split of its own. Proportions are greedy, not optimal: a split's
    count of a class typically lands within about one group's size of its target, so they approach the
    fractions as groups get small relative to the class totals. Raises ``ValueError`` for bad fractions,
    negative counts or an empty group."""
    splits = list(fractions)
    shares = np.array([float(fractions[s]) for s in splits])
    if not splits or (shares < 0).any() or (shares > 1).any() or not np.isclose(shares.sum(), 1.0, atol=1e-9):
        raise ValueError(f"fractions must be shares in [0, 1] summing to 1, got {dict(fractions)}")
    groups = sorted(group_counts)
    labels = sorted({label for counts in group_counts.values() for label in counts})
    matrix = np.array([[group_counts[g].get(label, 0) for label in labels] for g in groups], dtype=float)
    matrix = matrix.reshape(len(groups), len(labels))
    if (matrix < 0).any():
        raise ValueError("group_counts must not be negative")
    sizes = matrix.sum(axis=1)
    if (sizes == 0).any():
        raise ValueError(f"group {groups[int(np.argmin(sizes))]!r} holds no samples")

    totals = matrix.sum(axis=0)
    targets = shares[:, None] * totals[None, :]
    weights = 1.0 / np.maximum(totals, 1.0)
    shuffled = np.random.default_rng(seed).permutation(len(groups))
    order = sorted(shuffled.tolist(), key=lambda i: -sizes[i])  # stable: the seed's order among equals
    open_splits = shares > 0
    filled = np.zeros(len(splits), bool)
    assigned = np.zeros_like(targets)
    result = {}
    for step, group in enumerate(order):
        empty = open_splits & ~filled
        allowed = empty if len(order) - step <= empty.sum() else open_splits
        before = ((assigned - targets) * weights) ** 2
        after = ((assigned + matrix[group] - targets) * weights) ** 2
        change = np.where(allowed, (after - before).sum(axis=1), np.inf)
        chosen = int(np.argmin(change))
        assigned[chosen] += matrix[group]
        filled[chosen] = True
        result[groups[group]] = splits[chosen]
    return result
