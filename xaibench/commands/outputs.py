"""Writing a command's products (tables, figures, report) so that none of them can lose the run.

Each product is attempted on its own: one that raises is recorded (what, the error, its traceback) and
reported as a one-line warning, and everything else is still written. The record goes into ``run.json``
(or ``loop.json``) and the report.

A path the user names for a command's output (``--output``) is checked before the command does any work
(``output_file``, ``output_folder``): a folder where a file is wanted, a file where a folder is wanted, a
missing or unwritable folder is one ``UserError`` saying what to change, not a traceback after the work.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from xaibench.errors import UserError


class Outputs:
    """Attempts products one at a time and keeps the problems of those that failed."""

    def __init__(self, *, echo=None):
        self.problems: list[dict] = []
        self.echo = echo or (lambda line: print(line, file=sys.stderr))

    def attempt(self, what: str, fn, default=None):
        """``fn()``, or ``default`` when it raises (the failure is recorded under ``what``)."""
        try:
            return fn()
        except Exception as exc:  # a bug in drawing must not cost the results already computed
            message = f"{type(exc).__name__}: {exc}"
            self.problems.append({"what": what, "error": message, "traceback": traceback.format_exc()})
            self.echo(f"warning: could not write {what}: {message} (recorded in the run's JSON summary)")
            return default

    def summary(self) -> list[dict]:
        """The problems without tracebacks, for the report."""
        return [{"what": p["what"], "error": p["error"]} for p in self.problems]


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``.`` at worst)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _writable_folder(folder: Path, path: Path, option: str) -> None:
    if not folder.is_dir():
        raise UserError(f"{option} {path}: {folder} is a file, not a folder; choose another {option}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: the folder {folder} is not writable; choose another {option}")


def output_file(path, *, option: str = "--output", create_folders: bool = False) -> Path:
    """``path`` checked as the file a command is about to write (before any work): not an existing folder,
    and in a writable folder, which must exist unless ``create_folders`` (the command creates it).
    Raises ``UserError`` naming ``option`` and what to do."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; give the name of a file to write (inside it, or elsewhere)")
    nearest = _nearest_existing(path.parent)
    if nearest.is_dir() and nearest != path.parent and not create_folders:
        raise UserError(f"{option} {path}: the folder {path.parent} does not exist; create it first or choose "
                        f"another {option}")
    _writable_folder(nearest, path, option)
    return path


def output_folder(path, *, option: str = "--output") -> Path:
    """``path`` checked as a folder a command is about to write files into (created if missing): not an
    existing file, and under a writable folder. Raises ``UserError`` naming ``option``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file; the output is a folder of files: give a folder (a new one, "
                        f"or an existing one to add to)")
    _writable_folder(_nearest_existing(path), path, option)
    return path
