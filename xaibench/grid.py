"""Grid files: YAML → validated ``Grid`` → the cross product of cells.

A component entry is either a bare name (``blur``) or a mapping with ``name``, its keyword parameters,
and an optional ``sweep`` mapping of parameter → list of values, each value a grid axis::

    ensembles:
      - name: logit-mix
        sweep: {alpha: [0.8, 0.9, 1.0]}

Every error names the file, line and column of the offending YAML node.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import pydantic
import yaml
from pydantic import Field

from .errors import ComponentParamsError, GridError, UserError


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(value: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


# -- schema -----------------------------------------------------------------------------------------


class ComponentSpec(pydantic.BaseModel):
    """One grid entry: a component name, fixed parameters and swept parameters."""

    model_config = pydantic.ConfigDict(extra="forbid")

    name: str
    params: dict[str, Any] = {}
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}

    @pydantic.model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value):
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict):
            value = dict(value)
            out = {"name": value.pop("name", None), "sweep": value.pop("sweep", {})}
            if out["name"] is None:
                raise ValueError("a component entry needs a 'name'")
            out["params"] = value
            return out
        raise ValueError("a component entry is a name or a mapping with 'name' and its parameters")

    @pydantic.field_validator("sweep")
    @classmethod
    def _distinct(cls, sweep):
        for param, values in sweep.items():
            seen = [canonical_json(v) for v in values]
            if len(set(seen)) != len(seen):
                raise ValueError(f"sweep of {param!r} repeats a value: {values}")
        return sweep

    def choices(self) -> list["Choice"]:
        overlap = set(self.params) & set(self.sweep)
        if overlap:
            raise ValueError(f"parameters both fixed and swept: {sorted(overlap)}")
        keys = sorted(self.sweep)
        out = []
        for combo in itertools.product(*(self.sweep[k] for k in keys)):
            out.append(Choice(self.name, {**self.params, **dict(zip(keys, combo))}))
        return out


class TrainConfig(pydantic.BaseModel):
    """Optimisation settings of one training stage."""

    model_config = pydantic.ConfigDict(extra="forbid")

    epochs: Annotated[int, Field(ge=1)] = 5
    batch_size: Annotated[int, Field(ge=1)] = 32
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    optimizer: Literal["adam", "sgd"] = "adam"
    augment: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast the forward pass (CPU or CUDA)
    channels_last: bool = False  # NHWC memory layout, faster convolutions on recent GPUs and CPUs


class Protocol(pydantic.BaseModel):
    """How models are trained and scored (the paper's protocol, with its open choices made explicit).

    ``missing_mask``: what fine-tuning does with training samples that have no annotation mask:
    ``borrow`` masks them with the mask of another (randomly drawn, seeded) annotated training sample,
    so the presence and shape of a mask cannot reveal the label; ``raw`` leaves them unmasked (leaks the
    label whenever only one class is annotated); ``drop`` leaves them out of fine-tuning.
    ``cam_threshold``: saliency maps are min-max normalised per image and binarised at this value before
    the Jaccard index against the ground-truth mask is taken."""

    model_config = pydantic.ConfigDict(extra="forbid")

    missing_mask: Literal["borrow", "raw", "drop"] = "borrow"
    cam_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    eval_batch_size: Annotated[int, Field(ge=1)] = 64


class LoopConfig(pydantic.BaseModel):
    """The annotation loop's settings (``xaibench loop``; ``xaibench run`` ignores them).

    ``rounds``: how many times the annotations are renewed and the masked model retrained after round 0
    (which trains on the dataset's own annotations), so at most ``rounds + 1`` masked trainings per chain.
    ``acceptors``: acceptance rules, a grid axis like any component list. A chain stops early once a round
    changes none of its annotations (converged), or at most a share ``min_changed`` of them (stopped)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    rounds: Annotated[int, Field(ge=1)] = 3
    acceptors: Annotated[list[ComponentSpec], Field(min_length=1)] = [ComponentSpec(name="agreement")]
    min_changed: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0


class Grid(pydantic.BaseModel):
    """A validated grid file."""

    model_config = pydantic.ConfigDict(extra="forbid")

    name: str = "grid"
    seeds: Annotated[list[int], Field(min_length=1)] = [0]
    datasets: Annotated[list[ComponentSpec], Field(min_length=1)]
    backbones: Annotated[list[ComponentSpec], Field(min_length=1)]
    masks: list[ComponentSpec] = []
    ensembles: list[ComponentSpec] = []
    explainers: list[ComponentSpec] = []
    seeders: list[ComponentSpec] = []
    segmenters: list[ComponentSpec] = []
    train: TrainConfig = TrainConfig()
    finetune: TrainConfig = TrainConfig(epochs=3, lr=1e-4)
    protocol: Protocol = Protocol()
    executor: ComponentSpec = ComponentSpec(name="local")
    device: str = "auto"
    published: Optional[str] = None  # CSV of published numbers (dataset, mask, alpha, accuracy), relative to the grid
    loop: LoopConfig = LoopConfig()

    @pydantic.field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds):
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat a value: {seeds}")
        return seeds

    @pydantic.model_validator(mode="after")
    def _prompt_chain(self):
        if self.segmenters and not self.seeders:
            raise ValueError("segmenters need at least one seeder to prompt them")
        if self.seeders and not self.explainers:
            raise ValueError("seeders need at least one explainer whose maps they seed from")
        if self.masks and not self.ensembles:
            raise ValueError("masked models are only scored through an ensemble: add one (e.g. logit-mix)")
        return self


# Which grid sections hold which component kind.
SECTION_KIND = {
    "datasets": "datasets",
    "backbones": "backbones",
    "masks": "masks",
    "ensembles": "ensembles",
    "explainers": "explainers",
    "seeders": "seeders",
    "segmenters": "segmenters",
}


@dataclasses.dataclass(frozen=True)
class Choice:
    """A concrete component: a name and its full parameters (one point of its sweep)."""

    name: str
    params: dict

    @property
    def ident(self) -> dict:
        return {"name": self.name, "params": self.params}

    @property
    def label(self) -> str:
        if not self.params:
            return self.name
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name}({inner})"

    def __hash__(self):
        return hash(canonical_json(self.ident))

    def __eq__(self, other):
        return isinstance(other, Choice) and self.ident == other.ident


# -- YAML with locations -----------------------------------------------------------------------------


class _Source:
    """A parsed YAML document that can point at the node behind a validation error's location."""

    def __init__(self, text: str, path: str):
        self.path = path
        try:
            self.node = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            raise GridError(f"{where}: YAML syntax error: {exc.problem}. Fix the YAML and run again.") from None
        except yaml.YAMLError as exc:
            raise GridError(f"{path}: YAML error: {exc}") from None

    def where(self, loc, *, key: bool = False) -> str:
        """``file:line:column`` of the node at ``loc``; of its key rather than its value if ``key``."""
        node = self.node
        for depth, part in enumerate(loc):
            child = None
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if key_node.value == str(part):
                        child = key_node if key and depth == len(loc) - 1 else value_node
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                child = node.value[part]
            if child is None:
                break
            node = child
        if node is None:
            return self.path
        return f"{self.path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def _readable_loc(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_grid(path: str | Path, registry) -> Grid:
    """Read, validate and check a grid file against the components of ``registry``.

    Raises ``GridError`` naming the file, line and column of every problem found."""
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {str(path)!r} does not exist; pass an existing YAML file to --grid")
    return parse_grid(path.read_text(), str(path), registry=registry)


def parse_grid(text: str, path: str = "<grid>", *, registry) -> Grid:
    source = _Source(text, path)
    if not isinstance(source.data, dict):
        raise GridError(f"{path}: a grid is a YAML mapping with 'datasets', 'backbones', ... at the top level")
    try:
        grid = Grid.model_validate(source.data)
    except pydantic.ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if p not in ("function-before", "function-after"))
            msg = err["msg"].removeprefix("Value error, ")
            extra = err["type"] == "extra_forbidden"
            if extra:
                msg = "unknown key"
            lines.append(f"{source.where(loc, key=extra)}: {_readable_loc(loc)}: {msg}")
        raise GridError("invalid grid:\n  " + "\n  ".join(lines)) from None
    problems = []
    checks = [(kind, (section, i), spec) for section, kind in SECTION_KIND.items()
              for i, spec in enumerate(getattr(grid, section))]
    checks.append(("executors", ("executor",), grid.executor))
    if "loop" in source.data:  # the default acceptor is checked by the loop itself
        checks += [("acceptors", ("loop", "acceptors", i), spec) for i, spec in enumerate(grid.loop.acceptors)]
    for kind, base, spec in checks:
        try:
            choices = spec.choices()
        except ValueError as exc:
            problems.append(f"{source.where(base)}: {_readable_loc(base)}: {exc}")
            continue
        for choice in choices:
            try:
                registry.validate(kind, choice.name, choice.params)
            except ComponentParamsError as exc:
                for param, msg in exc.problems:
                    if param in spec.sweep:
                        loc = base + ("sweep", param, spec.sweep[param].index(choice.params[param]))
                    else:
                        loc = base + (param,)
                    unknown = msg.startswith("unknown parameter")
                    problems.append(f"{source.where(loc, key=unknown)}: {_readable_loc(loc)}: {choice.name}: {msg}")
            except UserError as exc:
                problems.append(f"{source.where(base + ('name',))}: {_readable_loc(base)}: {exc}")
    if grid.published is not None:
        published = (Path(path).parent / grid.published).resolve()
        if not published.is_file():
            problems.append(f"{source.where(('published',))}: published: file {str(published)!r} does not exist")
        else:
            grid.published = str(published)
    if problems:
        unique = list(dict.fromkeys(problems))
        raise GridError("invalid grid:\n  " + "\n  ".join(unique))
    return grid


# -- cells -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cell:
    """One leaderboard row: a model variant scored by one explainer → seeder → segmenter chain.

    ``mask`` and ``ensemble`` are None for the baseline (the model trained on raw images alone)."""

    dataset: Choice
    backbone: Choice
    seed: int
    mask: Choice | None
    ensemble: Choice | None
    explainer: Choice | None
    seeder: Choice | None
    segmenter: Choice | None

    @property
    def ident(self) -> dict:
        return {
            f.name: (getattr(self, f.name).ident if isinstance(getattr(self, f.name), Choice) else getattr(self, f.name))
            for f in dataclasses.fields(self)
        }

    @property
    def cell_id(self) -> str:
        return digest(self.ident)


def label_of(choice: Choice | None) -> str:
    """A choice's label in tables (``name`` or ``name(k=v,...)``); empty for no choice."""
    return choice.label if choice is not None else ""


def all_choices(specs: list[ComponentSpec]) -> list[Choice]:
    return [choice for spec in specs for choice in spec.choices()]


def expand(grid: Grid) -> list[Cell]:
    """The cross product of a grid, in a stable order: baseline cells first, then each mask × ensemble."""
    variants = [(None, None)] + [(m, e) for m in all_choices(grid.masks) for e in all_choices(grid.ensembles)]
    explainers = all_choices(grid.explainers) or [None]
    chains = [(None, None)]
    if grid.segmenters:
        chains = [(s, g) for s in all_choices(grid.seeders) for g in all_choices(grid.segmenters)]
    cells = []
    for dataset, backbone, seed in itertools.product(all_choices(grid.datasets), all_choices(grid.backbones), grid.seeds):
        for (mask, ensemble), explainer, (seeder, segmenter) in itertools.product(variants, explainers, chains):
            if explainer is None:
                seeder = segmenter = None
            cells.append(Cell(dataset, backbone, seed, mask, ensemble, explainer, seeder, segmenter))
    return list(dict.fromkeys(cells))
