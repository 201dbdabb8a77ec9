r"""``arms``: Antithetic-REINFORCE-Multi-Sample, leave-one-out REINFORCE on copula-coupled binary draws.

Paper: Dimitriev & Zhou (2021), "ARMS: Antithetic-REINFORCE-Multi-Sample Gradient for Binary Variables",
ICML 2021, https://arxiv.org/abs/2105.14141 (reference code: https://github.com/alekdimi/arms).

``n_samples`` is the number :math:`K \ge 2` of draws per example, any count (not only even). Each coordinate
of :math:`z \sim \mathrm{Bernoulli}(p)`, :math:`p = \sigma(\phi)`, takes its ``K`` draws
:math:`b_1, \dots, b_K` from ``K`` exchangeable, mutually negatively dependent uniforms (a *copula*). Each
coordinate has its own copula draw, independent of the other coordinates', as in the paper, so draw
:math:`b_k` (the joint configuration of an example's ``N`` coordinates) is an exact draw of ``q``. With
:math:`\bar f` the mean of :math:`f(b_k)`,

.. math::
    \hat\nabla_{\phi_n} = \frac{1}{K-1} \sum_{k=1}^K \big(f(b_k) - \bar f\big)\,(b_{k,n} - p_n)\;
    \frac{p_n (1 - p_n)}{P(b_{k,n} = 1,\ b_{j,n} = 0)}\qquad (j \ne k),

the leave-one-out REINFORCE estimator (``rloo``) times a per-coordinate factor that removes the bias the
coupling brings: :math:`P(b_k = 1, b_j = 0) = p - P(b_k = b_j = 1)` is the same for every pair
:math:`j \ne k`. With independent draws the factor is 1 and ARMS is RLOO; it is unbiased for any
exchangeable copula. The value is the mean of ``f`` over the ``K`` draws, and the surrogate adds it for the
pathwise part of the gradient (parameters inside ``f``). One call of ``f`` on all ``K`` draws.

``copula`` (the reference code has both, ``grad_type=arms`` and ``arms_normal``; Dirichlet is the default):

- ``dirichlet``: :math:`d \sim \mathrm{Dirichlet}(1, \dots, 1)` (the spacings of ``K - 1`` sorted
  uniforms), :math:`u_k = (1 - d_k)^{K-1}`; :math:`b_k = 1[u_k < p]` where :math:`p < 1/2` and
  :math:`b_k = 1[u_{K+1-k} > 1 - p]` otherwise, so the rarer outcome falls in the copula's lower tail,
  where two draws cannot both land when :math:`p \le 2^{1-K}`. The factor is
  :math:`\sigma(|\phi|) / \big(1 - (2 - m^{-1/(K-1)})_+^{K-1}\big)`, :math:`m = \sigma(-|\phi|)`.
  At :math:`K = 2`, :math:`u_2 = 1 - u_1`: the antithetic pair of ``disarm``, whose estimator ARMS then
  is (the factor is :math:`\sigma(|\phi|)`); taking the reflected draws in reverse order (the same law, the
  copula being exchangeable) makes it draw the same pair from the same uniform.
- ``gaussian``: :math:`x = \sqrt{K/(K-1)}\,(\epsilon - \bar\epsilon)`, :math:`\epsilon \sim N(0, I_K)`
  (pairwise correlation :math:`-1/(K-1)`), :math:`b_k = 1[x_k < \Phi^{-1}(p)]`; the pair probability is
  :math:`P(b_k = 1, b_j = 0) = 2\,T\big(\Phi^{-1}(p), \sqrt{K/(K-2)}\big)` (Owen's T, by 48-point
  Gauss-Legendre quadrature; :math:`1 - \sigma(|\phi|)` at :math:`K = 2`).

Binary only, as the paper: its categorical extension is ``carms``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .arm import pad_like, score_estimate
from .base import Estimate, Estimator, Latents, Objective, call_f, register
from .rloo import leave_one_out_mean

COPULAS = ("dirichlet", "gaussian")
_NODES, _WEIGHTS = (tuple(float(v) for v in a) for a in np.polynomial.legendre.leggauss(48))


@dataclass(frozen=True)
class ARMSOptions:
    copula: str = field(default="dirichlet", metadata={
        "help": "copula that couples the K draws of each coordinate: dirichlet (the default) or gaussian"})

    def __post_init__(self) -> None:
        if self.copula not in COPULAS:
            raise ConfigError(f"--copula must be one of {', '.join(COPULAS)}, got {self.copula!r}")


@torch.no_grad()
def dirichlet_uniforms(n: int, like: Tensor) -> Tensor:
    """``n`` uniforms per entry of ``like`` coupled by the Dirichlet copula, (n, *like.shape):
    ``u_k = (1 - d_k)^(n-1)`` with ``d`` the spacings of ``n - 1`` sorted uniforms (Dirichlet(1, ..., 1))."""
    v = torch.rand((n - 1, *like.shape), dtype=like.dtype, device=like.device).sort(0).values
    ends = torch.zeros_like(v[:1]), torch.ones_like(v[:1])
    d = torch.cat([ends[0], v, ends[1]]).diff(dim=0)  # (n, ...)
    return (1 - d).pow(n - 1)


def dirichlet_cdf(x: Tensor, y: Tensor, n: int) -> Tensor:
    """``P(u_k <= x, u_j <= y)`` for two of the ``n`` Dirichlet-copula uniforms (``k != j``):
    ``(x^s + y^s - 1)_+^(n-1)``, ``s = 1 / (n - 1)``; never above ``x y`` (negative quadrant dependence)."""
    s = 1.0 / (n - 1)
    return (x.pow(s) + y.pow(s) - 1).clamp_min(0).pow(n - 1)


@torch.no_grad()
def dirichlet_bits(logits: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``n`` coupled draws (n, ...) and the debiasing factor ``p (1 - p) / P(1, 0)`` (...)."""
    u = dirichlet_uniforms(n, logits)  # (n, ...)
    b = torch.where(logits < 0, u < torch.sigmoid(logits), u.flip(0) > torch.sigmoid(-logits))
    # P(b_k = b_j = 1) / m = (2 - m^(-s))_+^(n-1) on the lower tail, m = sigma(-|l|), s = 1 / (n - 1)
    tail = (2 - torch.exp(F.softplus(logits.abs()) / (n - 1))).clamp_min(0).pow(n - 1)
    return b.to(logits.dtype), torch.sigmoid(logits.abs()) / (1 - tail)


def owens_t_pair(h: Tensor, n: int) -> Tensor:
    """``log P(x_k < h, x_j >= h)`` for two of ``n >= 3`` standard normals of correlation ``-1/(n-1)``:
    ``log 2 T(h, a)``, ``a = sqrt(n / (n - 2))``, with
    ``2 T(h, a) = (1 / pi) int_0^atan(a) exp(-h^2 / (2 cos^2 t)) dt`` by Gauss-Legendre quadrature."""
    top = math.atan(math.sqrt(n / (n - 2)))
    nodes = torch.tensor(_NODES, dtype=h.dtype, device=h.device)
    weights = torch.tensor(_WEIGHTS, dtype=h.dtype, device=h.device)
    t = 0.5 * top * (nodes + 1)  # (Q,)
    exponent = -0.5 * h.square().unsqueeze(-1) / t.cos().square()  # (..., Q)
    return (exponent + weights.log()).logsumexp(-1) + math.log(0.5 * top / math.pi)


@torch.no_grad()
def gaussian_bits(logits: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``n`` draws (n, ...) coupled by the Gaussian copula of correlation ``-1/(n-1)``, and the debiasing
    factor ``p (1 - p) / P(1, 0)`` (...)."""
    eps = torch.randn((n, *logits.shape), dtype=logits.dtype, device=logits.device)
    x = (eps - eps.mean(0)) * math.sqrt(n / (n - 1))  # (n, ...)
    h = torch.special.ndtri(torch.sigmoid(-logits.abs()))  # Phi^-1 of the rarer outcome's probability
    b = x < -torch.sign(logits) * h  # Phi^-1(p) = -sign(l) h
    if n == 2:  # antithetic normals: P(1, 0) = sigma(-|l|)
        return b.to(logits.dtype), torch.sigmoid(logits.abs())
    log_factor = F.logsigmoid(logits) + F.logsigmoid(-logits) - owens_t_pair(h, n)
    return b.to(logits.dtype), log_factor.clamp_max(0).exp()  # <= 1: negative dependence


@register
class ARMS(Estimator):
    """ARMS: leave-one-out REINFORCE on ``K`` copula-coupled draws, debiased per coordinate (unbiased).

    - Samples: ``K = n_samples >= 2`` exact draws per example, negatively dependent per coordinate
      (Dirichlet or Gaussian copula), independent across coordinates; ``f`` is evaluated once on all.
    - Value: ``mean_k f(b_k)``, unbiased.
    - Gradient: ``(f(b_k) - mean_{j != k} f(b_j)) (b_k - p) p (1 - p) / P(b_k = 1, b_j = 0)`` averaged over
      ``k``, plus ``grad f(b_k)`` for parameters inside ``f``; unbiased. No state.
    """

    name = "arms"
    unsupported = "categorical: its extension is carms"
    supports = ("binary",)
    unbiased = True
    min_samples = 2
    Options = ARMSOptions

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        logits = latents.logits  # (B, ...)
        draw = dirichlet_bits if self.options.copula == "dirichlet" else gaussian_bits
        b, factor = draw(logits.detach(), n_samples)  # (K, B, ...), (B, ...)
        f_all = call_f(f, b)  # (K, B)
        fz = f_all.detach()
        signal = pad_like(fz - leave_one_out_mean(fz), b)  # (K, B, 1, ...)
        grad = factor * (signal * (b - torch.sigmoid(logits.detach()))).mean(0)  # (B, ...)
        return score_estimate(latents, f_all, logits, grad)
