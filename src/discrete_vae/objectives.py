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
from typing import NamedTuple

from torch import Tensor

from .latents import LatentSample


class ObjectiveTerms(NamedTuple):
    """Per-example terms (B,): the objective and its parts; ``loss`` is the batch mean of -objective."""

    loss: Tensor
    objective: Tensor
    log_px: Tensor
    kl: Tensor


def relaxed_elbo(log_px: Tensor, latent: LatentSample) -> ObjectiveTerms:
    """``log_px`` (S, B) and the family's latent terms -> the relaxed ELBO per example."""
    rec = log_px.mean(0)  # (B,)
    kl = 0.0
    if latent.kl is not None:  # analytic part, (B,)
        kl = latent.kl
    if latent.log_q is not None:  # Monte Carlo part, (S, B) -> (B,)
        kl = kl + (latent.log_q - latent.log_p).mean(0)
    objective = rec - kl
    return ObjectiveTerms(-objective.mean(), objective, rec, kl)


def iw_bound(log_w: Tensor) -> Tensor:
    """``logsumexp_s log_w[s] - log S``: (S, B) -> (B,)."""
    return log_w.logsumexp(0) - math.log(log_w.shape[0])
