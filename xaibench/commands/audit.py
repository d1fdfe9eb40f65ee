"""``xaibench data audit``: what a dataset's classes differ in besides their content, and whether a trivial
feature predicts the label (a shortcut a model could learn instead of the object).

For every sample of every split: its class, its mask coverage, and features of two kinds —

- of the **original file**, where the dataset names it (an optional ``source_files(split)`` method returning
  sample id → path; ``kahikatea`` and ``folder`` have one): size, aspect ratio, file format, colour mode
  and, for JPEGs, the quantisation tables (the encoder's quality);
- of the **sample as a model sees it**, after the dataset's resize: mean colour, a colour histogram and
  the high-frequency energy (what a blur removes: resampling from different original sizes, or different
  cameras, leave different amounts), each per band: a multispectral dataset's near-infrared band is
  probed like its red one. ``bands`` reports the band names, the colour composite and per class each
  band's mean value.

Each feature set is a **probe**, judged by two criteria:

- **accuracy**: a logistic regression (standardised features) scored by stratified k-fold
  cross-validation. Its accuracy gets an exact (Clopper–Pearson) 95% interval over the n samples and a
  one-sided exact binomial p-value against the majority share (what always guessing the largest class
  gets); flagged when the interval lies wholly above the majority share: the feature alone predicts the
  class. It cannot see a leak confined to part of one class: where only some negatives have a size no
  positive has and the rest share the positives' size, no rule on the size beats the majority share.
- **one-class values**: every value of a categorical feature (size, aspect ratio, format, mode, JPEG
  tables) and the two tails of every continuous one (width, height, aspect ratio, JPEG quantisation,
  mean colour and high-frequency energy per band: the values up to / from a threshold) whose n
  samples all belong to one class. Its p is exact: the chance that n samples drawn without replacement
  from the audited ones are all of one class (hypergeometric, summed over the classes), Bonferroni-corrected
  for every value and tail tested in the audit; flagged when the corrected p is below 0.05. It sees a
  partial leak, but not a feature that only shifts in distribution between the classes (the accuracy
  probe's job), nor a combination of features.

A probe is **flagged** when either criterion flags it (``flagged_by`` says which). Where a file probe is
flagged, the report says whether any post-resize probe is too, i.e. whether the leak survives the
dataset's resizing as far as these probes can see.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

from xaibench.commands.data import checked_dataset, declared_bands, file_facts
from xaibench.errors import UserError
from xaibench.kit.contracts import capability
from xaibench.text import text_table, with_interval

FILE_PROBES = ("original size", "aspect ratio", "file format", "colour mode", "JPEG quantisation")
SAMPLE_PROBES = ("mean colour", "colour histogram", "high-frequency energy")
MEANING = {
    "original size": "the classes differ in their files' sizes: a model given the images at their own size "
                     "reads the label off it; resizing hides the size itself, not always its traces",
    "aspect ratio": "the classes differ in shape: squashing to a square leaves different distortions",
    "file format": "the classes come in different file formats (different compression artefacts)",
    "colour mode": "the classes differ in colour mode (e.g. RGBA against RGB: a converted alpha channel "
                   "can leave a border or a background colour)",
    "JPEG quantisation": "the classes were saved at different JPEG qualities (different blocking artefacts)",
    "mean colour": "colour alone predicts the class: the object's own colour, or a capture difference "
                   "(flight, season, camera) a model can use instead of the object",
    "colour histogram": "the colour distribution alone predicts the class (as mean colour, finer)",
    "high-frequency energy": "sharpness after resizing predicts the class: resampling traces of different "
                             "original sizes, or different cameras or processing, survive the resize",
}
HISTOGRAM_BINS = 8
ONE_CLASS_MEANING = ("every sample with this value is of one class: a leak confined to part of that class, "
                     "which a model can read off those samples even where no accuracy probe beats the majority")
ALPHA = 0.05  # family-wise level of the one-class criterion


# -- features ----------------------------------------------------------------------------------------------


def sample_features(image: np.ndarray) -> dict[str, np.ndarray]:
    """The post-resize features of one (H, W, C) image, uint8 (read as value / 255) or float in [0, 1]:
    per band, its mean, its histogram and its high-frequency energy."""
    pixels = image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
    channels = pixels.shape[-1]
    histogram = np.concatenate([np.histogram(pixels[..., c], bins=HISTOGRAM_BINS, range=(0, 1))[0]
                                for c in range(channels)]) / (pixels.shape[0] * pixels.shape[1])
    # a discrete Laplacian: what a blur of the image would remove
    laplacian = (4 * pixels[1:-1, 1:-1] - pixels[:-2, 1:-1] - pixels[2:, 1:-1] - pixels[1:-1, :-2]
                 - pixels[1:-1, 2:]) if min(pixels.shape[:2]) > 2 else np.zeros((1, 1, channels))
    energy = np.log1p(1e3 * (laplacian ** 2).mean(axis=(0, 1)))
    return {"mean colour": pixels.mean(axis=(0, 1)), "colour histogram": histogram,
            "high-frequency energy": energy}


# -- probes ------------------------------------------------------------------------------------------------


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact binomial confidence interval of a proportion."""
    from scipy.stats import beta

    if n == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - tail, successes + 1, n - successes))
    return low, high


def probe(features: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0) -> dict:
    """Cross-validated accuracy of a logistic regression of ``labels`` on ``features`` (N, F), with its
    exact 95% interval, the majority share, the one-sided exact p-value against it, and ``flagged``."""
    from scipy.stats import binom
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    n = len(labels)
    counts = Counter(labels.tolist())
    majority = max(counts.values()) / n if n else float("nan")
    out = {"n": n, "majority_share": majority, "accuracy": float("nan"), "ci_low": float("nan"),
           "ci_high": float("nan"), "p_value": float("nan"), "flagged": False}
    features = np.asarray(features, dtype=np.float64).reshape(n, -1)
    k = min(folds, min(counts.values()) if counts else 0)
    if len(counts) < 2 or k < 2:
        return {**out, "note": "needs two classes with at least two samples each"}
    if not np.isfinite(features).all() or np.ptp(features, axis=0).max(initial=0.0) == 0:
        return {**out, "accuracy": majority, "note": "the feature is the same for every sample: it cannot leak"}
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    predicted = cross_val_predict(model, features, labels, cv=StratifiedKFold(k, shuffle=True, random_state=seed))
    correct = int((predicted == labels).sum())
    low, high = clopper_pearson(correct, n)
    p_value = float(binom.sf(correct - 1, n, majority))
    return {**out, "accuracy": correct / n, "ci_low": low, "ci_high": high, "p_value": p_value,
            "flagged": bool(low > majority), "folds": k}


# -- one-class values ----------------------------------------------------------------------------------------


def one_class_p(n: int, class_counts: list[int]) -> float:
    """The exact chance that ``n`` samples drawn without replacement from samples with these class counts
    all belong to one class (hypergeometric, summed over the classes)."""
    total = sum(class_counts)
    return float(sum(math.comb(count, n) for count in class_counts) / math.comb(total, n)) if 0 < n <= total \
        else 1.0


def _pure(labels) -> str | None:
    found = set(labels)
    return next(iter(found)) if len(found) == 1 else None


def one_class_values(values: list, labels: np.ndarray) -> tuple[list[dict], int]:
    """Values of a categorical feature whose samples (two or more, not all) are all of one class, with
    their count and uncorrected p; and how many values were tested (the rest cannot be one-class or
    significant: a value of one sample, or of every sample)."""
    counts = Counter(labels.tolist())
    groups = defaultdict(list)
    for value, label in zip(values, labels.tolist()):
        groups[value].append(label)
    found, tested = [], 0
    for value, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if not 2 <= len(members) < len(labels):
            continue
        tested += 1
        label = _pure(members)
        if label is not None:
            found.append({"value": str(value), "class": label, "count": len(members),
                          "p": one_class_p(len(members), list(counts.values()))})
    return found, tested


def one_class_ranges(x: np.ndarray, labels: np.ndarray, name: str) -> tuple[list[dict], int]:
    """The tails of a continuous feature (``x`` (N,)) holding one class only: from the smallest value up
    (and from the largest down), the widest run of whole groups of equal values all of one class, when it
    holds two or more samples but not all; with their count and uncorrected p, and how many tails were
    tested (none for a constant feature)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 3 or not np.isfinite(x).all() or np.ptp(x) == 0:
        return [], 0
    counts = list(Counter(labels.tolist()).values())
    found = []
    distinct = np.unique(x)
    for side, ordered in (("≤", distinct), ("≥", distinct[::-1])):
        label, n, edge = None, 0, None
        for value in ordered:
            group = labels[x == value]
            pure = _pure(group.tolist())
            if pure is None or (label is not None and pure != label):
                break
            label, n, edge = pure, n + len(group), value
        if label is not None and 2 <= n < len(x):
            found.append({"value": f"{name} {side} {edge:.4g}", "class": label, "count": n,
                          "p": one_class_p(n, counts)})
    return found, 2


def _one_class_tests(facts: list | None, features: dict, y: np.ndarray,
                     band_names: tuple[str, ...]) -> dict[str, tuple[list[dict], int]]:
    """Per probe, its one-class values and ranges and the number of tests behind them."""
    tests: dict[str, list] = defaultdict(list)
    if facts is not None:
        width = np.array([f["width"] for f in facts], dtype=np.float64)
        height = np.array([f["height"] for f in facts], dtype=np.float64)
        tests["original size"] += [one_class_values([f"{f['width']}x{f['height']}" for f in facts], y),
                                   one_class_ranges(width, y, "width"), one_class_ranges(height, y, "height")]
        tests["aspect ratio"] += [one_class_values([f"{a:.2f}" for a in width / height], y),
                                  one_class_ranges(width / height, y, "aspect ratio")]
        tests["file format"].append(one_class_values([f["format"] for f in facts], y))
        tests["colour mode"].append(one_class_values([f["mode"] for f in facts], y))
        if any(f["jpeg_quality"] for f in facts):
            quality = np.array([((f["jpeg_quality"] or []) + [0.0, 0.0])[:2] for f in facts])
            tests["JPEG quantisation"] += [
                one_class_values([" / ".join(f"{q:.1f}" for q in f["jpeg_quality"] or []) or "no JPEG"
                                  for f in facts], y),
                one_class_ranges(quality[:, 0], y, "luminance table mean"),
                one_class_ranges(quality[:, 1], y, "chrominance table mean")]
    for probe_name in ("mean colour", "high-frequency energy"):  # the histogram's 24 bins would dilute the rest
        values = np.stack(features[probe_name])
        tests[probe_name] += [one_class_ranges(values[:, c], y, f"{probe_name} ({channel})")
                              for c, channel in enumerate(band_names)]
    return {name: ([hit for hits, _ in found for hit in hits], sum(n for _, n in found))
            for name, found in tests.items()}


# -- the audit ---------------------------------------------------------------------------------------------


def _one_hot(values: list) -> np.ndarray:
    names = sorted(set(values))
    return np.array([[value == name for name in names] for value in values], dtype=np.float64)


def audit(name: str, params: dict, registry=None, *, folds: int = 5) -> dict:
    """The audit of dataset ``name`` built with ``params``: per class, the facts of its samples and files;
    per probe, its cross-validated accuracy and whether it is flagged; and the verdict on resizing."""
    dataset = checked_dataset(name, params, registry)
    classes = list(dataset.classes)
    bands = declared_bands(dataset)
    source_files = capability(dataset, "source_files", "datasets")
    labels, features, facts, per_class = [], defaultdict(list), [], defaultdict(lambda: defaultdict(Counter))
    coverage = defaultdict(list)
    for split in ("train", "val", "test"):
        samples = dataset.split(split)
        sources = source_files(split) if source_files is not None else {}
        for sample in samples:
            label = classes[int(sample.label)]
            if sample.image.ndim != 3 or sample.image.shape[-1] != bands.count:
                raise UserError(f"sample {sample.id!r} of split {split!r} has an image of shape {sample.image.shape}, "
                                f"not one channel per band of {bands.describe()}")
            labels.append(label)
            for probe_name, values in sample_features(sample.image).items():
                features[probe_name].append(values)
            stats = per_class[label]
            stats["splits"][split] += 1
            stats["sample sizes"][f"{sample.image.shape[1]}x{sample.image.shape[0]}"] += 1
            coverage[label].append(float(sample.mask.mean()) if sample.mask is not None else None)
            path = sources.get(sample.id)
            if path is None:
                facts.append(None)
                continue
            found = file_facts(path)
            facts.append(found)
            stats["original sizes"][f"{found['width']}x{found['height']}"] += 1
            stats["aspect ratios"][f"{found['width'] / found['height']:.2f}"] += 1
            stats["modes"][found["mode"]] += 1
            stats["formats"][found["format"]] += 1
    if not labels:
        raise UserError(f"dataset {name!r} has no samples to audit")
    y = np.asarray(labels)
    probes = {}
    have_files = all(f is not None for f in facts)
    for probe_name in FILE_PROBES:
        if not have_files:
            probes[probe_name] = {"available": False, "note": "the dataset names no original files (a "
                                  "source_files(split) method) for every sample" if facts else ""}
            continue
        if probe_name == "original size":
            x = np.array([[f["width"], f["height"]] for f in facts], dtype=np.float64)
        elif probe_name == "aspect ratio":
            x = np.array([[f["width"] / f["height"]] for f in facts])
        elif probe_name == "file format":
            x = _one_hot([f["format"] for f in facts])
        elif probe_name == "colour mode":
            x = _one_hot([f["mode"] for f in facts])
        else:
            if not any(f["jpeg_quality"] for f in facts):
                probes[probe_name] = {"available": False, "note": "no JPEG files"}
                continue
            # the mean of the luminance and the chrominance table; 0 for a file that is no JPEG
            x = np.array([((f["jpeg_quality"] or []) + [0.0, 0.0])[:2] for f in facts])
        probes[probe_name] = {"available": True, "kind": "file", **probe(x, y, folds=folds)}
    for probe_name in SAMPLE_PROBES:
        probes[probe_name] = {"available": True, "kind": "sample",
                              **probe(np.stack(features[probe_name]), y, folds=folds)}
    one_class = _one_class_tests(facts if have_files else None, features, y, bands.names)
    tests = sum(n for _, n in one_class.values())
    for probe_name, result in probes.items():
        if not result.get("available"):
            continue
        hits, _ = one_class.get(probe_name, ([], 0))
        for hit in hits:
            hit["p_corrected"] = min(1.0, hit["p"] * tests)
        result["one_class"] = sorted((h for h in hits if h["p_corrected"] < ALPHA), key=lambda h: (h["p"], h["value"]))
        result["flagged_by"] = (["accuracy"] if result["flagged"] else []) + (["one-class value"] if result["one_class"]
                                                                             else [])
        result["flagged"] = bool(result["flagged_by"])
        if result["flagged"]:
            result["meaning"] = MEANING[probe_name]
    file_flagged = [p for p in FILE_PROBES if probes[p].get("flagged")]
    sample_flagged = [p for p in SAMPLE_PROBES if probes[p].get("flagged")]
    if file_flagged:
        verdict = (f"{_names(file_flagged)} of the files {_predicts(file_flagged)} the class; after the dataset's "
                   f"resize " + (f"{_names(sample_flagged)} of the samples still {_predicts(sample_flagged)} it: the "
                                 f"leak may survive resizing"
                      if sample_flagged else "no probe of the samples does: as far as these probes see, "
                                             "resizing removes it"))
    else:
        verdict = ("no file probe is flagged" if have_files else "no original files to probe") + (
            f"; {_names(sample_flagged)} of the samples {_predicts(sample_flagged)} the class" if sample_flagged else
            "; no probe of the samples is flagged")
    return {
        "dataset": name, "params": params, "classes": classes, "n": len(labels), "folds": folds,
        "one_class_tests": tests,
        "per_class": {label: {**{k: dict(v) for k, v in per_class[label].items()},
                              "samples": int((y == label).sum()),
                              "annotated_share": float(np.mean([c is not None for c in coverage[label]])),
                              "mask_coverage": _mean([c for c in coverage[label] if c is not None])}
                      for label in classes if label in per_class},
        "bands": {"names": list(bands.names), "composite": [bands.names[i] for i in bands.rgb],
                  "per_class": _band_means(features["mean colour"], y, classes, bands)},
        "probes": probes,
        "file_probes_flagged": file_flagged,
        "sample_probes_flagged": sample_flagged,
        "leak_survives_resize": bool(file_flagged and sample_flagged) if file_flagged else None,
        "verdict": verdict,
    }


def _band_means(means: list, y: np.ndarray, classes: list[str], bands) -> dict:
    """Per class and band, the mean and standard deviation over its samples of each sample's mean value."""
    means = np.stack(means)
    return {label: {name: {"mean": round(float(means[y == label, c].mean()), 6),
                           "std": round(float(means[y == label, c].std()), 6)} for c, name in enumerate(bands.names)}
            for label in classes if (y == label).any()}


def _names(probes: list[str]) -> str:
    return ", ".join(probes[:-1]) + " and " + probes[-1] if len(probes) > 1 else probes[0]


def _predicts(probes: list[str]) -> str:
    return "predict" if len(probes) > 1 else "predicts"


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _top(counter: dict, k: int = 3) -> str:
    items = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{key} ({count})" for key, count in items[:k])
    return text + (f", +{len(items) - k} more" if len(items) > k else "")


def table(result: dict) -> str:
    """The audit as text: a table per class, a table of probes, the verdict."""
    lines = [f"data audit: {result['dataset']} — {result['n']} samples, classes {', '.join(result['classes'])}", ""]
    header = ["class", "samples", "annotated", "mask coverage", "original sizes", "aspect", "modes", "formats"]
    rows = []
    for label, facts in result["per_class"].items():
        coverage = facts["mask_coverage"]
        rows.append([label, str(facts["samples"]), f"{facts['annotated_share']:.0%}",
                     "—" if coverage is None else f"{coverage:.1%}",
                     _top(facts.get("original sizes", {})) or "—", _top(facts.get("aspect ratios", {})) or "—",
                     _top(facts.get("modes", {})) or "—", _top(facts.get("formats", {})) or "—"])
    lines += text_table(header, rows) + [""]
    header = ["probe", "of", "accuracy [95% CI]", "majority", "p", "flagged"]
    rows = []
    for probe_name, found in result["probes"].items():
        if not found.get("available"):
            rows.append([probe_name, "file", "not available", "", "", found.get("note", "")])
            continue
        accuracy = with_interval(found["accuracy"], found["ci_low"], found["ci_high"])
        rows.append([probe_name, found["kind"], accuracy, f"{found['majority_share']:.3f}",
                     "" if math.isnan(found["p_value"]) else f"{found['p_value']:.2g}",
                     f"FLAGGED ({', '.join(found['flagged_by'])})" if found["flagged"] else found.get("note", "no")])
    lines += text_table(header, rows) + [""]
    for probe_name, found in result["probes"].items():
        if found.get("flagged"):
            lines.append(f"- {probe_name}: {found['meaning']}")
    hits = [(probe_name, hit) for probe_name, found in result["probes"].items() for hit in found.get("one_class", [])]
    if hits:
        lines += ["", f"one-class values ({ONE_CLASS_MEANING}; p exact, Bonferroni-corrected for the "
                      f"{result['one_class_tests']} values and ranges tested):"]
        lines += text_table(["probe", "value", "samples", "all of class", "p", "p corrected"],
                            [[probe_name, hit["value"], str(hit["count"]), hit["class"], f"{hit['p']:.2g}",
                              f"{hit['p_corrected']:.2g}"] for probe_name, hit in hits])
        lines.append("")
    lines.append(f"verdict: {result['verdict']}")
    return "\n".join(lines)
