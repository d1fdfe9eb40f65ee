"""Everything the repository ships runs: each grid in ``grids/`` and each example grid in the README and
``docs/`` dry-runs, and each command in the README's shell blocks is exercised (a dry run for ``run`` and
``loop``; for the rest its arguments must parse and its ``--help`` answer). The files are found by
reading the folder and the Markdown, so a grid or a command added later is tested without touching this
file."""

import re
import shlex
import socket
import sys
from pathlib import Path

import pytest
import yaml

from xaibench.commands.cli import _parser, main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GRIDS = sorted(p for p in (ROOT / "grids").iterdir() if p.suffix in (".yaml", ".yml"))

# What a dry run may report on a machine that does not hold a grid's data or checkpoints (this one):
# each problem a missing file the user supplies, named with how to get it, or one a real run downloads.
# Anything else fails.
NOT_ON_THIS_MACHINE = re.compile(
    r"^(dataset \S+: (the \S+ dataset is not at .* run `xaibench data fetch"
    r"|\S+ root .* does not exist; run: xaibench data prepare)"
    r"|dataset folder\(.*\): the folder dataset root .* does not exist; point root at a folder"
    r"|segmenter sam\S*: sam(-hq|2)?: checkpoint file .* does not exist\. Download "
    r"|not fetched by a dry run: .* a real run downloads )")

# Shell commands in the README that are not xaibench's, each with why a test does not run it.
SETUP = {
    ("python3", "-m", "venv"): "creates the virtual environment the tests already run in",
    (".venv/bin/pip", "install"): "installs this checkout (extras checked against pyproject.toml below)",
    (".venv/bin/python", "-m", "pytest"): "the test suite itself",
}


def code_blocks(path: Path, languages: tuple) -> list[tuple[int, str]]:
    """(line number, text) of each fenced block in ``path`` whose language is one of ``languages``."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    start = language = None
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^```\s*(\S*)\s*$", line)
        if not fence:
            continue
        if start is None:
            start, language = number, fence.group(1).lower()
        else:
            if language in languages:
                blocks.append((start, "\n".join(lines[start:number - 1])))
            start = None
    assert start is None, f"{path.name}:{start}: a code block is not closed"
    return blocks


def shell_commands(path: Path) -> list[tuple[str, list[str]]]:
    """Each simple command of the shell blocks of ``path`` as (where, argv): continuation lines joined,
    comments dropped, split at ``&&``, ``||`` and ``;``."""
    commands = []
    for start, text in code_blocks(path, ("bash", "sh", "shell", "console")):
        joined = re.sub(r"\\\n", " ", text)
        for offset, line in enumerate(joined.splitlines()):
            tokens = shlex.split(line, comments=True)
            command: list[str] = []
            for token in tokens + ["&&"]:
                if token in ("&&", "||", ";"):
                    if command:
                        commands.append((f"{path.name}:{start + 1 + offset}", command))
                    command = []
                else:
                    command.append(token)
    return commands


README_COMMANDS = shell_commands(ROOT / "README.md")
XAIBENCH = [(where, argv[1:]) for where, argv in README_COMMANDS if Path(argv[0]).name == "xaibench"]
EXAMPLE_GRIDS = [(f"{path.name}:{start}", text) for path in DOCS for start, text in code_blocks(path, ("yaml", "yml"))]


@pytest.fixture
def offline_machine(tmp_path, monkeypatch):
    """A machine like a new user's: nothing cached (torch hub, Hugging Face, datasets, home folder), no
    network (an attempt fails the test), and a working folder holding only links to the repository's
    ``grids/`` and ``leaderboards/``, so the README's relative paths resolve and nothing is written into
    the checkout."""
    for variable, folder in (("TORCH_HOME", "torch"), ("HF_HOME", "hf"), ("XAIBENCH_DATA", "data"), ("HOME", "home")):
        monkeypatch.setenv(variable, str(tmp_path / folder))
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("a dry run tried to reach the network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    work = tmp_path / "work"
    work.mkdir()
    for name in ("grids", "leaderboards"):
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.chdir(work)
    yield work
    assert attempts == [], "a dry run tried to reach the network"
    assert sorted(p.name for p in work.iterdir()) == ["grids", "leaderboards"], "a dry run wrote into its folder"
    assert not (tmp_path / "torch").exists() and not (tmp_path / "data").exists(), "a dry run downloaded"


def dry_run(command: str, grid: Path, out: Path, capsys) -> tuple[int, str, str]:
    code = main([command, "--grid", str(grid), "--out", str(out), "--dry-run"])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def assert_dry_run(code: int, out: str, err: str, what: str) -> None:
    """A dry run that planned (exit 0), or one that stopped only at files this machine does not hold."""
    if code == 0:
        assert out.startswith("grid "), f"{what}: {out}"
        return
    assert code == 2 and err.startswith("error: cannot start the run:\n"), f"{what}: exit {code}\n{err}"
    problems = [line.strip() for line in err.splitlines()[1:]]
    unexpected = [p for p in problems if not NOT_ON_THIS_MACHINE.match(p)]
    assert problems and not unexpected, f"{what}: " + "\n".join(unexpected)


def is_loop_grid(data) -> bool:
    return isinstance(data, dict) and "loop" in data


def test_the_shipped_files_are_found():
    names = {p.name for p in GRIDS}
    assert {"quickstart.yaml", "table1.yaml", "shortcut.yaml", "loop.yaml"} <= names
    assert len(EXAMPLE_GRIDS) >= 3 and len(XAIBENCH) >= 6
    assert any(argv[:1] == ["leaderboard"] for _, argv in XAIBENCH)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: p.name)
def test_every_shipped_grid_dry_runs(grid, registry, offline_machine, capsys):
    code, out, err = dry_run("run", grid, offline_machine.parent / "out", capsys)
    assert_dry_run(code, out, err, f"grids/{grid.name}")
    if is_loop_grid(yaml.safe_load(grid.read_text(encoding="utf-8"))):
        code, out, err = dry_run("loop", grid, offline_machine.parent / "out", capsys)
        assert_dry_run(code, out, err, f"grids/{grid.name} (loop)")


@pytest.mark.parametrize("where, text", EXAMPLE_GRIDS, ids=[w for w, _ in EXAMPLE_GRIDS])
def test_every_example_grid_in_the_docs_dry_runs(where, text, registry, offline_machine, capsys):
    """A whole grid (with ``datasets`` and ``backbones``) as written; a part of one (a ``loop`` section, a dataset with
    annotation noise) on top of ``grids/loop.yaml``, which has every section a loop needs."""
    example = yaml.safe_load(text)
    assert isinstance(example, dict), f"{where}: an example grid is a YAML mapping"
    grid = example if {"datasets", "backbones"} <= set(example) else {**yaml.safe_load((ROOT / "grids" / "loop.yaml").read_text()),
                                                   **example}
    path = offline_machine.parent / "example.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False, allow_unicode=True), encoding="utf-8")
    code, out, err = dry_run("run", path, offline_machine.parent / "out", capsys)
    assert_dry_run(code, out, err, where)
    if is_loop_grid(grid):
        code, out, err = dry_run("loop", path, offline_machine.parent / "out", capsys)
        assert_dry_run(code, out, err, f"{where} (loop)")


def test_every_readme_command_is_xaibench_or_a_known_setup_step():
    for where, argv in README_COMMANDS:
        if Path(argv[0]).name == "xaibench":
            assert argv[0] in ("xaibench", ".venv/bin/xaibench"), f"{where}: {argv[0]}"
            continue
        known = [prefix for prefix in SETUP if tuple(argv[:len(prefix)]) == prefix]
        assert known, f"{where}: {shlex.join(argv)} is neither xaibench nor a setup step this test knows"


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_the_readmes_pip_installs_name_extras_that_exist():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for where, argv in README_COMMANDS:
        if tuple(argv[:2]) == (".venv/bin/pip", "install"):
            for target in argv[2:]:
                if target.startswith("."):
                    wanted = re.fullmatch(r"\.(?:\[([\w,]+)\])?", target)
                    assert wanted, f"{where}: {target}"
                    assert set(filter(None, (wanted.group(1) or "").split(","))) <= set(extras), where


@pytest.mark.parametrize("where, argv", XAIBENCH, ids=[f"{w} {' '.join(a[:2])}" for w, a in XAIBENCH])
def test_every_readme_xaibench_command_runs_as_far_as_this_machine_allows(where, argv, registry, offline_machine,
                                                                         capsys):
    """``run`` and ``loop`` dry-run; every other command's arguments parse (options and choices exist)
    and its ``--help`` answers; ``data prepare NAME`` lists each option the README gives it."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: xaibench {shlex.join(argv)} does not parse: {capsys.readouterr().err}")
    if args.command in ("run", "loop"):
        assert main([*argv, *([] if "--dry-run" in argv else ["--dry-run"])]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.startswith("grid ")
        return
    if args.command == "data" and args.data_command == "prepare":
        assert main(["data", "prepare", args.name, "--help"]) == 0
        help_text = capsys.readouterr().out
        for option in (token for token in args.options if token.startswith("--")):
            assert f"  {option}:" in help_text, f"{where}: {args.name} takes no {option}"
        return
    subcommand = [a for a in argv if not a.startswith("-")][: 2 if args.command == "data" else 1]
    with pytest.raises(SystemExit) as done:
        main([*subcommand, "--help"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("usage: xaibench ")
