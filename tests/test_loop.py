"""The annotation loop: rounds of fine-tuning on accepted segmentations, measured against references."""

import json

import numpy as np
import pandas as pd
import pytest

from xaibench import hookimpl
from xaibench.commands.cli import main

# timm's tiny test_resnet: the loop, not the architecture, is under test
GRID = """\
name: tiny-loop
seeds: {seeds}
datasets: [{{name: blobs, n: 12}}]
backbones: [{{name: timm, params: {{name: test_resnet}}}}]
masks: [white]
ensembles: [{{name: logit-mix, alpha: 0.5}}]
explainers: [gradcam]
seeders: [{{name: top-k, k: 2, min_distance: 4}}]
segmenters: [random-walker]
train: {{epochs: 1, batch_size: 8}}
finetune: {{epochs: 1, batch_size: 8}}
loop: {{rounds: {rounds}, acceptors: [{acceptors}], min_changed: {min_changed}}}
"""


class Square:
    """Accepts, for every image, the same square in place of the annotation."""

    def __init__(self, *, side: int = 8):
        self.side = side

    def __call__(self, annotation, proposal, *, saliency, score):
        square = np.zeros_like(annotation)
        square[: self.side, : self.side] = True
        return square


class Grow:
    """Accepts the annotation grown by one pixel, so every round changes it."""

    def __call__(self, annotation, proposal, *, saliency, score):
        grown = annotation.copy()
        grown[1:] |= annotation[:-1]
        grown[:, 1:] |= annotation[:, :-1]
        return grown


class Take:
    """Accepts every segmentation as it is."""

    def __call__(self, annotation, proposal, *, saliency, score):
        return proposal


class SquareOnce:
    """Accepts the square, and fails on an image whose annotation already is the square (round 1)."""

    def __call__(self, annotation, proposal, *, saliency, score):
        square = Square()(annotation, proposal, saliency=saliency, score=score)
        if np.array_equal(annotation, square):
            raise RuntimeError("no second round")
        return square


class Never:
    def __call__(self, annotation, proposal, *, saliency, score):
        return None


class Broken:
    def __call__(self, annotation, proposal, *, saliency, score):
        return np.zeros((3, 3), bool)


class Acceptors:
    @hookimpl
    def register_acceptors(self, register):
        register("square", Square)
        register("never", Never)
        register("grow", Grow)
        register("take", Take)
        register("square-once", SquareOnce)
        register("broken", Broken)


@pytest.fixture
def loop_grid(registry, blobs, add_plugin, write_grid, tmp_path):
    add_plugin(Acceptors(), name="test-acceptors")

    def run(rounds=2, acceptors="square", seeds="[0]", min_changed=0.0):
        path = write_grid(GRID.format(rounds=rounds, acceptors=acceptors, seeds=seeds, min_changed=min_changed))
        code = main(["loop", "--grid", str(path), "--out", str(run.out), "--quiet"])
        info = json.loads((run.out / "loop.json").read_text()) if (run.out / "loop.json").exists() else None
        return code, info

    run.out = tmp_path / "loop"
    return run


def _blob_references(n=12):
    from tests.conftest import BlobDataset

    train = BlobDataset(n=n).split("train")
    return [s.mask for s in train if s.mask is not None]


def test_accepted_annotations_train_the_next_round(loop_grid):
    code, info = loop_grid(rounds=2, acceptors="square", seeds="[0, 1]")
    assert code == 0
    seeds = pd.read_csv(loop_grid.out / "loop_seeds.csv")
    # the square replaces every annotation in round 0; round 1 changes nothing more and converges
    assert list(seeds.sort_values(["seed", "round"])["round"]) == [0, 1, 0, 1]
    assert list(seeds.sort_values(["seed", "round"])["status"]) == ["done", "converged"] * 2
    references = _blob_references()
    square = np.zeros_like(references[0])
    square[:8, :8] = True
    expected = np.mean([(square & r).sum() / (square | r).sum() for r in references])
    by_round = seeds.groupby("round")["annotation_iou"].mean()
    assert by_round[0] == pytest.approx(1.0)  # the dataset's own annotations are their own reference
    assert by_round[1] == pytest.approx(expected)
    assert set(seeds["reference"]) == {"original annotations"}
    assert seeds.loc[seeds["round"] == 0, "changed"].tolist() == [1.0, 1.0]
    # one baseline and one masked model per seed and round actually run: 2 × (1 + 2)
    assert info["trainings_run"] == 6
    summary = pd.read_csv(loop_grid.out / "loop.csv")
    assert list(summary["round"]) == [0, 1, 2]  # round 2 carries the converged chains forward
    assert list(summary["seeds"]) == [2, 2, 2]
    assert summary.loc[2, "annotation_iou"] == pytest.approx(expected)
    assert summary.loc[1, "annotation_iou_change"] == pytest.approx(expected - 1.0)
    assert summary.loc[1, "annotation_iou_change_ci_low"] == pytest.approx(expected - 1.0)  # same data, both seeds


def test_a_round_trains_on_its_annotations(loop_grid, registry):
    """The round-1 model is fine-tuned on the accepted masks: its stage depends on the accept stage and
    its weights differ from round 0's, while round 0 shares its key with ``xaibench run``."""
    from xaibench.pipeline.grid import expand, load_grid
    from xaibench.pipeline.plan import build_plan, plan_loop

    loop_grid(rounds=1, acceptors="square")
    path = loop_grid.out / "grid.yaml"
    planner = plan_loop(path, registry)
    builder = planner.builder
    first = planner.round(planner.chains[0], 0, None)
    second = planner.round(planner.chains[0], 1, first.accept)
    plan = build_plan(load_grid(path, registry), expand(load_grid(path, registry)), registry)
    run_keys = {s.key for s in plan.stages.values() if s.kind == "finetune"}
    finetunes = [k for k, s in builder.stages.items() if s.kind == "finetune"]
    round0 = next(k for k in finetunes if first.accept not in builder.stages[k].deps)
    round1 = next(k for k in finetunes if first.accept in builder.stages[k].deps)
    assert round0 in run_keys and round1 not in run_keys
    weights = [(loop_grid.out / "cache" / "models" / f"{k}.safetensors").read_bytes() for k in (round0, round1)]
    assert weights[0] != weights[1]
    assert second.annotations == first.accept


def test_a_rule_that_accepts_nothing_converges_after_round_zero(loop_grid):
    code, info = loop_grid(rounds=3, acceptors="never")
    assert code == 0
    seeds = pd.read_csv(loop_grid.out / "loop_seeds.csv")
    assert list(seeds["round"]) == [0] and set(seeds["status"]) == {"converged"}
    assert info["trainings_run"] == 2 and info["chains_converged"] == 1
    summary = pd.read_csv(loop_grid.out / "loop.csv")
    assert list(summary["round"]) == [0, 1, 2, 3]
    assert summary["accuracy"].nunique() == 1 and (summary["accuracy_change"] == 0).all()


def test_the_loop_resumes_and_extends(loop_grid):
    loop_grid(rounds=1, acceptors="square, grow")
    _, info = loop_grid(rounds=1, acceptors="square, grow")
    assert info["trainings_run"] == 0 and info["stages_run"] == 0
    _, extended = loop_grid(rounds=2, acceptors="square, grow")
    seeds = pd.read_csv(loop_grid.out / "loop_seeds.csv")
    # square's annotations stopped changing in round 1, grow's did not: one new fine-tune, grow's round 2
    assert extended["trainings_run"] == 1
    assert list(seeds.loc[seeds["round"] == 2, "acceptor"]) == ["grow"]
    assert seeds.loc[(seeds["round"] == 1) & (seeds["acceptor"] == "square"), "status"].item() == "converged"
    saved = loop_grid.out / "grid.yaml"  # rerunning from the folder's own copy of the grid
    for command in ("loop", "run"):
        assert main([command, "--grid", str(saved), "--out", str(loop_grid.out), "--quiet"]) == 0


def test_a_broken_acceptor_fails_its_chains_and_says_why(loop_grid, capsys):
    code, info = loop_grid(rounds=2, acceptors="broken")
    assert code == 1
    seeds = pd.read_csv(loop_grid.out / "loop_seeds.csv")
    assert set(seeds["status"]) == {"failed"} and info["chains_failed"] == 1
    error = seeds["error"].iloc[0]
    assert "acceptor 'broken' (plugin 'test-acceptors'" in error and "the returned annotation has shape (3, 3)" in error


@pytest.mark.parametrize("edit, message", [
    ("segmenters: [random-walker]", "the annotation loop needs seeders, segmenters"),
    ("acceptors: [square]", "unknown acceptor 'sqaure'"),
])
def test_grid_mistakes_exit_2_and_write_nothing(loop_grid, write_grid, capsys, edit, message):
    text = GRID.format(rounds=1, acceptors="square", seeds="[0]", min_changed=0.0)
    if edit.startswith("segmenters"):
        text = text.replace("seeders: [{name: top-k, k: 2, min_distance: 4}]\n", "").replace(edit + "\n", "")
    else:
        text = text.replace("acceptors: [square]", "acceptors: [sqaure]")
    path = write_grid(text, "bad.yaml")
    assert main(["loop", "--grid", str(path), "--out", str(loop_grid.out)]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not loop_grid.out.exists()


def test_the_report_shows_every_round_and_embeds_its_figures(loop_grid):
    loop_grid(rounds=1, acceptors="square")
    text = (loop_grid.out / "loop_report.html").read_text()
    assert text.count("<table>") == 2  # one configuration, and the per-seed rows
    assert text.count("data:image/png;base64,") == 2  # rounds and annotations
    assert "the reference is the original annotation" in text
    assert "http://" not in text and "https://" not in text


def test_summary_intervals_over_seeds_and_carry_forward():
    from xaibench.presentation.loop_tables import LABELS, summarise

    base = {k: "x" for k in LABELS}
    rows = []
    for seed, values, status in ((0, [0.5, 0.7, 0.8], "done"), (1, [0.6, 0.7], "converged"), (2, [0.4, 0.6, 0.9], "done")):
        for round_, value in enumerate(values):
            rows.append({**base, "seed": seed, "round": round_, "status": status if round_ == len(values) - 1 else "done",
                         "reference": "exact", **{m: value for m in
                                                  ("accuracy", "jaccard", "annotation_iou", "proposal_iou",
                                                   "accepted", "changed")}})
    summary = summarise(pd.DataFrame(rows), rounds=2)
    last = summary[summary["round"] == 2].iloc[0]
    values = np.array([0.8, 0.7, 0.9])  # seed 1 carried forward from round 1
    assert last["seeds"] == 3 and last["accuracy"] == pytest.approx(values.mean())
    half = 4.302652729911275 * values.std(ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert last["accuracy_ci_low"] == pytest.approx(values.mean() - half)
    changes = values - np.array([0.5, 0.6, 0.4])
    assert last["accuracy_change"] == pytest.approx(changes.mean())


def test_run_and_loop_share_a_folder_and_round_zero(loop_grid, write_grid):
    grid = write_grid(GRID.format(rounds=1, acceptors="square", seeds="[0]", min_changed=0.0), "shared.yaml")
    assert main(["run", "--grid", str(grid), "--out", str(loop_grid.out), "--quiet"]) == 0
    run_figures = set((loop_grid.out / "figures").glob("*.png"))
    assert main(["loop", "--grid", str(grid), "--out", str(loop_grid.out), "--quiet"]) == 0
    info = json.loads((loop_grid.out / "loop.json").read_text())
    assert info["trainings_reused"] == 2 and info["trainings_run"] == 1  # baseline and round 0 from the run
    # the loop's numbers name their machine as the run's do (xaibench.machine)
    run_info = json.loads((loop_grid.out / "run.json").read_text())
    assert {k: info[k] for k in ("cpu", "cpu_isa", "cpu_count", "torch")} == \
        {k: run_info[k] for k in ("cpu", "cpu_isa", "cpu_count", "torch")}
    assert "Computed on " + info["cpu"] in (loop_grid.out / "loop_report.html").read_text()
    board = pd.read_csv(loop_grid.out / "leaderboard.csv")
    run_accuracy = board.loc[board["mask"] == "white", "accuracy"].item()
    loop_rows = pd.read_csv(loop_grid.out / "loop_seeds.csv")
    assert loop_rows.loc[loop_rows["round"] == 0, "accuracy"].item() == pytest.approx(run_accuracy)
    assert main(["run", "--grid", str(grid), "--out", str(loop_grid.out), "--quiet"]) == 0
    figures = set((loop_grid.out / "figures").glob("*.png"))
    assert run_figures < figures and {p.name for p in figures - run_figures} == {"loop_rounds.png",
                                                                                  "loop_annotations_1.png"}
    assert (loop_grid.out / "report.html").is_file() and (loop_grid.out / "loop_report.html").is_file()


def test_dry_run_lists_the_chains_and_writes_nothing(loop_grid, write_grid, capsys):
    grid = write_grid(GRID.format(rounds=3, acceptors="square, never", seeds="[0, 1]", min_changed=0.0))
    assert main(["loop", "--grid", str(grid), "--out", str(loop_grid.out), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 chain(s), up to 3 round(s) after round 0, at most 16 masked trainings" in out
    assert "acceptor=" not in out and "--verbose lists every chain" in out
    assert main(["loop", "--grid", str(grid), "--out", str(loop_grid.out), "--dry-run", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert out.count("acceptor=square") == 2 and out.count("acceptor=never") == 2
    assert not loop_grid.out.exists()


def test_accepted_segmentations_are_the_next_annotations(loop_grid):
    loop_grid(rounds=1, acceptors="take")
    seeds = pd.read_csv(loop_grid.out / "loop_seeds.csv").set_index("round")
    # round 1 trains on round 0's segmentations, so its annotations score exactly what they scored
    assert seeds.loc[1, "annotation_iou"] == pytest.approx(seeds.loc[0, "proposal_iou"])
    assert seeds.loc[0, "accepted"] == 1.0


def test_a_chain_stopped_by_min_changed_is_not_carried_forward(loop_grid):
    loop_grid(rounds=2, acceptors="square", min_changed=1.0)
    seeds = pd.read_csv(loop_grid.out / "loop_seeds.csv")
    assert list(seeds["status"]) == ["stopped"] and seeds["changed"].item() == 1.0
    assert list(pd.read_csv(loop_grid.out / "loop.csv")["round"]) == [0]
    assert json.loads((loop_grid.out / "loop.json").read_text())["chains_stopped"] == 1


def test_a_failed_renewal_keeps_the_rounds_model_measurements(loop_grid):
    code, info = loop_grid(rounds=2, acceptors="square-once")
    assert code == 1 and info["chains_failed"] == 1
    seeds = pd.read_csv(loop_grid.out / "loop_seeds.csv").set_index("round")
    assert list(seeds["status"]) == ["done", "failed"] and "no second round" in seeds.loc[1, "error"]
    assert np.isfinite(seeds.loc[1, ["accuracy", "jaccard", "annotation_iou"]].astype(float)).all()
    assert np.isnan(seeds.loc[1, "changed"])
    assert list(pd.read_csv(loop_grid.out / "loop.csv")["round"]) == [0, 1]


def test_noisy_annotations_are_measured_against_the_exact_masks(loop_grid, registry, write_grid, tmp_path):
    noise = "{dilate: 2, shift: 1}"
    dataset = f"{{name: synthetic, n_train: 16, n_val: 0, n_test: 8, image_size: 32, annotation_noise: {noise}}}"
    text = GRID.format(rounds=1, acceptors="never", seeds="[0]", min_changed=0.0)
    text = text.replace("datasets: [{name: blobs, n: 12}]", f"datasets: [{dataset}]")
    assert main(["loop", "--grid", str(write_grid(text)), "--out", str(tmp_path / "noisy"), "--quiet"]) == 0
    seeds = pd.read_csv(tmp_path / "noisy" / "loop_seeds.csv")
    train = registry.create("datasets", "synthetic", n_train=16, n_val=0, n_test=8, image_size=32,
                            annotation_noise={"dilate": 2, "shift": 1}).split("train")
    pairs = [(s.mask, s.reference) for s in train if s.mask is not None]
    expected = np.mean([(m & r).sum() / (m | r).sum() for m, r in pairs])
    assert seeds["reference"].item() == "exact"
    assert seeds["annotation_iou"].item() == pytest.approx(expected) and expected < 0.9
