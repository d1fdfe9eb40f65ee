"""Writing a command's products (tables, figures, report) so that none of them can lose the run.

Each product is attempted on its own: one that raises is recorded (what, the error, its traceback) and
reported as a one-line warning, and everything else is still written. The record goes into ``run.json``
(or ``loop.json``) and the report.
"""

from __future__ import annotations

import sys
import traceback


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
