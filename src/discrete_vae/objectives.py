"""Objectives as pure functions of per-sample terms (the equations, not a framework).

- :func:`relaxed_elbo`: the training objective of the relaxed families,
  ``mean_s log p(x|z_s) - KL`` (analytic KL) or ``mean_s [log p(x|z_s) + log p(z_s) - log q(z_s|x)]``
  (Monte Carlo KL through relaxed densities). Neither is a bound on the *discrete* model's
  likelihood: with the relaxed KL it bounds the relaxed model's, with the analytic KL nothing.
- :func:`iw_bound`: ``log (1/S) sum_s exp(log w_s)`` — with hard samples from the discrete posterior
  this is the importance-weighted lower bound on ``log p(x)`` of the discrete model
  (Burda et al. 2016, https://arxiv.org/abs/1509.00519); with ``S = 1`` it is the ELBO.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

from torch import Tensor

from .errors import ConfigError

if TYPE_CHECKING:  # annotations only
    from .posteriors import LatentSample


class ObjectiveTerms(NamedTuple):
    """Per-example terms (B,): the objective and its parts; ``loss`` is the batch mean of -objective."""

    loss: Tensor
    objective: Tensor
    log_px: Tensor
    kl: Tensor


def relaxed_elbo(log_px: Tensor, latent: LatentSample, kl_weight: float = 1.0) -> ObjectiveTerms:
    """``log_px`` (S, B) and the posterior's relaxed latent terms -> the relaxed ELBO per example.

    ``kl_weight`` < 1 is KL warm-up (the objective is then no bound; ``kl`` is reported unweighted).
    """
    rec = log_px.mean(0)  # (B,)
    kl = 0.0
    if latent.kl is not None:  # analytic part, (B,)
        kl = latent.kl
    if latent.log_q is not None:  # Monte Carlo part, (S, B) -> (B,)
        kl = kl + (latent.log_q - latent.log_p).mean(0)
    objective = rec - kl_weight * kl
    return ObjectiveTerms(-objective.mean(), objective, rec, kl)


def relaxed_iw(log_px: Tensor, latent: LatentSample, kl_weight: float = 1.0) -> ObjectiveTerms:
    """The importance-weighted bound over the ``S`` relaxed samples (DVAE#'s training objective):
    ``logsumexp_s [log p(x|ζ_s) + w (log p(ζ_s) - log q(ζ_s|x))] - log S`` with warm-up weight ``w``.

    Needs per-sample densities (``log_q``, ``log_p``); an analytic KL has no place inside the sum.
    """
    if latent.log_q is None or latent.kl is not None:
        raise ConfigError("--objective iw needs per-sample prior and posterior densities: use a relaxed KL "
                          "(--kl relaxed) or --objective elbo")
    log_ratio = latent.log_p - latent.log_q  # (S, B)
    objective = iw_bound(log_px + kl_weight * log_ratio)
    return ObjectiveTerms(-objective.mean(), objective, log_px.mean(0), -log_ratio.mean(0))


OBJECTIVE_FUNCTIONS = {"elbo": relaxed_elbo, "iw": relaxed_iw}


def iw_bound(log_w: Tensor) -> Tensor:
    """``logsumexp_s log_w[s] - log S``: (S, B) -> (B,)."""
    return log_w.logsumexp(0) - math.log(log_w.shape[0])
