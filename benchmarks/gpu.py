"""xaibench on one accelerator, measured in one command: the numbers benchmarks/RESULTS.md reports for a GPU.

    python benchmarks/gpu.py [--device cuda] [--out DIR] [--budget SECONDS] [--smoke]

Parts, in this order (the cheap, most informative ones first, so a run cut short keeps them):

- ``environment``: the card, its memory, torch and CUDA versions.
- ``cuda_tests``: the test suite's CUDA-marked tests (``pytest -m cuda``), passed/failed/skipped.
- ``training``: images/s of xaibench's training loop (``fit``) in fp32, bf16 autocast, channels-last and
  both, each against a plain PyTorch loop with the same settings on the same device (ResNet18 from
  scratch at 224 px, batch 64), the GPU's utilisation sampled during each (``torch.cuda.utilization``,
  which needs NVML) and the peak memory.
- ``cam``: Grad-CAM per image over a no-grad forward pass on the same images (ResNet18, 224 px).
- ``sam``: SAM ViT-B image embeddings per second (random weights: only the architecture's cost).
- ``quickstart``: ``grids/quickstart.yaml`` on the device, with wall time per stage kind.
- ``paper_binary`` and ``paper_multiclass``: the paper's protocol at its scale on the synthetic dataset
  (224 px, ResNet18 from scratch, 15 + 5 epochs as grids/table1.yaml, 4 masks, α 0.8/0.9/1.0, Grad-CAM,
  top-k points into the watershed segmenter, no faithfulness): a Kahikatea-sized binary task of 520 tiles
  and an LCDB-sized 7-class task of 5,000, one seed each; wall time per stage kind, and three seeds
  estimated as three times the one seed's stage time (seeds share nothing but the data).

Every part is timed and guarded: one that fails records its error and the rest still run; a part that
would start after ``--budget`` seconds is recorded as skipped. ``DIR/gpu.json`` is rewritten after every
part, and ``DIR/gpu.txt`` holds a short summary. ``--smoke`` runs every part at toy size (on the CPU in
the test suite, so the script cannot rot); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gradcam_speed import best_times  # noqa: E402  (one timing rule for every benchmark)

FULL = {"train_n": 1024, "train_size": 224, "train_batch": 64, "train_epochs": 2, "cam_n": 64, "cam_size": 224,
        "sam_n": 8, "sam_model": "vit_b",
        "binary": {"n_train": 364, "n_val": 52, "n_test": 104}, "multiclass": {"n_train": 3500, "n_val": 500,
                                                                               "n_test": 1000},
        "image_size": 224, "train": "{epochs: 15, batch_size: 32, lr: 0.0001}",
        "finetune": "{epochs: 5, batch_size: 32, lr: 0.0001}", "masks": "[blur, white, median, black]",
        "modes": (("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)), "repeats": 2, "quickstart": True}
SMOKE = {"train_n": 16, "train_size": 32, "train_batch": 8, "train_epochs": 1, "cam_n": 4, "cam_size": 32,
         "sam_n": 1, "sam_model": "toy",
         "binary": {"n_train": 16, "n_val": 8, "n_test": 8}, "multiclass": {"n_train": 28, "n_val": 14,
                                                                          "n_test": 14},
         "image_size": 32, "train": "{epochs: 1, batch_size: 8}", "finetune": "{epochs: 1, batch_size: 8}",
         "masks": "[white]", "modes": (("fp32", True),), "repeats": 1, "quickstart": False}
# (bf16 autocast on a CPU without bfloat16 units is emulated and slow: the smoke run leaves it to the GPU)

PAPER_GRID = """\
name: paper-TASK
seeds: [0]
device: DEVICE
datasets:
  - {name: synthetic, task: TASK, CLASSES SPLITS, image_size: SIZE, spurious: 0.9}
backbones: [{name: resnet18, weights: none}]
masks: MASKS
ensembles: [{name: logit-mix, sweep: {alpha: [0.8, 0.9, 1.0]}}]
explainers: [gradcam]
seeders: [{name: top-k, k: 3}]
segmenters: [watershed]
train: TRAIN
finetune: FINETUNE
protocol: {missing_mask: borrow, cam_threshold: 0.5, faithfulness_steps: 0}
"""


# -- the parts ---------------------------------------------------------------------------------------------------


def environment(device: str, size: dict) -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
           "cpu": platform.processor() or platform.machine(), "cuda": torch.version.cuda}
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        out.update(card=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}")
    return out


def cuda_tests(device: str, size: dict) -> dict:
    if not device.startswith("cuda"):
        return {"skipped": "no CUDA device"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:randomly", "-rs",
                           str(ROOT / "tests")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    counts = {word: int(number) for number, word in
              (part.split()[:2] for part in tail.split(" in ")[0].split(", ") if part.split()[0].isdigit())}
    return {"exit_code": done.returncode, "summary": tail, **counts,
            "failures": [line for line in done.stdout.splitlines() if line.startswith("FAILED")][:20]}


class Utilisation:
    """Samples ``torch.cuda.utilization`` every 50 ms in a thread while in its ``with`` block (None off CUDA
    or without NVML)."""

    def __init__(self, device: str):
        self.device, self.samples, self._stop = device, [], threading.Event()

    def __enter__(self):
        import torch

        if self.device.startswith("cuda"):
            try:
                torch.cuda.utilization(torch.device(self.device))
            except Exception:  # no NVML (pynvml) on this machine
                return self
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        import torch

        while not self._stop.wait(0.05):
            self.samples.append(torch.cuda.utilization(torch.device(self.device)))

    def __exit__(self, *exc):
        self._stop.set()
        if hasattr(self, "_thread"):
            self._thread.join()

    @property
    def mean(self):
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def training(device: str, size: dict) -> dict:
    import torch

    from xaibench.kit import registry
    from xaibench.pipeline.grid import TrainConfig
    from xaibench.pipeline.training import fit, to_tensor

    n, side, batch, epochs = size["train_n"], size["train_size"], size["train_batch"], size["train_epochs"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, side, side, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    backbone = registry.create("backbones", "resnet18")
    out = {"images": n, "size": side, "batch_size": batch, "epochs": epochs}
    for precision, channels_last in size["modes"]:
        config = TrainConfig(epochs=epochs, batch_size=batch, lr=1e-3, augment=False, precision=precision,
                             channels_last=channels_last)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")

        def ours():
            torch.manual_seed(0)
            fit(backbone.build(2, pretrained=False), images, labels, config, seed=0, device=device)
            _sync(device)

        def plain():
            torch.manual_seed(0)
            model = backbone.build(2, pretrained=False).to(device, memory_format=memory_format).train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            x, y = to_tensor(images), torch.from_numpy(labels)
            if device.startswith("cuda"):
                x, y = x.pin_memory(), y.pin_memory()
            for _ in range(epochs):
                for i in range(0, n, batch):
                    xb = x[i:i + batch].to(device, non_blocking=True).contiguous(memory_format=memory_format)
                    with autocast:
                        logits = model(xb)
                    loss = torch.nn.functional.cross_entropy(logits.float(), y[i:i + batch].to(device,
                                                                                                 non_blocking=True))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            _sync(device)

        _reset_peak(device)
        with Utilisation(device) as busy:
            best = best_times({"xaibench": ours, "plain": plain}, repeats=size["repeats"])
        key = precision + ("_channels_last" if channels_last else "")
        out[key] = {"xaibench_images_per_s": round(n * epochs / best["xaibench"], 1),
                    "plain_images_per_s": round(n * epochs / best["plain"], 1),
                    "xaibench_over_plain": round(best["plain"] / best["xaibench"], 3),
                    "gpu_utilisation_percent": busy.mean, "peak_memory_gib": _peak(device)}
    return out


def cam(device: str, size: dict) -> dict:
    import torch

    from xaibench.kit import registry

    n, side = size["cam_n"], size["cam_size"]
    backbone = registry.create("backbones", "resnet18")
    model = backbone.build(2, pretrained=False).to(device).eval()
    layers = backbone.target_layers(model)
    explainer = registry.create("explainers", "gradcam")
    images = torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    targets = (torch.arange(n) % 2).to(device)

    def forward():
        with torch.no_grad():
            model(images)
        _sync(device)

    def explain():
        explainer.explain(model, images, targets, target_layers=layers)
        model.zero_grad(set_to_none=True)
        _sync(device)

    _reset_peak(device)
    best = best_times({"forward": forward, "gradcam": explain}, repeats=size["repeats"] + 1)
    return {"images": n, "size": side, "forward_ms_per_image": round(1000 * best["forward"] / n, 3),
            "gradcam_ms_per_image": round(1000 * best["gradcam"] / n, 3),
            "gradcam_over_forward": round(best["gradcam"] / best["forward"], 2), "peak_memory_gib": _peak(device)}


def sam(device: str, size: dict) -> dict:
    import torch
    from segment_anything import SamPredictor, sam_model_registry
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    if size["sam_model"] == "toy":  # the smoke run: SAM's architecture at toy size
        model = Sam(ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2, out_chans=32),
                    PromptEncoder(embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64),
                                  mask_in_chans=4),
                    MaskDecoder(transformer_dim=32, transformer=TwoWayTransformer(depth=1, embedding_dim=32,
                                                                                  num_heads=2, mlp_dim=64)))
    else:
        model = sam_model_registry[size["sam_model"]]()
    predictor = SamPredictor(model.to(device).eval())
    images = np.random.default_rng(0).integers(0, 255, (size["sam_n"], 224, 224, 3), dtype=np.uint8)
    predictor.set_image(images[0])  # warm-up
    _sync(device)
    _reset_peak(device)
    start = time.perf_counter()
    for image in images:
        predictor.set_image(image)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"model": size["sam_model"], "images": len(images), "embeddings_per_s": round(len(images) / seconds, 2),
            "peak_memory_gib": _peak(device)}


def _grid_run(text: str, folder: Path, *extra: str) -> dict:
    """``xaibench run`` of a grid: wall time, and seconds and count per stage kind."""
    import sqlite3

    from xaibench.commands.cli import main as cli

    grid = folder / "grid.yaml"
    grid.write_text(text)
    start = time.perf_counter()
    code = cli(["run", "--grid", str(grid), "--out", str(folder / "run"), "--quiet", *extra])
    out = {"exit_code": code, "wall_s": round(time.perf_counter() - start, 1)}
    if code != 0:
        out["error"] = f"xaibench run exited {code}; see its messages above"
    store = folder / "run" / "store.sqlite"
    if store.is_file():
        with sqlite3.connect(store) as db:
            rows = db.execute("SELECT kind, COUNT(*), SUM(seconds) FROM stages WHERE status = 'done' "
                              "GROUP BY kind ORDER BY SUM(seconds) DESC").fetchall()
        out["stages"] = {kind: {"count": count, "seconds": round(seconds, 1)} for kind, count, seconds in rows}
        out["stage_seconds"] = round(sum(seconds for _, _, seconds in rows), 1)
    return out


def quickstart(device: str, size: dict, folder: Path) -> dict:
    """The quickstart grid on ``device`` (the smoke run only plans it: ``--dry-run``)."""
    text = (ROOT / "grids" / "quickstart.yaml").read_text()
    text = text.replace("name: quickstart", f"name: quickstart\ndevice: {device}", 1)
    return _grid_run(text, folder, *(() if size["quickstart"] else ("--dry-run",)))


def _paper(text: str, task: str, device: str, size: dict) -> str:
    splits = ", ".join(f"{key}: {value}" for key, value in size[task].items())
    return (text.replace("TASK", task).replace("DEVICE", device).replace("SPLITS", splits)
            .replace("CLASSES ", "num_classes: 7, " if task == "multiclass" else "")
            .replace("SIZE", str(size["image_size"])).replace("TRAIN", size["train"])
            .replace("FINETUNE", size["finetune"]).replace("MASKS", size["masks"]))


def paper(task: str):
    def measure(device: str, size: dict, folder: Path) -> dict:
        out = _grid_run(_paper(PAPER_GRID, task, device, size), folder)
        out["splits"] = size[task]
        if "stage_seconds" in out:
            out["three_seeds_estimate_s"] = round(3 * out["stage_seconds"], 1)
        return out

    return measure


# -- helpers --------------------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def _peak(device: str):
    import torch

    return round(torch.cuda.max_memory_allocated(torch.device(device)) / 2**30, 2) \
        if device.startswith("cuda") else None


PARTS = {
    "environment": lambda device, size, folder: environment(device, size),
    "cuda_tests": lambda device, size, folder: cuda_tests(device, size),
    "training": lambda device, size, folder: training(device, size),
    "cam": lambda device, size, folder: cam(device, size),
    "sam": lambda device, size, folder: sam(device, size),
    "quickstart": quickstart,
    "paper_binary": paper("binary"),
    "paper_multiclass": paper("multiclass"),
}


def summary(result: dict) -> str:
    """A few lines a person reads first: the card, each part's headline number or its error."""
    env = result.get("environment", {})
    lines = [f"xaibench on {env.get('card', env.get('device', '?'))} (torch {env.get('torch', '?')}, "
             f"CUDA {env.get('cuda')}){' — smoke run, numbers mean nothing' if result.get('smoke') else ''}"]
    for key, part in result.items():
        if not isinstance(part, dict) or key == "environment":
            continue
        if "error" in part or "skipped" in part:
            lines.append(f"{key}: {part.get('error') or 'skipped: ' + part['skipped']}")
        elif key == "training":
            for mode in [m for m in ("fp32", "bf16", "fp32_channels_last", "bf16_channels_last") if m in part]:
                row = part.get(mode, {})
                lines.append(f"training {mode}: {row.get('xaibench_images_per_s')} img/s "
                             f"({row.get('xaibench_over_plain')}x the plain loop; GPU busy "
                             f"{row.get('gpu_utilisation_percent')}%, peak {row.get('peak_memory_gib')} GiB)")
        elif key == "cam":
            lines.append(f"Grad-CAM: {part['gradcam_over_forward']}x a forward pass "
                         f"({part['gradcam_ms_per_image']} ms per image)")
        elif key == "sam":
            lines.append(f"SAM {part['model']}: {part['embeddings_per_s']} image embeddings/s")
        elif key == "cuda_tests":
            lines.append(f"CUDA tests: {part.get('summary')}")
        else:
            stages = ", ".join(f"{kind} {row['seconds']} s" for kind, row in list(part.get("stages", {}).items())[:4])
            estimate = f"; 3 seeds ≈ {part['three_seeds_estimate_s']} s" if "three_seeds_estimate_s" in part else ""
            lines.append(f"{key}: {part.get('wall_s')} s wall (exit {part.get('exit_code')}; {stages}){estimate}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--out", type=Path, default=Path("gpu-results"), help="folder for gpu.json and gpu.txt")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds after which no part starts "
                        "(default 420)")
    parser.add_argument("--only", help="comma-separated parts (default all: " + ", ".join(PARTS) + ")")
    parser.add_argument("--smoke", action="store_true", help="every part at toy size (numbers mean nothing)")
    args = parser.parse_args(argv)
    chosen = list(PARTS) if not args.only else [key.strip() for key in args.only.split(",") if key.strip()]
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    if "environment" not in chosen:
        chosen.insert(0, "environment")
    size = SMOKE if args.smoke else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"smoke": args.smoke, "budget_s": args.budget}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for key in chosen:
            spent = time.perf_counter() - start
            if spent > args.budget:
                result[key] = {"skipped": f"the budget of {args.budget:.0f} s was spent ({spent:.0f} s)"}
            else:
                folder = Path(tmp) / key
                folder.mkdir()
                begin = time.perf_counter()
                try:
                    result[key] = PARTS[key](args.device, size, folder)
                except Exception as exc:  # one part's failure must not lose the others' numbers
                    result[key] = {"error": f"{type(exc).__name__}: {exc}",
                                   "traceback": traceback.format_exc().splitlines()[-6:]}
                result[key]["part_s"] = round(time.perf_counter() - begin, 1)
            result["total_s"] = round(time.perf_counter() - start, 1)
            (args.out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
            print(f"{key}: {result[key].get('part_s', 0)} s", file=sys.stderr, flush=True)
    text = summary(result)
    (args.out / "gpu.txt").write_text(text)
    print(textwrap.indent(text, "  "))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
