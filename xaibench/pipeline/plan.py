"""Planning: which cached stages a set of cells (or annotation-loop rounds) needs, keyed by content.

Stages and what they store (``DIR/cache/<kind>/<key>...``):

- ``data``: the dataset's splits as arrays (images uint8, labels, masks (the annotations), references (the
  exact masks; equal to masks unless the dataset says its annotations are imprecise), has_mask,
  has_reference, ids).
- ``train``: the baseline model trained on raw training images (safetensors).
- ``finetune``: the baseline fine-tuned on masked training images, one per mask and set of annotations.
- ``logits``: a model's logits on the raw test images.
- ``explain``: saliency maps of a model or ensemble for the annotated images of a split (test by default).
- ``seeds``: point prompts drawn from those maps by a seeder.
- ``segment``: the segmenter's masks (and confidences, where it gives them) for those prompts.
- ``accept``: the annotation loop's next training annotations: the current ones, each replaced by its
  image's segmentation where the acceptance rule accepts it.

A stage's key hashes exactly what changes its result: its component names, parameters and plugin
versions, its configuration, its upstream keys and the seed; never the device, paths or worker counts.
So one dataset and seed with 4 masks is 5 trainings whatever the α values, explainers or segmenters.

Each stage kind has a frozen spec class (``DataSpec`` ... ``AcceptSpec``) holding what its run reads.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Union

from xaibench.errors import GridError, NotFetched, UserError
from xaibench.kit.contracts import capability
from xaibench.pipeline.grid import (SECTION_KIND, Cell, Choice, Grid, TrainConfig, all_choices, digest, expand,
                                    iter_cells, label_of, load_grid)
from xaibench.pipeline.records import CELL_LABELS

# Bump when the data stage writes other arrays (2: each sample's group), so data folders are written again.
DATA_FORMAT = 2
# Bump when the faithfulness stage computes something else, so its artifacts are made again.
FAITHFULNESS_VERSION = 1
# Bump when the sanity stage re-initialises or compares otherwise (``xaibench.pipeline.sanity``).
SANITY_VERSION = 1


# -- stage specs -------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SingleModel:
    """An explanation of one trained model (its ``train`` or ``finetune`` stage key)."""

    key: str

    @property
    def ident(self) -> dict:
        return {"model": self.key}

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,)


@dataclasses.dataclass(frozen=True)
class MixedModel:
    """An explanation of an ensemble of the raw and the masked model under an ensemble rule."""

    raw: str
    masked: str
    ensemble: Choice
    version: str  # of the ensemble rule's plugin

    @property
    def ident(self) -> dict:
        return {"raw": self.raw, "masked": self.masked, "ensemble": self.ensemble.ident, "version": self.version}

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.raw, self.masked)


ModelRef = Union[SingleModel, MixedModel]


@dataclasses.dataclass(frozen=True)
class DataSpec:
    dataset: Choice


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    backbone: Choice
    data: str
    seed: int
    train: TrainConfig  # what training.fit trains with


@dataclasses.dataclass(frozen=True)
class FinetuneSpec:
    backbone: Choice
    data: str
    init: str  # the baseline's train key
    mask: Choice
    seed: int
    train: TrainConfig
    missing_mask: str
    annotations: str | None = None  # an accept stage's key; None: the dataset's own annotations


@dataclasses.dataclass(frozen=True)
class LogitsSpec:
    backbone: Choice
    model: str
    data: str


@dataclasses.dataclass(frozen=True)
class ExplainSpec:
    backbone: Choice
    data: str
    model: ModelRef
    split: str
    explainer: Choice
    batch_size: int


@dataclasses.dataclass(frozen=True)
class FaithfulnessSpec:
    """Deletion, insertion and ROAD of an explanation's maps, and of the ``random`` map's, on its model."""

    backbone: Choice
    data: str
    model: ModelRef
    explain: str
    steps: int
    images: int  # how many of the explained images (0: all)
    batch_size: int


@dataclasses.dataclass(frozen=True)
class SanitySpec:
    """The model-parameter randomisation test of an explanation: its explainer again on the model with its
    layers from the target layer on re-initialised, compared with its maps (``xaibench.pipeline.sanity``)."""

    backbone: Choice
    data: str
    model: ModelRef
    explain: str
    explainer: Choice
    images: int  # how many of the explained images (0: all)
    batch_size: int


@dataclasses.dataclass(frozen=True)
class SeedsSpec:
    explain: str
    seeder: Choice
    data: str  # the explained images' data and split (for naming them in messages; not in the key)
    split: str


@dataclasses.dataclass(frozen=True)
class SegmentSpec:
    seeds: tuple[str, ...]
    explain: str
    data: str
    segmenter: Choice
    split: str


@dataclasses.dataclass(frozen=True)
class AcceptSpec:
    data: str
    annotations: str | None
    explain: str
    segment: str
    acceptor: Choice


StageSpec = Union[DataSpec, TrainSpec, FinetuneSpec, LogitsSpec, ExplainSpec, FaithfulnessSpec, SanitySpec, SeedsSpec,
                  SegmentSpec, AcceptSpec]


@dataclasses.dataclass(frozen=True)
class StageKind:
    """What one kind of stage is. ``name``: in stage keys, labels and the cache's folder names. ``cost``:
    its rough cost relative to the other kinds (the scheduler starts the longest chain of expected work
    first). ``trains``: it trains a model. Its artifact: one file ``<key><suffix>`` in the cache folder
    ``folder`` (default: the name), or, with ``arrays``, an array folder holding those arrays (one per
    split for ``data``). The stage runner's table (``stages.RUNS``) is keyed by the same spec types."""

    name: str
    cost: float
    trains: bool = False
    suffix: str = ".npz"
    folder: str = ""
    arrays: tuple[str, ...] = ()

    @property
    def directory(self) -> str:
        return self.folder or self.name


STAGE_KINDS: dict[type, StageKind] = {
    DataSpec: StageKind("data", 3.0, suffix="", arrays=("images", "labels", "masks", "references", "has_mask",
                                                        "has_reference", "ids", "groups", "classes")),
    TrainSpec: StageKind("train", 100.0, trains=True, suffix=".safetensors", folder="models"),
    FinetuneSpec: StageKind("finetune", 60.0, trains=True, suffix=".safetensors", folder="models"),
    LogitsSpec: StageKind("logits", 2.0),
    ExplainSpec: StageKind("explain", 5.0, suffix="", arrays=("maps", "index")),
    FaithfulnessSpec: StageKind("faithfulness", 8.0),
    SanitySpec: StageKind("sanity", 5.0),
    SeedsSpec: StageKind("seeds", 1.0),
    SegmentSpec: StageKind("segment", 10.0),
    AcceptSpec: StageKind("accept", 1.0),
}
# The same kinds by name (what artifacts and the store are addressed by).
KINDS: dict[str, StageKind] = {kind.name: kind for kind in STAGE_KINDS.values()}
TRAINING_KINDS = tuple(kind.name for kind in STAGE_KINDS.values() if kind.trains)


@dataclasses.dataclass(frozen=True)
class Stage:
    key: str
    label: str
    deps: tuple[str, ...]
    spec: StageSpec

    @property
    def kind(self) -> str:
        return STAGE_KINDS[type(self.spec)].name

    @property
    def expected_cost(self) -> float:
        return STAGE_KINDS[type(self.spec)].cost


# -- cells and their stages --------------------------------------------------------------------------------


@dataclasses.dataclass
class CellPlan:
    """The stage keys one cell's metrics are read from, and the cell's label columns."""

    cell: Cell
    labels: dict  # CELL_LABELS → value
    data: str
    raw_model: str
    masked_model: str | None
    raw_logits: str
    masked_logits: str | None
    explain: str | None
    seeds: str | None
    segment: str | None
    segment_index: int = 0  # this cell's seeder among those the segment stage prompts with
    explain_val: str | None = None  # the same explanation of the val split (τ* is chosen on it)
    faithfulness: str | None = None
    sanity: str | None = None

    @property
    def keys(self) -> list[str]:
        return [k for k in (self.data, self.raw_model, self.masked_model, self.raw_logits, self.masked_logits,
                            self.explain, self.seeds, self.segment, self.explain_val, self.faithfulness,
                            self.sanity) if k]


@dataclasses.dataclass
class Plan:
    stages: dict[str, Stage]  # in dependency order
    cells: list[CellPlan]
    builder: "PlanBuilder | None" = None
    # (explain, segmenter, data) → the seeds stages one segment stage prompts with (see build_plan)
    segment_groups: dict[tuple, set] = dataclasses.field(default_factory=dict)
    n_cells: int = 0  # also when the cells themselves were not kept
    not_fetched: tuple[str, ...] = ()  # a dry run's: what a real run would download first

    def count(self, *kinds) -> int:
        return sum(1 for s in self.stages.values() if s.kind in kinds)

    def group_segments(self, failed=frozenset()) -> None:
        """Plan one segment stage per explanation and segmenter, prompted by every seeder of that group
        whose seeds stage is not in ``failed``, and point each cell at its stage and seeder slot. So
        expensive per-image work (SAM's image embedding) is done once for all seeders, and one broken
        seeder fails its own cells only: its group is segmented without it (under another key)."""
        planned = {k for k, s in self.stages.items() if s.kind == "segment"}
        segment_of = {}
        for (explain, segmenter, data), seed_keys in self.segment_groups.items():
            working = sorted(k for k in seed_keys if k not in failed)
            if working:
                key = self.builder.segment(segmenter, explain, working, data)
                segment_of.update({(seeds, segmenter): (key, i) for i, seeds in enumerate(working)})
        for cp in self.cells:
            if cp.seeds is not None:
                cp.segment, cp.segment_index = segment_of.get((cp.seeds, cp.cell.segmenter), (None, 0))
        used = {key for key, _ in segment_of.values()}
        for key in planned - used:
            del self.stages[key]


def mixing_weight(registry, ensemble: Choice | None) -> float:
    """α, the weight of the raw-image model, of a cell: 1 for the baseline; for an ensemble whose rule
    declares a ``mixing_parameter`` (``xaibench.kit.contracts.Ensemble``), that parameter's value; NaN for
    rules that have none (they are not a mix with one weight)."""
    if ensemble is None:
        return 1.0
    factory = registry.get("ensembles", ensemble.name).factory
    name = capability(factory, "mixing_parameter", "ensembles")
    if name is None:
        return math.nan
    if name in ensemble.params:
        return float(ensemble.params[name])
    default = inspect.signature(factory).parameters[name].default
    return float(default) if default is not inspect.Parameter.empty else math.nan


def cell_labels(cell: Cell, registry, alpha: float | None = None) -> dict:
    """The label columns (``records.CELL_LABELS``) of a cell, as its tables show them (``alpha``: the
    cell's mixing weight when the caller has it already)."""
    labels = {
        "dataset": label_of(cell.dataset),
        "backbone": label_of(cell.backbone),
        "seed": cell.seed,
        "mask": label_of(cell.mask) if cell.mask else "none",
        "ensemble": label_of(cell.ensemble) if cell.ensemble else "baseline",
        "alpha": mixing_weight(registry, cell.ensemble) if alpha is None else alpha,
        "explainer": label_of(cell.explainer),
        "seeder": label_of(cell.seeder),
        "segmenter": label_of(cell.segmenter),
    }
    return {column: labels[column] for column in CELL_LABELS}


def check_components(grid: Grid, registry, extra: tuple = (), *,
                     fetch: bool = True) -> tuple[dict[Choice, str], list[str]]:
    """Call the optional ``check()`` of every component of the grid (missing data, weights, checkpoints)
    and fingerprint every dataset; report all problems at once. ``extra``: more ``(kind, choice)`` pairs
    to check. ``fetch=False`` (a dry run) downloads nothing: a check that takes ``fetch`` is told so and
    raises ``NotFetched`` for what a real run would download. Returns dataset choice → fingerprint (a
    placeholder for data not fetched) and one line per thing not fetched."""
    problems: list[str] = []
    not_fetched: list[str] = []
    fingerprints: dict[Choice, str] = {}
    pairs = [(kind, choice) for section, kind in SECTION_KIND.items() for choice in all_choices(getattr(grid, section))]
    for kind, choice in dict.fromkeys([*pairs, *extra]):
        try:
            component = registry.create(kind, choice.name, **choice.params)
            check = capability(component, "check", kind)
            if check is not None:
                _call_check(check, fetch)
            if kind == "datasets":
                fingerprints[choice] = component.fingerprint()
        except NotFetched as exc:
            not_fetched.append(f"{kind[:-1]} {choice.label}: {exc}")
            if kind == "datasets":
                fingerprints[choice] = f"not fetched: {choice.label}"
        except UserError as exc:
            problems.append(f"{kind[:-1]} {choice.label}: {exc}")
    if problems:
        fetched = [f"not fetched by a dry run: {line}" for line in not_fetched]
        raise UserError("cannot start the run:\n  " + "\n  ".join(problems + fetched))
    return fingerprints, not_fetched


def not_fetched_lines(not_fetched) -> list[str]:
    """A dry run's lines for what it left undownloaded, which a real run fetches first (or fails on, offline)."""
    return [f"not fetched (a dry run downloads nothing; a real run needs it): {line}" for line in not_fetched]


def _call_check(check, fetch: bool) -> None:
    """``check()``, or ``check(fetch=False)`` for a dry run where the check declares that keyword."""
    if not fetch and "fetch" in inspect.signature(check).parameters:
        check(fetch=False)
    else:
        check()


class PlanBuilder:
    """Adds stages by content key; a stage asked for twice is planned once.

    Each method returns the stage's key. Keys of test-split stages do not mention the split, so the
    annotation loop's round 0 shares every artifact with ``xaibench run`` on the same grid."""

    def __init__(self, grid: Grid, registry, fingerprints: dict[Choice, str]):
        self.grid = grid
        self.registry = registry
        self.fingerprints = fingerprints
        self.config = {"train": grid.train.keyed(), "finetune": grid.finetune.keyed(),
                       "protocol": grid.protocol.model_dump()}
        self.stages: dict[str, Stage] = {}
        self._memo: dict[tuple, object] = {}  # inputs of a stage (or model reference) → its key: a million
        # cells ask for far fewer distinct stages, and each is digested once

    def _once(self, memo: tuple, make):
        found = self._memo.get(memo)
        if found is None:
            found = self._memo[memo] = make()
        return found

    def add(self, kind, ident, label, deps, spec) -> str:
        key = digest([kind, ident])
        if key not in self.stages:
            assert STAGE_KINDS[type(spec)].name == kind
            self.stages[key] = Stage(key, label, tuple(deps), spec)
        return key

    def version(self, kind: str, choice: Choice) -> str:
        return self.registry.get(kind, choice.name).version

    def labels(self, cell: Cell) -> dict:
        """``cell_labels``, its mixing weight worked out once per ensemble choice."""
        alpha = self._once(("alpha", cell.ensemble), lambda: mixing_weight(self.registry, cell.ensemble))
        return cell_labels(cell, self.registry, alpha)

    def data(self, ds: Choice) -> str:
        return self._once(("data", ds), lambda: self._data(ds))

    def _data(self, ds: Choice) -> str:
        # parameters that only say where the data is (its fingerprint covers what it is) stay out of keys
        location = set(capability(self.registry.get("datasets", ds.name).factory, "location_params", "datasets"))
        content = {"name": ds.name, "params": {k: v for k, v in ds.params.items() if k not in location}}
        return self.add("data", [content, self.version("datasets", ds), self.fingerprints[ds], DATA_FORMAT],
                        f"data {ds.name}", [], DataSpec(ds))

    def train(self, cell: Cell, data: str) -> str:
        train = self.config["train"]
        return self._once(("train", data, cell.backbone, cell.seed), lambda: self.add(
            "train", [data, cell.backbone.ident, self.version("backbones", cell.backbone), train, cell.seed],
            f"train {cell.backbone.name} on {cell.dataset.name} seed={cell.seed}", [data],
            TrainSpec(cell.backbone, data, cell.seed, self.grid.train)))

    def logits(self, cell: Cell, model: str, data: str, what: str) -> str:
        """A model's logits on the test and the val split (α* is chosen on val)."""
        return self._once(("logits", model, data), lambda: self.add(
            "logits", [model, data, {"splits": ["test", "val"]}], f"logits {what} seed={cell.seed}", [model, data],
            LogitsSpec(cell.backbone, model, data)))

    def finetune(self, cell: Cell, raw: str, data: str, annotations: str | None = None, round_label: str = "") -> str:
        """The baseline fine-tuned on masked images; the masks are the dataset's annotations, or those of
        an ``accept`` stage (the annotation loop's later rounds)."""
        return self._once(("finetune", raw, data, cell.mask, cell.seed, annotations),
                          lambda: self._finetune(cell, raw, data, annotations, round_label))

    def _finetune(self, cell: Cell, raw: str, data: str, annotations: str | None, round_label: str) -> str:
        finetune, missing = self.config["finetune"], self.config["protocol"]["missing_mask"]
        ident = [raw, cell.mask.ident, self.version("masks", cell.mask), finetune, missing, cell.seed]
        deps = [raw, data]
        if annotations is not None:
            ident.append({"annotations": annotations})
            deps.append(annotations)
        return self.add("finetune", ident,
                        f"finetune on {cell.mask.name}-masked {cell.dataset.name}{round_label} seed={cell.seed}",
                        deps, FinetuneSpec(cell.backbone, data, raw, cell.mask, cell.seed,
                                           self.grid.finetune, missing, annotations))

    def model_ref(self, ensemble: Choice | None, raw: str, masked: str | None) -> ModelRef:
        """The model an explanation is taken of: a single model where the ensemble rule reduces to one."""
        return self._once(("ref", ensemble, raw, masked), lambda: self._model_ref(ensemble, raw, masked))

    def _reduces_to(self, ensemble: Choice) -> str | None:
        return self._once(("reduces", ensemble), lambda: self._reduction(ensemble)) or None

    def _model_ref(self, ensemble: Choice | None, raw: str, masked: str | None) -> ModelRef:
        if ensemble is None:
            return SingleModel(raw)
        reduces = self._reduces_to(ensemble)
        if reduces == "raw":
            return SingleModel(raw)
        if reduces == "masked":
            return SingleModel(masked)
        return MixedModel(raw, masked, ensemble, self.version("ensembles", ensemble))

    def _reduction(self, ensemble: Choice) -> str:
        rule = self.registry.create("ensembles", ensemble.name, **ensemble.params)
        reduces_to = capability(rule, "reduces_to", "ensembles")
        reduces = reduces_to() if reduces_to is not None else None
        if reduces not in ("raw", "masked", None):
            raise UserError(f"ensemble {ensemble.label!r}: reduces_to() returned {reduces!r}; it returns \"raw\", "
                            f"\"masked\" or None")
        return reduces or ""

    def explain(self, cell: Cell, raw: str, masked: str | None, data: str, split: str = "test") -> str:
        return self._once(("explain", cell.ensemble, raw, masked, cell.explainer, data, split),
                          lambda: self._explain(cell, raw, masked, data, split))

    def _explain(self, cell: Cell, raw: str, masked: str | None, data: str, split: str) -> str:
        ref = self.model_ref(cell.ensemble, raw, masked)
        ident = [ref.ident, cell.explainer.ident, self.version("explainers", cell.explainer), data]
        if split != "test":
            ident.append({"split": split})
        what = (f"{label_of(cell.ensemble)} {label_of(cell.mask)}" if cell.ensemble else "baseline none")
        return self.add("explain", ident, f"{cell.explainer.name} of {what} on {split} seed={cell.seed}",
                        [*ref.keys, data],
                        ExplainSpec(cell.backbone, data, ref, split, cell.explainer, self.grid.protocol.eval_batch_size))

    def faithfulness(self, cell: Cell, explain: str) -> str:
        spec: ExplainSpec = self.stages[explain].spec
        steps, images = self.grid.protocol.faithfulness_steps, self.grid.protocol.faithfulness_images
        return self._once(("faithfulness", explain, steps, images), lambda: self.add(
            "faithfulness", [explain, spec.model.ident, steps, images, FAITHFULNESS_VERSION],
            f"faithfulness of {self.stages[explain].label}", [explain, *spec.model.keys, spec.data],
            FaithfulnessSpec(spec.backbone, spec.data, spec.model, explain, steps, images,
                             self.grid.protocol.eval_batch_size)))

    def sanity(self, explain: str) -> str:
        spec: ExplainSpec = self.stages[explain].spec
        images = self.grid.protocol.sanity_images
        return self._once(("sanity", explain, images), lambda: self.add(
            "sanity", [explain, spec.model.ident, images, SANITY_VERSION],
            f"sanity check of {self.stages[explain].label}", [explain, *spec.model.keys, spec.data],
            SanitySpec(spec.backbone, spec.data, spec.model, explain, spec.explainer, images,
                       self.grid.protocol.eval_batch_size)))

    def seeds(self, seeder: Choice, explain: str) -> str:
        spec = self.stages[explain].spec
        return self._once(("seeds", seeder, explain), lambda: self.add(
            "seeds", [explain, seeder.ident, self.version("seeders", seeder)], f"seeds {seeder.name}", [explain],
            SeedsSpec(explain, seeder, spec.data, spec.split)))

    def segment(self, segmenter: Choice, explain: str, seed_keys: list[str], data: str, split: str = "test") -> str:
        seed_keys = sorted(seed_keys)
        ident = [explain, seed_keys, segmenter.ident, self.version("segmenters", segmenter), data]
        if split != "test":
            ident.append({"split": split})
        return self.add("segment", ident, f"segment {segmenter.name} from {len(seed_keys)} seeder(s) on {split}",
                        [*seed_keys, data], SegmentSpec(tuple(seed_keys), explain, data, segmenter, split))

    def accept(self, acceptor: Choice, data: str, annotations: str | None, explain: str, segment: str,
               label: str) -> str:
        """The next round's training annotations: ``annotations`` (None: the dataset's own) with each
        segmentation the acceptor accepts in its image's place."""
        ident = [data, annotations, explain, segment, acceptor.ident, self.version("acceptors", acceptor)]
        deps = [data, explain, segment] + ([annotations] if annotations else [])
        return self.add("accept", ident, label, deps, AcceptSpec(data, annotations, explain, segment, acceptor))


def build_plan(grid: Grid, cells, registry, *, keep_cells: bool = True, fetch: bool = True) -> Plan:
    """Work out every stage the cells need, deduplicated by key. Builds datasets (cheaply) to fingerprint
    them and calls components' optional ``check()`` so missing files fail before anything runs.

    ``cells``: any iterable of cells. Without ``keep_cells`` (a dry run) the cells are counted, not kept,
    so planning a million cells needs memory for its stages only. ``fetch=False`` (a dry run): download
    nothing, list it in ``not_fetched``."""
    fingerprints, not_fetched = check_components(grid, registry, fetch=fetch)
    builder = PlanBuilder(grid, registry, fingerprints)
    plans: list[CellPlan] = []
    segments: dict[tuple, set] = {}
    count = 0
    for cell in cells:
        count += 1
        data = builder.data(cell.dataset)
        raw = builder.train(cell, data)
        raw_logits = builder.logits(cell, raw, data, "baseline")
        masked = masked_logits = explain = seeds = None
        if cell.mask is not None:
            masked = builder.finetune(cell, raw, data)
            masked_logits = builder.logits(cell, masked, data, f"{cell.mask.name} model")
        explain_val = faithfulness = sanity = None
        if cell.explainer is not None:
            explain = builder.explain(cell, raw, masked, data)
            explain_val = builder.explain(cell, raw, masked, data, split="val")
            if grid.protocol.faithfulness_steps:
                faithfulness = builder.faithfulness(cell, explain)
            if grid.protocol.sanity:
                sanity = builder.sanity(explain)
        if cell.seeder is not None:
            seeds = builder.seeds(cell.seeder, explain)
            segments.setdefault((explain, cell.segmenter, data), set()).add(seeds)
        if keep_cells:
            plans.append(CellPlan(cell, builder.labels(cell), data, raw, masked, raw_logits, masked_logits,
                                  explain, seeds, None, explain_val=explain_val, faithfulness=faithfulness,
                                  sanity=sanity))
    plan = Plan(builder.stages, plans, builder, segments, n_cells=count, not_fetched=tuple(not_fetched))
    plan.group_segments()
    return plan


# -- the annotation loop's rounds --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Chain:
    """One loop: a grid cell with its whole explain → seed → segment chain, an acceptance rule, a seed."""

    cell: Cell
    acceptor: Choice


@dataclasses.dataclass
class RoundPlan:
    """The stage keys of one round of one chain, and the chain's label columns (``CHAIN_LABELS``)."""

    chain: Chain
    labels: dict
    round: int
    data: str
    raw_logits: str
    annotations: str | None  # None: the dataset's own
    masked_logits: str
    explain_test: str
    explain_train: str
    segment: str
    accept: str

    @property
    def model_keys(self) -> list[str]:
        """The stages the round's model and its test measurements come from."""
        return [k for k in (self.data, self.raw_logits, self.annotations, self.masked_logits, self.explain_test) if k]

    @property
    def annotation_keys(self) -> list[str]:
        """The stages that renew the annotations."""
        return [self.explain_train, self.segment, self.accept]


def chains(grid: Grid) -> list[Chain]:
    """Every loop of a grid: each cell with a mask and a segmenter, times each acceptance rule."""
    cells = [c for c in expand(grid) if c.mask is not None and c.segmenter is not None]
    acceptors = dict.fromkeys(all_choices(grid.loop.acceptors))
    return [Chain(cell, acceptor) for cell in cells for acceptor in acceptors]


@dataclasses.dataclass
class LoopPlanner:
    """A validated loop grid, its chains, and the builder that plans their rounds one at a time."""

    grid: Grid
    chains: list[Chain]
    builder: PlanBuilder
    not_fetched: tuple[str, ...] = ()  # a dry run's: what a real run would download first

    def round(self, chain: Chain, round_: int, annotations: str | None) -> RoundPlan:
        builder, cell = self.builder, chain.cell
        data = builder.data(cell.dataset)
        raw = builder.train(cell, data)
        raw_logits = builder.logits(cell, raw, data, "baseline")
        masked = builder.finetune(cell, raw, data, annotations, round_label=f" round {round_}" if round_ else "")
        masked_logits = builder.logits(cell, masked, data, f"{cell.mask.name} model round {round_}")
        explain_test = builder.explain(cell, raw, masked, data)
        explain_train = builder.explain(cell, raw, masked, data, split="train")
        seeds = builder.seeds(cell.seeder, explain_train)
        segment = builder.segment(cell.segmenter, explain_train, [seeds], data, split="train")
        accept = builder.accept(chain.acceptor, data, annotations, explain_train, segment,
                                f"accept {chain.acceptor.name} round {round_} seed={cell.seed}")
        return RoundPlan(chain, self.labels(chain), round_, data, raw_logits, annotations, masked_logits,
                         explain_test, explain_train, segment, accept)

    def labels(self, chain: Chain) -> dict:
        return {**self.builder.labels(chain.cell), "acceptor": chain.acceptor.label}


def plan_loop(grid_path, registry, *, fetch: bool = True) -> LoopPlanner:
    """Validate a grid for the loop; raises ``UserError`` and writes nothing (``fetch=False``: downloads
    nothing either, see ``check_components``)."""
    grid = load_grid(grid_path, registry)
    missing = [s for s in ("masks", "ensembles", "explainers", "seeders", "segmenters") if not getattr(grid, s)]
    if missing:
        raise GridError(f"{grid_path}: the annotation loop needs {', '.join(missing)}: it fine-tunes a masked "
                        "model, explains it, seeds prompts and segments training images (see grids/loop.yaml)")
    found = chains(grid)
    acceptors = {("acceptors", chain.acceptor) for chain in found}
    fingerprints, not_fetched = check_components(grid, registry, extra=tuple(acceptors), fetch=fetch)
    return LoopPlanner(grid, found, PlanBuilder(grid, registry, fingerprints), tuple(not_fetched))


def plan_run(grid_path, registry, *, keep_cells: bool = True, fetch: bool = True) -> tuple[Grid, Plan]:
    """Load and validate a grid and plan its stages; raises ``UserError`` and writes nothing (``fetch=False``:
    downloads nothing either, see ``check_components``)."""
    grid = load_grid(grid_path, registry)
    return grid, build_plan(grid, iter_cells(grid), registry, keep_cells=keep_cells, fetch=fetch)
