"""The annotation loop's tables: per configuration and round, each measurement over seeds.

``loop_seeds.csv`` holds one row per chain and round (``records.CHAIN_LABELS``, the round, its status and
measurements); ``summarise`` turns it into ``loop.csv``: per configuration and round, each measurement's
mean over seeds with a 95% t interval over seeds, and the paired change from round 0 with its interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xaibench.pipeline import metrics, schema, stats
from xaibench.pipeline.records import CHAIN_CONFIG_LABELS, Status

# column → what it is, as the tables and the report say it (``schema.ROUND_METRICS``)
METRICS = {metric.name: metric.description for metric in schema.ROUND_METRICS}
CHANGE_METRICS = tuple(metric.name for metric in schema.ROUND_METRICS if metric.change)  # also as change from round 0
LABELS = CHAIN_CONFIG_LABELS


def summarise(rows: pd.DataFrame, rounds: int) -> pd.DataFrame:
    """Per configuration and round: each metric's mean over seeds with a 95% t interval over seeds (clipped
    to the metric's range [0, 1]), and for ``CHANGE_METRICS`` the paired change from round 0 with its own
    interval. Rows without a model measurement (failed rounds) are left out. A chain that converged (its
    annotations stopped changing) counts with its last round's values in the rounds after it: they would
    train on the same annotations again. A chain stopped by ``loop.min_changed`` is not carried."""
    measured = rows[rows["accuracy"].notna()] if "accuracy" in rows else rows.iloc[:0]
    out = []
    for labels, group in measured.groupby(list(LABELS), sort=False, dropna=False):
        per_seed = {seed: _carried(runs.set_index("round").sort_index(), rounds) for seed, runs in group.groupby("seed")}
        for round_ in range(rounds + 1):
            present = {s: r.loc[round_] for s, r in per_seed.items() if round_ in r.index}
            if not present:
                continue
            row = {**dict(zip(LABELS, labels)), "round": round_, "seeds": len(present),
                   "reference": next(iter(present.values()))["reference"]}
            for metric in METRICS:  # every one a share or an IoU: intervals are clipped to [0, 1]
                values = np.array([float(r[metric]) for r in present.values()])
                row[metric] = metrics.mean_excluding_nan(values)[0]
                row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = np.clip(stats.seed_ci(values), 0.0, 1.0)
            for metric in CHANGE_METRICS:
                change = np.array([float(r[metric]) - float(per_seed[s].loc[0, metric]) for s, r in present.items()
                                   if 0 in per_seed[s].index])
                row[f"{metric}_change"] = metrics.mean_excluding_nan(change)[0]
                row[f"{metric}_change_ci_low"], row[f"{metric}_change_ci_high"] = stats.seed_ci(change)
            out.append(row)
    return pd.DataFrame(out)


def varying_labels(summary: pd.DataFrame) -> list[str]:
    """The label columns (``LABELS``) that tell a summary's configurations apart."""
    return [c for c in LABELS if summary[c].astype(str).nunique() > 1]


def _carried(runs: pd.DataFrame, rounds: int) -> pd.DataFrame:
    """One chain's rows by round, its last row repeated up to ``rounds`` if the chain converged."""
    last = runs.index[-1]
    if runs.loc[last, "status"] != Status.CONVERGED or last >= rounds:
        return runs
    carried = pd.DataFrame([runs.loc[last]] * (rounds - last), index=range(last + 1, rounds + 1))
    return pd.concat([runs, carried])
