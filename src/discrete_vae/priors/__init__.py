"""Priors over discrete latents: a registry of ``name -> factory(latent spec) -> Prior``."""

from .base import PRIORS, Prior, build_prior
from .bernoulli import BernoulliPrior
from .categorical import CategoricalPrior

__all__ = ["PRIORS", "BernoulliPrior", "CategoricalPrior", "Prior", "build_prior"]
from .rbm import RBMPrior  # noqa: E402,F401
