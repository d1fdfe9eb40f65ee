"""The core's modules import one way: the graph of imports among xaibench's modules has no cycle, every
import of an own module sits at the top of its file, and presentation never reaches the engine."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xaibench"

# Presentation draws what it is given: it never plans, runs stages or builds components.
PRESENTATION = ("leaderboard", "latex", "figures", "report", "loop_tables")
ENGINE = ("plan", "stages", "engine", "registry", "scoring", "exhibits", "runner", "loop")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> list[str]:
    """The xaibench modules an ``import from`` names (``from . import a, b`` names two)."""
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        anchor = parts if is_package else parts[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    if not base.startswith("xaibench"):
        return []
    if node.module is None:  # from . import a, b: each is a module
        return [f"{base}.{alias.name}" for alias in node.names]
    return [base]


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """``(module → own modules it imports, [imports of own modules that are not at module level])``."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    nested = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(name, node, path.name == "__init__.py")
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("xaibench")]
            targets = [t if t in files else t.rsplit(".", 1)[0] for t in targets]
            targets = [t for t in targets if t in files and t != name]
            if targets and id(node) not in top:
                nested.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
            graph[name] |= set(targets)
    return graph, nested


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


def test_the_import_graph_of_xaibench_has_no_cycle():
    graph, _ = import_graph()
    assert len(graph) > 20 and graph["xaibench.cli"]  # the graph was read
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_every_import_of_an_own_module_is_at_the_top_of_its_file():
    _, nested = import_graph()
    assert nested == []


@pytest.mark.parametrize("module", PRESENTATION)
def test_presentation_never_imports_the_engine(module):
    graph, _ = import_graph()

    def reachable(name, seen):
        for nxt in graph[name]:
            if nxt not in seen:
                seen.add(nxt)
                reachable(nxt, seen)
        return seen

    reached = {m.removeprefix("xaibench.") for m in reachable(f"xaibench.{module}", set())}
    assert sorted(reached & set(ENGINE)) == []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
