r"""``gumbel-rao``: Rao-Blackwellised straight-through Gumbel-Softmax.

Paper: Paulus, Maddison, Krause (2021), *Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient
Estimator* (ICLR 2021), https://arxiv.org/abs/2010.04838.

.. math::
    D = \mathrm{one\_hot}\big(\arg\max_k(\theta_k + G_k)\big)\ \text{(forward)},\qquad
    \frac{\partial z}{\partial\theta} = \frac1K \sum_{k=1}^K
        \frac{\partial}{\partial\theta}\,\mathrm{softmax}\big((\theta + G^{(k)}) / \tau\big),\quad
    G^{(k)} \overset{iid}{\sim} G \mid D

ST-GS's backward pass with its Jacobian replaced by a ``K``-sample average over the Gumbel noise given the
drawn class. The derivative holds :math:`G^{(k)}` fixed, as ST-GS does (differentiating through the
conditional draw of :math:`G^{(k)}` as well would change the mean), so the mean gradient is ST-GS's and the
variance is lower (Rao-Blackwell: by :math:`\tfrac{K-1}{K}\,\mathbb{E}\,\mathrm{Var}[\hat\nabla_{ST\text{-}GS}
\mid D]`); ``K = 1`` is ST-GS in distribution. ``f`` is evaluated once per sample, at ``D``, an exact
sample of ``q``; the ``K`` relaxed points share one batched softmax.

Conditional noise (top-down, with :math:`\theta` normalised, :math:`\log\sum_k e^{\theta_k} = 0`, and
:math:`E_i \sim \mathrm{Exp}(1)`): the maximum :math:`\theta_D + G_D = -\log E_D` and, for :math:`i \ne D`,
:math:`\theta_i + G_i = -\log(E_D + E_i e^{-\theta_i})`, a Gumbel truncated below the maximum. Binary latents
are the two-class case :math:`\theta = (0, l)` (relaxed point :math:`\sigma((l + L)/\tau)`, ``L`` logistic).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.distributions.utils import clamp_probs

from ..errors import ConfigError
from .base import Latents, Pathwise, register
from .gs import ConcreteOptions


@dataclass(frozen=True)
class GumbelRaoOptions(ConcreteOptions):
    mc: int = field(default=10, metadata={"help": "K, the conditional Gumbel draws averaged in each "
                                          "backward Jacobian (K = 1 is st-gs)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mc < 1:
            raise ConfigError(f"--mc must be at least 1, got {self.mc}")


def conditional_gumbel_scores(log_probs: Tensor, hard: Tensor, k: int) -> Tensor:
    """``k`` draws of ``log_probs + G`` (G iid Gumbel) given that their argmax is ``hard``:
    ``log_probs`` (..., C) normalised, ``hard`` (n, ..., C) one-hot -> (k, n, ..., C)."""
    u = clamp_probs(torch.rand((k, *hard.shape), dtype=log_probs.dtype, device=log_probs.device))
    log_e = (-u.log()).log()  # log E, E ~ Exp(1): (k, n, ..., C)
    log_e_top = (log_e * hard).sum(-1, keepdim=True)  # (k, n, ..., 1)
    below = -torch.logaddexp(log_e_top, log_e - log_probs)  # Gumbel(log_probs) truncated at the maximum
    return torch.where(hard.bool(), -log_e_top, below)


def gumbel_rao(latents: Latents, hard: Tensor, tau: Tensor, k: int) -> Tensor:
    """``hard`` (n, B, ...) forward, the average of ``k`` conditional Concrete Jacobians backward."""
    logits = latents.logits
    if latents.kind == "binary":  # two classes, (0, l): (B, ..., 2)
        logits = torch.stack([torch.zeros_like(logits), logits], -1)
        hard = torch.stack([1 - hard, hard], -1)
    log_probs = logits.log_softmax(-1)  # (B, ..., C)
    with torch.no_grad():
        noise = conditional_gumbel_scores(log_probs, hard, k) - log_probs  # (k, n, B, ..., C)
    tau = tau if tau.dim() == 0 else tau.unsqueeze(-1)  # () or (B, ..., 1)
    soft = ((log_probs + noise) / tau).softmax(-1).mean(0)  # (n, B, ..., C)
    z = hard + (soft - soft.detach())
    return z[..., 1] if latents.kind == "binary" else z


@register
class GumbelRao(Pathwise):
    """Gumbel-Rao: a hard sample of ``q`` forward, ST-GS's Jacobian averaged over ``G | D`` backward."""

    name = "gumbel-rao"
    Options = GumbelRaoOptions

    def rsample(self, latents: Latents, n: int, tau: Tensor | float | None = None) -> Tensor:
        tau = self.temperature(tau, latents.logits)
        return gumbel_rao(latents, latents.sample(n), tau, self.options.mc)
