r"""``arm``: Augment-REINFORCE-Merge, an antithetic estimator for binary latents.

Paper: Yin & Zhou (2019), "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks",
https://arxiv.org/abs/1807.11143 (ICLR 2019).

For :math:`z \sim \mathrm{Bernoulli}(\sigma(\phi))` (each coordinate independent) and one uniform
:math:`u \sim U(0, 1)^N` per pair,

.. math::
    b = 1[u < \sigma(\phi)],\quad \tilde b = 1[u > \sigma(-\phi)],\qquad
    \hat\nabla_\phi = \big(f(\tilde b) - f(b)\big)\,\big(u - \tfrac12\big)

(per coordinate; :math:`b` and :math:`\tilde b` are both exact draws of ``q``, negatively correlated).
``n_samples`` counts evaluations of ``f``: it must be even, ``n_samples / 2`` antithetic pairs are averaged,
and the value is the mean of all ``n_samples`` evaluations. Both members of every pair go through one call of
``f`` (stacked along the sample dimension). The surrogate adds the mean of ``f`` itself, so parameters inside
``f`` (and any dependence of ``f`` on the logits) get the pathwise part of the gradient.

Binary only: the ARM paper gives no categorical form. Its categorical counterpart, ARSM (Yin, Yue & Zhou
2019, https://arxiv.org/abs/1905.01413), is a different method that evaluates ``f`` at up to
:math:`K(K-1)/2 + 1` swapped pseudo-actions per draw; it is not implemented, so a categorical ``q`` is one
:class:`ConfigError`. For categorical latents use ``disarm`` (stick-breaking form).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Estimate, Estimator, Latents, Objective, call_f, register


class Antithetic(Estimator):
    """Estimators that evaluate ``f`` on antithetic pairs ``(b, b~)`` drawn from one uniform:
    ``n_samples`` (the evaluations of ``f``) must be even."""

    unbiased = True
    min_samples = 2
    min_samples_are = "one antithetic pair"

    def check(self, kind: str, n_samples: int) -> None:
        super().check(kind, n_samples)
        if n_samples % 2:
            raise ConfigError(f"estimator {self.name} evaluates f in antithetic pairs: n_samples must be "
                              f"even, got {n_samples}")


def uniform(logits: Tensor, pairs: int) -> Tensor:
    """One uniform per pair and per logit: (P, *logits.shape)."""
    return torch.rand((pairs, *logits.shape), dtype=logits.dtype, device=logits.device)


@torch.no_grad()
def antithetic_bits(logits: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """``b = 1[u < sigma(l)]`` and ``b~ = 1[u > sigma(-l)]`` (= ``1[1 - u < sigma(l)]``), both (P, ...)."""
    return (u < torch.sigmoid(logits)).to(u.dtype), (u > torch.sigmoid(-logits)).to(u.dtype)


def evaluate_pairs(f: Objective, z: Tensor, z_anti: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``f`` on both members of every pair in one call: ``(f_all (2P, B) differentiable,
    f(z) (P, B), f(z~) (P, B))``, the last two detached."""
    f_all = call_f(f, torch.cat([z, z_anti]))  # (2P, B)
    f_z, f_anti = f_all.detach().chunk(2)  # (P, B) each
    return f_all, f_z, f_anti


def pad_like(t: Tensor, like: Tensor) -> Tensor:
    """``t`` (P, B) with trailing singleton dimensions to broadcast against ``like`` (P, B, ...)."""
    return t.view(*t.shape, *(1,) * (like.dim() - t.dim()))


def score_estimate(latents: Latents, f_all: Tensor, params: Tensor, grad: Tensor) -> Estimate:
    """``surrogate = mean f + sum(grad * (params - stop(params)))``: its value is the mean of ``f``, its
    gradient ``grad`` (B, ...) with respect to ``params`` (B, ...) plus the pathwise gradient of ``f``."""
    value = f_all.mean(0)  # (B,)
    score = latents.sum_event(grad.detach() * (params - params.detach()))  # (B,)
    return Estimate(value + score, value.detach())


@register
class ARM(Antithetic):
    """Augment-REINFORCE-Merge: ``(f(b~) - f(b)) (u - 1/2)`` over antithetic pairs (unbiased)."""

    name = "arm"
    unsupported = "categorical: ARM has no categorical form (ARSM is another method); disarm has one"
    supports = ("binary",)

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        logits = latents.logits  # (B, ...)
        u = uniform(logits, n_samples // 2)  # (P, B, ...)
        b, b_anti = antithetic_bits(logits.detach(), u)  # (P, B, ...) each
        f_all, f_b, f_anti = evaluate_pairs(f, b, b_anti)
        diff = pad_like(f_anti - f_b, u)  # (P, B, 1, ...)
        grad = (diff * (u - 0.5)).mean(0)  # (B, ...)
        return score_estimate(latents, f_all, logits, grad)
