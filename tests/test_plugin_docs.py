"""docs/plugins.md documents every hook and its examples keep the contract; xaibench.kit.testing checks every kind.

Each ``## register_<kind>`` section's complete examples (the Python blocks importing ``hookimpl``) are run as
a plugin and every component they register goes through ``xaibench.kit.testing.check_component``."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

from xaibench.kit import hookspecs, testing
from xaibench.kit.registry import KINDS, Registry

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def hook_names() -> list[str]:
    """Every hook spec ``xaibench.kit.hookspecs`` defines (found by pluggy's marker, not by naming)."""
    return sorted(name for name, obj in vars(hookspecs).items() if hasattr(obj, "xaibench_spec"))


def sections(text: str) -> dict[str, str]:
    """Markdown ``## heading`` → the text up to the next ``## `` heading."""
    parts = re.split(r"^## +(.+?)\s*$", text, flags=re.MULTILINE)
    return {heading: body for heading, body in zip(parts[1::2], parts[2::2])}


def undocumented(hooks: list[str], text: str) -> list[str]:
    """The hooks without a ``## <hook>`` section showing the hook's signature."""
    found = sections(text)
    return [hook for hook in hooks if f"def {hook}(register)" not in found.get(hook, "")]


def test_the_hook_specs_are_found():
    assert hook_names() == [f"register_{kind}" for kind in sorted(KINDS)]


def test_every_hook_spec_has_its_section_in_the_plugin_guide():
    assert undocumented(hook_names(), DOCS.read_text()) == []


def test_a_hook_without_a_section_is_reported():
    text = DOCS.read_text().replace("## register_seeders", "## Seeders")
    assert undocumented(hook_names(), text) == ["register_seeders"]
    assert undocumented(hook_names() + ["register_widgets"], DOCS.read_text()) == ["register_widgets"]


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_conformance_check(hook):
    kind = hook.removeprefix("register_")
    check = getattr(testing, f"check_{kind[:-1]}", None)
    assert callable(check), f"xaibench.kit.testing has no check_{kind[:-1]} for {hook}"
    assert testing.CHECKS[kind] is check
    assert f"check_{kind[:-1]}(" in sections(DOCS.read_text())[hook], f"the {hook} section does not show its check"


def example_blocks(body: str) -> list[str]:
    return [block for block in re.findall(r"```python\n(.*?)```", body, flags=re.DOTALL)
            if "from xaibench import hookimpl" in block]


@pytest.mark.parametrize("hook", hook_names())
def test_the_guides_examples_register_components_that_keep_the_contract(hook):
    kind = hook.removeprefix("register_")
    blocks = example_blocks(sections(DOCS.read_text())[hook])
    assert blocks, f"the {hook} section has no complete example"
    registry = Registry(load_entry_points=False)
    for index, block in enumerate(blocks):
        module = types.ModuleType(f"plugins_md_{kind}_{index}")
        exec(compile(block, f"docs/plugins.md ({hook} example {index + 1})", "exec"), module.__dict__)
        registry.add_plugin(module, name=module.__name__, distribution="docs-example")
    names = testing.registered(kind, registry=registry)
    assert names, f"the {hook} example registers no {kind[:-1]}"
    for name in names:
        testing.check_component(kind, name, registry=registry)


def _reference_rows(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """kind → (required names, optional names) from the Reference section's first table."""
    body = sections(text)["Reference"]
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in KINDS:
            names = [re.findall(r"`([^`]+)`", c) for c in cells[1:]]
            rows.setdefault(cells[0], (names[0], [n for n in names[1] if not n.startswith(("(", "False", "True"))
                                                  and n not in ("build",)]))
    return rows


def test_the_reference_table_is_the_contract_of_contracts_py():
    from xaibench.kit import contracts

    rows = _reference_rows(DOCS.read_text())
    assert set(rows) == set(KINDS)
    for kind, (required, optional) in rows.items():
        assert required == contracts.required(kind), kind
        assert set(optional) == set(contracts.OPTIONAL[kind]), kind


def test_a_drifted_reference_table_is_caught():
    from xaibench.kit import contracts

    row = "| `prompt_kinds` (`('points',)`), `uses_saliency` (`False`), `segment_with_scores`, `path_params` (`()`), `check` |"
    assert row in DOCS.read_text()
    text = DOCS.read_text().replace(row, "| `check` |")
    _, optional = _reference_rows(text)["segmenters"]
    assert set(optional) != set(contracts.OPTIONAL["segmenters"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_optional_capability_is_described_in_its_kinds_section(kind):
    from xaibench.kit import contracts

    body = sections(DOCS.read_text())[f"register_{kind}"]
    missing = [name for name in contracts.OPTIONAL[kind] if f"`{name}" not in body and name != "check"]
    assert missing == [], f"the register_{kind} section does not describe {missing}"


def test_the_guide_names_every_builtin_entry_point():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="xaibench") if ep.dist is not None
             and ep.dist.metadata["Name"] == "xaibench"}
    rule = next(line for line in DOCS.read_text().split("\n- ") if "xaibench's own are" in line)
    assert names and names == set(re.findall(r"`([a-z_]+)`", rule.split("xaibench's own are", 1)[1]))
