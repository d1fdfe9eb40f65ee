"""``xaibench data audit``: shortcut probes on a Kahikatea-layout folder with a known size leak, on a folder
without one, and on the built-in synthetic data; the probe statistics against scikit-learn and scipy."""

import json

import numpy as np
import pytest
from PIL import Image
from test_kahikatea import png, write_layout

from xaibench.commands import audit
from xaibench.commands.cli import main

LEAK, COMMON = (552, 369), (368, 246)


def noise_tile(size, seed):
    """A textured RGB tile (uniform noise around a per-tile colour): resampling leaves traces in it."""
    width, height = size
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 190, 3)
    return np.clip(base + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)


def layout(leaky: bool):
    """20 positives at 368x246 with masks; 20 negatives at 552x369 when ``leaky`` (the only images of that
    size), else at 368x246; 10 more negatives at 368x246."""
    files, seed = {}, 0
    for i in range(20):
        seed += 1
        name = f"Biospatial_20150311A_{1000 + i}_01_01"
        pixels = noise_tile(COMMON, seed)
        files[f"data/ve_positive/{name}.png"] = png(pixels)
        mask = np.full_like(pixels, 255)
        mask[:, : pixels.shape[1] // 3] = pixels[:, : pixels.shape[1] // 3]
        files[f"expl/ve_positive/{name}.png"] = png(mask)
    for i in range(30):
        seed += 1
        size = LEAK if leaky and i < 20 else COMMON
        flight = "20160603U" if size == LEAK else "20150311A"
        files[f"data/ve_negative/Biospatial_{flight}_{2000 + i}_01_01.png"] = png(noise_tile(size, seed))
    return files


def run_audit(root, tmp_path, capsys):
    output = tmp_path / "audit.json"
    code = main(["data", "audit", "kahikatea", "--root", str(root), "--param", "image_size=48",
                 "--output", str(output)])
    printed = capsys.readouterr().out
    return code, printed, json.loads(output.read_text())


def test_the_size_probe_flags_negatives_that_are_the_only_552_px_images(tmp_path, capsys):
    root = tmp_path / "kahikatea"
    write_layout(root, layout(leaky=True))
    code, printed, result = run_audit(root, tmp_path, capsys)
    assert code == 0
    size = result["probes"]["original size"]
    assert size["flagged"] and size["ci_low"] > size["majority_share"] == pytest.approx(0.6)
    assert result["per_class"]["absent"]["original sizes"] == {"552x369": 20, "368x246": 10}
    assert result["per_class"]["present"]["original sizes"] == {"368x246": 20}
    assert result["per_class"]["present"]["annotated_share"] == 1.0
    assert result["per_class"]["absent"]["annotated_share"] == 0.0
    # the report says whether the resized samples still give the leak away, and which probe does
    assert isinstance(result["leak_survives_resize"], bool)
    assert result["leak_survives_resize"] == bool(result["sample_probes_flagged"])
    assert ("of the samples still predict" in result["verdict"]) == result["leak_survives_resize"]
    assert "original size" in printed and "FLAGGED" in printed and "verdict:" in printed
    assert audit.MEANING["original size"] in printed


def test_without_the_leak_no_file_probe_is_flagged(tmp_path, capsys):
    root = tmp_path / "kahikatea"
    write_layout(root, layout(leaky=False))
    code, printed, result = run_audit(root, tmp_path, capsys)
    assert code == 0
    assert result["probes"]["original size"]["flagged"] is False
    assert "cannot leak" in result["probes"]["original size"]["note"]  # every file has one size
    assert result["file_probes_flagged"] == [] and result["leak_survives_resize"] is None


def test_synthetic_audits_from_samples_alone_and_fast_enough(tmp_path, capsys):
    output = tmp_path / "a.json"
    code = main(["data", "audit", "synthetic", "--param", "n_train=60", "--param", "n_val=20",
                 "--param", "n_test=40", "--param", "image_size=32", "--output", str(output)])
    assert code == 0
    result = json.loads(output.read_text())
    assert result["n"] == 120
    assert result["probes"]["original size"]["available"] is False
    assert set(result["probes"]) == set(audit.FILE_PROBES) | set(audit.SAMPLE_PROBES)
    assert "not available" in capsys.readouterr().out


def test_an_unknown_dataset_or_parameter_is_a_user_error(tmp_path, capsys):
    assert main(["data", "audit", "nope", "--output", str(tmp_path / "a.json")]) == 2
    assert main(["data", "audit", "synthetic", "--param", "n_trian=3", "--output", str(tmp_path / "a.json")]) == 2
    assert not (tmp_path / "a.json").exists()
    assert "Traceback" not in capsys.readouterr().err


def test_probe_accuracy_is_scikit_learns_cross_validation_and_the_interval_scipys():
    from scipy.stats import binomtest
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 40)
    features = rng.normal(labels[:, None] * 0.8, 1.0, (80, 2))
    found = audit.probe(features, labels, folds=5)
    expected = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), features, labels,
                               cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean()
    assert found["accuracy"] == pytest.approx(expected)  # equal folds: the mean of fold accuracies
    ci = binomtest(round(found["accuracy"] * 80), 80).proportion_ci(0.95, method="exact")
    assert (found["ci_low"], found["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert found["flagged"] == (found["ci_low"] > 0.5)
    noise = audit.probe(rng.normal(size=(80, 2)), labels)
    assert not noise["flagged"]


def test_file_facts_read_jpeg_quality(tmp_path):
    pixels = noise_tile((64, 48), 0)
    low, high = tmp_path / "low.jpg", tmp_path / "high.jpg"
    Image.fromarray(pixels).save(low, quality=30)
    Image.fromarray(pixels).save(high, quality=95)
    facts_low, facts_high = audit.file_facts(low), audit.file_facts(high)
    assert (facts_low["width"], facts_low["height"], facts_low["format"]) == (64, 48, "JPEG")
    assert facts_low["jpeg_quality"][0] > facts_high["jpeg_quality"][0]  # coarser quantisation at low quality
