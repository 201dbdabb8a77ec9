"""Gumbel-Softmax (Concrete) latent families: ``gs`` and straight-through ``st-gs``.

Papers: Jang, Gu, Poole (2017) https://arxiv.org/abs/1611.01144 and Maddison, Mnih, Teh (2017)
https://arxiv.org/abs/1611.00712.

- ``kl="analytic"``: the decoder sees the relaxed (or ST one-hot) sample; the KL term is the
  exact categorical KL between posterior and prior probabilities (Jang et al.).
- ``kl="relaxed"``: a single-sample Monte Carlo KL between the ExpConcrete posterior at ``tau`` and
  the relaxed prior at ``prior_temperature`` (Maddison et al.); with it the training objective is a
  bound on the *relaxed* model's likelihood, never on the discrete model's.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Independent, OneHotCategorical, kl_divergence

from ..distributions import (
    ExpConcrete,
    LogitBinaryConcrete,
    straight_through_binary,
    straight_through_one_hot,
)
from ..errors import ConfigError
from ..priors import Prior
from .base import LATENT_FAMILIES, LatentFamily, LatentSample, LatentSpec

KL_KINDS = ("analytic", "relaxed")
EXPGS_PRIOR_TEMPERATURE = 0.5


class _Concrete(LatentFamily):
    def __init__(
        self,
        spec: LatentSpec,
        straight_through: bool = False,
        kl: str = "auto",
        prior_temperature: float | None = None,
        **_: object,
    ):
        super().__init__()
        if kl == "auto":
            kl = "analytic"
        if kl not in KL_KINDS:
            raise ConfigError(f"--kl must be one of {', '.join(KL_KINDS)}, got {kl!r}")
        self.spec = spec
        self.straight_through = straight_through
        self.kl = kl
        self.prior_temperature = prior_temperature

    def _prior_tau(self, tau: Tensor) -> Tensor | float:
        return tau.detach() if self.prior_temperature is None else self.prior_temperature


class ConcreteCategorical(_Concrete):
    """``N`` categorical latents of ``K`` classes relaxed by Gumbel-Softmax; params are logits."""

    def __init__(self, spec: LatentSpec, **options):
        super().__init__(spec, **options)
        self.param_dim = self.decoder_dim = spec.n * spec.k

    def _logits(self, params: Tensor) -> Tensor:
        return params.view(*params.shape[:-1], self.spec.n, self.spec.k)  # (B, N, K)

    def relaxed(self, params: Tensor, prior: Prior, tau: Tensor, n_samples: int,
                context: Tensor | None = None) -> LatentSample:
        logits = self._logits(params)
        q = ExpConcrete(tau, logits, validate_args=False)
        y = q.rsample((n_samples,))  # (S, B, N, K) log-space
        z = straight_through_one_hot(y) if self.straight_through else y.exp()
        z = z.flatten(-2)  # (S, B, N*K)
        if self.kl == "analytic":  # sum_n sum_k q_nk (log q_nk - log p_nk), exactly
            log_q = q.logits  # (B, N, K), normalised
            kl = (log_q.exp() * (log_q - prior.log_probs())).sum((-2, -1))  # (B,)
            return LatentSample(z, kl=kl)
        log_q = q.log_prob(y).sum(-1)  # (S, B)
        log_p = prior.relaxed(self._prior_tau(tau)).log_prob(y)  # (S, B)
        return LatentSample(z, log_q=log_q, log_p=log_p)

    def discrete_posterior(self, params: Tensor, context: Tensor | None = None) -> Independent:
        return Independent(OneHotCategorical(logits=self._logits(params), validate_args=False), 1)

    def decoder_input(self, z: Tensor) -> Tensor:
        return z.flatten(-2)  # one-hot (..., N, K) -> (..., N*K)


class ConcreteBinary(_Concrete):
    """``N`` Bernoulli latents relaxed by the binary Concrete; params are Bernoulli logits."""

    def __init__(self, spec: LatentSpec, **options):
        super().__init__(spec, **options)
        self.param_dim = self.decoder_dim = spec.n
        self.one_hot = False

    def relaxed(self, params: Tensor, prior: Prior, tau: Tensor, n_samples: int,
                context: Tensor | None = None) -> LatentSample:
        q = LogitBinaryConcrete(tau, params, validate_args=False)
        y = q.rsample((n_samples,))  # (S, B, N) logit-space
        z = straight_through_binary(y) if self.straight_through else torch.sigmoid(y)
        if self.kl == "analytic":
            posterior = self.discrete_posterior(params)
            # torch's Bernoulli KL does not broadcast batch shapes: expand the prior to (B,)
            kl = kl_divergence(posterior, prior.distribution().expand(posterior.batch_shape))
            return LatentSample(z, kl=kl)  # kl: (B,)
        log_q = q.log_prob(y).sum(-1)  # (S, B)
        log_p = prior.relaxed(self._prior_tau(tau)).log_prob(y)  # (S, B)
        return LatentSample(z, log_q=log_q, log_p=log_p)

    def discrete_posterior(self, params: Tensor, context: Tensor | None = None) -> Independent:
        return Independent(Bernoulli(logits=params, validate_args=False), 1)

    def decoder_input(self, z: Tensor) -> Tensor:
        return z


def _concrete_family(straight_through: bool):
    def build(spec: LatentSpec, **options) -> LatentFamily:
        cls = ConcreteBinary if spec.binary else ConcreteCategorical
        return cls(spec, straight_through=straight_through, **options)

    return build


LATENT_FAMILIES.register("gs")(_concrete_family(straight_through=False))
LATENT_FAMILIES.register("st-gs")(_concrete_family(straight_through=True))


@LATENT_FAMILIES.register("expgs")
def _expgs(spec: LatentSpec, **options) -> LatentFamily:
    """ExpGS (the IGR paper's baseline): Gumbel-Softmax scored in log space with the relaxed
    (ExpConcrete) KL; the prior temperature defaults to the IGR repository's 0.5."""
    kl = options.pop("kl", "auto")
    if kl not in ("auto", "relaxed"):
        raise ConfigError("expgs uses the relaxed KL; for the analytic KL use --model gs")
    if options.get("prior_temperature") is None:
        options["prior_temperature"] = EXPGS_PRIOR_TEMPERATURE
    cls = ConcreteBinary if spec.binary else ConcreteCategorical
    return cls(spec, kl="relaxed", **options)
