"""grids/backbones.yaml (ResNet18, ConvNeXt, Swin and a ViT on the synthetic task) plans, and the timm
backbone's ``model_args`` shape the model it builds and refuse what timm or xaibench cannot take."""

from pathlib import Path

import pytest
import torch

from xaibench.commands.cli import main
from xaibench.pipeline.grid import expand, load_grid

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "grids" / "backbones.yaml"


def test_backbones_grid_dry_runs_four_families_without_downloads(registry, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    grid = load_grid(GRID, registry)
    names = [(b.name, b.params.get("name")) for b in grid.backbones]
    assert names == [("resnet18", None), ("timm", "convnext_atto"), ("timm", "swin_tiny_patch4_window7_224"),
                     ("timm", "vit_tiny_patch16_224")]
    assert all(not b.params.get("pretrained", False) and b.params.get("weights", "none") == "none"
               for b in grid.backbones)
    assert len(expand(grid)) == 4 * len(grid.explainers)

    code = main(["run", "--grid", str(GRID), "--out", str(tmp_path / "out"), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "4 trainings" in out and "not fetched" not in out
    assert not (tmp_path / "out").exists() and not (tmp_path / "torch").exists()


def test_model_args_shape_the_timm_model(registry):
    backbone = registry.create("backbones", "timm", name="vit_tiny_patch16_224",
                               model_args={"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 24,
                                           "num_heads": 2})
    model = backbone.build(3).eval()
    assert len(model.net.blocks) == 2 and model.net.embed_dim == 24
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    # a YAML list arrives as a list; timm's Swin takes it as its per-stage depths
    swin = registry.create("backbones", "timm", name="swin_tiny_patch4_window7_224",
                           model_args={"img_size": 32, "window_size": 4, "embed_dim": 16, "depths": [1, 1],
                                       "num_heads": [1, 2]}).build(2)
    assert [len(layer.blocks) for layer in swin.net.layers] == [1, 1]


@pytest.mark.parametrize("model_args, expected", [
    ("{img_size: 32, depht: 2}", "does not take model_args ['depht', 'img_size']"),
    ("{num_classes: 5}", "model_args ['num_classes'] are set by xaibench"),
    ("{in_chans: 4}", "model_args ['in_chans'] are set by xaibench"),
])
def test_model_args_a_model_cannot_take_are_one_error_line(registry, tmp_path, capsys, model_args, expected):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "datasets: [{name: synthetic, n_train: 8, n_val: 4, n_test: 4, image_size: 32}]\n"
        "backbones:\n"
        f"  - {{name: timm, params: {{name: vit_tiny_patch16_224}}, model_args: {model_args}}}\n"
        "explainers: [gradcam]\n"
    )
    code = main(["run", "--grid", str(grid), "--out", str(tmp_path / "out"), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and "vit_tiny_patch16_224" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_params_mapping_gives_parameters_named_like_entry_keys(registry, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "datasets: [{name: synthetic, n_train: 8, n_val: 4, n_test: 4, image_size: 32}]\n"
        "backbones:\n"
        "  - {name: timm, params: {name: resnet10t}, target_layer: layer4}\n"
    )
    (backbone,) = load_grid(grid, registry).backbones
    assert backbone.name == "timm" and backbone.params == {"name": "resnet10t", "target_layer": "layer4"}

    grid.write_text(grid.read_text().replace("params: {name: resnet10t}", "params: {name: resnet10t, "
                                                                          "target_layer: layer3}"))
    code = main(["run", "--grid", str(grid), "--out", str(tmp_path / "out"), "--dry-run"])
    assert code == 2
    assert "both inside 'params' and beside it: ['target_layer']" in capsys.readouterr().err


def test_a_model_that_cannot_be_built_on_the_meta_device_still_plans(registry, tmp_path, monkeypatch, capsys):
    import timm

    real = timm.create_model

    def needs_real_tensors(*args, **kwargs):
        if torch.empty(0).device.type == "meta":
            raise RuntimeError("Tensor.item() cannot be called on meta tensors")
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", needs_real_tensors)
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "datasets: [{name: synthetic, n_train: 8, n_val: 4, n_test: 4, image_size: 32}]\n"
        "backbones:\n  - {name: timm, params: {name: resnet10t}, model_args: {stem_width: 16}}\n"
    )
    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "1 trainings" in capsys.readouterr().out
