"""Every registered component of every kind against ``xaibench.kit.testing``'s conformance checks, and those
checks against components that break the contract (each must be caught, with a message saying what to fix).

Built-ins run with small parameters (tiny inputs, 32-pixel images). ``sam``, ``sam-hq`` and ``sam2`` run with
tiny randomly initialised models; datasets that need data on disk are skipped unless their ``check()`` passes."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from xaibench import hookimpl
from xaibench.errors import ComponentParamsError, PluginError, UserError
from xaibench.kit import testing
from xaibench.kit.contracts import Prompts, Sample
from xaibench.kit.registry import KINDS, Registry

INSTALLED = Registry()
SMALL = {
    ("datasets", "synthetic"): {"n_train": 4, "n_val": 0, "n_test": 2, "image_size": 32},
    ("datasets", "kahikatea"): {"image_size": 32},
    ("datasets", "lcdb-waikato"): {"image_size": 32},
    ("explainers", "scorecam"): {"batch_size": 16},
    ("executors", "process"): {"workers": 1, "threads": 1},
}


def tiny_sam_segmenter(factory):
    """``sam``'s class with a randomly initialised SAM at toy size instead of a checkpoint."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    class TinySam(factory):
        def _build_model(self):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return Sam(
                    image_encoder=ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                                                  out_chans=32),
                    prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64),
                                                 mask_in_chans=4),
                    mask_decoder=MaskDecoder(transformer_dim=32, num_multimask_outputs=3, iou_head_depth=2,
                                             iou_head_hidden_dim=16,
                                             transformer=TwoWayTransformer(depth=1, embedding_dim=32, num_heads=2,
                                                                           mlp_dim=64)),
                ).eval()

    return TinySam(device="cpu")


def tiny_vit():
    """A randomly initialised timm ViT at toy size, taking the conformance checks' 32 x 40 images."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=2,
                                 dynamic_img_size=True).eval()


@pytest.mark.parametrize("kind, name", [(k, n) for k in KINDS for n in testing.registered(k, registry=INSTALLED)])
def test_every_registered_component_keeps_its_contract(kind, name):
    params = SMALL.get((kind, name), {})
    if (kind, name) == ("segmenters", "sam"):
        testing.check_segmenter(tiny_sam_segmenter(INSTALLED.get(kind, name).factory), name="segmenter 'sam' (tiny)")
        return
    if (kind, name) in {("segmenters", "sam-hq"), ("segmenters", "sam2")}:
        from tests.sam_models import TinySam2, TinySamHq

        testing.check_segmenter(TinySamHq() if name == "sam-hq" else TinySam2(), name=f"segmenter {name!r} (tiny)")
        return
    if (kind, name) == ("explainers", "attention-rollout"):  # token models only: a tiny timm ViT
        net = tiny_vit()
        testing.check_explainer(INSTALLED.create(kind, name), name="explainer 'attention-rollout' (tiny ViT)",
                                model=net, target_layers=[net.blocks[-1]])
        return
    if kind == "datasets":
        try:
            dataset = INSTALLED.create(kind, name, **params)
            if hasattr(dataset, "check"):
                dataset.check()
        except (UserError, ComponentParamsError) as exc:
            pytest.skip(f"dataset {name!r} needs data on disk: {exc}")
    testing.check_component(kind, name, registry=INSTALLED, **params)


def test_registered_lists_names_by_kind_and_distribution():
    assert {"white", "black", "median", "blur"} <= set(testing.registered("masks", registry=INSTALLED))
    assert testing.registered("ensembles", distribution="xaibench", registry=INSTALLED) == ["logit-mix", "prob-mean"]
    assert testing.registered("masks", distribution="no-such-distribution", registry=INSTALLED) == []
    with pytest.raises(ValueError, match="unknown kind"):
        testing.registered("mask")


# -- broken components are caught --------------------------------------------------------------------------


class InPlaceMask:
    def __call__(self, images, foreground):
        return images.masked_fill_(~foreground, 1.0)


class Float64Mask:
    def __call__(self, images, foreground):
        return torch.where(foreground, images, torch.ones_like(images)).double()


class NoisyMask:
    """A fresh noise background on every call (half-scaled, so it never equals images drawn from the same
    seed)."""

    def __call__(self, images, foreground):
        return torch.where(foreground, images, torch.rand_like(images) * 0.5)


class RowColumnSeeder:
    def __call__(self, saliency):
        row, col = np.unravel_index(np.argmax(saliency), saliency.shape)
        return Prompts(np.array([[row, col]], np.float32) * 2, np.array([1], np.int64))


class Float64Seeder:
    def __call__(self, saliency):
        return Prompts(np.zeros((1, 2)), np.ones(1, np.int64))


class UInt8Segmenter:
    def segment(self, image, prompts):
        return [np.zeros(image.shape[:2], np.uint8) for _ in prompts]


class TooFewMasksSegmenter:
    def segment(self, image, prompts):
        return [np.zeros(image.shape[:2], bool)]


class ChannelMapExplainer:
    uses_ground_truth = False

    def explain(self, model, images, targets, *, target_layers, masks=None):
        return np.zeros((len(images), 1, *images.shape[-2:]), np.float32)


class GradientLeakingExplainer:
    uses_ground_truth = False

    def explain(self, model, images, targets, *, target_layers, masks=None):
        model(images).sum().backward()
        return np.zeros((len(images), *images.shape[-2:]), np.float32)


class HookLeakingExplainer:
    uses_ground_truth = False

    def explain(self, model, images, targets, *, target_layers, masks=None):
        target_layers[0].register_forward_hook(lambda *args: None)
        return np.zeros((len(images), *images.shape[-2:]), np.float32)


class DetachingEnsemble:
    def __call__(self, raw_logits, masked_logits):
        return (raw_logits + masked_logits).detach()


class WrongReductionEnsemble:
    def __call__(self, raw_logits, masked_logits):
        return 0.5 * (raw_logits + masked_logits)

    def reduces_to(self):
        return "raw"


class ForeignLayerBackbone:
    def build(self, num_classes, *, pretrained=True):
        return testing.tiny_classifier(num_classes)

    def target_layers(self, model):
        return [torch.nn.Conv2d(3, 3, 1)]


class UnseededBackbone(ForeignLayerBackbone):
    def build(self, num_classes, *, pretrained=True):
        return testing.tiny_classifier(num_classes, seed=random.randrange(2**31))  # not torch's generator

    def target_layers(self, model):
        return [model.features]


class MixedSizeDataset:
    classes = ["absent", "present"]

    def split(self, name):
        return [Sample(f"{name}-{i}", np.zeros((8 + i, 8, 3), np.uint8), i % 2, None) for i in range(2)]

    def fingerprint(self):
        return "mixed"


class ShuffledDataset:
    classes = ["absent", "present"]

    def split(self, name):
        order = np.random.permutation(3)
        return [Sample(f"{name}-{i}", np.full((8, 8, 3), i, np.uint8), int(i % 2), None) for i in order]

    def fingerprint(self):
        return "shuffled"


class ReversedExecutor:
    def map(self, fn, tasks):
        return reversed([fn(task) for task in tasks])

    def close(self):
        pass


BROKEN = [
    ("masks", InPlaceMask, "modified its inputs"),
    ("masks", Float64Mask, "return a tensor of the images' shape, dtype and device"),
    ("masks", NoisyMask, "deterministic"),
    ("seeders", RowColumnSeeder, "points outside the 40×32 image"),
    ("seeders", Float64Seeder, "points are float32"),
    ("segmenters", UInt8Segmenter, "bool numpy array"),
    ("segmenters", TooFewMasksSegmenter, "one mask per prompt set"),
    ("explainers", ChannelMapExplainer, "expected a float32 numpy array (2, 32, 40)"),
    ("explainers", GradientLeakingExplainer, "left gradients on the parameters"),
    ("explainers", HookLeakingExplainer, "left hooks on the model"),
    ("ensembles", DetachingEnsemble, "not differentiable"),
    ("ensembles", WrongReductionEnsemble, "reduces_to() says 'raw'"),
    ("backbones", ForeignLayerBackbone, "the model's own modules"),
    ("backbones", UnseededBackbone, "same torch seed"),
    ("datasets", MixedSizeDataset, "resize every image"),
    ("datasets", ShuffledDataset, "deterministic"),
    ("executors", ReversedExecutor, "in the order of the tasks"),
]


@pytest.mark.parametrize("kind, broken, fix", BROKEN, ids=[b[1].__name__ for b in BROKEN])
def test_a_broken_component_fails_its_check_naming_it_and_the_fix(kind, broken, fix):
    with pytest.raises(AssertionError) as err:
        testing.CHECKS[kind](broken(), name=f"{kind[:-1]} 'broken'")
    message = str(err.value)
    assert message.startswith(f"{kind[:-1]} 'broken': ") and fix in message


def test_a_factory_with_positional_parameters_is_refused_at_registration():
    class Positional:
        def __init__(self, colour=1.0):
            self.colour = colour

        def __call__(self, images, foreground):
            return torch.where(foreground, images, torch.full_like(images, self.colour))

    class Plugin:
        @hookimpl
        def register_masks(self, register):
            register("positional", Positional)

    registry = Registry(load_entry_points=False)
    registry.add_plugin(Plugin(), name="my-plugin", distribution="my-dist")
    with pytest.raises(PluginError) as err:
        testing.check_component("masks", "positional", registry=registry)
    message = str(err.value)
    assert "plugin 'my-plugin' (distribution 'my-dist'): mask 'positional'" in message
    assert "factory " in message and "Positional takes colour by position" in message and "keyword-only" in message


def test_an_instance_registered_instead_of_its_class_is_refused():
    class Grey:
        def __call__(self, images, foreground):
            return torch.where(foreground, images, torch.full_like(images, 0.5))

    class Plugin:
        @hookimpl
        def register_masks(self, register):
            register("grey", Grey())

    registry = Registry(load_entry_points=False)
    registry.add_plugin(Plugin(), name="my-plugin", distribution="my-dist")
    with pytest.raises(PluginError) as err:
        registry.components
    message = str(err.value)
    assert "mask 'grey' was registered with an instance of Grey, not a class or function" in message
    assert "register('grey', Grey)" in message


def test_a_contract_call_that_raises_is_reported_as_a_contract_failure():
    class Crashing:
        def __call__(self, saliency):
            raise IndexError("boom")

    with pytest.raises(AssertionError, match=r"seeder Crashing: seeder\(saliency\) .* raised IndexError: boom"):
        testing.check_seeder(Crashing())


def test_a_dataset_without_its_data_raises_the_user_error_unchanged(tmp_path):
    kahikatea = INSTALLED.create("datasets", "kahikatea", root=str(tmp_path / "absent"))
    with pytest.raises(UserError, match="fetch"):
        testing.check_dataset(kahikatea)


BUILTIN_MODULES = sorted({ep.value for ep in __import__("importlib.metadata").metadata.entry_points(group="xaibench")
                          if ep.dist is not None and ep.dist.metadata["Name"] == "xaibench"})


@pytest.mark.parametrize("module", BUILTIN_MODULES)
def test_importing_a_builtin_plugin_module_imports_no_heavy_library(module):
    testing.check_light_import(module)


def test_the_import_check_catches_a_plugin_that_imports_torch_at_the_top(tmp_path, monkeypatch):
    (tmp_path / "heavy_plugin.py").write_text("import torch\n\nVALUE = 1\n")
    (tmp_path / "light_plugin.py").write_text("def build():\n    import torch\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    testing.check_light_import("light_plugin")
    with pytest.raises(AssertionError, match="importing 'heavy_plugin' imports torch; import heavy libraries inside"):
        testing.check_light_import("heavy_plugin")
    with pytest.raises(AssertionError, match="importing 'missing_plugin' failed"):
        testing.check_light_import("missing_plugin")
