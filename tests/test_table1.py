"""The paper's Table I grid validates, names the published table, and says how to get missing data."""

from pathlib import Path

from xaibench.commands.cli import main
from xaibench.pipeline.grid import expand, load_grid

ROOT = Path(__file__).resolve().parents[1]


def test_table1_grid_is_the_papers_protocol(registry):
    grid = load_grid(ROOT / "grids" / "table1.yaml", registry)
    assert [d.name for d in grid.datasets] == ["kahikatea", "lcdb-waikato"]
    assert grid.backbones[0].params["weights"] == "imagenet"
    assert {m.name for m in grid.masks} == {"blur", "white", "median", "black"}
    assert sorted(grid.ensembles[0].sweep["alpha"]) == [0.8, 0.9, 1.0]
    assert Path(grid.published) == ROOT / "leaderboards" / "published" / "table1.csv"
    assert len(expand(grid)) == 2 * 3 * (1 + 4 * 3)


def test_table1_without_data_says_how_to_fetch_it(registry, tmp_path, monkeypatch, capsys):
    from torchvision.models import ResNet18_Weights

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XAIBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--grid", str(ROOT / "grids" / "table1.yaml"), "--out", str(tmp_path / "out"), "--dry-run"])
    assert code == 2
    err = capsys.readouterr().err
    # every problem at once: both datasets and the weights
    assert "xaibench data fetch kahikatea" in err
    assert "xaibench data prepare lcdb-waikato" in err
    assert "resnet18-f37072fd.pth" in err and "weights: none" in err
    assert not (tmp_path / "out").exists()
