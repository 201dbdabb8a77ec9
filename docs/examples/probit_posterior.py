r"""``probit``: factorial Bernoulli latents with a probit link, relaxed through their Gaussian pre-image.

.. math::
    q(z_n = 1 \mid x) = \Phi(\mu_n(x)),\qquad
    \zeta_n = \sigma(\kappa_n / \tau),\quad \kappa_n \sim \mathcal N(\mu_n, 1)

- Hard samples: :math:`z_n = 1[\kappa_n > 0]`, which is Bernoulli(:math:`\Phi(\mu_n)`); ``log_prob`` is
  the Bernoulli's. Every estimator of binary latents works on it (``discrete_posterior`` is a factorial
  Bernoulli).
- Relaxation: :math:`\zeta_n \to 1[\kappa_n > 0]` as :math:`\tau \to 0`, pathwise in :math:`\mu` (the
  two-class case of the IGR's Gaussian pre-image, Potapczynski et al. 2020,
  https://arxiv.org/abs/1912.09588, with the probit's unit scale).
- KL: the exact Bernoulli KL between :math:`\Phi(\mu)` and a Bernoulli prior, registered for the pair, as
  in Jang et al.'s analytic-KL relaxed objective.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from discrete_vae.distributions import HardBernoulli
from discrete_vae.errors import ConfigError
from discrete_vae.posteriors import POSTERIORS, LatentSpec, Posterior
from discrete_vae.posteriors.base import PosteriorType
from discrete_vae.posteriors.kl import register_kl
from discrete_vae.priors import BernoulliPrior


def probit_logits(mu: Tensor) -> Tensor:
    """The Bernoulli logits of :math:`\\Phi(\\mu)`: :math:`\\log\\Phi(\\mu) - \\log\\Phi(-\\mu)`, finite for
    any :math:`\\mu` (``special.log_ndtr``)."""
    return torch.special.log_ndtr(mu) - torch.special.log_ndtr(-mu)


class ProbitDraw(NamedTuple):
    """A relaxed draw: the decoder's inputs (S, B, N) and the encoder's outputs (B, N)."""

    z: Tensor
    params: Tensor


class ProbitBinary(Posterior):
    """``N`` binary latents; the encoder's outputs are the probit means ``mu`` (B, N)."""

    factorial = True  # discrete_posterior is an Independent Bernoulli: every binary estimator applies
    one_hot = False

    def __init__(self, spec: LatentSpec, **_: object):
        super().__init__()
        if not spec.binary:
            raise ConfigError(f"the probit posterior has binary latents: give --latent N --binary, not "
                              f"{spec}")
        self.spec, self.param_dim, self.decoder_dim = spec, spec.n, spec.n

    def discrete_posterior(self, params: Tensor, context: Tensor | None = None) -> Independent:
        return Independent(HardBernoulli(logits=probit_logits(params), validate_args=False), 1)

    def draw_relaxed(self, params: Tensor, tau: Tensor, n_samples: int, context: Tensor | None = None,
                     straight_through: bool = False) -> ProbitDraw:
        kappa = Normal(params, 1.0).rsample((n_samples,))  # (S, B, N)
        return ProbitDraw(torch.sigmoid(kappa / tau), params)  # the KL: the registered pair's closed form

    def decoder_input(self, z: Tensor) -> Tensor:
        return z


@register_kl(ProbitBinary, BernoulliPrior)
def _kl_probit(posterior: ProbitBinary, params: Tensor, prior: BernoulliPrior) -> Tensor:
    """``KL(Bernoulli(Phi(mu)) || Bernoulli(sigmoid(m)))`` summed over the latents: (B,)."""
    q, m = probit_logits(params), prior.logits
    softplus = torch.nn.functional.softplus
    p1 = torch.sigmoid(q)
    return (p1 * (softplus(-m) - softplus(-q)) + (1 - p1) * (softplus(m) - softplus(q))).sum(-1)


POSTERIORS.register("probit")(PosteriorType(ProbitBinary, family="probit (Gaussian pre-image)"))
