"""Work shared between the stages of one process: untrained models copied instead of built, segmenter calls
and the chance maps' faithfulness work remembered. Each must give exactly what doing the work again gives."""

import numpy as np
import pytest
import torch

from xaibench.kit.models import ensemble_model
from xaibench.pipeline import faithfulness, stages
from xaibench.pipeline.memo import Memo, digest

# -- the memo ---------------------------------------------------------------------------------------------------


def test_digest_tells_apart_what_differs_and_only_that():
    a = np.arange(6, dtype=np.float32)
    assert digest("x", a, None, 3) == digest("x", a.copy(), None, 3)
    assert digest(a) != digest(a.astype(np.float64))  # dtype
    assert digest(a) != digest(a.reshape(2, 3))  # shape
    assert digest(("ab", "c")) != digest(("a", "bc"))  # boundaries
    assert digest([a, None]) != digest([None, a])
    assert digest(b"ab") != digest("ab")
    assert digest(np.zeros((0, 2), np.float32)) != digest(np.zeros((2, 0), np.float32))  # empty arrays too
    with pytest.raises(TypeError):
        digest(object())


def test_memo_returns_copies_and_evicts_the_least_recently_used_beyond_its_budget():
    kept = Memo(budget=3 * 80)
    arrays = {k: np.full(10, k, dtype=np.float64) for k in range(4)}  # 80 bytes each
    for k in range(3):
        kept.put(bytes([k]), arrays[k], None)
    got, none = kept.get(bytes([0]))  # 0 is now the most recently used
    got[:] = -1
    assert none is None and kept.get(bytes([0]))[0][0] == 0  # a copy was handed out
    kept.put(bytes([3]), arrays[3], None)
    assert kept.get(bytes([1])) is None  # evicted
    assert all(kept.get(bytes([k])) is not None for k in (0, 2, 3)) and kept.used == 240
    kept.put(b"big", np.zeros(31, np.float64))  # over budget on its own: not kept, nothing evicted
    assert kept.get(b"big") is None and kept.used == 240


# -- models copied instead of built ----------------------------------------------------------------------------


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.register_buffer("steps", torch.arange(4.0), persistent=False)


def test_a_weightless_copy_keeps_ties_and_non_persistent_buffers_and_owns_its_tensors():
    template = Tied()
    copied = stages.weightless_copy(template)
    assert copied.a.weight is copied.b.weight and copied.a.weight is not template.a.weight
    assert torch.equal(copied.steps, template.steps) and copied.steps is not template.steps
    copied.load_state_dict(template.state_dict())
    assert torch.equal(copied.a.bias, template.a.bias)
    copied.a.bias.data.add_(1)
    assert not torch.equal(copied.a.bias, template.a.bias)


def test_a_module_with_hooks_is_not_copied():
    template = Tied()
    template.a.register_forward_hook(lambda *args: None)
    with pytest.raises(TypeError):
        stages.weightless_copy(template)


# -- faithfulness ----------------------------------------------------------------------------------------------


class Counting(torch.nn.Module):
    """A small convolutional classifier that counts the images it is run on."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 3))
        self.seen = 0

    def forward(self, x):
        self.seen += len(x)
        return self.net(x)


def _batch(n=5, size=12):
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(n, 3, size, size, generator=generator)
    maps = torch.rand(n, size, size, generator=generator).numpy()
    return images, maps, torch.tensor([0, 1, 2, 1, 0][:n])


def _mix(raw, masked):
    return 0.7 * raw + 0.3 * masked


def test_an_ensembles_probe_is_its_module_and_shared_work_gives_the_same_scores():
    images, maps, targets = _batch()
    raw, masked = Counting(0).eval(), Counting(1).eval()
    alone = faithfulness.scores(ensemble_model(raw, masked, _mix).eval(), images, maps, targets, steps=4, seed=2,
                                batch_size=2)
    logits, imputed = Memo(), Memo()
    shared = digest("these images", maps)
    probe = faithfulness.Probe([("raw", raw), ("masked", masked)], _mix, batch_size=2, memo=logits)
    first = faithfulness.scores(probe, images, maps, targets, steps=4, seed=2, shared=shared, memo=imputed)
    for name in alone:
        np.testing.assert_array_equal(first[name], alone[name])

    # Another stage of the same process: the raw network alone (the baseline), then a new ensemble with the
    # same raw member. Neither runs the raw network on the shared images again, and the scores are the same
    # as computing them afresh.
    raw.seen = masked.seen = 0
    baseline = faithfulness.Probe([("raw", raw)], batch_size=2, memo=logits)
    again = faithfulness.scores(baseline, images, maps, targets, steps=4, seed=2, shared=shared, memo=imputed)
    fresh = faithfulness.scores(Counting(0).eval(), images, maps, targets, steps=4, seed=2, batch_size=2)
    assert raw.seen == 0
    for name in fresh:
        np.testing.assert_array_equal(again[name], fresh[name])
    other = Counting(2).eval()
    faithfulness.scores(faithfulness.Probe([("raw", raw), ("other", other)], _mix, batch_size=2, memo=logits),
                        images, maps, targets, steps=4, seed=2, shared=shared, memo=imputed)
    assert raw.seen == 0 and other.seen == len(images) * (2 + 4 * 3)  # whole, blurred, 4 curves x 3 steps

    # Without ``shared`` nothing is remembered: the explanation's own maps differ from stage to stage.
    faithfulness.scores(baseline, images, maps, targets, steps=4, seed=2, memo=imputed)
    assert raw.seen == len(images) * (2 + 4 * 3)


def test_road_images_are_the_same_whichever_are_made_first():
    images, maps, _ = _batch()
    in_order = faithfulness.RoadImages(images, maps, steps=4, seed=5)
    expected = {(order, j): in_order.get(order, j) for order in ("least", "most") for j in range(3)}
    backwards = faithfulness.RoadImages(images, maps, steps=4, seed=5)
    for order, j in reversed(list(expected)):
        assert torch.equal(backwards.get(order, j), expected[order, j])
    torch.manual_seed(5)  # the library's order: least relevant first, percentile by percentile, image by image
    first = faithfulness.impute(images[0], (1 - maps[0]) < np.percentile(1 - maps[0], 25.0))
    assert torch.equal(first, expected["least", 0][0])


# -- through the CLI -----------------------------------------------------------------------------------------

GRID = """\
name: shared
seeds: [0]
datasets: [{name: synthetic, n_train: 16, n_val: 0, n_test: 8, image_size: 32}]
backbones: [{name: resnet18, weights: none, target_layer: layer3}]
masks: [blur]
ensembles: [{name: logit-mix, sweep: {alpha: [0.8, 0.9]}}]
explainers: [gradcam]
seeders: [{name: top-k, k: 1, min_distance: 8}]
segmenters: [random-walker]
train: {epochs: 1, batch_size: 8}
finetune: {epochs: 1, batch_size: 8}
protocol: {faithfulness_steps: 3, faithfulness_images: 4, eval_batch_size: 3}
"""


def _arrays(run, kind):
    """Every array of the ``kind`` artifacts of a run, by file name and array name."""
    found = {}
    for path in sorted((run / "cache" / kind).iterdir()):
        if path.suffix == ".npz":
            with np.load(path) as data:
                found[path.name] = {name: data[name] for name in data.files}
        else:  # a folder of .npy arrays
            found[path.name] = {array.name: np.load(array) for array in sorted(path.glob("*.npy"))}
    return found


def test_a_run_sharing_work_writes_what_a_run_doing_it_all_again_writes(tmp_path, write_grid, monkeypatch):
    from xaibench.commands.cli import main
    from xaibench_plugins import segmenters

    grid = write_grid(GRID)
    calls = []
    segment = segmenters.RandomWalkerSegmenter._foreground
    monkeypatch.setattr(segmenters.RandomWalkerSegmenter, "_foreground",
                        lambda self, *args: calls.append(1) or segment(self, *args))
    builds = []
    build = stages.build_untrained
    monkeypatch.setattr(stages, "build_untrained", lambda *args: builds.append(1) or build(*args))
    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "shared"), "--quiet"]) == 0
    shared_calls, shared_builds = len(calls), len(builds)

    monkeypatch.setattr(Memo, "put", lambda self, key, *values: None)  # remember nothing
    monkeypatch.setattr(stages, "weightless_copy", lambda template: (_ for _ in ()).throw(TypeError("no copies")))
    calls.clear(), builds.clear()
    assert main(["run", "--grid", str(grid), "--out", str(tmp_path / "alone"), "--quiet"]) == 0
    # 3 explanations (baseline, α 0.8, α 0.9) of the annotated test images segmented; where two put their
    # peak at the same pixel, the second run repeats a call the first answered from memory. The first run
    # builds one untrained model and copies it for every load; the second builds one per load.
    assert 0 < shared_calls < len(calls)
    assert shared_builds == 1 and len(builds) > 5
    for kind in ("faithfulness", "segment", "logits", "explain"):
        shared, alone = _arrays(tmp_path / "shared", kind), _arrays(tmp_path / "alone", kind)
        assert shared.keys() == alone.keys() and shared
        for name in shared:
            for array in shared[name]:
                np.testing.assert_array_equal(shared[name][array], alone[name][array], err_msg=f"{kind} {array}")
