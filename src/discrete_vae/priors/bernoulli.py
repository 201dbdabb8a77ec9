"""Factorial Bernoulli prior over ``N`` binary latents: Bernoulli(1/2) or learnable."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Independent

from ..distributions import LogitBinaryConcrete
from ..distributions.hard import HardBernoulli
from .base import Prior


class BernoulliPrior(Prior):
    """``p(z) = prod_n Bernoulli(z_n; sigmoid(logits_n))``; ``z`` in {0, 1} (..., N)."""

    def __init__(self, n: int, learnable: bool = False):
        super().__init__()
        self.n = n
        logits = torch.zeros(n)
        if learnable:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    def log_prob(self, z: Tensor) -> Tensor:
        return (z * self.logits - nn.functional.softplus(self.logits)).sum(-1)

    def sample(self, n: int, persist: bool = True) -> Tensor:
        return self.distribution().sample((n,))

    def distribution(self) -> Independent:
        return Independent(HardBernoulli(logits=self.logits, validate_args=False), 1)

    def relaxed(self, temperature: Tensor | float) -> Independent:
        return Independent(LogitBinaryConcrete(temperature, self.logits, validate_args=False), 1)
