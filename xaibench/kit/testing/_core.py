"""What every check shares: how a violation is reported, how a contract call is made, which devices are
tried, and the factory check (keyword-only parameters, resolvable annotations)."""

from __future__ import annotations

import inspect
import typing

from xaibench.errors import ContractViolation, PluginError
from xaibench.kit.registry import check_factory


def _expect(condition, label: str, problem: str, fix: str) -> None:
    if not condition:
        raise AssertionError(f"{label}: {problem}; {fix}")


def _call(label: str, what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; an exception becomes an ``AssertionError`` saying which contract call failed."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raise AssertionError(f"{label}: {what} raised {type(exc).__name__}: {exc}; it must accept the inputs "
                             f"of its contract (docs/plugins.md)") from exc


def _valid(label: str, call: str, validator, *args) -> None:
    """``validator(*args)`` (one of ``xaibench.kit.contracts``' validators, the ones a run calls); a
    ``ContractViolation`` becomes an ``AssertionError`` saying which call broke the contract."""
    try:
        validator(*args)
    except ContractViolation as exc:
        raise AssertionError(f"{label}: {call}: {exc}") from None


def _label(kind: str, component, name: str | None) -> str:
    return name or f"{kind[:-1]} {type(component).__name__}"


def _devices(devices) -> list[str]:
    import torch

    return list(devices) if devices is not None else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _check_factory(factory, label: str) -> None:
    """The registry's own factory check (a class or function with keyword-only parameters), as an
    ``AssertionError``, and annotations that resolve."""
    try:
        check_factory(factory, label)
    except PluginError as exc:
        raise AssertionError(str(exc)) from None
    try:
        typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory, include_extras=True)
    except Exception as exc:
        raise AssertionError(f"{label}: the parameters' annotations cannot be resolved ({type(exc).__name__}: "
                             f"{exc}), so grid values would go unvalidated; import every name used in an "
                             f"annotation at module level") from None
