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
probabilities by one-dimensional composite Gauss-Legendre quadrature.
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

    :meth:`log_prob` is a density over the first ``K - 1`` log coordinates ``log psi_{1:K-1}``
    (Lebesgue measure on them), for every subclass.

    Subclasses define :meth:`to_log_simplex` (``kappa -> log psi``), :meth:`from_log_simplex` and
    :meth:`log_abs_det` (``log |det d kappa / d log psi_{1:K-1}|``, as a function of ``kappa``), and
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
        """Density of a log-space sample ``log psi`` w.r.t. Lebesgue measure on its first ``K - 1``
        coordinates ``(log psi_1, ..., log psi_{K-1})`` (``log psi_K`` follows from them).

        Not :class:`~discrete_vae.distributions.ExpConcrete`'s measure (the ``K - 1`` log-ratios
        ``log psi_k - log psi_K``): there the same point has density ``log_prob + log psi_K``.
        """
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


_GRID = (-8.0, 0.0, 8.0)  # breakpoints per coordinate, in its standard deviations (beyond: mass 6e-16)
_BLOCK = 32  # rows per block on the CPU: the block's (rows, K-1, nodes) tensors stay in cache
_TINY = torch.finfo(torch.float64).tiny


@lru_cache(maxsize=8)
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1) / 2, weights / 2  # on (0, 1)


def _class_masses(loc: Tensor, scale: Tensor, c: Tensor, nodes: int) -> Tensor:
    """The integrals of :func:`igr_log_probs` for rows ``loc``, ``scale`` (R, K-1), ``c`` (R, 1)."""
    x01, w01 = (torch.as_tensor(a, dtype=loc.dtype, device=loc.device) for a in _legendre(nodes))
    grid = torch.tensor(_GRID, dtype=loc.dtype, device=loc.device)
    with torch.no_grad():  # the rule is held fixed: gradients differentiate under the integral
        cuts = (loc.unsqueeze(-1) + scale.unsqueeze(-1) * grid).flatten(-2)  # (R, (K-1) G)
        cuts = torch.cat([cuts, c, c + scale.amax(-1, keepdim=True)], -1)  # a piece above c, always
        cuts = cuts.clamp_min(c).sort(-1).values  # cuts below c collapse onto it: empty pieces first
        cuts = cuts[:, -int((cuts > c).sum(-1).max()) - 1 :]  # drop pieces empty in every row
        start, width = cuts[:, :-1], cuts[:, 1:] - cuts[:, :-1]  # (R, M)
        offset = (width[..., None] * x01).unsqueeze(-3)  # (R, 1, M, n) nodes from their piece's start
        w = (width[..., None] * w01).flatten(-2)  # (R, P) weights, P = M n
    # x - mu_j as (start - mu_j) + offset: exact near mu_j however small s_j is against |mu_j|
    z = ((start.unsqueeze(-2) - loc.unsqueeze(-1)).unsqueeze(-1) + offset).flatten(-2)  # (R, K-1, P)
    # Phi(z) = erfc(u) / 2 and phi(z) = exp(-u^2) / sqrt(2 pi) with u = -z / sqrt(2)
    u = z * (-math.sqrt(0.5) / scale).unsqueeze(-1)  # (R, K-1, P)
    cdf2 = torch.special.erfc(u)  # 2 Phi_j at the nodes
    others = cdf2.prod(-2, keepdim=True) / cdf2.clamp_min(_TINY)  # prod_{j != k} 2 Phi_j
    mass = ((torch.exp(-u * u) * others) @ w.unsqueeze(-1)).squeeze(-1)  # (R, K-1)
    return mass / (scale * (math.sqrt(2 * math.pi) * 2.0 ** (loc.shape[-1] - 1)))


def igr_log_probs(
    loc: Tensor, scale: Tensor, threshold: Tensor | float = 0.0, nodes: int = 24
) -> Tensor:
    r"""Class probabilities of ``argmax(kappa_1, ..., kappa_{K-1}, c)``, ``kappa ~ N(loc, scale^2)``.

    ``P(K) = prod_j Phi((c - mu_j) / s_j)`` in closed form, and for ``k < K``

    .. math:: P(k) = \int_c^\infty \frac{1}{s_k} \phi\Big(\frac{x - \mu_k}{s_k}\Big)
              \prod_{j \ne k} \Phi\Big(\frac{x - \mu_j}{s_j}\Big)\,dx

    by composite Gauss-Legendre in float64. Each factor changes only within a few ``s_j`` of
    ``mu_j``, so ``[c, inf)`` is cut at ``mu_j + s_j * (-8, 0, 8)`` for every coordinate (and at
    ``c``): every piece lies inside one cell of each coordinate's grid, where that factor is smooth
    on the piece's own scale, or outside it, where it is flat (``Phi = 1``) or negligible, whatever
    the ratios of the scales. ``nodes`` Gauss-Legendre nodes per piece. Only the union of the
    coordinates' ranges ``mu_j +- 8 s_j`` is integrated: the ``k``-th density loses at most its mass
    beyond ``mu_k +- 8 s_k``, ``6e-16`` per side.

    ``threshold`` broadcasts to the batch shape ``loc.shape[:-1]``. Returns (..., K) log
    probabilities as computed, *not* renormalised (their sum's distance from one is part of the
    quadrature error); a probability below ``1e-308`` is returned as ``1e-308``. Gradients come from
    differentiating under the integral sign (the cuts are held fixed; none reaches ``threshold``).
    """
    dtype, k1 = loc.dtype, loc.shape[-1]
    loc, scale = torch.broadcast_tensors(loc.double(), scale.double())  # the quadrature runs in float64
    c = torch.as_tensor(threshold, dtype=torch.float64, device=loc.device).expand(loc.shape[:-1])
    log_last = log_ndtr((c.unsqueeze(-1) - loc) / scale).sum(-1, keepdim=True)  # (..., 1)
    rows = (loc.reshape(-1, k1), scale.reshape(-1, k1), c.reshape(-1, 1))  # (R, K-1), (R, K-1), (R, 1)
    block = _BLOCK if loc.device.type == "cpu" else max(1, rows[0].shape[0])
    masses = [_class_masses(*(r[i : i + block] for r in rows), nodes) for i in range(0, len(rows[0]), block)]
    mass = torch.cat(masses) if masses else loc.new_zeros(0, k1)  # (R, K-1)
    log_int = mass.clamp_min(_TINY).log().view(loc.shape)
    return torch.cat([log_int, log_last], -1).to(dtype)


class ExpIGR(GaussianPreimage):
    """IGR-I in log space: ``log softmax++(kappa / tau)``, ``kappa ~ N(loc, scale^2)``.

    - ``loc``, ``scale``: (*batch, K-1); samples are (*batch, K) log-simplex points ``log psi``.
      ``delta`` (default 1) is the weight of the extra class.
    - ``log_prob(log psi)``: a density w.r.t. Lebesgue measure on the ``K - 1`` log coordinates
      ``log psi_1, ..., log psi_{K-1}``, ``log N(kappa) + (K - 1) log tau - log psi_K``. Over the
      log-ratios ``log psi_k - log psi_K`` (:class:`ExpConcrete`'s coordinates) the density is
      ``log N(kappa) + (K - 1) log tau``: never mix the two in one KL.
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
