"""Priors over the latents: a registry of ``name -> factory(latent spec) -> Prior``."""

from .base import PRIORS, Prior, PriorType, build_prior
from .bernoulli import BernoulliPrior
from .categorical import CategoricalPrior
from .gaussian import GaussianPrior
from .product import ProductPrior

__all__ = [
    "PRIORS",
    "BernoulliPrior",
    "CategoricalPrior",
    "GaussianPrior",
    "Prior",
    "PriorType",
    "ProductPrior",
    "build_prior",
]
from .rbm import RBMPrior  # noqa: E402,F401
