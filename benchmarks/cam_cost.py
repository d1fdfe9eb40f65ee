"""Cost of each CAM explainer per image, as a ratio to a no-grad forward pass, for every backbone of a grid.

Builds the backbones of ``--grid`` (default ``grids/backbones.yaml``: ResNet18, ConvNeXt, Swin, ViT, all
randomly initialised) through the registry, as a run does, and times each explainer's ``explain`` on the
same ``--n`` images at the grid's image size, called as the explain stage calls it (the backbone's
target layers and its declared activation layouts). Each timing is the best of ``--repeats`` rounds after
one warm-up, the functions taking turns within a round so a slow spell of a shared machine hits them alike.

    python benchmarks/cam_cost.py --n 16 --threads 2 --json cam_cost.json

Prints a JSON object: per backbone, ``forward_s_per_image`` and, per explainer, ``<explainer>_ratio``
(seconds of ``explain`` / seconds of the forward pass over the same images).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gradcam_speed import best_times  # noqa: E402  (one timing rule for every CAM benchmark)

EXPLAINERS = ("gradcam", "gradcam++", "hirescam", "layercam", "eigencam", "scorecam")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=Path, default=ROOT / "grids" / "backbones.yaml", help="grid whose backbones "
                        "are timed (default grids/backbones.yaml)")
    parser.add_argument("--n", type=int, default=16, help="images per timed call (default 16)")
    parser.add_argument("--size", type=int, default=None, help="image size (default: the grid's first dataset's "
                        "image_size, else 96)")
    parser.add_argument("--explainers", default=",".join(EXPLAINERS), help="comma-separated (default: all CAMs)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the best is kept (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    args = parser.parse_args(argv)

    import torch

    from xaibench.kit.contracts import capability
    from xaibench.kit.registry import Registry
    from xaibench.pipeline.grid import all_choices, load_grid

    torch.set_num_threads(args.threads)
    registry = Registry()
    grid = load_grid(args.grid, registry)
    size = args.size or int(grid.datasets[0].params.get("image_size", 96))
    images = torch.rand(args.n, 3, size, size, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(args.n) % 2
    result = {"grid": str(args.grid.relative_to(ROOT) if args.grid.is_relative_to(ROOT) else args.grid),
              "n": args.n, "size": size, "threads": args.threads, "torch": torch.__version__,
              "machine": platform.machine(), "backbones": {}}
    for choice in all_choices(grid.backbones):
        torch.manual_seed(0)
        backbone = registry.create("backbones", choice.name, **choice.params)
        model = backbone.build(2, pretrained=False).eval()
        layers = backbone.target_layers(model)
        declare = capability(backbone, "activation_layout", "backbones")

        def forward(model=model):
            with torch.no_grad():
                model(images)

        fns = {"forward": forward}
        for name in args.explainers.split(","):
            explainer = registry.create("explainers", name)
            extra = {"layouts": (lambda layer, model=model, declare=declare: declare(model, layer))} \
                if capability(explainer, "layouts", "explainers") and declare is not None else {}

            def explain(explainer=explainer, model=model, layers=layers, extra=extra):
                explainer.explain(model, images, targets, target_layers=layers, **extra)
                model.zero_grad(set_to_none=True)

            fns[name] = explain
        best = best_times(fns, args.repeats)
        row = {"forward_s_per_image": round(best["forward"] / args.n, 5)}
        row.update({f"{name}_ratio": round(best[name] / best["forward"], 2) for name in fns if name != "forward"})
        key = str(choice.params.get("name") or choice.name)  # the timm model's name, or the backbone's
        result["backbones"][key] = row
        print(key, json.dumps(row), file=sys.stderr, flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
