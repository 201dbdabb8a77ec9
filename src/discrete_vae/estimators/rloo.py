r"""``rloo``: REINFORCE with the leave-one-out baseline of the other samples.

Paper: Kool, van Hoof, Welling (2019), "Buy 4 REINFORCE samples, get a baseline for free!",
https://openreview.net/forum?id=r1lgTGL5DE.

.. math::
    \hat\nabla &= \frac1S \sum_s \Big(f(z_s) - \frac{1}{S-1}\sum_{j \ne s} f(z_j)\Big)
                  \nabla_\phi \log q_\phi(z_s) + \nabla f(z_s) \\
               &= \frac{1}{S-1} \sum_s \big(f(z_s) - \bar f\big)\nabla_\phi \log q_\phi(z_s)
                  + \frac1S \sum_s \nabla f(z_s)

with :math:`z_1, \dots, z_S \sim q_\phi` independent and :math:`\bar f` their mean. Each sample's baseline
comes from the other samples of the same example, which are independent of it, so the estimator is unbiased
and needs :math:`S \ge 2`; nothing is shared across the batch and there is no state.
"""

from __future__ import annotations

from torch import Tensor

from .base import Estimate, Estimator, Latents, Objective, call_f, register
from .reinforce import score_surrogate


def leave_one_out_mean(x: Tensor) -> Tensor:
    """``mean_{j != s} x_j`` for each ``s`` along the first dimension: (S, B) -> (S, B)."""
    return (x.sum(0, keepdim=True) - x) / (x.shape[0] - 1)


@register
class RLOO(Estimator):
    """REINFORCE leave-one-out (S >= 2 samples per example).

    - Samples: ``S`` exact draws per example; ``f`` is evaluated once on all of them.
    - Value: ``mean_s f(z_s)``, unbiased.
    - Gradient: ``(f(z_s) - mean_{j != s} f(z_j)) grad log q(z_s)`` plus ``grad f(z_s)``, averaged over
      samples; unbiased. Per example: no state, nothing shared across the batch.
    """

    name = "rloo"
    unbiased = True
    min_samples = 2

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        z = latents.sample(n_samples)  # (S, B, ...)
        fz = call_f(f, z)  # (S, B)
        signal = fz.detach() - leave_one_out_mean(fz.detach())  # (S, B)
        return Estimate(score_surrogate(fz, signal, latents.log_prob(z)), fz.detach().mean(0))
