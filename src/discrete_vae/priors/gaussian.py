"""Standard normal prior over ``d`` continuous latents (the Gaussian part of a mixed model's prior)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from .base import Prior


class GaussianPrior(Prior):
    """Standard normal prior over ``d`` continuous latents."""

    def __init__(self, d: int):
        super().__init__()
        self.d = d
        self.register_buffer("zero", torch.zeros(d))

    def distribution(self) -> Independent:
        return Independent(Normal(self.zero, torch.ones_like(self.zero), validate_args=False), 1)

    def log_prob(self, z: Tensor) -> Tensor:
        return self.distribution().log_prob(z)

    def sample(self, n: int, persist: bool = True) -> Tensor:
        return self.distribution().sample((n,))
