"""The command line's edges: relative paths in grids, data info's sizes, prepare --help, a failed fetch,
models at chance, and figures that stand alone."""

import json

import numpy as np
import pandas as pd
from PIL import Image

from xaibench.commands.cli import main
from xaibench.pipeline import results
from xaibench.pipeline.grid import parse_grid
from xaibench.pipeline.records import MaskExamples, OverlayPanel, Overlays
from xaibench.presentation import figures, leaderboard


def write_folder_dataset(root, size=96, n=3):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("a", "b"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_relative_paths_in_a_grid_are_read_from_its_folder(registry, tmp_path, monkeypatch):
    grids = tmp_path / "project" / "grids"
    grids.mkdir(parents=True)
    write_folder_dataset(tmp_path / "project" / "data" / "tiles")
    (grids / "model.safetensors").write_bytes(b"")
    text = ("datasets: [{name: folder, root: ../data/tiles, image_size: 32}]\n"
            "backbones: [{name: resnet18, weights: model.safetensors}, {name: resnet18, weights: none}]\n")
    (grids / "g.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)  # anywhere but the grid's folder
    grid = parse_grid(text, str(grids / "g.yaml"), registry=registry)
    assert grid.datasets[0].params["root"] == str((tmp_path / "project" / "data" / "tiles").resolve())
    assert grid.backbones[0].params["weights"] == str((grids / "model.safetensors").resolve())
    assert grid.backbones[1].params["weights"] == "none"  # a bare word that names no file stays
    home = parse_grid(text.replace("../data/tiles", "~/tiles"), str(grids / "g.yaml"), registry=registry)
    assert home.datasets[0].params["root"].startswith(str(__import__("pathlib").Path.home()))


def test_data_info_gives_the_sizes_on_disk_and_after_resizing(registry, tmp_path, capsys):
    write_folder_dataset(tmp_path / "d", size=96)
    assert main(["data", "info", "folder", "--root", str(tmp_path / "d"), "--param", "image_size=32"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["image_sizes"] == {"32x32": 12}
    assert info["image_sizes_on_disk"] == {"96x96": 12}
    assert main(["data", "info", "synthetic", "--param", "n_train=4", "--param", "n_val=0",
                 "--param", "n_test=2", "--param", "image_size=32"]) == 0
    assert json.loads(capsys.readouterr().out)["image_sizes_on_disk"] is None  # generated: no files


def test_data_prepare_help_lists_the_datasets_options_and_prepares_nothing(registry, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "prepare", "lcdb-waikato", "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: xaibench data prepare lcdb-waikato --option value ...")
    assert "  --imagery: str | list[str] (required)" in text and "  --tile-size: int ≥ 8 (default 224)" in text
    assert "--progress" not in text
    assert list(tmp_path.iterdir()) == []
    assert main(["data", "prepare", "synthetic", "--help"]) == 2


def test_a_fetch_that_gets_no_byte_writes_nothing(tmp_path, capsys):
    root = tmp_path / "new" / "kahikatea"
    assert main(["data", "fetch", "kahikatea", "--root", str(root), "--url", "http://127.0.0.1:9/none.zip"]) == 2
    assert "nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def _chance_frames(tmp_path, correct):
    from xaibench.pipeline.store import save_arrays

    save_arrays(tmp_path / "c.npz", correct=np.array(correct, bool), ids=np.arange(len(correct)).astype(str))
    df = results.frame([{"cell_id": "c", "dataset": "d", "backbone": "b", "seed": 0, "mask": "none",
                             "ensemble": "baseline", "alpha": 1.0, "explainer": "", "seeder": "", "segmenter": "",
                             "status": "done", "accuracy": float(np.mean(correct)), "majority_share": 0.5}])
    return df, results.summarise(df, {"c": tmp_path / "c.npz"})


def test_a_model_whose_interval_reaches_the_majority_share_is_at_chance(tmp_path):
    df, summary = _chance_frames(tmp_path, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    low = summary.iloc[0]["accuracy_ci_low"]
    assert low <= 0.5
    lines = leaderboard.at_chance(df, summary)
    assert lines == [f"d · b: Baseline is at chance on test: accuracy 60.00% with its 95% CI from {100 * low:.2f}%, "
                     f"not above the commonest class's share (50.00%)"]
    assert "## Models at chance" in leaderboard.markdown(df, summary)
    assert "Models at chance" not in leaderboard.markdown(df, summary, brief=True)  # the run warns instead
    df, summary = _chance_frames(tmp_path, [1] * 20)
    assert leaderboard.at_chance(df, summary) == []


def test_figures_have_keys_and_shell_safe_names(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, **layout: saved.append(fig) or path)
    panel = OverlayPanel(0, "logit-mix(alpha=0.8) white", np.zeros((8, 8, 3), np.uint8),
                         np.random.default_rng(0).random((8, 8)).astype(np.float32), np.array([[2.0, 3.0]]),
                         np.array([1]), np.eye(8, dtype=bool), np.eye(8, dtype=bool))
    figures.fig2_overlays(Overlays("folder(root=/very/long/path/to/data,image_size=32)", ["gradcam", "top-k"],
                                   ["gradcam", "top-k(k=3)"], ["logit-mix(alpha=0.8) white"], [panel]),
                          tmp_path / "f.png")
    fig = saved[-1]
    assert len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["seed point", "negative point", "predicted mask",
                                                                  "ground truth"]
    assert any(ax.get_ylabel().startswith("saliency") for ax in fig.axes)  # the colour bar
    assert "/very/long" not in fig._suptitle.get_text() and "…/data" in fig._suptitle.get_text()
    figures.fig1_masks(MaskExamples("synthetic", ["present", "absent"], {"raw": np.zeros((2, 8, 8, 3))}),
                       tmp_path / "m.png")
    assert [ax.get_ylabel() for ax in saved[-1].axes] == ["present", "absent"]
    names = figures.Names(tmp_path)
    assert names("fig2_synthetic_top-k(k=3)_sam(checkpoint=a b)").name == "fig2_synthetic_top-k_k_3_sam_checkpoint_a_b.png"


def test_fig2_draws_box_prompts_on_their_pixels_and_keys_them(tmp_path, monkeypatch):
    from matplotlib.patches import Rectangle

    saved = []
    monkeypatch.setattr(figures, "_save", lambda fig, path, **layout: saved.append(fig) or path)
    panel = OverlayPanel(0, "baseline", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.float32),
                         np.zeros((0, 2)), np.zeros(0, np.int64), None, np.zeros((8, 8), bool),
                         np.array([[2, 1, 5, 3]], np.float32))  # columns 2-4, rows 1-2
    figures.fig2_overlays(Overlays("synthetic", ["gradcam", "boxes"], ["gradcam", "boxes"], ["baseline"], [panel]),
                          tmp_path / "f.png")
    fig = saved[-1]
    (box,) = [patch for patch in fig.axes[0].patches if isinstance(patch, Rectangle)]
    assert box.get_xy() == (1.5, 0.5) and (box.get_width(), box.get_height()) == (3, 2)  # pixel edges, as drawn
    assert "prompt box" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert fig.get_figwidth() >= 3 * 2.4  # one column still leaves room for the title, key and colour bar


def test_a_rerun_from_the_run_folders_copy_of_a_grid_finds_the_same_files(registry, tmp_path, monkeypatch):
    from xaibench.pipeline.engine import copy_grid

    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "paper.csv").write_text("dataset,mask,alpha,accuracy\nsynthetic,none,1.0,90\n")
    write_folder_dataset(tmp_path / "data")
    text = "datasets: [{name: folder, root: ../data, image_size: 32}]\nbackbones: [resnet18]\npublished: paper.csv\n"
    (grids / "g.yaml").write_text(text)
    out = tmp_path / "runs" / "g"
    out.mkdir(parents=True)
    copy_grid(grids / "g.yaml", out)
    copy = (out / "grid.yaml").read_text()
    assert copy.startswith(text) and f"base_dir: \"{grids.resolve()}\"" in copy
    monkeypatch.chdir(out)
    grid = parse_grid(copy, str(out / "grid.yaml"), registry=registry)
    assert grid.published == str((grids / "paper.csv").resolve())
    assert grid.datasets[0].params["root"] == str((tmp_path / "data").resolve())
    copy_grid(out / "grid.yaml", out)  # rerun from the copy: left as it is
    assert (out / "grid.yaml").read_text() == copy
