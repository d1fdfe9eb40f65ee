"""The results of runs as frames: what the tables, figures and report are drawn from.

``load_runs`` reads the cell rows of one or more run folders (the cells of each folder's current grid,
refusing to merge a configuration two folders computed differently) and ``frame`` gives them the columns
of ``leaderboard.csv`` (``schema.columns()``). ``summarise`` makes ``leaderboard_summary.csv``: one row per
configuration over its seeds, with per metric the mean over seeds, the 95% bootstrap CI over test images,
the spread across seeds and the number of seeds; accuracy per test group and the worst group's; McNemar's
paired test against the baseline (``stats``); and the rows of α chosen on validation (``alpha_choices``).
Nothing here is recomputed from the models: the per-image arrays scoring wrote are read back.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from xaibench.errors import UserError
from xaibench.pipeline import schema, stats
from xaibench.pipeline.records import CELL_LABELS, CONFIG_LABELS, Status, component_name
from xaibench.pipeline.store import Store, load_arrays

ID_COLUMNS = list(CELL_LABELS)
CONFIG_COLUMNS = list(CONFIG_LABELS)
# Where a rule's mixing weight is chosen on validation accuracy (``alpha_choices``), its rows are named so.
SELECTED = "α* (val)"
# The columns every summary has, even one of a run in which no cell finished.
SUMMARY_COLUMNS = CONFIG_COLUMNS + ["n_seeds", "seeds_expected", "complete"]


def frame(rows: list[dict]) -> pd.DataFrame:
    """The cell rows as the columns of leaderboard.csv. A row holding a metric ``xaibench.pipeline.schema``
    does not declare is refused (``UserError``): left out, it would vanish from every table unnoticed."""
    known = set(ID_COLUMNS) | {"status", "error", "cell_id"}
    undeclared = schema.undeclared({key for row in rows for key in row} - known)
    if undeclared:
        raise UserError(f"the cells hold metrics this xaibench does not know ({', '.join(undeclared)}): they were "
                        f"scored by another version or plugin; rerun the grid with this xaibench, which scores its "
                        f"cells again, or read them with the version that wrote them")
    df = pd.DataFrame(rows)
    columns = schema.columns()
    for column in ID_COLUMNS + columns + ["status", "error", "cell_id"]:
        if column not in df:
            df[column] = None
    return df[ID_COLUMNS + ["status"] + columns + ["error", "cell_id"]]


def load_runs(dirs) -> tuple[pd.DataFrame, dict[str, Path], pd.DataFrame | None]:
    """Cell rows of several run directories merged, the per-image file of each cell, and the published
    table of the first directory that has one.

    Each folder gives the cells of the grid last run in it (cells of earlier grids kept in its store are
    left out, said once per folder). Merging refuses (``UserError`` naming both folders) a cell that two
    folders both hold, and a configuration whose cells two folders computed differently (other training,
    protocol or plugin versions; ``Store.current_grid``): pooled, their seeds would be one configuration's."""
    rows, files, published = [], {}, None
    merged = _Merge()
    for directory in dirs:
        store = Store.open_existing(Path(directory))
        try:
            current, settings = store.current_grid()
            cells = store.cells()
            kept = [row for row in cells if current is None or row["cell_id"] in current]
            if len(kept) < len(cells):
                left = len(cells) - len(kept)
                warnings.warn(f"{directory}: {left} cell{'s' * (left != 1)} of earlier grids in this folder left "
                              f"out (not in the grid last run there)")
            merged.add(directory, kept, settings)
            for row in kept:
                path = store.cell_path(row["cell_id"])
                problem = _unreadable(store, path) if row["status"] == Status.DONE else None
                if problem is not None:
                    warnings.warn(f"{path} cannot be read back ({problem}); its confidence intervals are left out "
                                  f"until 'xaibench run' on {directory} scores the cell again")
                    path = None
                files[row["cell_id"]] = path
                rows.append(row)
        finally:
            store.close()
        candidate = Path(directory) / "published.csv"
        if published is None and candidate.is_file():
            published = read_published(candidate)
    if len(merged.folders) > 1 and merged.unknown:
        warnings.warn(f"{', '.join(merged.unknown)}: no record of how the cells were computed (a run folder from "
                      f"before xaibench recorded it), so training and versions are not compared with the other "
                      f"folders'; 'xaibench run' on it again records them")
    return frame(rows), files, published


# The label columns naming a component, and its kind.
COMPONENT_KINDS = {"dataset": "datasets", "backbone": "backbones", "mask": "masks", "ensemble": "ensembles",
                   "explainer": "explainers", "seeder": "seeders", "segmenter": "segmenters"}


class _Merge:
    """The checks of merging run folders: every cell from one folder only, and every configuration's cells
    computed the same way (the settings that bear on its cells: training; fine-tuning where it has a mask;
    protocol; the versions of xaibench and of its components)."""

    def __init__(self):
        self.cells: dict[str, str] = {}  # cell id → the folder it came from
        self.configs: dict[tuple, tuple[str, dict]] = {}  # configuration → (folder, its settings)
        self.folders: set[Path] = set()
        self.unknown: list[str] = []

    def add(self, directory, rows: list[dict], settings: dict | None) -> None:
        resolved = Path(directory).resolve()
        if resolved in self.folders:
            raise UserError(f"{directory} is given twice; give each run folder once")
        self.folders.add(resolved)
        if settings is None:
            self.unknown.append(str(directory))
        for row in rows:
            where = self.cells.get(row["cell_id"])
            config = tuple(None if isinstance(v, float) and math.isnan(v) else v for v in map(row.get, CONFIG_LABELS))
            first = self.configs.get(config)
            if first is not None and first[0] != str(directory) and settings is not None and first[1] is not None:
                differ = _differences(_bearing(row, first[1]), _bearing(row, settings))
                if differ:
                    raise UserError(
                        f"{first[0]} and {directory} both hold {_config_text(row)}, computed differently "
                        f"({'; '.join(f'{k}: {a} in {first[0]}, {b} in {directory}' for k, a, b in differ)}); "
                        f"their seeds cannot be pooled as one configuration: merge runs of one protocol, or "
                        f"rerun one folder with the other's settings")
            if where is not None:
                raise UserError(f"{where} and {directory} both hold the cell {_config_text(row)} seed={row['seed']}; "
                                f"a merged table takes each cell from one folder: leave one of them out, or give "
                                f"folders of other seeds or configurations")
            self.cells[row["cell_id"]] = str(directory)
            self.configs.setdefault(config, (str(directory), settings))


def _bearing(row: dict, settings: dict) -> dict:
    """The settings that bear on ``row``'s numbers, flat (``train.epochs``, ``mask blur``: its version)."""
    out = {}
    for section in ("train", "finetune", "protocol"):
        if section == "finetune" and row.get("mask") in (None, "", "none"):
            continue  # a baseline is not fine-tuned
        out.update({f"{section}.{key}": value for key, value in settings.get(section, {}).items()})
    versions = settings.get("versions", {})
    out["xaibench"] = versions.get("xaibench")
    for column, kind in COMPONENT_KINDS.items():
        label = row.get(column)
        if label not in (None, "", "none", "baseline"):
            out[f"{kind[:-1]} {component_name(label)}"] = versions.get(f"{kind}:{component_name(label)}")
    return out


def _differences(a: dict, b: dict) -> list[tuple[str, object, object]]:
    return [(key, a.get(key), b.get(key)) for key in dict.fromkeys([*a, *b]) if a.get(key) != b.get(key)]


def _config_text(row: dict) -> str:
    return " ".join(f"{c}={row[c]}" for c in CONFIG_LABELS if row.get(c) not in (None, ""))


def _unreadable(store: Store, path: Path) -> str | None:
    """Why a cell's per-image file cannot be used: not the file written (its record), or, for a file no
    record covers (older runs), one that does not load."""
    if store.artifact(str(path.relative_to(store.root))) is not None:
        return store.verify(str(path.relative_to(store.root)))
    try:
        load_arrays(path)
    except Exception as exc:  # any reader error: the file is damaged
        return f"{type(exc).__name__}: {exc}"
    return None


def read_published(path) -> pd.DataFrame:
    """Published numbers: columns dataset, mask (``none`` for the baseline), alpha, accuracy (%). A file that
    is no such CSV (empty, not UTF-8, unbalanced quotes, a value that is no number) is a ``UserError``."""
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"published table {str(path)!r} is not a readable UTF-8 CSV ({type(exc).__name__}: "
                        f"{str(exc).strip()}); fix it or leave published out of the grid") from None
    missing = {"dataset", "mask", "alpha", "accuracy"} - set(table.columns)
    if missing:
        raise UserError(f"published table {str(path)!r} lacks the columns {sorted(missing)}")
    for column in ("alpha", "accuracy"):  # alpha may be empty (the baseline's row)
        numbers = pd.to_numeric(table[column], errors="coerce")
        wrong = table[column][numbers.isna() & table[column].notna()]
        if len(wrong):
            raise UserError(f"published table {str(path)!r}: {column} {wrong.iloc[0]!r} (row {wrong.index[0] + 2}) "
                            f"is not a number")
    return table


# -- summary over seeds -----------------------------------------------------------------------------


class _PerImage:
    def __init__(self, files: dict[str, Path]):
        self.files = files
        self.loaded: dict[str, dict] = {}

    def __call__(self, cell_id: str) -> dict:
        if cell_id not in self.loaded:
            path = self.files.get(cell_id)
            self.loaded[cell_id] = load_arrays(path) if path is not None and path.is_file() else {}
        return self.loaded[cell_id]


def _matrix(per_image: _PerImage, cell_ids, key: str) -> np.ndarray | None:
    arrays = [per_image(c).get(key) for c in cell_ids]
    if not arrays or any(a is None for a in arrays) or len({len(a) for a in arrays}) != 1:
        return None
    return np.stack([np.asarray(a, dtype=np.float64) for a in arrays])


# The ``selection`` recorded (in leaderboard_summary.csv) for a row whose α would be chosen on a validation
# split the dataset does not have; tables show ``text.NOT_POSSIBLE`` in place of its values.
NO_VAL = "not possible: no val split"


def alpha_choices(df: pd.DataFrame) -> pd.DataFrame:
    """The cells chosen on validation: for each dataset, backbone, seed, mask, explainer, seeder,
    segmenter and ensemble rule with a mixing weight swept over two or more values, the finished cell with
    the highest validation accuracy (ties to the larger α), as a row of the same columns under the
    ensemble ``"<rule> α* (val)"``, with ``alpha_star`` (the chosen α) and ``source`` (the chosen cell's
    id). Only ``val_accuracy`` decides; no test number is read. Where some cell has no validation
    accuracy (the dataset has no val split), the row has no scores and ``selection`` says why."""
    done = df[(df["status"] == Status.DONE) & (df["ensemble"] != "baseline")]
    done = done[pd.to_numeric(done["alpha"], errors="coerce").notna()]
    if done.empty:
        return pd.DataFrame(columns=[*df.columns, "alpha_star", "source", "selection"])
    done = done.assign(rule=done["ensemble"].map(component_name), alpha=done["alpha"].astype(float))
    keys = ["dataset", "backbone", "seed", "mask", "explainer", "seeder", "segmenter", "rule"]
    out = []
    for _, group in done.groupby(keys, sort=False, dropna=False):
        if group["alpha"].nunique() < 2:  # nothing to choose
            continue
        first = group.iloc[0]
        val = pd.to_numeric(group["val_accuracy"], errors="coerce")
        base = {**{c: first[c] for c in ID_COLUMNS}, "ensemble": f"{first['rule']} {SELECTED}", "alpha": math.nan,
                "status": Status.DONE}
        if val.isna().any():
            out.append({**base, "alpha_star": math.nan, "source": None, "selection": NO_VAL,
                        "cell_id": f"{first['cell_id']}:{SELECTED}"})
            continue
        chosen = group.assign(_val=val.to_numpy()).sort_values(["_val", "alpha"], ascending=[False, False]).iloc[0]
        out.append({**{c: chosen[c] for c in df.columns}, **base, "alpha_star": float(chosen["alpha"]),
                    "source": chosen["cell_id"], "selection": "val", "cell_id": f"{chosen['cell_id']}:{SELECTED}"})
    return pd.DataFrame(out, columns=[*df.columns, "alpha_star", "source", "selection"])


def with_choices(df: pd.DataFrame, files: dict[str, Path]) -> tuple[pd.DataFrame, dict[str, Path]]:
    """``df`` with the rows of ``alpha_choices`` added, and ``files`` with each such row's per-image file
    (its chosen cell's; none where no choice was possible)."""
    chosen = alpha_choices(df)
    if chosen.empty:
        return df, files
    files = {**files, **{r["cell_id"]: files.get(r["source"]) if r["source"] else None for _, r in chosen.iterrows()}}
    return pd.concat([df, chosen], ignore_index=True), files


def summarise(df: pd.DataFrame, files: dict[str, Path]) -> pd.DataFrame:
    """One row per configuration over its seeds, with CIs, seed spread, seed counts and McNemar p; the
    configurations chosen on validation (``alpha_choices``) are rows too, with the α chosen for each
    seed in ``alpha_star`` and ``selection`` saying whether a choice was possible."""
    df, files = with_choices(df, files)
    per_image = _PerImage(files)
    done = df[df["status"] == Status.DONE]
    expected = {key: sorted(group["seed"].unique()) for key, group in df.groupby(["dataset", "backbone"])}
    baseline = {(r["dataset"], r["backbone"], r["seed"]): r["cell_id"]
                for _, r in done[done["ensemble"] == "baseline"].iterrows()}
    summarised = schema.summarised()
    out = []
    for config, group in done.groupby(CONFIG_COLUMNS, sort=False, dropna=False):
        group = group.drop_duplicates("seed").sort_values("seed")
        seeds = group["seed"].tolist()
        row = dict(zip(CONFIG_COLUMNS, config))
        all_seeds = expected[(row["dataset"], row["backbone"])]
        row.update(n_seeds=len(seeds), seeds_expected=len(all_seeds), complete=len(seeds) == len(all_seeds))
        if "selection" in group and group["selection"].notna().any():
            row["selection"] = NO_VAL if (group["selection"] == NO_VAL).any() else "val"
            row["alpha_star"] = " / ".join(f"{a:g}" for a in group["alpha_star"] if not pd.isna(a))
        for column in schema.CHOSEN_THRESHOLDS:  # each seed's threshold chosen on validation
            if column in group and pd.to_numeric(group[column], errors="coerce").notna().any():
                row[column] = " / ".join(f"{t:g}" for t in pd.to_numeric(group[column], errors="coerce")
                                       if not pd.isna(t))
        for entry in summarised:
            metric = entry.name
            matrix = _matrix(per_image, group["cell_id"], entry.key)
            if matrix is None:
                continue
            means = stats.seed_means(matrix)
            row[metric] = float(np.nanmean(means)) if np.isfinite(means).any() else float("nan")
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = stats.bootstrap_ci(matrix)
            row[f"{metric}_seed_sd"] = stats.seed_spread(matrix)
        row.update(group_accuracies(per_image, group["cell_id"]))
        if row["ensemble"] != "baseline":
            pairs = [(c, baseline.get((row["dataset"], row["backbone"], s))) for c, s in zip(group["cell_id"], seeds)]
            pairs = [(c, b) for c, b in pairs if b is not None]
            model = _matrix(per_image, [c for c, _ in pairs], "correct")
            base = _matrix(per_image, [b for _, b in pairs], "correct")
            if model is not None and base is not None and model.shape == base.shape:
                test = stats.mcnemar(model.astype(bool), base.astype(bool))
                row.update(mcnemar_p=test["p"], mcnemar_b=test["b"], mcnemar_c=test["c"])
        out.append(row)
    return pd.DataFrame(out) if out else pd.DataFrame(columns=SUMMARY_COLUMNS)


def group_columns(summary: pd.DataFrame) -> list[str]:
    """The groups with an accuracy column in a summary, in order."""
    return [c[len("accuracy["):-1] for c in summary.columns if c.startswith("accuracy[") and c.endswith("]")]


def group_accuracies(per_image: "_PerImage", cell_ids) -> dict:
    """Accuracy per test group (``accuracy[<group>]``) and of the worst group (``worst_group_accuracy``),
    each with its bootstrap CI, over the seeds' cells; empty where the test samples carry no groups or
    the seeds' groups differ."""
    cell_ids = list(cell_ids)
    groups = [per_image(c).get("group") for c in cell_ids]
    correct = _matrix(per_image, cell_ids, "correct")
    if correct is None or any(g is None for g in groups) or any(not np.array_equal(groups[0], g) for g in groups):
        return {}
    groups = np.asarray(groups[0]).astype(str)
    out = {}
    for name in (g for g in np.unique(groups) if g != ""):
        members = correct[:, groups == name]
        column = f"accuracy[{name}]"
        out[column] = float(np.nanmean(stats.seed_means(members)))
        out[f"{column}_ci_low"], out[f"{column}_ci_high"] = stats.bootstrap_ci(members)
        out[f"{column}_n"] = int(members.shape[1])
    if out:
        out["worst_group_accuracy"] = stats.worst_group(correct, groups)
        out["worst_group_accuracy_ci_low"], out["worst_group_accuracy_ci_high"] = \
            stats.bootstrap_worst_group_ci(correct, groups)
    return out
