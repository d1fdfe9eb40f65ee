"""docs/plugins.md documents every hook and its examples keep the contract; xaibench.testing checks every kind.

Each ``## register_<kind>`` section's complete examples (the Python blocks importing ``hookimpl``) are run as
a plugin and every component they register goes through ``xaibench.testing.check_component``."""

from __future__ import annotations

import re
import types
from pathlib import Path

import pytest

from xaibench import hookspecs, testing
from xaibench.registry import KINDS, Registry

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def hook_names() -> list[str]:
    """Every hook spec ``xaibench.hookspecs`` defines (found by pluggy's marker, not by naming)."""
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
    assert callable(check), f"xaibench.testing has no check_{kind[:-1]} for {hook}"
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
