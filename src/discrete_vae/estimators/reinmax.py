r"""``reinmax``: second-order accurate straight-through (Heun's method).

Paper: Liu, Dong, Liu, Yu, Gao (2023), *Bridging Discrete and Backpropagation: Straight-Through and
Beyond* (NeurIPS 2023), https://arxiv.org/abs/2304.08612; reference code https://github.com/microsoft/ReinMax.

.. math::
    D \sim \mathrm{Cat}(\pi_0),\ \ \pi_0 = \mathrm{softmax}(\theta),\ \
    \pi_1 = \tfrac12\big(D + \mathrm{softmax}(\theta / \tau)\big);\qquad
    \frac{\partial z}{\partial\theta} = 2\,J(\pi_1) - \tfrac12\,J(\pi_0),\quad
    J(p) = \mathrm{diag}(p) - p p^\top

(forward ``z = D``, as in the authors' code). The paper reads straight-through as the forward Euler (first
order) approximation of :math:`f(I_i) - f(I_j)` in :math:`\nabla\mathbb{E}[f] = \sum_{i,j}\pi_j (f(I_i) -
f(I_j)) \nabla\pi_i` and ReinMax as Heun's (trapezoid) rule :math:`\tfrac12(\nabla f(I_i) + \nabla
f(I_j))(I_i - I_j)`, second-order accurate. Hence at :math:`\tau = 1` (our derivation, tested) the gradient is
unbiased for ``f`` of degree at most two in each latent variable, linear included.

Binary latents are the two-class case :math:`\theta = (0, l)`, :math:`z = D_1 = b`:
:math:`\partial z / \partial l = 2 a (1 - a) - \tfrac12 \sigma(l)(1 - \sigma(l))`,
:math:`a = \tfrac12 (b + \sigma(l / \tau))`. The paper and its code take :math:`\tau \ge 1` (default 1);
the option is checked, a schedule's ``tau`` is taken as given. No gradient reaches :math:`\tau`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Latents, Pathwise, class_softmax, register


@dataclass(frozen=True)
class ReinMaxOptions:
    temperature: float = field(default=1.0, metadata={"help": "tau of the midpoint softmax(logits / tau), "
                                                      "at least 1 as in the paper (a schedule overrides it)"})

    def __post_init__(self) -> None:
        if not self.temperature >= 1:
            raise ConfigError(f"--temperature of reinmax must be at least 1 (the paper's range), "
                              f"got {self.temperature}")


def softmax_jacobian_product(p: Tensor, v: Tensor) -> Tensor:
    """``J(p) v`` with ``J(p) = diag(p) - p p^T`` (last dimension; ``J`` is symmetric)."""
    pv = p * v
    return pv - p * pv.sum(-1, keepdim=True)


class _ReinMaxJacobian(torch.autograd.Function):
    """Forward: ``hard`` (n, B, ...) as given. Backward: the incoming gradient times the ReinMax Jacobian,
    summed over the draws, to the logits (B, ...) only; the Jacobian is computed in the backward pass from
    the detached logits (a constant, as the straight-through family's), not stored as a graph."""

    @staticmethod
    def forward(ctx, logits: Tensor, hard: Tensor, tau: Tensor, binary: bool) -> Tensor:
        ctx.save_for_backward(logits.detach(), hard, tau.detach())
        ctx.binary = binary
        return hard

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        logits, hard, tau = ctx.saved_tensors
        shape = logits.shape  # the draws' gradients are summed into it
        if ctx.binary:  # dz/dl = 2 a (1 - a) - p (1 - p) / 2
            a = 0.5 * (hard + torch.sigmoid(logits / tau))  # (n, B, ...): pi_1 of class 1
            p = torch.sigmoid(logits)  # (B, ...)
            out = (grad * (2 * a * (1 - a))).sum_to_size(shape) - 0.5 * p * (1 - p) * grad.sum_to_size(shape)
            return out, None, None, None
        tau = tau if tau.dim() == 0 else tau.unsqueeze(-1)  # () or (B, ..., 1)
        pi_0 = class_softmax(logits)  # (B, ..., K)
        pi_1 = 0.5 * (hard + class_softmax(logits / tau))  # (n, B, ..., K)
        out = (2 * softmax_jacobian_product(pi_1, grad).sum_to_size(shape)
               - 0.5 * softmax_jacobian_product(pi_0, grad.sum_to_size(shape)))
        return out, None, None, None


def reinmax(latents: Latents, hard: Tensor, tau: Tensor) -> Tensor:
    """``hard`` (n, B, ...) forward, the ReinMax Jacobian backward (pathwise in the logits only)."""
    return _ReinMaxJacobian.apply(latents.logits, hard, tau, latents.kind == "binary")


@register
class ReinMax(Pathwise):
    """ReinMax: a hard sample of ``q`` forward, a Heun-corrected straight-through Jacobian backward."""

    name = "reinmax"
    Options = ReinMaxOptions

    def rsample(self, latents: Latents, n: int, tau: Tensor | float | None = None) -> Tensor:
        return reinmax(latents, latents.sample(n), self.temperature(tau, latents.logits))
