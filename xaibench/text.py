"""Plain text for the terminal and the file system: tables (``xaibench plugins``, ``xaibench data audit``)
and file names a shell needs no quotes for (figures, exports)."""

from __future__ import annotations

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
