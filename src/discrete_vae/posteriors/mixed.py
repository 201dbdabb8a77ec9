"""Mixed continuous-discrete latents: a Gaussian part beside any discrete posterior.

The latent is the concatenation ``[c, z]`` of ``D`` Gaussian coordinates ``c ~ N(m(x), s(x)^2)`` with
a standard normal prior and the discrete posterior's latents (flattened); the prior is a
:class:`~discrete_vae.priors.ProductPrior` of a :class:`~discrete_vae.priors.GaussianPrior` and the
discrete prior. Training sums the two KL terms (closed form for the Gaussian with ``--kl analytic``, else
sampled); evaluation samples ``c`` and the hard discrete ``z`` jointly, so the importance-weighted bound
covers both parts as usual.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Independent, Normal, kl_divergence

from ..priors import ProductPrior
from ..priors.product import Concatenated
from .base import Posterior
from .kl import LatentSample, kl_kind


class Mixed(Posterior):
    """``d`` Gaussian latents followed by the latents of ``discrete`` (a discrete family)."""

    def __init__(self, d: int, discrete: Posterior, kl: str = "analytic"):
        super().__init__()
        self.d, self.discrete, self.spec = d, discrete, discrete.spec
        self.set_kl(kl)  # the Gaussian part's (auto: analytic)
        self.closed_form = kl_kind(self.kl).closed_form
        self.param_dim = 2 * d + discrete.param_dim
        self.decoder_dim = d + discrete.decoder_dim
        self.one_hot = discrete.one_hot
        self.relaxations = discrete.relaxations

    def _gaussian(self, params: Tensor) -> tuple[Independent, Tensor]:
        mean, log_std = params[..., : 2 * self.d].chunk(2, -1)
        return Independent(Normal(mean, log_std.exp(), validate_args=False), 1), params[..., 2 * self.d :]

    def relaxed(self, params: Tensor, prior: ProductPrior, tau: Tensor, n_samples: int,
                context: Tensor | None = None, straight_through: bool = False) -> LatentSample:
        q_c, rest = self._gaussian(params)
        p_c = prior.parts[0].distribution()
        c = q_c.rsample((n_samples,))  # (S, B, d)
        part = self.discrete.relaxed(rest, prior.parts[1], tau, n_samples, context=context,
                                     straight_through=straight_through)
        z = torch.cat([c, part.z], -1)
        kl, log_q, log_p = part.kl, part.log_q, part.log_p
        if self.closed_form:
            kl_c = kl_divergence(q_c, p_c)  # (B,)
            kl = kl_c if kl is None else kl + kl_c
        else:
            log_q = q_c.log_prob(c) + (0 if log_q is None else log_q)
            log_p = p_c.log_prob(c) + (0 if log_p is None else log_p)
        return LatentSample(z, log_q=log_q, log_p=log_p, kl=kl)

    def check_relaxation(self, prior: ProductPrior) -> None:
        self.discrete.check_relaxation(prior.parts[1])

    def discrete_posterior(self, params: Tensor, context: Tensor | None = None) -> Concatenated:
        q_c, rest = self._gaussian(params)
        return Concatenated([q_c, self.discrete.discrete_posterior(rest, context=context)])

    def stats(self) -> dict[str, float]:
        return self.discrete.stats()

    def decoder_input(self, z: Tensor) -> Tensor:
        c, rest = z[..., : self.d], z[..., self.d :]
        if self.discrete.one_hot:
            rest = rest.reshape(*rest.shape[:-1], self.spec.n, self.spec.k)
        return torch.cat([c, self.discrete.decoder_input(rest)], -1)
