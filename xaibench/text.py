"""Plain text for the terminal and the file system: tables (``xaibench plugins``, ``xaibench data audit``)
and file names a shell needs no quotes for (figures, exports)."""

from __future__ import annotations

import math
import re


def slug(text: str, limit: int | None = None) -> str:
    """A file-name stem a shell needs no quotes for: letters, digits, ``.``, ``-`` and ``_`` (every other
    run of characters becomes one ``_``), at most ``limit`` characters."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", str(text)).strip("_")[:limit]


def text_table(header: list[str], rows: list[list]) -> list[str]:
    """Left-aligned columns as wide as their widest cell, a rule under the header; trailing spaces cut."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return [line.format(*header).rstrip(), line.format(*["-" * w for w in widths])] + \
        [line.format(*map(str, r)).rstrip() for r in rows]


# What a table cell shows for a value that does not exist (a metric nobody measured, a NaN mean).
MISSING = "—"
# What a table cell shows where a value cannot exist: a choice made on the validation split of a dataset
# that has none.
NOT_POSSIBLE = "not possible (no val split)"


def _absent(value) -> bool:
    """None, pandas' NA, or a NaN (Python, numpy or pandas float)."""
    if value is None or type(value).__name__ == "NAType":
        return True
    try:
        return math.isnan(value)
    except TypeError:
        return False


def number(value, *, scale: float = 1.0, digits: int = 3, signed: bool = False) -> str:
    """``value × scale`` with ``digits`` decimals (a sign always, when ``signed``); ``MISSING`` for None
    or NaN."""
    if _absent(value):
        return MISSING
    return f"{float(value) * scale:{'+' if signed else ''}.{digits}f}"


def interval(low, high, *, scale: float = 1.0, digits: int = 3) -> str:
    """``[low, high]`` formatted as ``number``; empty where either end is missing (no interval)."""
    if _absent(low) or _absent(high):
        return ""
    return f"[{number(low, scale=scale, digits=digits)}, {number(high, scale=scale, digits=digits)}]"


def with_interval(value, low, high, *, scale: float = 1.0, digits: int = 3, signed: bool = False) -> str:
    """A value with its confidence interval, ``0.812 [0.790, 0.833]``, the one way every table writes
    one: ``MISSING`` without a value, the value alone without an interval."""
    if _absent(value):
        return MISSING
    bracket = interval(low, high, scale=scale, digits=digits)
    text = number(value, scale=scale, digits=digits, signed=signed)
    return f"{text} {bracket}" if bracket else text
