"""Independent priors over consecutive slices of a flat latent, and their joint distribution.

The mixed model's prior is ``ProductPrior([GaussianPrior(D), discrete prior])``: its distribution,
:class:`Concatenated`, flattens each part's event and concatenates them, so the latent is ``[c, z]``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from .base import Prior


class Concatenated(Distribution):
    """Independent parts whose events are flattened and concatenated: event (sum of sizes,)."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, parts: list[Distribution]):
        self.parts = parts
        self.sizes = [max(1, p.event_shape.numel()) for p in parts]
        super().__init__(parts[0].batch_shape, torch.Size([sum(self.sizes)]), validate_args=False)

    def _join(self, values: list[Tensor], sample_ndim: int) -> Tensor:
        lead = sample_ndim + len(self.batch_shape)
        return torch.cat([v.reshape(*v.shape[:lead], -1).to(values[0].dtype) for v in values], -1)

    def _split(self, value: Tensor) -> list[Tensor]:
        chunks = value.split(self.sizes, -1)
        return [c.reshape(*c.shape[:-1], *p.event_shape) for c, p in zip(chunks, self.parts, strict=True)]

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self._join([p.sample(sample_shape) for p in self.parts], len(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        return sum(p.log_prob(v) for p, v in zip(self.parts, self._split(value), strict=True))

    @property
    def mode(self) -> Tensor:
        return self._join([p.mode for p in self.parts], 0)


class ProductPrior(Prior):
    """Independent priors over consecutive slices of a flat latent (the mixed model's prior)."""

    def __init__(self, parts: list[Prior]):
        super().__init__()
        self.parts = torch.nn.ModuleList(parts)
        self.normalized = all(p.normalized for p in parts)

    def distribution(self) -> Concatenated:
        return Concatenated([p.distribution() for p in self.parts])

    def log_prob(self, z: Tensor) -> Tensor:
        return self.distribution().log_prob(z)

    def sample(self, n: int, persist: bool = True) -> Tensor:
        return self.distribution().sample((n,))
