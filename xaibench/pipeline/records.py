"""Typed records that cross module boundaries: statuses, label columns, stage results, cell rows, counters.

Every layer speaks these: the engine returns ``StageResult`` and ``RunCounts``, scoring turns plans into
``CellRow``, the store keeps them, and tables read their label columns from ``CELL_LABELS``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

import numpy as np


class Status(str, enum.Enum):
    """What became of a stage, a cell or a loop round. A ``str``, so it is stored and compared as text."""

    DONE = "done"
    FAILED = "failed"
    CONVERGED = "converged"  # a loop round that changed no annotation
    STOPPED = "stopped"  # a loop round that changed at most loop.min_changed of them

    def __str__(self) -> str:
        return self.value


# The label columns of a cell, in the order tables show them: one definition for grid, leaderboard, loop.
CELL_LABELS = ("dataset", "backbone", "seed", "mask", "ensemble", "alpha", "explainer", "seeder", "segmenter")
# A configuration is a cell's labels without its seed: what a row of a summary over seeds describes.
CONFIG_LABELS = tuple(c for c in CELL_LABELS if c != "seed")
# A loop chain adds its acceptance rule.
CHAIN_LABELS = (*CELL_LABELS, "acceptor")
CHAIN_CONFIG_LABELS = (*CONFIG_LABELS, "acceptor")


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why a stage (and every cell depending on it) failed: the stage's label, the component that
    failed (kind, name, plugin and distribution; empty when it was not a component), the message."""

    stage: str
    component: str
    message: str

    def line(self) -> str:
        who = f" [{self.component}]" if self.component else ""
        return f"{self.stage}{who}: {self.message}"


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What running one stage gives back to the driver (small and picklable: artifacts are on disk)."""

    key: str
    ok: bool
    seconds: float
    meta: dict = dataclasses.field(default_factory=dict)
    error: str | None = None  # one-line message
    traceback: str | None = None
    component: str = ""  # the component that failed, as ``Failure.component``
    user_error: bool = False
    transient: bool = False  # the machine's fault (a full disk, a killed worker): the next run retries it
    files: dict = dataclasses.field(default_factory=dict)  # relative path → (size, sha256, probe) written


@dataclasses.dataclass(frozen=True)
class CellRow:
    """One cell's record in the store: its labels (``CELL_LABELS``), status, mean scores and error."""

    cell_id: str
    labels: dict
    status: Status
    metrics: dict = dataclasses.field(default_factory=dict)
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class RoundRow:
    """One loop chain's record of one round (a row of ``loop_seeds.csv``): its labels
    (``CHAIN_CONFIG_LABELS`` and seed), round, status, measurements (``scoring.round_scores``; none where
    the round's model failed) and the error of a failed round."""

    labels: dict
    round: int
    status: Status
    scores: dict = dataclasses.field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict:
        """The row as ``loop_seeds.csv`` writes it: labels, round, status, measurements, error."""
        return {**self.labels, "round": self.round, "status": self.status.value, **self.scores,
                **({"error": self.error} if self.error is not None else {})}


@dataclasses.dataclass
class RunCounts:
    """How many stages a command ran, reused and saw fail; trainings among them."""

    stages_run: int = 0
    stages_reused: int = 0
    stages_failed: int = 0
    trainings_run: int = 0
    trainings_reused: int = 0

    def add(self, other: "RunCounts") -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def component_label(name: str, params: Mapping) -> str:
    """How a component choice is named in cell labels, tables and file names: its name with its
    parameters sorted by name, ``top-k(k=3,min_distance=12)``, or the name alone where it has none.
    ``component_name`` reads the name back."""
    inner = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    return f"{name}({inner})" if params else name


def component_name(label) -> str:
    """The component name of a ``component_label``: ``top-k`` of ``top-k(k=3)``."""
    return str(label).split("(", 1)[0]


def variant_label(ensemble: str, alpha) -> str:
    """How a model variant is named in tables and figures: ``Baseline``; ``α=0.8`` for an ensemble with a
    mixing weight (``plan.mixing_weight``); otherwise the ensemble's own label (``prob-mean``)."""
    if ensemble == "baseline":
        return "Baseline"
    try:
        weight = float(alpha)
    except (TypeError, ValueError):
        weight = float("nan")
    return f"α={weight:g}" if weight == weight else str(ensemble)


def failure_table(failures) -> list[dict]:
    """Each distinct ``Failure`` of an iterable (one per failed cell or loop round) with how many times it
    occurs, most first, as rows of ``run.json``'s ``failures``."""
    counts: dict[Failure, int] = {}
    for failure in failures:
        counts[failure] = counts.get(failure, 0) + 1
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    return [{"stage": f.stage, "component": f.component, "message": f.message, "cells": n} for f, n in ordered]


# -- what figures are drawn from (prepared by xaibench.pipeline.exhibits) -----------------------------------------


@dataclasses.dataclass
class MaskExamples:
    """Fig. 1: a few annotated training tiles, raw and under every mask of the grid."""

    dataset: str
    classes: list[str]  # class name of each tile
    columns: dict[str, np.ndarray]  # "raw", each band outside the composite and each mask → float (N, H, W, 3) in [0, 1]


@dataclasses.dataclass
class OverlayPanel:
    row: int
    column: str
    image: np.ndarray  # uint8 (H, W, 3), the colour composite
    saliency: np.ndarray  # float32 (H, W) in [0, 1]
    points: np.ndarray  # float (N, 2) as (x, y)
    labels: np.ndarray  # (N,) 1 foreground, 0 background
    prediction: np.ndarray | None  # bool (H, W)
    truth: np.ndarray  # bool (H, W)
    boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (M, 4) pixel edges


@dataclasses.dataclass
class Overlays:
    """Fig. 2 of one dataset and explainer → seeder → segmenter chain: test tiles × model variants."""

    dataset: str
    chain: list[str]  # labels of the explainer, seeder and segmenter (those present)
    names: list[str]  # names of the same components, for the file name
    columns: list[str]
    panels: list[OverlayPanel]


@dataclasses.dataclass
class AnnotationSeries:
    """The training tiles of one loop chain whose annotation moved most, round by round."""

    title: str
    images: np.ndarray  # uint8 (R, H, W, 3), the colour composite
    reference: np.ndarray  # bool (R, H, W)
    columns: list[tuple[str, np.ndarray, np.ndarray]]  # (name, masks bool (R, H, W), IoU to reference (R,))
