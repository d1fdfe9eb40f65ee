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
  image's segmentation where the acceptance rule accepts it (see ``xaibench.loop``).

A stage's key hashes exactly what changes its result: its component names, parameters and plugin
versions, its configuration, its upstream keys and the seed; never the device, paths or worker counts.
So one dataset and seed with 4 masks is 5 trainings whatever the α values, explainers or segmenters.
"""

from __future__ import annotations

import dataclasses

from .errors import UserError
from .grid import Cell, Choice, Grid, digest

TRAINING_KINDS = ("train", "finetune")


@dataclasses.dataclass
class Stage:
    kind: str
    key: str
    label: str
    deps: tuple[str, ...]
    spec: dict


@dataclasses.dataclass
class CellPlan:
    """The stage keys one cell's metrics are read from."""

    cell: Cell
    data: str
    raw_model: str
    masked_model: str | None
    raw_logits: str
    masked_logits: str | None
    explain: str | None
    seeds: str | None
    segment: str | None
    segment_index: int = 0  # this cell's seeder among those the segment stage prompts with

    @property
    def keys(self) -> list[str]:
        return [k for k in (self.data, self.raw_model, self.masked_model, self.raw_logits, self.masked_logits,
                            self.explain, self.seeds, self.segment) if k]


@dataclasses.dataclass
class Plan:
    stages: dict[str, Stage]  # in dependency order
    cells: list[CellPlan]

    def count(self, *kinds) -> int:
        return sum(1 for s in self.stages.values() if s.kind in kinds)


def check_components(cells: list[Cell], registry, extra: tuple = ()) -> dict[Choice, str]:
    """Call every distinct component's optional ``check()`` (missing data, weights, checkpoints) and
    fingerprint every dataset; report all problems at once. ``extra``: more ``(kind, choice)`` pairs to
    check. Returns dataset choice → fingerprint."""
    problems: list[str] = []
    fingerprints: dict[Choice, str] = {}
    seen: set[tuple[str, Choice]] = set()
    pairs = [(kind, getattr(cell, kind[:-1])) for cell in cells
             for kind in ("datasets", "backbones", "masks", "ensembles", "explainers", "seeders", "segmenters")]
    for kind, choice in [*pairs, *extra]:
        if choice is None or (kind, choice) in seen:
            continue
        seen.add((kind, choice))
        try:
            component = registry.create(kind, choice.name, **choice.params)
            if hasattr(component, "check"):
                component.check()
            if kind == "datasets":
                fingerprints[choice] = component.fingerprint()
        except UserError as exc:
            problems.append(f"{kind[:-1]} {choice.label}: {exc}")
    if problems:
        raise UserError("cannot start the run:\n  " + "\n  ".join(problems))
    return fingerprints


class PlanBuilder:
    """Adds stages by content key; a stage asked for twice is planned once.

    Each method returns the stage's key. Keys of test-split stages do not mention the split, so the
    annotation loop's round 0 shares every artifact with ``xaibench run`` on the same grid."""

    def __init__(self, grid: Grid, registry, fingerprints: dict[Choice, str]):
        self.grid = grid
        self.registry = registry
        self.fingerprints = fingerprints
        self.config = grid.model_dump(include={"train", "finetune", "protocol"})
        self.stages: dict[str, Stage] = {}

    def add(self, kind, ident, label, deps, spec) -> str:
        key = digest([kind, ident])
        if key not in self.stages:
            self.stages[key] = Stage(kind, key, label, tuple(deps), spec)
        return key

    def version(self, kind: str, choice: Choice) -> str:
        return self.registry.get(kind, choice.name).version

    def data(self, ds: Choice) -> str:
        # parameters that only say where the data is (its fingerprint covers what it is) stay out of keys
        location = set(getattr(self.registry.get("datasets", ds.name).factory, "location_params", ()))
        content = {"name": ds.name, "params": {k: v for k, v in ds.params.items() if k not in location}}
        return self.add("data", [content, self.version("datasets", ds), self.fingerprints[ds]], f"data {ds.name}",
                        [], {"dataset": ds.ident})

    def train(self, cell: Cell, data: str) -> str:
        train = self.config["train"]
        return self.add("train", [data, cell.backbone.ident, self.version("backbones", cell.backbone), train, cell.seed],
                        f"train {cell.backbone.name} on {cell.dataset.name} seed={cell.seed}", [data],
                        {"backbone": cell.backbone.ident, "data": data, "seed": cell.seed, "train": train})

    def logits(self, cell: Cell, model: str, data: str, what: str) -> str:
        return self.add("logits", [model, data], f"logits {what} seed={cell.seed}", [model, data],
                        {"backbone": cell.backbone.ident, "model": model, "data": data})

    def finetune(self, cell: Cell, raw: str, data: str, annotations: str | None = None, round_label: str = "") -> str:
        """The baseline fine-tuned on masked images; the masks are the dataset's annotations, or those of
        an ``accept`` stage (the annotation loop's later rounds)."""
        finetune, missing = self.config["finetune"], self.config["protocol"]["missing_mask"]
        ident = [raw, cell.mask.ident, self.version("masks", cell.mask), finetune, missing, cell.seed]
        spec = {"backbone": cell.backbone.ident, "data": data, "init": raw, "mask": cell.mask.ident,
                "seed": cell.seed, "train": finetune, "missing_mask": missing}
        deps = [raw, data]
        if annotations is not None:
            ident.append({"annotations": annotations})
            spec["annotations"] = annotations
            deps.append(annotations)
        return self.add("finetune", ident,
                        f"finetune on {cell.mask.name}-masked {cell.dataset.name}{round_label} seed={cell.seed}",
                        deps, spec)

    def explain(self, cell: Cell, raw: str, masked: str | None, data: str, split: str = "test") -> str:
        ref, model_deps = _model_ref(cell.ensemble, self.registry, raw, masked)
        ident = [ref, cell.explainer.ident, self.version("explainers", cell.explainer), data]
        if split != "test":
            ident.append({"split": split})
        labels = cell.labels()
        return self.add("explain", ident,
                        f"{cell.explainer.name} of {labels['ensemble']} {labels['mask']} on {split} seed={cell.seed}",
                        [*model_deps, data],
                        {"backbone": cell.backbone.ident, "data": data, "model": ref, "split": split,
                         "explainer": cell.explainer.ident, "batch_size": self.grid.protocol.eval_batch_size})

    def seeds(self, seeder: Choice, explain: str) -> str:
        return self.add("seeds", [explain, seeder.ident, self.version("seeders", seeder)], f"seeds {seeder.name}",
                        [explain], {"explain": explain, "seeder": seeder.ident})

    def segment(self, segmenter: Choice, explain: str, seed_keys: list[str], data: str, split: str = "test") -> str:
        seed_keys = sorted(seed_keys)
        ident = [explain, seed_keys, segmenter.ident, self.version("segmenters", segmenter), data]
        if split != "test":
            ident.append({"split": split})
        return self.add("segment", ident, f"segment {segmenter.name} from {len(seed_keys)} seeder(s) on {split}",
                        [*seed_keys, data],
                        {"seeds": seed_keys, "explain": explain, "data": data, "segmenter": segmenter.ident,
                         "split": split})

    def accept(self, acceptor: Choice, data: str, annotations: str | None, explain: str, segment: str,
               label: str) -> str:
        """The next round's training annotations: ``annotations`` (None: the dataset's own) with each
        segmentation the acceptor accepts in its image's place."""
        ident = [data, annotations, explain, segment, acceptor.ident, self.version("acceptors", acceptor)]
        deps = [data, explain, segment] + ([annotations] if annotations else [])
        return self.add("accept", ident, label, deps,
                        {"data": data, "annotations": annotations, "explain": explain, "segment": segment,
                         "acceptor": acceptor.ident})


def _model_ref(ensemble, registry, raw_key, masked_key):
    """The model an explanation is taken of: a single model where the ensemble rule reduces to one."""
    if ensemble is None:
        return {"model": raw_key}, (raw_key,)
    rule = registry.create("ensembles", ensemble.name, **ensemble.params)
    reduces = rule.reduces_to() if hasattr(rule, "reduces_to") else None
    if reduces == "raw":
        return {"model": raw_key}, (raw_key,)
    if reduces == "masked":
        return {"model": masked_key}, (masked_key,)
    version = registry.get("ensembles", ensemble.name).version
    return {"raw": raw_key, "masked": masked_key, "ensemble": ensemble.ident, "version": version}, (raw_key, masked_key)


def build_plan(grid: Grid, cells: list[Cell], registry) -> Plan:
    """Work out every stage the cells need, deduplicated by key. Builds datasets (cheaply) to fingerprint
    them and calls components' optional ``check()`` so missing files fail before anything runs."""
    builder = PlanBuilder(grid, registry, check_components(cells, registry))
    plans: list[CellPlan] = []
    segments: dict[tuple, set] = {}
    for cell in cells:
        data = builder.data(cell.dataset)
        raw = builder.train(cell, data)
        raw_logits = builder.logits(cell, raw, data, "baseline")
        masked = masked_logits = explain = seeds = None
        if cell.mask is not None:
            masked = builder.finetune(cell, raw, data)
            masked_logits = builder.logits(cell, masked, data, f"{cell.mask.name} model")
        if cell.explainer is not None:
            explain = builder.explain(cell, raw, masked, data)
        if cell.seeder is not None:
            seeds = builder.seeds(cell.seeder, explain)
            segments.setdefault((explain, cell.segmenter, data), set()).add(seeds)
        plans.append(CellPlan(cell, data, raw, masked, raw_logits, masked_logits, explain, seeds, None))
    # One segment stage per explanation and segmenter prompts with every seeder's points, so expensive
    # per-image work (SAM's image embedding) is done once for all seeders.
    segment_of = {}
    for (explain, segmenter, data), seed_keys in segments.items():
        key = builder.segment(segmenter, explain, list(seed_keys), data)
        segment_of.update({(seeds, segmenter): (key, i) for i, seeds in enumerate(sorted(seed_keys))})
    for cp in plans:
        if cp.seeds is not None:
            cp.segment, cp.segment_index = segment_of[(cp.seeds, cp.cell.segmenter)]
    return Plan(builder.stages, plans)
