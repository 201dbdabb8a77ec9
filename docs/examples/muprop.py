r"""``muprop``: REINFORCE with the first-order Taylor expansion of ``f`` around the mean as its baseline.

Paper: Gu, Levine, Sutskever, Mnih (2016), "MuProp: Unbiased Backpropagation for Stochastic Neural
Networks", ICLR 2016, https://arxiv.org/abs/1511.05176.

With :math:`\mu_\phi = \mathbb{E}_q[z]` (:math:`\sigma(\phi)`, or the class probabilities), its value
:math:`\bar\mu` held fixed, and :math:`g = \nabla_z f(\bar\mu)` the gradient of ``f`` in its input there,

.. math::
    \hat\nabla = \frac1S \sum_s \Big(f(z_s) - f(\bar\mu) - g^\top (z_s - \bar\mu)\Big)
                 \nabla_\phi \log q_\phi(z_s) \;+\; g^\top \frac{\partial \mu_\phi}{\partial \phi}
                 \;+\; \frac1S \sum_s \nabla f(z_s),\qquad z_s \sim q_\phi.

The baseline :math:`f(\bar\mu) + g^\top (z - \bar\mu)`, the first-order Taylor expansion of ``f`` at the
mean, is linear in :math:`z`, so its score-function term has the mean
:math:`g^\top \partial\mu_\phi / \partial\phi`, which the second term adds back exactly: unbiased for any
``f``. For a linear ``f`` the baseline is ``f`` itself, and every estimate of the gradient for ``q``'s
logits is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from discrete_vae.estimators.base import Estimate, Estimator, Latents, Objective, call_f, register
from discrete_vae.estimators.double_cv import value_and_input_gradient
from discrete_vae.estimators.reinforce import score_surrogate


@register
class MuProp(Estimator):
    """MuProp: the score function of ``S`` draws, centred by ``f``'s Taylor expansion at the mean.

    - Samples: ``S`` exact draws per example, and ``f`` at the mean ``mu`` (off the discrete support).
    - Value: ``mean_s f(z_s)``, unbiased.
    - Gradient: unbiased; parameters inside ``f`` get ``mean_s grad f(z_s)``. No state, nothing shared
      across the batch.
    - Without a gradient to take for the logits (no grad mode), ``f`` is only evaluated at the draws.
    """

    name = "muprop"
    unbiased = True
    relaxed = True  # f is also evaluated at the mean
    cost = "n_samples + 1 evaluations of f and one of grad_z f (at the mean)"

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        z = latents.sample(n_samples)  # (S, B, ...)
        fz = call_f(f, z)  # (S, B)
        if not (torch.is_grad_enabled() and latents.logits.requires_grad):
            return Estimate(fz.mean(0), fz.detach().mean(0))
        mu = latents.probs()  # (B, ...), differentiable in the logits
        f_mu, g = value_and_input_gradient(f, mu.detach().unsqueeze(0))  # (1, B), (1, B, ...)
        baseline = f_mu.detach() + latents.sum_event(g * (z - mu.detach()))  # (S, B)
        signal = fz.detach() - baseline  # (S, B)
        mean_term = latents.sum_event(g[0] * (mu - mu.detach()))  # (B,): value 0, gradient g dmu/dphi
        surrogate = score_surrogate(fz, signal, latents.log_prob(z)) + mean_term  # (B,)
        return Estimate(surrogate, fz.detach().mean(0))

    def evaluations(self, n_samples: int, kind: str, shape: tuple[int, ...]) -> int:
        """``n_samples + 1``: ``f`` at each draw and at the mean."""
        return n_samples + 1
