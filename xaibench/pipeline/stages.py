"""Running stages: each stage reads its inputs from the cache and writes its artifact (see ``xaibench.pipeline.plan``
for what each stage is and how it is keyed, ``xaibench.pipeline.artifacts`` for where its files live)."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import shutil
import signal
import time
import traceback
from pathlib import Path

import numpy as np

from xaibench.errors import ComponentError, ContractViolation, StageError, UserError, out_of_space
from xaibench.kit.contracts import (Bands, apply_ensemble, band_arguments, capability, validate_annotation,
                                    validate_bands, validate_classes, validate_layers, validate_layout, validate_logits,
                                    validate_maps, validate_masked, validate_model, validate_prompt_sets,
                                    validate_sample, validate_segmentation)
from xaibench.kit.models import ensemble_model, layer_name, load_weights, save_weights
from xaibench.kit.registry import get_registry
from xaibench.pipeline import faithfulness, sanity, schema
from xaibench.pipeline.artifacts import (CHUNK, SPLITS, ArrayFolderWriter, Artifacts, map_chunks, pack_prompts,
                                         prompts_at, segmentations)
from xaibench.pipeline.grid import Choice
from xaibench.pipeline.memo import Memo, digest
from xaibench.pipeline.plan import (AcceptSpec, DataSpec, ExplainSpec, FaithfulnessSpec, FinetuneSpec, LogitsSpec,
                                    MixedModel, SanitySpec, SeedsSpec, SegmentSpec, Stage, TrainSpec)
from xaibench.pipeline.records import StageResult
from xaibench.pipeline.store import file_digest, save_arrays
from xaibench.pipeline.training import fit, predict_logits, resolve_device, to_device, to_tensor


def build_untrained(backbone, num_classes: int, bands: Bands):
    """``backbone.build(num_classes, pretrained=False, bands=bands)``, without ``pretrained`` for a backbone
    whose ``build`` takes no such keyword (its weights are replaced by a stage's anyway) and without
    ``bands`` for one that takes RGB images only (``band_arguments``)."""
    extra = band_arguments(backbone, "backbones", bands)
    if capability(backbone, "pretrained", "backbones"):
        return backbone.build(num_classes, pretrained=False, **extra)
    return backbone.build(num_classes, **extra)


def weightless_copy(template):
    """A copy of the module ``template`` whose parameters and persistent buffers (everything its
    ``state_dict`` holds) are allocated but not copied, for a state dict to fill; everything else (the
    structure, non-persistent buffers) is deep-copied. Tied parameters stay tied. A module with hooks is
    refused (``TypeError``): a hook's closure would still point into the template."""
    import torch

    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    if any(getattr(module, name, None) for module in template.modules() for name in hooks):
        raise TypeError("a module with hooks is built afresh, not copied")
    memo = {}
    for tensor in template.state_dict(keep_vars=True).values():
        if id(tensor) not in memo:
            empty = torch.empty_like(tensor)
            memo[id(tensor)] = torch.nn.Parameter(empty, tensor.requires_grad) \
                if isinstance(tensor, torch.nn.Parameter) else empty
    return copy.deepcopy(template, memo)


class StageRunner:
    """Runs one stage: reads its inputs from the cache, writes its artifact atomically, returns a
    ``StageResult``; it never writes to the SQLite store."""

    def __init__(self, cache: Path, registry, *, device: str, progress: bool = True):
        self.artifacts = Artifacts(cache)
        self.registry = registry
        self.device = resolve_device(device)
        self.progress = progress
        self._stage: str | None = None  # the key of the stage running, for its breadcrumb
        self._crumbs: list[str] = []  # the components being called, innermost last
        self._written = ""
        # Built untrained models by (backbone, classes, data), copied for each load instead of built again:
        # building initialises every weight at random only for the stage's weights to replace them.
        self._templates: dict = {}
        self._segmentations = Memo()  # segmenter calls by their inputs, across this process's stages
        self._logits_memo = Memo(64 << 20)  # networks' logits on the chance maps' perturbed images
        self._imputed = Memo()  # ROAD's imputations of the chance maps

    def __getstate__(self):
        """Sent to worker processes without the registry (rebuilt there from installed entry points)."""
        return {"cache": self.artifacts.cache, "device": self.device, "progress": self.progress}

    def __setstate__(self, state):
        self.__init__(state["cache"], get_registry(), device=state["device"], progress=state["progress"])

    def path(self, kind: str, key: str, split: str | None = None) -> Path:
        return self.artifacts.path(kind, key, split)

    def bar(self, stage: Stage, total: int, unit: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=stage.label, unit=unit, leave=False, disable=(not self.progress) or None,
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
        cell says whose fault it was and where to look. So does a ``SystemExit`` (a plugin calling
        ``sys.exit``) or any other ``BaseException`` but a real Ctrl-C (``passes_through``): a component
        cannot end the run. The component is also noted in the stage's breadcrumb (``breadcrumb``), which
        names it when the worker running the stage dies."""
        try:
            who = self.registry.who(kind, choice.name, choice.label)
        except UserError:  # not registered here: the call itself fails and says so
            who = f"{kind[:-1]} {choice.label!r}"
        self._crumbs.append(who)
        self._leave_breadcrumb()
        try:
            yield
        except ComponentError:  # already says whose it is
            raise
        except BaseException as exc:
            if passes_through(exc):
                raise
            if isinstance(exc, StageError):  # xaibench's own check of what the component computed
                message = str(exc)
            elif isinstance(exc, SystemExit):
                message = (f"called sys.exit({exc.code!r}); a component raises an exception to fail, it does not "
                           f"end the process")
            elif isinstance(exc, (UserError, ContractViolation)):
                message = str(exc)
            else:
                message = f"{type(exc).__name__}: {exc}"
            if given:
                message += f" (given {given})"
            raise ComponentError(who, message, user_error=isinstance(exc, UserError)) from exc
        finally:
            self._crumbs.pop()
            self._leave_breadcrumb()

    def breadcrumb(self, key: str) -> Path:
        """The file naming the component a running stage ``key`` is calling (``calling``), written when
        that changes and removed when the stage ends: what the driver reads when the worker running the
        stage died, so the failure names the component rather than the executor."""
        return self.artifacts.cache / "running" / f"{key}.txt"

    def _leave_breadcrumb(self) -> None:
        text = self._crumbs[-1] if self._crumbs else ""
        if self._stage is None or text == self._written:
            return
        try:
            path = self.breadcrumb(self._stage)
            if text:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            else:
                path.unlink(missing_ok=True)
            self._written = text
        except OSError:  # a note for a post-mortem only: never the reason a stage fails
            pass

    def calling_in(self, key: str) -> str:
        """The component the stage ``key`` was last calling, from its breadcrumb ("" when none is left)."""
        try:
            return self.breadcrumb(key).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return ""

    def component(self, kind: str, choice: Choice):
        with self.calling(kind, choice):
            return self.registry.create(kind, choice.name, **choice.params)

    def load_model(self, backbone_choice: Choice, key: str, num_classes: int, data: str):
        """The backbone and its module for the images of ``data``, with the weights of the stage ``key``."""
        import torch

        backbone = self.component("backbones", backbone_choice)
        bands = self.artifacts.bands(data)
        with self.calling("backbones", backbone_choice, given=f"build({num_classes}, pretrained=False)"), \
                torch.random.fork_rng():
            model = self._untrained(backbone, backbone_choice, num_classes, data, bands)
            load_weights(model, self.path("train", key))
        return backbone, model.to(self.device).eval()

    def _untrained(self, backbone, choice: Choice, num_classes: int, data: str, bands: Bands):
        """A validated untrained model of ``backbone``: a weightless copy of the one built first for the same
        choice, classes and data (built afresh where the model cannot be deep-copied)."""
        key = (choice, num_classes, data)
        template = self._templates.get(key)
        if template is not None:
            with contextlib.suppress(Exception):
                return weightless_copy(template)
        model = build_untrained(backbone, num_classes, bands)
        validate_model(model)
        if key not in self._templates:
            try:
                copied = weightless_copy(model)
            except Exception:  # noqa: BLE001 - a module deepcopy cannot handle: build it each time
                self._templates[key] = None
            else:
                self._templates[key] = model
                return copied
        return model

    # -- running -------------------------------------------------------------------------------------
    def __call__(self, stage: Stage) -> StageResult:
        start = time.perf_counter()
        reset_peak_memory()
        self._stage, self._crumbs, self._written = stage.key, [], "?"
        self._leave_breadcrumb()  # removes one an earlier, killed run left
        try:
            meta = RUNS[type(stage.spec)](self, stage)
            peak = peak_memory()
            if peak is not None:
                meta = {**(meta or {}), "peak_rss_mib": peak}
            root = self.artifacts.cache.parent
            files = {str(p.relative_to(root)): file_digest(p) for p in self.artifacts.files(stage.kind, stage.key)}
            return StageResult(stage.key, True, time.perf_counter() - start, meta=meta or {}, files=files)
        except BaseException as exc:  # recorded against the stage; the run goes on with other cells
            if passes_through(exc):
                raise
            full = out_of_space(exc)
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
        finally:
            self._crumbs = []
            self._leave_breadcrumb()
            self._stage, self._written = None, ""

    def _run_data(self, stage: Stage):
        """Each split as an array folder written one sample at a time (``artifacts.ArrayFolderWriter``):
        a split is never held in memory by this stage."""
        spec: DataSpec = stage.spec
        dataset = self.component("datasets", spec.dataset)
        with self.calling("datasets", spec.dataset, given="no input (its classes)"):
            validate_classes(dataset.classes)
        with self.calling("datasets", spec.dataset, given="no input (its image_bands)"):
            bands = capability(dataset, "image_bands", "datasets") or Bands.rgb3()
            validate_bands(bands)
        classes = np.asarray(list(dataset.classes), dtype=str)
        pixels = ImagePixels(bands)
        counts = {}
        for split in SPLITS:
            with self.calling("datasets", spec.dataset, given=f"split({split!r})"):
                samples = dataset.split(split)
                if not hasattr(samples, "__len__"):
                    raise ContractViolation(f"split({split!r}) returned {type(samples).__name__}, which has no "
                                            f"length; return a sequence (a list) of Sample")
                counts[split] = self._write_split(self.path("data", stage.key, split), samples, classes, pixels)
        if counts["train"] == 0 or counts["test"] == 0:
            raise UserError(f"dataset {spec.dataset.name!r} has an empty train or test split: {counts}")
        meta = {"counts": counts, "classes": classes.tolist()}
        return meta if bands.is_rgb else {**meta, "bands": list(bands.names), "composite": list(bands.rgb)}

    @staticmethod
    def _write_split(folder: Path, samples, classes: np.ndarray, pixels: "ImagePixels") -> int:
        """Validate and write one split; ``pixels`` holds the dataset's bands and the image size and dtype
        seen so far, which every sample must share. Returns the number of samples."""
        n = len(samples)
        writer = ArrayFolderWriter(folder)
        try:
            labels, has_mask, has_reference, ids, groups = [], [], [], [], []
            columns = None
            for i, sample in enumerate(samples):
                validate_sample(sample, len(classes), pixels.bands)
                pixels.check(sample)
                size = pixels.size
                if columns is None:
                    columns = (writer.column("images", (n, *size, pixels.bands.count), pixels.dtype),
                               writer.column("masks", (n, *size), bool), writer.column("references", (n, *size), bool))
                reference = getattr(sample, "reference", None)
                columns[0][i] = sample.image
                columns[1][i] = sample.mask if sample.mask is not None else False
                columns[2][i] = reference if reference is not None else columns[1][i]
                labels.append(int(sample.label))
                has_mask.append(sample.mask is not None)
                has_reference.append(reference is not None)
                ids.append(str(sample.id))
                groups.append(getattr(sample, "group", None) or "")
            if columns is None:  # an empty split
                shape = pixels.size or (0, 0)
                writer.column("images", (0, *shape, pixels.bands.count), pixels.dtype or np.uint8)
                writer.column("masks", (0, *shape), bool)
                writer.column("references", (0, *shape), bool)
            writer.save("labels", np.asarray(labels, dtype=np.int64))
            writer.save("has_mask", np.asarray(has_mask, dtype=bool))
            writer.save("has_reference", np.asarray(has_reference, dtype=bool))
            writer.save("ids", np.asarray(ids, dtype=str))
            writer.save("groups", np.asarray(groups, dtype=str) if groups else np.zeros(0, dtype="<U1"))
            writer.save("classes", classes)
            writer.save("band_names", np.asarray(pixels.bands.names, dtype=str))
            writer.save("composite", np.asarray(pixels.bands.rgb, dtype=np.int64))
            for name in ("mean", "std", "median"):  # only those the dataset declares; the others are worked out
                if getattr(pixels.bands, name) is not None:
                    writer.save(f"band_{name}", np.asarray(getattr(pixels.bands, name), dtype=np.float64))
            writer.close()
        except BaseException:
            writer.abandon()
            raise
        return n

    def _fit(self, stage, spec, model, foreground=None, mask_fn=None, subset=None):
        train = self.artifacts.data(spec.data, "train")
        n = len(train["labels"]) if subset is None else len(subset)
        with self.bar(stage, n * spec.train.epochs, "img") as bar, \
                self.calling("backbones", spec.backbone, given="training batches"):
            return fit(model, train["images"], train["labels"], spec.train, seed=spec.seed, device=self.device,
                       foreground=foreground, mask_fn=mask_fn, subset=subset, progress=bar.update,
                       checkpoint=self.checkpoint_path(stage))

    def checkpoint_path(self, stage: Stage) -> Path:
        """Where an unfinished training of ``stage`` keeps its last epoch (removed once it finishes)."""
        return self.artifacts.cache / "checkpoints" / f"{stage.key}.pt"

    def _run_train(self, stage: Stage):
        import torch

        spec: TrainSpec = stage.spec
        train = self.artifacts.data(spec.data, "train")
        backbone = self.component("backbones", spec.backbone)
        bands = self.artifacts.bands(spec.data)
        torch.manual_seed(spec.seed)
        with self.calling("backbones", spec.backbone, given=f"build({len(train['classes'])})"):
            model = backbone.build(len(train["classes"]), **band_arguments(backbone, "backbones", bands))
            validate_model(model)
        stats = self._fit(stage, spec, model)
        save_weights(model, self.path("train", stage.key))
        self.checkpoint_path(stage).unlink(missing_ok=True)
        return stats

    def _run_finetune(self, stage: Stage):
        spec: FinetuneSpec = stage.spec
        train = self.artifacts.data(spec.data, "train")
        _, model = self.load_model(spec.backbone, spec.init, len(train["classes"]), spec.data)
        annotations = self.artifacts.annotations(spec.data, spec.annotations)
        foreground, subset = masks_for_finetuning(annotations, train["has_mask"], spec.missing_mask, seed=spec.seed)
        mask = self.component("masks", spec.mask)
        with self.calling("masks", spec.mask):
            extra = band_arguments(mask, "masks", self.artifacts.bands(spec.data))

        def mask_fn(images, fg):
            given = f"a training batch: images {tuple(images.shape)} {str(images.dtype).removeprefix('torch.')}"
            with self.calling("masks", spec.mask, given=given):
                out = mask(images, fg, **extra)
                validate_masked(out, images, fg)
            return out

        stats = self._fit(stage, spec, model, foreground=foreground, mask_fn=mask_fn, subset=subset)
        save_weights(model, self.path("finetune", stage.key))
        self.checkpoint_path(stage).unlink(missing_ok=True)
        return stats

    def _run_logits(self, stage: Stage):
        """The model's logits on the test split and on the val split (empty where it has none)."""
        spec: LogitsSpec = stage.spec
        out = {}
        for split in ("test", "val"):
            data = self.artifacts.data(spec.data, split)
            if split == "test":
                _, model = self.load_model(spec.backbone, spec.model, len(data["classes"]), spec.data)
            if len(data["labels"]) == 0:
                out[split] = np.zeros((0, len(data["classes"])), dtype=np.float32)
                continue
            with self.calling("backbones", spec.backbone, given=f"the {len(data['labels'])} {split} images"):
                logits = predict_logits(model, data["images"], batch_size=256, device=self.device)
                validate_logits(logits, len(data["labels"]), len(data["classes"]))
            out[split] = logits
        save_arrays(self.path("logits", stage.key), **out)
        return {"n": len(out["test"]), "n_val": len(out["val"])}

    def _target_layers(self, backbone, choice: Choice, model):
        with self.calling("backbones", choice, given="target_layers(model)"):
            layers = backbone.target_layers(model)
            validate_layers(layers, model)
        return list(layers)

    def _layouts(self, choice: Choice, members: list):
        """The ``layouts`` function explainers get: ``layouts(layer)`` is the backbone's declared
        ``activation_layout`` of ``layer``, a module of one of ``members`` (the networks it built that the
        explained model runs); an undeclared one fails, naming the backbone and the layer."""
        backbone = self.component("backbones", choice)
        declare = capability(backbone, "activation_layout", "backbones")

        def layouts(layer):
            found = [(member, name) for member in members if (name := layer_name(member, layer)) is not None]
            if not found:
                raise ContractViolation(f"{type(layer).__name__} is not a module of the explained model; explain "
                                        f"the layers of the model given")
            member, name = found[0]
            with self.calling("backbones", choice, given=f"activation_layout(model, {name!r})"):
                layout = declare(member, layer) if declare is not None else None
                validate_layout(layout, name)
            return dataclasses.replace(layout, declared_by=self.registry.who("backbones", choice.name, choice.label))

        return layouts

    def _explainer(self, spec: ExplainSpec | SanitySpec, members: list):
        """The explainer of ``spec``, whether it takes the ground-truth masks, and the keyword arguments it
        takes beyond the contract's: ``layouts`` (``_layouts``) where it declares that capability, and the
        dataset's ``bands`` where it takes them (``band_arguments``)."""
        explainer = self.component("explainers", spec.explainer)
        bands = self.artifacts.bands(spec.data)
        with self.calling("explainers", spec.explainer):
            extra = band_arguments(explainer, "explainers", bands)
        if capability(explainer, "layouts", "explainers"):
            extra["layouts"] = self._layouts(spec.backbone, members)
        return explainer, capability(explainer, "uses_ground_truth", "explainers"), extra

    def _explained_model(self, spec: ExplainSpec | FaithfulnessSpec | SanitySpec, num_classes):
        """The model an explanation is of (an ensemble's as one module) and its target layers."""
        ref = spec.model
        if not isinstance(ref, MixedModel):
            backbone, model = self.load_model(spec.backbone, ref.key, num_classes, spec.data)
            return model, self._target_layers(backbone, spec.backbone, model)
        backbone, raw = self.load_model(spec.backbone, ref.raw, num_classes, spec.data)
        _, masked = self.load_model(spec.backbone, ref.masked, num_classes, spec.data)
        rule = self.component("ensembles", ref.ensemble)

        def mixed(raw_logits, masked_logits):
            with self.calling("ensembles", ref.ensemble, given=f"member logits {tuple(raw_logits.shape)}"):
                return apply_ensemble(rule, raw_logits, masked_logits)

        model = ensemble_model(raw, masked, mixed).eval()
        layers = self._target_layers(backbone, spec.backbone, raw) + self._target_layers(backbone, spec.backbone, masked)
        return model, layers

    def _run_explain(self, stage: Stage):
        import torch

        spec: ExplainSpec = stage.spec
        test = self.artifacts.data(spec.data, spec.split)
        index = np.flatnonzero(test["has_mask"])
        model, target_layers = self._explained_model(spec, len(test["classes"]))
        explainer, uses_ground_truth, layouts = self._explainer(spec, members_of(spec, model))
        height, width = test["images"].shape[1:3]
        writer = ArrayFolderWriter(self.path("explain", stage.key))
        try:
            maps = writer.column("maps", (len(index), height, width), np.float32)  # on disk, filled by batch
            batch = spec.batch_size
            for start in self.bar_range(stage, len(index), batch):
                chunk = index[start : start + batch]
                images = to_device(to_tensor(test["images"][chunk]), self.device)
                targets = torch.from_numpy(test["labels"][chunk]).to(self.device)
                gt = test["references"][chunk] if uses_ground_truth else None
                given = f"{len(chunk)} {spec.split} images from {str(test['ids'][chunk[0]])!r}"
                with self.calling("explainers", spec.explainer, given=given):
                    out = explainer.explain(model, images, targets, target_layers=target_layers, masks=gt, **layouts)
                    validate_maps(out, len(chunk), height, width)
                maps[start : start + len(chunk)] = out
            writer.save("index", index)
            writer.close()
        except BaseException:
            writer.abandon()
            raise
        return {"n": int(len(index))}

    def _measured(self, spec: FaithfulnessSpec | SanitySpec):
        """What a faithfulness or sanity stage measures: ``(explained, test, chosen, index)``, the explain
        artifact, the test split, the positions among the explained images of the ``spec.images`` it
        measures (``faithfulness.subset``) and their rows of the split."""
        explained = self.artifacts.load("explain", spec.explain)
        chosen = faithfulness.subset(len(explained["index"]), spec.images)
        return explained, self.artifacts.data(spec.data, "test"), chosen, explained["index"][chosen]

    def _run_faithfulness(self, stage: Stage):
        """Deletion, insertion and ROAD (``xaibench.pipeline.faithfulness``) of the explanation's maps and, as their
        chance level, of the ``random`` explainer's maps of the same images, each with the true class as
        target (the class the maps explain). The random maps' perturbed images, and each network's logits on
        them, are the same in every stage measuring the same images: they are remembered for the process's
        next such stage (``faithfulness.Probe``, ``faithfulness.RoadImages``)."""
        import torch

        spec: FaithfulnessSpec = stage.spec
        explained, test, chosen, index = self._measured(spec)
        model, _ = self._explained_model(spec, len(test["classes"]))
        ref = spec.model
        if isinstance(ref, MixedModel):
            probe = faithfulness.Probe([(ref.raw, model.raw), (ref.masked, model.masked)], model.rule,
                                       batch_size=spec.batch_size, memo=self._logits_memo)
        else:
            probe = faithfulness.Probe([(ref.key, model)], batch_size=spec.batch_size, memo=self._logits_memo)
        chance = self.registry.create("explainers", "random")
        out = {f"{prefix}{name}": np.full(len(index), np.nan) for prefix in ("", "random_")
               for name in schema.names("faithfulness")}
        for start in self.bar_range(stage, len(index), spec.batch_size):
            rows = slice(start, start + spec.batch_size)
            images = to_device(to_tensor(test["images"][index[rows]]), self.device)
            targets = torch.from_numpy(test["labels"][index[rows]]).to(self.device)
            maps = np.asarray(explained["maps"][chosen[rows]], dtype=np.float32)
            random_maps = chance.explain(None, images, targets, target_layers=[])
            batch = digest("faithfulness", spec.data, index[rows], spec.batch_size)  # these images, in this batch
            with self.calling("backbones", spec.backbone, given=f"{len(images)} perturbed test images"):
                reference = faithfulness.references(probe, images, targets, shared=batch)
                chance_maps = digest(batch, random_maps)
                for prefix, saliency, shared in (("", maps, None), ("random_", random_maps, chance_maps)):
                    found = faithfulness.scores(probe, images, saliency, targets, steps=spec.steps, seed=start,
                                                reference=reference, shared=shared, memo=self._imputed)
                    for name, values in found.items():
                        out[f"{prefix}{name}"][rows] = values
        save_arrays(self.path("faithfulness", stage.key), index=index, position=chosen, **out)
        return {"n": int(len(index))}

    def _run_sanity(self, stage: Stage):
        """The model-parameter randomisation test (``xaibench.pipeline.sanity``): the explainer's maps of the model
        with each member's network re-initialised from its target layer on, against the explanation's."""
        import torch

        spec: SanitySpec = stage.spec
        explained, test, chosen, index = self._measured(spec)
        model, target_layers = self._explained_model(spec, len(test["classes"]))
        members = members_of(spec, model)
        for member in members:
            with self.calling("backbones", spec.backbone, given="re-initialising from the target layer on"):
                sanity.randomise_top_layers(member, [layer for layer in target_layers
                                                     if any(layer is m for m in member.modules())])
        explainer, uses_ground_truth, layouts = self._explainer(spec, members)
        height, width = test["images"].shape[1:3]
        out = {name: np.full(len(index), np.nan) for name in schema.names("sanity")}
        for start in self.bar_range(stage, len(index), spec.batch_size):
            rows = slice(start, start + spec.batch_size)
            chunk = index[rows]
            images = to_device(to_tensor(test["images"][chunk]), self.device)
            targets = torch.from_numpy(test["labels"][chunk]).to(self.device)
            gt = test["references"][chunk] if uses_ground_truth else None
            with self.calling("explainers", spec.explainer, given=f"{len(chunk)} test images, top layers re-initialised"):
                maps = explainer.explain(model, images, targets, target_layers=target_layers, masks=gt, **layouts)
                validate_maps(maps, len(chunk), height, width)
            found = sanity.similarity(np.asarray(explained["maps"][chosen[rows]], dtype=np.float32), maps)
            for name, values in found.items():
                out[name][rows] = values
        save_arrays(self.path("sanity", stage.key), index=index, position=chosen, **out)
        return {"n": int(len(index))}

    def _run_seeds(self, stage: Stage):
        spec: SeedsSpec = stage.spec
        explained = self.artifacts.load("explain", spec.explain)
        ids = self.artifacts.data(spec.data, spec.split)["ids"][explained["index"]]
        seeder = self.component("seeders", spec.seeder)
        kinds = capability(seeder, "prompt_kinds", "seeders")
        prompts = []
        for rows, maps in map_chunks(explained):
            found = []
            for saliency, image_id in zip(maps, ids[rows]):
                with self.calling("seeders", spec.seeder, given=f"the map of {spec.split} image {str(image_id)!r}"):
                    found.append(seeder(saliency))
            try:
                validate_prompt_sets(found, maps, kinds)  # a few array operations per chunk: cheap beside seeding
            except ContractViolation as exc:
                image = str(ids[rows.start + exc.index])
                with self.calling("seeders", spec.seeder, given=f"the map of {spec.split} image {image!r}"):
                    raise
            prompts += found
        packed = pack_prompts(prompts)
        save_arrays(self.path("seeds", stage.key), **packed)
        return {"n": len(prompts), "max_points": packed["labels"].shape[1]}

    def _run_segment(self, stage: Stage):
        """Masks (S, M, H, W) for S seeders' prompts on the M explained images, bit-packed, and the
        segmenter's confidence in each (S, M), NaN where it gives none."""
        spec: SegmentSpec = stage.spec
        seeds = [self.artifacts.load("seeds", key) for key in spec.seeds]
        explained = self.artifacts.load("explain", spec.explain)
        index = explained["index"]
        test = self.artifacts.data(spec.data, spec.split)
        segmenter = self.component("segmenters", spec.segmenter)
        bands = self.artifacts.bands(spec.data)  # segmenters are given the colour composite
        scored = capability(segmenter, "segment_with_scores", "segmenters")
        uses_saliency = capability(segmenter, "uses_saliency", "segmenters")
        height, width = test["images"].shape[1:3]
        masks = np.zeros((len(seeds), len(index), height, (width + 7) // 8), dtype=np.uint8)  # bit-packed rows
        scores = np.full((len(seeds), len(index)), np.nan, dtype=np.float32)
        for row, i in enumerate(self.bar_range(stage, len(index), 1, index)):
            prompts = [prompts_at(s, row) for s in seeds]
            extra = {"saliency": [explained["maps"][row].astype(np.float32)] * len(prompts)} if uses_saliency else {}
            given = f"{spec.split} image {str(test['ids'][i])!r} with {len(prompts)} prompt set(s)"
            with self.calling("segmenters", spec.segmenter, given=given):
                image = bands.composite(test["images"][i])
            # Another stage of this process may have asked the same already (see ``xaibench.pipeline.memo``).
            call = digest(spec.segmenter.json, image, [(p.points, p.labels, p.boxes, p.dense) for p in prompts],
                          extra.get("saliency", [None])[0], scored is not None)
            remembered = self._segmentations.get(call)
            if remembered is not None:
                masks[:, row], confidence = remembered
                if confidence is not None:
                    scores[:, row] = confidence
                continue
            with self.calling("segmenters", spec.segmenter, given=given):
                confidence = None
                if scored is not None:
                    out, confidence = scored(image, prompts, **extra)
                    validate_segmentation(out, len(prompts), height, width, confidence)
                    confidence = np.asarray(confidence, dtype=np.float32)
                    scores[:, row] = confidence
                else:
                    out = segmenter.segment(image, prompts, **extra)
                    validate_segmentation(out, len(prompts), height, width)
            for j, mask in enumerate(out):
                masks[j, row] = np.packbits(mask, axis=-1)
            self._segmentations.put(call, masks[:, row], confidence)
        save_arrays(self.path("segment", stage.key), masks=masks, width=np.int64(width), scores=scores)
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
        proposals = segmentations(segmented, 0)
        scores = segmented.get("scores", np.full((1, len(proposals)), np.nan, np.float32))[0]
        acceptor = self.component("acceptors", spec.acceptor)
        index = explained["index"]
        height, width = current.shape[1:]
        updated = np.zeros((len(current), height, (width + 7) // 8), dtype=np.uint8)  # every annotation, packed
        for start in range(0, len(current), CHUNK):
            updated[start:start + CHUNK] = np.packbits(current[np.arange(start, min(start + CHUNK, len(current)))],
                                                       axis=-1)
        accepted = np.zeros(len(index), dtype=bool)
        changed = np.zeros(len(index), dtype=bool)
        for row, i in enumerate(self.bar_range(stage, len(index), 1, index)):
            annotation = current[[i]][0]
            with self.calling("acceptors", spec.acceptor, given=f"train image {str(ids[i])!r}"):
                out = acceptor(annotation.copy(), proposals[row].copy(),
                               saliency=explained["maps"][row].astype(np.float32), score=float(scores[row]))
                validate_annotation(out, annotation.shape)
            if out is not None:
                updated[i], accepted[row] = np.packbits(out, axis=-1), True
                changed[row] = not np.array_equal(out, annotation)
        save_arrays(self.path("accept", stage.key), masks=updated, width=np.int64(width), index=index,
                    accepted=accepted, changed=changed)
        return {"n": int(len(index)), "accepted": int(accepted.sum()), "changed": int(changed.sum())}


# What runs each kind of stage, keyed by its spec type like ``plan.STAGE_KINDS`` (which holds each kind's
# name, expected cost and artifact).
RUNS = {DataSpec: StageRunner._run_data, TrainSpec: StageRunner._run_train, FinetuneSpec: StageRunner._run_finetune,
        LogitsSpec: StageRunner._run_logits, ExplainSpec: StageRunner._run_explain,
        FaithfulnessSpec: StageRunner._run_faithfulness, SanitySpec: StageRunner._run_sanity,
        SeedsSpec: StageRunner._run_seeds, SegmentSpec: StageRunner._run_segment, AcceptSpec: StageRunner._run_accept}


def members_of(spec, model) -> list:
    """The networks ``model`` runs: an ensemble's raw and masked members, or the model itself."""
    return [model.raw, model.masked] if isinstance(spec.model, MixedModel) else [model]


def passes_through(exc: BaseException) -> bool:
    """Whether ``exc`` ends the run rather than the stage: a Ctrl-C (``KeyboardInterrupt`` where SIGINT
    can arrive; a process worker ignores SIGINT, so one raised there is a component's) or a generator
    being closed. Everything else a stage raises, ``SystemExit`` included, fails that stage only."""
    if isinstance(exc, GeneratorExit):
        return True
    if isinstance(exc, KeyboardInterrupt):
        try:
            return signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        except (ValueError, OSError):
            return True
    return False


def reset_peak_memory() -> None:
    """Give memory freed by earlier stages back to the system and start this process's peak resident
    memory afresh (Linux: ``malloc_trim``, ``/proc/self/clear_refs``), so a stage's record says what the
    stage itself needed and a long run does not keep its largest stage's memory; elsewhere nothing
    happens."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory() -> float | None:
    """Peak resident memory of this process since the last reset, in MiB (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class Foreground:
    """The foregrounds fine-tuning masks each training sample with, read a batch at a time: sample ``i``
    gets ``annotations[source[i]]`` (its own annotation, or the one it borrows), or all True where
    ``source[i]`` is -1 (left unmasked)."""

    def __init__(self, annotations, source: np.ndarray):
        self.annotations, self.source = annotations, np.asarray(source, dtype=np.int64)
        self.shape = (len(self.source), *tuple(annotations.shape[1:]))

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, rows) -> np.ndarray:
        source = self.source[rows]
        single = np.ndim(source) == 0
        source = np.atleast_1d(source)
        out = np.ones((len(source), *self.shape[1:]), dtype=bool)
        given = source >= 0
        if given.any():
            out[given] = self.annotations[source[given]]
        return out[0] if single else out

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)


def masks_for_finetuning(masks, has_mask, policy: str, *, seed: int):
    """The foregrounds for fine-tuning under the missing-mask ``policy`` (see ``grid.Protocol``).

    Returns ``(foreground, subset)``: a ``Foreground`` (bool rows (N, H, W), read as batches are
    drawn) and the samples trained on (None: all)."""
    has_mask = np.asarray(has_mask, dtype=bool)
    annotated = np.flatnonzero(has_mask)
    if len(annotated) == 0:
        raise UserError("no training sample has an annotation mask, so masked fine-tuning (and the annotation "
                        "loop) is impossible; use a dataset with masks, or drop 'masks' from a grid for 'run'")
    source = np.arange(len(has_mask))
    if policy == "drop":
        return Foreground(masks, source), annotated
    missing = np.flatnonzero(~has_mask)
    if policy == "raw":
        source[missing] = -1
    else:  # borrow
        rng = np.random.default_rng(seed)
        source[missing] = rng.choice(annotated, size=len(missing))
    return Foreground(masks, source), None


class ImagePixels:
    """What every image of one dataset shares, checked sample by sample as the data stage writes them: its
    ``bands`` (the channel count), its size (H, W) and its dtype (uint8 or float32), the latter two set by
    the first sample."""

    def __init__(self, bands: Bands):
        self.bands = bands
        self.size: tuple | None = None
        self.dtype = None

    def check(self, sample) -> None:
        image = sample.image
        if self.size is not None and image.shape[:2] != self.size:
            raise ContractViolation(f"images differ in size ({self.size} and {image.shape[:2]} for sample "
                                    f"{sample.id!r}); every image of a dataset has one size (resize them, e.g. "
                                    f"with an image_size parameter)")
        if self.dtype is not None and image.dtype != self.dtype:
            raise ContractViolation(f"images differ in dtype ({self.dtype} and {image.dtype} for sample {sample.id!r}); "
                                    f"every image of a dataset has one dtype, uint8 or float32")
        self.size, self.dtype = image.shape[:2], image.dtype
