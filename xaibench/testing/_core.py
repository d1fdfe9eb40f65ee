"""What every check shares: how a violation is reported, how a contract call is made, which devices are
tried, and the factory check (keyword-only parameters, resolvable annotations)."""

from __future__ import annotations

import inspect
import typing


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


def _label(kind: str, component, name: str | None) -> str:
    return name or f"{kind[:-1]} {type(component).__name__}"


def _devices(devices) -> list[str]:
    import torch

    return list(devices) if devices is not None else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _check_factory(factory, label: str) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{label}: the factory has no inspectable signature ({exc}); register a class "
                             f"whose __init__ takes keyword-only parameters") from None
    positional = [p.name for p in signature.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    _expect(not positional, label, f"parameters {positional} can be given by position",
            "make every parameter keyword-only: def __init__(self, *, name=default)")
    try:
        typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory, include_extras=True)
    except Exception as exc:
        raise AssertionError(f"{label}: the parameters' annotations cannot be resolved ({type(exc).__name__}: "
                             f"{exc}), so grid values would go unvalidated; import every name used in an "
                             f"annotation at module level") from None
