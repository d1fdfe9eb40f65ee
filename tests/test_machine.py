"""Every table says which machine computed it: run.json, the report and leaderboard.md name the CPU and the
instruction set PyTorch's kernels ran with, and `xaibench leaderboard` repeats it for every folder merged."""

import html
import json

import torch

from xaibench import machine
from xaibench.commands.cli import main

GRID = """\
name: machine
seeds: [0]
datasets:
  - {name: synthetic, n_train: 16, n_val: 0, n_test: 8, image_size: 32}
backbones: [resnet18]
masks: [white]
ensembles: [{name: logit-mix, alpha: 0.5}]
explainers: [gradcam]
seeders: [{name: top-k, k: 1}]
segmenters: [random-walker]
train: {epochs: 1, batch_size: 8}
finetune: {epochs: 1, batch_size: 8}
protocol: {faithfulness_steps: 0}
"""


def test_run_json_report_and_leaderboards_name_the_cpu_and_its_instruction_set(registry, write_grid, tmp_path,
                                                                              monkeypatch, capsys):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # recorded as a limit, whatever it does to the kernels
    out = tmp_path / "run"
    assert main(["run", "--grid", str(write_grid(GRID)), "--out", str(out), "--quiet"]) == 0
    info = json.loads((out / "run.json").read_text())
    isa = torch.backends.cpu.get_cpu_capability()
    assert info["cpu_isa"] == isa and info["cpu"] == machine.cpu_model() and info["cpu"]
    assert info["isa_limits"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    expected = f"Computed on {info['cpu']} ({isa}, limited by ONEDNN_MAX_CPU_ISA=AVX2), {info['cpu_count']} cores"
    assert expected in (out / "leaderboard.md").read_text()
    assert "sanity_spearman" not in (out / "leaderboard.md").read_text()  # not measured, not explained
    report = html.unescape((out / "report.html").read_text())
    assert expected in report and f'"cpu_isa": "{isa}"' in report
    capsys.readouterr()

    # a second folder from "another machine": the merged leaderboard names both
    other = tmp_path / "other"
    assert main(["run", "--grid", str(write_grid(GRID.replace("seeds: [0]", "seeds: [1]"), "other.yaml")),
                 "--out", str(other), "--quiet"]) == 0
    record = json.loads((other / "run.json").read_text())
    record.update(cpu="Another CPU", cpu_isa="AVX512", isa_limits={})
    (other / "run.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["leaderboard", str(out), str(other)]) == 0
    printed = capsys.readouterr().out
    assert expected in printed and "Another CPU (AVX512)" in printed
    assert "These numbers are for that machine" in printed
    assert main(["leaderboard", str(out), "--format", "latex"]) == 0
    assert "Computed on " + info["cpu"] in capsys.readouterr().out


def test_a_folder_of_an_older_version_says_nothing_about_its_machine():
    assert machine.sentence([{"grid": "old", "device": "cpu"}]) is None
    assert machine.sentence([]) is None
