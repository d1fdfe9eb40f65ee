"""Array folders and the row reader: what lets a split larger than memory be read a batch at a time."""

import numpy as np
import pytest
import torch

from xaibench.pipeline.artifacts import ArrayFolderWriter, PackedMasks, Rows, read_array_folder
from xaibench.pipeline.grid import TrainConfig
from xaibench.pipeline.training import fit


@pytest.fixture
def array(tmp_path):
    values = np.random.default_rng(0).integers(0, 255, (50, 4, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", values)
    return values, Rows(tmp_path / "x.npy")


@pytest.mark.parametrize("key", [3, -1, slice(2, 9), slice(None, None, 3), slice(10, 10), [0, 2], [4, 1, 1, 49],
                                 np.array([], dtype=int), "mask"])
def test_rows_index_like_the_array(array, key):
    values, rows = array
    if isinstance(key, str):
        key = values[:, 0, 0, 0] > 100
    np.testing.assert_array_equal(rows[key], values[key])
    assert rows.shape == values.shape and len(rows) == 50 and rows.dtype == values.dtype


def test_rows_read_all_only_when_asked_and_refuse_a_truncated_file(array, tmp_path):
    values, rows = array
    np.testing.assert_array_equal(np.asarray(rows), values)
    with pytest.raises(IndexError):
        rows[[50]]
    path = tmp_path / "x.npy"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(OSError, match="truncated"):
        Rows(path)[[49]]


def test_an_array_folder_appears_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "split"
    first = ArrayFolderWriter(folder)
    first.save("labels", np.arange(3))
    first.save("images", np.zeros((3, 2, 2, 3), np.uint8))
    first.close()
    writer = ArrayFolderWriter(folder)
    column = writer.column("images", (3, 2, 2, 3), np.uint8)
    column[1] = 7
    writer.save("labels", np.arange(3) + 10)
    assert read_array_folder(folder)["labels"].tolist() == [0, 1, 2]  # the old folder until closed
    writer.close()
    arrays = read_array_folder(folder)
    assert arrays["labels"].tolist() == [10, 11, 12] and isinstance(arrays["images"], Rows)
    assert arrays["images"][1].max() == 7 and arrays["images"][0].max() == 0
    abandoned = ArrayFolderWriter(folder)
    abandoned.column("images", (1, 1, 1, 3), np.uint8)
    abandoned.abandon()
    assert read_array_folder(folder)["labels"].tolist() == [10, 11, 12]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]  # no staging folder is left


def test_packed_masks_unpack_only_the_rows_asked_for():
    masks = np.random.default_rng(0).random((6, 3, 11)) > 0.5
    packed = PackedMasks(np.packbits(masks, axis=-1), 11)
    np.testing.assert_array_equal(packed[[5, 0]], masks[[5, 0]])
    assert packed.shape == masks.shape


def test_training_from_rows_on_disk_equals_training_from_an_array(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (20, 12, 12, 3), dtype=np.uint8)
    labels = np.arange(20) % 2
    np.save(tmp_path / "images.npy", images)

    def train(source):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(4, 2))
        fit(net, source, labels, TrainConfig(epochs=2, batch_size=8, lr=1e-2), seed=1, device="cpu",
            subset=np.arange(3, 20))
        return net.state_dict()

    from_array, from_rows = train(images), train(Rows(tmp_path / "images.npy"))
    assert all(torch.equal(from_array[k], from_rows[k]) for k in from_array)
