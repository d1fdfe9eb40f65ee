"""The results store of one run directory: SQLite for stage and cell records, files for artifacts.

Layout of ``DIR``: ``store.sqlite`` (tables ``stages`` and ``cells``), ``cache/<stage kind>/<key>.*``
(artifacts: safetensors weights, ``.npz`` arrays that load without pickle). Every write is atomic: files
are written to a temporary name and renamed, rows are committed in one transaction, so a crash never
leaves a half-written record that a later run would trust.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from .errors import UserError
from .records import CellRow

SCHEMA = """
CREATE TABLE IF NOT EXISTS stages (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    label TEXT NOT NULL,
    status TEXT NOT NULL,          -- done | failed
    meta TEXT,                     -- JSON
    error TEXT,
    seconds REAL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    labels TEXT NOT NULL,          -- JSON: dataset, backbone, seed, mask, ensemble, alpha, ...
    status TEXT NOT NULL,          -- done | failed
    metrics TEXT,                  -- JSON
    error TEXT,
    updated_at REAL
);
"""


def atomic_write_text(path: Path, text: str, *, newline: str | None = None) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``, so readers see the
    old file or the new one, never half of one. The file is readable by others (0644), as a plain write
    would make it, so shared dataset and run folders stay usable."""
    import tempfile

    path = Path(path)
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


def save_arrays(path: Path, **arrays) -> None:
    """Write arrays to ``path`` (.npz) atomically; object arrays are refused so loading needs no pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise TypeError(f"array {name!r} has dtype object; store plain numeric or string arrays")
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class Store:
    """Stage and cell records of one run directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache = self.root / "cache"
        self.db = sqlite3.connect(self.root / "store.sqlite", timeout=30)
        self.db.executescript(SCHEMA)
        self.db.commit()

    @classmethod
    def open_existing(cls, root: Path) -> "Store":
        if not (Path(root) / "store.sqlite").is_file():
            raise UserError(f"{str(root)!r} holds no xaibench results (no store.sqlite); pass a run's --out folder")
        return cls(root)

    def lock(self) -> None:
        """Hold the run directory for this process; a second ``xaibench run`` on it is refused."""
        import fcntl

        self._lock = open(self.root / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise UserError(f"another xaibench run is using {str(self.root)!r}; wait for it to finish or "
                            "choose another --out folder") from None
        self._lock.write(str(os.getpid()))
        self._lock.flush()

    def close(self):
        self.db.close()
        if getattr(self, "_lock", None) is not None:
            self._lock.close()
            self._lock = None

    # -- stages --------------------------------------------------------------------------------------
    def stage(self, key: str) -> dict | None:
        row = self.db.execute(
            "SELECT key, kind, label, status, meta, error, seconds FROM stages WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        return {
            "key": row[0], "kind": row[1], "label": row[2], "status": row[3],
            "meta": json.loads(row[4]) if row[4] else {}, "error": row[5], "seconds": row[6],
        }

    def record_stage(self, key, kind, label, status, *, meta=None, error=None, seconds=None) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, kind, label, str(status), json.dumps(meta or {}), error, seconds, time.time()),
            )

    # -- cells ---------------------------------------------------------------------------------------
    def cell_path(self, cell_id: str) -> Path:
        """Per-image scores of a cell (``.npz``): ids, correct, jaccard, seg_iou, explained_index."""
        return self.root / "cells" / f"{cell_id}.npz"

    def record_cells(self, rows: list[CellRow]) -> None:
        """Every row in one transaction (a row replaces an earlier one of the same cell)."""
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?)",
                [(r.cell_id, json.dumps(r.labels), str(r.status), json.dumps(r.metrics), r.error, now) for r in rows],
            )

    def scored_cells(self) -> dict[str, dict]:
        """cell id → metrics of every cell recorded as done."""
        rows = self.db.execute("SELECT cell_id, metrics FROM cells WHERE status = 'done'")
        return {cid: json.loads(metrics) if metrics else {} for cid, metrics in rows}

    def cells(self) -> list[dict]:
        out = []
        for cid, labels, status, metrics, error in self.db.execute(
            "SELECT cell_id, labels, status, metrics, error FROM cells ORDER BY rowid"
        ):
            out.append({"cell_id": cid, **json.loads(labels), "status": status,
                        **(json.loads(metrics) if metrics else {}), "error": error})
        return out
