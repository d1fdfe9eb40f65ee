"""Each concept has one home: the metric schema, the value-with-interval text, the component label, the
out-of-space check, stale-figure removal and the ensemble rule. These pin what every caller relies on."""

import dataclasses
import errno
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch

from xaibench.errors import ContractViolation, UserError, out_of_space
from xaibench.kit.contracts import apply_ensemble
from xaibench.pipeline import metrics, results, sanity, schema
from xaibench.pipeline.grid import Choice
from xaibench.pipeline.records import CELL_LABELS, component_label, component_name
from xaibench.presentation import figures, leaderboard
from xaibench.text import MISSING, interval, number, with_interval

# -- the metric schema ---------------------------------------------------------------------------------


def test_what_the_metric_functions_compute_is_what_the_schema_declares():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 8, 8)).astype(np.float32)
    truth = np.zeros((3, 8, 8), bool)
    truth[:, 2:5, 2:5] = True
    assert list(metrics.explanation_per_image(maps, truth, threshold=0.5)) == schema.names("explanation")
    assert list(metrics.segmentation_per_image(maps > 0.5, truth)) == schema.names("segmentation")
    assert list(sanity.similarity(maps, maps[::-1].copy())) == schema.names("sanity")


def test_every_declared_metric_has_a_column_once_and_the_summary_formats_it():
    columns = schema.columns()
    assert len(columns) == len(set(columns))
    for metric in schema.METRICS:
        assert metric.name in columns and set(metric.chance_columns()) <= set(columns)
        assert metric.family in schema.FAMILIES
    summarised = [m.name for m in schema.summarised()]
    assert summarised[0] == "accuracy" and set(schema.chance_columns()) <= set(summarised)
    assert schema.get("accuracy").scale == 100 and schema.get("accuracy").key == "correct"
    # a lift is better when higher whatever its metric's direction; a chance level keeps the metric's
    assert not schema.get("deletion").higher_is_better and schema.get("lift_deletion").higher_is_better
    assert not schema.get("random_deletion").higher_is_better
    assert schema.get("deletion").lift(0.2, 0.5) == pytest.approx(0.3)
    with pytest.raises(KeyError, match="no metric"):
        schema.get("not_a_metric")


def _row(**metrics_):
    return {"cell_id": "c", **{label: "x" for label in CELL_LABELS}, "status": "done", "error": None, **metrics_}


def test_a_metric_the_schema_does_not_declare_is_refused_not_dropped():
    assert list(results.frame([_row(accuracy=0.5, score_key="k", dice_excluded=0)]).columns)[-2:] == \
        ["error", "cell_id"]
    with pytest.raises(UserError, match="does not know \\(brand_new\\)"):
        results.frame([_row(accuracy=0.5, brand_new=0.1)])
    assert schema.undeclared(["accuracy", "brand_new", "score_key"]) == ["brand_new"]


def test_adding_a_metric_is_one_schema_entry(monkeypatch):
    added = schema.Metric("brand_new", "explanation", chance=schema.CHANCE_EXPLAINERS)
    monkeypatch.setattr(schema, "METRICS", schema.METRICS + (added,))
    assert {"brand_new", "random_brand_new", "centre_brand_new", "lift_brand_new"} <= set(schema.columns())
    assert "brand_new" in [m.name for m in schema.summarised()] and schema.undeclared(["brand_new"]) == []
    assert "brand_new" in results.frame([_row(brand_new=0.1)])  # the frame reads the schema, not a copy


def test_the_best_value_of_a_table_follows_the_metric_s_direction():
    rows = [{"dataset": "d", "backbone": "b", "mask": "blur", "ensemble": f"logit-mix(alpha={a})", "alpha": a,
             "sanity_spearman": v, "complete": True, "n_seeds": 1, "seeds_expected": 1}
            for a, v in ((0.5, 0.9), (1.0, 0.2))]
    table = leaderboard.table_one_entries(pd.DataFrame(rows), "sanity_spearman")
    best = [entries[0].best for _, entries in table.rows]
    assert best == [False, True]  # lower is better for the sanity check's similarity


# -- one text for a value with its interval ------------------------------------------------------------


def test_a_value_with_its_interval_is_written_one_way():
    assert with_interval(0.8125, 0.79, 0.833) == "0.812 [0.790, 0.833]"
    assert with_interval(0.5, 0.25, 0.75, scale=100, digits=2) == "50.00 [25.00, 75.00]"
    assert with_interval(0.1, -0.2, 0.3, signed=True) == "+0.100 [-0.200, 0.300]"
    assert with_interval(0.5, float("nan"), float("nan")) == "0.500"  # no interval, no brackets of dashes
    assert with_interval(float("nan"), 0.1, 0.2) == MISSING == with_interval(None, None, None)
    assert with_interval(pd.NA, 0.1, 0.2) == MISSING and number(np.float32("nan")) == MISSING
    assert interval(0.1, None) == "" and interval(0.1, 0.2) == "[0.100, 0.200]"


# -- one label builder and parser ----------------------------------------------------------------------


@pytest.mark.parametrize("name, params", [("top-k", {"k": 3, "min_distance": 12}), ("gradcam", {}),
                                          ("logit-mix", {"alpha": 0.8})])
def test_a_component_label_reads_back_its_name(name, params):
    label = component_label(name, params)
    assert component_name(label) == name and Choice(name, params).label == label
    assert label == (name if not params else f"{name}({','.join(f'{k}={v}' for k, v in sorted(params.items()))})")


# -- one out-of-space check ----------------------------------------------------------------------------


def test_a_full_disk_is_found_behind_whatever_reports_it():
    full = OSError(errno.ENOSPC, "No space left on device", "/out/x.npy")
    assert out_of_space(full) == "No space left on device: /out/x.npy"
    assert out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded")) == "Disk quota exceeded"
    assert "disk is full" in out_of_space(sqlite3.OperationalError("database or disk is full"))
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("writing the checkpoint failed") from exc
    except RuntimeError as wrapped:
        assert out_of_space(wrapped) == "No space left on device: /out/x.npy"
    assert out_of_space(OSError(errno.EACCES, "Permission denied")) is None
    assert out_of_space(ValueError("bad")) is None


# -- one way to remove stale figures --------------------------------------------------------------------


def test_only_the_figures_given_as_earlier_and_not_drawn_again_are_removed(tmp_path):
    paths = {name: tmp_path / name for name in ("fig1.png", "fig2.png", "loop_a.png")}
    for path in paths.values():
        path.write_bytes(b"png")
    figures.remove_stale([paths["fig1.png"], paths["fig2.png"]], [paths["fig2.png"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig2.png", "loop_a.png"]
    figures.remove_stale(tmp_path.glob("loop_*.png"), [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig2.png"]


# -- one function applying an ensemble rule --------------------------------------------------------------


def test_every_ensemble_rule_goes_through_its_contract():
    raw, masked = torch.zeros(2, 3), torch.ones(2, 3)
    assert torch.equal(apply_ensemble(lambda r, m: 0.5 * r + 0.5 * m, raw, masked), torch.full((2, 3), 0.5))
    with pytest.raises(ContractViolation, match="shape"):
        apply_ensemble(lambda r, m: r[:, :2], raw, masked)
    with pytest.raises(ContractViolation, match="non-finite"):
        apply_ensemble(lambda r, m: r / 0, raw, masked)


def test_the_metric_record_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        schema.get("accuracy").scale = 1


# -- one table of stage kinds ----------------------------------------------------------------------------


def test_every_stage_kind_has_its_runner_cost_and_artifact_in_one_table(tmp_path):
    from xaibench.pipeline.artifacts import Artifacts
    from xaibench.pipeline.plan import KINDS, STAGE_KINDS, TRAINING_KINDS
    from xaibench.pipeline.stages import RUNS

    assert set(RUNS) == set(STAGE_KINDS) and len(KINDS) == len(STAGE_KINDS)
    assert all(run.__name__ == f"_run_{STAGE_KINDS[spec].name}" for spec, run in RUNS.items())
    assert TRAINING_KINDS == ("train", "finetune") and all(kind.cost > 0 for kind in KINDS.values())
    artifacts = Artifacts(tmp_path)
    assert artifacts.path("train", "k") == tmp_path / "models" / "k.safetensors"
    assert artifacts.path("logits", "k") == tmp_path / "logits" / "k.npz"
    assert [p.name for p in artifacts.files("explain", "k")] == ["maps.npy", "index.npy"]
    assert len(artifacts.files("data", "k")) == 3 * len(KINDS["data"].arrays)
