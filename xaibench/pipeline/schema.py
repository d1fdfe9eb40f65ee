"""Every metric a cell is scored on, and every column of ``leaderboard.csv``, defined once.

A ``Metric`` says what one measured quantity is: its family, the per-image array its mean comes from, its
better direction, how tables print it, which explainers give its chance level, and which tables show it.
Scoring computes the families' metrics and their lifts over chance from here; ``leaderboard.csv`` has
exactly ``columns()`` and refuses a cell whose scores hold a key declared nowhere here (``undeclared``); the summary
gives every ``summarised()`` metric its mean over seeds, interval and spread; the markdown and LaTeX tables
take scale, digits, titles and their Table-I metrics from here. Adding a metric is one entry here, plus
the function that computes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from xaibench.pipeline.metrics import BOX_IOU_LEVELS

# Families, in the order the summary lists their metrics.
FAMILIES = ("accuracy", "explanation", "segmentation", "faithfulness", "sanity")
# The reference explainers every explanation is read against (they need no model), and the one a lift is
# taken over.
CHANCE_EXPLAINERS = ("random", "centre")
LIFT_OVER = "random"


@dataclasses.dataclass(frozen=True)
class Metric:
    """One measured quantity. ``per_image``: the array in a cell's per-image file its mean and interval
    come from (default: the name). ``chance``: the explainers whose maps give its chance level, each a
    column ``<explainer>_<name>``, with ``lift_<name>`` (the metric minus the ``random`` map's, in the
    better direction). ``table_one``: it has a Table-I layout (masks as columns, α as rows) in
    ``leaderboard.md``; ``latex``: it has one in the LaTeX document (``xaibench leaderboard --format latex``),
    under ``caption``."""

    name: str
    family: str
    higher_is_better: bool = True
    scale: float = 1.0
    digits: int = 3
    title: str = ""
    per_image: str = ""
    chance: tuple[str, ...] = ()
    table_one: bool = False
    latex: bool = False
    caption: str = ""

    @property
    def label(self) -> str:
        return self.title or self.name

    @property
    def key(self) -> str:
        return self.per_image or self.name

    def chance_columns(self) -> list[str]:
        return [f"{explainer}_{self.name}" for explainer in self.chance] + (["lift_" + self.name] if self.chance else [])

    def lift(self, value, chance):
        """``value`` minus the chance level ``chance``, turned so that a positive lift is better."""
        return value - chance if self.higher_is_better else chance - value


def _explanation(name: str, **kw) -> Metric:
    return Metric(name, "explanation", chance=CHANCE_EXPLAINERS, **kw)


METRICS: tuple[Metric, ...] = (
    Metric("accuracy", "accuracy", scale=100.0, digits=2, title="Accuracy (%)", per_image="correct", table_one=True,
           latex=True),
    _explanation("jaccard", title="Explanation Jaccard vs ground-truth masks", table_one=True, latex=True,
                 caption="Explanation Jaccard"),
    _explanation("dice"), _explanation("jaccard_otsu"), _explanation("jaccard_top20"), _explanation("roc_auc"),
    _explanation("average_precision"), _explanation("pointing_game"), _explanation("relevance_mass"),
    _explanation("relevance_rank"),
    _explanation("max_box_acc", title="MaxBoxAccV2 (τ per IoU level chosen on test)", latex=True,
                 caption="MaxBoxAccV2 (threshold per IoU level chosen on test)"),
    Metric("seg_iou", "segmentation", title="Segmentation IoU", table_one=True, latex=True,
           caption="Segmentation IoU"),
    Metric("seg_dice", "segmentation"), Metric("seg_boundary_f1", "segmentation"),
    Metric("deletion", "faithfulness", higher_is_better=False, chance=(LIFT_OVER,)),
    Metric("insertion", "faithfulness", chance=(LIFT_OVER,)),
    Metric("road", "faithfulness", chance=(LIFT_OVER,)),
    Metric("sanity_spearman", "sanity", higher_is_better=False),
    Metric("sanity_ssim", "sanity", higher_is_better=False),
)
# The explanation Jaccard at the CAM threshold τ* chosen on the validation split (not a family of its own
# in tables: it is shown after the fixed-threshold Jaccard).
JACCARD_VAL_TAU = Metric("jaccard_val_tau", "explanation", title="Explanation Jaccard at τ* chosen on validation",
                         table_one=True)
# MaxBoxAccV2 with the threshold of each IoU level chosen on the validation split (``max_box_acc`` chooses
# it on the test images it scores, as the paper does).
MAX_BOX_ACC_VAL_TAU = Metric("max_box_acc_val_tau", "explanation",
                             title="MaxBoxAccV2 at τ per IoU level chosen on validation")
# The metrics at thresholds chosen on validation (a cell without a val split has none of them).
VALIDATED = (JACCARD_VAL_TAU, MAX_BOX_ACC_VAL_TAU)
# The thresholds chosen on validation that a cell records: τ* for the Jaccard and, per IoU level δ of
# MaxBoxAccV2, ``box_tau_star_<100 δ>``.
BOX_TAU_COLUMNS = tuple(f"box_tau_star_{round(100 * level)}" for level in BOX_IOU_LEVELS)
CHOSEN_THRESHOLDS = ("tau_star", *BOX_TAU_COLUMNS)
# The columns of leaderboard.csv beside the families' metrics and chance columns (counts, the worst group's
# and validation accuracy, the threshold sweep, the thresholds chosen on validation and the metrics at
# them), each with the family whose metrics it follows ("": right after accuracy).
EXTRA_COLUMNS = {
    "n_test": "", "majority_share": "", "worst_group_accuracy": "", "n_groups": "", "val_accuracy": "", "n_val": "",
    "sweep_mean": "explanation", "sweep_best": "explanation", "tau_star": "explanation",
    "jaccard_val_tau": "explanation", **{column: "explanation" for column in BOX_TAU_COLUMNS},
    "max_box_acc_val_tau": "explanation", "jaccard_n": "explanation", "jaccard_excluded": "explanation",
    "faithfulness_n": "faithfulness", "sanity_n": "sanity", "seg_n": "segmentation",
    "seg_iou_excluded": "segmentation",
}
# What a cell's record holds that leaderboard.csv leaves out: the key its scores were computed for, and how
# many images each metric left out (NaN) where no column carries it.
# (``seg_excluded``: what cells scored by an earlier xaibench recorded for the segmentation metrics.)
RECORDED_ONLY = frozenset(
    ["score_key", "sweep_mean_excluded", "sweep_best_excluded", "seg_excluded"]
    + [f"{m.name}_excluded" for m in METRICS if m.family in ("explanation", "segmentation")]) - set(EXTRA_COLUMNS)


@dataclasses.dataclass(frozen=True)
class RoundMetric:
    """One measurement of a loop round (a column of ``loop_seeds.csv`` and ``loop.csv``): what it is, its
    column header in the report, and whether it is also reported as its change from round 0. Every one
    is a share or an IoU in [0, 1]."""

    name: str
    description: str
    header: str
    change: bool = False


ROUND_METRICS: tuple[RoundMetric, ...] = (
    RoundMetric("accuracy", "test accuracy (raw images)", "accuracy", change=True),
    RoundMetric("jaccard", "explanation Jaccard vs test references", "Jaccard", change=True),
    RoundMetric("annotation_iou", "IoU of the training annotations vs references", "annotation IoU", change=True),
    RoundMetric("proposal_iou", "IoU of the segmentations vs references", "segmentation IoU"),
    RoundMetric("accepted", "share of segmentations accepted", "accepted"),
    RoundMetric("changed", "share of annotations changed", "changed"),
)


def family(name: str) -> list[Metric]:
    return [m for m in METRICS if m.family == name]


def names(name: str) -> list[str]:
    """The metric names of a family, in schema order."""
    return [m.name for m in family(name)]


def get(name: str) -> Metric:
    """The metric of a column: a metric, one of ``VALIDATED``, or a chance or lift column (scaled like its
    metric; a lift is always better when higher)."""
    for metric in (*METRICS, *VALIDATED):
        if metric.name == name:
            return metric
        if name in metric.chance_columns():
            return dataclasses.replace(metric, name=name, title="", per_image="", chance=(), table_one=False,
                                       latex=False, caption="", higher_is_better=True if name.startswith("lift_")
                                       else metric.higher_is_better)
    raise KeyError(f"no metric {name!r} in xaibench.pipeline.schema")


def display(name: str) -> tuple[float, int]:
    """``(scale, digits)`` a table prints the column ``name`` with (``get``'s)."""
    metric = get(name)
    return metric.scale, metric.digits


def chance_columns() -> list[str]:
    """Every chance and lift column, in the order of their metrics."""
    return [column for m in METRICS for column in m.chance_columns()]


def columns() -> list[str]:
    """The metric columns of ``leaderboard.csv``, in order: accuracy and the test's counts; the
    explanation, faithfulness and sanity metrics, each family followed by its extra columns; the chance
    and lift columns; the segmentation metrics and theirs."""
    def extra(after: str) -> list[str]:
        return [name for name, where in EXTRA_COLUMNS.items() if where == after]

    out = ["accuracy"] + extra("")
    for name in ("explanation", "faithfulness", "sanity"):
        out += names(name) + extra(name)
    return out + chance_columns() + names("segmentation") + extra("segmentation")


def summarised() -> list[Metric]:
    """What the summary gives a mean over seeds, an interval and a spread, in its column order: each
    family's metrics, then the chance and lift columns, then the ``VALIDATED`` metrics."""
    ordered = [m for name in FAMILIES for m in family(name)]
    return ordered + [get(column) for column in chance_columns()] + list(VALIDATED)


def table_one(name: str) -> list[Metric]:
    """The metrics of a family with a Table-I layout in ``leaderboard.md``, in order."""
    return [m for m in (*family(name), *VALIDATED) if m.family == name and m.table_one]


def detail(name: str) -> list[str]:
    """The columns of a family's table of all its metrics in ``leaderboard.md``: its metrics, then those at
    thresholds chosen on validation that have no Table-I layout of their own."""
    return names(name) + [m.name for m in VALIDATED if m.family == name and not m.table_one]


def latex_tables(name: str) -> list[Metric]:
    """The metrics of a family with a Table-I layout in the LaTeX document, in order."""
    return [m for m in family(name) if m.latex]


def undeclared(keys: Iterable[str]) -> list[str]:
    """The keys of a cell's scores that are neither a column of ``leaderboard.csv`` nor ``RECORDED_ONLY``:
    metrics declared nowhere here, which the tables would otherwise leave out without a word."""
    return sorted(set(keys) - set(columns()) - RECORDED_ONLY)
