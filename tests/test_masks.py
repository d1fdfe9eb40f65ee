import pytest
import torch

from xaibench.kit.registry import Registry

MASKS = sorted(Registry().names("masks"))


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 16, 20, generator=generator)
    foreground = torch.zeros(2, 1, 16, 20, dtype=torch.bool)
    foreground[0, :, 4:10, 5:12] = True
    foreground[1, :, :, :3] = True
    return images, foreground


@pytest.mark.parametrize("name", MASKS)
def test_every_mask_keeps_the_foreground_and_leaves_inputs_alone(registry, name, batch):
    images, foreground = batch
    before = images.clone(), foreground.clone()
    out = registry.create("masks", name)(images, foreground)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    fg = foreground.expand_as(images)
    assert torch.equal(out[fg], images[fg])
    assert not torch.equal(out[~fg], images[~fg])
    assert torch.equal(images, before[0]) and torch.equal(foreground, before[1])
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("name, colour", [("white", (1.0, 1.0, 1.0)), ("black", (0.0, 0.0, 0.0)),
                                          ("median", (0.485, 0.456, 0.406))])
def test_solid_masks_paint_the_background_their_colour(registry, name, colour, batch):
    images, foreground = batch
    out = registry.create("masks", name)(images, foreground)
    background = out.permute(0, 2, 3, 1)[~foreground[:, 0]]
    assert torch.allclose(background, torch.tensor(colour).expand_as(background))


def test_median_colour_is_a_parameter(registry, batch):
    images, foreground = batch
    out = registry.create("masks", "median", colour=[0.2, 0.3, 0.4])(images, foreground)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.2, 0.3, 0.4]))


def test_blur_background_is_the_blurred_image(registry, batch):
    from torchvision.transforms.functional import gaussian_blur

    images, foreground = batch
    out = registry.create("masks", "blur", sigma=1.5)(images, foreground)
    expected = gaussian_blur(images, kernel_size=[11, 11], sigma=[1.5, 1.5])
    bg = ~foreground.expand_as(images)
    assert torch.allclose(out[bg], expected[bg])
    # blurring removes high-frequency noise: the background varies much less than the original
    assert out[bg].std() < 0.5 * images[bg].std()


def test_mask_rejects_a_foreground_of_the_wrong_size(registry, batch):
    images, _ = batch
    with pytest.raises(ValueError, match="does not match"):
        registry.create("masks", "white")(images, torch.ones(2, 1, 8, 8, dtype=torch.bool))
