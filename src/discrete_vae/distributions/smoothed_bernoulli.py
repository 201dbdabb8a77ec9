"""The smoothed mixture of a factorial Bernoulli, ``q(ζ) = (1-q) r(ζ|0) + q r(ζ|1)``, as a
``torch.distributions`` object over any smoothing of :mod:`.smoothing`."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from .smoothing import Smoothing

__all__ = ["SmoothedBernoulli"]


class SmoothedBernoulli(Distribution):
    r"""The mixture :math:`q(ζ) = (1-q) r(ζ|0) + q r(ζ|1)` of a factorial Bernoulli as a distribution.

    - Samples: ``ζ = F^{-1}(ρ)`` by the smoothing's closed form, or when ``implicit`` an ancestral draw
      (``icdf``: bisection).
    - ``log_prob(ζ)`` scores the mixture density (w.r.t. ``δ_0 + Lebesgue`` for spike-exp).
    - Gradients: pathwise in ``logits``; implicit (DVAE# eq. 5) unless the closed form is used.
    """

    arg_constraints = {"logits": constraints.real}
    has_rsample = True

    def __init__(self, logits: Tensor, smoothing: Smoothing, implicit: bool | None = None,
                 validate_args: bool | None = None):
        self.logits, self.smoothing, self.implicit = logits, smoothing, implicit
        super().__init__(logits.shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        return self.smoothing.support

    @property
    def mean(self) -> Tensor:
        return self.smoothing.mean(self.logits)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(SmoothedBernoulli, _instance)
        new.logits = self.logits.expand(batch_shape)
        new.smoothing, new.implicit = self.smoothing, self.implicit
        super(SmoothedBernoulli, new).__init__(torch.Size(batch_shape), validate_args=False)
        return new

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self.smoothing.rsample(self.logits, sample_shape, self.implicit)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.smoothing.log_prob(value, self.logits)

    def cdf(self, value: Tensor) -> Tensor:
        return self.smoothing.cdf(value, self.logits)

    def icdf(self, value: Tensor) -> Tensor:
        return self.smoothing.icdf(value, self.logits, self.implicit)
