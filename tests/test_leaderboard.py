import pandas as pd

from xaibench import leaderboard


def _rows():
    rows = []
    for seed, (base, mixed) in enumerate([(0.70, 0.80), (0.72, 0.84)]):
        common = {"dataset": "kahikatea(image_size=224)", "backbone": "resnet18", "seed": seed,
                  "explainer": "gradcam", "seeder": "", "segmenter": "", "status": "done", "jaccard": 0.5}
        rows.append({**common, "mask": "none", "ensemble": "baseline", "alpha": 1.0, "accuracy": base})
        rows.append({**common, "mask": "median", "ensemble": "logit-mix(alpha=0.9)", "alpha": 0.9,
                     "accuracy": mixed})
    return rows


def test_table_one_layout_averages_seeds():
    text = leaderboard.markdown(leaderboard.frame(_rows()))
    assert "| | median |" in text
    assert "| α=0.9 | 82.00 |" in text
    assert "| Baseline | 71.00 |" in text
    assert "Seeds: 0, 1." in text


def test_published_numbers_sit_beside_reproduced_ones():
    published = pd.DataFrame({"dataset": ["kahikatea", "kahikatea", "other"], "mask": ["median", "none", "none"],
                              "alpha": [0.9, 1.0, 1.0], "accuracy": [82.14, 76.91, 50.0]})
    text = leaderboard.markdown(leaderboard.frame(_rows()), published=published)
    assert "reproduced / published (Δ)" in text
    assert "| α=0.9 | 82.00 / 82.14 (-0.14) |" in text
    assert "| Baseline | 71.00 / 76.91 (-5.91) |" in text


def test_failed_cells_are_listed_not_averaged():
    rows = _rows()
    rows[3].update(status="failed", accuracy=None, error="RuntimeError: boom")
    text = leaderboard.markdown(leaderboard.frame(rows))
    assert "| α=0.9 | 80.00 |" in text
    assert "## Failed cells" in text and "RuntimeError: boom" in text
