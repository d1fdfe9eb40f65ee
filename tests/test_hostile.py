"""Inputs a new user tries that nobody on the project made: each is one ``error:`` line with exit code 2 and
nothing written, never a traceback or a value the grid cannot mean."""

import pytest

from xaibench.commands.cli import main

TINY_GRID = """\
name: hostile
seeds: [0]
datasets:
  - name: synthetic
    n_train: 4
    n_val: 0
    n_test: 2
    image_size: 32{noise}
backbones: [{{name: resnet18, weights: none}}]
masks: [white]
ensembles: [{{name: logit-mix, alpha: 0.5}}]
explainers: [gradcam]
seeders: [{{name: top-k, k: 1}}]
segmenters: [cam-threshold]
train: {{epochs: 1, batch_size: 4}}
device: cpu
"""


def grid_file(tmp_path, noise=""):
    path = tmp_path / "g.yaml"
    path.write_text(TINY_GRID.format(noise=noise))
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("link", ["loop", "loop/sub"])
def test_an_out_folder_behind_a_symlink_loop_is_refused(registry, tmp_path, capsys, link):
    (tmp_path / "loop").symlink_to(tmp_path / "other")
    (tmp_path / "other").symlink_to(tmp_path / "loop")
    assert main(["run", "--grid", str(grid_file(tmp_path)), "--out", str(tmp_path / link), "--quiet"]) == 2
    assert "symbolic link on the way loops" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml", "loop", "other"]


# YAML 1.1 reads 1e999 (no dot) as a string, which pydantic then reads as infinity: the grid's own check of
# non-finite floats never sees it, so the nested annotation_noise settings must refuse it themselves.
@pytest.mark.parametrize("value", ["1e999", "'inf'", "'Infinity'"])
def test_annotation_noise_takes_finite_numbers_only(registry, tmp_path, capsys, value):
    noise = f"\n    annotation_noise: {{dilate: {value}}}"
    assert main(["run", "--grid", str(grid_file(tmp_path, noise)), "--out", str(tmp_path / "r"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "annotation_noise.dilate: synthetic: Input should be a finite number" in err
    assert main(["data", "info", "synthetic", "--param", f"annotation_noise={{dilate: {value}}}",
                 "--param", "n_train=2", "--param", "n_val=0", "--param", "n_test=2", "--param", "image_size=32"]) == 2
    assert "annotation_noise.dilate" in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("url", ["http://[::1", "example.org/kahikatea.zip", "htp//typo"])
def test_fetch_from_something_that_is_not_a_url_is_one_error_line(registry, tmp_path, capsys, url):
    root = tmp_path / "data" / "kahikatea"
    assert main(["data", "fetch", "kahikatea", "--root", str(root), "--url", url]) == 2
    assert "is not a URL" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []  # no folder made for a download that could never start


@pytest.mark.parametrize("command,dataset", [("fetch", "kahikatea"), ("info", "kahikatea"), ("info", "folder"),
                                             ("info", "lcdb-waikato")])
def test_a_dataset_root_that_is_a_file_is_one_error_line(registry, tmp_path, capsys, command, dataset):
    root = tmp_path / "kahikatea.zip"
    root.write_bytes(b"PK\x05\x06" + bytes(18))  # the archive itself given as the root
    argv = ["data", command, dataset, "--root", str(root)]
    assert main(argv + (["--url", "http://127.0.0.1:9/x.zip"] if command == "fetch" else [])) == 2
    line = one_error_line(capsys)
    assert f"root {root} is a file" in line and "does not exist" not in line
    assert root.read_bytes() == b"PK\x05\x06" + bytes(18)


@pytest.mark.parametrize("saved", ["a whole model", "a YAML file"])
def test_weights_torch_cannot_load_are_one_line_without_torchs_advice(registry, tmp_path, capsys, saved):
    import torch

    weights = tmp_path / "model.pt"
    if saved == "a whole model":  # torch.save(model): the commonest wrong file, a pickle of code
        torch.save(torch.nn.Linear(2, 2), weights)
    else:
        weights.write_text("name: not weights\n")
    grid = grid_file(tmp_path)
    grid.write_text(grid.read_text().replace("weights: none", f"weights: {weights}"))
    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "r"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "cannot be loaded as tensors only" in line)
    assert line.endswith("save a state_dict, or convert it to .safetensors")  # torch's text ends within it
    assert "\x1b" not in err and "weights_only" not in err and "file an issue" not in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("cell", ["mask=white,mask=none", "seed=0, seed=1"])
def test_export_refuses_a_key_given_twice_in_cell(registry, tmp_path, capsys, cell):
    # The last value silently won, exporting the other cell than the one named first.
    assert main(["export", str(tmp_path), "--what", "segmentations", "--format", "gpkg", "--cell", cell,
                 "--output", str(tmp_path / "x.gpkg")]) == 2
    assert "is given twice; give each key once" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["data", "info", "synthetic", "--param", "n_train=4", "--param", "n_train=400"],
    ["data", "audit", "synthetic", "--param", "image_size=32", "--param", "image_size=64"],
    ["run", "--grid", "GRID", "--dry-run", "--executor", "process", "--executor-option", "workers=1",
     "--executor-option", "workers=2"],
])
def test_a_command_line_key_given_twice_is_refused(registry, tmp_path, capsys, monkeypatch, argv):
    # The last one silently won; a grid refuses a repeated key, so the command line does too.
    monkeypatch.chdir(tmp_path)  # where a data audit that went ahead would write its file
    argv = [str(grid_file(tmp_path)) if a == "GRID" else a for a in argv]
    assert main(argv + (["--out", str(tmp_path / "r")] if argv[0] == "run" else [])) == 2
    assert "is given twice; give each key once" in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("where", ["--out", "--root", "grid root"])
def test_a_path_of_an_unknown_users_home_is_one_error_line(registry, tmp_path, capsys, where):
    path = "~no-such-user-xaibench/data"  # pathlib cannot expand it: a RuntimeError, wherever it is expanded
    grid = grid_file(tmp_path)
    if where == "--out":
        argv = ["run", "--grid", str(grid), "--out", path, "--quiet"]
    elif where == "--root":
        argv = ["data", "info", "folder", "--root", path]
    else:
        grid.write_text(grid.read_text().replace("name: synthetic", f"name: folder\n    root: {path}")
                        .replace("    n_train: 4\n    n_val: 0\n    n_test: 2\n", ""))
        argv = ["run", "--grid", str(grid), "--out", str(tmp_path / "r"), "--dry-run"]
    assert main(argv) == 2
    assert "for a user this machine does not know" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml"]


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00d", b'dataset,mask,alpha,accuracy\n"unclosed,none,,90\n',
                                     b"dataset,mask,alpha,accuracy\nsynthetic,none,,ninety\n"])
def test_a_published_table_that_is_no_csv_of_numbers_is_one_error_line(registry, tmp_path, capsys, content):
    from xaibench.pipeline.store import Store

    run = tmp_path / "run"
    Store(run).close()
    (run / "published.csv").write_bytes(content)  # where a run copies its grid's published: file
    assert main(["leaderboard", str(run)]) == 2
    assert one_error_line(capsys).startswith(f"error: published table {str(run / 'published.csv')!r}")


def test_an_image_too_large_to_read_whole_is_not_called_corrupt(registry, tmp_path, capsys, monkeypatch):
    # A whole orthophoto dropped among the tiles: PIL refuses it as a possible decompression bomb, which
    # is no damage; the limit is lowered here so that a 40x40 image stands for a 30,000-pixel-wide one.
    from PIL import Image

    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "tile.png")
    Image.new("RGB", (40, 40)).save(tmp_path / "train" / "a" / "orthophoto.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    assert main(["data", "info", "folder", "--root", str(tmp_path), "--param", "image_size=8"]) == 2
    line = one_error_line(capsys)
    assert "orthophoto.png: too large to read whole" in line and "corrupt" not in line


def test_output_onto_a_pipe_or_device_writes_through_it_and_leaves_it_one(registry, tmp_path, capsys):
    # `--output /dev/null` run as root renamed a plain file over /dev/null, breaking it for the whole machine;
    # a FIFO stands for the device here (no privileges needed), read without blocking.
    import json
    import os
    import stat

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert main(["data", "audit", "synthetic", "--param", "n_train=8", "--param", "n_val=0", "--param",
                     "n_test=4", "--param", "image_size=32", "--folds", "2", "--output", str(fifo)]) == 0
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        assert json.loads(os.read(reader, 1 << 16))["dataset"] == "synthetic"
    finally:
        os.close(reader)
    capsys.readouterr()
    run = tmp_path / "run"
    run.mkdir()
    (run / "grid.yaml").write_text("name: x\n")
    assert main(["export", str(run), "--what", "segmentations", "--format", "geojson", "--output", str(fifo)]) == 2
    assert "is a device or a pipe, not a file" in one_error_line(capsys)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.parametrize("command", ["run", "loop"])
def test_a_grid_that_is_a_folder_is_not_said_to_be_missing(registry, tmp_path, capsys, command):
    # A run folder given as the grid: it exists, and the message points at the copy of the grid inside it.
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    grid = tmp_path / "runs" / "quickstart"
    assert main([command, "--grid", str(grid), "--out", str(tmp_path / "r"), "--dry-run"]) == 2
    line = one_error_line(capsys)
    assert "is a folder" in line and str(grid / "grid.yaml") in line and "does not exist" not in line


# A misspelt target layer used to pass the dry run and fail every CAM cell after the trainings.
@pytest.mark.parametrize("backbone, expected", [
    ("{name: resnet18, weights: none, target_layer: layer9}", "resnet18 has no module 'layer9'"),
    ("{name: timm, params: {name: vit_tiny_patch16_224}, model_args: {depth: 1, embed_dim: 16, num_heads: 1, "
     "img_size: 32, patch_size: 8}, target_layer: blocks.3}", "='blocks.3': no '3' in Sequential"),
])
def test_a_target_layer_the_backbone_lacks_fails_the_dry_run(registry, tmp_path, capsys, backbone, expected):
    path = tmp_path / "g.yaml"
    path.write_text(TINY_GRID.format(noise="").replace("{name: resnet18, weights: none}", backbone))
    assert main(["run", "--grid", str(path), "--out", str(tmp_path / "r"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: cannot start the run:") and expected in err
    assert not (tmp_path / "r").exists()


# An unset shell variable ($OUT, $URL) makes an empty argument: it used to mean "the default" silently.
@pytest.mark.parametrize("argv", [["run", "--out", ""], ["loop", "--out", " "], ["data", "fetch", "kahikatea", "--url", ""],
                                  ["data", "fetch", "kahikatea", "--sha256", ""]])
def test_an_empty_out_url_or_checksum_is_refused(registry, tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    if argv[0] in ("run", "loop"):
        argv = [argv[0], "--grid", str(grid_file(tmp_path)), *argv[1:]]
    assert main(argv) == 2
    assert "is empty" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["g.yaml"] if argv[0] in ("run", "loop") else [])
