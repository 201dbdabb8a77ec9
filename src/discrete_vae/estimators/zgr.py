r"""``zgr``: the zero-temperature limit of Gumbel-Rao.

Paper: Shekhovtsov (2023), *Cold Analysis of Rao-Blackwellized Straight-Through Gumbel-Softmax Gradient
Estimator* (ICML 2023, PMLR 202:30931-30955), https://proceedings.mlr.press/v202/shekhovtsov23a.html;
author's code https://github.com/shekhovt/ZGR.

.. math::
    D \sim q_\phi\ \text{(forward)},\qquad
    \frac{\partial z}{\partial\theta} = \tfrac12\Big(\underbrace{J(\pi)}_{\text{ST}}
        + \underbrace{(D - \pi)\,\nabla_\theta \log \pi_D}_{\text{DARN}}\Big)
    = \tfrac12\big(J(\pi) + (D - \pi)(D - \pi)^\top\big),\quad J(\pi) = \mathrm{diag}(\pi) - \pi\pi^\top

The Gumbel-Rao Jacobian :math:`\mathbb{E}[\partial_\theta\,\mathrm{softmax}((\theta + G)/\tau) \mid D]`
has this closed form as :math:`\tau \to 0` (the paper's ZGR: the average of straight-through and DARN), so no
inner sampling and no temperature. Binary latents: :math:`\partial z / \partial l = \tfrac12(\sigma'(l) +
(b - \sigma(l))^2) = \tfrac12\,|b - \sigma(l)|` (the paper's DARN(1/2)). The Jacobian equals ReinMax's
at :math:`\tau = 1` (expand :math:`2J(\tfrac{D + \pi}2) - \tfrac12 J(\pi)` using
:math:`\mathrm{diag}(D) = DD^\top`), so it is likewise exact for ``f`` of degree at most two in each latent
variable.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import softplus

from .base import Latents, Pathwise, class_log_softmax, class_softmax, register


def zgr(latents: Latents, hard: Tensor) -> Tensor:
    """``hard`` (n, B, ...) forward, half straight-through plus half DARN backward."""
    logits = latents.logits  # (B, ...) binary, (B, ..., K) categorical
    if latents.kind == "binary":
        probs = torch.sigmoid(logits)
        log_q = hard * logits - softplus(logits)  # log q(b) per variable: (n, B, ...)
    else:
        probs = class_softmax(logits)
        log_q = (hard * class_log_softmax(logits)).sum(-1, keepdim=True)  # log pi_D: (n, B, ..., 1)
    st = probs - probs.detach()
    darn = (hard - probs).detach() * (log_q - log_q.detach())
    return hard + 0.5 * (st + darn)


@register
class ZGR(Pathwise):
    """ZGR: a hard sample of ``q`` forward, the average of the ST and DARN Jacobians backward."""

    name = "zgr"

    def rsample(self, latents: Latents, n: int, tau: Tensor | float | None = None) -> Tensor:
        return zgr(latents, latents.sample(n))
