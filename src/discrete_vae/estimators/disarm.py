r"""``disarm``: ARM with the augmenting uniform integrated out (Rao-Blackwellised), binary and categorical.

Binary: Dong, Mnih & Tucker (2020), "DisARM: An Antithetic Gradient Estimator for Binary Latent Variables",
NeurIPS 2020, https://arxiv.org/abs/2006.10680. With the antithetic pair of ``arm``,
:math:`b = 1[u < \sigma(\phi)]`, :math:`\tilde b = 1[u > \sigma(-\phi)]`,

.. math::
    \hat\nabla_{\phi_i} = \tfrac12\big(f(b) - f(\tilde b)\big)\,(-1)^{\tilde b_i}\,
    1[b_i \ne \tilde b_i]\,\sigma(|\phi_i|)
    \;=\; \mathbb{E}\big[\mathrm{ARM}_i \mid b, \tilde b\big],

so its variance is never above ARM's (Rao-Blackwell), at the same cost (one pair, two evaluations of f).

Categorical: Dong, Mnih & Tucker (2021), "Coupled Gradient Estimators for Discrete Latent Variables",
NeurIPS 2021, https://arxiv.org/abs/2106.08056, the stick-breaking coupling (the reference code's
``grad_type=disarm, stick_breaking``; not its importance-weighted or tree variants). A categorical ``z`` over
``K`` classes is the first success of ``K - 1`` independent bits,
:math:`b_i \sim \mathrm{Bernoulli}(\sigma(\alpha_i))`,
:math:`\alpha_i = \phi_i - \log\sum_{j > i} e^{\phi_j}` (``z = K`` if none), and the pair shares
:math:`u \in U(0,1)^{K-1}`. With :math:`z, \tilde z` the two classes, bit ``i`` is *used* by a chain when
:math:`i \le z` and

.. math::
    \hat\nabla_{\alpha_i} = \tfrac12\big(f(z) - f(\tilde z)\big)\Big[
    1[i \le \min(z, \tilde z)]\,(-1)^{\tilde b_i} 1[b_i \ne \tilde b_i]\,\sigma(|\alpha_i|)
    + 1[\tilde z < i \le z]\,(b_i - \sigma(\alpha_i))
    - 1[z < i \le \tilde z]\,(\tilde b_i - \sigma(\alpha_i))\Big]

(DisARM on the bits both chains use; REINFORCE with the other chain's value as baseline on bits only one
uses; bits neither uses are integrated out). The gradient reaches :math:`\phi` through
:math:`\alpha(\phi)`. ``order`` sorts the classes by their logits before the construction (the estimator
stays unbiased for any order; the reference runs use ``ascending``).

``n_samples`` as for ``arm``: an even count of evaluations of ``f``, ``n_samples / 2`` pairs averaged, one
call of ``f`` per estimate; the surrogate adds the mean of ``f`` for its pathwise gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError
from .arm import Antithetic, antithetic_bits, evaluate_pairs, pad_like, score_estimate, uniform
from .base import Estimate, Latents, Objective, register

ORDERS = ("none", "ascending", "descending")


@dataclass(frozen=True)
class DisARMOptions:
    order: str = field(default="none", metadata={
        "help": "categorical only: class order of the stick-breaking construction, by logit "
                "(none, ascending, descending)"})

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ConfigError(f"--order must be one of {', '.join(ORDERS)}, got {self.order!r}")


def disarm_weight(logits: Tensor, b: Tensor, b_anti: Tensor) -> Tensor:
    """``(-1)^{b~} 1[b != b~] sigma(|l|)`` per pair and coordinate: (P, ...)."""
    return (1 - 2 * b_anti) * (b != b_anti).to(b.dtype) * torch.sigmoid(logits.abs())


def stick_breaking_logits(logits: Tensor) -> Tensor:
    """``alpha_i = l_i - logsumexp_{j > i} l_j``: (..., K) -> (..., K - 1); ``sigma(alpha_i)`` is the
    probability of class ``i`` given a class ``>= i``."""
    tail = logits.flip(-1).logcumsumexp(-1).flip(-1)  # (..., K): logsumexp_{j >= i} l_j
    return logits[..., :-1] - tail[..., 1:]


@torch.no_grad()
def first_success(bits: Tensor) -> tuple[Tensor, Tensor]:
    """The one-hot class of stick-breaking bits (..., K - 1) -> (..., K) (class ``K`` if no bit is set), and
    which bits the class used, ``i <= z`` (..., K - 1)."""
    ones = torch.ones_like(bits[..., :1])
    extended = torch.cat([bits, ones], -1)  # (..., K)
    one_hot = extended * (extended.cumsum(-1) == 1)  # (..., K)
    used = (bits.cumsum(-1) - bits) == 0  # (..., K - 1): no success before i
    return one_hot, used


@register
class DisARM(Antithetic):
    """DisARM: ARM Rao-Blackwellised over its uniform (unbiased); categorical by stick-breaking."""

    name = "disarm"
    supports = ("binary", "categorical")
    Options = DisARMOptions

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        if latents.kind == "binary":
            return self.binary(latents, f, n_samples // 2)
        return self.stick_breaking(latents, f, n_samples // 2)

    def binary(self, latents: Latents, f: Objective, pairs: int) -> Estimate:
        logits = latents.logits  # (B, ...)
        u = uniform(logits, pairs)  # (P, B, ...)
        b, b_anti = antithetic_bits(logits.detach(), u)  # (P, B, ...) each
        f_all, f_b, f_anti = evaluate_pairs(f, b, b_anti)
        diff = pad_like(f_b - f_anti, u)  # (P, B, 1, ...)
        grad = (0.5 * diff * disarm_weight(logits.detach(), b, b_anti)).mean(0)  # (B, ...)
        return score_estimate(latents, f_all, logits, grad)

    def stick_breaking(self, latents: Latents, f: Objective, pairs: int) -> Estimate:
        logits, perm = self.sorted(latents.logits)  # (B, ..., K) each
        alpha = stick_breaking_logits(logits)  # (B, ..., K-1)
        a = alpha.detach()
        u = uniform(alpha, pairs)  # (P, B, ..., K-1)
        b, b_anti = antithetic_bits(a, u)  # (P, B, ..., K-1) each
        (z, used), (z_anti, used_anti) = first_success(b), first_success(b_anti)  # (P, B, ..., K) one-hot
        index = perm.expand_as(z)  # sorted position k holds class perm[k]
        z, z_anti = (torch.zeros_like(t).scatter_(-1, index, t) for t in (z, z_anti))
        f_all, f_b, f_anti = evaluate_pairs(f, z, z_anti)
        diff = pad_like(f_b - f_anti, u)  # (P, B, 1, ..., 1)
        both, only, only_anti = used & used_anti, used & ~used_anti, ~used & used_anti
        p = torch.sigmoid(a)
        weight = (both * disarm_weight(a, b, b_anti) + only * (b - p)
                  - only_anti * (b_anti - p))  # (P, B, ..., K-1)
        grad = (0.5 * diff * weight).mean(0)  # (B, ..., K-1)
        return score_estimate(latents, f_all, alpha, grad)

    def sorted(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """The logits in the construction's class order and the permutation (sorted -> original)."""
        if self.options.order == "none":
            perm = torch.arange(logits.shape[-1], device=logits.device).expand_as(logits)
        else:
            perm = logits.detach().argsort(-1, descending=self.options.order == "descending")
        return logits.gather(-1, perm), perm
