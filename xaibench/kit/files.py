"""Writing files so that a reader never sees half of one (used by the pipeline and by dataset plugins)."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: Path, text: str, *, newline: str | None = None) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``, so readers see the
    old file or the new one, never half of one. The file is readable by others (0644), as a plain write
    would make it, so shared dataset and run folders stay usable."""
    import tempfile

    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        # A device or a pipe (--output /dev/null, /dev/stdout) is written through: renamed over, it would be
        # replaced by a plain file (for root, /dev/null itself, for every program on the machine).
        with open(path, "w", encoding="utf-8", newline=newline) as f:
            f.write(text)
        return path
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8", newline=newline) as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
