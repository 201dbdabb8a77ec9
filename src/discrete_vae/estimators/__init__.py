"""Gradient estimators for expectations over discrete latents, usable inside and outside VAEs.

>>> from torch.distributions import Bernoulli
>>> from discrete_vae.estimators import build_estimator
>>> est = build_estimator("gs", temperature=0.5)
>>> out = est(Bernoulli(logits=logits), f, n_samples=2)   # f: z (S, B, N) -> (S, B)
>>> out.surrogate.mean().backward()                        # logits.grad: the estimate

One file per method, each registered in :data:`ESTIMATORS`; the contract is in :mod:`.base`, the
exact reference by enumeration in :mod:`.exact`.
"""

from . import (  # noqa: F401  (registration)
    arm,
    arms,
    carms,
    disarm,
    double_cv,
    gs,
    gst,
    gumbel_rao,
    indecater,
    nvil,
    rebar,
    reinforce,
    reinmax,
    relax,
    relaxed,
    rloo,
    rodeo,
    st,
    st_gs,
    sum_and_sample,
    unordered,
    vimco,
    zgr,
)
from .base import ESTIMATORS, Estimate, Estimator, Latents, Pathwise, build_estimator, estimator_options
from .exact import exact_expectation, exact_iw_expectation

__all__ = [
    "ESTIMATORS",
    "Estimate",
    "Estimator",
    "Latents",
    "Pathwise",
    "build_estimator",
    "estimator_options",
    "exact_expectation",
    "exact_iw_expectation",
]
