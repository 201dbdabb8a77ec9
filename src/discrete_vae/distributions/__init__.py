"""Relaxed distributions over discrete variables, as ``torch.distributions`` citizens."""

from .gumbel_softmax import (
    BinaryConcrete,
    ExpConcrete,
    GumbelSoftmax,
    LogitBinaryConcrete,
    straight_through_binary,
    straight_through_one_hot,
)
from .hard import HardBernoulli, HardOneHotCategorical, bernoulli_draws, one_hot_draws
from .igr import ExpIGR, GaussianPreimage, igr_log_probs
from .igr_planar import ExpIGRPlanar, PlanarFlow
from .igr_sb import ExpIGRSB, truncate_sticks

__all__ = [
    "HardBernoulli",
    "HardOneHotCategorical",
    "bernoulli_draws",
    "one_hot_draws",
    "ExpIGR",
    "ExpIGRPlanar",
    "ExpIGRSB",
    "GaussianPreimage",
    "PlanarFlow",
    "igr_log_probs",
    "truncate_sticks",
    "BinaryConcrete",
    "ExpConcrete",
    "GumbelSoftmax",
    "LogitBinaryConcrete",
    "straight_through_binary",
    "straight_through_one_hot",
]
from . import dvae_pp  # noqa: E402, F401  # registers spike-exp, exp and power
from .dvae_sharp import Gaussian, GaussianIntegral, UniformExponential  # noqa: E402
from .smoothed_bernoulli import SmoothedBernoulli  # noqa: E402
from .smoothing import BASELINES, SMOOTHINGS, Smoothing, get_smoothing  # noqa: E402

__all__ += ["BASELINES", "SMOOTHINGS", "Gaussian", "GaussianIntegral", "SmoothedBernoulli", "Smoothing",
            "UniformExponential", "get_smoothing"]
