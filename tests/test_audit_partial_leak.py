"""``xaibench data audit`` on a leak confined to part of one class, shaped like the real Kahikatea one: only
half of the negatives have the 552x369 size no positive has, the other half share the positives' size. No
rule on the size beats the majority share there, so the accuracy probe cannot see it; the one-class
criterion (a value found in one class only, exact p, corrected) does. Sizes spread over both classes are
not flagged."""

import json

import numpy as np
import pytest
from test_audit import COMMON, LEAK, noise_tile
from test_kahikatea import png, write_layout

from xaibench.commands import audit
from xaibench.commands.cli import main

OTHERS = ((368, 246), (400, 267), (336, 224))  # sizes both classes have


def layout(negative_size):
    """20 positives (with masks) and 30 negatives, the i-th negative at ``negative_size(i)``; the
    positives' sizes cycle through ``OTHERS[:k]`` where the negatives use ``k`` of them."""
    files, seed = {}, 0
    sizes = [negative_size(i) for i in range(30)]
    shared = [s for s in OTHERS if s in sizes]
    for i in range(20):
        seed += 1
        name = f"Biospatial_20150311A_{1000 + i}_01_01"
        pixels = noise_tile(shared[i % len(shared)], seed)
        files[f"data/ve_positive/{name}.png"] = png(pixels)
        mask = np.full_like(pixels, 255)
        mask[:, : pixels.shape[1] // 3] = pixels[:, : pixels.shape[1] // 3]
        files[f"expl/ve_positive/{name}.png"] = png(mask)
    for i, size in enumerate(sizes):
        seed += 1
        flight = "20160603U" if size == LEAK else "20150311A"
        files[f"data/ve_negative/Biospatial_{flight}_{2000 + i}_01_01.png"] = png(noise_tile(size, seed))
    return files


def run_audit(tmp_path, files, capsys):
    root = tmp_path / "kahikatea"
    write_layout(root, files)
    output = tmp_path / "audit.json"
    code = main(["data", "audit", "kahikatea", "--root", str(root), "--param", "image_size=48",
                 "--output", str(output)])
    assert code == 0
    return capsys.readouterr().out, json.loads(output.read_text())


def test_a_size_that_only_half_of_the_negatives_have_is_flagged_as_a_one_class_value(tmp_path, capsys):
    from scipy.stats import hypergeom

    printed, result = run_audit(tmp_path, layout(lambda i: LEAK if i % 2 else COMMON), capsys)
    assert result["per_class"]["absent"]["original sizes"] == {"552x369": 15, "368x246": 15}
    size = result["probes"]["original size"]
    # 15 negatives told apart and the rest guessed: 35/50 = 0.70, not surely above the majority share 0.60
    assert "accuracy" not in size["flagged_by"] and size["ci_low"] < size["majority_share"] == pytest.approx(0.6)
    assert size["flagged"] and "one-class value" in size["flagged_by"]
    assert "original size" in result["file_probes_flagged"]
    hit = next(h for h in size["one_class"] if h["value"] == "552x369")
    assert (hit["class"], hit["count"]) == ("absent", 15)
    # exact: the chance that 15 images drawn from 20 positives and 30 negatives are all of one class
    expected = hypergeom.pmf(15, 50, 30, 15) + hypergeom.pmf(15, 50, 20, 15)
    assert hit["p"] == pytest.approx(expected, rel=1e-9)
    assert hit["p_corrected"] == pytest.approx(min(1.0, expected * result["one_class_tests"])) and hit["p_corrected"] < 0.05
    # the same leak as a range of widths
    assert any(h["value"].startswith("width ≥ 552") and h["count"] == 15 for h in size["one_class"])
    assert "one-class values" in printed and "552x369" in printed and "FLAGGED (one-class value)" in printed


def test_sizes_that_both_classes_have_are_not_flagged(tmp_path, capsys):
    """The false-positive check: three sizes spread over both classes are tested (not skipped as a constant,
    as one size for all is in test_audit) and none is a one-class value."""
    printed, result = run_audit(tmp_path, layout(lambda i: OTHERS[i % 3]), capsys)
    assert len(result["per_class"]["present"]["original sizes"]) == 3
    assert len(result["per_class"]["absent"]["original sizes"]) == 3
    assert result["one_class_tests"] >= 3 + 6  # the three sizes, and the tails of width and height at least
    assert result["file_probes_flagged"] == []
    for name in audit.FILE_PROBES:
        assert result["probes"][name].get("one_class", []) == []


def test_one_class_ranges_find_the_pure_tail_and_its_exact_p():
    from scipy.stats import hypergeom

    labels = np.array(["a"] * 10 + ["b"] * 10)
    x = np.concatenate([np.linspace(0, 1, 10), np.r_[0.05, 0.5, np.full(8, 2.0) + np.arange(8)]])
    found, tested = audit.one_class_ranges(x, labels, "x")
    assert tested == 2
    assert [(h["value"], h["class"], h["count"]) for h in found] == [("x ≥ 2", "b", 8)]  # the low tail is 1 sample
    assert found[0]["p"] == pytest.approx(2 * hypergeom.pmf(8, 20, 10, 8))
    assert audit.one_class_ranges(np.ones(20), labels, "x") == ([], 0)  # a constant feature is not a test
