"""Analytic KL divergences between a posterior and a prior, through a registry of pairs.

Like :func:`torch.distributions.kl.register_kl`: ``@register_kl(PosteriorType, PriorType)`` adds a
function ``(posterior, params, prior) -> KL (B,)``; :func:`analytic_kl` finds the most specific pair
by the classes' method resolution order, or returns None when the pair has no closed form (the
objective then takes a Monte Carlo KL inside ``f``). For a prior that is not normalised (the RBM) the
function returns the KL without ``log Z``, whose gradient the training loop adds through the prior's
negative phase.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..priors import Prior
from .base import Posterior

KLFunction = Callable[[Posterior, Tensor, Prior], Tensor]
_PAIRS: dict[tuple[type, type], KLFunction] = {}


def register_kl(posterior: type, prior: type) -> Callable[[KLFunction], KLFunction]:
    def add(fn: KLFunction) -> KLFunction:
        _PAIRS[posterior, prior] = fn
        return fn

    return add


def kl_function(posterior: Posterior, prior: Prior) -> KLFunction | None:
    """The registered function of the most specific matching pair, or None."""
    for p_type in type(posterior).__mro__:
        for q_type in type(prior).__mro__:
            if (p_type, q_type) in _PAIRS:
                return _PAIRS[p_type, q_type]
    return None


def analytic_kl(posterior: Posterior, params: Tensor, prior: Prior) -> Tensor | None:
    """``KL(q(z|x) || p(z))`` per example (B,) where the pair has a closed form, else None."""
    fn = kl_function(posterior, prior)
    return None if fn is None else fn(posterior, params, prior)
