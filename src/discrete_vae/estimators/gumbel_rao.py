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
sample of ``q``. The ``K`` relaxed points are drawn without an autograd graph and their Jacobians averaged in
a custom backward pass; no gradient reaches :math:`\tau`.

Conditional noise (top-down, with :math:`\theta` normalised, :math:`\log\sum_k e^{\theta_k} = 0`, and
:math:`E_i \sim \mathrm{Exp}(1)`): the maximum :math:`\theta_D + G_D = -\log E_D` and, for :math:`i \ne D`,
:math:`\theta_i + G_i = -\log(E_D + E_i e^{-\theta_i})`, a Gumbel truncated below the maximum; the
softmax is taken from weights relative to class ``D``. Binary latents are the two-class case
:math:`\theta = (0, l)`: relaxed point :math:`\sigma((l + L)/\tau)` with ``L`` logistic and ``l + L`` drawn
given its sign by the inverse CDF of the truncated logistic (one uniform per draw).
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


def conditional_margins(margin: Tensor, k: int) -> Tensor:
    """Binary latents, the classes ``(0, l)`` drawn as bit ``b``: ``k`` draws of ``t = (2b - 1)(l + L)``
    (``L`` logistic) given ``t > 0``, from ``margin`` ``m = (2b - 1) l``: (n, ...) -> (k, n, ...).

    One uniform per draw, by the inverse CDF of the truncated logistic: ``t = m + logit(sigma(-m) + u
    sigma(m))``, written ``softplus(m) + log(sigma(-m) + u sigma(m)) - log(1 - u)``: a sum of positive terms
    inside the log, so no cancellation at saturated logits."""
    u = clamp_probs(torch.rand((k, *margin.shape), dtype=margin.dtype, device=margin.device))
    t = torch.addcmul(torch.sigmoid(-margin), torch.sigmoid(margin), u).log_()
    return t.add_(softplus(margin)).sub_(u.neg_().add_(1).log_())  # 1 - u is exact for rand's grid


def conditional_logistic_scores(logits: Tensor, hard: Tensor, k: int) -> Tensor:
    """``k`` draws of the score difference ``s = l + L`` (``s = G_1 - G_0 + l``) given the drawn bit ``b =
    1[s > 0]``: ``logits`` (...), ``hard`` (n, ...) in {0, 1} -> (k, n, ...)."""
    sign = 2 * hard - 1
    return sign * conditional_margins(sign * logits, k)


def conditional_softmax(log_probs: Tensor, hard: Tensor, k: int, tau: Tensor) -> Tensor:
    """``k`` draws of ``softmax((log_probs + G) / tau)`` (G iid Gumbel) given that the argmax of ``log_probs
    + G`` is ``hard``, classes first: ``log_probs`` (C, ...) normalised, ``hard`` (C, n, ...) one-hot, ``tau``
    () or (...) -> (C, k, n, ...).

    Top-down (Maddison et al. 2014): with ``E_i ~ Exp(1)`` the maximum is ``-log E_D`` and, for ``i != D``,
    ``log pi_i + G_i = -log(E_D + E_i / pi_i)``. So the softmax's weights relative to class ``D`` are
    ``(1 + E_i / (pi_i E_D))^(-1 / tau)`` in (0, 1]: no overflow at any temperature, 1 for ``D``. With
    ``log u = -E`` the ratio ``E_i / E_D`` is ``log u_i / log u_D``. ``1 / pi_i`` is capped at 1e30 (a weight
    of at most 1e-30 ** (1 / tau) either way)."""
    inv_pi = log_probs.neg().exp_().clamp_(max=1e30).unsqueeze(1)  # (C, 1, ...)
    scale = (inv_pi * (1 - hard)).unsqueeze(1)  # (C, 1, n, ...): 0 at the drawn class
    shape = (hard.shape[0], k, *hard.shape[1:])
    log_u = clamp_probs(torch.rand(shape, dtype=log_probs.dtype, device=log_probs.device)).log_()  # -E
    log_u_top = (log_u * hard.unsqueeze(1)).sum(0)  # -E_D: (k, n, ...)
    weights = log_u.mul_(scale).div_(log_u_top).add_(1).log_().mul_(-1 / tau).exp_()
    return weights.div_(weights.sum(0))


class _GumbelRaoJacobian(torch.autograd.Function):
    """Forward: ``hard`` (n, B, ...) as given, and the ``k`` conditional relaxed points drawn (no graph).
    Backward: the incoming gradient times their average Concrete Jacobian, summed over the draws, to the
    logits (B, ...) only. Binary: ``d sigma(s / tau) / dl`` averaged is one number per latent, kept;
    categorical: the relaxed points ``p`` (C, k, n, ...) are kept and ``J(p) v / tau``, ``J(p) = diag(p) -
    p p^T``, averaged in the backward pass (the log-softmax between the logits and the scores adds
    nothing: ``J(p) 1 = 0``)."""

    @staticmethod
    def forward(ctx, logits: Tensor, hard: Tensor, tau: Tensor, k: int, binary: bool) -> Tensor:
        ctx.binary, ctx.shape = binary, logits.shape
        if binary:  # sigma' is even: the margin (2b - 1)(l + L) serves for l + L
            y = conditional_margins((2 * hard - 1) * logits, k).div_(tau).sigmoid_()
            ctx.save_for_backward(torch.addcmul(y, y, y, value=-1).mean(0).div_(tau))  # (n, B, ...)
        else:
            ctx.tau = tau
            log_probs = logits.movedim(-1, 0).log_softmax(0)  # classes first: (C, B, ...)
            ctx.save_for_backward(conditional_softmax(log_probs, hard.movedim(-1, 0), k, tau))
        return hard

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (saved,) = ctx.saved_tensors
        if ctx.binary:
            return (grad * saved).sum_to_size(ctx.shape), None, None, None, None
        p, v = saved, grad.movedim(-1, 0).unsqueeze(1)  # (C, k, n, B, ...), (C, 1, n, B, ...)
        pv = p * v
        jv = pv.sub_(p * pv.sum(0)).sum((1, 2)).div_(p.shape[1] * ctx.tau)  # (C, B, ...)
        return jv.movedim(0, -1), None, None, None, None


def gumbel_rao(latents: Latents, hard: Tensor, tau: Tensor, k: int) -> Tensor:
    """``hard`` (n, B, ...) forward, the average of ``k`` conditional Concrete Jacobians backward (to the
    logits only: no gradient reaches ``tau``, which is a schedule's or the option's)."""
    return _GumbelRaoJacobian.apply(latents.logits, hard, tau.detach(), k, latents.kind == "binary")


@register
class GumbelRao(Pathwise):
    """Gumbel-Rao: a hard sample of ``q`` forward, ST-GS's Jacobian averaged over ``G | D`` backward."""

    name = "gumbel-rao"
    Options = GumbelRaoOptions

    def rsample(self, latents: Latents, n: int, tau: Tensor | float | None = None) -> Tensor:
        tau = self.temperature(tau, latents.logits)
        return gumbel_rao(latents, latents.sample(n), tau, self.options.mc)
