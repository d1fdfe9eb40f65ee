"""The component registry: loads plugins through pluggy and builds components by kind and name.

Every component, built-in or third-party, arrives through the ``xaibench`` entry-point group. The registry
answers three questions: which components exist (``components``), whether a name and its parameters are
valid (``validate``), and how to build one (``create``).

``XAIBENCH_LOAD_PLUGINS`` limits which third-party plugins load: unset, all of them; empty, none (only the
built-ins, the entry points of the ``xaibench`` distribution itself); otherwise a comma-separated list of
distribution names or entry-point names to load besides the built-ins.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import importlib.metadata
import inspect
import os
import re
import types
import typing
import warnings
from typing import Any, Callable

import pluggy
import pydantic

from xaibench.errors import ComponentParamsError, PluginError, UnknownComponentError
from xaibench.kit import hookspecs

KINDS = (
    "datasets",
    "masks",
    "backbones",
    "ensembles",
    "explainers",
    "seeders",
    "segmenters",
    "acceptors",
    "executors",
)

ENTRY_POINT_GROUP = "xaibench"
BUILTIN_DISTRIBUTION = "xaibench"
LOAD_PLUGINS_ENV = "XAIBENCH_LOAD_PLUGINS"


class PluginLoadWarning(UserWarning):
    """A third-party plugin could not be loaded; everything else still works."""


@dataclasses.dataclass(frozen=True)
class Component:
    """One registered component: its kind, name, factory and who provided it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str
    version: str

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
        }

    def parameters(self) -> list[dict]:
        """The factory's keyword parameters: name, type (with its bounds), default (None and
        ``required: True`` where it has none)."""
        try:
            model = signature_model(self.factory, self.name)
        except (TypeError, ValueError):
            return []
        out = []
        for name, field in model.model_fields.items():
            required = field.is_required()
            out.append({"name": name, "type": type_text(field.annotation, field.metadata), "required": required,
                        "default": None if required else field.get_default(call_default_factory=True)})
        return out


def type_text(annotation, metadata=()) -> str:
    """A short readable form of a parameter's type: ``int ≥ 1``, ``float in [0, 1]``, ``"a" | "b"``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *extra = typing.get_args(annotation)
        return type_text(base, [*metadata, *extra])
    if origin is typing.Literal:
        text = " | ".join(repr(a).replace("'", '"') for a in typing.get_args(annotation))
    elif origin is typing.Union or type(annotation).__name__ == "UnionType":
        text = " | ".join(type_text(a) for a in typing.get_args(annotation))
    elif origin is not None:
        args = [type_text(a) for a in typing.get_args(annotation) if a is not Ellipsis]
        name = getattr(origin, "__name__", str(origin))
        text = f"{name} of {len(args)} {args[0]}" if name == "tuple" and len(args) > 1 and len(set(args)) == 1 \
            else f"{name}[{', '.join(args)}]"
    elif annotation is type(None):
        text = "None"
    elif annotation is Any:
        text = "any"
    else:
        text = getattr(annotation, "__name__", str(annotation).replace("typing.", ""))
    bounds = []
    for item in _flat_metadata(metadata):
        for attribute, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(item, attribute, None)
            if value is not None:
                bounds.append(f"{symbol} {value}")
        if getattr(item, "pattern", None):
            bounds.append(f"matching {item.pattern}")
    return text + (" " + ", ".join(bounds) if bounds else "")


def _flat_metadata(metadata) -> list:
    """Constraint objects, with those inside pydantic ``FieldInfo`` entries taken out."""
    out = []
    for item in metadata:
        out += _flat_metadata(item.metadata) if isinstance(getattr(item, "metadata", None), list) else [item]
    return out


def signature_model(fn: Callable, title: str) -> type[pydantic.BaseModel]:
    """A pydantic model of ``fn``'s keyword parameters: annotations validate, defaults fill in.

    ``fn`` is a class (its ``__init__``) or a function; raises ``TypeError`` if it has no signature."""
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn, include_extras=True)
    except Exception:
        hints = {}
    fields: dict[str, Any] = {}
    extra = "forbid"
    for name, param in signature.parameters.items():
        if param.kind is param.VAR_KEYWORD:
            extra = "allow"
            continue
        if param.kind is param.VAR_POSITIONAL:
            continue
        default = ... if param.default is param.empty else param.default
        fields[name] = (hints.get(name, Any), default)
    config = pydantic.ConfigDict(extra=extra, arbitrary_types_allowed=True, protected_namespaces=(),
                                 allow_inf_nan=False)
    return pydantic.create_model(title, __config__=config, **fields)


def _takes_bool(annotation) -> bool:
    """Whether a parameter annotated ``annotation`` accepts True/False as such (not as the number 1/0)."""
    if annotation in (bool, typing.Any, object) or isinstance(annotation, typing.TypeVar):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _takes_bool(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_takes_bool(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return any(isinstance(a, bool) for a in typing.get_args(annotation))
    return annotation not in (int, float, complex) and origin is None


def _booleans_for_numbers(annotation, value, where: str) -> list[tuple[str, str]]:
    """Problems ``(where, message)`` for every True/False given where ``annotation`` wants a number,
    inside lists and tuples too: pydantic would read them as 1 and 0."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _booleans_for_numbers(typing.get_args(annotation)[0], value, where)
    if isinstance(value, bool):
        return [] if _takes_bool(annotation) else [(where, f"{str(value).lower()} is a boolean; a number is expected")]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _booleans_for_numbers(args[0], value, where) if len(args) == 1 else []
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence) and isinstance(value, (list, tuple)):
        args = typing.get_args(annotation)
        out = []
        for i, item in enumerate(value):
            inner = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else (
                args[i] if i < len(args) else typing.Any)
            out += _booleans_for_numbers(inner, item, f"{where}[{i}]")
        return out
    return []


def validate_keywords(model: type[pydantic.BaseModel], params: dict | None) -> dict:
    """``params`` checked and coerced by ``model``; only the keys given (defaults stay the callee's).

    Raises ``ComponentParamsError`` listing each bad parameter (True/False where a number is expected
    included: pydantic alone would take them as 1 and 0)."""
    booleans = [problem for name, value in (params or {}).items() if name in model.model_fields
                for problem in _booleans_for_numbers(model.model_fields[name].annotation, value, name)]
    if booleans:
        raise ComponentParamsError(booleans)
    try:
        validated = model.model_validate(params or {})
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(parameters)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = f"unknown parameter (accepted: {', '.join(model.model_fields) or 'none'})"
            elif err["type"] == "missing":
                msg = "required parameter is missing"
            problems.append((where, msg))
        raise ComponentParamsError(problems) from None
    given = set((params or {}).keys())
    out = {k: getattr(validated, k) for k in model.model_fields if k in given}
    if validated.model_extra:
        out.update(validated.model_extra)
    return out


def check_factory(factory, where: str, name: str = "my-component") -> None:
    """A factory is a class or a function whose parameters are all keyword-only; raises ``PluginError``
    saying ``where`` it was registered and what to change."""
    if not callable(factory):
        raise PluginError(f"{where} was registered with a factory that is not callable ({factory!r}); pass the "
                          f"class (or a function building the component), not an instance: register({name!r}, MyClass)")
    if not (inspect.isclass(factory) or inspect.isfunction(factory) or inspect.ismethod(factory)
            or isinstance(factory, functools.partial)):
        raise PluginError(f"{where} was registered with an instance of {type(factory).__name__}, not a class or "
                          f"function; the registry builds components from their parameters, so pass the class: "
                          f"register({name!r}, {type(factory).__name__})")
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError) as exc:
        raise PluginError(f"{where}: its factory has no inspectable signature ({exc}); register a class or "
                          f"function with keyword-only parameters") from None
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    if positional:
        qualname = getattr(factory, "__qualname__", repr(factory))
        raise PluginError(f"{where}: factory {qualname} takes {', '.join(positional)} by position; grid parameters "
                          f"are passed by name, so make every parameter keyword-only: def __init__(self, *, "
                          f"{positional[0]}=...)")


def canonical_name(name: str) -> str:
    """A distribution or entry-point name compared the way pip does: case-insensitive, ``-_.`` alike."""
    return re.sub(r"[-_.]+", "-", name).lower()


def plugin_selection() -> set[str] | None:
    """The third-party plugins ``XAIBENCH_LOAD_PLUGINS`` selects, as canonical names; None means all."""
    value = os.environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {canonical_name(part.strip()) for part in value.split(",") if part.strip()}


def closest(name: str, choices) -> str | None:
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.4)
    return matches[0] if matches else None


class Registry:
    """Components of every kind, collected from a pluggy plugin manager."""

    def __init__(self, *, load_entry_points: bool = True):
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self._dists: dict[str, tuple[str, str]] = {}
        self._components: dict[str, dict[str, Component]] | None = None
        self._param_models: dict[tuple[str, str], type[pydantic.BaseModel]] = {}
        if load_entry_points:
            self._load_entry_points()

    # -- plugins -------------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        selection = plugin_selection()
        known: set[str] = set()
        third_party: set[str] = set()  # for the message only
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "unknown"
            dist_version = dist.version if dist is not None else "unknown"
            names = {canonical_name(dist_name), canonical_name(ep.name)}
            known |= names
            if canonical_name(dist_name) != BUILTIN_DISTRIBUTION:
                third_party.add(f"{dist_name} (entry point {ep.name})")
                if selection is not None and not names & selection:
                    continue
            if self.pm.get_plugin(ep.name) is not None:
                first = self._dists.get(ep.name, ("unknown", ""))[0]
                others = [d for d in (first, dist_name) if canonical_name(d) != BUILTIN_DISTRIBUTION]
                where = (f"distribution {others[0]!r}" if len(others) == 1
                         else "one of the two distributions")
                raise PluginError(
                    f"two plugins use the entry-point name {ep.name!r}: distribution {first!r} and distribution "
                    f"{dist_name!r}; entry-point names in the {ENTRY_POINT_GROUP!r} group must be unique: rename "
                    f"the entry point in the pyproject.toml of {where} (e.g. after its package)"
                )
            try:
                module = ep.load()
            except Exception as exc:  # a broken third-party plugin must not break the rest
                warnings.warn(
                    f"xaibench plugin {ep.name!r} from distribution {dist_name!r} failed to load and "
                    f"is skipped: {type(exc).__name__}: {exc}",
                    PluginLoadWarning,
                    stacklevel=2,
                )
                continue
            self.add_plugin(module, name=ep.name, distribution=dist_name, version=dist_version)
        unmatched = sorted((selection or set()) - known)
        if unmatched:
            warnings.warn(
                f"{LOAD_PLUGINS_ENV} names {', '.join(map(repr, unmatched))}, which no installed plugin "
                f"distribution or entry point is called; installed third-party plugins: "
                f"{', '.join(sorted(third_party)) or '(none)'}",
                PluginLoadWarning,
                stacklevel=2,
            )
        self.check()

    def add_plugin(self, plugin, *, name: str, distribution: str | None = None, version: str = "0"):
        """Register a plugin object (module or instance with ``@hookimpl`` methods) and check it."""
        distribution = distribution or name
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise PluginError(
                f"plugin {name!r} (distribution {distribution!r}) has an invalid hook implementation: {detail}. "
                f"Each hook takes exactly one argument, named 'register': "
                f"'def register_masks(register): register(\"my-mask\", MyMask)'"
            ) from None
        self._dists[name] = (distribution, version)
        self._components = None
        return plugin

    def remove_plugin(self, name: str) -> None:
        self.pm.unregister(name=name)
        self._dists.pop(name, None)
        self._components = None
        self._param_models.clear()

    def check(self) -> None:
        """Fail if a hook implementation matches no hook spec (for example a misspelled hook name)."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) if exc.plugin is not None else "?"
            distribution = self._dists.get(name, ("unknown", ""))[0]
            raise PluginError(
                f"plugin {name!r} (distribution {distribution!r}) implements a hook that xaibench does not "
                f"define: {exc}. Rename it to one of: {', '.join('register_' + k for k in KINDS)}"
            ) from None

    # -- components ----------------------------------------------------------------------------------
    @property
    def components(self) -> dict[str, dict[str, Component]]:
        if self._components is None:
            self.check()
            self._components = self._collect()
        return self._components

    def _collect(self) -> dict[str, dict[str, Component]]:
        found: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        for kind in KINDS:
            hook = getattr(self.pm.hook, f"register_{kind}")
            for impl in reversed(hook.get_hookimpls()):  # registration order
                plugin = impl.plugin_name
                distribution, version = self._dists.get(plugin, (plugin, "0"))
                source = f"plugin {plugin!r} (distribution {distribution!r})"

                def register(name, factory, *, _kind=kind, _plugin=plugin, _d=distribution, _v=version,
                             _source=source):
                    if not isinstance(name, str) or not name.strip():
                        raise PluginError(
                            f"{_source} registered a {_kind[:-1]} with the name {name!r}; a name must be a "
                            f"non-empty string, as in register(\"my-{_kind[:-1]}\", MyClass)"
                        )
                    check_factory(factory, f"{_source}: {_kind[:-1]} {name!r}", name)
                    existing = found[_kind].get(name)
                    if existing is not None:
                        if existing.distribution == _d:
                            fix = f"rename one of them in distribution {_d!r}"
                        else:
                            third_party = [d for d in (existing.distribution, _d) if d != BUILTIN_DISTRIBUTION]
                            fix = (f"names are never overridden: rename it in distribution {third_party[0]!r}"
                                   if len(third_party) == 1 else "rename it in one of the two distributions")
                        raise PluginError(
                            f"{_kind[:-1]} {name!r} is registered twice: by plugin {existing.plugin!r} "
                            f"(distribution {existing.distribution!r}) and by plugin {_plugin!r} "
                            f"(distribution {_d!r}); {fix}"
                        )
                    found[_kind][name] = Component(_kind, name, factory, _plugin, _d, _v)

                try:
                    returned = impl.function(register=register)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"{source} failed in its hook register_{kind}: {type(exc).__name__}: {exc}. A hook only "
                        f"calls register(name, factory); fix the plugin, or leave it out with "
                        f"{LOAD_PLUGINS_ENV} (a comma-separated list of the plugins to load)"
                    ) from exc
                if returned is not None:
                    raise PluginError(
                        f"{source}: hook register_{kind} returned {returned!r}, which is ignored; call "
                        f"register(name, factory) for each {kind[:-1]} instead and return nothing"
                    )
        return found

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def get(self, kind: str, name: str) -> Component:
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; kinds are {KINDS}")
        try:
            return self.components[kind][name]
        except KeyError:
            valid = self.names(kind)
            hint = closest(str(name), valid)
            did_you_mean = f" Did you mean {hint!r}?" if hint else ""
            raise UnknownComponentError(
                f"unknown {kind[:-1]} {name!r}.{did_you_mean} Valid {kind}: {', '.join(valid) or '(none)'}"
            ) from None

    def who(self, kind: str, name: str, label: str | None = None) -> str:
        """``seeder 'top-k(k=2)' (plugin 'seeders', distribution xaibench 0.2.0)``: a component as messages
        about it name it (``label`` is its grid label, default its name)."""
        component = self.get(kind, name)
        return (f"{kind[:-1]} {label or name!r} (plugin {component.plugin!r}, distribution "
                f"{component.distribution} {component.version})")

    def validate(self, kind: str, name: str, params: dict | None = None) -> dict:
        """Check ``params`` against the component's keyword parameters; return them coerced.

        Raises ``UnknownComponentError`` or ``ComponentParamsError`` (with the parameter path)."""
        component = self.get(kind, name)
        key = (kind, name)
        if key not in self._param_models:
            try:
                self._param_models[key] = signature_model(component.factory, f"{kind}:{name}")
            except (TypeError, ValueError) as exc:
                raise PluginError(
                    f"{kind} {name!r} from plugin {component.plugin!r}: factory has no inspectable signature "
                    f"({exc}); register a class or function with keyword parameters"
                ) from None
        return validate_keywords(self._param_models[key], params)

    def create(self, kind: str, name: str, /, **params):
        """Build a component: validate ``params`` then call the factory with them as keywords."""
        component = self.get(kind, name)
        return component.factory(**self.validate(kind, name, params))

    def describe(self) -> list[dict]:
        return [c.describe() for kind in KINDS for _, c in sorted(self.components[kind].items())]


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry of installed plugins, loaded on first use."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def create(kind: str, name: str, /, **params):
    """Build a registered component: ``create("masks", "blur", sigma=8)``."""
    return get_registry().create(kind, name, **params)
