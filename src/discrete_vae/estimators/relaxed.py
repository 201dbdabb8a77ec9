r"""``relaxed``: the reparameterisation gradient through a distribution's own relaxation.

.. math:: \hat\nabla = \nabla_\phi f(g_\phi(\epsilon)),\qquad z = g_\phi(\epsilon) \sim q_\phi

For ``q`` any ``torch.distributions`` object with ``rsample`` — a relaxation such as
:class:`~torch.distributions.RelaxedBernoulli`, :class:`~torch.distributions.RelaxedOneHotCategorical`,
the IGR distributions (Potapczynski et al. 2020, https://arxiv.org/abs/1912.09588) or a DVAE smoothing
(Vahdat et al. 2018, https://arxiv.org/abs/1805.07445). ``f`` sees the relaxed sample, so for the
discrete model the estimate is biased. In ``dvae train`` it is the estimator of posteriors that carry their
own relaxation (IGR, DVAE smoothings); for categorical and Bernoulli posteriors use ``gs`` or ``st-gs``.
"""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Distribution

from ..errors import ConfigError
from .base import Estimate, Estimator, Objective, call_f, check_estimate, checked_f, register


@register
class Relaxed(Estimator):
    """``f`` at ``q.rsample()``: pathwise through the relaxation ``q`` itself."""

    name = "relaxed"
    supports = ("relaxation",)
    relaxed = True

    def forward(self, q: Distribution, f: Objective, n_samples: int = 1, *, tau: Tensor | float | None = None,
                context: Tensor | None = None, check: bool = False) -> Estimate:
        if not q.has_rsample:
            raise ConfigError(f"estimator relaxed needs a distribution with rsample (a relaxation), not "
                              f"{type(q).__name__}; for Bernoulli or categorical q use gs or st-gs")
        self.check("relaxation", n_samples)
        value = call_f(checked_f(f) if check else f, q.rsample((n_samples,))).mean(0)
        estimate = Estimate(value, value.detach())
        return check_estimate(self.name, estimate) if check else estimate
