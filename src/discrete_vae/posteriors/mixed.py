"""Mixed continuous-discrete latents: a Gaussian part beside any discrete posterior.

The latent is the concatenation ``[c, z]`` of ``D`` Gaussian coordinates ``c ~ N(m(x), s(x)^2)`` with
a standard normal prior and the discrete posterior's latents (flattened). Training sums the two KL terms
(closed form for the Gaussian with ``kl="analytic"``, else sampled); evaluation samples ``c`` and the
hard discrete ``z`` jointly, so the importance-weighted bound covers both parts as usual.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, constraints, kl_divergence

from ..priors import Prior
from .base import LatentSample, Posterior


class Concatenated(Distribution):
    """Independent parts whose events are flattened and concatenated: event (sum of sizes,)."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, parts: list[Distribution]):
        self.parts = parts
        self.sizes = [max(1, p.event_shape.numel()) for p in parts]
        super().__init__(parts[0].batch_shape, torch.Size([sum(self.sizes)]), validate_args=False)

    def _join(self, values: list[Tensor], sample_ndim: int) -> Tensor:
        lead = sample_ndim + len(self.batch_shape)
        return torch.cat([v.reshape(*v.shape[:lead], -1).to(values[0].dtype) for v in values], -1)

    def _split(self, value: Tensor) -> list[Tensor]:
        chunks = value.split(self.sizes, -1)
        return [c.reshape(*c.shape[:-1], *p.event_shape) for c, p in zip(chunks, self.parts, strict=True)]

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self._join([p.sample(sample_shape) for p in self.parts], len(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        return sum(p.log_prob(v) for p, v in zip(self.parts, self._split(value), strict=True))

    @property
    def mode(self) -> Tensor:
        return self._join([p.mode for p in self.parts], 0)


class ProductPrior(Prior):
    """Independent priors over consecutive slices of a flat latent (the mixed model's prior)."""

    def __init__(self, parts: list[Prior]):
        super().__init__()
        self.parts = torch.nn.ModuleList(parts)
        self.normalized = all(p.normalized for p in parts)

    def distribution(self) -> Concatenated:
        return Concatenated([p.distribution() for p in self.parts])

    def log_prob(self, z: Tensor) -> Tensor:
        return self.distribution().log_prob(z)

    def sample(self, n: int, persist: bool = True) -> Tensor:
        return self.distribution().sample((n,))


class GaussianPrior(Prior):
    """Standard normal prior over ``d`` continuous latents."""

    def __init__(self, d: int):
        super().__init__()
        self.d = d
        self.register_buffer("zero", torch.zeros(d))

    def distribution(self) -> Independent:
        return Independent(Normal(self.zero, torch.ones_like(self.zero), validate_args=False), 1)

    def log_prob(self, z: Tensor) -> Tensor:
        return self.distribution().log_prob(z)

    def sample(self, n: int, persist: bool = True) -> Tensor:
        return self.distribution().sample((n,))


class Mixed(Posterior):
    """``d`` Gaussian latents followed by the latents of ``discrete`` (a discrete family)."""

    def __init__(self, d: int, discrete: Posterior, kl: str = "analytic"):
        super().__init__()
        self.d, self.discrete, self.spec = d, discrete, discrete.spec
        self.analytic = kl in ("analytic", "auto")
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
        if self.analytic:
            kl_c = kl_divergence(q_c, p_c)  # (B,)
            kl = kl_c if kl is None else kl + kl_c
        else:
            log_q = q_c.log_prob(c) + (0 if log_q is None else log_q)
            log_p = p_c.log_prob(c) + (0 if log_p is None else log_p)
        return LatentSample(z, log_q=log_q, log_p=log_p, kl=kl)

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
