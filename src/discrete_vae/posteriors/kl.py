"""The objective's prior term: the values of ``--kl`` and the registry of KL terms by pair.

``--kl`` names a :class:`KLKind` (:data:`KL_KINDS`): ``analytic`` (a closed form), ``relaxed`` (per-sample
log densities of the relaxed draw under posterior and relaxed prior) or ``sampled`` (per-sample log
probabilities of hard draws, inside ``f``: the hard-sample estimators' Monte Carlo KL).

Two kinds of registered function, looked up, like :func:`torch.distributions.kl.register_kl`, by the
most specific pair of classes in their method resolution orders:

- ``@register_kl(PosteriorClass, PriorClass)``: the closed-form KL of the *discrete* posterior,
  ``(posterior, params, prior) -> (B,)``; :func:`analytic_kl` returns it, or None where the pair has none
  (the hard-sample estimators then take the Monte Carlo KL inside ``f``).
- ``@register_kl(PosteriorClass, PriorClass, relaxed=kind)``: the terms a draw of the posterior's
  relaxation comes with under ``--kl kind``, ``(posterior, draw, prior) -> LatentSample``, where ``draw``
  is what the posterior's :meth:`~discrete_vae.posteriors.base.Posterior.draw_relaxed` gives.
  Registering ``None`` says the pair has no such term (a subclass opting out of its parent's). Where no
  pair of kind ``analytic`` is registered, the draw takes the discrete pair's closed form.
  :func:`relaxed_kl` returns the function for a posterior's ``--kl``, or raises a one-line error naming
  the kinds the pair has.

For a prior that is not normalised (the RBM) the functions leave out ``log Z``, whose gradient the training
loop adds through the prior's negative phase.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from torch import Tensor

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..priors import Prior
    from .base import Posterior


class LatentSample(NamedTuple):
    """One relaxed draw per (sample, example).

    ``z``: decoder input (S, B, D). Either ``log_q`` and ``log_p`` (S, B), the log densities of the
    relaxed sample under posterior and (relaxed) prior, or ``kl`` (B,), an analytic KL.
    """

    z: Tensor
    log_q: Tensor | None = None
    log_p: Tensor | None = None
    kl: Tensor | None = None


class KLKind(NamedTuple):
    """A value of ``--kl``."""

    name: str
    help: str
    closed_form: bool = False  # the divergence itself rather than a Monte Carlo estimate of it
    hard_samples: bool = False  # log q(z) - log p(z) of hard draws inside f (hard-sample estimators only)

    @property
    def relaxed_densities(self) -> bool:
        """Per-sample densities of the relaxed draw (what an importance-weighted relaxed bound needs)."""
        return not (self.closed_form or self.hard_samples)


KL_KINDS: dict[str, KLKind] = {kind.name: kind for kind in (
    KLKind("analytic", "the closed-form KL", closed_form=True),
    KLKind("relaxed", "log q(zeta) - log p(zeta) of each relaxed draw (a bound on the relaxed model)"),
    KLKind("sampled", "log q(z) - log p(z) of each hard draw, inside f (hard-sample estimators)",
           hard_samples=True),
)}


def kl_kind(name: str) -> KLKind:
    """The :class:`KLKind` called ``name``; any other name is one error listing them."""
    if name not in KL_KINDS:
        raise ConfigError(f"--kl must be one of {', '.join(KL_KINDS)}, got {name!r}")
    return KL_KINDS[name]


_PAIRS: dict[tuple[type, type, str | None], Callable | None] = {}


def register_kl(posterior: type, prior: type, relaxed: str | None = None) -> Callable:
    """Register the closed-form KL of the discrete posterior for the pair, or with ``relaxed=kind`` the
    terms of a relaxed draw under ``--kl kind`` (``None`` registered: the pair has none)."""
    if relaxed is not None:
        kl_kind(relaxed)

    def add(fn: Callable | None) -> Callable | None:
        _PAIRS[posterior, prior, relaxed] = fn
        return fn

    return add


def _lookup(posterior: type, prior: type, relaxed: str | None) -> tuple[bool, Callable | None]:
    """``(found, function)`` of the most specific registered pair (the function None where it opts out)."""
    for p_type in posterior.__mro__:
        for q_type in prior.__mro__:
            if (p_type, q_type, relaxed) in _PAIRS:
                return True, _PAIRS[p_type, q_type, relaxed]
    return False, None


def kl_function(posterior: Posterior, prior: Prior) -> Callable[..., Tensor] | None:
    """The registered closed-form KL of the discrete posterior of the most specific matching pair, or None."""
    return _lookup(type(posterior), type(prior), None)[1]


def analytic_kl(posterior: Posterior, params: Tensor, prior: Prior) -> Tensor | None:
    """``KL(q(z|x) || p(z))`` per example (B,) where the pair has a closed form, else None."""
    fn = kl_function(posterior, prior)
    return None if fn is None else fn(posterior, params, prior)


def _discrete_closed_form(posterior: Posterior, draw: Any, prior: Prior) -> LatentSample:
    """A relaxed draw with the discrete posterior's closed-form KL of ``draw.params`` (the encoder's
    outputs)."""
    kl = analytic_kl(posterior, draw.params, prior)
    if kl is None:
        raise ConfigError(f"no analytic KL between the {posterior.name} posterior and {type(prior).__name__}:"
                          " use --kl relaxed")
    return LatentSample(draw.z, kl=kl)


def _has_terms(posterior: Posterior, prior: Prior, kind: KLKind) -> bool:
    """Whether a relaxed draw of ``posterior`` has the terms of ``kind`` against ``prior``."""
    found, fn = _lookup(type(posterior), type(prior), kind.name)
    if found:
        return fn is not None
    return kind.closed_form and kl_function(posterior, prior) is not None


def relaxed_kl(posterior: Posterior, prior: Prior) -> Callable[..., LatentSample]:
    """The terms a relaxed draw of ``posterior`` comes with against ``prior`` under its ``--kl``."""
    kind = kl_kind(posterior.kl)
    fn = _lookup(type(posterior), type(prior), kind.name)[1]
    if fn is not None:
        return fn
    if _has_terms(posterior, prior, kind):
        return _discrete_closed_form
    kinds = [other.name for other in KL_KINDS.values() if _has_terms(posterior, prior, other)]
    use = f"use --kl {' or '.join(kinds)}" if kinds else "it has no relaxed objective with this prior"
    raise ConfigError(f"--kl {kind.name} does not apply to the relaxation of {posterior.name} against "
                      f"{type(prior).__name__}: {use}")
