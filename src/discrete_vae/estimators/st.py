r"""``st``: the straight-through estimator on probabilities.

Paper: Bengio, Léonard, Courville (2013), *Estimating or Propagating Gradients Through Stochastic Neurons
for Conditional Computation*, https://arxiv.org/abs/1308.3432.

.. math::
    D \sim q_\phi\ \text{(forward)},\qquad z = D + \pi - \mathrm{sg}(\pi),\qquad
    \hat\nabla = \frac{\partial f}{\partial z}(D)\,\frac{\partial \pi}{\partial \phi}

with :math:`\pi = \sigma(l)` (binary) or :math:`\mathrm{softmax}(\theta)` (categorical). ``f`` sees an exact
sample of ``q``, so the value is unbiased. The gradient is the first-order (forward Euler) approximation of
:math:`f(I_i) - f(I_j)` (Liu et al. 2023): exact when ``f`` is linear in each latent variable (binary:
multilinear, :math:`\mathbb{E}[\hat\nabla_l] = \sigma'(l)\,w` for :math:`f = w^\top z`), biased otherwise.
No temperature: a schedule's ``tau`` is ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Latents, Pathwise, class_softmax, register


def straight_through_probs(latents: Latents, hard: Tensor) -> Tensor:
    """``hard`` (n, B, ...) forward, the gradient of ``q``'s probabilities backward."""
    logits = latents.logits
    probs = torch.sigmoid(logits) if latents.kind == "binary" else class_softmax(logits)  # (B, ...)
    return hard + (probs - probs.detach())


@register
class StraightThrough(Pathwise):
    """Straight-through: a hard sample of ``q`` forward, ``d z = d probs`` backward."""

    name = "st"

    def rsample(self, latents: Latents, n: int, tau: Tensor | float | None = None) -> Tensor:
        return straight_through_probs(latents, latents.sample(n))
