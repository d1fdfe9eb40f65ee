"""A wrong ``--output`` (a folder where a file goes, a file where a folder goes, a missing folder, a path
under a file) is one ``error:`` line and exit 2, found before any work, with nothing written, for
``export``, ``leaderboard`` and ``data audit``."""

import pytest
from test_export_names import tiny_run

from xaibench.commands import audit
from xaibench.commands.cli import main


@pytest.fixture(scope="session")
def run_folder(tmp_path_factory):
    return tiny_run(tmp_path_factory.getbasetemp())[0]


def one_error_line(capsys, *words) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


def tree(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_export_to_a_folder_where_a_file_goes_and_a_file_where_a_folder_goes(run_folder, tmp_path, capsys):
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    code = main(["export", str(run_folder), "--what", "segmentations", "--format", "gpkg", "--output", str(folder)])
    assert code == 2
    one_error_line(capsys, str(folder), "is a folder")
    existing = tmp_path / "maps.tif"
    existing.write_text("mine")
    code = main(["export", str(run_folder), "--what", "saliency", "--format", "geotiff", "--output", str(existing)])
    assert code == 2
    one_error_line(capsys, str(existing), "is a file")
    under_a_file = existing / "saliency"
    code = main(["export", str(run_folder), "--what", "saliency", "--format", "geotiff", "--output",
                 str(under_a_file)])
    assert code == 2
    one_error_line(capsys, "is a file, not a folder")
    assert existing.read_text() == "mine" and tree(folder) == ["keep.txt"]
    assert tree(tmp_path) == ["exports", "exports/keep.txt", "maps.tif"]  # nothing written anywhere


def test_leaderboard_into_a_missing_folder_or_onto_a_folder(run_folder, tmp_path, capsys):
    missing = tmp_path / "missing" / "board.md"
    assert main(["leaderboard", str(run_folder), "--output", str(missing)]) == 2
    one_error_line(capsys, str(tmp_path / "missing"), "does not exist")
    assert main(["leaderboard", str(run_folder), "--output", str(tmp_path)]) == 2
    one_error_line(capsys, "is a folder")
    assert tree(tmp_path) == []
    # the same command with a good path writes the table
    board = tmp_path / "board.md"
    assert main(["leaderboard", str(run_folder), "--output", str(board)]) == 0
    assert board.read_text().startswith("# xaibench leaderboard") and f"written: {board}" in capsys.readouterr().out


def test_audit_into_a_missing_folder_is_refused_before_the_audit_runs(tmp_path, capsys, monkeypatch):
    audited = []
    real = audit.audit
    monkeypatch.setattr(audit, "audit", lambda *a, **k: audited.append(a) or real(*a, **k))
    small = ["--param", "n_train=12", "--param", "n_val=4", "--param", "n_test=8", "--param", "image_size=32"]
    for output, words in ((tmp_path / "missing" / "a.json", ("missing", "does not exist")),
                          (tmp_path, ("is a folder",))):
        assert main(["data", "audit", "synthetic", *small, "--output", str(output)]) == 2
        one_error_line(capsys, str(output), *words)
    assert audited == [] and tree(tmp_path) == []  # refused before minutes of work, nothing written
    assert main(["data", "audit", "synthetic", *small, "--output", str(tmp_path / "a.json")]) == 0
    assert len(audited) == 1 and (tmp_path / "a.json").is_file()
