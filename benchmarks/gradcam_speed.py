"""Cost of explaining with Grad-CAM, as a ratio to a no-grad forward pass over the same images.

Compares the ``gradcam`` explainer (gradient taken only as far as the target layer) with pytorch-grad-cam's
stock ``GradCAM`` (full backward pass through the network) on a randomly initialised resnet18 built by the
``resnet18`` backbone plugin. Each timing is the best of ``--repeats`` rounds after one warm-up run, the three
taking turns within a round.

    python benchmarks/gradcam_speed.py --n 32 --size 224 --threads 2 --json gradcam_speed.json

Prints a JSON object: ``forward_s``, ``gradcam_s``, ``stock_gradcam_s`` (seconds) and
``gradcam_forward_ratio``, ``stock_gradcam_forward_ratio`` (explaining time / forward time). The target is
``gradcam_forward_ratio <= 1.2``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def best_times(fns: dict, repeats: int) -> dict:
    """Best wall time of each function over ``repeats`` rounds, after one warm-up call each.

    The functions take turns within a round, so a slow spell of a shared machine hits them alike."""
    for fn in fns.values():
        fn()  # warm-up: allocator, oneDNN kernels, lazy imports
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images per timed call (default 32)")
    parser.add_argument("--size", type=int, default=224, help="image height and width in pixels (default 224)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is kept (default 3)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    args = parser.parse_args(argv)

    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from xaibench.kit import registry

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = registry.create("backbones", "resnet18")
    model = backbone.build(2).eval().to(args.device)
    layers = backbone.target_layers(model)
    images = torch.rand(args.n, 3, args.size, args.size, device=args.device)
    targets = torch.randint(0, 2, (args.n,), device=args.device)
    explainer = registry.create("explainers", "gradcam")

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def forward():
        with torch.no_grad():
            model(images)
        sync()

    def gradcam():
        explainer.explain(model, images, targets, target_layers=layers)
        sync()

    def stock_gradcam():
        with GradCAM(model=model, target_layers=layers) as cam:
            cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        model.zero_grad(set_to_none=True)
        sync()

    best = best_times({"forward": forward, "gradcam": gradcam, "stock": stock_gradcam}, args.repeats)
    forward_s, gradcam_s, stock_s = best["forward"], best["gradcam"], best["stock"]
    result = {
        "n": args.n,
        "size": args.size,
        "threads": args.threads,
        "device": args.device,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "forward_s": round(forward_s, 4),
        "gradcam_s": round(gradcam_s, 4),
        "stock_gradcam_s": round(stock_s, 4),
        "gradcam_forward_ratio": round(gradcam_s / forward_s, 3),
        "stock_gradcam_forward_ratio": round(stock_s / forward_s, 3),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
