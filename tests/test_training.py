import numpy as np
import pytest
import torch

from xaibench.errors import StageError, UserError
from xaibench.pipeline.grid import TrainConfig
from xaibench.pipeline.stages import masks_for_finetuning
from xaibench.pipeline.training import _dihedral, fit


def _masks():
    masks = np.zeros((4, 8, 8), bool)
    masks[0, :2] = True
    masks[2, 5:] = True
    return masks, np.array([True, False, True, False])


def test_borrow_gives_unannotated_samples_an_annotated_samples_mask():
    masks, has_mask = _masks()
    foreground, subset = masks_for_finetuning(masks, has_mask, "borrow", seed=0)
    assert subset is None
    assert np.array_equal(foreground[[0, 2]], masks[[0, 2]])
    for i in (1, 3):
        assert any(np.array_equal(foreground[i], masks[j]) for j in (0, 2))
    assert np.array_equal(masks_for_finetuning(masks, has_mask, "borrow", seed=0)[0], foreground)


def test_raw_and_drop_policies():
    masks, has_mask = _masks()
    foreground, subset = masks_for_finetuning(masks, has_mask, "raw", seed=0)
    assert foreground[[1, 3]].all() and subset is None
    _, subset = masks_for_finetuning(masks, has_mask, "drop", seed=0)
    assert subset.tolist() == [0, 2]
    with pytest.raises(UserError, match="no training sample has an annotation mask"):
        masks_for_finetuning(masks, np.zeros(4, bool), "borrow", seed=0)


def test_dihedral_transforms_images_and_masks_alike():
    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    codes = torch.tensor([0, 5])  # identity; horizontal flip then transpose
    out = _dihedral(x, codes)
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1], x[1].flip(-1).transpose(-1, -2))


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))


def _fit(model, seed, lr=0.1):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (12, 4, 4, 3), dtype=np.uint8)
    return fit(model, images, np.arange(12) % 2, TrainConfig(epochs=2, batch_size=4, lr=lr, optimizer="sgd"), seed=seed,
               device="cpu")


def test_fit_is_deterministic_for_a_seed():
    a, b, c = _tiny_model(), _tiny_model(), _tiny_model()
    _fit(a, 0), _fit(b, 0), _fit(c, 1)
    assert torch.equal(a[1].weight, b[1].weight)
    assert not torch.equal(a[1].weight, c[1].weight)


def test_a_non_finite_loss_is_a_clear_error():
    class Diverged(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(float("nan")))

        def forward(self, x):
            return x.flatten(1)[:, :2] * self.scale

    with pytest.raises(StageError, match="training loss became nan at epoch 1, step 1"):
        _fit(Diverged(), 0)


def test_bf16_autocast_and_channels_last_train(registry):
    backbone = registry.create("backbones", "resnet18")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    torch.manual_seed(0)
    model = backbone.build(2)
    before = model.net.fc.weight.detach().clone()
    stats = fit(model, images, np.arange(8) % 2, TrainConfig(epochs=1, batch_size=4, lr=1e-3, precision="bf16",
                                                             channels_last=True), seed=0, device="cpu")
    assert all(np.isfinite(stats["epoch_losses"]))
    assert not torch.equal(before, model.net.fc.weight)
    assert model.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.net.fc.weight.dtype == torch.float32  # autocast leaves the weights in fp32


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: out of memory"),
    MemoryError(),
])
def test_running_out_of_memory_in_a_step_says_where_and_what_to_lower(monkeypatch, error):
    model = _tiny_model()
    forward, calls = model.forward, []

    def forward_failing_at_step_5(x):
        calls.append(len(x))
        if len(calls) == 5:  # epoch 2, step 2 of 3
            raise error
        return forward(x)

    monkeypatch.setattr(model, "forward", forward_failing_at_step_5)
    with pytest.raises(StageError, match=r"training ran out of memory on cpu at epoch 2, step 2 of 3 with "
                                         r"batch_size 4 .*lower batch_size .* or the dataset's image_size") as caught:
        _fit(model, 0)
    assert caught.value.__cause__ is error


def test_other_runtime_errors_in_a_step_are_not_reported_as_memory(monkeypatch):
    model = _tiny_model()

    def broken(x):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        _fit(model, 0)


def _tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))


def _train(net, checkpoint, stop_after=None, epochs=4):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (20, 12, 12, 3), dtype=np.uint8), np.arange(20) % 2
    seen = [0]

    def progress(n):
        seen[0] += n
        if stop_after is not None and seen[0] >= stop_after:
            raise KeyboardInterrupt

    return fit(net, images, labels, TrainConfig(epochs=epochs, batch_size=8, lr=1e-2, checkpoint_every=1,
                                                checkpoint_seconds=0.0),
               seed=3, device="cpu", progress=progress, checkpoint=checkpoint)


def test_an_interrupted_training_resumes_from_its_last_epoch_bitwise_identically(tmp_path):
    reference = _tiny_net()
    _train(reference, None)
    checkpoint = tmp_path / "ckpt.pt"
    interrupted = _tiny_net()
    with pytest.raises(KeyboardInterrupt):
        _train(interrupted, checkpoint, stop_after=2 * 20 + 8)  # during epoch 3, after two checkpoints
    assert checkpoint.is_file()
    resumed = _tiny_net()
    stats = _train(resumed, checkpoint)
    assert stats["resumed_from_epoch"] == 2 and len(stats["epoch_losses"]) == 4
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_a_damaged_checkpoint_is_ignored_with_a_warning(tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    reference = _tiny_net()
    _train(reference, None)
    with pytest.warns(UserWarning, match="cannot be resumed from"):
        stats = _train(net := _tiny_net(), checkpoint)
    assert stats["resumed_from_epoch"] == 0
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in reference.state_dict().items())
