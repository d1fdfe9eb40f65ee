"""The stage graph: which cached computations a set of cells needs, and how each one runs.

Stages and what they store (``DIR/cache/<kind>/<key>...``):

- ``data``: the dataset's splits as arrays (images uint8, labels, masks (the annotations), references (the
  exact masks; equal to masks unless the dataset says its annotations are imprecise), has_mask, ids).
- ``train``: the baseline model trained on raw training images (safetensors).
- ``finetune``: the baseline fine-tuned on masked training images, one per mask (safetensors).
- ``logits``: a model's logits on the raw test images.
- ``explain``: saliency maps of a model or ensemble for the annotated test images.
- ``seeds``: point prompts drawn from those maps by a seeder.
- ``segment``: the segmenter's masks for those prompts.

A stage's key hashes exactly what changes its result: its component names, parameters and plugin
versions, its configuration, its upstream keys and the seed; never the device, paths or worker counts.
So one dataset and seed with 4 masks is 5 trainings whatever the α values, explainers or segmenters.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path

import numpy as np

from .errors import UserError
from .grid import Cell, Choice, Grid, digest
from .store import load_arrays, save_arrays

SPLITS = ("train", "val", "test")
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


def check_components(cells: list[Cell], registry) -> dict[Choice, str]:
    """Call every distinct component's optional ``check()`` (missing data, weights, checkpoints) and
    fingerprint every dataset; report all problems at once. Returns dataset choice → fingerprint."""
    problems: list[str] = []
    fingerprints: dict[Choice, str] = {}
    seen: set[tuple[str, Choice]] = set()
    for cell in cells:
        for kind, choice in (("datasets", cell.dataset), ("backbones", cell.backbone), ("masks", cell.mask),
                             ("ensembles", cell.ensemble), ("explainers", cell.explainer),
                             ("seeders", cell.seeder), ("segmenters", cell.segmenter)):
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


def build_plan(grid: Grid, cells: list[Cell], registry) -> Plan:
    """Work out every stage the cells need, deduplicated by key. Builds datasets (cheaply) to fingerprint
    them and calls components' optional ``check()`` so missing files fail before anything runs."""
    stages: dict[str, Stage] = {}
    plans: list[CellPlan] = []
    config = grid.model_dump(include={"train", "finetune", "protocol"})

    def add(kind, ident, label, deps, spec):
        key = digest([kind, ident])
        if key not in stages:
            stages[key] = Stage(kind, key, label, tuple(deps), spec)
        return key

    def version(kind, choice):
        return registry.get(kind, choice.name).version

    fingerprints = check_components(cells, registry)
    segments: dict[tuple, set] = {}
    for cell in cells:
        ds = cell.dataset
        # parameters that only say where the data is (its fingerprint covers what it is) stay out of keys
        location = set(getattr(registry.get("datasets", ds.name).factory, "location_params", ()))
        content = {"name": ds.name, "params": {k: v for k, v in ds.params.items() if k not in location}}
        data = add("data", [content, version("datasets", ds), fingerprints[ds]], f"data {ds.name}", [],
                   {"dataset": ds.ident})
        backbone = {"backbone": cell.backbone.ident}
        raw = add("train", [data, cell.backbone.ident, version("backbones", cell.backbone), config["train"], cell.seed],
                  f"train {cell.backbone.name} on {ds.name} seed={cell.seed}", [data],
                  {**backbone, "data": data, "seed": cell.seed, "train": config["train"]})
        raw_logits = add("logits", [raw, data], f"logits baseline seed={cell.seed}", [raw, data],
                         {**backbone, "model": raw, "data": data})
        masked = masked_logits = None
        if cell.mask is not None:
            masked = add("finetune",
                         [raw, cell.mask.ident, version("masks", cell.mask), config["finetune"],
                          config["protocol"]["missing_mask"], cell.seed],
                         f"finetune on {cell.mask.name}-masked {ds.name} seed={cell.seed}",
                         [raw, data],
                         {**backbone, "data": data, "init": raw, "mask": cell.mask.ident, "seed": cell.seed,
                          "train": config["finetune"], "missing_mask": config["protocol"]["missing_mask"]})
            masked_logits = add("logits", [masked, data], f"logits {cell.mask.name} model seed={cell.seed}",
                                [masked, data], {**backbone, "model": masked, "data": data})
        explain = seeds = None
        if cell.explainer is not None:
            ref, model_deps = _model_ref(cell.ensemble, registry, raw, masked)
            explain = add("explain", [ref, cell.explainer.ident, version("explainers", cell.explainer), data],
                          f"{cell.explainer.name} of {cell.labels()['ensemble']} {cell.labels()['mask']} seed={cell.seed}",
                          [*model_deps, data],
                          {**backbone, "data": data, "model": ref, "explainer": cell.explainer.ident,
                           "batch_size": grid.protocol.eval_batch_size})
        if cell.seeder is not None:
            seeds = add("seeds", [explain, cell.seeder.ident, version("seeders", cell.seeder)],
                        f"seeds {cell.seeder.name}", [explain], {"explain": explain, "seeder": cell.seeder.ident})
            segments.setdefault((explain, cell.segmenter, data), set()).add(seeds)
        plans.append(CellPlan(cell, data, raw, masked, raw_logits, masked_logits, explain, seeds, None))
    # One segment stage per explanation and segmenter prompts with every seeder's points, so expensive
    # per-image work (SAM's image embedding) is done once for all seeders.
    segment_of = {}
    for (explain, segmenter, data), seed_keys in segments.items():
        seed_keys = sorted(seed_keys)
        key = add("segment", [explain, seed_keys, segmenter.ident, version("segmenters", segmenter), data],
                  f"segment {segmenter.name} from {len(seed_keys)} seeder(s)", [*seed_keys, data],
                  {"seeds": seed_keys, "explain": explain, "data": data, "segmenter": segmenter.ident})
        segment_of.update({(seeds, segmenter): (key, i) for i, seeds in enumerate(seed_keys)})
    for cp in plans:
        if cp.seeds is not None:
            cp.segment, cp.segment_index = segment_of[(cp.seeds, cp.cell.segmenter)]
    return Plan(stages, plans)


def _choice(ident: dict) -> Choice:
    return Choice(ident["name"], ident["params"])


class StageRunner:
    """Runs one stage: reads its inputs from the cache, writes its artifact atomically, returns a small
    result dict ``{key, ok, meta, error, traceback, seconds}``; it never writes to the SQLite store."""

    SUFFIX = {"train": ".safetensors", "finetune": ".safetensors"}
    FOLDER = {"train": "models", "finetune": "models"}

    def __init__(self, cache: Path, registry, *, device: str, progress: bool = True):
        from .training import resolve_device

        self.cache = Path(cache)
        self.registry = registry
        self.device = resolve_device(device)
        self.progress = progress
        self._data: dict[str, dict] = {}

    def __getstate__(self):
        """Sent to worker processes without the registry (rebuilt there from installed entry points)."""
        return {"cache": self.cache, "device": self.device, "progress": self.progress}

    def __setstate__(self, state):
        from .registry import get_registry

        self.__init__(state["cache"], get_registry(), device=state["device"], progress=state["progress"])

    def bar(self, stage: Stage, total: int, unit: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=stage.label, unit=unit, leave=False, disable=not self.progress,
                    dynamic_ncols=True)

    # -- paths and loading ---------------------------------------------------------------------------
    def path(self, kind: str, key: str, split: str | None = None):
        suffix = self.SUFFIX.get(kind, ".npz")
        name = f"{key}.{split}{suffix}" if split else f"{key}{suffix}"
        return self.cache / self.FOLDER.get(kind, kind) / name

    def artifact_exists(self, stage: Stage) -> bool:
        if stage.kind == "data":
            return all(self.path("data", stage.key, s).is_file() for s in SPLITS)
        return self.path(stage.kind, stage.key).is_file()

    def data(self, key: str, split: str) -> dict:
        cache_key = f"{key}/{split}"
        if cache_key not in self._data:
            arrays = load_arrays(self.path("data", key, split))
            arrays.setdefault("references", arrays["masks"])  # written before datasets had references
            self._data[cache_key] = arrays
        return self._data[cache_key]

    def bar_range(self, stage: Stage, total: int, step: int, items=None):
        """Iterate ``items`` (default ``range(0, total, step)``) with a progress bar counting images."""
        items = range(0, total, step) if items is None else items
        with self.bar(stage, total, "img") as bar:
            for item in items:
                yield item
                bar.update(min(step, total - bar.n))

    def _component(self, kind, ident):
        return self.registry.create(kind, ident["name"], **ident["params"])

    def load_model(self, backbone_ident: dict, key: str, num_classes: int):
        import torch

        from .models import load_weights

        backbone = self._component("backbones", backbone_ident)
        with torch.random.fork_rng():
            model = backbone.build(num_classes, pretrained=False)
        load_weights(model, self.path("train", key))
        return backbone, model.to(self.device).eval()

    # -- running -------------------------------------------------------------------------------------
    def __call__(self, stage: Stage) -> dict:
        start = time.perf_counter()
        try:
            meta = getattr(self, f"_run_{stage.kind}")(stage)
            return {"key": stage.key, "ok": True, "meta": meta or {}, "error": None, "traceback": None,
                    "seconds": time.perf_counter() - start}
        except Exception as exc:  # recorded against the stage; the run goes on with other cells
            message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
            return {"key": stage.key, "ok": False, "meta": {}, "error": message,
                    "traceback": traceback.format_exc(), "seconds": time.perf_counter() - start,
                    "user_error": isinstance(exc, UserError)}

    def _run_data(self, stage):
        dataset = self._component("datasets", stage.spec["dataset"])
        classes = np.asarray(list(dataset.classes), dtype=str)
        sizes = set()
        counts = {}
        independent = False  # does any sample carry a reference apart from its annotation?
        for split in SPLITS:
            samples = list(dataset.split(split))
            images, labels, masks, references, has_mask, ids = [], [], [], [], [], []
            for sample in samples:
                image = np.asarray(sample.image)
                if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                    raise UserError(f"dataset sample {sample.id!r}: image must be uint8 (H, W, 3), "
                                    f"got {image.dtype} {image.shape}")
                if not 0 <= int(sample.label) < len(classes):
                    raise UserError(f"dataset sample {sample.id!r}: label {sample.label} is not a class index")
                sizes.add(image.shape[:2])
                if len(sizes) > 1:
                    raise UserError(f"dataset images differ in size ({sorted(sizes)}); resize them to one size")
                mask, reference = sample.mask, getattr(sample, "reference", None)
                for what, array in (("mask", mask), ("reference", reference)):
                    if array is not None and np.asarray(array).shape != image.shape[:2]:
                        raise UserError(f"dataset sample {sample.id!r}: {what} {np.asarray(array).shape} does "
                                        f"not match image {image.shape[:2]}")
                if reference is not None and mask is None:
                    raise UserError(f"dataset sample {sample.id!r} has a reference but no mask; a reference "
                                    f"is the exact version of an annotation, so give both or neither")
                images.append(image)
                labels.append(int(sample.label))
                has_mask.append(mask is not None)
                masks.append(np.asarray(mask, dtype=bool) if mask is not None else np.zeros(image.shape[:2], bool))
                references.append(np.asarray(reference, dtype=bool) if reference is not None else masks[-1])
                independent |= reference is not None
                ids.append(str(sample.id))
            shape = next(iter(sizes)) if sizes else (0, 0)
            save_arrays(
                self.path("data", stage.key, split),
                images=np.stack(images) if images else np.zeros((0, *shape, 3), np.uint8),
                labels=np.asarray(labels, dtype=np.int64),
                masks=np.stack(masks) if masks else np.zeros((0, *shape), bool),
                references=np.stack(references) if references else np.zeros((0, *shape), bool),
                has_mask=np.asarray(has_mask, dtype=bool),
                ids=np.asarray(ids, dtype=str),
                classes=classes,
            )
            counts[split] = len(samples)
        if counts["train"] == 0 or counts["test"] == 0:
            raise UserError(f"dataset {stage.spec['dataset']['name']!r} has an empty train or test split: {counts}")
        return {"counts": counts, "classes": classes.tolist(), "independent_reference": independent}

    def _fit(self, stage, model, foreground=None, mask_fn=None, subset=None):
        from .training import fit

        train = self.data(stage.spec["data"], "train")
        images, labels = train["images"], train["labels"]
        if subset is not None:
            images, labels = images[subset], labels[subset]
            foreground = foreground[subset] if foreground is not None else None
        with self.bar(stage, len(labels) * stage.spec["train"]["epochs"], "img") as bar:
            return fit(model, images, labels, seed=stage.spec["seed"], device=self.device, foreground=foreground,
                       mask_fn=mask_fn, progress=bar.update, **stage.spec["train"])

    def _run_train(self, stage):
        import torch

        from .models import save_weights

        train = self.data(stage.spec["data"], "train")
        backbone = self._component("backbones", stage.spec["backbone"])
        torch.manual_seed(stage.spec["seed"])
        model = backbone.build(len(train["classes"]))
        stats = self._fit(stage, model)
        save_weights(model, self.path("train", stage.key))
        return stats

    def _run_finetune(self, stage):
        from .models import save_weights

        train = self.data(stage.spec["data"], "train")
        _, model = self.load_model(stage.spec["backbone"], stage.spec["init"], len(train["classes"]))
        foreground, subset = masks_for_finetuning(train["masks"], train["has_mask"], stage.spec["missing_mask"],
                                                  seed=stage.spec["seed"])
        mask_fn = self._component("masks", stage.spec["mask"])
        stats = self._fit(stage, model, foreground=foreground, mask_fn=mask_fn, subset=subset)
        save_weights(model, self.path("finetune", stage.key))
        return stats

    def _run_logits(self, stage):
        from .training import predict_logits

        test = self.data(stage.spec["data"], "test")
        _, model = self.load_model(stage.spec["backbone"], stage.spec["model"], len(test["classes"]))
        logits = predict_logits(model, test["images"], batch_size=256, device=self.device)
        save_arrays(self.path("logits", stage.key), test=logits)
        return {"n": len(logits)}

    def _explained_model(self, stage, num_classes):
        from .models import ensemble_model

        ref = stage.spec["model"]
        if "model" in ref:
            backbone, model = self.load_model(stage.spec["backbone"], ref["model"], num_classes)
            return model, backbone.target_layers(model)
        backbone, raw = self.load_model(stage.spec["backbone"], ref["raw"], num_classes)
        _, masked = self.load_model(stage.spec["backbone"], ref["masked"], num_classes)
        rule = self._component("ensembles", ref["ensemble"])
        model = ensemble_model(raw, masked, rule).eval()
        return model, backbone.target_layers(raw) + backbone.target_layers(masked)

    def _run_explain(self, stage):
        from .training import to_tensor

        test = self.data(stage.spec["data"], "test")
        index = np.flatnonzero(test["has_mask"])
        model, target_layers = self._explained_model(stage, len(test["classes"]))
        explainer = self._component("explainers", stage.spec["explainer"])
        height, width = test["images"].shape[1:3]
        maps = np.zeros((len(index), height, width), dtype=np.float16)
        batch = stage.spec["batch_size"]
        import torch

        for start in self.bar_range(stage, len(index), batch):
            chunk = index[start : start + batch]
            images = to_tensor(test["images"][chunk]).to(self.device)
            targets = torch.from_numpy(test["labels"][chunk]).to(self.device)
            gt = test["references"][chunk] if getattr(explainer, "uses_ground_truth", False) else None
            out = np.asarray(explainer.explain(model, images, targets, target_layers=target_layers, masks=gt))
            if out.shape != (len(chunk), height, width):
                raise ValueError(f"explainer {stage.spec['explainer']['name']!r} returned maps of shape "
                                 f"{out.shape}; expected {(len(chunk), height, width)}")
            maps[start : start + len(chunk)] = out
        save_arrays(self.path("explain", stage.key), maps=maps, index=index)
        return {"n": int(len(index))}

    def _run_seeds(self, stage):
        maps = load_arrays(self.path("explain", stage.spec["explain"]))["maps"]
        seeder = self._component("seeders", stage.spec["seeder"])
        prompts = [seeder(m.astype(np.float32)) for m in maps]
        width = max([len(p.labels) for p in prompts], default=0)
        points = np.full((len(prompts), width, 2), np.nan, dtype=np.float32)
        labels = np.full((len(prompts), width), -1, dtype=np.int8)
        for i, p in enumerate(prompts):
            points[i, : len(p.labels)] = p.points
            labels[i, : len(p.labels)] = p.labels
        save_arrays(self.path("seeds", stage.key), points=points, labels=labels)
        return {"n": len(prompts), "max_points": width}

    def _run_segment(self, stage):
        """Masks (S, M, H, W) for S seeders' prompts on the M explained test images, bit-packed."""
        from .contracts import Prompts

        seeds = [load_arrays(self.path("seeds", key)) for key in stage.spec["seeds"]]
        explained = load_arrays(self.path("explain", stage.spec["explain"]))
        index = explained["index"]
        test = self.data(stage.spec["data"], "test")
        segmenter = self._component("segmenters", stage.spec["segmenter"])
        uses_saliency = getattr(segmenter, "uses_saliency", False)
        height, width = test["images"].shape[1:3]
        masks = np.zeros((len(seeds), len(index), height, width), dtype=bool)
        for row, i in enumerate(self.bar_range(stage, len(index), 1, index)):
            prompts = []
            for s in seeds:
                keep = s["labels"][row] >= 0
                prompts.append(Prompts(s["points"][row][keep], s["labels"][row][keep].astype(np.int64)))
            extra = {"saliency": [explained["maps"][row].astype(np.float32)] * len(prompts)} if uses_saliency else {}
            out = segmenter.segment(test["images"][i], prompts, **extra)
            if len(out) != len(prompts):
                raise ValueError(f"segmenter {stage.spec['segmenter']['name']!r} returned {len(out)} masks for "
                                 f"{len(prompts)} prompt sets")
            for j, mask in enumerate(out):
                masks[j, row] = np.asarray(mask, dtype=bool)
        save_arrays(self.path("segment", stage.key), masks=np.packbits(masks, axis=-1), width=np.int64(width))
        return {"n": int(len(index)), "seeders": len(seeds)}


def masks_for_finetuning(masks, has_mask, policy: str, *, seed: int):
    """Foreground masks for fine-tuning under the missing-mask ``policy`` (see ``grid.Protocol``).

    Returns ``(foreground bool (N, H, W), subset index or None)``."""
    annotated = np.flatnonzero(has_mask)
    if len(annotated) == 0:
        raise UserError("no training sample has an annotation mask, so masked fine-tuning is impossible; "
                        "use a dataset with masks or drop 'masks' from the grid")
    if policy == "drop":
        return masks, annotated
    foreground = masks.copy()
    missing = np.flatnonzero(~has_mask)
    if policy == "raw":
        foreground[missing] = True
    else:  # borrow
        rng = np.random.default_rng(seed)
        foreground[missing] = masks[rng.choice(annotated, size=len(missing))]
    return foreground, None
