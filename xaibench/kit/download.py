"""Getting dataset archives onto disk safely: where they go, resumable checksum-verified downloads, zip
extraction that cannot write outside its folder, and a manifest that marks a dataset folder complete.

Nothing here knows a particular dataset. A dataset plugin's ``fetch()`` strings these together:
``download`` the archive into its root, ``write_manifest`` with the archive's sha256 and ``complete:
False``, ``safe_extract_zip``, then ``write_manifest`` again with ``complete: True``. A folder whose
manifest is not complete is not a dataset, whatever else it holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

from xaibench.errors import UserError
from xaibench.kit.files import atomic_write_text
from xaibench.version import __version__

MANIFEST_NAME = "xaibench-manifest.json"
CHUNK = 1 << 20
TIMEOUT_S = 60


def default_data_root(name: str) -> Path:
    """Where dataset ``name`` lives unless a ``root`` is given: ``$XAIBENCH_DATA/<name>`` when the variable
    is set, else ``<user cache dir>/xaibench/datasets/<name>`` (``~/.cache/xaibench/datasets/<name>`` on
    Linux)."""
    base = os.environ.get("XAIBENCH_DATA")
    if base:
        folder = Path(base).expanduser()
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            where = "is a file" if existing == folder else f"is inside {str(existing)!r}, a file"
            raise UserError(f"XAIBENCH_DATA={base!r} {where}, not a folder; point it at a folder (each dataset "
                            f"goes in XAIBENCH_DATA/NAME), or unset it to use the user cache")
        return folder / name
    import platformdirs

    return Path(platformdirs.user_cache_dir("xaibench")) / "datasets" / name


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- download ----------------------------------------------------------------------------------------------


def _nothing_or_part(part: Path, created: list[Path]) -> str:
    """After a failed download: an empty ``.part`` and the empty folders the call ``created`` are removed
    (nothing was written); a ``.part`` with bytes is kept to resume. Says which, for the error message."""
    if part.exists() and part.stat().st_size > 0:
        return f"; {part} is kept and the next attempt resumes it"
    part.unlink(missing_ok=True)
    for folder in created:  # deepest first
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone
            break
    return "; nothing was written"


def download(url: str, dest: Path, *, sha256: str | None, progress: bool = True) -> str:
    """Download ``url`` to ``dest`` and return the file's hex sha256.

    Bytes go to ``dest`` + ``.part`` first; a ``.part`` left by an interrupted call is resumed with an HTTP
    Range request (restarted when the server ignores it). With ``sha256`` given, a mismatch deletes the
    ``.part`` and raises ``UserError`` naming both hashes. Only a complete (and verified) file is renamed
    to ``dest``, so ``dest`` existing means the download finished. Network failures raise ``UserError``
    and keep the ``.part`` for the next call to resume; a failure before the first byte leaves nothing
    behind (no ``.part``, none of the folders it created)."""
    import http.client
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    try:
        urllib.request.Request(url)
    except ValueError as exc:  # no scheme, a malformed host: refused before anything is created
        raise UserError(f"cannot download {url!r}: it is not a URL ({exc}); give a full one, e.g. "
                        f"https://example.org/data.zip") from None
    dest = Path(dest)
    part = dest.with_suffix(dest.suffix + ".part")
    created = [p for p in [dest.parent, *dest.parent.parents] if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = sha256.lower() if sha256 else None
    have = part.stat().st_size if part.exists() else 0
    received = 0
    total = None
    try:
        request = urllib.request.Request(url, headers={"User-Agent": f"xaibench/{__version__}"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not have:
                raise
            exc.close()
            # The .part is as long as the file or longer: it cannot be resumed, so start again.
            have = 0
            request.remove_header("Range")
            response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
        with response:
            resumed = have > 0 and response.status == 206 and _range_start(response) == have
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            digest = hashlib.sha256()
            if resumed:
                with open(part, "rb") as f:
                    for chunk in iter(lambda: f.read(CHUNK), b""):
                        digest.update(chunk)
            with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"download {dest.name}", disable=not progress, leave=False,
            ) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        kept = _nothing_or_part(part, created)
        raise UserError(f"could not download {url}: HTTP {exc.code} {exc.reason}{kept}. {_advice(dest)}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        kept = _nothing_or_part(part, created)
        raise UserError(
            f"could not download {url}: {type(exc).__name__}: {reason} (after {have + received} bytes{kept}). "
            f"{_advice(dest)}"
        ) from None
    size = have + received
    if total is not None and size < total:
        raise UserError(
            f"could not download {url}: the connection closed after {size} of {total} bytes ({part} is kept "
            f"and the next attempt resumes it). {_advice(dest)}"
        )
    actual = digest.hexdigest()
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        raise UserError(
            f"the download of {url} has sha256 {actual}, expected {expected}; it was deleted. The file may "
            f"have changed at the source or been corrupted in transit: try again, or pass the right --sha256 "
            f"or another --url"
        )
    os.replace(part, dest)
    return actual


def _range_start(response) -> int | None:
    """The first byte offset of a 206 response's ``Content-Range: bytes START-END/TOTAL``."""
    match = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _advice(dest: Path) -> str:
    return (f"Check the network connection and run the command again, pass --url with another source, or "
            f"download the file by hand to {dest}")


# -- extraction --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may expand to before ``safe_extract_zip`` refuses it (a zip bomb, or not the archive
    it claims to be). The defaults are far beyond the real datasets' (the Kahikatea archive: about 142 MB
    of JPEG and PNG tiles, about 1,000 entries, compression ratio about 1)."""

    max_bytes: int = 16 << 30  # 16 GiB extracted in all
    max_entries: int = 200_000
    max_ratio: float = 200.0  # extracted bytes per compressed byte, per entry and in all


def safe_extract_zip(zip_path: Path, root: Path, *, limits: ArchiveLimits = ArchiveLimits()) -> int:
    """Extract ``zip_path`` into ``root`` and return the number of files extracted.

    Every entry is checked before anything is written: an absolute path, a ``..`` component or a symlink
    entry raises ``UserError`` naming the entry, and so does an archive beyond ``limits`` (total size,
    entry count, compression ratio). The bytes written are counted as well, so an archive whose headers
    understate its sizes is stopped at the limit. Files are extracted into a temporary folder inside
    ``root`` and each top-level entry is then renamed into place (replacing an older one of the same name);
    a refused or interrupted extraction leaves nothing behind."""
    zip_path, root = Path(zip_path), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{zip_path} is not a readable zip archive ({exc}); delete it and fetch again") from None
    with archive:
        entries = archive.infolist()
        for info in entries:
            _check_entry(zip_path, info)
        _check_limits(zip_path, entries, limits)
        staging = Path(tempfile.mkdtemp(prefix=".xaibench-extract-", dir=root))
        try:
            files = written = 0
            for info in entries:
                target = staging / info.filename.replace("\\", "/")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(target, "wb") as dst:
                    written = _copy(src, dst, written, limits.max_bytes, zip_path)
                files += 1
            for entry in sorted(staging.iterdir()):
                _replace(entry, root / entry.name, staging)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise UserError(f"{zip_path} is damaged ({exc}); delete it and fetch again") from None
        except OSError as exc:
            raise UserError(f"could not extract {zip_path} into {root}: {exc}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return files


def _copy(src, dst, written: int, limit: int, zip_path: Path) -> int:
    """Copy an entry's bytes, stopping once the archive's total passes ``limit`` (headers can understate
    sizes); returns the total written so far."""
    while chunk := src.read(CHUNK):
        written += len(chunk)
        if written > limit:
            raise UserError(f"{zip_path} expands to more than {limit:,} bytes (its headers said less); refusing to "
                            f"extract it (nothing was written)")
        dst.write(chunk)
    return written


def _check_limits(zip_path: Path, entries: list, limits: ArchiveLimits) -> None:
    total = sum(info.file_size for info in entries)
    packed = sum(info.compress_size for info in entries)
    problem = None
    if len(entries) > limits.max_entries:
        problem = f"{len(entries):,} entries, more than the {limits.max_entries:,} allowed"
    elif total > limits.max_bytes:
        problem = f"it expands to {total:,} bytes, more than the {limits.max_bytes:,} allowed"
    elif total > limits.max_ratio * max(packed, 1) and total > (1 << 20):
        problem = f"it expands {total / max(packed, 1):,.0f} times ({packed:,} to {total:,} bytes), more than " \
                  f"the {limits.max_ratio:g} allowed: a zip bomb, or not the dataset's archive"
    else:
        for info in entries:
            if info.file_size > (1 << 20) and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                problem = (f"entry {info.filename!r} expands {info.file_size / max(info.compress_size, 1):,.0f} times "
                           f"({info.compress_size:,} to {info.file_size:,} bytes), more than the "
                           f"{limits.max_ratio:g} allowed: a zip bomb, or not the dataset's archive")
                break
    if problem:
        raise UserError(f"{zip_path}: {problem}; refusing to extract it (nothing was written). Delete it and fetch "
                        f"the dataset again, or pass another --url")


def _check_entry(zip_path: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename.replace("\\", "/")
    parts = name.split("/")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        problem = "an absolute path"
    elif ".." in parts:
        problem = "a '..' component that would write outside the dataset folder"
    elif stat.S_ISLNK(info.external_attr >> 16):
        problem = "a symbolic link"
    elif not name.strip("/"):
        problem = "an empty name"
    else:
        return
    raise UserError(f"{zip_path}: entry {info.filename!r} is {problem}; refusing to extract this archive")


def _replace(source: Path, target: Path, staging: Path) -> None:
    """Rename ``source`` to ``target``; an existing ``target`` is moved into ``staging`` (deleted with it)."""
    if target.exists() or target.is_symlink():
        os.replace(target, Path(tempfile.mkdtemp(prefix=".old-", dir=staging)) / target.name)
    os.replace(source, target)


# -- manifest ----------------------------------------------------------------------------------------------


def read_manifest(root: Path) -> dict | None:
    """The manifest of dataset folder ``root``, or None if it has none.

    By convention it holds ``url`` (where the archive came from), ``archive`` (its file name),
    ``sha256`` (of the archive), ``files`` (how many files were extracted) and ``complete`` (True only
    once extraction has finished)."""
    path = Path(root) / MANIFEST_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise UserError(f"the dataset root {root} is a file, not a folder; point root (--root) at a folder") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); delete it and fetch the dataset again") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; delete it and fetch the dataset again")
    return data


def write_manifest(root: Path, data: dict) -> Path:
    """Write ``data`` as the manifest of ``root`` atomically (a reader sees the old or the new one)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(root / MANIFEST_NAME, json.dumps(data, indent=2, sort_keys=True) + "\n")
