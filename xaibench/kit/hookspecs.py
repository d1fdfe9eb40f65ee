"""Hook specifications: one ``register_<kind>`` hook per component kind.

A hook implementation only calls ``register(name, factory)`` for each component it provides; the factory
is a class (or callable) built from keyword parameters. Behaviour lives in the components, never here.
"""

import pluggy

hookspec = pluggy.HookspecMarker("xaibench")
hookimpl = pluggy.HookimplMarker("xaibench")


@hookspec
def register_datasets(register):
    """Register dataset factories (see ``xaibench.kit.contracts.Dataset``)."""


@hookspec
def register_masks(register):
    """Register background-mask factories (see ``xaibench.kit.contracts.Mask``)."""


@hookspec
def register_backbones(register):
    """Register classifier backbone factories (see ``xaibench.kit.contracts.Backbone``)."""


@hookspec
def register_ensembles(register):
    """Register logit-ensemble factories (see ``xaibench.kit.contracts.Ensemble``)."""


@hookspec
def register_explainers(register):
    """Register saliency explainer factories (see ``xaibench.kit.contracts.Explainer``)."""


@hookspec
def register_seeders(register):
    """Register saliency-to-point-prompt seeder factories (see ``xaibench.kit.contracts.Seeder``)."""


@hookspec
def register_segmenters(register):
    """Register point-prompted segmenter factories (see ``xaibench.kit.contracts.Segmenter``)."""


@hookspec
def register_acceptors(register):
    """Register annotation-loop acceptance rule factories (see ``xaibench.kit.contracts.Acceptor``)."""


@hookspec
def register_executors(register):
    """Register stage executor factories (see ``xaibench.kit.contracts.Executor``)."""
