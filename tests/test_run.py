"""End-to-end runs of tiny grids through the CLI, with real training on 32-pixel synthetic tiles."""

import json

import numpy as np
import pandas as pd
import pytest

from xaibench import hookimpl
from xaibench.commands.cli import main

# timm's tiny test_resnet: these tests are about the pipeline, and resnet18 (its own tests) costs more
GRID = """\
name: tiny
seeds: [0]
datasets:
  - name: synthetic
    n_train: 24
    n_val: 0
    n_test: 16
    image_size: 32
backbones: [{name: timm, params: {name: test_resnet}}]
masks: [white, blur]
ensembles:
  - name: logit-mix
    sweep: {alpha: [0.5, 1.0]}
explainers: [gradcam]
seeders: [{name: top-k, k: 2, min_distance: 4}]
segmenters: [random-walker]
train: {epochs: 1, batch_size: 8}
finetune: {epochs: 1, batch_size: 8}
protocol: {faithfulness_steps: 2, faithfulness_images: 4}
"""


def _check_report(path, figures):
    """The report parses as HTML, holds every table, and embeds every figure (no external resource)."""
    from html.parser import HTMLParser

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.images, self.headings = [], [], []
            self._heading = None

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag == "img":
                self.images.append(dict(attrs)["src"])
            if tag in ("h2", "h3", "h4"):
                self._heading = ""

        def handle_data(self, data):
            if self._heading is not None:
                self._heading += data

        def handle_endtag(self, tag):
            if tag in ("h2", "h3", "h4") and self._heading is not None:
                self.headings.append(self._heading)
                self._heading = None

    parser = Collect()
    parser.feed(path.read_text())
    # accuracy, its detail and by test group, Jaccard, all explanation metrics, their lift over random and
    # faithfulness, segmentation IoU and all its metrics, plugins
    assert parser.tags.count("table") == 10
    assert len(parser.images) == figures and all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert {"Figures", "Grid", "Plugins", "Machine"} <= set(parser.headings)
    assert any(h.startswith("Accuracy (%)") for h in parser.headings)
    assert "http://" not in path.read_text() and "https://" not in path.read_text()


@pytest.fixture
def run_grid(registry, write_grid, tmp_path):
    def run(text, *extra):
        out = run.out
        code = main(["run", "--grid", str(write_grid(text)), "--out", str(out), "--quiet", *extra])
        summary = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else None
        return code, summary

    run.out = tmp_path / "run"
    return run


def test_tiny_run_writes_results_and_a_rerun_trains_nothing(run_grid, capsys):
    code, first = run_grid(GRID)
    assert code == 0
    for key in ("cells", "cells_done", "cells_failed", "trainings_run", "trainings_reused", "wall_s"):
        assert key in first
    assert first["cells"] == first["cells_done"] == 1 + 2 * 2
    assert (first["trainings_run"], first["trainings_reused"]) == (3, 0)  # baseline + one per mask

    table = pd.read_csv(run_grid.out / "leaderboard.csv")
    assert len(table) == 5 and set(table["status"]) == {"done"}
    assert table["accuracy"].between(0, 1).all() and table["jaccard"].between(0, 1).all()
    assert table["seg_iou"].between(0, 1).all()
    baseline = table[table["ensemble"] == "baseline"]["accuracy"].item()
    # alpha = 1 is the raw model alone, whatever the mask
    assert np.allclose(table[table["alpha"] == 1.0]["accuracy"], baseline)

    from PIL import Image

    assert first["figures"] == ["figures/fig1_masks_synthetic.png",
                                "figures/fig2_synthetic_gradcam_top-k_random-walker.png",
                                "figures/accuracy_vs_alpha_synthetic_timm_name_test_resnet.png"]
    with Image.open(run_grid.out / first["figures"][0]) as fig1:  # raw + 2 masks; 3 annotated tiles
        assert fig1.size == (round(2.2 * 3 * 100), round(2.2 * 3 * 100))
    with Image.open(run_grid.out / first["figures"][1]) as fig2:  # baseline + 2 masks; 4 test tiles
        assert fig2.size == (round(2.4 * 3 * 100), round(2.4 * 4 * 100))

    markdown = (run_grid.out / "leaderboard.md").read_text()
    assert "|  | white | blur |" in markdown and "| α=0.5 |" in markdown and "| Baseline |" in markdown
    # no val split: the validation choices say they were not possible; chance rows and faithfulness are there
    assert "| α* (val) | not possible (no val split) | not possible (no val split) |" in markdown
    assert "τ* (val): not possible (no val split)" in markdown
    assert "| Chance: random |" in markdown and "| Chance: centre |" in markdown
    metrics = markdown.split("#### Explanation metrics · gradcam")[1].split("####")[0]
    assert "|  | Chance: random | " in metrics and "|  | Chance: centre | " in metrics  # the table of all metrics too
    assert "| mask | ensemble | all | cue agrees (n=" in markdown and "| worst group |" in markdown
    assert "Faithfulness · gradcam on 4 test images per seed" in markdown
    assert table["faithfulness_n"].dropna().eq(4).all() and table["lift_jaccard"].notna().all()
    assert "cells: 5 done, 0 failed" in capsys.readouterr().out
    _check_report(run_grid.out / "report.html", figures=3)

    code, second = run_grid(GRID)
    assert code == 0
    assert (second["trainings_run"], second["trainings_reused"], second["stages_run"]) == (0, 3, 0)
    assert pd.read_csv(run_grid.out / "leaderboard.csv").equals(table)


def test_adding_a_segmenter_or_an_alpha_retrains_nothing(run_grid):
    run_grid(GRID)
    code, summary = run_grid(GRID.replace("[random-walker]", "[random-walker, watershed]")
                             .replace("[0.5, 1.0]", "[0.5, 0.75, 1.0]"))
    assert code == 0 and summary["trainings_run"] == 0
    assert summary["cells"] == 2 * (1 + 2 * 3)
    # new: 2 explanations (alpha 0.75 per mask) of test and of val, the test ones' faithfulness and seeds;
    # random-walker on those 2 and watershed on all 5 explanations (baseline, 2 masks x alpha 0.5, 2 masks
    # x alpha 0.75)
    assert summary["stages_run"] == 2 + 2 + 2 + 2 + (2 + 5)


def test_a_failing_plugin_fails_its_cells_only(run_grid, add_plugin):
    class Exploding:
        def segment(self, image, prompts):
            raise RuntimeError("boom")

    class Plugin:
        @hookimpl
        def register_segmenters(self, register):
            register("exploding", Exploding)

    add_plugin(Plugin(), name="exploding-plugin")
    code, summary = run_grid(GRID.replace("[random-walker]", "[random-walker, exploding]"))
    assert code == 1
    assert summary["cells_failed"] == 5 and summary["cells_done"] == 5
    table = pd.read_csv(run_grid.out / "leaderboard.csv")
    failed = table[table["status"] == "failed"]
    assert set(failed["segmenter"]) == {"exploding"}
    assert failed["error"].str.contains("RuntimeError: boom").all()

    # a rerun does not retry the failed stage; --retry-failed reruns only it (here: now fixed)
    code, again = run_grid(GRID.replace("[random-walker]", "[random-walker, exploding]"))
    assert code == 1 and again["stages_run"] == 0 and again["cells_failed"] == 5
    Exploding.segment = lambda self, image, prompts: [image[..., 0] > 128 for _ in prompts]
    code, retried = run_grid(GRID.replace("[random-walker]", "[random-walker, exploding]"), "--retry-failed")
    assert code == 0 and retried["cells_failed"] == 0
    # the 3 exploding segmentations: baseline (also alpha = 1 of each mask) and each mask at alpha 0.5
    assert retried["stages_run"] == 3 and retried["trainings_run"] == 0


def test_different_seeds_train_different_models(run_grid):
    code, summary = run_grid(GRID.replace("seeds: [0]", "seeds: [0, 1]").replace("masks: [white, blur]", "masks: []")
                             .replace("ensembles:\n  - name: logit-mix\n    sweep: {alpha: [0.5, 1.0]}\n", ""))
    assert code == 0 and summary["trainings_run"] == 2
    from safetensors.numpy import load_file

    weights = [load_file(str(p)) for p in sorted((run_grid.out / "cache" / "models").glob("*.safetensors"))]
    assert not np.array_equal(weights[0]["net.fc.weight"], weights[1]["net.fc.weight"])


def test_a_second_run_on_the_same_folder_is_refused(run_grid, capsys):
    import fcntl

    run_grid.out.mkdir(parents=True)
    with open(run_grid.out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, summary = run_grid(GRID)
    assert code == 2 and summary is None
    assert "another xaibench run is using" in capsys.readouterr().err


def test_process_executor_gives_the_local_results(run_grid, tiny_reference, tmp_path):
    local = (tiny_reference / "leaderboard.csv").read_bytes()
    run_grid.out = tmp_path / "process-run"
    # torch reductions are bitwise reproducible for a fixed thread count, so workers get the driver's
    import torch

    threads = torch.get_num_threads()
    code, summary = run_grid(GRID + f"executor: {{name: process, workers: 2, threads: {threads}}}\n")
    assert code == 0 and summary["trainings_run"] == 3
    assert (run_grid.out / "leaderboard.csv").read_bytes() == local


def test_calibration_baselines_bound_every_explanation_metric(run_grid):
    grid = (GRID.replace("explainers: [gradcam]", "explainers: [gradcam, oracle, random]")
            .replace("seeders: [{name: top-k, k: 2, min_distance: 4}]",
                     "seeders: [{name: top-k, k: 2, min_distance: 4}, components]")
            .replace("segmenters: [random-walker]", "segmenters: [random-walker, cam-threshold]")
            .replace("masks: [white, blur]", "masks: [white]"))
    code, summary = run_grid(grid)
    assert code == 0 and summary["trainings_run"] == 2
    table = pd.read_csv(run_grid.out / "leaderboard.csv")
    assert len(table) == (1 + 2) * 3 * 2 * 2
    oracle = table[table["explainer"] == "oracle"]
    for metric in ("jaccard", "dice", "roc_auc", "average_precision", "pointing_game", "relevance_mass",
                   "relevance_rank", "sweep_best"):
        assert np.allclose(oracle[metric], 1.0), metric
    # the binarised oracle map is the ground truth itself
    assert np.allclose(oracle[oracle["segmenter"] == "cam-threshold"]["seg_iou"], 1.0)
    rows = table[table["explainer"] != "oracle"]
    assert (rows["jaccard"] < 1.0).all() and rows["seg_boundary_f1"].between(0, 1).all()
    # every explanation and segmentation metric is reported on every row
    assert table[["jaccard", "roc_auc", "pointing_game", "seg_iou", "seg_dice"]].notna().all().all()


def test_ray_executor_gives_the_local_results(run_grid, tiny_reference, tmp_path):
    pytest.importorskip("ray")
    import torch

    local = (tiny_reference / "leaderboard.csv").read_bytes()
    run_grid.out = tmp_path / "ray-run"
    threads = torch.get_num_threads()
    code, summary = run_grid(GRID, "--executor", "ray", "--executor-option", "num_cpus=2",
                             "--executor-option", f"cpus={threads}", "--executor-option", f"threads={threads}")
    assert code == 0 and summary["trainings_run"] == 3
    assert (run_grid.out / "leaderboard.csv").read_bytes() == local


def test_executor_options_are_validated(run_grid, capsys):
    code, summary = run_grid(GRID, "--executor", "process", "--executor-option", "workers=0")
    assert code == 2 and summary is None
    assert "workers" in capsys.readouterr().err


def test_a_cuda_device_without_cuda_is_refused_before_anything_is_written(run_grid, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, summary = run_grid(GRID + "device: cuda\n")
    assert code == 2 and summary is None
    assert "device='cuda' but CUDA is not available" in capsys.readouterr().err
    assert not run_grid.out.exists()
