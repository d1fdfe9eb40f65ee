"""What a plan will cost, counted from its stage specs before anything runs (``xaibench run --dry-run``).

Work is counted in units the plan knows without running anything:

- **passes**, forward-pass equivalents: one image through one network of the explained backbone. A forward
  pass (logits, a faithfulness curve's perturbed image) is 1; an explanation about 2 (a forward and a
  partial backward, ``EXPLAIN_PASSES``); a training step about 3 per image (a forward and a full
  backward, ``TRAIN_PASSES``). An ensemble of the raw and the masked model runs both: twice the passes.
- **ROAD solves**: faithfulness's noisy linear imputations, one sparse linear system per image, removal
  order and percentile (``faithfulness.impute``); their cost grows with the image, not with the network.
- **calls** of a component that runs no network here: the samples a data stage draws, the maps a seeder
  is given, the images a segmenter or an acceptor is given.

Split sizes come from what the plan holds, a dataset's grid parameters (with its plugin's declared
defaults): ``n_train``, ``n_val`` and ``n_test`` (``SIZE_PARAMS``), and ``image_size``. A dataset without
them (a folder of files, a prepared raster) has sizes only its data stage finds out: the stages that
depend on them are counted as unknown, never guessed. Only the annotated images of a split are explained;
the plan does not know how many are, so explanation-based counts take the whole split (an upper bound,
about twice the synthetic binary task's, which annotates its positives only). Every explainer is counted
alike; what one costs is its own (a map that ignores the model costs nothing, a perturbation method one
pass per channel).
"""

from __future__ import annotations

import dataclasses

from xaibench.pipeline.grid import Choice
from xaibench.pipeline.plan import (AcceptSpec, DataSpec, ExplainSpec, FaithfulnessSpec, FinetuneSpec, LogitsSpec,
                                    MixedModel, ModelRef, Plan, SanitySpec, SeedsSpec, SegmentSpec, TrainSpec)

# Forward-pass equivalents per image: a training step (forward, full backward, optimizer step) and an
# explanation (forward, backward to the target layer).
TRAIN_PASSES = 3
EXPLAIN_PASSES = 2
# The dataset parameters a plan reads split sizes from, by split, and the image side in pixels.
SIZE_PARAMS = {"train": "n_train", "val": "n_val", "test": "n_test"}
IMAGE_SIZE_PARAM = "image_size"
# What a kind's calls are calls of.
CALL_UNITS = {"data": "samples", "seeds": "maps", "segment": "images", "accept": "images"}


@dataclasses.dataclass(frozen=True)
class SplitSizes:
    """A dataset's images per split and image side in pixels, as its grid parameters give them (None:
    not known before its data stage runs)."""

    train: int | None
    val: int | None
    test: int | None
    image_size: int | None

    def of(self, split: str) -> int | None:
        return getattr(self, split)

    @property
    def known(self) -> bool:
        return None not in (self.train, self.val, self.test)


@dataclasses.dataclass(frozen=True)
class Work:
    """The work of one stage, or a sum of stages: ``passes`` forward-pass equivalents, ``solves`` ROAD
    imputations, ``calls`` component calls (see the module docstring)."""

    passes: int = 0
    solves: int = 0
    calls: int = 0

    def __add__(self, other: "Work") -> "Work":
        return Work(self.passes + other.passes, self.solves + other.solves, self.calls + other.calls)


@dataclasses.dataclass(frozen=True)
class Rates:
    """What one unit costs on one machine, timed (``xaibench.pipeline.calibration``): seconds per pass and
    per ROAD solve (None: not timed) on ``device``; ``timed_on`` says which network at which image size."""

    device: str
    pass_s: float
    solve_s: float | None
    timed_on: str


@dataclasses.dataclass(frozen=True)
class KindCost:
    """The work of every stage of one kind whose sizes are known, and how many stages are not counted
    (``unknown``: their dataset's split sizes are not known to the plan)."""

    kind: str
    stages: int
    work: Work
    unknown: int = 0

    @property
    def call_unit(self) -> str:
        return CALL_UNITS.get(self.kind, "calls")

    def seconds(self, rates: Rates | None) -> float | None:
        """Estimated seconds of the counted stages at ``rates``; None without rates, for a kind of calls
        only (their cost is the component's, not timed), or for ROAD solves where no solve was timed."""
        if rates is None or (self.work.passes == 0 and self.work.solves == 0):
            return None
        if self.work.solves and rates.solve_s is None:
            return None
        return self.work.passes * rates.pass_s + self.work.solves * (rates.solve_s or 0.0)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The cost of a plan by stage kind (in the order the plan first needs each kind), and one line per
    thing the counts could not know or take as an upper bound (``notes``)."""

    kinds: tuple[KindCost, ...]
    notes: tuple[str, ...] = ()

    def as_dict(self, rates: Rates | None = None) -> dict:
        """Plain numbers (for ``run``'s result and JSON): per kind its stages, passes, solves, calls,
        unknown stages and estimated seconds (None where not timed)."""
        return {"kinds": {k.kind: {"stages": k.stages, **dataclasses.asdict(k.work), "unknown": k.unknown,
                                   "seconds": k.seconds(rates)} for k in self.kinds},
                "rates": dataclasses.asdict(rates) if rates is not None else None,
                "notes": list(self.notes)}


def split_sizes(dataset: Choice, registry) -> SplitSizes:
    """A dataset's ``SplitSizes`` from its grid parameters and its plugin's declared defaults."""
    given = {p["name"]: p["default"] for p in registry.get("datasets", dataset.name).parameters() if not p["required"]}
    given.update(dataset.params)

    def count(name):
        value = given.get(name)
        return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    return SplitSizes(*(count(SIZE_PARAMS[split]) for split in ("train", "val", "test")), count(IMAGE_SIZE_PARAM))


def members(model: ModelRef) -> int:
    """How many networks one forward pass of an explained model runs: 2 for an ensemble, else 1."""
    return 2 if isinstance(model, MixedModel) else 1


def faithfulness_work(images: int, steps: int, networks: int = 1, *, fresh_networks: int | None = None,
                      fresh_images: bool = True) -> Work:
    """One faithfulness stage (``StageRunner._run_faithfulness``) on ``images`` images at ``steps``, on a
    model of ``networks`` networks. Per image: the references (the image whole and blurred, 2 passes), then
    for the explanation's maps and for the random maps each: deletion and insertion (``steps − 1``
    perturbed passes each) and ROAD (``2 × (steps − 1)`` passes and as many solves: least and most
    relevant removed at each of ``steps − 1`` percentiles). The references and the random maps' passes are
    the same in every stage of the same images and network, and the random maps' solves in every stage of
    the same images: an earlier stage of the same process did them where only ``fresh_networks`` of the
    networks (default: all) and, without ``fresh_images``, none of the solves are new."""
    fresh_networks = networks if fresh_networks is None else fresh_networks
    per_map_passes = 2 * (steps - 1) + 2 * (steps - 1)
    per_map_solves = 2 * (steps - 1)
    return Work(passes=images * (networks * per_map_passes + fresh_networks * (2 + per_map_passes)),
                solves=images * per_map_solves * (2 if fresh_images else 1))


def measured_images(explained: int | None, limit: int) -> int | None:
    """How many of ``explained`` images a faithfulness or sanity stage measures (``faithfulness.subset``):
    ``limit`` of them (0: all); at most ``limit`` where ``explained`` is unknown (None for 0)."""
    if explained is None:
        return limit or None
    return explained if limit <= 0 else min(limit, explained)


def stage_work(spec, sizes: SplitSizes, seen: set | None = None) -> Work | None:
    """The ``Work`` of one stage from its spec and its dataset's sizes; None where they are not known.
    ``seen``: what the stages counted before it did that a later one reuses in the same process (the
    random maps' faithfulness work, ``faithfulness_work``), updated with this stage's."""
    if isinstance(spec, DataSpec):
        return Work(calls=sizes.train + sizes.val + sizes.test) if sizes.known else None
    if isinstance(spec, (TrainSpec, FinetuneSpec)):  # fine-tuning with missing_mask drop trains on fewer
        return Work(passes=TRAIN_PASSES * sizes.train * spec.train.epochs) if sizes.train is not None else None
    if isinstance(spec, LogitsSpec):
        return Work(passes=sizes.test + sizes.val) if None not in (sizes.test, sizes.val) else None
    if isinstance(spec, ExplainSpec):
        n = sizes.of(spec.split)
        return Work(passes=EXPLAIN_PASSES * n * members(spec.model)) if n is not None else None
    if isinstance(spec, FaithfulnessSpec):
        n = measured_images(sizes.test, spec.images)
        if n is None:
            return None
        if seen is None:
            return faithfulness_work(n, spec.steps, members(spec.model))
        images = (spec.data, spec.steps, spec.images, spec.batch_size)  # the random maps' perturbations
        networks = [(key, *images) for key in spec.model.keys]
        fresh = [network for network in networks if network not in seen]
        work = faithfulness_work(n, spec.steps, len(networks), fresh_networks=len(fresh),
                                 fresh_images=images not in seen)
        seen.update(fresh + [images])
        return work
    if isinstance(spec, SanitySpec):  # one more explanation of the measured images
        n = measured_images(sizes.test, spec.images)
        return Work(passes=EXPLAIN_PASSES * n * members(spec.model)) if n is not None else None
    if isinstance(spec, (SeedsSpec, SegmentSpec)):  # a segment stage is called once per image for all seeders
        n = sizes.of(spec.split)
        return Work(calls=n) if n is not None else None
    if isinstance(spec, AcceptSpec):
        return Work(calls=sizes.train) if sizes.train is not None else None
    raise TypeError(f"no cost is counted for stages of {type(spec).__name__}")


def estimate_plan(plan: Plan, registry) -> Estimate:
    """Count the work of every stage of ``plan`` by kind (``stage_work``), with notes on what is unknown."""
    datasets = {key: stage.spec.dataset for key, stage in plan.stages.items() if isinstance(stage.spec, DataSpec)}
    sizes = {key: split_sizes(choice, registry) for key, choice in datasets.items()}
    totals: dict[str, list] = {}
    unknown: dict[str, set] = {}  # dataset label → kinds not counted
    at_limit: dict[str, set] = {}  # dataset label → kinds counted at their image limit
    seen: set = set()
    for key, stage in plan.stages.items():
        data = key if isinstance(stage.spec, DataSpec) else stage.spec.data
        work = stage_work(stage.spec, sizes[data], seen)
        entry = totals.setdefault(stage.kind, [0, Work(), 0])
        entry[0] += 1
        if work is None:
            entry[2] += 1
            unknown.setdefault(datasets[data].label, set()).add(stage.kind)
        else:
            entry[1] += work
            if sizes[data].test is None and isinstance(stage.spec, (FaithfulnessSpec, SanitySpec)):
                at_limit.setdefault(datasets[data].label, set()).add(stage.kind)
    notes = []
    for label, kinds in unknown.items():
        limits = sorted(at_limit.get(label, ()))
        notes.append(f"dataset {label}: its split sizes are not grid parameters ({', '.join(SIZE_PARAMS.values())}), "
                     f"so its {', '.join(sorted(kinds))} stages are not counted"
                     + (f" and its {' and '.join(limits)} stages are counted at their image limit" if limits else ""))
    if any(k in totals for k in ("explain", "faithfulness", "sanity", "seeds", "segment")):
        notes.append("explained images are counted as the whole split (only its annotated images are explained), "
                     "so these counts are upper bounds")
    if any(k in totals for k in ("explain", "sanity")):
        notes.append(f"every explainer is counted at ~{EXPLAIN_PASSES} passes an image (a forward and a backward): "
                     "one that never runs the model costs less, one that runs it once per channel far more")
    return Estimate(tuple(KindCost(kind, n, work, unknown) for kind, (n, work, unknown) in totals.items()),
                    tuple(notes))
