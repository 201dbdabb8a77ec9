r"""``vimco``: variational inference for Monte Carlo objectives, the multi-sample score-function estimator.

Paper: Mnih, Rezende (2016), "Variational inference for Monte Carlo objectives",
https://arxiv.org/abs/1602.06725.

For ``S`` independent draws :math:`z_s \sim q_\phi` and log-weights :math:`f_s = f(z_s)` (in a VAE,
:math:`\log p(x, z_s) - \log q(z_s \mid x)`), the objective is the importance-weighted bound

.. math:: \hat L = \log \frac1S \sum_s e^{f_s},

and its gradient is estimated by

.. math::
    \hat\nabla = \sum_s \hat L(z_s \mid z_{-s})\, \nabla_\phi \log q_\phi(z_s)
    + \sum_s \tilde w_s \nabla f_s,\qquad \tilde w_s = \frac{e^{f_s}}{\sum_j e^{f_j}},

.. math::
    \hat L(z_s \mid z_{-s}) = \hat L - \log \frac1S \Big(\sum_{j \ne s} e^{f_j} + e^{\hat f_{-s}}\Big),
    \qquad \hat f_{-s} = \frac{1}{S-1} \sum_{j \ne s} f_j,

i.e. each sample's learning signal is baselined by the bound with its own term replaced by the geometric
mean of the others' weights. The baseline does not depend on :math:`z_s`, so the estimator is unbiased for
:math:`\nabla\,\mathbb{E}[\hat L]`, the gradient of the IW objective (not of :math:`\mathbb{E}_q[f]`). The
second sum is :math:`\nabla \hat L` through the log-weights, which carries the gradient to parameters inside
``f`` (and to the logits where ``f`` depends on them, as through :math:`-\log q`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Estimate, Estimator, Latents, Objective, call_f, register
from .reinforce import score
from .rloo import leave_one_out_mean


def iw_bound(fz: Tensor) -> Tensor:
    """``log (1/S) sum_s exp f_s``: (S, B) -> (B,)."""
    return fz.logsumexp(0) - math.log(fz.shape[0])


def leave_one_out_bounds(fz: Tensor) -> Tensor:
    """``log (1/S) (sum_{j != s} exp f_j + exp mean_{j != s} f_j)`` for each ``s``: (S, B) -> (S, B)."""
    s = fz.shape[0]
    swap = torch.eye(s, dtype=torch.bool, device=fz.device).unsqueeze(-1)  # (S, S, 1): row s replaces f_s
    replaced = torch.where(swap, leave_one_out_mean(fz).unsqueeze(1), fz.unsqueeze(0))  # (S, S, B)
    return replaced.logsumexp(1) - math.log(s)


@register
class VIMCO(Estimator):
    """VIMCO (S >= 2 samples per example): the gradient of the importance-weighted bound.

    - Samples: ``S`` exact draws per example; ``f`` (a log-weight) is evaluated once on all of them.
    - Value: ``log mean_s exp f(z_s)``, the IW bound estimate (an unbiased estimate of the IW objective
      ``E[log mean_s exp f(z_s)]``, a lower bound on ``log E_q[exp f]``, not of ``E_q[f]``).
    - Gradient: per-sample leave-one-out signals (geometric-mean substitute) times ``grad log q(z_s)``, plus
      the normalised importance weights times ``grad f(z_s)``; unbiased for the IW objective's gradient.
      Per example: no state, nothing shared across the batch.
    """

    trains_iw_bound = True

    name = "vimco"
    unbiased = True
    min_samples = 2

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        z = latents.sample(n_samples)  # (S, B, ...)
        fz = call_f(f, z)  # (S, B)
        bound = iw_bound(fz)  # (B,), differentiable through f: sum_s w_s grad f_s
        signal = bound.detach() - leave_one_out_bounds(fz.detach())  # (S, B)
        surrogate = bound + (signal * score(latents.log_prob(z))).sum(0)  # (B,)
        return Estimate(surrogate, bound.detach())
