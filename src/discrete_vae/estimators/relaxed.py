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

from .base import Pathwise, register


@register
class Relaxed(Pathwise):
    """``f`` at ``q.rsample()``: pathwise through the relaxation ``q`` itself."""

    name = "relaxed"
    supports = ("relaxation",)
    relaxed = True
    draws_relaxations = True
