"""The results store of one run directory: SQLite for stage and cell records, files for artifacts.

Layout of ``DIR``: ``store.sqlite`` (tables ``stages`` and ``cells``), ``cache/<stage kind>/<key>.*``
(artifacts: safetensors weights, ``.npz`` arrays that load without pickle). Every write is atomic: files
are written to a temporary name and renamed, rows are committed in one transaction, so a crash never
leaves a half-written record that a later run would trust.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from xaibench.errors import UserError
from xaibench.pipeline.records import CellRow

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
CREATE TABLE IF NOT EXISTS artifacts (
    path TEXT PRIMARY KEY,         -- relative to the run folder
    stage TEXT NOT NULL,           -- key of the stage that wrote it; '' for a cell's per-image scores
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,          -- of the whole file
    probe TEXT NOT NULL            -- of sampled blocks: what a reuse check reads of a large file
);
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    labels TEXT NOT NULL,          -- JSON: dataset, backbone, seed, mask, ensemble, alpha, ...
    status TEXT NOT NULL,          -- done | failed
    metrics TEXT,                  -- JSON
    error TEXT,
    updated_at REAL
);
CREATE TABLE IF NOT EXISTS grid_cells (
    cell_id TEXT PRIMARY KEY       -- the cells of the grid last scored here (cells keeps earlier grids' too)
);
CREATE TABLE IF NOT EXISTS grid_settings (
    key TEXT PRIMARY KEY,          -- train, finetune, protocol, plugins
    value TEXT NOT NULL            -- JSON: how the grid last scored here trained and scored its cells
);
"""


# Files up to this size are hashed whole when reused; larger ones (weights, maps, data) by their size and
# a hash of 8 blocks spread over the file (first and last included), so checking a rerun's artifacts
# reads about half a MB per file instead of every byte (benchmarks/run.py: rerun_verification_share).
WHOLE_HASH_BYTES = 1 << 20
PROBE_BLOCK = 64 << 10
PROBE_BLOCKS = 8


def probe_digest(path: Path, size: int) -> str:
    """sha256 of ``PROBE_BLOCKS`` blocks spread evenly over the file (its first and last included), and of
    its size: cheap to compute for any size, and changed by truncation, extension or a rewritten region."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= PROBE_BLOCK * PROBE_BLOCKS:
            digest.update(f.read())
        else:
            for i in range(PROBE_BLOCKS):
                f.seek((size - PROBE_BLOCK) * i // (PROBE_BLOCKS - 1))
                digest.update(f.read(PROBE_BLOCK))
    return digest.hexdigest()


def file_digest(path: Path) -> tuple[int, str, str]:
    """``(size, sha256 of the whole file, probe digest)`` of a file just written."""
    size = Path(path).stat().st_size
    whole = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            whole.update(chunk)
    return size, whole.hexdigest(), probe_digest(path, size)


def check_file(path: Path, size: int, sha256: str, probe: str) -> str | None:
    """Why the file at ``path`` is not the one recorded (missing, another size, other content), or None.
    Small files are hashed whole; larger ones checked by size and probe digest."""
    try:
        actual = Path(path).stat().st_size
    except OSError:
        return "it is missing"
    if actual != size:
        return f"it has {actual:,} bytes, {size:,} were written"
    if size <= WHOLE_HASH_BYTES:
        if file_digest(path)[1] != sha256:
            return "its content differs from what was written"
    elif probe_digest(path, size) != probe:
        return "its content differs from what was written"
    return None


def save_arrays(path: Path, **arrays) -> None:
    """Write arrays to ``path`` (.npz) atomically; object arrays are refused so loading needs no pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise TypeError(f"array {name!r} has dtype object; store plain numeric or string arrays")
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written file is never left behind (a full disk, an interrupt)
        raise


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class RunLock:
    """``DIR/.lock``, held by one command at a time (``flock``). A refused second command never touches
    the owner's file; the owner removes it when it lets go, so no stale lock is left behind."""

    def __init__(self, root: Path):
        self.path = Path(root) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        for _ in range(3):  # the file may be removed by its owner between our open and our flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = self._owner()
                raise UserError(f"another xaibench run{owner} is using {str(self.path.parent)!r}; wait for it "
                                "to finish or choose another --out folder") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self.fd = fd
                return
            os.close(fd)
        raise UserError(f"could not take the lock {self.path}; is another xaibench command starting on this folder?")

    def _owner(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return ""
        return f" (process {pid})" if pid.isdigit() else ""

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None


def _open_database(path: Path) -> sqlite3.Connection:
    """The SQLite store at ``path`` with its schema, or ``UserError`` saying what to do when the file is
    not a readable database."""
    advice = (f"move it away and rebuild it from the artifacts beside it with 'xaibench run --grid GRID --out "
              f"{path.parent} --rebuild-store' (the same for 'xaibench loop'), or delete the folder")
    try:
        db = sqlite3.connect(path, timeout=30)
        check = db.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            db.close()
            raise UserError(f"{path} is damaged ({check[0] if check else 'no answer'}); {advice}")
        db.executescript(SCHEMA)
        db.commit()
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{path} is not a readable SQLite database ({exc}); {advice}") from None
    return db


def cell_file(run_dir: Path, cell_id: str) -> Path:
    """Where a run folder keeps a cell's per-image scores (``Store.cell_path``)."""
    return Path(run_dir) / "cells" / f"{cell_id}.npz"


class Store:
    """Stage, artifact and cell records of one run directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache = self.root / "cache"
        self.path = self.root / "store.sqlite"
        self.db = _open_database(self.path)

    @classmethod
    def open_existing(cls, root: Path) -> "Store":
        if not (Path(root) / "store.sqlite").is_file():
            raise UserError(f"{str(root)!r} holds no xaibench results (no store.sqlite); pass a run's --out folder")
        return cls(root)

    def close(self):
        self.db.close()

    # -- artifacts -----------------------------------------------------------------------------------
    def artifact(self, path: str) -> tuple[int, str, str] | None:
        row = self.db.execute("SELECT size, sha256, probe FROM artifacts WHERE path = ?", (path,)).fetchone()
        return tuple(row) if row else None

    def verify(self, path: str) -> str | None:
        """Why the file at ``path`` (relative to the run folder) cannot be trusted, or None."""
        record = self.artifact(path)
        if record is None:
            return "it was never recorded as written"
        return check_file(self.root / path, *record)

    def record_artifacts(self, stage: str, files: dict[str, tuple[int, str, str]]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?)",
                                [(path, stage, *digest) for path, digest in files.items()])

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

    def record_stage(self, key, kind, label, status, *, meta=None, error=None, seconds=None, files=None) -> None:
        """A stage's record and, when it is done, the digests of the files it wrote (relative paths), in
        one transaction."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, kind, label, str(status), json.dumps(meta or {}), error, seconds, time.time()),
            )
            self.db.execute("DELETE FROM artifacts WHERE stage = ?", (key,))
            self.db.executemany("INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?)",
                                [(path, key, *digest) for path, digest in (files or {}).items()])

    # -- cells ---------------------------------------------------------------------------------------
    def cell_path(self, cell_id: str) -> Path:
        """Per-image scores of a cell (``.npz``): ids, correct, jaccard, seg_iou, explained_index."""
        return cell_file(self.root, cell_id)

    def record_cells(self, rows: list[CellRow], *, settings: dict | None = None) -> None:
        """Every row in one transaction (a row replaces an earlier one of the same cell). With ``settings``
        (what changes a cell's numbers besides its labels: training, protocol, plugin versions, each a
        JSON value), ``rows`` are every cell of the grid just run: they become the folder's current grid
        (``current_grid``), and cells of earlier grids stay recorded but out of it."""
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?)",
                [(r.cell_id, json.dumps(r.labels), str(r.status), json.dumps(r.metrics), r.error, now) for r in rows],
            )
            if settings is not None:
                self.db.execute("DELETE FROM grid_cells")
                self.db.executemany("INSERT OR IGNORE INTO grid_cells VALUES (?)", [(r.cell_id,) for r in rows])
                self.db.execute("DELETE FROM grid_settings")
                self.db.executemany("INSERT INTO grid_settings VALUES (?, ?)",
                                    [(key, json.dumps(value, sort_keys=True)) for key, value in settings.items()])

    def current_grid(self) -> tuple[set[str] | None, dict | None]:
        """The cell ids and settings of the grid last scored here (``record_cells``); ``(None, None)`` for
        a folder whose runs recorded none (written before xaibench recorded its grid)."""
        ids = {cid for (cid,) in self.db.execute("SELECT cell_id FROM grid_cells")}
        if not ids:
            return None, None
        settings = {key: json.loads(value) for key, value in self.db.execute("SELECT key, value FROM grid_settings")}
        return ids, settings

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
