"""Categorical priors over ``N`` independent ``K``-class latents: uniform (fixed) or learnable."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Independent

from ..distributions import ExpConcrete
from ..distributions.hard import HardOneHotCategorical
from .base import PRIORS, Prior, PriorType


class CategoricalPrior(Prior):
    """``p(z) = prod_n Cat(z_n; softmax(logits_n))``; ``z`` is one-hot (..., N, K).

    Uniform when ``learnable=False`` (logits are a zero buffer); otherwise logits are parameters.
    """

    def __init__(self, n: int, k: int, learnable: bool = False):
        super().__init__()
        self.n, self.k = n, k
        logits = torch.zeros(n, k)
        if learnable:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    def log_probs(self) -> Tensor:
        return torch.log_softmax(self.logits, -1)  # (N, K)

    def log_prob(self, z: Tensor) -> Tensor:
        return (z * self.log_probs()).sum((-2, -1))

    def sample(self, n: int, persist: bool = True) -> Tensor:
        return self.distribution().sample((n,))

    def distribution(self) -> Independent:
        return Independent(HardOneHotCategorical(logits=self.logits, validate_args=False), 1)

    def relaxed(self, temperature: Tensor | float) -> Independent:
        return Independent(ExpConcrete(temperature, self.logits, validate_args=False), 1)


def _uniform(n: int, k: int, binary: bool) -> Prior:
    if binary:
        from .bernoulli import BernoulliPrior

        return BernoulliPrior(n, learnable=False)
    return CategoricalPrior(n, k, learnable=False)


def _learnable(n: int, k: int, binary: bool) -> Prior:
    if binary:
        from .bernoulli import BernoulliPrior

        return BernoulliPrior(n, learnable=True)
    return CategoricalPrior(n, k, learnable=True)


PRIORS.register("uniform")(PriorType(_uniform))
PRIORS.register("learnable")(PriorType(_learnable))
