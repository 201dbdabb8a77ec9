"""The prior contract shared by every latent family.

A prior scores hard latents (``log_prob``), draws them (``sample``), gives the discrete
distribution for an analytic KL (``distribution``), and, for relaxed objectives, a relaxed density
at a temperature (``relaxed``). A prior that cannot normalise itself (an RBM) sets
``normalized = False`` and estimates its log partition function separately.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.distributions import Distribution

from ..options import method_options
from ..registry import Registry


class Prior(nn.Module):
    """Base class: subclasses implement the four methods below."""

    normalized: bool = True

    def log_prob(self, z: Tensor) -> Tensor:
        """``log p(z)`` for hard latents ``z`` (..., *event), summed over the event: (...)."""
        raise NotImplementedError

    def sample(self, n: int, persist: bool = True) -> Tensor:
        """``n`` hard latents, (n, *event). ``persist=False`` leaves a sampler's persistent state (the RBM's
        training chains) where it was: draws for pictures and evaluation that training must not feel."""
        raise NotImplementedError

    def distribution(self) -> Distribution:
        """The discrete prior as a ``torch.distributions`` object with event = all latents."""
        raise NotImplementedError

    def negative_phase(self) -> Tensor | None:
        """For a prior that is not normalised, a scalar of value 0 whose gradient is ``∇ log Z`` (the
        training loop adds it to the loss, weighted like the KL); None for a normalised prior."""
        return None

    def relaxed(self, temperature: Tensor | float) -> Distribution:
        """The prior's relaxation at ``temperature``, scoring log-space relaxed samples."""
        raise NotImplementedError


@dataclass(frozen=True)
class NoOptions:
    """This prior has no options."""


@dataclass(frozen=True)
class PriorType:
    """A registered prior: ``build(n, k, binary, **options)`` for ``n`` latents of ``k`` classes
    (``binary``: Bernoulli) and its typed ``Options`` (the flags of its group in ``dvae train --help``)."""

    build: Callable[..., Prior]
    Options: type = NoOptions

    def __call__(self, n: int, k: int, binary: bool, **options: Any) -> Prior:
        return self.build(n, k, binary, **options)


PRIORS: Registry = Registry("prior")


def prior_options(name: str, values: dict[str, Any]) -> Any:
    """``name``'s typed options from ``values``; an unknown key is one error naming its options."""
    return method_options("prior", name, PRIORS.get(name).Options, values)


def build_prior(name: str, n: int, k: int, binary: bool, **options: Any) -> Prior:
    """The prior registered as ``name`` for ``n`` latents of ``k`` classes (``binary``: Bernoulli), with
    ``options`` (keywords of its ``Options``, checked as such: the RBM's sampler and log Z settings)."""
    return PRIORS.get(name)(n, k, binary, **dataclasses.asdict(prior_options(name, options)))
