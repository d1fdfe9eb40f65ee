import numpy as np
import pandas as pd
import pytest

from xaibench.pipeline import results
from xaibench.pipeline.store import save_arrays
from xaibench.presentation import leaderboard


@pytest.fixture
def cells(tmp_path):
    """Two seeds of a baseline and a median-masked ensemble on 10 test images, with per-image files."""
    correct = {
        ("baseline", 0): [1, 1, 1, 1, 1, 1, 1, 0, 0, 0],  # 70%
        ("baseline", 1): [1, 1, 1, 1, 1, 1, 1, 1, 0, 0],  # 80%
        ("median", 0): [1, 1, 1, 1, 1, 1, 1, 1, 1, 0],  # 90%: c = 2, b = 0
        ("median", 1): [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # 100%: c = 2, b = 0
    }
    rows, files = [], {}
    for (variant, seed), values in correct.items():
        cell_id = f"{variant}-{seed}"
        rows.append({"cell_id": cell_id, "dataset": "kahikatea(image_size=224)", "backbone": "resnet18",
                     "seed": seed, "explainer": "", "seeder": "", "segmenter": "", "status": "done",
                     "mask": "none" if variant == "baseline" else "median",
                     "ensemble": "baseline" if variant == "baseline" else "logit-mix(alpha=0.9)",
                     "alpha": 1.0 if variant == "baseline" else 0.9, "accuracy": float(np.mean(values))})
        files[cell_id] = tmp_path / f"{cell_id}.npz"
        save_arrays(files[cell_id], correct=np.array(values, dtype=bool), ids=np.arange(10).astype(str))
    df = results.frame(rows)
    return df, files


def test_summary_has_seed_means_cis_spread_and_mcnemar(cells):
    df, files = cells
    summary = results.summarise(df, files).set_index("mask")
    median = summary.loc["median"]
    assert median["accuracy"] == pytest.approx(0.95)
    assert median["accuracy_seed_sd"] == pytest.approx(np.std([0.9, 1.0], ddof=1))
    assert median["accuracy_ci_low"] <= 0.95 <= median["accuracy_ci_high"] <= 1.0
    assert (median["n_seeds"], median["seeds_expected"], bool(median["complete"])) == (2, 2, True)
    # b = 0, c = 4 pooled over seeds: exact two-sided p = 2 * 0.5**4
    assert (median["mcnemar_b"], median["mcnemar_c"]) == (0, 4)
    assert median["mcnemar_p"] == pytest.approx(0.125)
    assert pd.isna(summary.loc["none"].get("mcnemar_p"))


def test_table_one_layout_and_detail(cells):
    df, files = cells
    text = leaderboard.markdown(df, results.summarise(df, files))
    assert "|  | median |" in text
    assert "| α=0.9 | 95.00 [" in text and "| Baseline | 75.00 [" in text
    assert "| median | α=0.9 | 95.00 |" in text and "| 2/2 | 0.125 (0/4) |" in text
    assert "Seeds: 0, 1." in text


def test_published_numbers_sit_beside_reproduced_ones(cells):
    df, files = cells
    published = pd.DataFrame({"dataset": ["kahikatea", "kahikatea", "other"], "mask": ["median", "none", "none"],
                              "alpha": [0.9, 1.0, 1.0], "accuracy": [82.14, 76.91, 50.0]})
    text = leaderboard.markdown(df, results.summarise(df, files), published=published)
    assert "reproduced / published (Δ)" in text
    assert "/ 82.14 (+12.86) |" in text and "/ 76.91 (-1.91) |" in text


def test_missing_seeds_are_marked_and_failures_listed(cells):
    df, files = cells
    df.loc[df["cell_id"] == "median-1", ["status", "error"]] = ["failed", "RuntimeError: boom"]
    summary = results.summarise(df, files)
    median = summary.set_index("mask").loc["median"]
    assert (median["n_seeds"], bool(median["complete"])) == (1, False)
    assert median["accuracy"] == pytest.approx(0.9)
    text = leaderboard.markdown(df, summary)
    assert "†1/2 seeds" in text
    assert "## Failed cells" in text and "RuntimeError: boom" in text


def test_report_renders_in_a_headless_browser(cells, tmp_path):
    import shutil
    import subprocess

    from PIL import Image

    from xaibench.presentation import report

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no headless Chromium installed")
    df, files = cells
    figure = tmp_path / "fig1_masks_demo.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))).save(figure)
    page = tmp_path / "report.html"
    page.write_text(report.page("demo", df, results.summarise(df, files), figures=[figure],
                                run_info={"cells": 4, "cells_done": 4, "plugins": []}, grid_text="name: demo"))
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1400",
                    f"--screenshot={shot}", page.as_uri()], check=True, capture_output=True, timeout=120)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.shape == (1400, 1100)
    assert pixels.std() > 10  # tables and the figure were drawn, not a blank page


def test_best_cell_per_column_is_marked():
    summary = pd.DataFrame({
        "mask": ["none", "blur", "blur", "white", "white"],
        "ensemble": ["baseline", "logit-mix(alpha=0.8)", "logit-mix(alpha=0.9)", "logit-mix(alpha=0.8)",
                     "logit-mix(alpha=0.9)"],
        "alpha": [1.0, 0.8, 0.9, 0.8, 0.9], "accuracy": [0.7, 0.75, 0.8, 0.9, 0.9],
        "complete": [True] * 5, "n_seeds": [1] * 5, "seeds_expected": [1] * 5})
    header, rows = leaderboard.table_one(summary, "accuracy")
    best = {(r[0], header[c]) for r in rows for c, v in enumerate(r) if isinstance(v, leaderboard.Best)}
    assert best == {("α=0.9", "blur"), ("α=0.8", "white"), ("α=0.9", "white")}
    assert "| α=0.9 | **80.00** | **90.00** |" in leaderboard._md_table(header, rows)
