"""xaibench's speed goals, each measured as a ratio inside one run so machine noise cancels.

    python benchmarks/run.py [--only KEY[,KEY...]] [--list] [--json FILE] [--skip-quickstart]

Each measurement has a key (``--list`` names them; ``--only`` runs the chosen ones, each under about two
minutes on a 2-core CPU). Prints a JSON object with:

- ``train_throughput_ratio``: images/s of xaibench's training loop (``xaibench.training.fit``) over a plain
  hand-written PyTorch loop on identical data, model and epochs (goal >= 0.95).
- ``gradcam_forward_ratio``: Grad-CAM over N images / a no-grad forward over them (goal <= 1.2); see
  ``gradcam_speed.py``.
- ``alpha_sweep_ratio``: a grid scoring 11 α values / the same grid with 1 α, from scratch, accuracy only
  (goal <= 1.05: α values are scored from cached logits).
- ``sam_seeders_ratio``: seconds of the segment stage for the same images prompted by 3 seeders / by 1,
  through a tiny randomly initialised SAM (goal <= 1.1).
- ``rerun_seconds``: re-running a finished quickstart grid (goal < 5 s, 0 trainings).
- ``quickstart_seconds``: the quickstart grid from scratch on this machine.
- ``rerun_verification_share``: the share of the rerun spent checking that every reused artifact is the
  file that was written (size and hash; goal <= 0.02).
- ``planning``: ``--dry-run`` of about 10,000 and 1,000,000 cells in a fresh process: seconds (goals < 2 s
  and < 60 s) and peak memory.
- ``validation_share``: per stage kind, the share of the stage's time spent checking components'
  outputs against their contracts (goal <= 0.02).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

TINY_GRID = """\
name: bench
datasets:
  - {name: synthetic, n_train: 128, n_val: 0, n_test: 64, image_size: 64}
backbones: [resnet18]
masks: [white, blur]
ensembles:
  - name: logit-mix
    sweep: {alpha: ALPHAS}
train: {epochs: 2, batch_size: 32}
finetune: {epochs: 1, batch_size: 32}
"""


def _run(grid_text: str, out: Path, registry=None) -> tuple[float, dict]:
    from xaibench.runner import run

    grid = out.parent / f"{out.name}.yaml"
    grid.write_text(grid_text)
    start = time.perf_counter()
    summary = run(grid, out, progress=False, registry=registry, echo=lambda *a: None)
    return time.perf_counter() - start, summary


def train_throughput_ratio(epochs: int = 2, n: int = 512, size: int = 64) -> dict:
    import torch

    from xaibench import registry
    from xaibench.training import fit, to_tensor

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    backbone = registry.create("backbones", "resnet18")

    def ours():
        torch.manual_seed(0)
        fit(backbone.build(2), images, labels, epochs=epochs, batch_size=32, lr=1e-3, weight_decay=0.0,
            optimizer="adam", augment=False, seed=0, device="cpu")

    def plain():
        torch.manual_seed(0)
        model = backbone.build(2).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, y = to_tensor(images), torch.from_numpy(labels)
        for _ in range(epochs):
            for i in range(0, n, 32):
                loss = torch.nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
                opt.zero_grad()
                loss.backward()
                opt.step()

    from gradcam_speed import best_times

    best = best_times({"xaibench": ours, "plain": plain}, repeats=3)
    return {"train_throughput_ratio": best["plain"] / best["xaibench"], "train_xaibench_s": best["xaibench"],
            "train_plain_s": best["plain"]}


def alpha_sweep_ratio(tmp: Path) -> dict:
    one, _ = _run(TINY_GRID.replace("ALPHAS", "[0.9]"), tmp / "alpha1")
    alphas = [round(float(a), 1) for a in np.linspace(0, 1, 11)]
    eleven, _ = _run(TINY_GRID.replace("ALPHAS", str(alphas)), tmp / "alpha11")
    return {"alpha_sweep_ratio": eleven / one, "alpha1_s": one, "alpha11_s": eleven}


def sam_seeders_ratio(tmp: Path) -> dict:
    """Tiny SAM (random weights) registered in-process; 3 seeders vs 1 over the same explanations."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from xaibench import hookimpl
    from xaibench.registry import Registry
    from xaibench_plugins.segmenters import SamSegmenter

    class TinySam(SamSegmenter):
        def check(self):
            return None

        def _build_model(self):
            torch.manual_seed(0)
            encoder = ImageEncoderViT(img_size=256, patch_size=16, embed_dim=192, depth=4, num_heads=4,
                                      out_chans=64, global_attn_indexes=(3,), window_size=4)
            prompt = PromptEncoder(embed_dim=64, image_embedding_size=(16, 16), input_image_size=(256, 256),
                                   mask_in_chans=8)
            decoder = MaskDecoder(transformer_dim=64, transformer=TwoWayTransformer(depth=1, embedding_dim=64,
                                  mlp_dim=128, num_heads=2), num_multimask_outputs=3, iou_head_hidden_dim=64)
            return Sam(encoder, prompt, decoder)

    class Plugin:
        @hookimpl
        def register_segmenters(self, register):
            register("tiny-sam", TinySam)

    registry = Registry()
    registry.add_plugin(Plugin(), name="bench-tiny-sam")
    grid = textwrap.dedent("""\
        name: sam
        datasets:
          - {name: synthetic, n_train: 32, n_val: 0, n_test: 64, image_size: 64}
        backbones: [resnet18]
        explainers: [gradcam]
        seeders: SEEDERS
        segmenters: [tiny-sam]
        train: {epochs: 1, batch_size: 32}
        """)
    base, _ = _run(grid.replace("SEEDERS", "[top-k]"), tmp / "sam-warm", registry)  # trains and explains once
    timings = {}
    for count, seeders in ((1, "[{name: top-k, k: 1}]"), (3, "[{name: top-k, k: 1}, {name: top-k, k: 2}, components]")):
        out = tmp / f"sam{count}"
        import shutil

        shutil.copytree(tmp / "sam-warm", out)
        _, summary = _run(grid.replace("SEEDERS", seeders), out, registry)
        assert summary["trainings_run"] == 0
        timings[count] = _stage_seconds(out, "segment")
    return {"sam_seeders_ratio": timings[3] / timings[1], "sam_1_seeder_s": timings[1], "sam_3_seeders_s": timings[3]}


def _stage_seconds(out: Path, kind: str) -> float:
    """Seconds the run's stages of ``kind`` took, as recorded in its store (excludes figures and report)."""
    import sqlite3

    with sqlite3.connect(out / "store.sqlite") as db:
        return db.execute("SELECT SUM(seconds) FROM stages WHERE kind = ? AND status = 'done'", (kind,)).fetchone()[0]


def quickstart(tmp: Path) -> dict:
    """The quickstart from scratch, then a rerun, timing the rerun's checks of every reused artifact."""
    from xaibench import store
    from xaibench.runner import run

    grid = ROOT / "grids" / "quickstart.yaml"
    start = time.perf_counter()
    run(grid, tmp / "quickstart", progress=False, echo=lambda *a: None)
    first = time.perf_counter() - start
    spent = [0.0]
    check = store.check_file

    def timed(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return check(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - begin

    store.check_file = timed
    try:
        start = time.perf_counter()
        summary = run(grid, tmp / "quickstart", progress=False, echo=lambda *a: None)
        rerun = time.perf_counter() - start
    finally:
        store.check_file = check
    return {"quickstart_seconds": first, "rerun_seconds": rerun, "rerun_trainings": summary["trainings_run"],
            "rerun_verification_share": spent[0] / rerun}


VALIDATION_GRID = """\
name: validation
datasets:
  - {name: synthetic, n_train: 256, n_val: 0, n_test: 128, image_size: 64}
backbones: [resnet18]
masks: [blur]
ensembles: [{name: logit-mix, alpha: 0.5}]
explainers: [gradcam]
seeders: [top-k, components]
segmenters: [random-walker]
train: {epochs: 1, batch_size: 32}
finetune: {epochs: 1, batch_size: 32}
"""


def validation_share(tmp: Path) -> dict:
    """Times every contract validator the stage runner calls, per stage kind, against the stage's time."""
    import sqlite3

    from xaibench import stages

    spent: dict[str, float] = {}
    kinds = {"validate_classes": "data", "validate_sample": "data", "validate_model": "train",
             "validate_masked": "finetune", "validate_logits": "logits", "validate_layers": "explain",
             "validate_ensemble": "explain", "validate_maps": "explain", "validate_prompt_sets": "seeds",
             "validate_segmentation": "segment", "validate_annotation": "accept"}
    originals = {name: getattr(stages, name) for name in kinds}

    def timed(name):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                spent[kinds[name]] = spent.get(kinds[name], 0.0) + time.perf_counter() - start
        return call

    for name in kinds:
        setattr(stages, name, timed(name))
    try:
        _run(VALIDATION_GRID, tmp / "validation")
    finally:
        for name, fn in originals.items():
            setattr(stages, name, fn)
    with sqlite3.connect(tmp / "validation" / "store.sqlite") as db:
        seconds = dict(db.execute("SELECT kind, SUM(seconds) FROM stages WHERE status = 'done' GROUP BY kind"))
    shares = {kind: spent.get(kind, 0.0) / seconds[kind] for kind in seconds}
    return {"validation_share": max(shares.values()), "validation_share_by_stage": shares}


PLANNING_GRID = """\
name: planning
seeds: SEEDS
datasets: [{name: synthetic, image_size: 64}]
backbones: [resnet18]
masks: [white, black, median, blur]
ensembles: [{name: logit-mix, sweep: {alpha: ALPHAS}}]
explainers: [gradcam]
seeders: SEEDERS
segmenters: SEGMENTERS
"""


def planning_seconds(tmp: Path) -> dict:
    """``xaibench run --dry-run`` (a fresh process, imports and plugin loading included) of a grid of about
    10,000 and of about 1,000,000 cells: wall seconds and peak memory of each (goals: < 2 s, < 60 s)."""
    import subprocess

    alphas = str([round(i / 25, 4) for i in range(25)])
    out = {}
    for name, seeds, seeders, segmenters in (
            ("10k", 4, 5, 4), ("1m", 100, 10, 10)):
        grid = (PLANNING_GRID.replace("SEEDS", str(list(range(seeds)))).replace("ALPHAS", alphas)
                .replace("SEEDERS", "[" + ", ".join(f"{{name: top-k, k: {k}}}" for k in range(1, seeders + 1)) + "]")
                .replace("SEGMENTERS", "[" + ", ".join(f"{{name: random-walker, beta: {10 * b}}}"
                                                       for b in range(1, segmenters + 1)) + "]"))
        path = tmp / f"planning-{name}.yaml"
        path.write_text(grid)
        code = ("import sys; from xaibench.cli import main; main(['run', '--grid', sys.argv[1], '--dry-run']); "
                "print('peak', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
        out[f"planning_{name}_seconds"] = time.perf_counter() - start
        out[f"planning_{name}_cells"] = int(done.stdout.split(" cells,")[0].rsplit(" ", 1)[1].replace(",", ""))
        out[f"planning_{name}_peak_mib"] = int(done.stdout.rsplit("peak", 1)[1]) / 1024
    return out


def gradcam_forward_ratio(tmp: Path, threads: int) -> dict:
    import gradcam_speed

    return gradcam_speed.main(["--n", "32", "--size", "224", "--threads", str(threads)])


MEASUREMENTS = {
    "train_throughput_ratio": lambda tmp, threads: train_throughput_ratio(),
    "gradcam_forward_ratio": gradcam_forward_ratio,
    "alpha_sweep_ratio": lambda tmp, threads: alpha_sweep_ratio(tmp),
    "sam_seeders_ratio": lambda tmp, threads: sam_seeders_ratio(tmp),
    "validation_share": lambda tmp, threads: validation_share(tmp),
    "planning": lambda tmp, threads: planning_seconds(tmp),
    "quickstart": lambda tmp, threads: quickstart(tmp),
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", help="comma-separated measurement keys to run (see --list)")
    parser.add_argument("--list", action="store_true", help="name the measurements and stop")
    parser.add_argument("--skip-quickstart", action="store_true", help="skip the two quickstart timings (~3 min)")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(MEASUREMENTS))
        return {}
    chosen = list(MEASUREMENTS) if not args.only else [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in chosen if k not in MEASUREMENTS]
    if unknown:
        parser.error(f"unknown measurement(s) {', '.join(unknown)}; --list names them")
    if args.skip_quickstart and not args.only:
        chosen.remove("quickstart")

    import torch

    torch.set_num_threads(args.threads)
    result = {"environment": {"python": platform.python_version(), "torch": torch.__version__,
                              "platform": platform.platform(), "threads": args.threads}}
    with tempfile.TemporaryDirectory() as tmp:
        for key in chosen:
            folder = Path(tmp) / key
            folder.mkdir()
            result.update(MEASUREMENTS[key](folder, args.threads))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return result


if __name__ == "__main__":
    main()
