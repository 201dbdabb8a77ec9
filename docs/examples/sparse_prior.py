r"""``sparse``: a factorial Bernoulli prior that turns each binary latent on with a fixed probability ``p``.

.. math:: p(z) = \prod_{n=1}^N p^{z_n} (1 - p)^{1 - z_n},\qquad z \in \{0, 1\}^N

``p = 1/2`` is the ``uniform`` prior. Each latent that is on adds :math:`\log\frac{1-p}{p}` nats to
:math:`-\log p(z)` over one that is off (2.2 nats at ``p = 0.1``), so the KL term asks the posterior for
sparse codes.

It is a :class:`~discrete_vae.priors.BernoulliPrior` whose logits are the constant
:math:`\log\frac{p}{1-p}`: it inherits ``log_prob``, ``sample``, ``distribution`` and the binary Concrete
``relaxed``, and the analytic KL registered for ``(ConcreteBinary, BernoulliPrior)``
(:mod:`discrete_vae.posteriors.kl` finds pairs by the classes' method resolution order).
"""

from __future__ import annotations

import math

from discrete_vae.errors import ConfigError
from discrete_vae.priors import PRIORS, BernoulliPrior, Prior

P = 0.1  # the probability of a latent being on, unless the factory is given another


class SparseBernoulliPrior(BernoulliPrior):
    """``N`` independent Bernoulli(``p``) latents; ``p`` is fixed (its logits are a buffer, not trained)."""

    def __init__(self, n: int, p: float = P):
        if not 0.0 < p < 1.0:
            raise ConfigError(f"the sparse prior's p must lie strictly between 0 and 1, got {p}")
        super().__init__(n, learnable=False)
        self.p = p
        self.logits.fill_(math.log(p) - math.log1p(-p))  # (N,) logit(p)


@PRIORS.register("sparse")
def sparse(n: int, k: int, binary: bool, p: float = P, **_: object) -> Prior:
    """``--prior sparse`` over ``n`` binary latents. The other keywords (the RBM's sampler settings, which
    the model builder passes to every prior) do not apply."""
    if not binary:
        raise ConfigError("the sparse prior is over binary latents: use --latent N --binary (or Nx2)")
    return SparseBernoulliPrior(n, p)
