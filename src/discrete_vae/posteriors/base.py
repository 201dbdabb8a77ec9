"""The posterior contract: what q(z|x) is, given the encoder's outputs.

- ``discrete_posterior(params, context)`` is the *discrete* posterior, a ``torch.distributions`` object
  with hard ``sample``, exact ``log_prob`` and ``mode``; evaluation scores it, and the estimators of
  :mod:`discrete_vae.estimators` work on it where it is a factorial Bernoulli or categorical
  (``factorial = True``).
- ``relaxation(params, prior, tau, context, straight_through)`` is the posterior's own relaxation (the
  Concrete, an IGR map, a DVAE smoothing) for one batch, a :class:`Relaxation`: what the pathwise
  estimators (``relaxations`` names them: ``gs``/``st-gs`` for the Concrete, ``relaxed`` for the others)
  draw from. Each draw comes with its KL terms: per-sample log densities of the relaxed sample under
  posterior and (relaxed) prior (a Monte Carlo KL, usable in an importance-weighted bound) or an analytic
  ``kl`` per example. A posterior implements :meth:`Posterior.draw_relaxed`, one draw; the terms of its
  ``--kl`` are functions registered for the pair of posterior and prior in :mod:`.kl`, which
  :meth:`Posterior.relaxed` adds to the draw (a :class:`~.kl.LatentSample`).
- ``decoder_input(z)`` embeds hard latents for the decoder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from ..errors import ConfigError
from ..options import method_options
from ..priors import Prior
from ..registry import Registry
from .kl import LatentSample, kl_kind, relaxed_kl


@dataclass(frozen=True)
class LatentSpec:
    """``n`` latent variables of ``k`` classes each; ``binary`` means Bernoulli latents (k = 2)."""

    n: int
    k: int
    binary: bool = False

    @classmethod
    def parse(cls, text: str, binary: bool = False) -> LatentSpec:
        """``"20x10"`` -> 20 variables of 10 classes; ``"200x2"`` (or ``"200"`` with ``binary``) ->
        200 Bernoullis."""
        n_text, sep, k_text = text.lower().partition("x")
        if (not sep and not binary) or (sep and not k_text):
            raise ConfigError(f"--latent must look like NxK (e.g. 20x10), got {text!r}")
        try:
            n, k = int(n_text), int(k_text) if sep else 2
        except ValueError:
            raise ConfigError(f"--latent must look like NxK (e.g. 20x10), got {text!r}") from None
        if n < 1 or k < 2:
            raise ConfigError(f"--latent needs N >= 1 and K >= 2, got {text!r}")
        if binary and k != 2:
            raise ConfigError(f"--binary latents have K = 2, got --latent {text!r}")
        return cls(n=n, k=k, binary=binary or k == 2)

    def __str__(self) -> str:
        return f"{self.n}x{self.k}" + (" (binary)" if self.binary else "")


class Relaxation(Distribution):
    """A posterior's relaxation of one batch at temperature ``tau``: what ``gs``, ``st-gs`` and ``relaxed``
    differentiate through.

    - Samples: ``rsample((S,))`` gives the decoder's inputs for ``S`` relaxed draws per example (S, B, D),
      pathwise in the encoder's outputs and ``tau`` (hard forward and relaxed backward where the posterior
      was asked for a straight-through draw).
    - ``log_ratio(zeta)`` (S, B): ``log q~(zeta) - log p~(zeta)`` of the draw, the Monte Carlo KL that ``f``
      subtracts, or None where the posterior's KL is analytic; ``kl`` (B,): the analytic KL that came with the
      draw (averaged over its samples where it depends on them, as a hierarchical DVAE posterior's does), or
      None. ``log_prob(zeta)`` is ``log q~(zeta)``.
    - A draw cannot be recovered from ``zeta`` in float32 (a Concrete sample at low temperature underflows to
      exact zeros), so its scores are kept with it, as ``torch.distributions`` transforms cache their last
      inverse: they score the latest draw, which the sample itself identifies.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, draw: Callable[[int], LatentSample], batch_shape: torch.Size, event_shape: torch.Size):
        self._draw = draw
        self._latest: LatentSample | None = None
        super().__init__(batch_shape, event_shape, validate_args=False)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape)
        if len(shape) != 1:
            raise ValueError(f"a posterior's relaxation draws (S,) samples, not {tuple(shape)}")
        self._latest = self._draw(shape[0])
        return self._latest.z

    def _of(self, value: Tensor) -> LatentSample:
        if self._latest is None or value is not self._latest.z:
            raise ValueError("a posterior's relaxation scores its latest draw only (rsample's own tensor)")
        return self._latest

    def log_prob(self, value: Tensor) -> Tensor:
        log_q = self._of(value).log_q
        if log_q is None:
            raise ValueError("this relaxation's KL is analytic: it has no relaxed density")
        return log_q

    def log_ratio(self, value: Tensor) -> Tensor | None:
        latent = self._of(value)
        return None if latent.log_q is None else latent.log_q - latent.log_p

    @property
    def kl(self) -> Tensor | None:
        return None if self._latest is None else self._latest.kl


class Posterior(nn.Module):
    """Base class of posteriors; ``param_dim`` encoder outputs -> ``decoder_dim`` decoder inputs."""

    spec: LatentSpec
    param_dim: int
    decoder_dim: int
    one_hot: bool = True  # hard latents are one-hot (..., N, K); False: {0, 1} (..., N)
    levels: int = 1  # groups of a hierarchical posterior
    iw_default: bool = False  # `--objective auto` trains with the IW bound when k > 1
    relaxations: dict[str, bool] = {"relaxed": False}  # estimator name -> straight-through
    name: str = "this posterior"  # its registered name, for messages (build_posterior sets it)
    default_kl: str = "analytic"  # the KL of `--kl auto`
    kl: str = "analytic"  # the KL in force, a name of kl.KL_KINDS
    factorial: bool = False  # discrete_posterior is an Independent Bernoulli / OneHotCategorical

    def set_kl(self, kl: str) -> None:
        """Put ``--kl kl`` in force (``auto``: :attr:`default_kl`)."""
        self.kl = kl_kind(self.default_kl if kl == "auto" else kl).name

    def draw_relaxed(self, params: Tensor, tau: Tensor, n_samples: int, context: Tensor | None = None,
                     straight_through: bool = False) -> Any:
        """One draw of ``n_samples`` per example from the relaxation at ``tau``: a tuple with the decoder's
        inputs ``z`` (S, B, D), the encoder's outputs ``params`` and whatever the posterior's registered KL
        terms (:mod:`.kl`) read; ``context`` is the encoder's input, for posteriors whose later latent groups
        condition on it."""
        raise NotImplementedError

    def relaxed(self, params: Tensor, prior: Prior, tau: Tensor, n_samples: int,
                context: Tensor | None = None, straight_through: bool = False) -> LatentSample:
        """One relaxed draw (:meth:`draw_relaxed`) with the KL terms ``--kl`` asks of the pair
        (:func:`~.kl.relaxed_kl`)."""
        draw = self.draw_relaxed(params, tau, n_samples, context=context, straight_through=straight_through)
        return relaxed_kl(self, prior)(self, draw, prior)

    def check_relaxation(self, prior: Prior) -> None:
        """Raise a :class:`ConfigError` if this posterior's relaxation has no KL terms of its ``--kl``
        against ``prior``."""
        relaxed_kl(self, prior)

    def relaxation(self, params: Tensor, prior: Prior, tau: Tensor, context: Tensor | None = None,
                   straight_through: bool = False) -> Relaxation:
        """The relaxation of the batch whose encoder outputs are ``params`` (B, P), drawn by
        :meth:`relaxed`."""
        def draw(n: int) -> LatentSample:
            return self.relaxed(params, prior, tau, n, context=context, straight_through=straight_through)

        return Relaxation(draw, params.shape[:-1], torch.Size([self.decoder_dim]))

    def discrete_posterior(self, params: Tensor, context: Tensor | None = None) -> Distribution:
        raise NotImplementedError

    def decoder_input(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def check_prior(self, prior: Prior) -> None:
        """Raise a :class:`ConfigError` if this posterior cannot work with ``prior`` (default: any normalised
        prior; the RBM belongs to the DVAE models)."""
        if not prior.normalized:
            raise ConfigError(f"this model needs a normalised prior, not {type(prior).__name__}; "
                              "the RBM prior is for the DVAE models (dvae-*, dvaepp-*, dvaes-*)")

    def stats(self) -> dict[str, float]:
        """Posterior-specific numbers of the last relaxed batch, logged with the training metrics."""
        return {}


@dataclass(frozen=True)
class NoOptions:
    """This posterior has no options."""


@dataclass(frozen=True)
class PosteriorType:
    """A registered posterior: ``build(spec, **options, **context)`` and its typed ``Options`` (the flags
    of its group in ``dvae train --help``, ``family`` names the group); ``context`` is what the model
    supplies (``kl``, ``dataset``, ``struct``, ``context_dim``, ``level_mlp``)."""

    build: Callable[..., Posterior]
    Options: type = NoOptions
    family: str = ""
    relaxation: str = "relaxed"  # the estimator of its own relaxation, which a method given it takes
    prior: str = "uniform"  # the prior `--prior auto` picks

    def __call__(self, spec: LatentSpec, **kwargs: Any) -> Posterior:
        return self.build(spec, **kwargs)


POSTERIORS: Registry = Registry("posterior")


def posterior_options(name: str, values: dict[str, Any]) -> Any:
    """``name``'s typed options from ``values``; an unknown key is one error naming its options."""
    return method_options("posterior", name, POSTERIORS.get(name).Options, values)


def build_posterior(name: str, spec: LatentSpec, **kwargs: Any) -> Posterior:
    """The posterior registered as ``name``, for latents ``spec``; keywords that are its options are
    checked as such, the others are context."""
    entry = POSTERIORS.get(name)
    own = {f.name for f in dataclasses.fields(entry.Options)}
    options = posterior_options(name, {k: v for k, v in kwargs.items() if k in own})
    context = {k: v for k, v in kwargs.items() if k not in own}
    posterior = entry(spec, **dataclasses.asdict(options), **context)
    posterior.name = name
    return posterior
