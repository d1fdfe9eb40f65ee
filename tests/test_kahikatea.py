"""The ``kahikatea`` dataset and the download utilities behind it, on a small archive in the real layout
(white-background RGB and RGBA masks, tiles of the real sizes) served over HTTP from 127.0.0.1."""

import csv
import hashlib
import io
import json
import re
import shutil
import socket
import stat
import threading
import zipfile
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xaibench import create
from xaibench.errors import ComponentParamsError, UserError
from xaibench.kit.download import MANIFEST_NAME, default_data_root, download, read_manifest, safe_extract_zip
from xaibench.kit.splits import METHOD
from xaibench_plugins.kahikatea import KahikateaDataset

SIZE = 48
COMMON, RGBA_POSITIVE, LEAKY_NEGATIVE = (368, 246), (404, 269), (552, 369)


# -- a Kahikatea-layout archive ----------------------------------------------------------------------------


def tile_pixels(size, seed):
    """A smooth uint8 (H, W, 3) tile that compresses well and differs per tile."""
    width, height = size
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 160, 3)
    rows, cols = np.mgrid[0:height, 0:width]
    ramp = np.stack([cols * 60 // width, rows * 60 // height, (rows + cols) * 30 // (width + height)], -1)
    return (base + ramp).astype(np.uint8)


def png(array, mode=None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def rgb_mask(pixels):
    """Image colour on the left quarter, near-white (254, 255, 255) on the next quarter, pure white after:
    foreground is the left half."""
    mask = np.full_like(pixels, 255)
    quarter = pixels.shape[1] // 4
    mask[:, :quarter] = pixels[:, :quarter]
    mask[:, quarter : 2 * quarter] = (254, 255, 255)
    return mask


def rgba_mask(pixels):
    """Opaque image colour on the left third (foreground), transparent image colour on the middle third and
    opaque white on the right third (both background)."""
    height, width, _ = pixels.shape
    third = width // 3
    mask = np.full((height, width, 4), 255, np.uint8)
    mask[:, : 2 * third, :3] = pixels[:, : 2 * third]
    mask[:, third : 2 * third, 3] = 0
    return mask


def kahikatea_files():
    """{path in archive: bytes} and {tile id: (label, photo, original size, mode)}.

    Flight 20150311A: 8 photos of 2x2 tiles with positives and negatives (positives of the last two are
    RGBA 404x269 with RGBA masks); flight 20160603U: 3 photos of 552x369 negatives only, like the real data.
    """
    files, tiles = {}, {}
    positives_per_photo = [2, 3, 1, 2, 2, 3, 1, 2]
    cells = ["01_01", "01_02", "02_01", "02_02"]
    seed = 0
    for index, positives in enumerate(positives_per_photo):
        photo = f"20150311A_{101 + index:04d}"
        for cell_index, cell in enumerate(cells):
            name = f"Biospatial_{photo}_{cell}"
            seed += 1
            label = int(cell_index < positives)
            rgba = label and index >= 6
            pixels = tile_pixels(RGBA_POSITIVE if rgba else COMMON, seed)
            if label:
                if rgba:
                    alpha = np.full(pixels.shape[:2], 255, np.uint8)
                    alpha[: pixels.shape[0] // 2] = 0  # transparent rows must not change the RGB pixels
                    files[f"data/ve_positive/{name}.png"] = png(np.dstack([pixels, alpha]), "RGBA")
                    files[f"expl/ve_positive/{name}.png"] = png(rgba_mask(pixels), "RGBA")
                else:
                    files[f"data/ve_positive/{name}.png"] = png(pixels)
                    files[f"expl/ve_positive/{name}.png"] = png(rgb_mask(pixels))
            else:
                files[f"data/ve_negative/{name}.png"] = png(pixels)
            tiles[name] = (label, photo, RGBA_POSITIVE if rgba else COMMON, "RGBA" if rgba else "RGB")
    for index in range(3):
        photo = f"20160603U_{201 + index:04d}"
        for cell in cells:
            name = f"Biospatial_{photo}_{cell}"
            seed += 1
            files[f"data/ve_negative/{name}.png"] = png(tile_pixels(LEAKY_NEGATIVE, seed))
            tiles[name] = (0, photo, LEAKY_NEGATIVE, "RGB")
    return files, tiles


def make_zip(files, *, prefix="", extra=()) -> bytes:
    """A zip of ``files`` under ``prefix``; ``extra`` is a list of ``ZipInfo, bytes`` pairs added as they are."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in sorted(files.items()):
            archive.writestr(prefix + name, data)
        for info, data in extra:
            archive.writestr(info, data)
    return buffer.getvalue()


def symlink_entry(name, target="/etc/passwd"):
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def write_layout(base: Path, files):
    for name, data in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture(scope="module")
def layout():
    return kahikatea_files()


@pytest.fixture(scope="module")
def archive(layout):
    return make_zip(layout[0])


# -- a local HTTP server ----------------------------------------------------------------------------------


class ServerState:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.truncate_next: set[str] = set()  # the next response for these paths stops halfway
        self.ignore_range: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        self.base = ""

    def url(self, path):
        return self.base + path


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one response per connection: closing early truncates the body
    timeout = 5

    def do_GET(self):
        state = self.server.state
        path = self.path.split("?")[0]
        requested = self.headers.get("Range")
        state.requests.append((path, requested))
        body = state.files.get(path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        if requested and path not in state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if path in state.truncate_next:
            state.truncate_next.discard(path)
            payload = payload[: len(payload) // 2]
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_server():
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_port}"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def server(http_server, archive, monkeypatch):
    """The running server with fresh state, serving the good archive at /kahikatea.zip."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    http_server.files = {"/kahikatea.zip": archive}
    http_server.truncate_next = set()
    http_server.ignore_range = set()
    http_server.requests = []
    return http_server


def dataset_at(root, server=None, path="/kahikatea.zip", **params):
    if server is not None:
        params["url"] = server.url(path) + "?download=1"
    return create("datasets", "kahikatea", root=str(root), **params)


@pytest.fixture(scope="module")
def ready_root(tmp_path_factory, http_server, archive):
    """A dataset folder fetched once over HTTP, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("kahikatea-ready")
    http_server.files = {"/ready.zip": archive}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        KahikateaDataset(root=str(root), url=http_server.url("/ready.zip")).fetch()
    return root


def assert_not_ready(root):
    with pytest.raises(UserError, match="xaibench data fetch kahikatea"):
        KahikateaDataset(root=str(root)).check()


# -- default root and parameters --------------------------------------------------------------------------


def test_default_root_follows_xaibench_data(monkeypatch, tmp_path):
    monkeypatch.setenv("XAIBENCH_DATA", str(tmp_path / "data"))
    assert default_data_root("kahikatea") == tmp_path / "data" / "kahikatea"
    assert KahikateaDataset().root_path == tmp_path / "data" / "kahikatea"
    monkeypatch.delenv("XAIBENCH_DATA")
    assert default_data_root("kahikatea").parts[-3:] == ("xaibench", "datasets", "kahikatea")


def test_parameters_are_validated_from_the_signature():
    with pytest.raises(ComponentParamsError, match="val_fraction"):
        create("datasets", "kahikatea", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ComponentParamsError, match="sha256"):
        create("datasets", "kahikatea", sha256="not-a-hash")
    with pytest.raises(ComponentParamsError, match="image_size"):
        create("datasets", "kahikatea", image_size=0)


def test_missing_data_names_the_fetch_command_and_downloads_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("XAIBENCH_DATA", str(tmp_path / "data"))
    root = tmp_path / "data" / "kahikatea"
    dataset = create("datasets", "kahikatea")
    with pytest.raises(UserError) as error:
        dataset.check()
    message = str(error.value)
    assert f"xaibench data fetch kahikatea --root {root}" in message and "download: true" in message
    with pytest.raises(UserError, match="xaibench data fetch kahikatea"):
        dataset.split("train")
    assert not root.exists()
    assert dataset.describe() == {"root": str(root), "ready": False,
                                  "fetch": f"xaibench data fetch kahikatea --root {root}"}


# -- fetch ------------------------------------------------------------------------------------------------


def test_fetch_downloads_verifies_extracts_and_records_the_hash(server, archive, layout, tmp_path):
    root = tmp_path / "k"
    dataset = dataset_at(root, server)
    assert dataset.fetch() == root
    manifest = read_manifest(root)
    assert manifest["complete"] is True
    assert manifest["sha256"] == hashlib.sha256(archive).hexdigest()
    assert manifest["files"] == len(layout[0])
    assert manifest["url"] == dataset.url
    assert (root / "data" / "ve_positive").is_dir() and (root / "kahikatea.zip").read_bytes() == archive
    assert not list(root.glob(".xaibench-extract-*")) and not list(root.glob("*.part"))
    dataset.check()
    requests = len(server.requests)
    assert dataset_at(root, server).fetch() == root  # a complete dataset is not downloaded again
    assert len(server.requests) == requests == 1


def test_download_true_fetches_in_check(server, tmp_path):
    root = tmp_path / "k"
    dataset_at(root, server, download=True).check()
    assert read_manifest(root)["complete"] is True
    KahikateaDataset(root=str(root)).check()


def test_archive_with_a_wrapping_folder_is_accepted(server, layout, tmp_path):
    server.files["/wrapped.zip"] = make_zip(layout[0], prefix="kahikatea/")
    root = tmp_path / "k"
    dataset = dataset_at(root, server, path="/wrapped.zip", image_size=SIZE)
    dataset.fetch()
    assert (root / "kahikatea" / "data" / "ve_negative").is_dir()
    assert sum(len(dataset.split(s)) for s in ("train", "val", "test")) == len(layout[1])


def test_checksum_mismatch_is_rejected_and_leaves_no_dataset(server, archive, tmp_path):
    root = tmp_path / "k"
    wrong = "0" * 64
    with pytest.raises(UserError) as error:
        dataset_at(root, server, sha256=wrong).fetch()
    assert wrong in str(error.value) and hashlib.sha256(archive).hexdigest() in str(error.value)
    assert not list(root.glob("kahikatea.zip*")) and not (root / "data").exists()
    assert_not_ready(root)


def test_the_recorded_hash_holds_later_downloads_to_the_same_archive(server, layout, tmp_path):
    root = tmp_path / "k"
    dataset_at(root, server).fetch()
    shutil.rmtree(root / "data")
    (root / "kahikatea.zip").unlink()
    other = dict(layout[0])
    other.pop(next(iter(other)))
    server.files["/kahikatea.zip"] = make_zip(other)  # the source changed
    with pytest.raises(UserError, match="expected " + read_manifest(root)["sha256"]):
        dataset_at(root, server).fetch()
    assert_not_ready(root)


def test_a_present_archive_is_extracted_again_without_downloading(server, tmp_path):
    root = tmp_path / "k"
    dataset_at(root, server).fetch()
    shutil.rmtree(root / "data")
    assert_not_ready(root)
    requests = len(server.requests)
    dataset_at(root, server).fetch()
    assert len(server.requests) == requests
    KahikateaDataset(root=str(root)).check()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_unsafe_zip_entries_are_refused_before_anything_is_extracted(server, layout, tmp_path, kind):
    root = tmp_path / "nested" / "k"
    outside = tmp_path / "evil.png"
    if kind == "symlink":
        name = "data/ve_positive/link.png"
        entry = symlink_entry(name, str(outside))
    else:
        name = "../evil.png" if kind == "dotdot" else str(outside)
        entry = (zipfile.ZipInfo(name), b"x")
    server.files["/bad.zip"] = make_zip(layout[0], extra=[entry])
    with pytest.raises(UserError, match=re.escape(repr(name))):
        dataset_at(root, server, path="/bad.zip").fetch()
    assert not outside.exists() and not (root / "evil.png").exists() and not (root.parent / "evil.png").exists()
    assert not (root / "data").exists() and not list(root.glob(".xaibench-extract-*"))
    assert_not_ready(root)


def test_an_interrupted_extraction_leaves_no_dataset(server, monkeypatch, tmp_path):
    from xaibench.kit import download

    copy = download._copy
    copies = []

    def copy_then_interrupt(src, dst, *args):
        copies.append(dst)
        if len(copies) == 10:
            raise KeyboardInterrupt
        return copy(src, dst, *args)

    monkeypatch.setattr(download, "_copy", copy_then_interrupt)
    root = tmp_path / "k"
    with pytest.raises(KeyboardInterrupt):
        dataset_at(root, server).fetch()
    assert len(copies) == 10
    assert not (root / "data").exists() and not list(root.glob(".xaibench-extract-*"))
    assert_not_ready(root)
    requests = len(server.requests)
    dataset_at(root, server).fetch()  # the archive downloaded before the interruption is reused
    assert len(server.requests) == requests
    KahikateaDataset(root=str(root)).check()


def test_safe_extract_zip_places_files_and_counts_them(tmp_path):
    zip_path = tmp_path / "a.zip"
    zip_path.write_bytes(make_zip({"top/a.txt": b"a", "top/sub/b.txt": b"bb", "c.txt": b"ccc"}))
    root = tmp_path / "out"
    (root / "top").mkdir(parents=True)
    (root / "top" / "stale.txt").write_text("old")
    assert safe_extract_zip(zip_path, root) == 3
    assert (root / "top" / "sub" / "b.txt").read_bytes() == b"bb" and (root / "c.txt").read_bytes() == b"ccc"
    assert not (root / "top" / "stale.txt").exists()  # an entry replaces the older folder of its name
    assert sorted(p.name for p in root.iterdir()) == ["c.txt", "top"]


def test_interrupted_download_leaves_no_dataset_and_the_next_fetch_resumes(server, archive, tmp_path):
    root = tmp_path / "k"
    server.truncate_next.add("/kahikatea.zip")
    with pytest.raises(UserError, match="resumes"):
        dataset_at(root, server).fetch()
    part = root / "kahikatea.zip.part"
    assert 0 < part.stat().st_size < len(archive)
    assert not (root / "kahikatea.zip").exists()
    assert_not_ready(root)
    dataset_at(root, server).fetch()
    assert server.requests[-1] == ("/kahikatea.zip", f"bytes={len(archive) // 2}-")
    assert (root / "kahikatea.zip").read_bytes() == archive and not part.exists()
    assert read_manifest(root)["sha256"] == hashlib.sha256(archive).hexdigest()
    KahikateaDataset(root=str(root)).check()


def test_download_restarts_when_the_server_ignores_range(server, archive, tmp_path):
    server.ignore_range.add("/kahikatea.zip")
    dest = tmp_path / "a.zip"
    dest.with_suffix(".zip.part").write_bytes(b"garbage that must not be kept")
    digest = download(server.url("/kahikatea.zip"), dest, sha256=hashlib.sha256(archive).hexdigest(),
                      progress=False)
    assert server.requests[-1][1] == "bytes=29-"
    assert dest.read_bytes() == archive and digest == hashlib.sha256(archive).hexdigest()


def test_download_restarts_when_the_part_is_too_long(server, archive, tmp_path):
    dest = tmp_path / "a.zip"
    dest.with_suffix(".zip.part").write_bytes(archive + b"tail")
    assert download(server.url("/kahikatea.zip"), dest, sha256=None, progress=False) == \
        hashlib.sha256(archive).hexdigest()
    assert dest.read_bytes() == archive


def test_network_errors_are_user_errors_that_suggest_a_way_out(server, tmp_path):
    with pytest.raises(UserError, match="HTTP 404.*--url.*by hand to"):
        download(server.url("/missing.zip"), tmp_path / "a.zip", sha256=None, progress=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(UserError, match="could not download .*--url"):
        download(f"http://127.0.0.1:{closed_port}/a.zip", tmp_path / "a.zip", sha256=None, progress=False)
    assert not (tmp_path / "a.zip").exists()


# -- samples ----------------------------------------------------------------------------------------------


def all_samples(dataset):
    return {s: dataset.split(s) for s in ("train", "val", "test")}


def test_samples_have_the_right_ids_labels_shapes_and_masks(ready_root, layout):
    dataset = KahikateaDataset(root=str(ready_root), image_size=SIZE)
    samples = [sample for split in all_samples(dataset).values() for sample in split]
    tiles = layout[1]
    assert sorted(s.id for s in samples) == sorted(tiles)
    for sample in samples:
        label = tiles[sample.id][0]
        assert sample.label == label
        assert sample.image.dtype == np.uint8 and sample.image.shape == (SIZE, SIZE, 3)
        if label:
            assert sample.mask.dtype == bool and sample.mask.shape == (SIZE, SIZE)
        else:
            assert sample.mask is None
    assert dataset.split("train") is not dataset.split("train")  # a fresh list of the cached samples
    assert dataset.split("train")[0] is dataset.split("train")[0]
    with pytest.raises(ValueError, match="valid splits"):
        dataset.split("validation")


def test_images_are_resized_bilinearly_and_rgba_drops_alpha(ready_root, layout):
    dataset = KahikateaDataset(root=str(ready_root), image_size=SIZE)
    samples = {s.id: s for split in all_samples(dataset).values() for s in split}
    for name, (label, _, size, mode) in layout[1].items():
        folder = "ve_positive" if label else "ve_negative"
        original = Image.open(ready_root / "data" / folder / f"{name}.png")
        assert original.size == size and original.mode == mode
        rgb = Image.fromarray(np.asarray(original)[..., :3])  # the colour channels as stored
        expected = np.asarray(rgb.resize((SIZE, SIZE), Image.BILINEAR))
        np.testing.assert_array_equal(samples[name].image, expected)


def test_mask_foreground_is_every_pixel_not_pure_white_and_not_transparent(ready_root, layout):
    dataset = KahikateaDataset(root=str(ready_root), image_size=SIZE)
    samples = {s.id: s for split in all_samples(dataset).values() for s in split}
    checked = Counter()
    for name, (label, _, _, mode) in layout[1].items():
        if not label:
            continue
        mask = samples[name].mask
        if mode == "RGBA":  # opaque colour | transparent colour | opaque white
            assert mask[:, : SIZE // 3 - 1].all()
            assert not mask[:, SIZE // 3 + 1 :].any()
        else:  # colour | near-white (254, 255, 255) | pure white
            assert mask[:, : SIZE // 2 - 1].all()
            assert not mask[:, SIZE // 2 + 1 :].any()
        checked[mode] += 1
    assert checked["RGBA"] > 0 and checked["RGB"] > 0


# -- splits -----------------------------------------------------------------------------------------------


def test_splits_are_grouped_by_photo_stratified_and_cover_every_tile(ready_root, layout):
    tiles = layout[1]
    for seed in range(5):
        dataset = KahikateaDataset(root=str(ready_root), image_size=SIZE, split_seed=seed)
        assignment = dataset.assignment()
        assert sorted(assignment) == sorted(f"{name}.png" for name in tiles)
        photo_splits = defaultdict(set)
        counts = defaultdict(Counter)
        for file, split in assignment.items():
            label, photo, _, _ = tiles[file[: -len(".png")]]
            photo_splits[photo].add(split)
            counts[split][label] += 1
        assert all(len(splits) == 1 for splits in photo_splits.values())
        totals = Counter(label for label, *_ in tiles.values())
        for split, fraction in (("train", 0.65), ("val", 0.15), ("test", 0.2)):
            assert counts[split][0] > 0 and counts[split][1] > 0, (seed, split, counts)
            for label in (0, 1):  # within one photo's worth of tiles of the target
                assert abs(counts[split][label] - fraction * totals[label]) <= 4, (seed, split, counts)


def test_split_file_is_written_on_first_load_and_then_read(ready_root, layout, tmp_path):
    root = tmp_path / "k"
    shutil.copytree(ready_root, root, ignore=shutil.ignore_patterns("splits*.csv"))
    dataset = KahikateaDataset(root=str(root), image_size=SIZE)
    fingerprint = dataset.fingerprint()
    assert not (root / "splits.csv").exists()  # fingerprinting writes nothing
    ids = {s: [x.id for x in samples] for s, samples in all_samples(dataset).items()}
    with open(root / "splits.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "photo", "label", "split", "method"]
    assert len(rows) == len(layout[1]) and {r["method"] for r in rows} == {METHOD}
    row = rows[0]
    assert row["photo"] == layout[1][row["file"][:-4]][1]
    assert row["label"] == ["absent", "present"][layout[1][row["file"][:-4]][0]]
    assert KahikateaDataset(root=str(root), image_size=SIZE).fingerprint() == fingerprint

    # A pinned file wins over regeneration: move one whole photo to test.
    photo = next(r["photo"] for r in rows if r["split"] == "train")
    for r in rows:
        if r["photo"] == photo:
            r["split"] = "test"
    with open(root / "splits.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["file", "photo", "label", "split", "method"])
        writer.writeheader()
        writer.writerows(rows)
    pinned = KahikateaDataset(root=str(root), image_size=SIZE)
    moved = {r["file"][:-4] for r in rows if r["photo"] == photo}
    assert moved <= {s.id for s in pinned.split("test")} and not moved & {s.id for s in pinned.split("train")}
    assert pinned.fingerprint() != fingerprint
    assert set(ids["test"]) < {s.id for s in pinned.split("test")}

    other = KahikateaDataset(root=str(root), image_size=SIZE, split_seed=7)
    other.split("val")
    assert (root / "splits-val0.15-test0.2-seed7.csv").is_file()


def test_a_broken_split_file_is_a_user_error(ready_root, tmp_path):
    root = tmp_path / "k"
    shutil.copytree(ready_root, root, ignore=shutil.ignore_patterns("splits*.csv"))
    (root / "splits.csv").write_text("file,photo,label,split,method\n"
                                     f"Biospatial_x_y_01_01.png,x_y,absent,train,{METHOD}\n")
    with pytest.raises(UserError, match=r"splits.csv:2: 'Biospatial_x_y_01_01.png' is not a tile.*delete"):
        KahikateaDataset(root=str(root)).split("train")
    (root / "splits.csv").write_text("file,photo,split\n")
    with pytest.raises(UserError, match=r"columns must be file, photo, label, split, method.*delete"):
        KahikateaDataset(root=str(root)).split("train")


@pytest.mark.parametrize("made_by", ["no method column", "another method"])
def test_a_split_file_from_another_split_method_is_replaced_not_reused(ready_root, layout, tmp_path, made_by):
    root = tmp_path / "k"
    shutil.copytree(ready_root, root, ignore=shutil.ignore_patterns("splits*.csv"))
    current = KahikateaDataset(root=str(root)).assignment(write=False)
    names = sorted(current)
    stale = {name: "test" if name == names[0] else "train" for name in names}  # not what the method makes
    assert stale != current
    columns = ["file", "photo", "label", "split"] + ([] if made_by == "no method column" else ["method"])
    with open(root / "splits.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for name in names:
            label, photo = layout[1][name[: -len(".png")]][:2]
            writer.writerow([name, photo, ["absent", "present"][label], stale[name], "older-method"][: len(columns)])
    dataset = KahikateaDataset(root=str(root))
    assert dataset.assignment(write=False) == current  # fingerprint and describe see the split in use
    with pytest.warns(UserWarning, match="another split method"):
        assert dataset.assignment() == current
    with open(root / "splits.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["file"]: r["split"] for r in rows} == current and {r["method"] for r in rows} == {METHOD}


def test_fingerprint_tracks_content_parameters_and_the_archive(ready_root, layout, tmp_path):
    def fingerprint(root=ready_root, **params):
        return KahikateaDataset(root=str(root), **params).fingerprint()

    base = fingerprint(image_size=SIZE)
    assert fingerprint(image_size=SIZE) == base
    assert fingerprint(image_size=SIZE, download=True, url="http://elsewhere/k.zip") == base
    assert fingerprint(image_size=SIZE + 1) != base
    assert fingerprint(image_size=SIZE, split_seed=1) != base
    assert fingerprint(image_size=SIZE, test_fraction=0.25) != base

    # Without a manifest (extracted by hand) the file names and sizes stand in for the archive's hash.
    manual = tmp_path / "manual"
    write_layout(manual, layout[0])
    without_manifest = fingerprint(manual, image_size=SIZE)
    assert without_manifest != base
    (manual / "data" / "ve_negative" / "Biospatial_20160603U_0201_01_01.png").unlink()
    assert fingerprint(manual, image_size=SIZE) != without_manifest


def test_describe_shows_the_size_leak(ready_root):
    details = KahikateaDataset(root=str(ready_root)).describe()
    assert details["ready"] is True and details["archive_sha256"] == read_manifest(ready_root)["sha256"]
    assert details["tiles_per_class"] == {"present": 16, "absent": 28}
    assert details["original_sizes"] == {"368x246": {"present": 13, "absent": 16},
                                         "404x269": {"present": 3}, "552x369": {"absent": 12}}
    assert details["original_modes"] == {"RGB": {"present": 13, "absent": 28}, "RGBA": {"present": 3}}
    assert details["sizes_of_one_class_only"] == ["404x269", "552x369"]
    assert details["masks"] == 16 and details["positives_without_mask"] == 0
    assert sum(sum(c.values()) for c in details["split_counts"].values()) == 44


# -- bad files --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("problem", ["name", "mask size", "unreadable image", "unreadable mask"])
def test_bad_files_are_user_errors_naming_the_file(layout, tmp_path, problem):
    root = tmp_path / "k"
    files = dict(layout[0])
    positive = "Biospatial_20150311A_0101_01_01.png"
    if problem == "name":
        bad = "data/ve_negative/Biospatial_20150311A_01_01.png"
        files[bad] = files.pop("data/ve_negative/Biospatial_20150311A_0101_02_02.png")
    elif problem == "mask size":
        bad = f"expl/ve_positive/{positive}"
        files[bad] = png(np.full((246, 367, 3), 255, np.uint8))
    elif problem == "unreadable image":
        bad = f"data/ve_positive/{positive}"
        files[bad] = b"\x89PNG\r\n\x1a\n not really"
    else:
        bad = f"expl/ve_positive/{positive}"
        files[bad] = files[bad][:200]  # truncated
    write_layout(root, files)
    dataset = KahikateaDataset(root=str(root), image_size=SIZE, test_fraction=0.9, val_fraction=0.0)
    with pytest.raises(UserError, match=re.escape(str(root / bad))):
        for split in ("train", "test"):
            dataset.split(split)


def test_manifest_marking_an_unfinished_extraction_makes_the_data_invalid(ready_root, tmp_path):
    root = tmp_path / "k"
    shutil.copytree(ready_root, root)
    KahikateaDataset(root=str(root)).check()
    manifest = read_manifest(root)
    (root / MANIFEST_NAME).write_text(json.dumps({**manifest, "complete": False}))
    assert_not_ready(root)
    KahikateaDataset(root=str(root)).fetch()  # re-extracts the archive that is there, verified
    KahikateaDataset(root=str(root)).check()
    with pytest.raises(UserError, match="was extracted from an archive with sha256"):
        KahikateaDataset(root=str(root), sha256="1" * 64).check()


def test_kahikatea_keeps_the_dataset_contract(ready_root):
    from xaibench.kit.testing import check_component

    check_component("datasets", "kahikatea", root=str(ready_root), image_size=32)


def _bomb(size: int = 1 << 30) -> bytes:
    """A zip of about 1 MB holding one file of ``size`` zero bytes."""
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        info = zipfile.ZipInfo("data/ve_positive/zeros.png")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as entry:
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                entry.write(block)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bomb():
    return _bomb()


def test_a_zip_bomb_is_refused_through_the_cli_and_leaves_nothing(server, bomb, tmp_path, capsys):
    from xaibench.commands.cli import main

    assert len(bomb) < 2 << 20  # about 1 MB that expands to 1 GiB
    server.files["/bomb.zip"] = bomb
    root = tmp_path / "k"
    code = main(["data", "fetch", "kahikatea", "--root", str(root), "--url", server.url("/bomb.zip")])
    assert code == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the download's progress bar
    assert err.startswith("error: ") and "expands 1,0" in err and "more than the 200 allowed" in err
    assert "nothing was written" in err and not root.exists()


@pytest.mark.parametrize("limits, problem", [
    ({"max_entries": 2}, "3 entries, more than the 2 allowed"),
    ({"max_bytes": 5}, "it expands to 6 bytes, more than the 5 allowed"),
])
def test_archive_limits_on_entries_and_total_size(tmp_path, limits, problem):
    from xaibench.kit.download import ArchiveLimits

    zip_path = tmp_path / "a.zip"
    zip_path.write_bytes(make_zip({"a.txt": b"a", "b.txt": b"bb", "c.txt": b"ccc"}))
    with pytest.raises(UserError, match=problem):
        safe_extract_zip(zip_path, tmp_path / "out", limits=ArchiveLimits(**limits))
    assert not any((tmp_path / "out").iterdir())


def test_headers_that_understate_sizes_are_stopped_at_the_limit(tmp_path, monkeypatch):
    """The byte count of what is written, not the headers, bounds the extraction."""
    from xaibench.kit import download
    from xaibench.kit.download import ArchiveLimits

    zip_path = tmp_path / "a.zip"
    zip_path.write_bytes(make_zip({"a.txt": b"x" * 5000}))
    monkeypatch.setattr(download, "_check_limits", lambda *args: None)  # as if the headers had said 0 bytes
    with pytest.raises(UserError, match="expands to more than 1,000 bytes"):
        safe_extract_zip(zip_path, tmp_path / "out", limits=ArchiveLimits(max_bytes=1000))
    assert not any((tmp_path / "out").iterdir())


def test_the_default_limits_take_an_archive_like_the_real_one(tmp_path):
    """Incompressible tiles of about the real archive's shape extract under the default limits."""
    zip_path = tmp_path / "a.zip"
    rng = np.random.default_rng(0)
    zip_path.write_bytes(make_zip({f"data/ve_negative/{i}.jpg": rng.bytes(20_000) for i in range(50)}))
    assert safe_extract_zip(zip_path, tmp_path / "out") == 50
