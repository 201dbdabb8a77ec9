r"""The smoothings DVAE# introduced: uniform+exponential, Gaussian, and the Gaussian integral trick.

Paper: Vahdat, Andriyash, Macready (2018), *DVAE#*, https://arxiv.org/abs/1805.07445 (§3.4: sampled
with the implicit gradient of :mod:`.smoothing`; §4: the Gaussian integral trick). The smoothing contract
and the registry are in :mod:`.smoothing`, DVAE's and DVAE++'s smoothings in :mod:`.dvae_pp`.

Gaussian integral trick (``gi``, DVAE# §4). With the RBM prior :math:`p(z) ∝ \exp(a^\top z + \tfrac12
z^\top W z)` (``W`` symmetric, zero diagonal; for a bipartite RBM ``W = [[0, w], [w^\top, 0]]``) and
:math:`Λ = W + λI` positive definite, the prior-side smoothing is the *correlated* Gaussian
:math:`r(ζ|z) = N(ζ; z, Λ^{-1})`. Because :math:`z_i^2 = z_i`, the joint is
:math:`p(z, ζ) ∝ \exp((a - λ/2)^\top z + ζ^\top Λ z - \tfrac12 ζ^\top Λ ζ)` and ``z`` sums out in closed form:

.. math:: \log p(ζ) = -\log Z + \tfrac12\log\det(Λ/2π) - \tfrac12 ζ^\top Λ ζ
          + \sum_i \mathrm{softplus}((Λζ)_i + a_i - λ/2),

with ``Z`` the RBM's own partition function. What the prior (``priors/rbm.py``, later) must do:
form ``Λ = W + λI`` with ``λ = max(relu(-min eig W) + 5, β)`` (the original code recomputes the eigenvalues
of ``W``; ``β`` is the floor ``minimum_lambda``, default 40, see :meth:`Smoothing.default_beta`), get
``log det Λ`` (the code uses ``λ^n det(I - λ^{-2} w^\top w)`` through a Cholesky of the Schur complement),
and score relaxed samples with the formula above during training; evaluation uses the discrete RBM.
The per-unit part, implemented here by :class:`GaussianIntegral`, is the *posterior* smoothing:
a factorial mixture :math:`N(ζ_i; z_i + δ_i, σ_i^2)` whose scale ``σ`` and shift ``δ`` are free (the
KL uses ``log q(ζ)`` and ``log p(ζ)`` directly, so they need not match ``Λ``). The original code learns
``σ_i = |s_i| + 0.05`` per unit (``s`` initialised to 0.2) and ``δ = 0.5 (σ(h) - 0.5)`` from a second encoder
output ``h``; here both are arguments (floats or tensors), by default ``σ = β^{-1/2}`` (the prior's
conditional when ``W = 0``) and ``δ = 0``, and the implicit gradient reaches them as well.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import constraints
from torch.special import ndtr, ndtri

from .smoothing import SMOOTHINGS, Smoothing, _check_positive, _Exponential, _param

__all__ = ["Gaussian", "GaussianIntegral", "UniformExponential"]


@SMOOTHINGS.register("unexp")
class UniformExponential(_Exponential):
    r"""DVAE# uniform+exponential: ``r(ζ|0) = (1-ε) β e^{-βζ}/(1-e^{-β}) + ε`` on ``[0, 1]``, ``ε = 0.05``.

    Implicit gradient only. ``ε = 0.05`` is the value of the original code (``vae.py``).
    """

    name, baselines = "unexp", ("dvaes_unexp",)

    def __init__(self, beta: float | Tensor, eps: float = 0.05):
        super().__init__(beta)
        if not 0 <= eps < 1:
            raise ValueError(f"smoothing 'unexp': eps (the uniform weight) must be in [0, 1), got {eps}")
        self.eps = eps

    def log_r0(self, zeta: Tensor) -> Tensor:
        uniform = torch.full_like(zeta, math.log(self.eps))
        value = torch.logaddexp(math.log1p(-self.eps) + self._log_exp(zeta), uniform)
        return self._inside(zeta, value)

    def cdf0(self, zeta: Tensor) -> Tensor:
        return (1 - self.eps) * self._cdf_exp(zeta) + self.eps * zeta.clamp(0, 1)

    def mean0(self) -> Tensor:
        return (1 - self.eps) * self._mean_exp() + self.eps / 2

    def _sample0(self, shape: torch.Size, device: torch.device) -> Tensor:  # uniform w.p. eps, else the exp
        u, w = torch.rand((2, *shape), dtype=torch.float64, device=device).unbind(0)
        return torch.where(w < self.eps, u, self._icdf_exp(u))


@SMOOTHINGS.register("gauss")
class Gaussian(Smoothing):
    r"""DVAE# Gaussian: ``r(ζ|0) = N(ζ; 0, 1/β)``, ``r(ζ|1) = N(ζ; 1, 1/β)`` on ``ℝ``; implicit gradient."""

    name, baselines = "gauss", ("dvaes_gauss",)
    support = constraints.real

    def _loc(self, z: int) -> Tensor | float:
        return float(z)

    def _scale(self) -> Tensor:
        return self.beta.rsqrt()

    def _log_normal(self, zeta: Tensor, z: int) -> Tensor:
        s = self._scale()
        return -0.5 * ((zeta - self._loc(z)) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)

    def log_r0(self, zeta: Tensor) -> Tensor:
        return self._log_normal(zeta, 0)

    def log_r1(self, zeta: Tensor) -> Tensor:
        return self._log_normal(zeta, 1)

    def cdf0(self, zeta: Tensor) -> Tensor:
        return ndtr((zeta - self._loc(0)) / self._scale())

    def cdf1(self, zeta: Tensor) -> Tensor:
        return ndtr((zeta - self._loc(1)) / self._scale())

    def _cdf_gap(self, zeta: Tensor) -> Tensor:  # upper tail through survival functions: no cancellation
        u0, u1 = (zeta - self._loc(0)) / self._scale(), (zeta - self._loc(1)) / self._scale()
        upper = zeta > (self._loc(0) + self._loc(1)) / 2
        return torch.where(upper, ndtr(-u1) - ndtr(-u0), ndtr(u0) - ndtr(u1))

    def _bracket(self, rho: Tensor) -> tuple[Tensor, Tensor]:
        u = ndtri(rho) * self._scale()
        return u + self._loc(0), u + self._loc(1)

    def mean0(self) -> Tensor | float:
        return self._loc(0)

    def sample_component(self, one: Tensor) -> Tensor:
        loc0, loc1, scale = (torch.as_tensor(x, dtype=torch.float64, device=one.device)
                             for x in (self._loc(0), self._loc(1), self._scale()))
        return torch.where(one, loc1, loc0) + scale * torch.randn(one.shape, dtype=torch.float64,
                                                                  device=one.device)

    def mean1(self) -> Tensor | float:
        return self._loc(1)


@SMOOTHINGS.register("gi")
class GaussianIntegral(Gaussian):
    r"""Posterior side of DVAE#'s Gaussian integral trick: ``r(ζ|z) = N(ζ; z + δ, σ²)`` per unit.

    - ``β`` is the prior's floor on ``λ`` in ``Λ = W + λI`` (see the module docstring for the prior side);
      ``sigma`` defaults to ``β^{-1/2}``, ``shift`` (``δ``) to 0; both may be tensors that broadcast with
      the logits.
    - Implicit gradient in ``logits`` and, when they require grad, in ``sigma`` and ``shift``
      (``∂ζ/∂δ = 1``; ``∂ζ/∂σ = Σ_z π_z r(ζ|z)(ζ - z - δ)/σ / q(ζ)``, both obtained as ``-∂F/∂θ / q(ζ)``).
    """

    name, baselines = "gi", ("dvaes_gi",)

    def __init__(
        self, beta: float | Tensor, sigma: float | Tensor | None = None, shift: float | Tensor = 0.0
    ):
        super().__init__(beta)
        if sigma is not None:
            _check_positive(self.name, "sigma", sigma)
        self.sigma = self.beta.rsqrt() if sigma is None else _param(sigma)
        self.shift = _param(shift)
        self.symmetric = False

    def _loc(self, z: int) -> Tensor:
        return self.shift + z

    def _scale(self) -> Tensor:
        return self.sigma

    def tensor_params(self) -> tuple[Tensor, ...]:
        return tuple(p for p in (self.beta, self.sigma, self.shift) if p.requires_grad)
