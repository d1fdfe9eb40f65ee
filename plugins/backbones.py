"""Classifier backbones: torchvision's ResNet18 (the paper's) and any timm model.

Built modules take float images (B, C, H, W) in [0, 1], one channel per band of the dataset (three, RGB,
unless ``build`` is given other ``bands``), and normalise them themselves, so masks, explainers and the
runner never deal with normalisation constants.

Bands other than RGB (``for_bands``): the network is built and its weights loaded for three RGB channels as
for an RGB dataset, then its first convolution is widened to the C bands. The band at composite position k
(``bands.rgb[k]``; red, green, blue = 0, 1, 2) takes the weights' input channel k (the sum of those
channels where a band is shown in several positions, as grey (0, 0, 0) is: the filters then see the three
equal channels they were trained on); every other band
(``bands.others``) takes the mean of the three RGB input channels. Nothing is rescaled. Composite bands are
normalised with the weights' RGB constants at their composite position (averaged like the weights), the
other bands with the dataset's own ``bands.mean`` and ``bands.std``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence, Union

from xaibench.errors import NotFetched, UserError
from xaibench.kit.contracts import ActivationLayout, Bands
from xaibench.kit.hookspecs import hookimpl
from xaibench.kit.models import layer_name, resolve_module
from xaibench.kit.registry import closest
from xaibench_plugins.torchgeo_weights import cached_file, check_model, is_torchgeo, resolve

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A value of the timm backbone's model_args (a YAML list arrives as a list and is passed on as a tuple).
TimmArg = Union[bool, int, float, str, list[Union[int, float]]]
RESERVED_TIMM_ARGS = frozenset({"num_classes", "pretrained", "in_chans", "pretrained_cfg", "pretrained_cfg_overlay"})


def _normalized(net, mean, std):
    import torch

    class NormalizedClassifier(torch.nn.Module):
        """``net`` applied to ``(images - mean) / std``; images float (B, C, H, W) in [0, 1], C = len(mean)."""

        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, images):
            return self.net((images - self.mean) / self.std)

    return NormalizedClassifier()


def _composite_sources(bands: Bands, band: int) -> list[int]:
    """The composite positions (0 red, 1 green, 2 blue) at which ``band`` is shown; empty for other bands."""
    return [k for k in range(3) if bands.rgb[k] == band]


def _widen(conv, bands: Bands) -> None:
    """Give the 3-channel ``conv`` one input channel per band, in place (a new weight; bias, stride,
    padding, dilation, dtype, device and class kept): composite bands take the RGB channel(s) they are
    shown as (their sum where several: a grey band stands for the three equal channels the filters were
    trained on), every other band the mean of the three RGB channels."""
    import torch

    weight = conv.weight.detach()
    rgb_mean = weight.mean(dim=1)
    columns = []
    for band in range(bands.count):
        sources = _composite_sources(bands, band)
        if len(sources) == 1:
            columns.append(weight[:, sources[0]])
        else:
            columns.append(weight[:, sources].sum(dim=1) if sources else rgb_mean)
    conv.weight = torch.nn.Parameter(torch.stack(columns, dim=1).contiguous(), requires_grad=conv.weight.requires_grad)
    conv.in_channels = bands.count


def _band_normalisation(bands: Bands, mean: Sequence[float], std: Sequence[float]) -> tuple[tuple, tuple]:
    """Per-band (mean, std), C each: the weights' RGB ``mean``/``std`` at a composite band's position
    (averaged where it is shown in several), the dataset's ``bands.mean``/``bands.std`` for the others.
    ``ValueError`` where other bands exist and their statistics were not filled in (the data stage's job)."""
    if bands.others and (bands.mean is None or bands.std is None):
        raise ValueError(f"bands {bands.describe()} have no mean/std; fill them in (Bands.with_statistics) before "
                         f"building a backbone, which normalises the bands outside the colour composite with them")
    band_mean, band_std = [], []
    for band in range(bands.count):
        sources = _composite_sources(bands, band)
        if not sources:
            band_mean.append(bands.mean[band])
            band_std.append(bands.std[band])
        elif len(sources) == 1:
            band_mean.append(float(mean[sources[0]]))
            band_std.append(float(std[sources[0]]))
        else:
            band_mean.append(sum(float(mean[k]) for k in sources) / len(sources))
            band_std.append(sum(float(std[k]) for k in sources) / len(sources))
    return tuple(band_mean), tuple(band_std)


def for_bands(net, first_convs: Sequence[str], bands: Bands | None, mean, std, *, model: str):
    """``net`` (built for RGB, normalised by the RGB constants ``mean``, ``std``) as a module taking float
    images (B, C, H, W) in [0, 1] of ``bands``. None or RGB ``bands``: ``net`` normalised as it is. Other
    bands: each module named in ``first_convs`` (the convolutions the images enter) is widened to the C
    bands and the normalisation extended as the module docstring says. A name that is no ``Conv2d`` taking 3
    channels (groups 1) is a ``UserError`` naming ``model``."""
    import torch

    if bands is None or bands.is_rgb:
        return _normalized(net, mean, std)
    convs = []
    for path in first_convs:
        try:
            conv = net.get_submodule(path)
        except AttributeError:
            conv = None
        if not isinstance(conv, torch.nn.Conv2d) or conv.in_channels != 3 or conv.groups != 1:
            found = "no module" if conv is None else (
                f"a {type(conv).__name__}" + (f" taking {conv.in_channels} channels in {conv.groups} groups"
                                              if isinstance(conv, torch.nn.Conv2d) else ""))
            raise UserError(f"{model} cannot take {bands.describe()}: its first convolution {path!r} is {found}, not "
                            f"a Conv2d taking 3 channels (groups 1) that xaibench could widen to {bands.count} "
                            f"bands; choose another model or an RGB dataset")
        convs.append(conv)
    for conv in convs:
        _widen(conv, bands)
    if isinstance(getattr(net, "in_chans", None), int):  # timm's record of the input channels
        net.in_chans = bands.count
    return _normalized(net, *_band_normalisation(bands, mean, std))


def _reason(exc: Exception) -> str:
    """What torch.load's error says went wrong, in one line: not its advice to load with
    ``weights_only=False`` or to allowlist classes (xaibench never unpickles code), nor its terminal colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return first.split(". ")[0].rstrip(".")


def load_state_file(path: Path) -> dict:
    """A state dict (name → tensor) from ``.safetensors`` or a tensors-only torch file (``weights_only=True``).

    Every file that is not one (a folder, empty, truncated, garbage, a pickle of code, a dict of other
    things) is a ``UserError`` naming the file and what is wrong."""
    import torch

    if path.is_dir():
        raise UserError(f"weights file {str(path)!r} is a folder, not a file; give the weights file itself or 'none'")
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} does not exist; give an existing file or 'none'")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors' own errors: truncated, empty, no header, another format
            raise UserError(
                f"weights file {str(path)!r} is not a readable safetensors file ({type(exc).__name__}: {exc}); it "
                f"is truncated, damaged or another format: write it again with safetensors.torch.save_file"
            ) from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"weights file {str(path)!r} cannot be loaded as tensors only ({type(exc).__name__}: {_reason(exc)}); "
            "it is truncated, damaged, or pickles code (xaibench never unpickles code): save a state_dict, or convert "
            "it to .safetensors"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {str(path)!r} holds {type(state).__name__}, not a state dict of tensors; "
                        f"save model.state_dict()")
    return state


def state_mismatch(own: dict, state: dict, in_head) -> str | None:
    """What keeps ``state`` from loading into a network whose state dict is ``own``: keys it lacks (other
    than the head's, ``in_head(key)``, which a new task initialises afresh), keys the network lacks, and
    tensors of another shape, counted with examples; None when it fits."""
    missing = [k for k in own if k not in state and not in_head(k)]
    unexpected = [k for k in state if k not in own]
    misshapen = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or misshapen):
        return None
    return (f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. "
            f"{unexpected[:3]}), {len(misshapen)} of another shape (e.g. {misshapen[:3]})")


# Every module path of torchvision's ResNet18 (downsample only in the first block of layers 2-4).
RESNET18_MODULE = re.compile(r"conv1|bn1|relu|maxpool|avgpool|fc|layer[1-4](\.[01](\.(conv[12]|bn[12]|relu))?)?"
                             r"|layer[2-4]\.0\.downsample(\.[01])?")


class ResNet18:
    """torchvision ResNet18 with a new ``num_classes`` head.

    ``weights``: ``none`` (random initialisation), ``imagenet`` (torchvision's IMAGENET1K_V1, from the
    torch hub cache; downloaded there if the network allows) or a path to a ``.safetensors`` / ``.pth``
    state dict of a ResNet18 (its ``fc`` head is kept only if its shape fits), or TorchGeo's weights of a
    resnet18 by name, ``torchgeo:ResNet18_Weights.SENTINEL2_RGB_MOCO`` (3-band ones; from torch hub's
    cache, downloaded there if the network allows), normalised as those weights were trained (not as
    ImageNet).
    ``target_layer``: dotted path inside torchvision's ResNet hooked by CAM explainers.

    ``build(num_classes, pretrained=..., bands=...)``: for ``bands`` other than RGB the network is built and
    its weights loaded for RGB, then ``conv1`` takes one input channel per band: a composite band the
    weights' channel of its composite position (red, green, blue; the sum where it is shown in several),
    every other band the mean of the three RGB channels, not rescaled; likewise without weights, so every
    build has the same shapes. Composite bands are normalised with the weights' RGB constants (ImageNet's,
    or the TorchGeo weights') at their position, the others with the dataset's ``bands.mean``/``bands.std``.
    None or RGB ``bands``: the RGB module, unchanged."""

    path_params = ("weights",)  # a relative path in a grid is read from the grid file's folder

    def __init__(self, *, weights: str = "none", target_layer: str = "layer4"):
        self.weights = weights
        self.target_layer = target_layer

    def check(self, *, fetch: bool = True) -> None:
        """Fail before a run starts when the weights cannot be had (no file, no cache and no network), or
        the file is not a resnet18's, or ``target_layer`` names no module of it (checked against the
        architecture's module names, without torch). ``fetch=False`` (a dry run): download nothing; ImageNet
        weights that are not cached raise ``NotFetched`` saying where they would go and where from."""
        if not RESNET18_MODULE.fullmatch(self.target_layer):
            raise UserError(f"resnet18 has no module {self.target_layer!r} (backbone parameter target_layer); give "
                            f"a dotted path inside torchvision's ResNet18, e.g. 'layer3', 'layer4' or 'layer4.1.conv2'")
        if self.weights == "imagenet":
            if fetch:
                self._imagenet_state()
                return
            cached, url = self._imagenet_file()
            if not cached.is_file():
                raise NotFetched(f"ImageNet weights for resnet18 are not cached at {cached}; a real run downloads "
                                 f"them from {url} (45 MB) where the network allows; offline, copy that file there, "
                                 f"pass its path as 'weights', or use 'weights: none'")
        elif is_torchgeo(self.weights):  # fetch=False: a dry run downloads nothing (NotFetched)
            self._fit(self._resnet(1000), load_state_file(cached_file(self._torchgeo(), fetch=fetch)), 1000)
        elif self.weights != "none":
            self._fit(self._resnet(1000), load_state_file(Path(self.weights)), 1000)

    def _torchgeo(self):
        weights = resolve(self.weights)
        check_model(weights, "resnet18", "resnet18")
        return weights

    @staticmethod
    def _resnet(num_classes: int):
        from torchvision.models import resnet18

        return resnet18(num_classes=num_classes)

    def _fit(self, net, state: dict, num_classes: int) -> None:
        """Load ``state`` into ``net``: its ``fc`` head only if its shape fits ``num_classes``; any other
        missing, unexpected or misshapen key is a ``UserError`` naming the file."""
        state = {k.removeprefix("net."): v for k, v in state.items() if k not in ("mean", "std")}
        head = state.get("fc.weight")
        if head is None or head.shape[0] != num_classes:  # a new task gets a freshly initialised head
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        problem = state_mismatch(net.state_dict(), state, lambda key: key.startswith("fc."))
        if problem:
            raise UserError(f"weights {self.weights!r} do not fit resnet18: {problem}; give the state dict of a "
                            f"torchvision resnet18")
        net.load_state_dict(state, strict=False)

    @staticmethod
    def _imagenet_file() -> tuple[Path, str]:
        """Where torch's hub cache keeps torchvision's ImageNet weights of resnet18, and their URL."""
        import torch
        from torchvision.models import ResNet18_Weights

        url = ResNet18_Weights.IMAGENET1K_V1.url
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name, url

    def _imagenet_state(self):
        from torchvision.models import ResNet18_Weights

        spec = ResNet18_Weights.IMAGENET1K_V1
        cached, _ = self._imagenet_file()
        try:
            return spec.get_state_dict(progress=True)
        except Exception as exc:
            raise UserError(
                f"ImageNet weights for resnet18 are not cached at {cached} and could not be downloaded "
                f"({type(exc).__name__}: {exc}). Download {spec.url} on a machine with network access and "
                f"copy it to {cached}, pass its path as 'weights', or use 'weights: none'."
            ) from None

    def build(self, num_classes: int, *, pretrained: bool = True, bands: Bands | None = None):
        net = self._resnet(num_classes)
        if is_torchgeo(self.weights):  # their normalisation, also for an architecture whose weights a stage gives
            torchgeo = self._torchgeo()
            if pretrained:
                self._fit(net, load_state_file(cached_file(torchgeo)), num_classes)
            return for_bands(net, ["conv1"], bands, torchgeo.mean, torchgeo.std, model="resnet18")
        if pretrained and self.weights != "none":
            state = self._imagenet_state() if self.weights == "imagenet" else load_state_file(Path(self.weights))
            self._fit(net, state, num_classes)
        return for_bands(net, ["conv1"], bands, IMAGENET_MEAN, IMAGENET_STD, model="resnet18")

    def target_layers(self, model):
        return [resolve_module(model.net, self.target_layer, what="backbone parameter target_layer")]

    def activation_layout(self, model, layer):
        """Channels-first, for every module of the ResNet but its ``fc`` head (whose output is no map)."""
        return None if layer_name(model.net, layer) in (None, "fc") else ActivationLayout.channels_first()


class TimmBackbone:
    """Any timm model by ``name``; ``pretrained`` loads timm's weights (from its local cache offline).

    ``target_layer``: dotted path in the timm model; by default the module of its last feature stage, and
    for a vision transformer the last block's ``norm1`` (as pytorch-grad-cam's docs use): the last block's
    own output reaches a class-token head only through the class token, so its patch tokens get no gradient.
    Activation layouts (``activation_layout``) are read from what timm records about the model.
    ``model_args``: more keyword arguments of ``timm.create_model`` that shape the architecture (e.g.
    ``{depth: 4, img_size: 96}`` for a ViT, ``{depths: [1, 1, 1, 1], dims: [16, 32, 64, 128]}`` for a
    ConvNeXt); numbers, strings, booleans or lists of numbers. ``num_classes``, ``pretrained`` and
    ``in_chans`` are set by xaibench (the model is built for 3 channels, then widened to the dataset's
    bands as below; timm's own ``in_chans`` adaptation repeats and rescales the RGB weights) and cannot be
    given.
    ``weights``: ``none``, or TorchGeo's weights for this timm model by name
    (``torchgeo:ResNet50_Weights.SENTINEL2_RGB_MOCO`` with ``name: resnet50``), normalised as they were
    trained; not with ``pretrained: true``.

    ``build(num_classes, pretrained=..., bands=...)``: for ``bands`` other than RGB the model is built and
    its weights loaded for RGB, then each convolution of its ``pretrained_cfg['first_conv']`` (one name, or
    several that all take the image; each must be a ``Conv2d`` taking 3 channels in one group, else a
    ``UserError``) takes one input channel per band: a composite band the weights' channel of its composite
    position (red, green, blue; the sum where it is shown in several), every other band the mean of the
    three RGB channels, not rescaled; likewise without weights, so every build has the same shapes.
    Composite bands are normalised with the weights' RGB constants (the model's ``pretrained_cfg``, or the
    TorchGeo weights') at their position, the others with the dataset's ``bands.mean``/``bands.std``. None
    or RGB ``bands``: the RGB module, unchanged."""

    def __init__(self, *, name: str = "resnet18", pretrained: bool = False, target_layer: Optional[str] = None,
                 model_args: Optional[dict[str, TimmArg]] = None, weights: str = "none"):
        self.name = name
        self.pretrained = pretrained
        self.target_layer = target_layer
        self.model_args = model_args
        self.weights = weights

    def check(self, *, fetch: bool = True) -> None:
        """Fail before a run starts on a name timm does not know, ``model_args`` its model does not take
        (the architecture is built on the meta device: no memory, no weights), or TorchGeo weights that
        cannot be had or do not fit it (``fetch=False``, a dry run: downloads nothing, ``NotFetched``)."""
        import torch

        try:
            with torch.device("meta"):
                net = self._create(2, pretrained=False)
        except Exception:  # a mistake, or a model whose construction needs real tensors: say which for real
            net = self._create(2, pretrained=False)
        if self.target_layer:
            resolve_module(net, self.target_layer, what=f"backbone parameter target_layer (timm {self.name!r})")
        if is_torchgeo(self.weights):
            self._fit(net, load_state_file(cached_file(self._torchgeo(), fetch=fetch)), load=False)

    def _torchgeo(self):
        if self.pretrained:
            raise UserError(f"timm backbone {self.name!r}: give either 'pretrained: true' (timm's weights) or "
                            f"'weights: {self.weights}', not both")
        weights = resolve(self.weights)
        if not timm_has(weights.model):
            raise UserError(f"TorchGeo weights {weights.name} are for {weights.model!r}, which is no timm model, so "
                            f"the timm backbone ({self.name!r}) cannot build it; choose weights for a timm model")
        check_model(weights, f"timm (name {self.name!r})", self.name)
        return weights

    def _fit(self, net, state: dict, *, load: bool = True) -> None:
        """Load ``state`` into the timm model ``net``: its classifier only where its shape fits; any other
        missing, unexpected or misshapen key is a ``UserError``. ``load=False`` only checks."""
        head = (getattr(net, "pretrained_cfg", None) or {}).get("classifier") or "\0"
        own = net.state_dict()

        def in_head(key):
            return key == head or key.startswith(head + ".")

        state = {k: v for k, v in state.items()
                 if not (in_head(k) and (k not in own or tuple(own[k].shape) != tuple(v.shape)))}
        problem = state_mismatch(own, state, in_head)
        if problem:
            raise UserError(f"weights {self.weights!r} do not fit timm's {self.name} (model_args "
                            f"{self.model_args or {}}): {problem}")
        if load:
            net.load_state_dict(state, strict=False)

    def _create(self, num_classes: int, *, pretrained: bool):
        import timm

        if not timm.is_model(self.name):
            hint = closest(self.name, timm.list_models())
            raise UserError(f"timm has no model {self.name!r}" + (f"; did you mean {hint!r}?" if hint else ""))
        args = dict(self.model_args or {})
        reserved = sorted(set(args) & RESERVED_TIMM_ARGS)
        if reserved:
            raise UserError(f"timm backbone {self.name!r}: model_args {reserved} are set by xaibench; leave them out")
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
        try:
            return timm.create_model(self.name, pretrained=pretrained, num_classes=num_classes, **args)
        except TypeError as exc:  # timm passes unknown keywords on to the model class, which refuses them
            if not args:
                raise
            raise UserError(f"timm model {self.name!r} does not take model_args {sorted(args)} ({exc}); see the "
                            f"keyword arguments of its model class in timm") from None
        except (AssertionError, ValueError, RuntimeError) as exc:
            if not args or pretrained:
                raise
            raise UserError(f"timm model {self.name!r} cannot be built with model_args {self.model_args} "
                            f"({type(exc).__name__}: {exc})") from None

    def build(self, num_classes: int, *, pretrained: bool = True, bands: Bands | None = None):
        try:
            net = self._create(num_classes, pretrained=pretrained and self.pretrained)
        except UserError:
            raise
        except Exception as exc:
            if not (pretrained and self.pretrained):
                raise
            raise UserError(
                f"timm could not load pretrained weights for {self.name!r} ({type(exc).__name__}: {exc}); "
                "put them in the Hugging Face cache on this machine, or use 'pretrained: false'"
            ) from None
        if is_torchgeo(self.weights):  # their normalisation, also for an architecture whose weights a stage gives
            torchgeo = self._torchgeo()
            if pretrained:
                self._fit(net, load_state_file(cached_file(torchgeo)))
            return for_bands(net, self._first_convs(net, bands), bands, torchgeo.mean, torchgeo.std,
                             model=f"timm model {self.name!r}")
        cfg = getattr(net, "pretrained_cfg", {}) or {}
        return for_bands(net, self._first_convs(net, bands), bands, tuple(cfg.get("mean", IMAGENET_MEAN)),
                         tuple(cfg.get("std", IMAGENET_STD)), model=f"timm model {self.name!r}")

    def _first_convs(self, net, bands: Bands | None) -> list[str]:
        """The names of the convolutions ``net`` takes the image with (timm's ``pretrained_cfg['first_conv']``,
        a name or a list of them); a ``UserError`` where timm records none and ``bands`` are not RGB."""
        if bands is None or bands.is_rgb:
            return []
        names = (getattr(net, "pretrained_cfg", None) or {}).get("first_conv")
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
            raise UserError(f"timm model {self.name!r} cannot take {bands.describe()}: timm records no first "
                            f"convolution for it (pretrained_cfg['first_conv'] is {names!r}), so xaibench cannot "
                            f"widen it to {bands.count} bands; choose another model or an RGB dataset")
        return list(names)

    def target_layers(self, model):
        if self.target_layer:
            return [resolve_module(model.net, self.target_layer, what="backbone parameter target_layer")]
        net = model.net
        if _token_grid(net) is not None and len(getattr(net, "blocks", ())) and hasattr(net.blocks[-1], "norm1"):
            return [net.blocks[-1].norm1]
        modules = _feature_modules(net)
        if not modules:
            raise UserError(f"timm model {self.name!r} has no feature_info; set 'target_layer' explicitly")
        return [resolve_module(net, modules[-1], what=f"timm feature module of {self.name}")]

    def activation_layout(self, model, layer):
        """The layout timm records for ``layer``: in a vision transformer (``num_prefix_tokens`` and a
        ``patch_embed.grid_size``) the blocks, every module inside them and the final ``norm`` give tokens,
        ``num_prefix_tokens`` (class, distillation and register tokens) then the patch grid; the feature
        stages of ``feature_info`` give channels-last where the model's ``output_fmt`` is ``NHWC`` (Swin)
        and channels-first otherwise. Any other module: None, as timm does not say (inside a ConvNeXt block,
        for one, activations are channels-last between channels-first stages)."""
        net = model.net
        name = layer_name(net, layer)
        grid = _token_grid(net)
        if name is None:
            return None
        if grid is not None:
            if name in ("blocks", "norm_pre", "norm") or name.startswith("blocks."):
                return ActivationLayout.tokens(int(net.num_prefix_tokens), grid)
            return None
        if name in _feature_modules(net):
            nhwc = str(getattr(net, "output_fmt", "NCHW")) == "NHWC"
            return ActivationLayout.channels_last() if nhwc else ActivationLayout.channels_first()
        return None


def _token_grid(net) -> tuple[int, int] | None:
    """The patch grid (h, w) of a timm vision transformer (one with ``num_prefix_tokens`` and a patch
    embedding of fixed ``grid_size``, giving tokens (B, prefix + h * w, C)); None for any other model."""
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if not hasattr(net, "num_prefix_tokens") or grid is None or str(getattr(net, "output_fmt", "")) == "NHWC":
        return None
    return tuple(int(n) for n in grid)


def _feature_modules(net) -> list[str]:
    """The dotted paths of a timm model's feature stages (``feature_info``), first to last."""
    info = getattr(net, "feature_info", None) or []
    return [entry["module"] for entry in (info if isinstance(info, list) else info.get_dicts())]


def timm_has(model: str) -> bool:
    import timm

    return timm.is_model(model)


@hookimpl
def register_backbones(register):
    register("resnet18", ResNet18)
    register("timm", TimmBackbone)
