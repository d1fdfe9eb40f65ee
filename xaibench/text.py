"""Plain-text tables for the terminal (``xaibench plugins``, ``xaibench data audit``)."""

from __future__ import annotations


def text_table(header: list[str], rows: list[list]) -> list[str]:
    """Left-aligned columns as wide as their widest cell, a rule under the header; trailing spaces cut."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return [line.format(*header).rstrip(), line.format(*["-" * w for w in widths])] + \
        [line.format(*map(str, r)).rstrip() for r in rows]
