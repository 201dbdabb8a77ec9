"""Latent families: how encoder outputs become a posterior, a relaxed sample and a KL term.

Each family is registered by the ``--model`` names it serves (``gs``, ``st-gs``, ...).
"""

from .base import LATENT_FAMILIES, LatentFamily, LatentSample, LatentSpec, build_family
from .concrete import ConcreteBinary, ConcreteCategorical
from .dvae import HierarchicalBernoulli, SmoothedBoltzmann
from .igr import IGRCategorical
from .mixed import Mixed

__all__ = [
    "LATENT_FAMILIES",
    "ConcreteBinary",
    "ConcreteCategorical",
    "HierarchicalBernoulli",
    "SmoothedBoltzmann",
    "IGRCategorical",
    "Mixed",
    "LatentFamily",
    "LatentSample",
    "LatentSpec",
    "build_family",
]
