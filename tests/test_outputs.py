"""A run never loses its results: runs whose cells all fail, figures that fail to draw, ensemble rules
without a mixing weight, and ``xaibench leaderboard`` on empty, partial and finished run folders."""

import json
import shutil
import subprocess
from html.parser import HTMLParser

import pandas as pd
import pytest

from xaibench import hookimpl
from xaibench.commands.cli import main

GRID = """\
name: tiny-outputs
seeds: [0]
datasets: [{name: blobs, n: 12}]
backbones: [BACKBONE]
masks: [white]
ensembles: [ENSEMBLES]
explainers: [gradcam]
seeders: [{name: top-k, k: 1, min_distance: 4}]
segmenters: [cam-threshold]
train: {epochs: 1, batch_size: 8}
finetune: {epochs: 1, batch_size: 8}
protocol: {faithfulness_steps: 0}
"""


def grid(backbone="resnet18", ensembles="{name: logit-mix, alpha: 0.5}"):
    return GRID.replace("BACKBONE", backbone).replace("ENSEMBLES", ensembles)


@pytest.fixture
def run(registry, blobs, write_grid, tmp_path):
    def go(text, *extra, out=None):
        out = out or tmp_path / "run"
        code = main(["run", "--grid", str(write_grid(text)), "--out", str(out), "--quiet", *extra])
        info = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else None
        return code, info, out

    return go


class Headings(HTMLParser):
    def __init__(self):
        super().__init__()
        self.headings, self.text, self._open = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag in ("h2", "h3"):
            self._open = ""

    def handle_data(self, data):
        self.text.append(data)
        if self._open is not None:
            self._open += data

    def handle_endtag(self, tag):
        if tag in ("h2", "h3") and self._open is not None:
            self.headings.append(self._open)
            self._open = None


def _report(path) -> Headings:
    parser = Headings()
    parser.feed(path.read_text())
    return parser


class BrokenBuild:
    """A backbone whose build always raises."""

    def build(self, num_classes, *, pretrained=True):
        raise RuntimeError("no such architecture here")

    def target_layers(self, model):
        return []


class ShapeShifter:
    """A backbone that builds a different network for loading weights than for training (a state dict
    of the wrong shape)."""

    def build(self, num_classes, *, pretrained=True):
        import torch

        width = 8 if pretrained else 5
        return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(width, num_classes))

    def target_layers(self, model):
        return [model[0]]


class Backbones:
    @hookimpl
    def register_backbones(self, register):
        register("broken-build", BrokenBuild)
        register("shape-shifter", ShapeShifter)


@pytest.mark.parametrize("backbone, stage, message", [
    ("broken-build", "train broken-build", "RuntimeError: no such architecture here"),
    ("shape-shifter", "finetune on white-masked blobs", "size mismatch"),
])
def test_a_run_whose_cells_all_fail_writes_every_result_file(run, add_plugin, capsys, backbone, stage, message):
    add_plugin(Backbones(), name="odd-backbones")
    code, info, out = run(grid(backbone))
    assert code == 1
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err and "Traceback" not in printed.out
    assert info["cells_done"] == 0 and info["cells_failed"] == info["cells"] == 2
    # the failure, with its stage and component, in run.json, printed, and in every table and the report
    (failure,) = [f for f in info["failures"] if f["stage"].startswith(stage)]
    assert message in failure["message"] and failure["component"].startswith(f"backbone '{backbone}' (plugin "
                                                                             "'odd-backbones'")
    assert message in printed.out and "failures (" in printed.out
    table = pd.read_csv(out / "leaderboard.csv")
    assert len(table) == 2 and set(table["status"]) == {"failed"} and table["error"].str.contains(message).all()
    assert "## Failed cells" in (out / "leaderboard.md").read_text()
    report = _report(out / "report.html")
    assert "Failed stages" in report.headings and any(message in t for t in report.text)
    assert info["presentation_errors"] == []


def test_a_figure_that_fails_to_draw_is_recorded_and_the_rest_is_written(run, monkeypatch, capsys):
    from xaibench.presentation import figures

    def broken(*args, **kwargs):
        raise ValueError("cannot draw this")

    with monkeypatch.context() as patched:
        patched.setattr(figures, "fig2_overlays", broken)
        code, info, out = run(grid())
    assert code == 1  # the results are all there, but not every product was written
    assert info["cells_done"] == info["cells"] == 2
    (problem,) = info["presentation_errors"]
    assert problem["what"].startswith("figures/fig2_") and "ValueError: cannot draw this" in problem["error"]
    assert "Traceback" in problem["traceback"]
    assert sorted(info["figures"]) == ["figures/accuracy_vs_alpha_blobs_resnet18.png",
                                       "figures/fig1_masks_blobs.png"]
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard_summary.csv", "report.html"):
        assert (out / name).is_file()
    assert "cannot draw this" in (out / "report.html").read_text()
    printed = capsys.readouterr()
    assert "not written: figures/fig2_" in printed.out and "warning: could not write figures/fig2_" in printed.err
    # once drawing works again, the rerun draws the missing figure (nothing is retrained)
    code, again, _ = run(grid())
    assert code == 0 and again["trainings_run"] == 0 and len(again["figures"]) == 3


class Confident:
    """Per image, the logits of whichever member is more confident: a rule with no mixing weight."""

    def __call__(self, raw_logits, masked_logits):
        import torch

        raw_top = raw_logits.softmax(-1).amax(-1, keepdim=True)
        masked_top = masked_logits.softmax(-1).amax(-1, keepdim=True)
        return torch.where(raw_top >= masked_top, raw_logits, masked_logits)


class Ensembles:
    @hookimpl
    def register_ensembles(self, register):
        register("max-confidence", Confident)


def test_ensemble_rules_without_a_mixing_weight_run_end_to_end(run, add_plugin):
    add_plugin(Ensembles(), name="confident-plugin")
    code, info, out = run(grid(ensembles="prob-mean, max-confidence, {name: logit-mix, alpha: 0.5}"))
    assert code == 0 and info["cells_done"] == info["cells"] == 4
    table = pd.read_csv(out / "leaderboard.csv")
    rules = table.set_index("ensemble")
    assert pd.isna(rules.loc["prob-mean", "alpha"]) and pd.isna(rules.loc["max-confidence", "alpha"])
    assert rules.loc["logit-mix(alpha=0.5)", "alpha"] == 0.5 and rules.loc["baseline", "alpha"] == 1.0
    markdown = (out / "leaderboard.md").read_text()
    assert "| prob-mean |" in markdown and "| max-confidence |" in markdown and "| α=0.5 |" in markdown
    # Fig. 2 names each variant by its rule; the α curve sweeps only the rule with a mixing weight
    assert len(info["figures"]) == 3 and info["presentation_errors"] == []


def test_leaderboard_of_an_empty_folder_is_one_error_line(registry, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["leaderboard", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no store.sqlite" in err
    from xaibench.pipeline.store import Store

    Store(empty).close()  # a run interrupted before any cell was recorded
    for fmt in ("md", "csv", "latex", "html"):
        assert main(["leaderboard", str(empty), "--format", fmt]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "no cell has been recorded yet" in err and "Traceback" not in err


def test_leaderboard_of_a_partial_run_shows_what_it_has(run, add_plugin, capsys):
    add_plugin(Backbones(), name="odd-backbones")
    code, _, out = run(grid("broken-build"))
    assert code == 1
    capsys.readouterr()
    for fmt in ("md", "csv", "latex", "html"):
        assert main(["leaderboard", str(out), "--format", fmt]) == 0, fmt
    printed = capsys.readouterr().out
    assert "## Failed cells" in printed and "No cell finished" in printed


def test_latex_is_table_one_and_compiles(run, tmp_path, capsys):
    code, _, out = run(grid(ensembles="{name: logit-mix, sweep: {alpha: [0.5, 0.8]}}").replace(
        "masks: [white]", "masks: [white, blur]"))
    assert code == 0
    capsys.readouterr()
    assert main(["leaderboard", str(out), "--format", "latex", "--output", str(tmp_path / "t.tex")]) == 0
    tex = (tmp_path / "t.tex").read_text()
    assert r"\usepackage{booktabs}" in tex and r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"Model & white & blur \\" in tex
    assert r"$\alpha = 0.5$ &" in tex and r"$\alpha = 0.8$ &" in tex and "\nBaseline & " in tex
    assert r"{\footnotesize [" in tex  # each mean's CI on the line below
    assert "_" not in tex.replace(r"\_", "")  # every underscore of a label is escaped
    assert tex.count(r"\begin{table}") == 4  # accuracy, Jaccard, MaxBoxAccV2 and segmentation IoU
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not installed")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 1000
