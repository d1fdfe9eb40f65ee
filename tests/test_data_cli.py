import json

import pytest

from xaibench.commands.cli import _options, main
from xaibench.errors import UserError


def test_data_info_counts_splits_classes_and_masks(registry, capsys):
    assert main(["data", "info", "synthetic", "--param", "n_train=6", "--param", "n_val=0",
                 "--param", "n_test=4", "--param", "image_size=32"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"]["train"] == {"samples": 6, "per_class": {"absent": 3, "present": 3}, "with_mask": 3,
                                       "mask_foreground_fraction": pytest.approx(info["splits"]["train"]
                                                                                 ["mask_foreground_fraction"])}
    assert info["splits"]["val"]["samples"] == 0
    assert info["image_sizes"] == {"32x32": 10}


def test_data_info_rejects_bad_parameters(registry, capsys):
    assert main(["data", "info", "synthetic", "--param", "n_train=-1"]) == 2
    assert "n_train" in capsys.readouterr().err


def test_fetch_and_prepare_need_the_dataset_to_support_them(registry, capsys):
    assert main(["data", "fetch", "synthetic"]) == 2
    assert "nothing to download" in capsys.readouterr().err
    assert main(["data", "prepare", "synthetic"]) == 2
    assert "needs no preparation" in capsys.readouterr().err


def test_prepare_options_parse_to_keywords():
    assert _options(["--tile-size", "224", "--imagery", "a.tif", "b.tif", "--dry"]) == {
        "tile_size": "224", "imagery": ["a.tif", "b.tif"], "dry": True}
    with pytest.raises(UserError, match="given twice"):
        _options(["--out", "a", "--out", "b"])
    with pytest.raises(UserError, match="unexpected argument"):
        _options(["stray"])
