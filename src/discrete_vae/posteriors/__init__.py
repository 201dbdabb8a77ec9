"""Posteriors: what q(z|x) is, given the encoder's outputs — the discrete distribution, and where one exists
its own relaxation (the Concrete, an IGR map, a DVAE smoothing) with its KL terms.

Each is registered under its ``--posterior`` name with its typed options (:class:`base.PosteriorType`);
analytic KL terms against priors come from the registry of pairs in :mod:`.kl`.
"""

from .base import POSTERIORS, LatentSample, LatentSpec, Posterior, build_posterior
from .concrete import ConcreteBinary, ConcreteCategorical
from .dvae import HierarchicalBernoulli, SmoothedBoltzmann
from .igr import IGRCategorical
from .mixed import Mixed

__all__ = [
    "POSTERIORS",
    "ConcreteBinary",
    "ConcreteCategorical",
    "HierarchicalBernoulli",
    "SmoothedBoltzmann",
    "IGRCategorical",
    "Mixed",
    "Posterior",
    "LatentSample",
    "LatentSpec",
    "build_posterior",
]
