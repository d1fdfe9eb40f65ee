"""Tests of the example plugin: xaibench's conformance checks, then each component's own behaviour.

They run against the installed package (``pip install ./examples/xaibench-example-plugin``), through the
same entry point and registry a grid uses."""

import numpy as np
import pytest
import torch

import xaibench
from xaibench.errors import ComponentParamsError
from xaibench.kit.testing import check_component, check_light_import, registered

DISTRIBUTION = "xaibench-example-plugin"


def test_components_arrive_through_the_entry_point():
    assert registered("masks", distribution=DISTRIBUTION) == ["checkerboard"]
    assert registered("seeders", distribution=DISTRIBUTION) == ["centroid"]
    component = xaibench.get_registry().get("masks", "checkerboard")
    assert (component.plugin, component.distribution) == ("xaibench_example", DISTRIBUTION)


def test_importing_the_plugin_imports_no_heavy_library():
    check_light_import("xaibench_example")


@pytest.mark.parametrize("kind", ["masks", "seeders"])
def test_every_component_keeps_the_contract(kind):
    for name in registered(kind, distribution=DISTRIBUTION):
        check_component(kind, name)


@pytest.mark.parametrize("params", [{"square": 1}, {"square": 5, "light": [0.9, 0.8, 0.7], "dark": [0.1, 0.2, 0.3]}])
def test_checkerboard_keeps_the_contract_with_other_parameters(params):
    check_component("masks", "checkerboard", **params)


@pytest.mark.parametrize("params", [{"threshold": 0.9}, {"threshold": 0.2, "background": True}])
def test_centroid_keeps_the_contract_with_other_parameters(params):
    check_component("seeders", "centroid", **params)


def test_checkerboard_fills_the_background_with_alternating_squares():
    images = torch.rand(2, 3, 8, 12)
    foreground = torch.zeros(2, 1, 8, 12, dtype=torch.bool)
    foreground[1, :, 2:4, 3:6] = True
    out = xaibench.create("masks", "checkerboard", square=2, light=[1, 1, 1], dark=[0, 0.5, 0])(images, foreground)
    light, dark = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.0, 0.5, 0.0])
    for row, col, colour in [(0, 0, light), (0, 1, light), (1, 1, light), (0, 2, dark), (2, 0, dark), (2, 2, light),
                             (7, 11, light), (7, 9, dark)]:
        assert torch.equal(out[0, :, row, col], colour), (row, col)
    assert torch.equal(out[1][foreground[1].expand(3, -1, -1)], images[1][foreground[1].expand(3, -1, -1)])


def test_checkerboard_parameters_are_validated():
    with pytest.raises(ComponentParamsError, match="square"):
        xaibench.create("masks", "checkerboard", square=0)
    with pytest.raises(ComponentParamsError, match="light"):
        xaibench.create("masks", "checkerboard", light=[1.5, 0, 0])


def bump(shape, row, col, sigma=2.0):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_centroid_puts_the_point_on_the_bump_as_column_row():
    found = xaibench.create("seeders", "centroid")(bump((30, 50), row=7, col=40))
    assert found.points.tolist() == [[40.0, 7.0]]
    assert found.labels.tolist() == [1]


def test_centroid_weights_two_equal_bumps_to_the_region_pixel_nearest_their_middle():
    saliency = np.maximum(bump((30, 50), 15, 10), bump((30, 50), 15, 30))
    (x, y), = xaibench.create("seeders", "centroid")(saliency).points.tolist()
    # The centre (20, 15) is not salient; the bumps' inner rims are equally near, the lower flat index wins.
    assert (x, y) == (12.0, 15.0)


def test_centroid_adds_a_background_point_far_from_the_object():
    found = xaibench.create("seeders", "centroid", background=True)(bump((30, 50), row=5, col=5))
    assert found.labels.tolist() == [1, 0]
    assert found.points[1].tolist() == [49.0, 29.0]


def test_centroid_gives_no_points_on_a_constant_map():
    found = xaibench.create("seeders", "centroid", background=True)(np.full((10, 10), 0.3, np.float32))
    assert found.points.shape == (0, 2) and found.labels.shape == (0,)
