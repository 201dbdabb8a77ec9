"""The prior contract shared by every latent family.

A prior scores hard latents (``log_prob``), draws them (``sample``), gives the discrete
distribution for an analytic KL (``distribution``), and, for relaxed objectives, a relaxed density
at a temperature (``relaxed``). A prior that cannot normalise itself (an RBM) sets
``normalized = False`` and estimates its log partition function separately.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.distributions import Distribution

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


PRIORS: Registry = Registry("prior")


def build_prior(name: str, n: int, k: int, binary: bool, **options) -> Prior:
    """Build the prior ``name`` for ``n`` latents of ``k`` classes (``binary``: Bernoulli); ``options``
    (e.g. the RBM's sampler settings) go to factories that take them."""
    return PRIORS.get(name)(n, k, binary, **options)
