"""The paper's Table I protocol written by hand in plain PyTorch, to measure xaibench's fixed cost.

    python benchmarks/handwritten.py            # the protocol of FIXED_COST_GRID, printing the table

It does what ``xaibench run`` does for ``FIXED_COST_GRID`` (in ``benchmarks/run.py``), with the same data,
models, seeds and training settings, and nothing else: train a ResNet18 on raw tiles, fine-tune a copy per
mask on masked tiles, take the test logits, mix them at each α and print the accuracies. No store, no
cache, no confidence intervals, figures or report. ``fixed_cost`` in ``benchmarks/run.py`` times this
against the command.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from xaibench import create

SEED = 0
ALPHAS = (0.8, 0.9, 1.0)
MASKS = ("blur", "white", "median", "black")
DATA = {"n_train": 192, "n_val": 0, "n_test": 96, "image_size": 64}
TRAIN = {"epochs": 3, "batch_size": 32, "lr": 1e-3}
FINETUNE = {"epochs": 2, "batch_size": 32, "lr": 1e-4}


def tensors(samples):
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float().div_(255)
    labels = torch.tensor([s.label for s in samples])
    masks = torch.from_numpy(np.stack([s.mask if s.mask is not None else np.zeros(s.image.shape[:2], bool)
                                       for s in samples]))
    return images, labels, masks, np.array([s.mask is not None for s in samples])


def train(model, images, labels, *, epochs, batch_size, lr, mask=None, foreground=None):
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for step in range(math.ceil(len(labels) / batch_size)):
            index = order[step * batch_size:(step + 1) * batch_size]
            x = images[index]
            if mask is not None:
                x = mask(x, foreground[index][:, None])
            loss = F.cross_entropy(model(x), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def main() -> dict:
    dataset = create("datasets", "synthetic", **DATA)
    images, labels, masks, has_mask = tensors(dataset.split("train"))
    test_images, test_labels, _, _ = tensors(dataset.split("test"))
    # unannotated samples borrow an annotated sample's mask, as the grid's protocol does
    foreground = masks.clone()
    annotated = np.flatnonzero(has_mask)
    missing = np.flatnonzero(~has_mask)
    foreground[missing] = masks[np.random.default_rng(SEED).choice(annotated, size=len(missing))]
    backbone = create("backbones", "resnet18")
    torch.manual_seed(SEED)
    baseline = train(backbone.build(2), images, labels, **TRAIN)
    with torch.no_grad():
        raw = baseline(test_images)
    table = {"baseline": float((raw.argmax(1) == test_labels).float().mean())}
    for name in MASKS:
        model = backbone.build(2, pretrained=False)
        model.load_state_dict(baseline.state_dict())
        train(model, images, labels, mask=create("masks", name), foreground=foreground, **FINETUNE)
        with torch.no_grad():
            masked = model(test_images)
        for alpha in ALPHAS:
            mixed = alpha * raw + (1 - alpha) * masked
            table[f"{name} α={alpha:g}"] = float((mixed.argmax(1) == test_labels).float().mean())
    for row, accuracy in table.items():
        print(f"{row:>14}: {100 * accuracy:.2f}")
    return table


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
