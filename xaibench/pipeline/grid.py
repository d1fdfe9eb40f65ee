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
import functools
import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional

import pydantic
import yaml
from pydantic import Field

from xaibench.errors import ComponentParamsError, GridError, UserError
from xaibench.kit.contracts import OPTIONAL, PROMPT_KINDS, capability
from xaibench.pipeline.records import component_label

MAX_SEED = 2**32 - 1


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
            # 'params:' holds parameters whose names are taken by the entry's own keys (the timm backbone's
            # 'name' of a timm model); the others may sit beside 'name' or inside it, never both.
            nested = value.pop("params", {})
            if not isinstance(nested, dict):
                raise ValueError("'params' of a component entry is a mapping of parameter names to values")
            twice = sorted(set(nested) & set(value))
            if twice:
                raise ValueError(f"parameters given both inside 'params' and beside it: {twice}")
            out["params"] = {**nested, **value}
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


# The devices a grid may name (whether this machine has them is checked before a run starts).
DEVICE_PATTERN = r"auto|cpu|cuda(:[0-9]+)?|mps"

# Numbers in grids are finite numbers, never booleans (pydantic alone would read true as 1). YAML reads
# 1e-3 (no dot) as a string: such strings are still read as numbers.
STRICT = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False)


def _not_boolean(value):
    if isinstance(value, bool):
        raise ValueError(f"{str(value).lower()} is a boolean; a number is expected")
    return value


NotBoolean = pydantic.BeforeValidator(_not_boolean)


class TrainConfig(pydantic.BaseModel):
    """Optimisation settings of one training stage: what ``training.fit`` trains with (frozen: a stage
    spec holds it)."""

    model_config = pydantic.ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    epochs: Annotated[int, NotBoolean, Field(ge=1)] = 5
    batch_size: Annotated[int, NotBoolean, Field(ge=1)] = 32
    lr: Annotated[float, NotBoolean, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, NotBoolean, Field(ge=0)] = 0.0
    optimizer: Literal["adam", "sgd"] = "adam"
    augment: bool = True
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast the forward pass (CPU or CUDA)
    channels_last: bool = False  # NHWC memory layout, faster convolutions on recent GPUs and CPUs
    # Save model, optimizer, random state and epoch after every this many epochs (0: never), but not
    # sooner than checkpoint_seconds after the last save (a checkpoint writes about three models' worth
    # of bytes; a training shorter than that loses little when interrupted), so an interrupted training
    # resumes where it was. Neither changes a result, so neither is part of a cache key.
    checkpoint_every: Annotated[int, NotBoolean, Field(ge=0)] = 1
    checkpoint_seconds: Annotated[float, NotBoolean, Field(ge=0)] = 30.0

    RESULT_NEUTRAL: ClassVar[tuple[str, ...]] = ("checkpoint_every", "checkpoint_seconds")

    def keyed(self) -> dict:
        """The settings that change a training's result (a stage key hashes these)."""
        return self.model_dump(exclude=set(self.RESULT_NEUTRAL))


# What fine-tuning the masked copies uses where a grid's `finetune` mapping leaves a setting out.
FINETUNE_DEFAULTS = {"epochs": 3, "lr": 1e-4}


class Protocol(pydantic.BaseModel):
    """How models are trained and scored (the paper's protocol, with its open choices made explicit).

    ``missing_mask``: what fine-tuning does with training samples that have no annotation mask:
    ``borrow`` masks them with the mask of another (randomly drawn, seeded) annotated training sample,
    so the presence and shape of a mask cannot reveal the label; ``raw`` leaves them unmasked (leaks the
    label whenever only one class is annotated); ``drop`` leaves them out of fine-tuning.
    ``cam_threshold``: saliency maps are min-max normalised per image and binarised at this value before
    the Jaccard index against the ground-truth mask is taken (the threshold chosen on validation, τ*, is
    reported beside it). ``faithfulness_steps``: the steps of the deletion and insertion curves and of
    ROAD's percentiles (``xaibench.pipeline.faithfulness``); 0 measures no faithfulness. ``faithfulness_images``:
    measure faithfulness on at most this many of the explained test images, evenly spaced among them
    (0: all); each costs 2 + 8 × (steps − 1) forward passes (twice that for an ensemble) and 4 × (steps − 1)
    ROAD imputations (its own map's and the random map's; ``xaibench.pipeline.estimate``), about 120 times
    its Grad-CAM at 10 steps on a CPU. ``sanity``: the
    model-parameter randomisation test (``xaibench.pipeline.sanity``): each explainer's maps again with the
    network re-initialised from the target layer on, compared with its maps of the trained model (Spearman,
    SSIM), on at most ``sanity_images`` of the explained test images (0: all), evenly spaced; it costs one
    more explanation of those images."""

    model_config = STRICT

    missing_mask: Literal["borrow", "raw", "drop"] = "borrow"
    cam_threshold: Annotated[float, NotBoolean, Field(ge=0.0, le=1.0)] = 0.5
    eval_batch_size: Annotated[int, NotBoolean, Field(ge=1)] = 64
    faithfulness_steps: Annotated[int, NotBoolean, Field(ge=0, le=100)] = 10
    faithfulness_images: Annotated[int, NotBoolean, Field(ge=0)] = 100
    sanity: bool = False
    sanity_images: Annotated[int, NotBoolean, Field(ge=0)] = 100

    @pydantic.field_validator("faithfulness_steps")
    @classmethod
    def _steps(cls, steps):
        if steps == 1:
            raise ValueError("faithfulness_steps is 0 (no faithfulness) or at least 2 (ROAD needs a percentile "
                             "between 0 and 100)")
        return steps


class LoopConfig(pydantic.BaseModel):
    """The annotation loop's settings (``xaibench loop``; ``xaibench run`` ignores them).

    ``rounds``: how many times the annotations are renewed and the masked model retrained after round 0
    (which trains on the dataset's own annotations), so at most ``rounds + 1`` masked trainings per chain.
    ``acceptors``: acceptance rules, a grid axis like any component list. A chain stops early once a round
    changes none of its annotations (converged), or at most a share ``min_changed`` of them (stopped)."""

    model_config = STRICT

    rounds: Annotated[int, NotBoolean, Field(ge=1)] = 3
    acceptors: Annotated[list[ComponentSpec], Field(min_length=1)] = [ComponentSpec(name="agreement")]
    min_changed: Annotated[float, NotBoolean, Field(ge=0.0, le=1.0)] = 0.0


class Grid(pydantic.BaseModel):
    """A validated grid file."""

    model_config = STRICT

    name: str = "grid"
    # at most MAX_SEED, the largest seed every seeded library takes (numpy's legacy seeding; torch's is 2**64 - 1)
    seeds: Annotated[list[Annotated[int, NotBoolean, Field(ge=0, le=MAX_SEED)]], Field(min_length=1)] = [0]
    datasets: Annotated[list[ComponentSpec], Field(min_length=1)]
    backbones: Annotated[list[ComponentSpec], Field(min_length=1)]
    masks: list[ComponentSpec] = []
    ensembles: list[ComponentSpec] = []
    explainers: list[ComponentSpec] = []
    seeders: list[ComponentSpec] = []
    segmenters: list[ComponentSpec] = []
    train: TrainConfig = TrainConfig()
    finetune: TrainConfig = TrainConfig(**FINETUNE_DEFAULTS)
    protocol: Protocol = Protocol()
    executor: ComponentSpec = ComponentSpec(name="local")
    device: str = "auto"  # checked against the machine before a run
    published: Optional[str] = None  # CSV of published numbers (dataset, mask, alpha, accuracy), relative to the grid
    # The folder relative paths are read from (default: the grid file's); a run folder's copy of a grid
    # names the original's, so a rerun from the copy finds the same files.
    base_dir: Optional[str] = None
    loop: LoopConfig = LoopConfig()

    @pydantic.field_validator("finetune", mode="before")
    @classmethod
    def _finetune_defaults(cls, finetune):
        # A partial mapping keeps fine-tuning's own defaults (3 epochs at lr 1e-4), not a first training's
        # (5 at 1e-3): `finetune: {epochs: 1}` must not silently fine-tune at ten times the rate.
        if isinstance(finetune, dict):
            return {**FINETUNE_DEFAULTS, **finetune}
        return finetune

    @pydantic.field_validator("device")
    @classmethod
    def _device(cls, device):
        if not re.fullmatch(DEVICE_PATTERN, device):
            raise ValueError(f"{device!r} is not a device; use auto (CUDA when present), cpu, cuda, cuda:N or mps")
        return device

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
    """A concrete component: a name and its full parameters (one point of its sweep). Immutable: its
    canonical JSON, hash and label are computed once (planning a million cells hashes choices often)."""

    name: str
    params: dict
    json: str = dataclasses.field(init=False, repr=False, compare=False)
    label: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "json", canonical_json(self.ident))
        object.__setattr__(self, "label", component_label(self.name, self.params))
        object.__setattr__(self, "_hash", hash(self.json))

    @property
    def ident(self) -> dict:
        return {"name": self.name, "params": self.params}

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, Choice) and self.json == other.json

    def __reduce__(self):  # rebuilt where unpickled: string hashes differ between processes
        return Choice, (self.name, self.params)


# -- YAML with locations -----------------------------------------------------------------------------

# Bounds on what a grid file may be: far beyond any real grid, and each refused in well under a second.
MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_VALUES = 100_000


class _Source:
    """A parsed YAML document that can point at the node behind a validation error's location."""

    def __init__(self, text: str, path: str):
        self.path = path
        try:
            self._check_depth(text)
            self.node = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = None
            if self.node is not None:
                self._check_nodes(self.node)
                loader = yaml.SafeLoader("")
                try:
                    self.data = loader.construct_document(self.node)
                finally:
                    loader.dispose()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            raise GridError(f"{where}: YAML syntax error: {exc.problem}. Fix the YAML and run again.") from None
        except yaml.YAMLError as exc:
            raise GridError(f"{path}: YAML error: {exc}") from None

    def _at(self, mark) -> str:
        return f"{self.path}:{mark.line + 1}:{mark.column + 1}"

    def _check_depth(self, text: str) -> None:
        """Nesting deeper than ``MAX_DEPTH`` is refused from the event stream (no recursion)."""
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise GridError(f"{self._at(event.start_mark)}: the grid nests deeper than {MAX_DEPTH} levels; "
                                    f"a grid is a few levels of mappings and lists")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1

    def _check_nodes(self, root) -> None:
        """Every distinct node once (iteratively): no repeated key in a mapping, no non-finite number, no
        recursive alias, and at most ``MAX_VALUES`` values once aliases are expanded (a YAML alias bomb
        is refused before anything walks it)."""
        sizes: dict[int, int] = {}
        floats = yaml.SafeLoader("")
        stack = [(root, False)]
        while stack:
            node, children_done = stack.pop()
            if id(node) in sizes and not children_done:
                continue
            if isinstance(node, yaml.ScalarNode):
                if node.tag == "tag:yaml.org,2002:float" and not math.isfinite(floats.construct_yaml_float(node)):
                    raise GridError(f"{self._at(node.start_mark)}: {node.value!r} is not a finite number; grids take "
                                    f"finite numbers only")
                sizes[id(node)] = 1
                continue
            children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                        else list(node.value))
            if not children_done:
                sizes[id(node)] = -1  # in progress: its subtree is being walked
                if isinstance(node, yaml.MappingNode):
                    self._check_keys(node)
                stack.append((node, True))
                for child in children:
                    if sizes.get(id(child)) == -1:
                        raise GridError(f"{self._at(node.start_mark)}: a YAML alias refers to a node that contains "
                                        f"it; grids cannot be recursive")
                    if id(child) not in sizes:
                        stack.append((child, False))
                continue
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > MAX_VALUES:
                raise GridError(f"{self._at(node.start_mark)}: the grid expands to more than {MAX_VALUES:,} values "
                                f"(YAML aliases repeat a part of it); write the grid out instead")
            sizes[id(node)] = total
        floats.dispose()

    def _check_keys(self, node) -> None:
        seen: dict[str, object] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key_node.value in seen:
                first = seen[key_node.value].start_mark
                raise GridError(f"{self._at(key_node.start_mark)}: key {key_node.value!r} is given twice (first at "
                                f"line {first.line + 1}); each key appears once")
            seen[key_node.value] = key_node

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
    if path.is_dir():
        raise GridError(f"grid file {str(path)!r} is a folder; pass a YAML file to --grid (a run folder's copy "
                        f"is {str(path / 'grid.yaml')!r})")
    if not path.is_file():
        raise GridError(f"grid file {str(path)!r} does not exist; pass an existing YAML file to --grid")
    raw = path.read_bytes()
    if len(raw) > MAX_BYTES:
        raise GridError(f"{path}: {len(raw):,} bytes; a grid file is at most {MAX_BYTES:,} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise GridError(f"{path}:{line}:{column}: byte {raw[exc.start]:#04x} is not UTF-8; save the grid as "
                        f"UTF-8 text") from None
    return parse_grid(text, str(path), registry=registry)


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
    folder = Path(grid.base_dir).expanduser() if grid.base_dir else Path(path).parent
    for kind, base, spec in checks:
        _resolve_paths(spec, kind, registry, folder)
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
                    name = param.split("[", 1)[0]
                    if name in spec.sweep:
                        loc = base + ("sweep", name, spec.sweep[name].index(choice.params[name]))
                    else:
                        loc = base + (name,)
                    unknown = msg.startswith("unknown parameter")
                    problems.append(f"{source.where(loc, key=unknown)}: {_readable_loc(loc)}: {choice.name}: {msg}")
            except UserError as exc:
                problems.append(f"{source.where(base + ('name',))}: {_readable_loc(base)}: {exc}")
        problems += _sweep_repeats(spec, kind, base, source, registry)
    problems += _entry_repeats(checks, source, registry)
    if not problems:
        problems += _prompt_fit(grid, source, registry)
    if grid.published is not None:
        published = (folder / grid.published).resolve()
        if not published.is_file():
            problems.append(f"{source.where(('published',))}: published: file {str(published)!r} does not exist")
        else:
            grid.published = str(published)
    if problems:
        unique = list(dict.fromkeys(problems))
        raise GridError("invalid grid:\n  " + "\n  ".join(unique))
    return grid


def _prompt_kinds(kind: str, name: str, params: dict | None, registry) -> tuple[str, ...]:
    """The prompt kinds a seeder gives or a segmenter takes: its class's ``prompt_kinds`` where that is a
    tuple, else (a property: kinds that depend on the parameters) those of the component built from
    ``params`` (None: not built, no kinds known). ``UserError`` where they are not a tuple of
    ``PROMPT_KINDS`` or the component cannot be built."""
    factory = registry.get(kind, name).factory
    kinds = getattr(factory, "prompt_kinds", OPTIONAL[kind]["prompt_kinds"])
    if not isinstance(kinds, tuple):
        if params is None:
            return ()
        try:
            kinds = capability(registry.create(kind, name, **params), "prompt_kinds", kind)
        except Exception as exc:  # a plugin's constructor: say whose, in one line
            raise UserError(f"{kind[:-1]} {name} could not be built to read its prompt_kinds ({type(exc).__name__}: "
                            f"{exc})") from None
    if not isinstance(kinds, tuple) or not kinds or not set(kinds) <= set(PROMPT_KINDS):
        raise UserError(f"{kind[:-1]} {name} declares prompt_kinds {kinds!r}; declare a tuple of the kinds of prompt "
                        f"it {'gives' if kind == 'seeders' else 'takes'}, from {PROMPT_KINDS}")
    return kinds


def _prompt_fit(grid: Grid, source: _Source, registry) -> list[str]:
    """A problem for every seeder and segmenter of the grid that are paired (every seeder prompts every
    segmenter) where the seeder gives a kind of prompt the segmenter does not take: never silently ignored."""
    problems = []

    def kinds_of(kind, index, choice):
        try:
            return _prompt_kinds(kind, choice.name, choice.params, registry)
        except UserError as exc:
            problems.append(f"{source.where((kind, index))}: {kind}[{index}]: {exc}")
            return None

    segmenters = [(j, choice, kinds_of("segmenters", j, choice))
                  for j, spec in enumerate(grid.segmenters) for choice in spec.choices()]
    for i, spec in enumerate(grid.seeders):
        for choice in spec.choices():
            gives = kinds_of("seeders", i, choice)
            for j, segmenter, takes in segmenters:
                missing = [k for k in gives or () if takes is not None and k not in takes]
                if missing:
                    able = []
                    for name in registry.names("segmenters"):
                        try:
                            if set(missing) <= set(_prompt_kinds("segmenters", name, None, registry)):
                                able.append(name)
                        except UserError:
                            continue
                    problems.append(
                        f"{source.where(('seeders', i))}: seeders[{i}]: seeder {choice.label} gives {' and '.join(missing)} "
                        f"prompts, which segmenter {segmenter.label} (segmenters[{j}]) does not take (it takes "
                        f"{', '.join(takes)}); pair them with segmenters that take {' and '.join(missing)} "
                        f"({', '.join(able) or 'none is installed'}), or give this segmenter another seeder in a grid of "
                        f"its own")
    return problems


def _resolve_paths(spec: ComponentSpec, kind: str, registry, folder: Path) -> None:
    """Read the relative paths among a component's ``path_params`` (a dataset's ``root``, a backbone's
    ``weights``, SAM's ``checkpoint``) from the grid file's ``folder``, as ``published`` is: a value with a
    folder separator, or naming a file there; a bare word that is no file there (``none``, ``imagenet``)
    is left as it is. ``~`` is the home folder."""
    if "path_params" not in OPTIONAL.get(kind, {}):
        return
    try:
        factory = registry.get(kind, spec.name).factory
    except Exception:  # an unknown name: reported with the other problems
        return
    for name in capability(factory, "path_params", kind) or ():
        if name in spec.params:
            spec.params[name] = _resolved(spec.params[name], folder)
        if name in spec.sweep:
            spec.sweep[name] = [_resolved(value, folder) for value in spec.sweep[name]]


def _resolved(value, folder: Path):
    if not isinstance(value, str) or not value:
        return value
    given = Path(value).expanduser()
    if given.is_absolute():
        return str(given)
    candidate = folder / given
    if "/" in value or "\\" in value or candidate.exists():
        return str(candidate.resolve())
    return value


def _entry_repeats(checks: list[tuple], source: _Source, registry) -> list[str]:
    """Two entries of one list that give the same configuration once read (``blur`` with ``sigma: 2`` and
    with ``sigma: 2.0``, the same parameters in another order, a default written out) would run it twice
    under two labels, as a repeated sweep value would: one problem per entry that repeats an earlier one.
    Repeats inside one entry's sweep are ``_sweep_repeats``'s."""
    problems = []
    entries: dict[tuple, int] = {}  # (list, component name) → how many entries name it
    for kind, base, spec in checks:
        entries[base[:-1], spec.name] = entries.get((base[:-1], spec.name), 0) + 1
    seen: dict[tuple, tuple] = {}  # (list, configuration read) → (its first entry's location, label)
    defaults: dict[tuple, dict] = {}
    for kind, base, spec in checks:
        if entries[base[:-1], spec.name] < 2:
            continue  # the only entry of its component in its list: its sweep is _sweep_repeats's
        try:
            choices = spec.choices()
        except ValueError:
            continue  # reported with the choices
        for choice in choices:
            read = _read_params(kind, choice, registry, defaults)
            if read is None:
                continue
            key = (kind, base[:-1], choice.name, canonical_json(read))
            first = seen.setdefault(key, (base, choice.label))
            if first[0] != base:
                problems.append(f"{source.where(base)}: {_readable_loc(base)}: {choice.label} is the same "
                                f"configuration as {_readable_loc(first[0])} ({first[1]}) once read; list each "
                                f"configuration once")
                break
    return problems


def _read_params(kind: str, choice: Choice, registry, defaults: dict) -> dict | None:
    """A choice's parameters as its component reads them, defaults included; None where they do not
    validate (reported elsewhere). ``defaults``: (kind, name) → its defaults, filled as they are read."""
    try:
        if (kind, choice.name) not in defaults:
            defaults[kind, choice.name] = {p["name"]: p["default"] for p in registry.get(kind, choice.name).parameters()
                                           if not p["required"]}
        given = defaults[kind, choice.name]
        try:
            return registry.validate(kind, choice.name, {**given, **choice.params})
        except UserError:  # a default the parameter model does not take back: compare what was given
            return {**given, **registry.validate(kind, choice.name, choice.params)}
    except UserError:
        return None


def _sweep_repeats(spec: ComponentSpec, kind: str, base: tuple, source: _Source, registry) -> list[str]:
    """A sweep value that equals an earlier one once the component reads it (``'0.8'`` and ``0.8`` for a
    float) would run the same configuration twice under two labels: one problem per repeat."""
    problems = []
    for param, values in spec.sweep.items():
        seen: dict[str, int] = {}
        for index, value in enumerate(values):
            try:
                read = registry.validate(kind, spec.name, {**spec.params, param: value}).get(param, value)
            except UserError:
                break  # reported with the choices, or needs the other swept parameters
            text = canonical_json(read)
            if text in seen:
                loc = base + ("sweep", param, index)
                problems.append(f"{source.where(loc)}: {_readable_loc(loc)}: {spec.name}: {value!r} is the same "
                                f"value as sweep.{param}[{seen[text]}] once read ({text}); sweep distinct values")
            seen.setdefault(text, index)
    return problems


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

    @functools.cached_property
    def cell_id(self) -> str:
        return digest(self.ident)


def label_of(choice: Choice | None) -> str:
    """A choice's label in tables (``name`` or ``name(k=v,...)``); empty for no choice."""
    return choice.label if choice is not None else ""


def all_choices(specs: list[ComponentSpec]) -> list[Choice]:
    """Every choice of a section's entries and sweeps, each once, in order."""
    return list(dict.fromkeys(choice for spec in specs for choice in spec.choices()))


def iter_cells(grid: Grid):
    """The cross product of a grid, one cell at a time, in a stable order: per dataset, backbone and seed,
    the baseline cells first, then each mask × ensemble. The choices of each axis are distinct, so the
    cells are too (no set of a million cells is needed to deduplicate them)."""
    variants = [(None, None)] + [(m, e) for m in all_choices(grid.masks) for e in all_choices(grid.ensembles)]
    explainers = all_choices(grid.explainers) or [None]
    chains = [(None, None)]
    if grid.segmenters and grid.explainers:
        chains = [(s, g) for s in all_choices(grid.seeders) for g in all_choices(grid.segmenters)]
    for dataset, backbone, seed in itertools.product(all_choices(grid.datasets), all_choices(grid.backbones),
                                                     dict.fromkeys(grid.seeds)):
        for (mask, ensemble), explainer, (seeder, segmenter) in itertools.product(variants, explainers, chains):
            yield Cell(dataset, backbone, seed, mask, ensemble, explainer, seeder, segmenter)


def expand(grid: Grid) -> list[Cell]:
    """Every cell of a grid (``iter_cells``) as a list."""
    return list(iter_cells(grid))
