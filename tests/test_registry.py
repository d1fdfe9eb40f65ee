import json
import sys
import textwrap

import pytest

from xaibench import hookimpl
from xaibench.commands.cli import main
from xaibench.errors import PluginError, UnknownComponentError
from xaibench.kit.registry import KINDS, PluginLoadWarning, Registry

BUILTINS = {
    "datasets": {"synthetic", "kahikatea", "lcdb-waikato", "folder"},
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
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    listed = {(r["kind"], r["name"]) for r in rows}
    assert {(k, n) for k, names in BUILTINS.items() for n in names} <= listed
    assert all(set(r) == {"kind", "name", "plugin", "distribution", "version", "parameters"} for r in rows)
    assert {r["version"] for r in rows if r["distribution"] == "xaibench"} == {__import__("xaibench").__version__}
    blur = next(r for r in rows if (r["kind"], r["name"]) == ("masks", "blur"))
    assert blur["parameters"] == [{"name": "sigma", "type": "float > 0", "required": False, "default": 4.0}]


def test_plugins_command_prints_a_table_and_one_component(registry, capsys):
    assert main(["plugins"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["kind", "name", "parameters", "from"]
    version = __import__("xaibench").__version__
    assert any(line.split()[:4] == ["masks", "blur", "sigma:", "float"] and line.endswith(f"xaibench {version}")
               for line in table)
    # one line per parameter, the first beside the name
    synthetic = next(i for i, line in enumerate(table) if line.startswith("datasets    synthetic"))
    assert 'task: "binary" | "multiclass" = "binary"' in table[synthetic]
    assert table[synthetic + 1].strip() == "n_train: int ≥ 1 = 240"
    assert main(["plugins", "masks", "blur"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"masks blur — plugin masks, xaibench {version}")
    assert "Gaussian blur" in text and "  sigma: float > 0 = 4.0" in text
    assert main(["plugins", "masks", "blurr"]) == 2
    assert "Did you mean 'blur'?" in capsys.readouterr().err
    assert main(["plugins", "masks"]) == 2


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"xaibench {__import__('xaibench').__version__}"


def test_plugins_command_filters_by_kind(registry, capsys):
    assert main(["plugins", "--kind", "masks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["kind"] for r in rows} == {"masks"}
    assert {r["name"] for r in rows if r["distribution"] == "xaibench"} == BUILTINS["masks"]
    assert main(["plugins", "--kind", "maskz"]) == 2


def test_output_piped_into_a_reader_that_stops_early_is_not_an_error():
    import subprocess

    code = "import sys; from xaibench.commands.cli import main; sys.exit(main(['plugins']))"
    reader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()  # like `| head -c 0`: gone before the command writes
    err = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err


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
    assert f"Valid masks: {', '.join(registry.names('masks'))}" in message
    assert "black, blur" in message and "median" in message


def test_hook_matching_no_spec_is_an_error(registry, add_plugin):
    class Misspelled:
        @hookimpl
        def register_mask(self, register):  # the spec is register_masks
            pass

    add_plugin(Misspelled(), name="misspelled")
    with pytest.raises(PluginError, match="misspelled"):
        registry.check()


def test_each_kind_has_one_hook_taking_register():
    from xaibench.kit import hookspecs

    for kind in KINDS:
        spec = getattr(hookspecs, f"register_{kind}")
        assert spec.__code__.co_varnames[: spec.__code__.co_argcount] == ("register",)


def _fake_distribution(root, name, module_source, module_name):
    (root / f"{module_name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[xaibench]\n{module_name} = {module_name}\n")


GREY = """
    from xaibench import hookimpl

    class Grey:
        def __call__(self, images, foreground):
            import torch
            return torch.where(foreground, images, torch.full_like(images, 0.5))

    @hookimpl
    def register_masks(register):
        register("grey", Grey)
    """


def test_third_party_plugin_registers_through_entry_points(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "xaibench-grey", GREY, "xaibench_grey")
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
    monkeypatch.setattr("xaibench.kit.registry._default", reg)
    assert main(["plugins", "--kind", "masks"]) == 0


def test_validate_reports_unknown_and_mistyped_parameters(registry):
    from xaibench.errors import ComponentParamsError

    with pytest.raises(ComponentParamsError) as err:
        registry.validate("ensembles", "logit-mix", {"alpha": 1.5, "beta": 1})
    problems = dict(err.value.problems)
    assert "less than or equal to 1" in problems["alpha"]
    assert "unknown parameter (accepted: alpha)" in problems["beta"]
    assert registry.validate("masks", "blur", {"sigma": "2.5"}) == {"sigma": 2.5}


# -- choosing which plugins load -------------------------------------------------------------------------

DOTS = """
    from xaibench import hookimpl

    class Dots:
        def __call__(self, images, foreground):
            import torch
            return torch.where(foreground, images, torch.zeros_like(images))

    @hookimpl
    def register_masks(register):
        register("dots", Dots)
    """


@pytest.fixture
def fake_distributions(tmp_path, monkeypatch):
    """Write fake installed distributions onto sys.path; their modules are forgotten afterwards."""
    import importlib

    monkeypatch.delenv("XAIBENCH_LOAD_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = []

    def make(name, source, module_name):
        _fake_distribution(tmp_path, name, source, module_name)
        importlib.invalidate_caches()
        modules.append(module_name)

    yield make
    for module in modules:
        sys.modules.pop(module, None)


def third_party_masks(reg):
    return {c.name for c in reg.components["masks"].values() if c.distribution in ("xaibench-grey", "xaibench-dots")}


@pytest.mark.parametrize("setting, loaded", [
    (None, {"grey", "dots"}),  # unset: everything installed
    ("", set()),  # empty: built-ins only
    ("xaibench-grey", {"grey"}),  # a distribution name
    ("dots_masks", {"dots"}),  # an entry-point name
    (" XAIBench_Grey , xaibench.dots ", {"grey", "dots"}),  # compared as pip compares names
])
def test_xaibench_load_plugins_chooses_the_third_party_plugins(fake_distributions, monkeypatch, setting, loaded):
    fake_distributions("xaibench-grey", GREY, "xaibench_grey")
    fake_distributions("xaibench-dots", DOTS, "dots_masks")
    if setting is not None:
        monkeypatch.setenv("XAIBENCH_LOAD_PLUGINS", setting)
    reg = Registry()
    assert third_party_masks(reg) == loaded
    for kind, names in BUILTINS.items():
        assert names <= set(reg.names(kind)), kind
    if setting == "":
        assert {r["distribution"] for r in reg.describe()} == {"xaibench"}


def test_xaibench_load_plugins_warns_about_a_name_no_plugin_has(fake_distributions, monkeypatch):
    fake_distributions("xaibench-grey", GREY, "xaibench_grey")
    monkeypatch.setenv("XAIBENCH_LOAD_PLUGINS", "xaibench-gray")
    expected = r"'xaibench-gray'.*installed third-party plugins: .*xaibench-grey \(entry point xaibench_grey\)"
    with pytest.warns(PluginLoadWarning, match=expected):
        reg = Registry()
    assert third_party_masks(reg) == set()


def test_plugins_command_lists_only_builtins_when_told_to(fake_distributions, monkeypatch, capsys):
    fake_distributions("xaibench-grey", GREY, "xaibench_grey")
    monkeypatch.setenv("XAIBENCH_LOAD_PLUGINS", "")
    monkeypatch.setattr("xaibench.kit.registry._default", None)
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["distribution"] for r in rows} == {"xaibench"}
    assert {(k, n) for k, names in BUILTINS.items() for n in names} <= {(r["kind"], r["name"]) for r in rows}


# -- bad plugins: errors name the plugin, its distribution and the fix -------------------------------------


class ReturnsInsteadOfRegistering:
    @hookimpl
    def register_masks(self, register):
        return {"grey": object}


class NumberName:
    @hookimpl
    def register_seeders(self, register):
        register(7, object)


class InstanceFactory:
    class Segmenter:
        def segment(self, image, prompts):
            return []

    @hookimpl
    def register_segmenters(self, register):
        register("instance", self.Segmenter())


class RaisingHook:
    @hookimpl
    def register_masks(self, register):
        raise RuntimeError("needs a config file")


class WrongArgument:
    @hookimpl
    def register_masks(self, reg):
        pass


@pytest.mark.parametrize("plugin, problem, fix", [
    (ReturnsInsteadOfRegistering, "hook register_masks returned {'grey'", "call register(name, factory)"),
    (NumberName, "registered a seeder with the name 7", "non-empty string"),
    (InstanceFactory, "factory that is not callable", "pass the class"),
    (RaisingHook, "failed in its hook register_masks: RuntimeError: needs a config file", "XAIBENCH_LOAD_PLUGINS"),
    (WrongArgument, "invalid hook implementation", "named 'register'"),
])
def test_a_bad_plugin_is_an_error_naming_it_its_distribution_and_the_fix(plugin, problem, fix):
    reg = Registry(load_entry_points=False)
    with pytest.raises(PluginError) as err:
        reg.add_plugin(plugin(), name="bad-plugin", distribution="xaibench-bad", version="1.0")
        reg.components
    message = str(err.value)
    assert "plugin 'bad-plugin' (distribution 'xaibench-bad')" in message
    assert problem in message and fix in message


def test_a_name_clash_with_a_builtin_names_both_distributions_and_what_to_rename(fake_distributions, capsys):
    fake_distributions("xaibench-clash", GREY.replace('"grey"', '"white"'), "xaibench_clash")
    reg = Registry()
    with pytest.raises(PluginError) as err:
        reg.components
    message = str(err.value)
    assert "mask 'white' is registered twice" in message
    assert "(distribution 'xaibench')" in message and "(distribution 'xaibench-clash')" in message
    assert "rename it in distribution 'xaibench-clash'" in message


def test_a_clash_stops_the_plugins_command_with_one_error_line(fake_distributions, monkeypatch, capsys):
    fake_distributions("xaibench-clash", GREY.replace('"grey"', '"white"'), "xaibench_clash")
    monkeypatch.setattr("xaibench.kit.registry._default", None)
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mask 'white' is registered twice") and err.count("\n") == 1


def test_an_entry_point_name_clash_with_a_builtin_names_both_distributions(fake_distributions):
    fake_distributions("xaibench-masks", GREY, "masks")
    with pytest.raises(PluginError) as err:
        Registry()
    message = str(err.value)
    assert "entry-point name 'masks'" in message and "'xaibench'" in message and "'xaibench-masks'" in message
    assert "pyproject.toml of distribution 'xaibench-masks'" in message


# -- listing plugins stays light -----------------------------------------------------------------------

HEAVY_MODULES = ["torch", "segment_anything", "pytorch_grad_cam", "cv2", "rasterio", "geopandas", "timm",
                 "torchvision", "ray"]


def test_listing_plugins_imports_no_heavy_library():
    import os
    import subprocess

    code = textwrap.dedent("""
        import contextlib, io, json, sys
        import xaibench.commands.cli
        from xaibench.kit.registry import Registry

        Registry().describe()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            assert xaibench.commands.cli.main(["plugins"]) == 0
            xaibench.commands.cli.main(["--help"])
        print(json.dumps(sorted(sys.modules)))
        """)
    env = {k: v for k, v in os.environ.items() if k != "XAIBENCH_LOAD_PLUGINS"}  # every installed plugin
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    loaded = {name.split(".")[0] for name in json.loads(done.stdout.splitlines()[-1])}
    assert "xaibench_plugins" in loaded  # the plugins were imported...
    assert sorted(loaded & set(HEAVY_MODULES)) == []  # ...without their heavy libraries
