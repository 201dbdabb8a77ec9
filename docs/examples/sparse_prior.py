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
from dataclasses import dataclass, field

from discrete_vae.errors import ConfigError
from discrete_vae.priors import PRIORS, BernoulliPrior, Prior, PriorType


class SparseBernoulliPrior(BernoulliPrior):
    """``N`` independent Bernoulli(``p``) latents; ``p`` is fixed (its logits are a buffer, not trained)."""

    def __init__(self, n: int, p: float):
        super().__init__(n, learnable=False)
        self.p = p
        self.logits.fill_(math.log(p) - math.log1p(-p))  # (N,) logit(p)


@dataclass(frozen=True)
class SparseOptions:
    """``--p``: each latent's probability of being on (``dvae train --help`` shows it in the group
    ``prior sparse``)."""

    p: float = field(default=0.1, metadata={"help": "the probability that a latent is on"})

    def __post_init__(self) -> None:
        if not 0.0 < self.p < 1.0:
            raise ConfigError(f"--p must lie strictly between 0 and 1, got {self.p}")


def sparse(n: int, k: int, binary: bool, p: float) -> Prior:
    """The prior over ``n`` binary latents."""
    if not binary:
        raise ConfigError("the sparse prior is over binary latents: use --latent N --binary (or Nx2)")
    return SparseBernoulliPrior(n, p)


PRIORS.register("sparse")(PriorType(sparse, SparseOptions))
