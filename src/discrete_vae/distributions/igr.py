"""Invertible Gaussian Reparameterization, IGR-I: Gaussian noise through softmax++.

Paper: Potapczynski, Loaiza-Ganem, Cunningham (2020), *Invertible Gaussian Reparameterization:
Revisiting the Gumbel-Softmax*, https://arxiv.org/abs/1912.09588.

``kappa ~ N(loc, scale^2)`` in ``K - 1`` dimensions and
``psi_k = exp(kappa_k / tau) / (sum_j exp(kappa_j / tau) + delta)`` for ``k < K``, the last class
``psi_K = delta / (...)``: a point of the ``K``-simplex, one-hot as ``tau -> 0``. Every method here
works with ``log psi`` (samples, densities, gradients finite in float32 down to ``tau = 0.01``).

The change of variables ``kappa -> (log psi_1, ..., log psi_{K-1})`` has Jacobian determinant
``psi_K / tau^(K-1)``, so the density of a log-space sample is
``log N(kappa; loc, scale) + (K - 1) log tau - log psi_K``.

The discrete distribution the relaxation approaches as ``tau -> 0`` picks
``argmax(kappa_1, ..., kappa_{K-1}, 0)`` (``tau log delta -> 0``); :func:`igr_log_probs` computes its class
probabilities by one-dimensional Gauss-Legendre quadrature.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, constraints
from torch.distributions.utils import broadcast_all
from torch.special import log_ndtr

__all__ = ["ExpIGR", "igr_log_probs", "softmax_pp_log", "softmax_pp_inverse"]


def softmax_pp_log(kappa: Tensor, temperature: Tensor, log_delta: float = 0.0) -> Tensor:
    """``log softmax++(kappa / tau)``: (..., K-1) -> (..., K), the extra class last."""
    scores = kappa / temperature.unsqueeze(-1)
    extra = torch.full_like(scores[..., :1], log_delta)
    return torch.log_softmax(torch.cat([scores, extra], -1), -1)


def softmax_pp_inverse(log_psi: Tensor, temperature: Tensor, log_delta: float = 0.0) -> Tensor:
    """``kappa`` from ``log psi``: ``tau (log psi_k - log psi_K + log delta)``, (..., K) -> (..., K-1)."""
    return temperature.unsqueeze(-1) * (log_psi[..., :-1] - log_psi[..., -1:] + log_delta)


class GaussianPreimage(Distribution):
    """Base of the IGR relaxations: ``kappa ~ N(loc, scale)`` (``K - 1`` dims) mapped to ``log psi``.

    Subclasses define :meth:`to_log_simplex` (``kappa -> log psi``), :meth:`from_log_simplex` and
    :meth:`log_abs_det` (log |det d kappa / d log psi_{1:K-1}|, as a function of ``kappa``), and
    :meth:`discrete_log_probs`, the class probabilities of the ``tau -> 0`` limit.
    """

    arg_constraints = {
        "temperature": constraints.positive,
        "loc": constraints.real_vector,
        "scale": constraints.independent(constraints.positive, 1),
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        temperature: Tensor | float,
        loc: Tensor,
        scale: Tensor,
        validate_args: bool | None = None,
    ):
        if loc.dim() < 1:
            raise ValueError("loc must have at least one dimension (the K - 1 pre-image coordinates)")
        self.loc, self.scale = broadcast_all(loc, scale)
        batch_shape = self.loc.shape[:-1]
        temperature = torch.as_tensor(temperature, dtype=loc.dtype, device=loc.device)
        self.temperature = temperature.expand(batch_shape)
        super().__init__(batch_shape, torch.Size([loc.shape[-1] + 1]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(type(self), _instance)
        batch_shape = torch.Size(batch_shape)
        new.__dict__.update(self.__dict__)
        new.loc = self.loc.expand(batch_shape + self.loc.shape[-1:])
        new.scale = self.scale.expand(batch_shape + self.scale.shape[-1:])
        new.temperature = self.temperature.expand(batch_shape)
        Distribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    # -- the Gaussian pre-image ---------------------------------------------------------------
    def preimage(self) -> Independent:
        """``N(loc, scale^2)`` over the ``K - 1`` pre-image coordinates, as one event."""
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1)

    def rsample_preimage(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """Reparameterised ``kappa = loc + scale * eps``: (*sample_shape, *batch, K-1)."""
        shape = self._extended_shape(sample_shape)[:-1] + self.loc.shape[-1:]
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def rsample_preimage_log_prob(self, sample_shape: torch.Size = torch.Size()) -> tuple[Tensor, Tensor]:
        """A reparameterised pre-image draw and its log density ``log q(kappa)``, (*shape, *batch)."""
        kappa = self.rsample_preimage(sample_shape)
        return kappa, self.preimage_log_prob(kappa)

    # -- the map and its density --------------------------------------------------------------
    def to_log_simplex(self, kappa: Tensor) -> Tensor:
        raise NotImplementedError

    def from_log_simplex(self, log_psi: Tensor) -> Tensor:
        raise NotImplementedError

    def log_abs_det(self, kappa: Tensor, log_psi: Tensor) -> Tensor:
        """``log |det d kappa / d log psi_{1:K-1}|`` at a point of the map."""
        raise NotImplementedError

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self.to_log_simplex(self.rsample_preimage(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """Density of a log-space sample ``log psi`` w.r.t. its first ``K - 1`` coordinates."""
        if self._validate_args:
            self._validate_sample(value)
        kappa = self.from_log_simplex(value)
        return self.preimage_log_prob(kappa) + self.log_abs_det(kappa, value)

    def preimage_log_prob(self, kappa: Tensor) -> Tensor:
        """``log q(kappa)`` of the Gaussian pre-image (subclasses with flows add their Jacobian)."""
        return self.preimage().log_prob(kappa)

    # -- the discrete distribution of the tau -> 0 limit --------------------------------------
    def hard_sample(self, kappa: Tensor) -> Tensor:
        """Class index of the ``tau -> 0`` limit of the relaxed sample at ``kappa``."""
        raise NotImplementedError

    def discrete_log_probs(self) -> Tensor:
        """Log class probabilities (*batch, K) of the ``tau -> 0`` limit."""
        raise NotImplementedError


_TAIL = 9.0  # standard deviations: the Gaussian mass beyond is below 1e-18


@lru_cache(maxsize=8)
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1) / 2, weights / 2  # on (0, 1)


def igr_log_probs(
    loc: Tensor, scale: Tensor, threshold: Tensor | float = 0.0, nodes: int = 48
) -> Tensor:
    r"""Class probabilities of ``argmax(kappa_1, ..., kappa_{K-1}, c)``, ``kappa ~ N(loc, scale^2)``.

    ``P(K) = prod_j Phi((c - mu_j) / s_j)``; for ``k < K``, in standardised ``t = (x - mu_k) / s_k``,
    :math:`P(k) = \int_{t_c}^\infty \phi(t) \prod_{j \ne k} \Phi((\mu_k + s_k t - \mu_j) / s_j)\,dt`,
    ``t_c = (c - mu_k) / s_k``, by Gauss-Legendre in float64 on the interval holding all but 1e-18 of
    the mass (the integrand is smooth there, so the error falls fast with ``nodes``). Returns
    (..., K) log probabilities, normalised to sum to one.
    """
    dtype = loc.dtype
    loc, scale = loc.double(), scale.double()  # the quadrature runs in float64
    x01, w01 = (torch.as_tensor(a, dtype=torch.float64, device=loc.device) for a in _legendre(nodes))
    c = torch.as_tensor(threshold, dtype=torch.float64, device=loc.device).expand_as(loc)
    mu, s, ck = loc.unsqueeze(-1), scale.unsqueeze(-1), c.unsqueeze(-1)  # (..., K-1, 1)
    log_last = log_ndtr((c - loc) / scale).sum(-1, keepdim=True)  # (..., 1)
    # standardised t = (x - mu_k) / s_k over (t_c, inf), cut to [max(t_c, -T), max(t_c, 0) + T]
    t_c = (ck - mu) / s
    lo, hi = t_c.clamp(min=-_TAIL), t_c.clamp(min=0) + _TAIL
    t = lo + (hi - lo) * x01  # (..., K-1, n)
    x = mu + s * t  # nodes in kappa_k space
    # log prod_{j != k} Phi((x - mu_j) / s_j): the product over all j, minus j = k
    z = (x.unsqueeze(-2) - loc.unsqueeze(-1).unsqueeze(-3)) / scale.unsqueeze(-1).unsqueeze(-3)
    log_prod = log_ndtr(z).sum(-2) - log_ndtr(t)  # (..., K-1, n)
    log_phi = -0.5 * t * t - 0.5 * math.log(2 * math.pi)
    log_int = (log_prod + log_phi + w01.log()).logsumexp(-1) + (hi - lo).squeeze(-1).log()
    return torch.log_softmax(torch.cat([log_int, log_last], -1), -1).to(dtype)


class ExpIGR(GaussianPreimage):
    """IGR-I in log space: ``log softmax++(kappa / tau)``, ``kappa ~ N(loc, scale^2)``.

    ``loc``, ``scale``: (*batch, K-1); samples and ``log_prob`` values are (*batch, K) log-simplex
    points. ``delta`` (default 1) is the weight of the extra class.
    """

    def __init__(
        self,
        temperature: Tensor | float,
        loc: Tensor,
        scale: Tensor,
        delta: float = 1.0,
        validate_args: bool | None = None,
    ):
        if delta <= 0:
            raise ValueError(f"delta must be positive, got {delta}")
        self.log_delta = math.log(delta)
        super().__init__(temperature, loc, scale, validate_args=validate_args)

    def to_log_simplex(self, kappa: Tensor) -> Tensor:
        return softmax_pp_log(kappa, self.temperature, self.log_delta)

    def from_log_simplex(self, log_psi: Tensor) -> Tensor:
        return softmax_pp_inverse(log_psi, self.temperature, self.log_delta)

    def log_abs_det(self, kappa: Tensor, log_psi: Tensor) -> Tensor:
        k1 = kappa.shape[-1]
        return k1 * self.temperature.log() - log_psi[..., -1]

    def hard_sample(self, kappa: Tensor) -> Tensor:
        return torch.cat([kappa, torch.zeros_like(kappa[..., :1])], -1).argmax(-1)

    def discrete_log_probs(self) -> Tensor:
        return igr_log_probs(self.loc, self.scale)
