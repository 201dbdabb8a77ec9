r"""``gs``: the Gumbel-Softmax (Concrete) relaxation, differentiated pathwise.

Papers: Jang, Gu, Poole (2017), https://arxiv.org/abs/1611.01144; Maddison, Mnih, Teh (2017),
https://arxiv.org/abs/1611.00712.

.. math::
    z = \mathrm{softmax}\big((\log\pi + g) / \tau\big),\quad g_k \sim \mathrm{Gumbel}(0, 1);\qquad
    \hat\nabla = \nabla_\phi f(z)

(binary: :math:`z = \sigma((l + \log u - \log(1-u)) / \tau)`). ``f`` is evaluated at the relaxed point,
so both value and gradient are biased for any :math:`\tau > 0`; the bias vanishes as :math:`\tau \to 0`
while the variance grows. Draws are made in log space (:class:`ExpConcrete`, :class:`LogitBinaryConcrete`)
and exponentiated, which keeps them finite down to :math:`\tau = 0.01` in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..distributions import ExpConcrete, LogitBinaryConcrete
from .base import Latents, Pathwise, positive_temperature, register


@dataclass(frozen=True)
class ConcreteOptions:
    temperature: float = field(default=1.0, metadata={"help": "relaxation temperature tau (a training "
                                                      "schedule overrides it)"})

    def __post_init__(self) -> None:
        positive_temperature(self)


def concrete_log_sample(latents: Latents, n: int, tau: Tensor) -> Tensor:
    """``n`` log-space Concrete draws: logits of binary Concretes (n, B, ...) or ExpConcrete log-simplex
    points (n, B, ..., K); pathwise in the logits and ``tau``."""
    if latents.kind == "binary":
        return LogitBinaryConcrete(tau, latents.logits, validate_args=False).rsample((n,))
    return ExpConcrete(tau, latents.logits, validate_args=False).rsample((n,))


def from_log_sample(kind: str, y: Tensor) -> Tensor:
    """The relaxed point of a log-space draw: ``sigmoid(y)`` (binary) or ``exp(y)`` (categorical)."""
    return torch.sigmoid(y) if kind == "binary" else y.exp()


@register
class GumbelSoftmax(Pathwise):
    """Gumbel-Softmax / binary Concrete: ``f`` at a relaxed draw (biased, low variance)."""

    name = "gs"
    relaxed = True
    Options = ConcreteOptions
    draws_relaxations = True

    def rsample(self, latents: Latents, n: int, tau: Tensor | float | None = None) -> Tensor:
        y = concrete_log_sample(latents, n, self.temperature(tau, latents.logits))
        return from_log_sample(latents.kind, y)
