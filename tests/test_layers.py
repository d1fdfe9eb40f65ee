"""The layers of xaibench show in its paths and import one way.

``xaibench/`` holds a few base modules (errors, text, version, machine) and four packages, lowest first:
``kit`` (what plugins are written against), ``pipeline`` (grid to scored cells), ``presentation`` (tables,
LaTeX, figures, report) and ``commands``. A module imports from its own layer or lower ones only; the kit
imports nothing above the base; presentation never reaches the pipeline's engine (planning, running stages,
scoring, building components); the import graph has no cycle; and every import of an own module, in
xaibench and in the built-in plugins, sits at the top of its file."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xaibench"
PLUGINS = ROOT / "plugins"

LAYERS = ("base", "kit", "pipeline", "presentation", "commands")
# The pipeline's engine: what plans, runs stages, scores cells or builds components. Presentation draws
# what it is given and reaches none of these.
ENGINE = {"xaibench.pipeline.plan", "xaibench.pipeline.stages", "xaibench.pipeline.engine",
          "xaibench.pipeline.scoring", "xaibench.pipeline.exhibits", "xaibench.kit.registry"}


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = (package, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool, known: set[str]) -> list[str]:
    """The own modules an ``import from`` names (``from xaibench.pipeline import a, b`` names two)."""
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        anchor = parts if is_package else parts[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    if not base.startswith(("xaibench", "xaibench_plugins")):
        return []
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]


def import_graph(root: Path = PACKAGE, package: str = "xaibench") -> tuple[dict[str, set[str]], list[str]]:
    """``(module → own modules it imports, [imports of own modules that are not at module level])``; own
    modules are xaibench's and the built-in plugins'."""
    files = {_module_name(p, root, package): p for p in root.rglob("*.py")}
    known = set(files) | {_module_name(p, r, n) for r, n in ((PACKAGE, "xaibench"), (PLUGINS, "xaibench_plugins"))
                          for p in r.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    nested = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(name, node, path.name == "__init__.py", known)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("xaibench")]
            targets = {t for t in targets if t in known and t != name}
            if targets and id(node) not in top:
                nested.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            graph[name] |= targets
    return graph, nested


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return "base"


def aliases() -> list[str]:
    """The top-level modules that are an older path of a kit module (``xaibench.contracts``)."""
    return sorted(p.stem for p in PACKAGE.glob("*.py") if "sys.modules[__name__]" in p.read_text())


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_packages_are_the_layers_and_few_modules_stay_at_the_top():
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert packages == sorted(LAYERS[1:])
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top) <= 15, top
    for package in packages:  # each package says what it holds
        assert ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))


def test_the_import_graph_of_xaibench_has_no_cycle():
    graph, _ = import_graph()
    assert len(graph) > 30 and graph["xaibench.commands.cli"]  # the graph was read
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_its_own_layer_or_lower_ones(layer):
    graph, _ = import_graph()
    rank = {name: i for i, name in enumerate(LAYERS)}
    shims = {f"xaibench.{a}" for a in aliases()} | {"xaibench"}
    wrong = sorted(f"{module} → {target}" for module, targets in graph.items()
                   if layer_of(module) == layer and module not in shims
                   for target in targets if rank[layer_of(target)] > rank[layer] or target in shims)
    assert wrong == []


@pytest.mark.parametrize("module", sorted(m for m in import_graph()[0] if layer_of(m) == "presentation"))
def test_presentation_never_reaches_the_engine(module):
    graph, _ = import_graph()
    assert sorted(reachable(graph, module) & ENGINE) == []


def test_every_import_of_an_own_module_is_at_the_top_of_its_file():
    _, nested = import_graph()
    _, in_plugins = import_graph(PLUGINS, "xaibench_plugins")
    assert nested + in_plugins == []


@pytest.mark.parametrize("name", aliases())
def test_an_older_path_is_the_same_module_as_the_kit_s(name):
    assert importlib.import_module(f"xaibench.{name}") is importlib.import_module(f"xaibench.kit.{name}")


def test_the_older_path_of_a_kit_submodule_is_no_second_copy():
    import xaibench.kit.testing._models as kit_path
    import xaibench.testing._models as older_path

    assert older_path is kit_path


def test_the_older_plugin_api_paths_still_import():
    from xaibench.contracts import ActivationLayout, Prompts, Sample  # noqa: F401
    from xaibench.download import download  # noqa: F401
    from xaibench.hookspecs import hookimpl  # noqa: F401
    from xaibench.testing import check_component, check_light_import, registered  # noqa: F401
    assert set(aliases()) >= {"contracts", "download", "hookspecs", "images", "registry", "splits", "testing"}


def test_the_checks_find_what_they_look_for():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("xaibench.errors") == "base" and layer_of("xaibench.kit.testing._core") == "kit"
    assert layer_of("xaibench.pipeline") == "pipeline"
    assert reachable({"a": {"b"}, "b": {"c"}}, "a") == {"b", "c"}


def test_every_package_is_installed():
    """``pip install .`` ships a package only if pyproject.toml lists it: a new subpackage left out would
    work from a checkout and be missing from every install."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert packages <= listed, sorted(packages - listed)
