"""Ensemble rules combining the raw-image model's and the masked-image model's logits.

``logit-mix`` is the paper's rule, with one mixing weight α (``mixing_parameter``), so tables show its
α rows and the accuracy-against-α figure sweeps it. ``prob-mean`` averages the members' class
probabilities instead: a rule with no weight at all, shown in tables and figures under its own name.
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field

from xaibench.kit.hookspecs import hookimpl


class LogitMix:
    """The paper's rule ``L = alpha * L_raw + (1 - alpha) * L_masked`` on logits (B, C).

    alpha = 1 is the raw-image model alone, alpha = 0 the masked-image model alone."""

    mixing_parameter = "alpha"  # the weight of the raw-image model: tables show α rows, figures sweep it

    def __init__(self, *, alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9):
        self.alpha = alpha

    def __call__(self, raw_logits, masked_logits):
        return self.alpha * raw_logits + (1.0 - self.alpha) * masked_logits

    def reduces_to(self):
        return {1.0: "raw", 0.0: "masked"}.get(float(self.alpha))


class ProbabilityMean:
    """The mean of the two models' class probabilities, returned as logits (B, C):
    ``log((softmax(L_raw) + softmax(L_masked)) / 2)``, so its argmax is the class with the highest mean
    probability and its softmax is that mean. Has no parameter and equals neither member."""

    def __init__(self):
        pass

    def __call__(self, raw_logits, masked_logits):
        import torch

        both = torch.stack([raw_logits.log_softmax(dim=-1), masked_logits.log_softmax(dim=-1)])
        return torch.logsumexp(both, dim=0) - math.log(2.0)


@hookimpl
def register_ensembles(register):
    register("logit-mix", LogitMix)
    register("prob-mean", ProbabilityMean)
