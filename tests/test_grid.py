import pytest

from xaibench.commands.cli import main
from xaibench.errors import GridError
from xaibench.pipeline.grid import expand, load_grid, parse_grid

GRID = """\
name: t
seeds: [0, 1]
datasets:
  - name: blobs
    size: 32
backbones: [resnet18]
masks: [white, black, median, blur]
ensembles:
  - name: logit-mix
    sweep: {alpha: [0.8, 0.9, 1.0]}
explainers: [gradcam]
seeders: [{name: top-k, k: 2}]
segmenters: [random-walker, watershed]
"""


def test_expansion_is_the_cross_product_with_a_baseline_per_seed(registry, blobs):
    grid = parse_grid(GRID, registry=registry)
    cells = expand(grid)
    # per seed: (1 baseline + 4 masks x 3 alphas) variants x 1 explainer x (1 seeder x 2 segmenters)
    assert len(cells) == 2 * (1 + 4 * 3) * 2
    assert len({c.cell_id for c in cells}) == len(cells)
    baseline = [c for c in cells if c.mask is None]
    assert len(baseline) == 2 * 2 and all(c.ensemble is None for c in baseline)
    alphas = sorted({c.ensemble.params["alpha"] for c in cells if c.ensemble})
    assert alphas == [0.8, 0.9, 1.0]


def test_plan_shares_trainings_across_alphas_explainers_and_segmenters(registry, blobs):
    from xaibench.pipeline.plan import build_plan

    grid = parse_grid(GRID, registry=registry)
    plan = build_plan(grid, expand(grid), registry)
    assert plan.count("train") == 2  # one baseline per seed
    assert plan.count("finetune") == 8  # 4 masks per seed
    # alpha=1.0 reduces to the baseline, so its explanation is the baseline's: 1 + 4 masks x 2 alphas per seed
    assert plan.count("explain") == 2 * 2 * (1 + 4 * 2)  # of test and of val
    assert plan.count("faithfulness") == 2 * (1 + 4 * 2)


def _error(registry, text):
    with pytest.raises(GridError) as err:
        parse_grid(text, "g.yaml", registry=registry)
    return str(err.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        (GRID.replace("name: blobs", "name: blobz"), ["g.yaml:4:11", "Did you mean 'blobs'?"]),
        (GRID.replace("size: 32", "sise: 32"), ["g.yaml:5:5", "unknown parameter (accepted: size, n, seed)"]),
        (GRID.replace("size: 32", "size: big"), ["g.yaml:5:11", "valid integer"]),
        (GRID.replace("[0.8, 0.9, 1.0]", "[0.8, 1.5]"), ["g.yaml:10:26", "sweep.alpha[1]", "less than or equal to 1"]),
        (GRID.replace("[0.8, 0.9, 1.0]", "[]"), ["g.yaml:10:20", "at least 1 item"]),
        (GRID.replace("[0.8, 0.9, 1.0]", "[0.8, 0.8]"), ["g.yaml:10:12", "repeats a value"]),
        (GRID.replace("seeds: [0, 1]", "seeds: []"), ["g.yaml:2:8", "at least 1 item"]),
        (GRID.replace("seeds: [0, 1]", "seeds: [1, 1]"), ["g.yaml:2:8", "repeat a value"]),
        (GRID.replace("explainers: [gradcam]", "explainers: [gradcam]\nepochs: 3"), ["g.yaml:12:1", "unknown key"]),
        (GRID + "train: {epochs: -1}\n", ["g.yaml:14:17", "train.epochs", "greater than or equal to 1"]),
        (GRID.replace("backbones: [resnet18]", "backbones: [resnet18"), ["g.yaml:", "YAML syntax error"]),
        (GRID.replace("explainers: [gradcam]\n", ""), ["seeders need at least one explainer"]),
        (GRID + "published: nope.csv\n", ["g.yaml:14:12", "published: file", "nope.csv' does not exist"]),
    ],
)
def test_grid_errors_name_the_yaml_location(registry, blobs, text, expected):
    message = _error(registry, text)
    for fragment in expected:
        assert fragment in message, message


def test_missing_grid_file(registry, tmp_path):
    with pytest.raises(GridError, match="does not exist"):
        load_grid(tmp_path / "nope.yaml", registry)


def test_cli_bad_grid_exits_2_and_writes_nothing(registry, blobs, write_grid, tmp_path, capsys):
    path = write_grid(GRID.replace("name: white", "name: whit").replace("[white,", "[whit,"))
    out = tmp_path / "out"
    assert main(["run", "--grid", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid grid") and "Did you mean 'white'?" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_dry_run_prints_cells_and_trainings_and_writes_nothing(registry, blobs, write_grid, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--grid", str(write_grid(GRID)), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "52 cells" in printed and "10 trainings (2 baseline, 8 masked fine-tunes)" in printed
    assert "axes: seeds 2, datasets 1, backbones 1, masks 4, ensembles 3, explainers 1, seeders 1, segmenters 2" in printed
    assert "stages: data 1, train 2, logits 10, explain 36, faithfulness 18, seeds 18, finetune 8, segment 36" in printed
    assert "| mask=" not in printed and "--verbose lists every cell" in printed
    assert main(["run", "--grid", str(write_grid(GRID)), "--out", str(out), "--dry-run", "--verbose"]) == 0
    assert capsys.readouterr().out.count("| mask=") == 52
    assert not out.exists()


def test_a_dry_run_imports_no_torch(registry, tmp_path):
    import subprocess
    import sys

    grid = tmp_path / "g.yaml"
    grid.write_text(GRID.replace("name: blobs\n    size: 32", "name: synthetic"))
    code = ("import sys; from xaibench.commands.cli import main; "
            "code = main(['run', '--grid', sys.argv[1], '--dry-run']); "
            "print('torch' in sys.modules); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, str(grid)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_location_parameters_stay_out_of_cache_keys(registry, blobs, monkeypatch):
    """Moving a dataset's folder (same fingerprint) must not retrain anything."""
    from conftest import BlobDataset

    from xaibench.pipeline.plan import build_plan

    monkeypatch.setattr(BlobDataset, "location_params", ("seed",), raising=False)
    keys = []
    for seed in (0, 1):
        grid = parse_grid(GRID.replace("size: 32", f"size: 32\n    seed: {seed}"), registry=registry)
        plan = build_plan(grid, expand(grid), registry)
        keys.append({k for k, s in plan.stages.items() if s.kind in ("data", "train")})
    assert keys[0] != set()
    # BlobDataset's fingerprint includes its seed, so here content differs and keys must differ too
    assert keys[0] != keys[1]
    monkeypatch.setattr(BlobDataset, "fingerprint", lambda self: "same-content")
    again = []
    for seed in (0, 1):
        grid = parse_grid(GRID.replace("size: 32", f"size: 32\n    seed: {seed}"), registry=registry)
        again.append({k for k, s in build_plan(grid, expand(grid), registry).stages.items() if s.kind == "train"})
    assert again[0] == again[1]


def test_grids_are_read_with_a_safe_loader(registry, blobs, tmp_path):
    marker = tmp_path / "ran"
    text = GRID.replace("name: t\n", f"name: !!python/object/apply:os.system ['touch {marker}']\n", 1)
    with pytest.raises(GridError, match="g.yaml:1:7"):
        parse_grid(text, "g.yaml", registry=registry)
    assert not marker.exists()


BOMB = ("l0: &l0 [x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 10)))


@pytest.mark.parametrize("edit, expected", [
    (lambda g: g.replace("    size: 32\n", "    size: 32\n    size: 9999\n"),
     ["g.yaml:6:5: key 'size' is given twice (first at line 5)"]),
    (lambda g: g + "train: {lr: .inf}\n", ["g.yaml:14:13: '.inf' is not a finite number"]),
    (lambda g: g + "train: {lr: 1e400}\n", ["g.yaml:14:13: train.lr: Input should be a finite number"]),
    (lambda g: g + "train: {epochs: true}\n", ["g.yaml:14:17: train.epochs: true is a boolean; a number is expected"]),
    (lambda g: g.replace("[0.8, 0.9, 1.0]", "[0.8, true]"),
     ["g.yaml:10:26: ensembles[0].sweep.alpha[1]: logit-mix: true is a boolean; a number is expected"]),
    (lambda g: g.replace("[0.8, 0.9, 1.0]", "['0.8', 0.8]"),
     ["g.yaml:10:28: ensembles[0].sweep.alpha[1]: logit-mix: 0.8 is the same value as sweep.alpha[0] once read"]),
    (lambda g: g.replace("seeds: [0, 1]", "seeds: [-1]"), ["g.yaml:2:9: seeds[0]", "greater than or equal to 0"]),
    (lambda g: g + "device: tpu9\n", ["g.yaml:14:9: device: 'tpu9' is not a device; use auto"]),
    (lambda g: g + "x: " + "[" * 5000 + "]" * 5000 + "\n", ["the grid nests deeper than 64 levels"]),
    (lambda g: g + BOMB + "extra: *l9\n", ["the grid expands to more than 100,000 values"]),
    (lambda g: g + "a: &a [1, *a]\n", ["g.yaml:14:4: a YAML alias refers to a node that contains it"]),
])
def test_hostile_grids_are_one_error_with_a_location_and_write_nothing(registry, blobs, write_grid, tmp_path, capsys,
                                                                      edit, expected):
    path = write_grid(edit(GRID), "g.yaml")
    out = tmp_path / "out"
    assert main(["run", "--grid", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.replace(str(path), "g.yaml")
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in expected:
        assert fragment in err, err
    assert not out.exists()


def test_a_grid_that_is_not_utf8_names_the_byte_and_its_place(registry, blobs, tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_bytes(GRID.encode().replace(b"name: t\n", b"name: t\xe9st\n"))
    assert main(["run", "--grid", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1:8: byte 0xe9 is not UTF-8" in err and not (tmp_path / "out").exists()


def test_numbers_written_without_a_dot_are_still_numbers(registry, blobs):
    grid = parse_grid(GRID + "train: {lr: 1e-3}\n", registry=registry)  # YAML 1.1 reads 1e-3 as a string
    assert grid.train.lr == 0.001


def test_a_partial_finetune_mapping_keeps_fine_tunings_own_defaults(registry, blobs):
    grid = parse_grid(GRID + "finetune: {epochs: 1}\n", registry=registry)
    assert (grid.finetune.epochs, grid.finetune.lr) == (1, 1e-4)  # not the first training's 1e-3
    assert (grid.train.lr, parse_grid(GRID, registry=registry).finetune.lr) == (1e-3, 1e-4)
    assert parse_grid(GRID + "finetune: {lr: 0.01}\n", registry=registry).finetune.epochs == 3
