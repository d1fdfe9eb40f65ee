"""Conformance checks for plugin authors: call them from your own tests.

    import pytest
    from xaibench.kit.testing import check_component, registered

    @pytest.mark.parametrize("name", registered("masks", distribution="my-plugin"))
    def test_my_masks_keep_the_contract(name):
        check_component("masks", name)

``check_<kind>(component)`` (one per hook: ``check_dataset``, ``check_mask``, ``check_backbone``,
``check_ensemble``, ``check_explainer``, ``check_seeder``, ``check_segmenter``, ``check_acceptor``,
``check_executor``) feeds a built component tiny inputs (2 images of 32×40 pixels; backbones at 32
pixels) and checks the call contract of ``xaibench.kit.contracts``: types, shapes, dtypes and value ranges of
what it returns, determinism (the same input twice gives the same output), inputs left unmodified, the
contract's attributes, and devices (CPU always, CUDA too when it is available). The output checks are the
validators of ``xaibench.kit.contracts``, the very ones a run calls on every output. A violation raises
``AssertionError`` naming the component, what is wrong and what to fix. ``check_light_import(module)``
checks that importing a plugin module imports no heavy library (torch, OpenCV, ...). ``check_component(kind, name, **params)`` builds the component from the registry and
also checks its factory (keyword-only parameters, resolvable annotations). A dataset whose optional
``check()`` finds its data missing raises that ``UserError`` unchanged: that is not a contract violation.
"""

from __future__ import annotations

from xaibench.kit.registry import KINDS, canonical_name, get_registry
from xaibench.kit.testing._annotation import check_acceptor, check_seeder, check_segmenter
from xaibench.kit.testing._core import _check_factory, _expect
from xaibench.kit.testing._datasets import SPLITS, check_dataset
from xaibench.kit.testing._executors import check_executor
from xaibench.kit.testing._imports import HEAVY_MODULES, check_light_import
from xaibench.kit.testing._inputs import HEIGHT, WIDTH, tiny_classifier
from xaibench.kit.testing._models import check_backbone, check_ensemble, check_explainer, check_mask

__all__ = [
    "CHECKS", "HEAVY_MODULES", "HEIGHT", "SPLITS", "WIDTH", "check_acceptor", "check_backbone", "check_component",
    "check_dataset", "check_ensemble", "check_executor", "check_explainer", "check_light_import", "check_mask",
    "check_seeder", "check_segmenter", "registered", "tiny_classifier",
]


def registered(kind: str, *, distribution: str | None = None, registry=None) -> list[str]:
    """Sorted names of the registered components of ``kind``, optionally only those of one distribution."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    components = (registry or get_registry()).components[kind]
    return sorted(name for name, c in components.items()
                  if distribution is None or canonical_name(c.distribution) == canonical_name(distribution))


def check_component(kind: str, name: str, /, *, registry=None, **params):
    """Build ``kind``/``name`` with ``params`` from the registry, check its factory and its contract.

    Returns the built component."""
    registry = registry or get_registry()
    component = registry.get(kind, name)
    label = f"{kind[:-1]} {name!r} (plugin {component.plugin!r}, distribution {component.distribution!r})"
    _check_factory(component.factory, label)
    built = registry.create(kind, name, **params)
    CHECKS[kind](built, name=label)
    if kind == "datasets":
        fresh = registry.create(kind, name, **params).fingerprint()
        _expect(fresh == built.fingerprint(), label, "two instances with the same parameters have different "
                "fingerprints", "derive fingerprint() from the parameters and the data only (no time, no id())")
    return built


CHECKS = {
    "datasets": check_dataset,
    "masks": check_mask,
    "backbones": check_backbone,
    "ensembles": check_ensemble,
    "explainers": check_explainer,
    "seeders": check_seeder,
    "segmenters": check_segmenter,
    "acceptors": check_acceptor,
    "executors": check_executor,
}
