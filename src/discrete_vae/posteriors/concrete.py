"""Factorial categorical and Bernoulli posteriors, relaxed by the Concrete (Gumbel-Softmax).

Papers: Jang, Gu, Poole (2017) https://arxiv.org/abs/1611.01144 and Maddison, Mnih, Teh (2017)
https://arxiv.org/abs/1611.00712.

The encoder's outputs are the logits. Every estimator of :mod:`discrete_vae.estimators` works on these
posteriors (``factorial``); the ``gs`` and ``st-gs`` estimators draw from its relaxation
(:meth:`~_Concrete.draw_relaxed`), whose KL terms are registered pairs (:mod:`.kl`):

- ``--kl analytic``: the exact KL between posterior and prior probabilities, as in Jang et al.;
- ``--kl relaxed``: a single-sample Monte Carlo KL between the ExpConcrete posterior at ``tau`` and
  the relaxed prior at ``prior_temperature`` (Maddison et al.); with it the training objective is a
  bound on the *relaxed* model's likelihood, never on the discrete model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Independent

from ..distributions import ExpConcrete, LogitBinaryConcrete
from ..distributions.hard import HardBernoulli, HardOneHotCategorical
from ..errors import ConfigError
from ..estimators import st_gs
from ..estimators.base import Latents
from ..estimators.gs import concrete_log_sample, from_log_sample
from ..priors import BernoulliPrior, CategoricalPrior, Prior
from .base import POSTERIORS, LatentSpec, Posterior, PosteriorType
from .kl import LatentSample, register_kl


class ConcreteDraw(NamedTuple):
    """A relaxed draw: the decoder's inputs ``z``, the encoder's outputs, and the log-space sample ``y``
    (S, B, N[, K]) of the posterior's ``latents`` at ``tau``."""

    z: Tensor
    params: Tensor
    latents: Latents
    tau: Tensor
    y: Tensor


class _Concrete(Posterior):
    relaxations = {"gs": False, "st-gs": True}
    factorial = True
    name = "categorical"

    def __init__(self, spec: LatentSpec, kl: str = "auto", prior_temperature: float | None = None,
                 **_: object):
        super().__init__()
        self.set_kl(kl)
        self.spec = spec
        self.prior_temperature = prior_temperature

    def _prior_tau(self, tau: Tensor) -> Tensor | float:
        return tau.detach() if self.prior_temperature is None else self.prior_temperature

    def _latents(self, params: Tensor) -> Latents:
        raise NotImplementedError

    def draw_relaxed(self, params: Tensor, tau: Tensor, n_samples: int, context: Tensor | None = None,
                     straight_through: bool = False) -> ConcreteDraw:
        latents = self._latents(params)
        y = concrete_log_sample(latents, n_samples, tau)  # (S, B, N[, K]) log space
        z = st_gs.straight_through(latents.kind, y) if straight_through else from_log_sample(latents.kind, y)
        return ConcreteDraw(self.decoder_input(z), params, latents, tau, y)  # z: (S, B, D)


def latents_relaxed_log_prob(latents: Latents, tau: Tensor, y: Tensor) -> Tensor:
    """The relaxed posterior's log density of log-space draws ``y``, summed per example: (S, B)."""
    if latents.kind == "binary":
        return LogitBinaryConcrete(tau, latents.logits, validate_args=False).log_prob(y).sum(-1)
    return ExpConcrete(tau, latents.logits, validate_args=False).log_prob(y).sum(-1)


class ConcreteCategorical(_Concrete):
    """``N`` categorical latents of ``K`` classes; params are logits (B, N*K)."""

    def __init__(self, spec: LatentSpec, **options):
        super().__init__(spec, **options)
        self.param_dim = self.decoder_dim = spec.n * spec.k

    def _logits(self, params: Tensor) -> Tensor:
        return params.view(*params.shape[:-1], self.spec.n, self.spec.k)  # (B, N, K)

    def _latents(self, params: Tensor) -> Latents:
        return Latents("categorical", self._logits(params))

    def discrete_posterior(self, params: Tensor, context: Tensor | None = None) -> Independent:
        return Independent(HardOneHotCategorical(logits=self._logits(params), validate_args=False), 1)

    def decoder_input(self, z: Tensor) -> Tensor:
        return z.flatten(-2)  # one-hot (..., N, K) -> (..., N*K)


class ConcreteBinary(_Concrete):
    """``N`` Bernoulli latents; params are Bernoulli logits (B, N)."""

    def __init__(self, spec: LatentSpec, **options):
        super().__init__(spec, **options)
        self.param_dim = self.decoder_dim = spec.n
        self.one_hot = False

    def _latents(self, params: Tensor) -> Latents:
        return Latents("binary", params)

    def discrete_posterior(self, params: Tensor, context: Tensor | None = None) -> Independent:
        return Independent(HardBernoulli(logits=params, validate_args=False), 1)

    def decoder_input(self, z: Tensor) -> Tensor:
        return z


@register_kl(ConcreteCategorical, CategoricalPrior)
def _kl_categorical(posterior: ConcreteCategorical, params: Tensor, prior: CategoricalPrior) -> Tensor:
    """``sum_n sum_k q_nk (log q_nk - log p_nk)``, exactly: (B,)."""
    log_q = posterior._logits(params).log_softmax(-1)  # (B, N, K)
    return (log_q.exp() * (log_q - prior.log_probs())).sum((-2, -1))


@register_kl(ConcreteBinary, BernoulliPrior)
def _kl_bernoulli(posterior: ConcreteBinary, params: Tensor, prior: BernoulliPrior) -> Tensor:
    """``sum_n [q_n (log q_n - log p_n) + (1 - q_n) (log(1 - q_n) - log(1 - p_n))]`` from the logits ``l`` of
    q and ``m`` of p, with ``log sigmoid(l) = -softplus(-l)``: (B,)."""
    softplus = torch.nn.functional.softplus
    m = prior.logits
    q = torch.sigmoid(params)
    return (q * (softplus(-m) - softplus(-params)) + (1 - q) * (softplus(m) - softplus(params))).sum(-1)


@register_kl(_Concrete, Prior, relaxed="relaxed")
def _relaxed_concrete(posterior: _Concrete, draw: ConcreteDraw, prior: Prior) -> LatentSample:
    """Maddison et al.'s relaxed KL: the log densities of the log-space draw under the ExpConcrete posterior
    at ``tau`` and the prior's relaxation at ``prior_temperature`` (default: ``tau``), (S, B)."""
    log_q = latents_relaxed_log_prob(draw.latents, draw.tau, draw.y)
    log_p = prior.relaxed(posterior._prior_tau(draw.tau)).log_prob(draw.y)
    return LatentSample(draw.z, log_q=log_q, log_p=log_p)


@dataclass(frozen=True)
class CategoricalOptions:
    prior_temperature: float | None = field(default=None, metadata={
        "help": "temperature of the relaxed prior for --kl relaxed (default: the posterior's)"})

    def __post_init__(self) -> None:
        if self.prior_temperature is not None and not self.prior_temperature > 0:
            raise ConfigError(f"--prior-temperature must be positive, got {self.prior_temperature}")


def _categorical(spec: LatentSpec, **options) -> Posterior:
    """Factorial categorical latents (Bernoulli ones when ``spec`` is binary)."""
    cls = ConcreteBinary if spec.binary else ConcreteCategorical
    return cls(spec, **options)


POSTERIORS.register("categorical")(PosteriorType(_categorical, CategoricalOptions, "categorical", "gs"))
