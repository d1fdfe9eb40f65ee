"""xaibench's speed goals, each measured as a ratio inside one run so machine noise cancels.

    python benchmarks/run.py [--only KEY[,KEY...]] [--list] [--json FILE] [--skip-quickstart]

Each measurement has a key (``--list`` names them; ``--only`` runs the chosen ones, each under about two
minutes on a 2-core CPU). Prints a JSON object with:

- ``train_throughput_ratio``: images/s of xaibench's training loop (``xaibench.pipeline.training.fit``) over a plain
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
- ``scheduler``: from a small run's stage times, the dependency-driven schedule's makespan (and the old
  wave-by-wave one's) over the list-scheduling reference at 2 to 64 workers (goal <= 1.05); and the
  wall time of the process executor over local on that grid.
- ``fixed_cost_ratio``: ``xaibench run`` of a small Table I grid over ``handwritten.py``, the same protocol
  in plain PyTorch (fresh processes, median of 3 interleaved; goal <= 1.1).
- ``memory_8000_over_500``: peak resident memory of training, fine-tuning, explanation and scoring on
  8,000 training tiles over 500 (96 px; goal <= 1.2).
- ``faithfulness_cost``: seconds per image of deletion/insertion and of ROAD at 5 and 10 steps, and a
  faithfulness stage (which also scores the random map) over Grad-CAM's; ROAD's imputation against
  pytorch-grad-cam's.
- ``validation_share``: per stage kind, the share of the stage's time spent checking components'
  outputs against their contracts (goal <= 0.02).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
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
    from xaibench.commands.run import run

    grid = out.parent / f"{out.name}.yaml"
    grid.write_text(grid_text)
    start = time.perf_counter()
    summary = run(grid, out, progress=False, registry=registry, echo=lambda *a: None).info
    return time.perf_counter() - start, summary


def train_throughput_ratio(epochs: int = 2, n: int = 512, size: int = 64) -> dict:
    import torch

    from xaibench.kit import registry
    from xaibench.pipeline.artifacts import Rows
    from xaibench.pipeline.grid import TrainConfig
    from xaibench.pipeline.training import fit, to_tensor

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    backbone = registry.create("backbones", "resnet18")
    folder = Path(tempfile.mkdtemp())  # xaibench reads the split from disk a batch at a time
    np.save(folder / "images.npy", images)
    rows = Rows(folder / "images.npy")

    def ours():
        torch.manual_seed(0)
        fit(backbone.build(2), rows, labels, TrainConfig(epochs=epochs, batch_size=32, lr=1e-3, augment=False), seed=0,
            device="cpu")

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
    shutil.rmtree(folder, ignore_errors=True)
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
    from xaibench.kit.registry import Registry
    from xaibench_plugins.sam import SamSegmenter

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
        timings[count] = _stage_seconds(out, "segment", besides=tmp / "sam-warm")
    return {"sam_seeders_ratio": timings[3] / timings[1], "sam_1_seeder_s": timings[1], "sam_3_seeders_s": timings[3]}


def _stage_seconds(out: Path, kind: str, besides: Path | None = None) -> float:
    """Seconds the run's stages of ``kind`` took, as recorded in its store (excludes figures and report);
    ``besides``: the folder ``out`` was copied from, whose stages (recorded there too) are left out."""
    import sqlite3

    def done(folder):
        with sqlite3.connect(folder / "store.sqlite") as db:
            return dict(db.execute("SELECT key, seconds FROM stages WHERE kind = ? AND status = 'done'", (kind,)))

    earlier = done(besides) if besides is not None else {}
    return sum(seconds for key, seconds in done(out).items() if key not in earlier)


def quickstart(tmp: Path) -> dict:
    """The quickstart from scratch, then a rerun, timing the rerun's checks of every reused artifact."""
    from xaibench.commands.run import run
    from xaibench.pipeline import store

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
        summary = run(grid, tmp / "quickstart", progress=False, echo=lambda *a: None).info
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

    from xaibench.kit import contracts
    from xaibench.pipeline import stages

    spent: dict[str, float] = {}
    kinds = {"validate_classes": "data", "validate_sample": "data", "validate_model": "train",
             "validate_masked": "finetune", "validate_logits": "logits", "validate_layers": "explain",
             "validate_ensemble": "explain", "validate_maps": "explain", "validate_prompt_sets": "seeds",
             "validate_segmentation": "segment", "validate_annotation": "accept"}
    # Where each validator is looked up when called: the stage runner's module, except the ensemble check,
    # which contracts.apply_ensemble makes (for explanations, and for scoring's mixes, counted here too).
    modules = {name: contracts if name == "validate_ensemble" else stages for name in kinds}
    originals = {name: getattr(modules[name], name) for name in kinds}

    def timed(name):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                spent[kinds[name]] = spent.get(kinds[name], 0.0) + time.perf_counter() - start
        return call

    for name in kinds:
        setattr(modules[name], name, timed(name))
    try:
        _run(VALIDATION_GRID, tmp / "validation")
    finally:
        for name, fn in originals.items():
            setattr(modules[name], name, fn)
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
        code = ("import sys; from xaibench.commands.cli import main; "
                "main(['run', '--grid', sys.argv[1], '--dry-run']); "
                "print('peak', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
        out[f"planning_{name}_seconds"] = time.perf_counter() - start
        out[f"planning_{name}_cells"] = int(done.stdout.split(" cells,")[0].rsplit(" ", 1)[1].replace(",", ""))
        out[f"planning_{name}_peak_mib"] = int(done.stdout.rsplit("peak", 1)[1]) / 1024
    return out


SCHEDULE_GRID = """\
name: schedule
seeds: [0, 1]
datasets: [{name: synthetic, n_train: 96, n_val: 0, n_test: 48, image_size: 48}]
backbones: [resnet18]
masks: [white, blur]
ensembles: [{name: logit-mix, sweep: {alpha: [0.5, 0.9]}}]
explainers: [gradcam]
seeders: [top-k, components]
segmenters: [random-walker]
train: {epochs: 2, batch_size: 32}
finetune: {epochs: 1, batch_size: 32}
"""


def scheduler(tmp: Path, threads: int) -> dict:
    """A small grid run locally; from its recorded stage times, the makespan of the dependency-driven and
    of the wave-by-wave schedule at 2 to 64 workers over the list-scheduling reference (schedule.py).
    Then the same grid's wall time under the process executor (2 workers, 1 thread each) over local."""
    import schedule

    local, _ = _run(SCHEDULE_GRID, tmp / "local")
    simulated = schedule.compare(tmp / "local")
    process, _ = _run(SCHEDULE_GRID + "executor: {name: process, workers: 2, threads: 1}\n", tmp / "process")
    return {"schedule_dependencies_worst": simulated["dependencies_worst"],
            "schedule_waves_worst": simulated["waves_worst"],
            "schedule_by_workers": {p: {k: round(v, 3) for k, v in simulated[p].items()} for p in
                                    ("2", "4", "8", "16", "32", "64")},
            "process_over_local_wall": process / local, "local_s": local, "process_s": process}


FIXED_COST_GRID = """\
name: fixed-cost
seeds: [0]
datasets: [{name: synthetic, n_train: 192, n_val: 0, n_test: 96, image_size: 64}]
backbones: [resnet18]
masks: [blur, white, median, black]
ensembles: [{name: logit-mix, sweep: {alpha: [0.8, 0.9, 1.0]}}]
train: {epochs: 3, batch_size: 32, lr: 0.001, augment: false}
finetune: {epochs: 2, batch_size: 32, lr: 0.0001, augment: false}
"""


def fixed_cost(tmp: Path, repeats: int = 3) -> dict:
    """``xaibench run`` of a small Table I grid against ``handwritten.py`` doing the same protocol by
    hand, each a fresh process, interleaved, median of ``repeats`` (goal <= 1.1)."""
    import statistics
    import subprocess

    grid = tmp / "fixed-cost.yaml"
    grid.write_text(FIXED_COST_GRID)
    times: dict[str, list[float]] = {"xaibench": [], "handwritten": []}
    for i in range(repeats):
        for name, command in (("xaibench", [sys.executable, "-m", "xaibench.commands.cli", "run", "--grid", str(grid),
                                            "--out", str(tmp / f"run{i}"), "--quiet"]),
                              ("handwritten", [sys.executable, str(Path(__file__).with_name("handwritten.py"))])):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"fixed_cost_ratio": median["xaibench"] / median["handwritten"], "fixed_cost_xaibench_s": median["xaibench"],
            "fixed_cost_handwritten_s": median["handwritten"]}


MEMORY_GRID = """\
name: memory
datasets: [{name: synthetic, n_train: N_TRAIN, n_val: 0, n_test: 200, image_size: 96}]
backbones: [tiny-cnn]
masks: [blur]
ensembles: [{name: logit-mix, alpha: 0.5}]
explainers: [{name: gradcam, target_layer: conv}]
seeders: [top-k]
segmenters: [cam-threshold]
train: {epochs: 1, batch_size: 32}
finetune: {epochs: 1, batch_size: 32}
"""


class TinyCnn:
    """A two-layer CNN: memory and time of a stage are then its data handling's, not the network's."""

    def __init__(self):
        pass

    def build(self, num_classes, *, pretrained=True):
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
                self.head = torch.nn.Linear(8, num_classes)

            def forward(self, images):
                return self.head(torch.relu(self.conv(images)).mean(dim=(2, 3)))

        return Net()

    def target_layers(self, model):
        return [model.conv]


def _memory_run(folder: str, n: int) -> None:
    """One run of MEMORY_GRID with ``n`` training tiles (in a fresh process, see ``memory_scaling``)."""
    from xaibench import hookimpl
    from xaibench.kit.registry import Registry

    class Plugin:
        @hookimpl
        def register_backbones(self, register):
            register("tiny-cnn", TinyCnn)

    registry = Registry()
    registry.add_plugin(Plugin(), name="bench-tiny-cnn")
    _, summary = _run(MEMORY_GRID.replace("N_TRAIN", str(n)), Path(folder), registry)
    print(json.dumps({"scoring": summary["scoring_peak_rss_mib"]}))


def memory_scaling(tmp: Path) -> dict:
    """Peak resident memory of each stage kind (the stage runner records it) and of scoring, on 500 and on
    8,000 training tiles of 96 px (goal: the 8,000 run <= 1.2 x the 500 run). Each size is run twice in
    fresh processes: once to build the data stage, then, with every other stage removed, again, so the
    measured stages run in a process that never held the dataset plugin's samples (the data stage writes
    one sample at a time, but a plugin may build a whole split in memory)."""
    import shutil
    import sqlite3
    import subprocess

    code = "import sys; sys.path.insert(0, sys.argv[1]); import run; run._memory_run(sys.argv[2], int(sys.argv[3]))"
    peaks = {}
    for n in (500, 8000):
        folder = tmp / f"memory{n}"
        command = [sys.executable, "-c", code, str(Path(__file__).parent), str(folder), str(n)]
        subprocess.run(command, check=True, capture_output=True)
        with sqlite3.connect(folder / "store.sqlite") as db:
            db.execute("DELETE FROM stages WHERE kind != 'data'")
            db.execute("DELETE FROM artifacts WHERE path NOT LIKE 'cache/data/%'")
            db.execute("DELETE FROM cells")
        for sub in (folder / "cache").iterdir():
            if sub.name != "data":
                shutil.rmtree(sub)
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        with sqlite3.connect(folder / "store.sqlite") as db:
            rows = db.execute("SELECT kind, meta FROM stages WHERE status = 'done' AND kind != 'data'").fetchall()
        by_kind: dict[str, float] = {}
        for kind, meta in rows:
            by_kind[kind] = max(by_kind.get(kind, 0.0), json.loads(meta).get("peak_rss_mib") or 0.0)
        by_kind["scoring"] = json.loads(done.stdout.strip().splitlines()[-1])["scoring"]
        peaks[n] = by_kind
    kinds = ("train", "finetune", "explain", "scoring")
    ratios = {kind: peaks[8000][kind] / peaks[500][kind] for kind in kinds}
    return {"memory_8000_over_500": max(ratios.values()), "memory_ratio_by_stage": ratios,
            "memory_peak_mib": {str(n): {k: peaks[n][k] for k in kinds} for n in peaks}}


def gradcam_forward_ratio(tmp: Path, threads: int) -> dict:
    import gradcam_speed

    return gradcam_speed.main(["--n", "32", "--size", "224", "--threads", str(threads)])


def faithfulness_cost(n: int = 16, size: int = 96) -> dict:
    """Seconds per image of Grad-CAM (layer3 of a ResNet18 at 96 px) and of each faithfulness score at 5 and
    10 steps, as multiples of Grad-CAM's; and ROAD's imputation here against pytorch-grad-cam's
    ``NoisyLinearImputer`` on the same masks (both give the same images)."""
    import time

    import numpy as np
    import torch
    import torchvision
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    from xaibench.kit.registry import get_registry
    from xaibench.pipeline import faithfulness

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2).eval()
    images, targets = torch.rand(n, 3, size, size), torch.ones(n, dtype=torch.long)
    explainer = get_registry().create("explainers", "gradcam")
    start = time.perf_counter()
    maps = explainer.explain(model, images, targets, target_layers=[model.layer3])
    gradcam = (time.perf_counter() - start) / n
    out = {"gradcam_seconds_per_image": gradcam}
    for steps in (5, 10):
        start = time.perf_counter()
        faithfulness.deletion_insertion(model, images, maps, targets, steps=steps)
        curves = (time.perf_counter() - start) / n
        start = time.perf_counter()
        faithfulness.road(model, images, maps, targets, steps=steps)
        road = (time.perf_counter() - start) / n
        # a faithfulness stage also scores the random map of each image: twice these
        out[f"faithfulness_{steps}_steps"] = {"deletion_insertion_seconds_per_image": curves,
                                              "road_seconds_per_image": road,
                                              "stage_over_gradcam": 2 * (curves + road) / gradcam}
    rng = np.random.default_rng(0)
    masks = [rng.random((size, size)) < share for share in (0.1, 0.3, 0.5, 0.7, 0.9)]
    timings = {}
    for name, impute in (("ours", lambda image, known: faithfulness.impute(image, known)),
                         ("library", lambda image, known: NoisyLinearImputer()(image, torch.from_numpy(known.astype(np.float32))))):
        start = time.perf_counter()
        for known in masks:
            impute(images[0], known)
        timings[name] = time.perf_counter() - start
    out["road_imputation_library_over_ours"] = timings["library"] / timings["ours"]
    return out


MEASUREMENTS = {
    "train_throughput_ratio": lambda tmp, threads: train_throughput_ratio(),
    "gradcam_forward_ratio": gradcam_forward_ratio,
    "alpha_sweep_ratio": lambda tmp, threads: alpha_sweep_ratio(tmp),
    "sam_seeders_ratio": lambda tmp, threads: sam_seeders_ratio(tmp),
    "validation_share": lambda tmp, threads: validation_share(tmp),
    "planning": lambda tmp, threads: planning_seconds(tmp),
    "scheduler": scheduler,
    "memory_scaling": lambda tmp, threads: memory_scaling(tmp),
    "fixed_cost": lambda tmp, threads: fixed_cost(tmp),
    "faithfulness_cost": lambda tmp, threads: faithfulness_cost(),
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
