"""IGR-SB: Gaussian noise through a stick-breaking map, finite and countably infinite.

Paper: Potapczynski, Loaiza-Ganem, Cunningham (2020), https://arxiv.org/abs/1912.09588, sec. 3.2.

``kappa ~ N(loc, scale^2)`` in ``K - 1`` dimensions, sticks ``eta_k = sigmoid(kappa_k / tau)`` and
``pi_k = eta_k prod_{j<k} (1 - eta_j)``; the last class takes what is left, ``prod_j (1 - eta_j)``.
In log space ``log pi_k = logsigmoid(kappa_k / tau) + sum_{j<k} logsigmoid(-kappa_j / tau)``, and
the inverse is ``kappa_k = tau (log pi_k - logsumexp(log pi_{k+1:K}))``. The map
``kappa -> log pi_{1:K-1}`` is triangular with diagonal ``sigmoid(-kappa_k / tau) / tau``.

As ``tau -> 0`` the sample becomes the one-hot of the first ``k`` with ``kappa_k > 0`` (else ``K``),
whose probabilities are closed form: ``P(k) = Phi(mu_k / s_k) prod_{j<k} Phi(-mu_j / s_j)``.

The countably infinite form (:func:`truncate_sticks`) keeps only as many classes as needed for the
broken sticks to pass a mass threshold (the paper's ``n_required``): the rest of the stick goes to
the last class kept, and the unused slots are zero so that batches stay rectangular.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.special import log_ndtr

from .igr import GaussianPreimage

__all__ = ["ExpIGRSB", "Truncation", "stick_breaking_log", "truncate_sticks"]


def stick_breaking_log(kappa: Tensor, temperature: Tensor) -> Tensor:
    """``log pi`` of the stick-breaking of ``sigmoid(kappa / tau)``: (..., K-1) -> (..., K)."""
    scores = kappa / temperature.unsqueeze(-1)
    log_rest = F.logsigmoid(-scores).cumsum(-1)  # log prod_{j<=k} (1 - eta_j)
    before = F.pad(log_rest[..., :-1], (1, 0))  # log prod_{j<k} (1 - eta_j)
    return torch.cat([F.logsigmoid(scores) + before, log_rest[..., -1:]], -1)


def _reverse_cumulative_logsumexp(x: Tensor) -> Tensor:
    """``out[k] = logsumexp(x[k:])`` along the last dimension."""
    return torch.logcumsumexp(x.flip(-1), -1).flip(-1)


class ExpIGRSB(GaussianPreimage):
    """IGR-SB in log space over ``K`` classes: ``loc``, ``scale`` (*batch, K-1) -> samples (*batch, K).

    ``log_prob(log pi)`` is a density w.r.t. Lebesgue measure on the ``K - 1`` log coordinates
    ``log pi_1, ..., log pi_{K-1}`` (``log pi_K`` follows from them):
    ``log N(kappa) - sum_k log(sigmoid(-kappa_k / tau) / tau)``, the triangular Jacobian above. It is
    not a density over log-ratios, as :class:`~discrete_vae.distributions.ExpConcrete`'s is.
    """

    def to_log_simplex(self, kappa: Tensor) -> Tensor:
        return stick_breaking_log(kappa, self.temperature)

    def from_log_simplex(self, log_psi: Tensor) -> Tensor:
        rest = _reverse_cumulative_logsumexp(log_psi)  # log of the stick left at k
        return self.temperature.unsqueeze(-1) * (log_psi[..., :-1] - rest[..., 1:])

    def log_abs_det(self, kappa: Tensor, log_psi: Tensor) -> Tensor:
        tau = self.temperature
        diag = F.logsigmoid(-kappa / tau.unsqueeze(-1)) - tau.log().unsqueeze(-1)
        return -diag.sum(-1)

    def hard_sample(self, kappa: Tensor) -> Tensor:
        positive = kappa > 0
        first = positive.to(torch.uint8).argmax(-1)  # first k with kappa_k > 0 (0 if none)
        return torch.where(positive.any(-1), first, torch.full_like(first, kappa.shape[-1]))

    def discrete_log_probs(self) -> Tensor:
        z = self.loc / self.scale
        before = F.pad(log_ndtr(-z).cumsum(-1), (1, 0))  # log prod_{j<k} Phi(-mu_j / s_j)
        return torch.cat([log_ndtr(z), torch.zeros_like(z[..., :1])], -1) + before


class Truncation(NamedTuple):
    """A truncated stick-breaking sample: ``psi`` with unused classes zero, and ``n_required``."""

    psi: Tensor
    n_required: int


def truncate_sticks(log_psi: Tensor, threshold: float = 0.99, percentile: float = 70.0) -> Truncation:
    """Keep the first ``n_required`` classes of stick-breaking samples ``log_psi`` (..., K).

    For each sample, the number of classes needed for the cumulative mass to reach ``threshold``;
    ``n_required`` is that count's ``percentile`` over all samples (the paper's rule). The last class
    kept receives the rest of the stick; classes after it are zero.
    """
    k = log_psi.shape[-1]
    with torch.no_grad():
        mass = log_psi.exp().cumsum(-1)
        needed = (mass < threshold).sum(-1) + 1  # classes needed per sample
        n = int(torch.quantile(needed.flatten().double().clamp(max=k), percentile / 100.0).ceil())
        n = max(1, min(k, n))
    if n == k:
        return Truncation(log_psi.exp(), k)
    kept = log_psi[..., : n - 1].exp()
    rest = log_psi[..., n - 1 :].logsumexp(-1, keepdim=True).exp()
    pad = torch.zeros_like(log_psi[..., n:])
    return Truncation(torch.cat([kept, rest, pad], -1), n)
