"""Dataset-level operations behind ``xaibench data``: ``info``, ``fetch`` and ``prepare``.

They work on any registered dataset through optional methods of the dataset contract:
``fetch()`` downloads the data to the dataset's root; a ``prepare(**options)`` static method builds a
dataset folder from raw sources; ``describe()`` adds dataset-specific facts to ``info``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from xaibench.errors import ContractViolation, UserError
from xaibench.kit.contracts import Bands, capability, validate_bands
from xaibench.kit.images import displayed_size
from xaibench.kit.registry import get_registry, signature_model, type_text, validate_keywords
from xaibench.pipeline import bands as band_statistics


def file_facts(path) -> dict:
    """Size, mode, format and JPEG quantisation of an image file (read with PIL, pixels not decoded). The
    size is the displayed one (EXIF orientation applied), the size the dataset's samples are read at."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
    except (UnidentifiedImageError, OSError):
        if str(path).lower().endswith((".tif", ".tiff")):  # multispectral or 16-bit GeoTIFFs PIL cannot open
            return _raster_facts(path)
        raise
    with image:
        quantisation = getattr(image, "quantization", None) or {}
        tables = [np.asarray(list(quantisation[k]), dtype=np.float64) for k in sorted(quantisation)]
        width, height = displayed_size(image)
        return {"width": int(width), "height": int(height), "mode": str(image.mode),
                "format": str(image.format or "unknown"),
                "jpeg_quality": [float(t.mean()) for t in tables[:2]] if tables else None}


def _raster_facts(path) -> dict:
    """``file_facts`` of a TIFF that PIL cannot open, read with rasterio: its mode is its band count and
    data type (e.g. ``4×uint16``)."""
    try:
        import rasterio
    except ImportError:
        raise UserError(f"{path}: a TIFF that PIL cannot read; install xaibench[geo] (rasterio) to read it") from None
    try:
        with rasterio.open(path) as src:
            return {"width": int(src.width), "height": int(src.height), "mode": f"{src.count}×{src.dtypes[0]}",
                    "format": "TIFF", "jpeg_quality": None}
    except rasterio.errors.RasterioError as exc:
        raise UserError(f"{path}: cannot read this image ({exc})") from None


def checked_dataset(name: str, params: dict, registry=None):
    """The dataset ``name`` built with ``params``, its optional ``check()`` passed (the data is there)."""
    registry = registry or get_registry()
    dataset = registry.create("datasets", name, **params)
    check = capability(dataset, "check", "datasets")
    if check is not None:
        check()
    return dataset


def _prepare_of(name: str, registry=None):
    """The ``prepare`` of dataset ``name`` and the model of its options."""
    registry = registry or get_registry()
    prepare_fn = capability(registry.get("datasets", name).factory, "prepare", "datasets")
    if prepare_fn is None:
        raise UserError(f"dataset {name!r} needs no preparation (it defines no prepare())")
    return prepare_fn, signature_model(prepare_fn, f"{name}.prepare")


def declared_bands(dataset) -> Bands:
    """The dataset's ``image_bands`` (RGB's where it declares none), or ``UserError`` where they are no ``Bands``."""
    bands = capability(dataset, "image_bands", "datasets") or Bands.rgb3()
    try:
        validate_bands(bands)
    except ContractViolation as exc:
        raise UserError(f"the dataset's {exc}") from None
    return bands


def band_facts(dataset, splits: dict) -> dict:
    """The dataset's bands (names, the colour composite, the images' dtype) and per split and band the
    statistics of its samples' values in [0, 1] (``xaibench.pipeline.bands.statistics``: mean, std,
    median, min, max, of at most 256 images evenly spaced)."""
    bands = declared_bands(dataset)
    dtypes = sorted({str(s.image.dtype) for samples in splits.values() for s in samples})
    if len(dtypes) > 1:
        raise UserError(f"the dataset's images are of {len(dtypes)} dtypes ({', '.join(dtypes)}); every image of a "
                        f"dataset has one, uint8 or float32")
    facts = {"names": list(bands.names), "composite": [bands.names[i] for i in bands.rgb], "dtype": dtypes,
             "per_split": {}}
    for split, samples in splits.items():
        if not samples:
            continue
        shapes = {s.image.shape for s in samples}
        if len(shapes) != 1 or next(iter(shapes))[-1] != bands.count:
            raise UserError(f"the dataset's images are {sorted(shapes)} in split {split!r}, not of one size with one "
                            f"channel per band of {bands.describe()}")
        chosen = band_statistics.chosen(len(samples))
        found = band_statistics.statistics(np.stack([samples[i].image for i in chosen]))
        facts["per_split"][split] = {name: {k: round(float(v[c]), 6) for k, v in found.items()}
                                     for c, name in enumerate(bands.names)}
    return facts


def info(name: str, params: dict, registry=None) -> dict:
    """Counts per split and class, how many samples have masks, the bands with per-band statistics
    (``band_facts``), and the image sizes: as the samples are (after the dataset's resize) and, where the
    dataset names its files, as they are on disk."""
    dataset = checked_dataset(name, params, registry)
    classes = list(dataset.classes)
    out: dict = {"dataset": name, "params": params, "classes": classes, "splits": {}}
    sizes: Counter = Counter()
    on_disk: Counter = Counter()
    source_files = capability(dataset, "source_files", "datasets")
    splits = {}
    for split in ("train", "val", "test"):
        samples = splits[split] = list(dataset.split(split))
        if source_files is not None:
            for path in source_files(split).values():
                facts = file_facts(path)
                on_disk[f"{facts['width']}x{facts['height']}"] += 1
        per_class = Counter(classes[int(s.label)] for s in samples)
        sizes.update(f"{s.image.shape[1]}x{s.image.shape[0]}" for s in samples)
        out["splits"][split] = {
            "samples": len(samples),
            "per_class": {c: per_class.get(c, 0) for c in classes},
            "with_mask": sum(s.mask is not None for s in samples),
            "mask_foreground_fraction": float(np.mean([s.mask.mean() for s in samples if s.mask is not None]))
            if any(s.mask is not None for s in samples) else None,
        }
    out["bands"] = band_facts(dataset, splits)
    out["image_sizes"] = dict(sizes)  # as the samples are, after the dataset's resize
    # as the files are, where the dataset names them (``source_files``)
    out["image_sizes_on_disk"] = dict(on_disk) if source_files is not None else None
    out["fingerprint"] = dataset.fingerprint()
    describe = capability(dataset, "describe", "datasets")
    if describe is not None:
        out["details"] = describe()
    return out


def fetch(name: str, params: dict, registry=None):
    registry = registry or get_registry()
    dataset = registry.create("datasets", name, **params)
    fetch_data = capability(dataset, "fetch", "datasets")
    if fetch_data is None:
        raise UserError(f"dataset {name!r} has nothing to download (it defines no fetch())")
    return fetch_data()


def prepare_help(name: str, registry=None) -> str:
    """``xaibench data prepare NAME --help``: the dataset's ``prepare`` options, their types and defaults,
    and its docstring."""
    import inspect

    prepare_fn, model = _prepare_of(name, registry)
    lines = [f"usage: xaibench data prepare {name} --option value ...", "", "options:"]
    for field_name, field in model.model_fields.items():
        if field_name == "progress":
            continue
        default = " (required)" if field.is_required() else f" (default {field.get_default(call_default_factory=True)!r})"
        lines.append(f"  --{field_name.replace('_', '-')}: {type_text(field.annotation, field.metadata)}{default}")
    doc = inspect.getdoc(prepare_fn)
    return "\n".join(lines + (["", doc] if doc else []))


def prepare(name: str, options: dict, registry=None):
    """Call the dataset's ``prepare`` with ``options`` validated against its signature."""
    prepare_fn, model = _prepare_of(name, registry)
    try:
        options = validate_keywords(model, options)
    except UserError as exc:
        flags = ", ".join("--" + f.replace("_", "-") for f in model.model_fields if f != "progress")
        raise UserError(f"data prepare {name}: {exc} (options: {flags})") from None
    return prepare_fn(**options)
