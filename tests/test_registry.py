import json
import sys
import textwrap

import pytest

from xaibench import hookimpl
from xaibench.cli import main
from xaibench.errors import PluginError, UnknownComponentError
from xaibench.registry import KINDS, PluginLoadWarning, Registry

BUILTINS = {
    "datasets": {"synthetic", "kahikatea", "lcdb-waikato"},
    "masks": {"white", "black", "median", "blur"},
    "backbones": {"resnet18", "timm"},
    "ensembles": {"logit-mix"},
    "explainers": {"gradcam"},
    "seeders": {"top-k"},
    "segmenters": {"sam", "random-walker", "watershed"},
    "executors": {"local", "process"},
}


def test_builtins_arrive_through_the_entry_point_group(registry):
    for kind, names in BUILTINS.items():
        assert names <= set(registry.names(kind)), kind
    component = registry.get("masks", "white")
    assert component.distribution == "xaibench"
    assert component.plugin == "masks"


def test_plugins_command_prints_every_builtin_with_its_distribution(registry, capsys):
    assert main(["plugins"]) == 0
    rows = json.loads(capsys.readouterr().out)
    listed = {(r["kind"], r["name"]) for r in rows}
    assert {(k, n) for k, names in BUILTINS.items() for n in names} <= listed
    assert all(set(r) == {"kind", "name", "plugin", "distribution", "version"} for r in rows)
    assert {r["version"] for r in rows if r["distribution"] == "xaibench"} == {__import__("xaibench").__version__}


def test_plugins_command_filters_by_kind(registry, capsys):
    assert main(["plugins", "--kind", "masks"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == BUILTINS["masks"]
    assert main(["plugins", "--kind", "maskz"]) == 2


def test_duplicate_name_names_both_plugins(registry, add_plugin):
    class Clash:
        @hookimpl
        def register_masks(self, register):
            register("white", object)

    add_plugin(Clash(), name="clashing-plugin")
    with pytest.raises(PluginError) as err:
        registry.components
    assert "'masks'" in str(err.value) and "'clashing-plugin'" in str(err.value)


def test_unknown_name_lists_valid_names_and_the_closest(registry):
    with pytest.raises(UnknownComponentError) as err:
        registry.create("masks", "whte")
    message = str(err.value)
    assert "Did you mean 'white'?" in message
    assert "black, blur, median, white" in message


def test_hook_matching_no_spec_is_an_error(registry, add_plugin):
    class Misspelled:
        @hookimpl
        def register_mask(self, register):  # the spec is register_masks
            pass

    add_plugin(Misspelled(), name="misspelled")
    with pytest.raises(PluginError, match="misspelled"):
        registry.check()


def test_each_kind_has_one_hook_taking_register():
    from xaibench import hookspecs

    for kind in KINDS:
        spec = getattr(hookspecs, f"register_{kind}")
        assert spec.__code__.co_varnames[: spec.__code__.co_argcount] == ("register",)


def _fake_distribution(root, name, module_source, module_name):
    (root / f"{module_name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[xaibench]\n{module_name} = {module_name}\n")


def test_third_party_plugin_registers_through_entry_points(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "xaibench-grey", """
        from xaibench import hookimpl

        class Grey:
            def __call__(self, images, foreground):
                import torch
                return torch.where(foreground, images, torch.full_like(images, 0.5))

        @hookimpl
        def register_masks(register):
            register("grey", Grey)
        """, "xaibench_grey")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    component = reg.get("masks", "grey")
    assert (component.distribution, component.version, component.plugin) == ("xaibench-grey", "1.2.3", "xaibench_grey")
    sys.modules.pop("xaibench_grey", None)


def test_broken_third_party_plugin_warns_and_the_rest_still_works(tmp_path, monkeypatch, capsys):
    _fake_distribution(tmp_path, "xaibench-broken", "raise ImportError('needs a missing library')\n",
                       "xaibench_broken")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(PluginLoadWarning, match="xaibench_broken.*xaibench-broken.*needs a missing library"):
        reg = Registry()
    assert "white" in reg.names("masks")
    monkeypatch.setattr("xaibench.registry._default", reg)
    assert main(["plugins", "--kind", "masks"]) == 0


def test_validate_reports_unknown_and_mistyped_parameters(registry):
    from xaibench.errors import ComponentParamsError

    with pytest.raises(ComponentParamsError) as err:
        registry.validate("ensembles", "logit-mix", {"alpha": 1.5, "beta": 1})
    problems = dict(err.value.problems)
    assert "less than or equal to 1" in problems["alpha"]
    assert "unknown parameter (accepted: alpha)" in problems["beta"]
    assert registry.validate("masks", "blur", {"sigma": "2.5"}) == {"sigma": 2.5}
