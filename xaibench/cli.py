"""The ``xaibench`` command line: ``run``, ``plugins``, ``leaderboard``.

User mistakes print one ``error:`` message and exit with code 2; failed cells exit with code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import PluginError, UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xaibench",
        description="Benchmarks of explanation-guided classification and segmentation of aerial imagery.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a grid of experiments (resumes a finished or interrupted run)")
    run.add_argument("--grid", required=True, help="grid YAML file, e.g. grids/quickstart.yaml")
    run.add_argument("--out", help="run directory (default: runs/<grid file name>)")
    run.add_argument("--dry-run", action="store_true", help="print the cells and trainings, write nothing")
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    plugins = sub.add_parser("plugins", help="list registered components as JSON")
    plugins.add_argument("--kind", help="only components of this kind (datasets, masks, ...)")

    board = sub.add_parser("leaderboard", help="print the leaderboard of a run directory")
    board.add_argument("dir", help="a run directory written by 'xaibench run'")
    return parser


def _cmd_run(args) -> int:
    from .runner import run

    out = Path(args.out) if args.out else Path("runs") / Path(args.grid).stem
    summary = run(args.grid, out, dry_run=args.dry_run, progress=not args.quiet)
    if args.dry_run:
        return 0
    print((out / "leaderboard.md").read_text())
    print(f"cells: {summary['cells_done']} done, {summary['cells_failed']} failed of {summary['cells']}; "
          f"trainings: {summary['trainings_run']} run, {summary['trainings_reused']} reused; "
          f"{summary['wall_s']:.1f} s on {summary['device']}")
    print(f"results: {out / 'leaderboard.md'}, {out / 'leaderboard.csv'}, {out / 'run.json'}")
    return 1 if summary["cells_failed"] else 0


def _cmd_plugins(args) -> int:
    from .registry import KINDS, get_registry

    if args.kind and args.kind not in KINDS:
        raise UserError(f"unknown kind {args.kind!r}; kinds are {', '.join(KINDS)}")
    rows = get_registry().describe()
    if args.kind:
        rows = [r for r in rows if r["kind"] == args.kind]
    print(json.dumps(rows, indent=2))
    return 0


def _cmd_leaderboard(args) -> int:
    from . import leaderboard
    from .store import Store

    store = Store.open_existing(Path(args.dir))
    try:
        print(leaderboard.markdown(leaderboard.frame(store.cells())))
    finally:
        store.close()
    return 0


def _warning_line(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


def main(argv=None) -> int:
    import warnings

    warnings.formatwarning = _warning_line
    args = _parser().parse_args(argv)
    handler = {"run": _cmd_run, "plugins": _cmd_plugins, "leaderboard": _cmd_leaderboard}[args.command]
    try:
        return handler(args)
    except (UserError, PluginError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
