"""``DIR/report.html``: one self-contained page (images embedded, no network) with the leaderboard
tables, the figures of the run, the grid that was run, plugin versions and the machine."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from xaibench import machine
from xaibench.pipeline import schema
from xaibench.presentation import leaderboard
from xaibench.presentation.loop_tables import LABELS, METRICS, varying_labels
from xaibench.text import with_interval

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-top: 1.5em; } h4 { font-size: .95em; color: #555; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.scroll { overflow-x: auto; } figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
figcaption { font-size: .85em; color: #555; } pre { background: #f7f7f7; padding: .8em; overflow-x: auto; }
.note { color: #555; font-size: .9em; }
"""


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    def cell(value):
        text = html.escape(str(value))
        return f"<td><strong>{text}</strong></td>" if isinstance(value, leaderboard.Best) else f"<td>{text}</td>"

    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


CAPTIONS = {
    "fig1": "Fig. 1: each mask of the grid applied to annotated training tiles.",
    "fig2": "Fig. 2: saliency, seed points (green stars), predicted mask (yellow) and ground truth (cyan).",
    "accuracy": "Accuracy on raw test images against the mixing weight α, per mask (mean over seeds).",
}


def _open(title: str) -> list[str]:
    return [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{STYLE}</style>",
            f"</head><body><h1>{html.escape(title)}</h1>"]


def page(title: str, df: pd.DataFrame, summary: pd.DataFrame, *, published=None, figures=(), run_info=None,
         grid_text: str | None = None, machines: str | None = None) -> str:
    """The run's report; ``machines`` says which machine computed the numbers (default: ``run_info``'s)."""
    parts = _open(title)
    machines = machines or (machine.sentence([run_info]) if run_info else None)
    if run_info:
        parts.append(f"<p>{run_info.get('cells_done', '?')} of {run_info.get('cells', '?')} cells done, "
                     f"{run_info.get('cells_failed', 0)} failed; {run_info.get('trainings_run', 0)} trainings run, "
                     f"{run_info.get('trainings_reused', 0)} reused; {run_info.get('wall_s', 0):.1f} s on "
                     f"{html.escape(str(run_info.get('device', '?')))}.</p>")
    parts.append(f"<p class='note'>{html.escape(leaderboard.note(summary))}</p>")
    if machines:
        parts.append(f"<p class='note'>{html.escape(machines)}</p>")
    parts += _problems(run_info)
    if not len(summary):
        parts.append("<p><strong>No cell finished</strong>, so there is no table to show; the failures are "
                     "listed below.</p>")
    for level, heading, body in leaderboard.sections(df, summary, published):
        parts.append(f"<h{level}>{html.escape(heading)}</h{level}>")
        if isinstance(body, tuple):
            parts.append(_table(*body))
        elif isinstance(body, list):
            parts.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in body) + "</ul>")
        else:
            parts.append(f"<p>{html.escape(body)}</p>")
    if figures:
        parts.append("<h2>Figures</h2>")
        for path in figures:
            kind = next((k for k in CAPTIONS if Path(path).name.startswith(k)), None)
            parts.append(_image(path, f"{CAPTIONS.get(kind, '')} ({Path(path).name})".strip()))
    if grid_text is not None:
        parts.append(f"<h2>Grid</h2><pre>{html.escape(grid_text)}</pre>")
    if run_info:
        plugins = run_info.get("plugins", [])
        parts.append("<h2>Plugins</h2>" + _table(["kind", "name", "plugin", "distribution", "version"],
                                                 [[p[k] for k in ("kind", "name", "plugin", "distribution", "version")]
                                                  for p in plugins]))
        facts = {k: run_info.get(k) for k in ("device", "cpu", "cpu_isa", "isa_limits", "cpu_count", "python",
                                              "platform", "torch")}
        parts.append(f"<h2>Machine</h2><pre>{html.escape(json.dumps(facts, indent=2))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _problems(run_info) -> list[str]:
    """The stages that failed (stage, component, message, cells affected) and the products that could not
    be written, from a run's summary."""
    parts = []
    failures = (run_info or {}).get("failures") or []
    if failures:
        parts.append("<h2>Failed stages</h2>")
        parts.append(_table(["stage", "component", "message", "cells"],
                            [[f["stage"], f["component"] or "—", f["message"], f.get("cells", "")] for f in failures]))
    problems = (run_info or {}).get("presentation_errors") or []
    if problems:
        parts.append("<h2>Not written</h2><p>These parts of the results could not be written; everything else "
                     "was:</p><ul>" + "".join(f"<li>{html.escape(p['what'])}: {html.escape(p['error'])}</li>"
                                               for p in problems) + "</ul>")
    return parts


def _with_ci(row, metric: str, signed: bool = False) -> str:
    return with_interval(row.get(metric), row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high"), signed=signed)


REFERENCE_NOTES = {
    "exact": "References are the dataset's exact masks; the training annotations the loop starts from were "
             "degraded on purpose (annotation noise), so annotation IoU measures how close the loop gets to the "
             "truth.",
    "original annotations": "This dataset has no annotations more exact than its own, so the reference is the "
                            "original annotation: annotation IoU measures how far the loop moves away from the "
                            "annotator, not whether it gets closer to the truth.",
}


def loop_page(title: str, summary: pd.DataFrame, seeds: pd.DataFrame, *, figures=(), run_info=None,
              grid_text: str | None = None) -> str:
    """The annotation loop's report: per configuration, each round's measurements with t intervals over
    seeds and the change from round 0, the figures, the per-seed rows, the grid and the machine."""
    parts = _open(title)
    if run_info:
        parts.append(f"<p>{run_info['chains']} chain(s), up to {run_info['rounds']} round(s) after round 0; "
                     f"{run_info['chains_converged']} converged early, {run_info['chains_stopped']} stopped by "
                     f"min_changed, {run_info['chains_failed']} failed; "
                     f"{run_info['trainings_run']} trainings run, {run_info['trainings_reused']} reused; "
                     f"{run_info['wall_s']:.1f} s on {html.escape(str(run_info['device']))}.</p>")
    if run_info and machine.sentence([run_info]):
        parts.append(f"<p class='note'>{html.escape(machine.sentence([run_info]))}</p>")
    parts.append("<p class='note'>Round r trains the masked model on the round's annotations (round 0: the "
                 "dataset's own). Values are means over seeds with 95% t intervals over seeds in brackets; "
                 "changes are paired per seed against round 0. A chain that converged (its annotations stopped "
                 "changing) counts with its last values in later rounds.</p>")
    parts += _problems(run_info)
    if len(summary):
        for reference in dict.fromkeys(summary["reference"]):
            parts.append(f"<p class='note'>{html.escape(REFERENCE_NOTES.get(reference, reference))}</p>")
        header = ["round", "seeds"] + [h for m in schema.ROUND_METRICS
                                        for h in [m.header] + ([f"Δ {m.header}"] if m.change else [])]
        varying = varying_labels(summary)
        common = [f"{c}={summary[c].iloc[0]}" for c in LABELS if c not in varying and str(summary[c].iloc[0]) != ""]
        parts.append(f"<p>Every configuration: {html.escape(' · '.join(common))}</p>")
        groups = summary.groupby(varying, sort=False, dropna=False) if varying else [((), summary)]
        for labels, group in groups:
            labels = labels if isinstance(labels, tuple) else (labels,)
            name = " · ".join(f"{k}={v}" for k, v in zip(varying, labels)) or "Rounds"
            parts.append(f"<h2>{html.escape(name)}</h2>")
            rows = [[r["round"], r["seeds"]] + [cell for m in schema.ROUND_METRICS for cell in
                                                 [_with_ci(r, m.name)] + ([_with_ci(r, f"{m.name}_change", True)]
                                                                          if m.change else [])]
                    for _, r in group.iterrows()]
            parts.append(_table(header, rows))
        parts.append("<p class='note'>" + html.escape("; ".join(f"{k}: {v}" for k, v in METRICS.items())) + "</p>")
    else:
        parts.append("<p>No round finished.</p>")
    if figures:
        parts.append("<h2>Figures</h2>")
        for path in figures:
            caption = ("Each measurement against the round (mean over seeds, band: 95% t interval)."
                       if Path(path).name == "loop_rounds.png" else
                       "Training tiles whose annotation moved most: reference (cyan), the round's annotation (yellow).")
            parts.append(_image(path, f"{caption} ({Path(path).name})"))
    if len(seeds):
        columns = [c for c in ["seed", "mask", "segmenter", "acceptor", "round", "status", *METRICS, "error"]
                   if c in seeds.columns]
        parts.append("<h2>Per seed</h2>")
        parts.append(_table(columns, [[("" if pd.isna(v) else f"{v:.3f}" if isinstance(v, float) else v)
                                       for v in r] for r in seeds[columns].itertuples(index=False)]))
    if grid_text is not None:
        parts.append(f"<h2>Grid</h2><pre>{html.escape(grid_text)}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
