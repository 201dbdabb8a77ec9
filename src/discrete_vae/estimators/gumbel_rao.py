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
are the two-class case :math:`\theta = (0, l)`: relaxed point :math:`\sigma((l + L)/\tau)` with ``L`` logistic
and ``l + L`` drawn given its sign by the inverse CDF of the truncated logistic (one uniform per draw).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.distributions.utils import clamp_probs
from torch.nn.functional import softplus

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


def pick(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a`` where ``mask`` is 1, else ``b``: ``torch.where`` for a 0/1 float mask and finite values, written
    as ``lerp``, which is exact at weights 0 and 1 and, unlike ``where``, vectorised on the CPU."""
    return torch.lerp(b, a, mask)


def conditional_gumbel_scores(log_probs: Tensor, hard: Tensor, k: int) -> Tensor:
    """``k`` draws of ``log_probs + G`` (G iid Gumbel) given that their argmax is ``hard``, classes first:
    ``log_probs`` (C, ...) normalised over the classes, ``hard`` (C, n, ...) one-hot -> (C, k, n, ...).

    The uniforms are drawn class-last, (k, n, ..., C), and laid out classes first, so that every operation
    over the classes works on whole slabs (CPU kernels over a short last dimension are slow)."""
    shape = (k, *hard.shape[1:], hard.shape[0])
    u = torch.rand(shape, dtype=log_probs.dtype, device=log_probs.device).movedim(-1, 0).contiguous()
    log_e = (-clamp_probs(u).log()).log()  # log E, E ~ Exp(1): (C, k, n, ...)
    hard = hard.unsqueeze(1)  # (C, 1, n, ...)
    log_e_top = (log_e * hard).sum(0)  # (k, n, ...)
    below = -torch.logaddexp(log_e_top, log_e - log_probs[:, None, None])  # Gumbel truncated at the maximum
    return pick(hard, -log_e_top, below)


def conditional_logistic_scores(logits: Tensor, hard: Tensor, k: int) -> Tensor:
    """Binary latents, the classes ``(0, l)``: ``k`` draws of the score difference ``s = l + L`` (``L``
    logistic, ``s = G_1 - G_0 + l``) given the drawn bit ``b = 1[s > 0]``: ``logits`` (...), ``hard`` (n, ...)
    in {0, 1} -> (k, n, ...). One uniform per draw, by the inverse CDF of the truncated logistic: with
    ``m = (2b - 1) l``, ``(2b - 1) s = m + logit(sigma(-m) + u sigma(m))``, in log space."""
    u = clamp_probs(torch.rand((k, *hard.shape), dtype=logits.dtype, device=logits.device))
    sign = 2 * hard - 1  # (n, ...)
    m = sign * logits  # the drawn class's logit against the other's
    log_p_top, log_p_other = -softplus(-m), -softplus(m)  # log sigma(m), log sigma(-m)
    log_cdf = torch.logaddexp(log_p_other, u.log() + log_p_top)  # log(sigma(-m) + u sigma(m))
    return sign * (m + log_cdf - log_p_top - torch.log1p(-u))  # log(1 - cdf) = log sigma(m) + log(1 - u)


def gumbel_rao(latents: Latents, hard: Tensor, tau: Tensor, k: int) -> Tensor:
    """``hard`` (n, B, ...) forward, the average of ``k`` conditional Concrete Jacobians backward."""
    logits = latents.logits  # (B, ...) binary, (B, ..., C) categorical
    if latents.kind == "binary":  # softmax(((0, l) + G) / tau)_1 = sigmoid((l + G_1 - G_0) / tau)
        with torch.no_grad():
            noise = conditional_logistic_scores(logits, hard, k) - logits  # (k, n, B, ...)
        soft = torch.sigmoid((logits + noise) / tau).mean(0)  # (n, B, ...); tau () or (B, ...)
        return hard + (soft - soft.detach())
    log_probs = logits.movedim(-1, 0).log_softmax(0)  # classes first: (C, B, ...)
    with torch.no_grad():
        noise = conditional_gumbel_scores(log_probs, hard.movedim(-1, 0), k) - log_probs[:, None, None]
    scores = (log_probs[:, None, None] + noise) / tau  # (C, k, n, B, ...); tau () or (B, ...)
    soft = scores.softmax(0).mean(1).movedim(0, -1)  # (n, B, ..., C)
    return hard + (soft - soft.detach())


@register
class GumbelRao(Pathwise):
    """Gumbel-Rao: a hard sample of ``q`` forward, ST-GS's Jacobian averaged over ``G | D`` backward."""

    name = "gumbel-rao"
    Options = GumbelRaoOptions

    def rsample(self, latents: Latents, n: int, tau: Tensor | float | None = None) -> Tensor:
        tau = self.temperature(tau, latents.logits)
        return gumbel_rao(latents, latents.sample(n), tau, self.options.mc)
