"""Ensemble rules combining the raw-image model's and the masked-image model's logits."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from xaibench.hookspecs import hookimpl


class LogitMix:
    """The paper's rule ``L = alpha * L_raw + (1 - alpha) * L_masked`` on logits (B, C).

    alpha = 1 is the raw-image model alone, alpha = 0 the masked-image model alone."""

    def __init__(self, *, alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9):
        self.alpha = alpha

    def __call__(self, raw_logits, masked_logits):
        return self.alpha * raw_logits + (1.0 - self.alpha) * masked_logits

    def reduces_to(self):
        return {1.0: "raw", 0.0: "masked"}.get(float(self.alpha))


@hookimpl
def register_ensembles(register):
    register("logit-mix", LogitMix)
