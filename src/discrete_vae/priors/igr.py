"""Gaussian pre-image priors whose implied discrete prior is uniform over ``K`` classes.

The IGR relaxations put their KL term in the Gaussian pre-image space, so they need a Gaussian
prior ``N(mu_0, s_0^2)`` (``K - 1`` coordinates) whose ``tau -> 0`` limit is the uniform categorical.
Both maps admit it in closed form, so the "fit" is exact and there is nothing to cache:

- IGR-I (and IGR-Planar, whose flow belongs to the posterior only): with one shared ``(mu_0, s_0)``,
  ``P(K) = Phi(-mu_0 / s_0)^(K-1) = 1/K`` and the other classes are equal by symmetry, so
  ``mu_0 = -s_0 Phi^{-1}(K^{-1/(K-1)})``.
- IGR-SB: stick ``k`` must break with probability ``1 / (K - k + 1)``, so
  ``mu_0k = s_0 Phi^{-1}(1 / (K - k + 1))``.

``s_0`` (``--prior-scale``, default 1) is free: every value implies the uniform prior.
:func:`prior_fit_report` checks the fit against quadrature / closed form and Monte Carlo draws.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.special import ndtri

from ..distributions import ExpIGR, ExpIGRSB

STICK_KINDS = ("sb", "sb-finite")


def uniform_preimage_prior(kind: str, k: int, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(mu_0, s_0)``, each (K-1,), of the pre-image prior implying a uniform ``K``-class prior."""
    if k < 2:
        raise ValueError(f"need K >= 2 classes, got {k}")
    if kind in STICK_KINDS:
        left = torch.arange(k, 1, -1, dtype=torch.float64)  # K - k + 1 for k = 1..K-1
        loc = scale * ndtri(1.0 / left)
    else:
        last = torch.tensor(k ** (-1.0 / (k - 1)), dtype=torch.float64)  # Phi(-mu_0 / s_0)
        loc = torch.full((k - 1,), -scale * float(ndtri(last)))
    return loc.float(), torch.full((k - 1,), float(scale))


def prior_fit_report(kind: str, k: int, scale: float = 1.0, draws: int = 200_000, seed: int = 0) -> dict:
    """The fitted prior and how uniform its implied discrete prior is: by quadrature (IGR-I) or
    closed form (IGR-SB), and by the class frequencies of ``draws`` samples (max ``|p - 1/K|``)."""
    loc, s = uniform_preimage_prior(kind, k, scale)
    cls = ExpIGRSB if kind in STICK_KINDS else ExpIGR
    dist = cls(1.0, loc.double(), s.double())
    exact = dist.discrete_log_probs().exp()
    gen = torch.Generator().manual_seed(seed)
    kappa = loc.double() + s.double() * torch.randn(draws, k - 1, generator=gen, dtype=torch.float64)
    freq = torch.bincount(dist.hard_sample(kappa), minlength=k).double() / draws
    return {
        "kind": kind,
        "classes": k,
        "loc": loc.tolist(),
        "scale": s.tolist(),
        "max_abs_error_computed": float((exact - 1 / k).abs().max()),
        "max_abs_error_sampled": float((freq - 1 / k).abs().max()),
        "sampling_stderr": math.sqrt((1 / k) * (1 - 1 / k) / draws),
        "draws": draws,
    }
