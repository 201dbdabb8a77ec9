"""The smoothings of DVAE and DVAE++: spike-and-exponential, overlapping exponential, and power function.

Papers: Rolfe (2017), *Discrete Variational Autoencoders*, https://arxiv.org/abs/1609.02200 (spike-and-exp,
§2.1); Vahdat, Macready, Bian, Khoshaman, Andriyash (2018), *DVAE++*, https://arxiv.org/abs/1802.04920
(overlapping exponential smoothing, analytic inverse CDF of the mixture; power-function smoothing). DVAE#
reuses the exponential and the power function (baselines ``dvaes_exp``, ``dvaes_power``), both sampled with
the implicit gradient. The smoothing contract, its implicit gradient and the registry are in
:mod:`.smoothing`; the smoothings DVAE# introduced are in :mod:`.dvae_sharp`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .smoothing import SMOOTHINGS, Smoothing, _Exponential

__all__ = ["Exponential", "Power", "SpikeExp"]


@SMOOTHINGS.register("spike-exp")
class SpikeExp(Smoothing):
    r"""DVAE spike-and-exp (Rolfe 2017, §2.1): ``r(ζ|0) = δ(ζ)``, ``r(ζ|1) = β e^{β(ζ-1)}/(1-e^{-β})``.

    - Densities are with respect to ``δ_0 + Lebesgue`` on ``[0, 1]``: ``log r(0|0) = 0`` (the unit mass),
      ``r(ζ|0) = 0`` for ``ζ > 0`` and ``r(0|1) = 0``; so ``log q(0) = log(1-q)`` and
      ``log q(ζ) = log q + log r(ζ|1)`` for ``ζ > 0``.
    - Closed form: ``ζ = 0`` if ``ρ ≤ 1-q``, else ``ζ = 1 + log(e^{-β} + t(1-e^{-β}))/β``, ``t = (ρ-1+q)/q``.
    - Not symmetric: ``r(ζ|1) ≠ r(1-ζ|0)``.
    """

    name, baselines, analytic, symmetric = "spike-exp", ("dvae_spike_exp",), True, False
    point_mass = True

    def log_r0(self, zeta: Tensor) -> Tensor:
        return torch.where(zeta == 0, 0.0, -math.inf).to(zeta.dtype)

    def cdf0(self, zeta: Tensor) -> Tensor:
        return (zeta >= 0).to(zeta.dtype)

    def log_r1(self, zeta: Tensor) -> Tensor:
        b = self.beta
        value = b.log() + b * (zeta - 1) - torch.log(-torch.expm1(-b))
        return torch.where((zeta > 0) & (zeta <= 1), value, -math.inf)

    def cdf1(self, zeta: Tensor) -> Tensor:
        b, z = self.beta, zeta.clamp(0, 1)
        return torch.expm1(b * z) * torch.exp(-b) / -torch.expm1(-b)

    def _icdf1(self, rho: Tensor) -> Tensor:
        b = self.beta
        return 1 + torch.log(torch.exp(-b) - rho * torch.expm1(-b)) / b

    def _bracket(self, rho: Tensor) -> tuple[Tensor, Tensor]:
        return torch.zeros_like(rho), self._icdf1(rho)

    def _on_atom(self, zeta: Tensor) -> Tensor:
        return zeta == 0

    def sample_component(self, one: Tensor) -> Tensor:
        u = torch.rand(one.shape, dtype=torch.float64, device=one.device)
        return torch.where(one, self._icdf1(u), torch.zeros_like(u))

    def mean0(self) -> Tensor:
        return torch.zeros_like(self.beta)

    def mean1(self) -> Tensor:
        return 1 - 1 / self.beta + 1 / torch.expm1(self.beta)

    def _icdf_analytic(self, rho: Tensor, logits: Tensor) -> Tensor:
        p0 = torch.sigmoid(-logits)
        t = ((rho - p0) / torch.sigmoid(logits)).clamp(0, 1)
        return torch.where(rho <= p0, torch.zeros_like(rho), self._icdf1(t))


@SMOOTHINGS.register("exp")
class Exponential(_Exponential):
    r"""Overlapping exponential (DVAE++ §3.2 / DVAE# exp): ``r(ζ|0) = β e^{-βζ}/(1-e^{-β})`` on ``[0, 1]``.

    - Closed form: with ``x = e^{-βζ}``, ``b = e^{-β}``, ``c = 1-b``, ``F(ζ) = ρ`` is the quadratic
      ``(1-q)x² + m x - qb = 0``, ``m = ρc - (1-q) + qb``; its positive root is taken as ``2qb/(m + √d)``
      when ``m > 0`` and ``(√d - m)/(2(1-q))`` otherwise (``d = m² + 4q(1-q)b``), free of cancellation.
    - Gradients: closed form by default (DVAE++); ``implicit=True`` is DVAE#'s exp (baseline ``dvaes_exp``).
    """

    name, baselines, analytic = "exp", ("dvaepp_exp", "dvaes_exp"), True

    def log_r0(self, zeta: Tensor) -> Tensor:
        return self._inside(zeta, self._log_exp(zeta))

    def cdf0(self, zeta: Tensor) -> Tensor:
        return self._cdf_exp(zeta)

    def icdf0(self, rho: Tensor) -> Tensor:
        return self._icdf_exp(rho)

    def mean0(self) -> Tensor:
        return self._mean_exp()

    def _icdf_analytic(self, rho: Tensor, logits: Tensor) -> Tensor:
        q, p0, b = torch.sigmoid(logits), torch.sigmoid(-logits), torch.exp(-self.beta)
        m = -rho * torch.expm1(-self.beta) - p0 + q * b
        root = torch.sqrt(m * m + 4 * p0 * q * b)
        pos = m > 0
        x = torch.where(  # double where: the branch not taken never divides by zero
            pos, 2 * q * b / torch.where(pos, m + root, 1.0), (root - m) / torch.where(pos, 1.0, 2 * p0)
        )
        return (-torch.log(x) / self.beta).clamp(0, 1)


@SMOOTHINGS.register("power")
class Power(Smoothing):
    r"""Power function (DVAE++, DVAE#): ``r(ζ|0) = λζ^{λ-1}``, ``R(ζ|0) = ζ^λ`` on ``[0, 1]``, ``λ = 1/β``.

    - The density diverges at ``ζ = 0`` (``log r(0|0) = +inf``; likewise ``r(1|1)``); in float32 many samples
      round to exactly 0 or 1, where ``log_prob`` is ``+inf`` (the original code evaluates at ``ζ + 1e-7``).
    - Implicit gradient only (the mixture CDF ``(1-q)ζ^λ + q(1-(1-ζ)^λ)`` has no closed-form inverse).
    """

    name, baselines = "power", ("dvaepp_power", "dvaes_power")

    def log_r0(self, zeta: Tensor) -> Tensor:
        return self._inside(zeta, -self.beta.log() + (1 / self.beta - 1) * torch.log(zeta))

    def cdf0(self, zeta: Tensor) -> Tensor:
        return zeta.clamp(0, 1) ** (1 / self.beta)

    def icdf0(self, rho: Tensor) -> Tensor:
        return rho**self.beta

    def mean0(self) -> Tensor:
        return 1 / (1 + self.beta)
