"""TorchGeo's pretrained weights by name (``weights: torchgeo:ResNet18_Weights.SENTINEL2_RGB_MOCO``).

TorchGeo describes each of its weights with a torchvision ``Weights`` entry: the file's ``url``, ``meta``
(``model``: the architecture they are for, ``in_chans``) and ``transforms`` (how its authors normalised
the data). This module reads that description into a ``TorchGeoWeights`` record, derives the normalisation
of xaibench's [0, 1] images from it, and finds the file in the cache TorchGeo itself uses (torch
hub's ``checkpoints`` folder, where ``Weights.get_state_dict`` puts the file named by the URL).

torchgeo is imported only to read the description (``pip install 'xaibench[torchgeo]'``); the file is
read with ``torch.load(weights_only=True)`` like every other weights file, never unpickled as code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from xaibench.errors import NotFetched, UserError
from xaibench.kit.registry import closest

PREFIX = "torchgeo:"


@dataclass(frozen=True)
class TorchGeoWeights:
    """One TorchGeo weights entry, as xaibench uses it.

    ``name``: ``"<Enum>.<MEMBER>"``; ``model``: the architecture the weights are for (timm's name, or
    torchvision's for TorchGeo's Swin V2); ``mean``, ``std``: three floats each, the normalisation of a
    float image in [0, 1] that reproduces the weights' own (see ``normalisation``); ``cache_path``: where
    torch hub (and so TorchGeo) keeps the file downloaded from ``url``."""

    name: str
    url: str
    model: str
    in_chans: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    cache_path: Path


def is_torchgeo(weights: str) -> bool:
    return isinstance(weights, str) and weights.startswith(PREFIX)


def resolve(spec: str) -> TorchGeoWeights:
    """The weights named by ``spec`` (``torchgeo:<Enum>.<MEMBER>``). ``UserError`` when torchgeo is not
    installed, the name is unknown (with the closest one), the weights take other than 3 input channels
    (a backbone maps RGB weights onto any dataset's bands, but not weights of other bands onto them), or
    their normalisation cannot be read from their metadata."""
    name = spec.removeprefix(PREFIX)
    try:
        import torchgeo.models as tgm
    except ImportError:
        raise UserError(f"weights {spec!r} need TorchGeo, which is not installed: pip install 'xaibench[torchgeo]'"
                        ) from None
    from torchvision.models._api import WeightsEnum

    known = {str(member): member for obj in vars(tgm).values()
             if isinstance(obj, type) and issubclass(obj, WeightsEnum) and obj is not WeightsEnum for member in obj}
    entry = known.get(name)
    if entry is None:
        hint = closest(name, list(known))
        raise UserError(f"TorchGeo has no weights {name!r}" + (f"; did you mean 'torchgeo:{hint}'?" if hint else "")
                        + " (names are <Enum>.<MEMBER>, as in torchgeo.models.get_weight)")
    meta = dict(entry.meta)
    in_chans = int(meta.get("in_chans", 3))
    if in_chans != 3:
        raise UserError(f"TorchGeo weights {name!r} take {in_chans} input bands ({meta.get('bands')}); xaibench "
                        f"uses 3-band (RGB) weights only, mapping them onto a dataset's colour composite and its "
                        f"other bands onto the mean of the RGB filters: choose weights with in_chans 3 (e.g. an "
                        f"*_RGB_* entry)")
    mean, std = normalisation(name, entry.transforms, meta)
    file_name = Path(urlparse(entry.url).path).name
    return TorchGeoWeights(name=name, url=entry.url, model=str(meta.get("model")), in_chans=in_chans,
                           mean=mean, std=std, cache_path=hub_checkpoints() / file_name)


def hub_checkpoints() -> Path:
    """torch hub's ``checkpoints`` folder (``$TORCH_HOME/hub/checkpoints``), where TorchGeo's weights live."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _normalize_steps(transforms) -> list[tuple[list[float], list[float]]]:
    """The ``(mean, std)`` of every normalising step of ``transforms``, in order: torchvision's
    ``Normalize`` (``.mean``, ``.std``) or kornia's (``.flags['mean']``); resizing and cropping are left out
    (xaibench feeds the dataset's own image size)."""
    import torch

    if transforms is None:
        return []
    steps = list(transforms.children()) if isinstance(transforms, torch.nn.Sequential) else [transforms]
    out = []
    for step in steps:
        flags = getattr(step, "flags", None)
        mean, std = getattr(step, "mean", None), getattr(step, "std", None)
        if isinstance(flags, dict) and "mean" in flags:
            mean, std = flags["mean"], flags["std"]
        if mean is None or std is None or "normal" not in type(step).__name__.lower():
            continue
        out.append(([float(v) for v in torch.as_tensor(mean).flatten()],
                    [float(v) for v in torch.as_tensor(std).flatten()]))
    return out


def normalisation(name: str, transforms, meta: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` such that ``(image - mean) / std`` of an image in [0, 1] is what the
    weights were trained on.

    The weights' normalising steps (``meta['mean']``/``meta['std']`` where the metadata holds them, else
    the ``Normalize`` steps of ``transforms``) are composed into one ``(raw - M) / S`` in the units of their
    data. The [0, 1] image is that data divided by its full scale: the divisor of a first step that only
    divides (``std`` 255 for 8-bit imagery, 10000 for Sentinel-2 reflectance) or 1 when the first step
    already works on [0, 1] data (ImageNet-style constants). Any other first step (a per-band stretch in
    raw units) does not say what range the data had, and is a ``UserError``."""
    steps = [(list(meta["mean"]), list(meta["std"]))] if "mean" in meta and "std" in meta \
        else _normalize_steps(transforms)
    if not steps:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # the weights were trained on [0, 1] data as it is
    for mean, std in steps:
        if len(mean) not in (1, 3) or len(std) not in (1, 3) or min(std) <= 0:
            raise UserError(f"TorchGeo weights {name!r}: a normalising step has mean {mean}, std {std}, not one "
                            f"or three channels with a positive std")
    first_mean, first_std = steps[0]
    if all(m == 0 for m in first_mean) and len(set(first_std)) == 1:
        scale = first_std[0]
    elif all(0 <= m <= 1 for m in first_mean) and all(s <= 1 for s in first_std):
        scale = 1.0
    else:
        raise UserError(f"TorchGeo weights {name!r} normalise their data first by mean {first_mean}, std "
                        f"{first_std}, which does not say what range the data had, so xaibench cannot tell which "
                        f"normalisation of [0, 1] images matches theirs; choose other weights")
    offset, spread = [0.0] * 3, [1.0] * 3
    for mean, std in steps:
        mean, std = mean * (3 // len(mean)), std * (3 // len(std))
        offset = [o + m * s for o, m, s in zip(offset, mean, spread)]
        spread = [s * d for s, d in zip(spread, std)]
    return tuple(o / scale for o in offset), tuple(s / scale for s in spread)


def cached_file(weights: TorchGeoWeights, *, fetch: bool = True) -> Path:
    """The file of ``weights`` in torch hub's cache; where it is missing, downloaded there when ``fetch``
    and the network allow. Missing with ``fetch=False`` (a dry run): ``NotFetched``; missing and not
    downloadable: ``UserError`` naming the URL and the file to put it in."""
    path = weights.cache_path
    if path.is_file():
        return path
    where = f"download {weights.url} and save it as {path} (torch hub's cache, which TorchGeo uses; TORCH_HOME moves it)"
    if not fetch:
        raise NotFetched(f"TorchGeo weights {weights.name} are not cached at {path}; a real run downloads them from "
                         f"{weights.url} where the network allows; offline, {where}")
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(weights.url, str(path), progress=True)
    except Exception as exc:
        raise UserError(f"TorchGeo weights {weights.name} are not cached and could not be downloaded "
                        f"({type(exc).__name__}: {exc}); {where}") from None
    return path


def check_model(weights: TorchGeoWeights, backbone: str, builds: str) -> None:
    """``UserError`` naming both when ``weights`` are for another architecture than ``builds``, the one
    the backbone ``backbone`` builds."""
    if weights.model != builds:
        raise UserError(f"TorchGeo weights {weights.name} are for {weights.model!r}, but backbone {backbone} builds "
                        f"{builds!r}; choose weights whose model is {builds!r}, or a backbone that builds "
                        f"{weights.model!r}")
