"""Latent families: how encoder outputs become a posterior, a relaxed sample and a KL term.

Each family is registered by the ``--model`` names it serves (``gs``, ``st-gs``, ...).
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
