"""The ``xaibench`` command line: ``run``, ``loop``, ``plugins``, ``data``, ``leaderboard``.

User mistakes print one ``error:`` message and exit with code 2; failed cells exit with code 1.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sqlite3
import sys
import warnings
from pathlib import Path

import pandas as pd
import yaml

from xaibench import machine
from xaibench.commands import audit, data, export, loop
from xaibench.commands.outputs import output_file
from xaibench.commands.run import run
from xaibench.errors import PluginError, UserError, out_of_space
from xaibench.kit.files import atomic_write_text
from xaibench.kit.registry import KINDS, get_registry
from xaibench.pipeline import results
from xaibench.pipeline.plan import plan_loop
from xaibench.presentation import latex, leaderboard, report
from xaibench.text import text_table
from xaibench.version import __version__


def _dataset_arguments(parser) -> None:
    """A dataset named and built from the command line: ``NAME [--root DIR] [--param K=V ...]``."""
    parser.add_argument("name")
    parser.add_argument("--root", help="dataset folder (default: the dataset's documented location)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="another dataset parameter (repeatable), e.g. --param image_size=64")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xaibench",
        description="Benchmarks of explanation-guided classification and segmentation of aerial imagery.",
    )
    parser.add_argument("--version", action="version", version=f"xaibench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a grid of experiments (resumes a finished or interrupted run)")
    run.add_argument("--grid", required=True, help="grid YAML file, e.g. grids/quickstart.yaml")
    run.add_argument("--out", help="run directory (default: runs/<grid file name>)")
    run.add_argument("--dry-run", action="store_true", help="print what would run (cells, stages, trainings) and an "
                                                            "estimate of each stage kind's cost, write nothing")
    run.add_argument("--verbose", action="store_true", help="with --dry-run, also list every cell")
    _common_run_options(run)

    loop = sub.add_parser("loop", help="run the iterative annotation loop of a grid, round by round (resumable)",
                          epilog="explanations → segmentations → accepted annotations → retrain; see grids/loop.yaml")
    loop.add_argument("--grid", required=True, help="grid YAML file with a 'loop' section, e.g. grids/loop.yaml")
    loop.add_argument("--out", help="run directory, shared with 'xaibench run' (default: runs/<grid file name>)")
    loop.add_argument("--dry-run", action="store_true", help="print the chains and trainings, write nothing")
    loop.add_argument("--verbose", action="store_true", help="with --dry-run, also list every chain")
    _common_run_options(loop)

    plugins = sub.add_parser(
        "plugins", help="list registered components: kind, name, parameters, distribution and version",
        epilog="XAIBENCH_LOAD_PLUGINS limits which third-party plugins load: unset, all; empty, built-ins only; "
               "otherwise a comma-separated list of distribution or entry-point names. Writing a plugin: "
               "docs/plugins.md")
    plugins.add_argument("kind_name", nargs="*", metavar="KIND NAME",
                         help="one component: its description and parameters (e.g. masks blur)")
    plugins.add_argument("--kind", help="only components of this kind (datasets, masks, ...)")
    plugins.add_argument("--json", action="store_true", help="JSON instead of a table")

    data = sub.add_parser("data", help="inspect, download or prepare datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    _dataset_arguments(data_sub.add_parser("info", help="print split and class counts of a dataset as JSON"))
    fetch = data_sub.add_parser("fetch", help="download a dataset (checksum-verified, resumable)")
    fetch.add_argument("name")
    fetch.add_argument("--root", help="where to put it (default: $XAIBENCH_DATA/NAME or the user cache)")
    fetch.add_argument("--url", help="download from this URL instead of the dataset's own")
    fetch.add_argument("--sha256", help="expected sha256 of the download")
    prepare = data_sub.add_parser(
        "prepare", help="build a dataset folder from raw sources; options depend on the dataset",
        epilog="e.g. xaibench data prepare lcdb-waikato --imagery DIR --lcdb FILE --out DIR --tile-size 224")
    prepare.add_argument("name")
    prepare.add_argument("options", nargs=argparse.REMAINDER, help="--option value ...")
    audit_parser = data_sub.add_parser(
        "audit", help="look for shortcuts: per-class file facts and probes of trivial features",
        description="Per class: original sizes, aspect ratios, modes, formats, mask coverage; per trivial "
                    "feature (original size, aspect, format, mode, JPEG quantisation, and after the dataset's "
                    "resize mean colour, colour histogram, high-frequency energy) a cross-validated logistic "
                    "regression, flagged when its exact 95%% CI lies above the majority share, and every value "
                    "or range of it found in one class only (exact p, Bonferroni-corrected: a leak in part of "
                    "one class, which accuracy cannot see), flagged as a one-class value.")
    _dataset_arguments(audit_parser)
    audit_parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    audit_parser.add_argument("--output", default=None, metavar="FILE",
                              help="where to write the JSON (default: audit-NAME.json in the current folder)")

    export = sub.add_parser(
        "export", help="segmentations, a loop round's annotations or saliency maps as GIS files",
        description="Polygons (GeoPackage, GeoJSON) of the segmentations of a run's cells or of the annotations "
                    "a loop accepted by a round, or saliency maps as GeoTIFFs, in the tiles' own coordinates "
                    "where the dataset has a georeference (lcdb-waikato), else in pixel coordinates.")
    export.add_argument("dir", metavar="DIR", help="a run folder (the --out of 'xaibench run' or 'loop')")
    export.add_argument("--what", required=True, choices=["segmentations", "annotations", "saliency"])
    export.add_argument("--format", required=True, choices=["gpkg", "geojson", "geotiff"], dest="fmt")
    export.add_argument("--cell", help="only cells whose labels match, e.g. mask=white,seeder=top-k")
    export.add_argument("--round", type=int, dest="round_", metavar="N",
                        help="with --what annotations: the loop round (0: the first)")
    export.add_argument("--output", required=True, help="the file to write (a folder for geotiff)")

    board = sub.add_parser("leaderboard", help="rebuild the leaderboard of one or more run directories")
    board.add_argument("dirs", nargs="+", metavar="DIR", help="run directories written by 'xaibench run' (merged)")
    board.add_argument("--format", choices=["md", "csv", "latex", "html"], default="md")
    board.add_argument("--output", help="write to this file instead of printing")
    return parser


def _common_run_options(command) -> None:
    command.add_argument("--retry-failed", action="store_true", help="rerun stages that failed in an earlier run")
    command.add_argument("--executor", help="run stages with this executor instead of the grid's (local, process, ray)")
    command.add_argument("--executor-option", action="append", default=[], metavar="KEY=VALUE",
                         help="an executor parameter (repeatable), e.g. --executor-option address=auto")
    command.add_argument("--quiet", action="store_true", help="no progress bars")
    command.add_argument("--rebuild-store", action="store_true",
                         help="the folder's store.sqlite is unreadable: move it aside and record again every stage "
                              "whose artifacts are on disk")


def _out_folder(args) -> Path:
    """``--out``, or ``runs/<grid's stem>`` when it is not given; an empty ``--out ""`` (an unset shell
    variable, say) is a mistake, not a request for the default."""
    if args.out is None:
        return Path("runs") / Path(args.grid).stem
    if not args.out.strip():
        raise UserError("--out is empty; give the run folder, or leave --out out for runs/<grid name>")
    return Path(args.out)


def _executor_override(args) -> dict | None:
    if not (args.executor or args.executor_option):
        return None
    if not args.executor:
        raise UserError("--executor-option needs --executor NAME")
    return {"name": args.executor, "params": _key_values(args.executor_option, "--executor-option")}


def _cmd_loop(args) -> int:
    out = _out_folder(args)
    if args.dry_run:
        registry = get_registry()
        planner = plan_loop(args.grid, registry, fetch=False)
        loop.apply_executor_override(planner.grid, _executor_override(args), registry)
        print(loop.describe(planner, verbose=args.verbose))
        return 0
    info = loop.loop(args.grid, out, retry_failed=args.retry_failed, executor_override=_executor_override(args),
                     progress=not args.quiet, rebuild_store=args.rebuild_store)
    table = _read_csv(out / "loop.csv")
    if len(table):
        columns = [c for c in ("mask", "segmenter", "acceptor", "round", "seeds", "accuracy", "jaccard",
                               "annotation_iou", "annotation_iou_change", "accepted", "changed") if c in table]
        print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"chains: {info['chains']}, {info['chains_converged']} converged early, {info['chains_stopped']} stopped "
          f"by min_changed, {info['chains_failed']} failed; "
          f"trainings: {info['trainings_run']} run, {info['trainings_reused']} reused; {info['wall_s']:.1f} s on "
          f"{info['device']}")
    for line in _failure_lines(info, out, what="chain rounds"):
        print(line)
    print(f"results: {out / 'loop.csv'}, {out / 'loop_seeds.csv'}, {out / 'loop_report.html'}, {out / 'figures'}/")
    return 1 if info["chains_failed"] or info["presentation_errors"] else 0


def _read_csv(path: Path):
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, FileNotFoundError):
        return pd.DataFrame()


def _cmd_run(args) -> int:
    out = _out_folder(args)
    executor = _executor_override(args)
    result = run(args.grid, out, dry_run=args.dry_run, retry_failed=args.retry_failed, executor_override=executor,
                 progress=not args.quiet, rebuild_store=args.rebuild_store, verbose=args.verbose)
    if args.dry_run:
        return 0
    summary = result.info
    print(leaderboard.markdown(result.cells, result.summary, f"xaibench: {summary['grid']}", result.published,
                               brief=True))
    for line in leaderboard.at_chance(result.cells, result.summary):
        print(f"warning: {line}", file=sys.stderr)
    print(f"cells: {summary['cells_done']} done, {summary['cells_failed']} failed of {summary['cells']}; "
          f"trainings: {summary['trainings_run']} run, {summary['trainings_reused']} reused; "
          f"{summary['wall_s']:.1f} s on {summary['device']}")
    for line in _failure_lines(summary, out, what="cells"):
        print(line)
    print(f"results: {out / 'leaderboard.md'}, {out / 'report.html'}, {out / 'run.json'}, {out / 'figures'}/")
    return 1 if summary["cells_failed"] or summary["presentation_errors"] else 0


def _failure_lines(summary: dict, out: Path, *, what: str) -> list[str]:
    """The failures behind a command's failed cells (or loop rounds), and the products it could not write."""
    lines = []
    failures = summary.get("failures") or []
    if failures:
        lines.append(f"failures ({len(failures)}); tracebacks are in {out / 'store.sqlite'} (table stages), "
                     "rerun with --retry-failed once fixed:")
        for f in failures[:20]:
            who = f" [{f['component']}]" if f["component"] else ""
            lines.append(f"  {f['stage']}{who}: {f['message']} ({f['cells']} {what})")
        if len(failures) > 20:
            lines.append(f"  ... and {len(failures) - 20} more (the report lists them all)")
    for problem in summary.get("presentation_errors") or []:
        lines.append(f"not written: {problem['what']}: {problem['error']}")
    return lines


def _cmd_plugins(args) -> int:
    registry = get_registry()
    if args.kind_name:
        if len(args.kind_name) != 2:
            raise UserError("name one component as KIND NAME (e.g. xaibench plugins masks blur), or none to list all")
        kind, name = args.kind_name
        if kind not in KINDS:
            raise UserError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
        if name not in registry.names(kind):
            registry.get(kind, name)  # the unknown-name error, with the closest name
        component = registry.get(kind, name)
        row = {**component.describe(), "parameters": _json_safe(component.parameters()),
               "doc": inspect.getdoc(component.factory) or ""}
        print(json.dumps(row, indent=2) if args.json else _component_text(row))
        return 0
    if args.kind and args.kind not in KINDS:
        raise UserError(f"unknown kind {args.kind!r}; kinds are {', '.join(KINDS)}")
    rows = [{**registry.get(r["kind"], r["name"]).describe(),
             "parameters": _json_safe(registry.get(r["kind"], r["name"]).parameters())}
            for r in registry.describe() if not args.kind or r["kind"] == args.kind]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = []
    for r in rows:  # one line per parameter
        lines = _parameter_lines(r["parameters"]) or ["—"]
        table.append([r["kind"], r["name"], lines[0], f"{r['distribution']} {r['version']}"])
        table += [["", "", line, ""] for line in lines[1:]]
    print("\n".join(text_table(["kind", "name", "parameters", "from"], table)))
    print("\nxaibench plugins KIND NAME describes one; --json gives all of this as JSON")
    return 0


def _json_safe(parameters: list[dict]) -> list[dict]:
    return json.loads(json.dumps(parameters, default=str))


def _parameter_lines(parameters: list[dict]) -> list[str]:
    return [f"{p['name']}: {p['type']}" + (" (required)" if p["required"] else f" = {json.dumps(p['default'])}")
            for p in parameters]


def _component_text(row: dict) -> str:
    lines = [f"{row['kind']} {row['name']} — plugin {row['plugin']}, {row['distribution']} {row['version']}", ""]
    lines += [row["doc"], ""] if row["doc"] else []
    if row["parameters"]:
        lines.append("parameters:")
        lines += [f"  {line}" for line in _parameter_lines(row["parameters"])]
    else:
        lines.append("parameters: none")
    return "\n".join(lines)


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _key_values(items: list[str], flag: str) -> dict:
    """``["workers=2", "address=auto"]`` → ``{"workers": 2, "address": "auto"}`` (values read as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {item!r} is not KEY=VALUE")
        if key in out:  # the last one would silently win, as a grid's repeated key does not
            raise UserError(f"{flag} {key} is given twice; give each key once")
        out[key] = _parse_value(value)
    return out


def _options(tokens: list[str]) -> dict:
    """``--tile-size 224 --imagery a.tif b.tif`` → ``{"tile_size": 224, "imagery": ["a.tif", "b.tif"]}``."""
    options: dict = {}
    key = None
    for token in tokens:
        if token.startswith("--"):
            key = token[2:].replace("-", "_")
            if key in options:
                raise UserError(f"option --{token[2:]} is given twice")
            options[key] = []
        elif key is None:
            raise UserError(f"unexpected argument {token!r}: options are written --name value")
        else:
            options[key].append(token)
    return {k: (True if not v else v[0] if len(v) == 1 else list(v)) for k, v in options.items()}


def _cmd_export(args) -> int:
    result = export.export(args.dir, what=args.what, fmt=args.fmt, output=args.output, cell=args.cell,
                           round_=args.round_)
    counts = ", ".join(f"{result[k]} {k}" for k in ("cells", "chains", "features", "tiles") if k in result)
    print(f"exported {result['what']}: {counts}; coordinates: {result['coordinates']}"
          + (f" ({result['crs']})" if result.get("crs") else "") + f"; written: {result['output']}")
    return 0


def _cmd_data(args) -> int:
    if args.data_command == "prepare":
        if any(token in ("--help", "-h") for token in args.options):
            print(data.prepare_help(args.name))
            return 0
        options = _options(args.options)
        print(f"prepared: {data.prepare(args.name, options)}")
        return 0
    params = {}
    if args.root:
        params["root"] = args.root
    if args.data_command in ("info", "audit"):
        params.update(_key_values(args.param, "--param"))
    if args.data_command == "info":
        print(json.dumps(data.info(args.name, params), indent=2))
        return 0
    if args.data_command == "audit":
        if args.folds < 2:
            raise UserError(f"--folds {args.folds}: cross-validation needs at least 2 folds")
        output = output_file(args.output or f"audit-{args.name}.json")  # before the audit's minutes of work
        result = audit.audit(args.name, params, folds=args.folds)
        print(audit.table(result))  # shown even if the file cannot be written after all
        _write_output(output, json.dumps(result, indent=2, default=str) + "\n")
        print(f"written: {output}")
        return 0
    for key in ("url", "sha256"):
        value = getattr(args, key)
        if value is not None and not value.strip():
            raise UserError(f"--{key} is empty; give one, or leave --{key} out for the dataset's own")
        if value:
            params[key] = value
    print(f"fetched: {data.fetch(args.name, params)}")
    return 0


def render(dirs, fmt: str) -> str:
    """``xaibench leaderboard``: the merged leaderboard of run directories as md, csv, latex or html.

    A folder whose cells all failed or were never finished still shows its failures; a folder with no
    cell at all is a ``UserError``."""
    df, files, published = results.load_runs(dirs)
    if not len(df):
        raise UserError(f"{', '.join(map(str, dirs))}: no cell has been recorded yet (the run was interrupted "
                        "before any stage finished, or this is not a run folder); run 'xaibench run' into it first")
    summary = results.summarise(df, files)
    names, infos = [], []
    for directory in dirs:
        info = Path(directory) / "run.json"
        try:
            infos.append(json.loads(info.read_text()))
            names.append(infos[-1].get("grid", Path(directory).name))
        except (OSError, ValueError, AttributeError):
            continue
    title = "xaibench leaderboard" + (f": {' + '.join(dict.fromkeys(names))}" if names else "")
    machines = machine.sentence(infos)
    if fmt == "md":
        return leaderboard.markdown(df, summary, title, published=published, machines=machines)
    if fmt == "csv":
        return summary.to_csv(index=False)
    if fmt == "latex":
        return latex.document(df, summary, title, published=published, machines=machines)
    return report.page(title, df, summary, published=published, machines=machines)


def _cmd_leaderboard(args) -> int:
    output = output_file(args.output) if args.output else None
    text = render(args.dirs, args.format)
    if output is not None:
        _write_output(output, text)
        print(f"written: {output}")
    else:
        print(text)
    return 0


def _write_output(path: Path, text: str) -> None:
    """Write a command's output file whole or not at all (its path was checked before the work); a failure
    at this last step is one error line."""
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        if out_of_space(exc) is not None:
            raise
        raise UserError(f"--output {path}: cannot write it ({exc.strerror or exc}); choose another --output") from None


def _warning_line(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


def _tolerant_output() -> None:
    """A stdout or stderr that cannot encode α, †, — or → (``PYTHONIOENCODING=ascii``, a Latin-1 terminal)
    shows them as escapes (``\\u03b1``) instead of failing with a traceback once the work is done."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", None) == "strict":
            reconfigure(errors="backslashreplace")


# What pathlib's expanduser raises for ~NAME when NAME is no user here, wherever a path is expanded.
NO_HOME = "Could not determine home directory."


def main(argv=None) -> int:
    _tolerant_output()
    warnings.formatwarning = _warning_line
    args = _parser().parse_args(argv)
    handler = {"run": _cmd_run, "loop": _cmd_loop, "plugins": _cmd_plugins, "data": _cmd_data,
               "export": _cmd_export, "leaderboard": _cmd_leaderboard}[args.command]
    try:
        return handler(args)
    except (UserError, PluginError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume (finished stages and the last epoch of an "
              "interrupted training are kept)", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        if str(exc) != NO_HOME:
            raise
        print("error: a path starts with ~NAME/ for a user this machine does not know, so it has no home folder "
              "to stand for; write the path out in full, or ~/ for your own home folder", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into a reader that stopped early (| head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except (OSError, sqlite3.OperationalError) as exc:
        if out_of_space(exc) is None:
            raise
        print(f"error: no space left on the device ({exc}); free space or choose another --out, then run the same "
              f"command again: finished stages are kept", file=sys.stderr)
        return 1


def entry() -> None:
    """The ``xaibench`` command. After Ctrl-C the folder is already released (lock removed, store closed),
    so the process ends at once instead of waiting for torch's threads and finalizers, which can take
    seconds on a loaded machine."""
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
