"""Running stages: each stage reads its inputs from the cache and writes its artifact (see ``xaibench.plan``
for what each stage is and how it is keyed)."""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import numpy as np

from .errors import UserError
from .plan import Stage
from .store import load_arrays, save_arrays

SPLITS = ("train", "val", "test")


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
            arrays.setdefault("has_reference", np.zeros(len(arrays["labels"]), bool))
            self._data[cache_key] = arrays
        return self._data[cache_key]

    def annotations(self, data_key: str, key: str | None) -> np.ndarray:
        """Training annotations bool (N, H, W): the dataset's own (``key`` None) or an ``accept`` stage's."""
        if key is None:
            return self.data(data_key, "train")["masks"]
        return unpack_masks(load_arrays(self.path("accept", key)))

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
        for split in SPLITS:
            samples = list(dataset.split(split))
            images, labels, masks, references, has_mask, has_reference, ids = [], [], [], [], [], [], []
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
                has_reference.append(reference is not None)
                ids.append(str(sample.id))
            shape = next(iter(sizes)) if sizes else (0, 0)
            save_arrays(
                self.path("data", stage.key, split),
                images=np.stack(images) if images else np.zeros((0, *shape, 3), np.uint8),
                labels=np.asarray(labels, dtype=np.int64),
                masks=np.stack(masks) if masks else np.zeros((0, *shape), bool),
                references=np.stack(references) if references else np.zeros((0, *shape), bool),
                has_mask=np.asarray(has_mask, dtype=bool),
                has_reference=np.asarray(has_reference, dtype=bool),
                ids=np.asarray(ids, dtype=str),
                classes=classes,
            )
            counts[split] = len(samples)
        if counts["train"] == 0 or counts["test"] == 0:
            raise UserError(f"dataset {stage.spec['dataset']['name']!r} has an empty train or test split: {counts}")
        return {"counts": counts, "classes": classes.tolist()}

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
        annotations = self.annotations(stage.spec["data"], stage.spec.get("annotations"))
        foreground, subset = masks_for_finetuning(annotations, train["has_mask"], stage.spec["missing_mask"],
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

        test = self.data(stage.spec["data"], stage.spec.get("split", "test"))
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
        """Masks (S, M, H, W) for S seeders' prompts on the M explained images, bit-packed, and the
        segmenter's confidence in each (S, M), NaN where it gives none."""
        from .contracts import Prompts

        seeds = [load_arrays(self.path("seeds", key)) for key in stage.spec["seeds"]]
        explained = load_arrays(self.path("explain", stage.spec["explain"]))
        index = explained["index"]
        test = self.data(stage.spec["data"], stage.spec.get("split", "test"))
        segmenter = self._component("segmenters", stage.spec["segmenter"])
        scored = getattr(segmenter, "segment_with_scores", None)
        uses_saliency = getattr(segmenter, "uses_saliency", False)
        height, width = test["images"].shape[1:3]
        masks = np.zeros((len(seeds), len(index), height, width), dtype=bool)
        scores = np.full((len(seeds), len(index)), np.nan, dtype=np.float32)
        for row, i in enumerate(self.bar_range(stage, len(index), 1, index)):
            prompts = []
            for s in seeds:
                keep = s["labels"][row] >= 0
                prompts.append(Prompts(s["points"][row][keep], s["labels"][row][keep].astype(np.int64)))
            extra = {"saliency": [explained["maps"][row].astype(np.float32)] * len(prompts)} if uses_saliency else {}
            if scored is not None:
                out, confidence = scored(test["images"][i], prompts, **extra)
                scores[:, row] = np.asarray(confidence, dtype=np.float32)
            else:
                out = segmenter.segment(test["images"][i], prompts, **extra)
            if len(out) != len(prompts):
                raise ValueError(f"segmenter {stage.spec['segmenter']['name']!r} returned {len(out)} masks for "
                                 f"{len(prompts)} prompt sets")
            for j, mask in enumerate(out):
                masks[j, row] = np.asarray(mask, dtype=bool)
        save_arrays(self.path("segment", stage.key), masks=np.packbits(masks, axis=-1), width=np.int64(width),
                    scores=scores)
        return {"n": int(len(index)), "seeders": len(seeds)}

    def _run_accept(self, stage):
        """The next training annotations: the current ones, except where the acceptor takes an image's
        segmentation (its return value replaces the annotation). Stores every training annotation,
        bit-packed, the explained images' index, and per explained image whether the acceptor took the
        segmentation and whether the annotation changed."""
        spec = stage.spec
        current = self.annotations(spec["data"], spec["annotations"])
        explained = load_arrays(self.path("explain", spec["explain"]))
        segmented = load_arrays(self.path("segment", spec["segment"]))
        proposals = unpack_masks(segmented, 0)
        scores = segmented.get("scores", np.full((1, len(proposals)), np.nan, np.float32))[0]
        acceptor = self._component("acceptors", spec["acceptor"])
        index = explained["index"]
        updated = current.copy()
        accepted = np.zeros(len(index), dtype=bool)
        for row, i in enumerate(self.bar_range(stage, len(index), 1, index)):
            out = acceptor(current[i].copy(), proposals[row].copy(), saliency=explained["maps"][row].astype(np.float32),
                           score=float(scores[row]))
            if out is None:
                continue
            out = np.asarray(out)
            if out.dtype != bool or out.shape != current[i].shape:
                raise ValueError(f"acceptor {spec['acceptor']['name']!r} returned {out.dtype} {out.shape}; expected "
                                 f"a bool mask {current[i].shape} or None")
            updated[i], accepted[row] = out, True
        changed = np.any(updated[index] != current[index], axis=(1, 2))
        save_arrays(self.path("accept", stage.key), masks=np.packbits(updated, axis=-1),
                    width=np.int64(updated.shape[-1]), index=index, accepted=accepted, changed=changed)
        return {"n": int(len(index)), "accepted": int(accepted.sum()), "changed": int(changed.sum())}


def unpack_masks(arrays: dict, index: int | None = None) -> np.ndarray:
    """The bool masks of a ``segment`` or ``accept`` artifact (``masks`` bit-packed along the last axis,
    ``width``); ``index`` picks one entry of the first axis (a segment stage's seeder)."""
    packed = arrays["masks"] if index is None else arrays["masks"][index]
    return np.unpackbits(packed, axis=-1, count=int(arrays["width"])).astype(bool)


def masks_for_finetuning(masks, has_mask, policy: str, *, seed: int):
    """Foreground masks for fine-tuning under the missing-mask ``policy`` (see ``grid.Protocol``).

    Returns ``(foreground bool (N, H, W), subset index or None)``."""
    annotated = np.flatnonzero(has_mask)
    if len(annotated) == 0:
        raise UserError("no training sample has an annotation mask, so masked fine-tuning (and the annotation "
                        "loop) is impossible; use a dataset with masks, or drop 'masks' from a grid for 'run'")
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
