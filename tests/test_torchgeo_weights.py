"""TorchGeo's remote-sensing weights by name (``weights: torchgeo:<Enum>.<MEMBER>``): read from the cache
TorchGeo uses (torch hub's checkpoints folder under TORCH_HOME), normalised as those weights were trained,
never downloaded by a dry run, and refused with one clear line where they cannot be used.

The weight files are written by the tests where TorchGeo looks for them: a state dict saved with
``torch.save`` under the file name of the weights' URL (TorchGeo's ResNet weights are timm's resnet18
without its ``fc`` head)."""

from pathlib import Path

import pytest
import torch

from xaibench.commands.cli import main

MOCO = "ResNet18_Weights.SENTINEL2_RGB_MOCO"


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """TORCH_HOME in a tmp folder, and a network that is down: a download attempt is recorded and fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    downloads = []

    def offline(url, dst, *args, **kwargs):
        downloads.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return downloads


def entry(name: str):
    import torchgeo.models

    return torchgeo.models.get_weight(name)


def write_torchgeo_file(name: str, *, seed: int = 3) -> dict:
    """The state dict TorchGeo would download for ``name`` (a timm resnet18 backbone, random, no head),
    saved at the path its loader reads; returns it."""
    import timm

    torch.manual_seed(seed)
    state = timm.create_model("resnet18", num_classes=0).state_dict()
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry(name).url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def grid_file(tmp_path, backbone: str, *, epochs: int = 1) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(
        "name: tg\n"
        "datasets: [{name: synthetic, n_train: 16, n_val: 8, n_test: 8, image_size: 32}]\n"
        f"backbones:\n  - {backbone}\n"
        "explainers: [gradcam]\n"
        f"train: {{epochs: {epochs}, batch_size: 8}}\n"
        "protocol: {faithfulness_steps: 0}\n"
    )
    return path


def test_the_fixture_is_what_torchgeo_itself_loads(torch_home):
    state = write_torchgeo_file(MOCO)
    loaded = entry(MOCO).get_state_dict()  # TorchGeo's own loader, from the cache under TORCH_HOME
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert torch_home == []


def test_run_trains_from_torchgeo_weights_with_their_normalisation(registry, tmp_path, torch_home, capsys):
    from safetensors.torch import load_file

    state = write_torchgeo_file(MOCO)
    grid = grid_file(tmp_path, f"{{name: resnet18, weights: 'torchgeo:{MOCO}', target_layer: layer3}}")
    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "not fetched" not in capsys.readouterr().out

    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "out")]) == 0
    (model_file,) = (tmp_path / "out").rglob("*.safetensors")
    trained = load_file(str(model_file))
    # SSL4EO-S12's RGB MoCo weights take reflectance as it is (TorchGeo: Normalize(0, 10000) of raw
    # values), so a [0, 1] image is not shifted or scaled; ImageNet's constants would be a wrong input
    assert torch.equal(trained["mean"].flatten(), torch.zeros(3))
    assert torch.equal(trained["std"].flatten(), torch.ones(3))
    # the run started from the file's weights, not from a random initialisation
    built = registry.create("backbones", "resnet18", weights=f"torchgeo:{MOCO}").build(2)
    assert torch.equal(built.net.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
    assert torch.equal(built.mean.flatten(), torch.zeros(3)) and torch.equal(built.std.flatten(), torch.ones(3))
    assert torch_home == []


def test_timm_backbone_takes_torchgeo_weights_of_its_model(registry, torch_home):
    state = write_torchgeo_file(MOCO)
    model = registry.create("backbones", "timm", name="resnet18", weights=f"torchgeo:{MOCO}").build(3)
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"])
    assert model.net.fc.out_features == 3
    assert torch.equal(model.std.flatten(), torch.ones(3))


def test_missing_file_offline_is_one_error_line_naming_url_and_path(tmp_path, torch_home, capsys):
    grid = grid_file(tmp_path, f"{{name: resnet18, weights: 'torchgeo:{MOCO}'}}")
    url = entry(MOCO).url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name

    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "not fetched" in out and url in out and str(cached) in out
    assert torch_home == [] and not cached.exists()  # a dry run downloads nothing

    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if MOCO in line]
    assert url in line and f"save it as {cached}" in line and "network is unreachable" in line
    assert torch_home == [url] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("backbone, expected", [
    ("{name: resnet18, weights: 'torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO'}",
     "take 13 input bands"),
    ("{name: resnet18, weights: 'torchgeo:ResNet50_Weights.SENTINEL2_RGB_MOCO'}",
     "are for 'resnet50', but backbone resnet18 builds 'resnet18'"),
    ("{name: timm, params: {name: swin_tiny_patch4_window7_224}, "
     "weights: 'torchgeo:Swin_V2_B_Weights.NAIP_RGB_SI_SATLAS'}",
     "are for 'swin_v2_b', which is no timm model, so the timm backbone ('swin_tiny_patch4_window7_224')"),
    ("{name: timm, params: {name: resnet10t}, weights: 'torchgeo:ResNet18_Weights.SENTINEL2_RGB_MOCO'}",
     "are for 'resnet18', but backbone timm (name 'resnet10t') builds 'resnet10t'"),
    ("{name: timm, params: {name: resnet18}, pretrained: true, weights: 'torchgeo:" + MOCO + "'}",
     "not both"),
    ("{name: resnet18, weights: 'torchgeo:ResNet18_Weights.SENTINEL2_RGB_MOKO'}",
     "did you mean 'torchgeo:ResNet18_Weights.SENTINEL2_RGB_MOCO'"),
    ("{name: resnet18, weights: 'torchgeo:ResNet18_Weights.SENTINEL2_RGB_SECO'}",
     "does not say what range the data had"),
])
def test_weights_a_backbone_cannot_use_are_refused_before_the_run(tmp_path, torch_home, capsys, backbone, expected):
    grid = grid_file(tmp_path, backbone)
    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert torch_home == [] and not (tmp_path / "out").exists()


def test_a_file_of_another_architecture_is_refused(tmp_path, torch_home, capsys):
    import timm

    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(entry(MOCO).url).name
    path.parent.mkdir(parents=True)
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), path)
    grid = grid_file(tmp_path, f"{{name: resnet18, weights: 'torchgeo:{MOCO}'}}")
    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "do not fit resnet18" in capsys.readouterr().err


def test_normalisation_is_composed_from_the_weights_transforms():
    from xaibench_plugins.backbones import IMAGENET_MEAN, IMAGENET_STD
    from xaibench_plugins.torchgeo_weights import normalisation

    def close(a, b):
        return all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))

    # GASSL (fMoW): 8-bit data / 255, then ImageNet's constants: ImageNet's normalisation of [0, 1] images
    gassl = entry("ResNet50_Weights.FMOW_RGB_GASSL")
    mean, std = normalisation("gassl", gassl.transforms, dict(gassl.meta))
    assert close(mean, IMAGENET_MEAN) and close(std, IMAGENET_STD)
    # Satlas (NAIP): 8-bit data / 255 and nothing else
    satlas = entry("Swin_V2_B_Weights.NAIP_RGB_SI_SATLAS")
    assert normalisation("satlas", satlas.transforms, dict(satlas.meta)) == ((0.0,) * 3, (1.0,) * 3)
    # metadata that states mean and std wins over the transforms; 8-bit units are read as 255 = 1.0
    meta = {"mean": [0.0], "std": [255.0]}
    assert normalisation("m", gassl.transforms, meta) == ((0.0,) * 3, (1.0,) * 3)
    from torchvision.transforms import v2

    steps = torch.nn.Sequential(v2.Normalize(mean=[0], std=[10000]), v2.Normalize(mean=[0.1, 0.2, 0.3], std=[0.5] * 3))
    mean, std = normalisation("s2", steps, {})
    assert close(mean, (0.1, 0.2, 0.3)) and close(std, (0.5,) * 3)
