"""IGR-Planar: IGR-I with planar-flow layers on the Gaussian pre-image before softmax++.

Papers: Potapczynski et al. (2020), https://arxiv.org/abs/1912.09588, sec. 3.3; planar flows from
Rezende and Mohamed (2015), https://arxiv.org/abs/1505.05770, Appendix A.1.

Each layer maps ``x -> x + u_hat tanh(w^T x + b)`` per latent variable, with
``u_hat = u + (m(w^T u) - w^T u) w / |w|^2``, ``m(a) = -1 + softplus(a)``, so that ``w^T u_hat > -1``
and the layer is invertible by construction. ``log |det| = log |1 + (1 - tanh^2(w^T x + b)) w^T u_hat|``.
The inverse solves the monotone scalar equation ``w^T y = a + w^T u_hat tanh(a + b)`` for
``a = w^T x`` by bisection.

The discrete distribution of the ``tau -> 0`` limit has no closed form here: its class
probabilities are estimated by Monte Carlo (:meth:`ExpIGRPlanar.discrete_log_probs`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .igr import ExpIGR

__all__ = ["ExpIGRPlanar", "PlanarFlow"]


class PlanarFlow(nn.Module):
    """``layers`` planar layers acting on (..., V, D): one set of weights per latent variable ``V``."""

    def __init__(self, variables: int, dim: int, layers: int = 2, init_scale: float = 0.05):
        super().__init__()
        self.w = nn.Parameter(init_scale * torch.randn(layers, variables, dim))
        self.u = nn.Parameter(init_scale * torch.randn(layers, variables, dim))
        self.b = nn.Parameter(torch.zeros(layers, variables))

    @property
    def layers(self) -> int:
        return self.w.shape[0]

    def _u_hat(self, i: int) -> tuple[Tensor, Tensor]:
        w, u = self.w[i], self.u[i]
        wu = (w * u).sum(-1, keepdim=True)
        u_hat = u + (F.softplus(wu) - 1 - wu) * w / (w * w).sum(-1, keepdim=True)
        return u_hat, (w * u_hat).sum(-1)  # (V, D), (V,) with w^T u_hat > -1

    def forward(self, x: Tensor, log_det: bool = True) -> tuple[Tensor, Tensor | None]:
        """``x`` (..., V, D) -> ``f(x)`` and each variable's ``log |det df/dx|`` (..., V), all layers;
        ``log_det=False`` skips the Jacobian (None in its place), for a sampler that needs no density."""
        total = x.new_zeros(x.shape[:-1]) if log_det else None
        for i in range(self.layers):
            u_hat, wu_hat = self._u_hat(i)
            h = torch.tanh((x * self.w[i]).sum(-1) + self.b[i]).unsqueeze(-1)  # (..., V, 1)
            if total is not None:
                total = total + torch.log1p((1 - h[..., 0] ** 2) * wu_hat)
            x = x + u_hat * h
        return x, total

    @torch.no_grad()
    def inverse(self, y: Tensor, iterations: int = 100) -> Tensor:
        """``f^{-1}(y)`` for (..., V, D), layer by layer in reverse, by bisection on ``w^T x``."""
        for i in reversed(range(self.layers)):
            u_hat, wu_hat = self._u_hat(i)
            target = (y * self.w[i]).sum(-1)  # w^T y = a + wu_hat tanh(a + b)
            reach = wu_hat.abs().expand_as(target)
            lo, hi = target - reach - 1e-6, target + reach + 1e-6
            for _ in range(iterations):
                mid = (lo + hi) / 2
                above = mid + wu_hat * torch.tanh(mid + self.b[i]) > target
                hi = torch.where(above, mid, hi)
                lo = torch.where(above, lo, mid)
            a = (lo + hi) / 2
            y = y - u_hat * torch.tanh(a + self.b[i]).unsqueeze(-1)
        return y


class ExpIGRPlanar(ExpIGR):
    """IGR-Planar in log space: ``log softmax++(f(kappa) / tau)``, ``kappa ~ N(loc, scale^2)``.

    ``loc``, ``scale``: (*batch, V, K-1) with the flow's ``V`` variables last but one. The pre-image
    variable this class exposes (:meth:`rsample_preimage`) is the flow's *output* ``lambda = f(kappa)``,
    whose density is ``log N(kappa) - log |det df/dkappa|``. ``mc_samples`` draws estimate the
    discrete class probabilities.

    ``log_prob(log psi)`` is, as for :class:`ExpIGR`, a density w.r.t. Lebesgue measure on the
    ``K - 1`` log coordinates ``log psi_1, ..., log psi_{K-1}``:
    ``log q(lambda) + (K - 1) log tau - log psi_K`` with ``lambda = tau (log psi_{1:K-1} - log psi_K
    + log delta)``; not a density over log-ratios, as
    :class:`~discrete_vae.distributions.ExpConcrete`'s is.
    """

    def __init__(
        self,
        temperature: Tensor | float,
        loc: Tensor,
        scale: Tensor,
        flow: PlanarFlow,
        delta: float = 1.0,
        mc_samples: int = 1000,
        validate_args: bool | None = None,
    ):
        self.flow = flow
        self.mc_samples = mc_samples
        super().__init__(temperature, loc, scale, delta=delta, validate_args=validate_args)

    def rsample_preimage_log_prob(self, sample_shape: torch.Size = torch.Size()) -> tuple[Tensor, Tensor]:
        kappa = super().rsample_preimage(sample_shape)
        lam, log_det = self.flow(kappa)
        return lam, super().preimage_log_prob(kappa) - log_det

    def rsample_preimage(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self.flow(super().rsample_preimage(sample_shape), log_det=False)[0]

    def preimage_log_prob(self, lam: Tensor) -> Tensor:
        """``log q(lambda) = log N(f^{-1}(lambda)) - log |det df/dkappa|`` per variable (no gradient
        through the inverse: use :meth:`rsample_preimage_log_prob` for training)."""
        kappa = self.flow.inverse(lam)
        return super().preimage_log_prob(kappa) - self.flow(kappa)[1]

    @torch.no_grad()
    def discrete_log_probs(self) -> Tensor:
        """Monte Carlo class frequencies of ``argmax(f(kappa), tau log delta)`` with add-1/2 smoothing."""
        lam = self.rsample_preimage(torch.Size([self.mc_samples]))
        hard = self.hard_sample(lam)  # (M, *batch)
        k = self.event_shape[0]
        counts = F.one_hot(hard, k).to(self.loc.dtype).sum(0)
        return (counts + 0.5).log() - math.log(self.mc_samples + 0.5 * k)
