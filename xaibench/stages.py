"""Running stages: each stage reads its inputs from the cache and writes its artifact (see ``xaibench.plan``
for what each stage is and how it is keyed, ``xaibench.artifacts`` for where its files live)."""

from __future__ import annotations

import contextlib
import errno
import shutil
import time
import traceback
from pathlib import Path

import numpy as np

from .artifacts import SPLITS, Artifacts, unpack_masks
from .contracts import (Prompts, capability, validate_annotation, validate_classes, validate_ensemble,
                        validate_layers, validate_logits, validate_maps, validate_masked, validate_model,
                        validate_prompt_sets, validate_sample, validate_segmentation)
from .errors import ComponentError, ContractViolation, StageError, UserError
from .grid import Choice
from .models import ensemble_model, load_weights, save_weights
from .plan import (AcceptSpec, DataSpec, ExplainSpec, FinetuneSpec, LogitsSpec, MixedModel, SeedsSpec, SegmentSpec,
                   Stage, TrainSpec)
from .records import StageResult
from .registry import get_registry
from .store import file_digest, save_arrays
from .training import fit, predict_logits, resolve_device, to_tensor


def build_untrained(backbone, num_classes: int):
    """``backbone.build(num_classes, pretrained=False)``, or ``build(num_classes)`` for a backbone whose
    ``build`` takes no ``pretrained`` (its weights are replaced by a stage's anyway)."""
    if capability(backbone, "pretrained", "backbones"):
        return backbone.build(num_classes, pretrained=False)
    return backbone.build(num_classes)


class StageRunner:
    """Runs one stage: reads its inputs from the cache, writes its artifact atomically, returns a
    ``StageResult``; it never writes to the SQLite store."""

    def __init__(self, cache: Path, registry, *, device: str, progress: bool = True):
        self.artifacts = Artifacts(cache)
        self.registry = registry
        self.device = resolve_device(device)
        self.progress = progress

    def __getstate__(self):
        """Sent to worker processes without the registry (rebuilt there from installed entry points)."""
        return {"cache": self.artifacts.cache, "device": self.device, "progress": self.progress}

    def __setstate__(self, state):
        self.__init__(state["cache"], get_registry(), device=state["device"], progress=state["progress"])

    def path(self, kind: str, key: str, split: str | None = None) -> Path:
        return self.artifacts.path(kind, key, split)

    def bar(self, stage: Stage, total: int, unit: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=stage.label, unit=unit, leave=False, disable=not self.progress,
                    dynamic_ncols=True)

    def bar_range(self, stage: Stage, total: int, step: int, items=None):
        """Iterate ``items`` (default ``range(0, total, step)``) with a progress bar counting images."""
        items = range(0, total, step) if items is None else items
        with self.bar(stage, total, "img") as bar:
            for item in items:
                yield item
                bar.update(min(step, total - bar.n))

    # -- components ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def calling(self, kind: str, choice: Choice, given: str = ""):
        """Any exception raised inside, a contract violation included, becomes a ``ComponentError`` naming
        the component (kind, name, plugin, distribution, version) and what it was ``given``, so a failed
        cell says whose fault it was and where to look."""
        try:
            yield
        except (ComponentError, StageError):  # already says whose it is, or is xaibench's own
            raise
        except Exception as exc:
            message = str(exc) if isinstance(exc, (UserError, ContractViolation)) else f"{type(exc).__name__}: {exc}"
            if given:
                message += f" (given {given})"
            raise ComponentError(self.registry.who(kind, choice.name, choice.label), message,
                                 user_error=isinstance(exc, UserError)) from exc

    def component(self, kind: str, choice: Choice):
        with self.calling(kind, choice):
            return self.registry.create(kind, choice.name, **choice.params)

    def load_model(self, backbone_choice: Choice, key: str, num_classes: int):
        import torch

        backbone = self.component("backbones", backbone_choice)
        with self.calling("backbones", backbone_choice, given=f"build({num_classes}, pretrained=False)"), \
                torch.random.fork_rng():
            model = build_untrained(backbone, num_classes)
            validate_model(model)
            load_weights(model, self.path("train", key))
        return backbone, model.to(self.device).eval()

    # -- running -------------------------------------------------------------------------------------
    def __call__(self, stage: Stage) -> StageResult:
        start = time.perf_counter()
        try:
            meta = getattr(self, f"_run_{stage.kind}")(stage)
            root = self.artifacts.cache.parent
            files = {str(p.relative_to(root)): file_digest(p) for p in self.artifacts.files(stage.kind, stage.key)}
            return StageResult(stage.key, True, time.perf_counter() - start, meta=meta or {}, files=files)
        except Exception as exc:  # recorded against the stage; the run goes on with other cells
            full = _disk_full(exc)
            if full is not None:
                free = shutil.disk_usage(self.artifacts.cache.parent).free
                return StageResult(stage.key, False, time.perf_counter() - start, traceback=traceback.format_exc(),
                                   error=f"no space left on the device of {self.artifacts.cache.parent} ({free:,} bytes "
                                         f"free; {full}); free space there or choose another --out, and run the "
                                         f"same command again: this stage is retried", transient=True)
            component = exc.component if isinstance(exc, ComponentError) else ""
            message = exc.message if isinstance(exc, ComponentError) else (
                str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}")
            user_error = exc.user_error if isinstance(exc, ComponentError) else isinstance(exc, UserError)
            return StageResult(stage.key, False, time.perf_counter() - start, error=message,
                               traceback=traceback.format_exc(), component=component, user_error=user_error)

    def _run_data(self, stage: Stage):
        spec: DataSpec = stage.spec
        dataset = self.component("datasets", spec.dataset)
        with self.calling("datasets", spec.dataset, given="no input (its classes)"):
            validate_classes(dataset.classes)
        classes = np.asarray(list(dataset.classes), dtype=str)
        sizes, counts = set(), {}
        for split in SPLITS:
            with self.calling("datasets", spec.dataset, given=f"split({split!r})"):
                samples = list(dataset.split(split))
                for sample in samples:
                    validate_sample(sample, len(classes))
                    sizes.add(sample.image.shape[:2])
                    if len(sizes) > 1:
                        raise ContractViolation(f"images differ in size ({sorted(sizes)}); every image of a dataset "
                                                f"has one size (resize them, e.g. with an image_size parameter)")
            shape = next(iter(sizes)) if sizes else (0, 0)

            def stack(values, empty_shape, dtype):
                return np.stack(values) if values else np.zeros((0, *empty_shape), dtype)

            masks = [s.mask if s.mask is not None else np.zeros(shape, bool) for s in samples]
            save_arrays(
                self.path("data", stage.key, split),
                images=stack([s.image for s in samples], (*shape, 3), np.uint8),
                labels=np.asarray([int(s.label) for s in samples], dtype=np.int64),
                masks=stack(masks, shape, bool),
                references=stack([s.reference if getattr(s, "reference", None) is not None else m
                                  for s, m in zip(samples, masks)], shape, bool),
                has_mask=np.asarray([s.mask is not None for s in samples], dtype=bool),
                has_reference=np.asarray([getattr(s, "reference", None) is not None for s in samples], dtype=bool),
                ids=np.asarray([str(s.id) for s in samples], dtype=str),
                classes=classes,
            )
            counts[split] = len(samples)
        if counts["train"] == 0 or counts["test"] == 0:
            raise UserError(f"dataset {spec.dataset.name!r} has an empty train or test split: {counts}")
        return {"counts": counts, "classes": classes.tolist()}

    def _fit(self, stage, spec, model, foreground=None, mask_fn=None, subset=None):
        train = self.artifacts.data(spec.data, "train")
        images, labels = train["images"], train["labels"]
        if subset is not None:
            images, labels = images[subset], labels[subset]
            foreground = foreground[subset] if foreground is not None else None
        with self.bar(stage, len(labels) * spec.train["epochs"], "img") as bar, \
                self.calling("backbones", spec.backbone, given="training batches"):
            return fit(model, images, labels, seed=spec.seed, device=self.device, foreground=foreground,
                       mask_fn=mask_fn, progress=bar.update, checkpoint=self.checkpoint_path(stage), **spec.train)

    def checkpoint_path(self, stage: Stage) -> Path:
        """Where an unfinished training of ``stage`` keeps its last epoch (removed once it finishes)."""
        return self.artifacts.cache / "checkpoints" / f"{stage.key}.pt"

    def _run_train(self, stage: Stage):
        import torch

        spec: TrainSpec = stage.spec
        train = self.artifacts.data(spec.data, "train")
        backbone = self.component("backbones", spec.backbone)
        torch.manual_seed(spec.seed)
        with self.calling("backbones", spec.backbone, given=f"build({len(train['classes'])})"):
            model = backbone.build(len(train["classes"]))
            validate_model(model)
        stats = self._fit(stage, spec, model)
        save_weights(model, self.path("train", stage.key))
        self.checkpoint_path(stage).unlink(missing_ok=True)
        return stats

    def _run_finetune(self, stage: Stage):
        spec: FinetuneSpec = stage.spec
        train = self.artifacts.data(spec.data, "train")
        _, model = self.load_model(spec.backbone, spec.init, len(train["classes"]))
        annotations = self.artifacts.annotations(spec.data, spec.annotations)
        foreground, subset = masks_for_finetuning(annotations, train["has_mask"], spec.missing_mask, seed=spec.seed)
        mask = self.component("masks", spec.mask)

        def mask_fn(images, fg):
            given = f"a training batch: images {tuple(images.shape)} {str(images.dtype).removeprefix('torch.')}"
            with self.calling("masks", spec.mask, given=given):
                out = mask(images, fg)
                validate_masked(out, images, fg)
            return out

        stats = self._fit(stage, spec, model, foreground=foreground, mask_fn=mask_fn, subset=subset)
        save_weights(model, self.path("finetune", stage.key))
        self.checkpoint_path(stage).unlink(missing_ok=True)
        return stats

    def _run_logits(self, stage: Stage):
        spec: LogitsSpec = stage.spec
        test = self.artifacts.data(spec.data, "test")
        _, model = self.load_model(spec.backbone, spec.model, len(test["classes"]))
        with self.calling("backbones", spec.backbone, given=f"the {len(test['labels'])} test images"):
            logits = predict_logits(model, test["images"], batch_size=256, device=self.device)
            validate_logits(logits, len(test["labels"]), len(test["classes"]))
        save_arrays(self.path("logits", stage.key), test=logits)
        return {"n": len(logits)}

    def _target_layers(self, backbone, choice: Choice, model):
        with self.calling("backbones", choice, given="target_layers(model)"):
            layers = backbone.target_layers(model)
            validate_layers(layers, model)
        return list(layers)

    def _explained_model(self, spec: ExplainSpec, num_classes):
        ref = spec.model
        if not isinstance(ref, MixedModel):
            backbone, model = self.load_model(spec.backbone, ref.key, num_classes)
            return model, self._target_layers(backbone, spec.backbone, model)
        backbone, raw = self.load_model(spec.backbone, ref.raw, num_classes)
        _, masked = self.load_model(spec.backbone, ref.masked, num_classes)
        rule = self.component("ensembles", ref.ensemble)

        def mixed(raw_logits, masked_logits):
            with self.calling("ensembles", ref.ensemble, given=f"member logits {tuple(raw_logits.shape)}"):
                out = rule(raw_logits, masked_logits)
                validate_ensemble(out, raw_logits)
            return out

        model = ensemble_model(raw, masked, mixed).eval()
        layers = self._target_layers(backbone, spec.backbone, raw) + self._target_layers(backbone, spec.backbone, masked)
        return model, layers

    def _run_explain(self, stage: Stage):
        import torch

        spec: ExplainSpec = stage.spec
        test = self.artifacts.data(spec.data, spec.split)
        index = np.flatnonzero(test["has_mask"])
        model, target_layers = self._explained_model(spec, len(test["classes"]))
        explainer = self.component("explainers", spec.explainer)
        uses_ground_truth = capability(explainer, "uses_ground_truth", "explainers")
        height, width = test["images"].shape[1:3]
        maps = np.zeros((len(index), height, width), dtype=np.float32)
        batch = spec.batch_size
        for start in self.bar_range(stage, len(index), batch):
            chunk = index[start : start + batch]
            images = to_tensor(test["images"][chunk]).to(self.device)
            targets = torch.from_numpy(test["labels"][chunk]).to(self.device)
            gt = test["references"][chunk] if uses_ground_truth else None
            given = f"{len(chunk)} {spec.split} images from {str(test['ids'][chunk[0]])!r}"
            with self.calling("explainers", spec.explainer, given=given):
                out = explainer.explain(model, images, targets, target_layers=target_layers, masks=gt)
                validate_maps(out, len(chunk), height, width)
            maps[start : start + len(chunk)] = out
        save_arrays(self.path("explain", stage.key), maps=maps, index=index)
        return {"n": int(len(index))}

    def _run_seeds(self, stage: Stage):
        spec: SeedsSpec = stage.spec
        explained = self.artifacts.load("explain", spec.explain)
        ids = self.artifacts.data(spec.data, spec.split)["ids"][explained["index"]]
        seeder = self.component("seeders", spec.seeder)
        maps = explained["maps"].astype(np.float32)
        prompts = []
        for saliency, image_id in zip(maps, ids):
            with self.calling("seeders", spec.seeder, given=f"the map of {spec.split} image {str(image_id)!r}"):
                prompts.append(seeder(saliency))
        try:
            validate_prompt_sets(prompts, maps)  # one pass over all maps: cheap beside seeding them
        except ContractViolation as exc:
            with self.calling("seeders", spec.seeder, given=f"the map of {spec.split} image {str(ids[exc.index])!r}"):
                raise
        width = max([len(p.labels) for p in prompts], default=0)
        points = np.full((len(prompts), width, 2), np.nan, dtype=np.float32)
        labels = np.full((len(prompts), width), -1, dtype=np.int8)
        for i, p in enumerate(prompts):
            points[i, : len(p.labels)] = p.points
            labels[i, : len(p.labels)] = p.labels
        save_arrays(self.path("seeds", stage.key), points=points, labels=labels)
        return {"n": len(prompts), "max_points": width}

    def _run_segment(self, stage: Stage):
        """Masks (S, M, H, W) for S seeders' prompts on the M explained images, bit-packed, and the
        segmenter's confidence in each (S, M), NaN where it gives none."""
        spec: SegmentSpec = stage.spec
        seeds = [self.artifacts.load("seeds", key) for key in spec.seeds]
        explained = self.artifacts.load("explain", spec.explain)
        index = explained["index"]
        test = self.artifacts.data(spec.data, spec.split)
        segmenter = self.component("segmenters", spec.segmenter)
        scored = capability(segmenter, "segment_with_scores", "segmenters")
        uses_saliency = capability(segmenter, "uses_saliency", "segmenters")
        height, width = test["images"].shape[1:3]
        masks = np.zeros((len(seeds), len(index), height, width), dtype=bool)
        scores = np.full((len(seeds), len(index)), np.nan, dtype=np.float32)
        for row, i in enumerate(self.bar_range(stage, len(index), 1, index)):
            prompts = []
            for s in seeds:
                keep = s["labels"][row] >= 0
                prompts.append(Prompts(s["points"][row][keep], s["labels"][row][keep].astype(np.int64)))
            extra = {"saliency": [explained["maps"][row].astype(np.float32)] * len(prompts)} if uses_saliency else {}
            given = f"{spec.split} image {str(test['ids'][i])!r} with {len(prompts)} prompt set(s)"
            with self.calling("segmenters", spec.segmenter, given=given):
                if scored is not None:
                    out, confidence = scored(test["images"][i], prompts, **extra)
                    validate_segmentation(out, len(prompts), height, width, confidence)
                    scores[:, row] = np.asarray(confidence, dtype=np.float32)
                else:
                    out = segmenter.segment(test["images"][i], prompts, **extra)
                    validate_segmentation(out, len(prompts), height, width)
            for j, mask in enumerate(out):
                masks[j, row] = mask
        save_arrays(self.path("segment", stage.key), masks=np.packbits(masks, axis=-1), width=np.int64(width),
                    scores=scores)
        return {"n": int(len(index)), "seeders": len(seeds)}

    def _run_accept(self, stage: Stage):
        """The next training annotations: the current ones, except where the acceptor takes an image's
        segmentation (its return value replaces the annotation). Stores every training annotation,
        bit-packed, the explained images' index, and per explained image whether the acceptor took the
        segmentation and whether the annotation changed."""
        spec: AcceptSpec = stage.spec
        current = self.artifacts.annotations(spec.data, spec.annotations)
        ids = self.artifacts.data(spec.data, "train")["ids"]
        explained = self.artifacts.load("explain", spec.explain)
        segmented = self.artifacts.load("segment", spec.segment)
        proposals = unpack_masks(segmented, 0)
        scores = segmented.get("scores", np.full((1, len(proposals)), np.nan, np.float32))[0]
        acceptor = self.component("acceptors", spec.acceptor)
        index = explained["index"]
        updated = current.copy()
        accepted = np.zeros(len(index), dtype=bool)
        for row, i in enumerate(self.bar_range(stage, len(index), 1, index)):
            with self.calling("acceptors", spec.acceptor, given=f"train image {str(ids[i])!r}"):
                out = acceptor(current[i].copy(), proposals[row].copy(),
                               saliency=explained["maps"][row].astype(np.float32), score=float(scores[row]))
                validate_annotation(out, current[i].shape)
            if out is not None:
                updated[i], accepted[row] = out, True
        changed = np.any(updated[index] != current[index], axis=(1, 2))
        save_arrays(self.path("accept", stage.key), masks=np.packbits(updated, axis=-1),
                    width=np.int64(updated.shape[-1]), index=index, accepted=accepted, changed=changed)
        return {"n": int(len(index)), "accepted": int(accepted.sum()), "changed": int(changed.sum())}


def _disk_full(exc: BaseException) -> str | None:
    """The message of the out-of-space error behind ``exc`` (itself or what caused it), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        if any(text in str(exc) for text in ("No space left on device", "Disk quota exceeded")):
            return f"{type(exc).__name__}: {exc}"  # a library's own error around the OS's (safetensors)
        exc = exc.__cause__ or exc.__context__
    return None


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
