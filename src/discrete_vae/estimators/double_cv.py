r"""``double-cv``: REINFORCE leave-one-out with a second control variate from a Taylor expansion of ``f``.

Paper: Titsias & Shi (2022), "Double Control Variates for Gradient Estimation in Discrete Latent Variable
Models", AISTATS 2022, https://arxiv.org/abs/2111.05300 (reference code: https://github.com/thjashin/double-cv).

With :math:`K` independent draws :math:`z_1, \dots, z_K \sim q_\phi` of an example's latents, their mean
:math:`\mu_\phi = \mathbb{E}_q[z]` (:math:`\sigma(\phi)`, or the class probabilities :math:`\pi`), and
:math:`g_k = \nabla_z f(z_k)` the gradient of ``f`` in its input at draw :math:`k`,

.. math::
    F_k &= f(z_k) + \alpha\,\langle \bar g_{-k},\, z_k - \mu_\phi\rangle,\qquad
    \bar g_{-k} = \frac{1}{K-1}\sum_{j \ne k} g_j,\qquad \bar g = \frac1K\sum_k g_k, \\
    \hat\nabla &= \frac1K\sum_k \Big(F_k - \frac{1}{K-1}\sum_{j \ne k} F_j\Big)\nabla_\phi \log q_\phi(z_k)
        \;-\; \alpha\, \nabla_\phi \langle \bar g, \mu_\phi\rangle \;+\; \frac1K\sum_k \nabla f(z_k).

The first term is ``rloo`` on :math:`F`: ``f`` plus :math:`\alpha` times the part of its first-order
Taylor expansion around the other draws, :math:`\frac{1}{K-1}\sum_{j\ne k}[f(z_j) + \langle g_j, z -
z_j\rangle]`, that varies with :math:`z`, centred at :math:`\mu`. Given the other draws its mean is
:math:`\mathbb{E}_{z_k}[\langle \bar g_{-k}, z_k - \mu\rangle \nabla_\phi \log q(z_k)] =
\nabla_\phi\langle \bar g_{-k}, \mu_\phi\rangle` (the covariance of :math:`z` is
:math:`\partial\mu/\partial\phi`), which the second term removes in expectation (with :math:`\bar g`, of the
same mean, as the reference code does); the :math:`F_j` in a draw's baseline have mean zero given it. So
:math:`\hat\nabla` is unbiased for every :math:`\alpha`. In closed form
:math:`\nabla_\phi\langle \bar g, \mu_\phi\rangle` is :math:`\bar g\,\sigma(\phi)\sigma(-\phi)` (binary) and
:math:`\pi \odot (\bar g - \langle \pi, \bar g\rangle)` per variable (categorical).

- :math:`\alpha` is learned, from 0 (the reference code's start: an untrained ``double-cv`` is ``rloo``):
  ``aux_loss`` is the mean of :math:`\hat\nabla^2` over examples and logits, the reference code's objective;
  :math:`\mathbb{E}[\hat\nabla]` does not depend on :math:`\alpha`, so it is the variance plus a constant.
- :math:`g_k` is detached, as in the reference code: the control variate shapes the gradient for ``q``'s
  logits only, and parameters inside ``f`` get exactly :math:`\frac1K\sum_k\nabla f(z_k)`, as with ``rloo``.
- ``n_samples`` is :math:`K \ge 2`. One estimate calls ``f`` once on all :math:`K` draws (S, B, ...) and takes
  one backward pass through that call to :math:`z` for :math:`g_1..g_K`: :math:`K` evaluations of ``f`` and
  :math:`K` of :math:`\nabla_z f`. For factorial latents (``N`` variables per example) each :math:`z_k` is
  the joint configuration of all ``N``, drawn at once, and :math:`\langle\cdot,\cdot\rangle` sums over all
  variables (and classes).
- Binary as in the paper; categorical too: the construction uses only :math:`\mu = \mathbb{E}[z]` and
  :math:`\mathbb{E}[(z - \mu)\nabla_\phi \log q(z)^\top] = \partial\mu/\partial\phi`, which hold for one-hot
  ``z``; ``f`` is then differentiated in its one-hot input. Where ``f`` is not differentiable in ``z``
  (no gradient reaches it), :math:`g = 0` and the estimate is ``rloo``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .arm import pad_like, score_estimate
from .base import Estimate, Estimator, Latents, Objective, call_f, register
from .rebar import score
from .rloo import leave_one_out_mean


@dataclass(frozen=True)
class DoubleCVOptions:
    alpha: float = field(default=0.0, metadata={"help": "initial weight alpha of the Taylor control variate "
                                                "(learned; 0, the reference code's start, is rloo)"})

    def __post_init__(self) -> None:
        if not math.isfinite(self.alpha):
            raise ConfigError(f"--alpha must be a finite number, got {self.alpha}")


def value_and_input_gradient(f: Objective, z: Tensor) -> tuple[Tensor, Tensor]:
    """``f(z)`` (S, B), differentiable in ``f``'s parameters, and ``grad_z f(z)`` (S, B, ...), detached: one
    call of ``f`` and one backward pass through it to ``z``. ``torch.func.vjp`` rather than
    ``torch.autograd.grad``: torch.compile traces it (``fullgraph``), and ``f(z)`` stays in the graph of
    ``f``'s parameters for the surrogate. Where ``f`` does not depend on ``z`` differentiably, the gradient
    is 0."""
    fz, pull = torch.func.vjp(lambda x: call_f(f, x), z.detach())
    (grad,) = pull(torch.ones_like(fz))  # rows are independent: the gradient of the sum is each draw's own
    return fz, grad.detach()


def mean_gradient(latents: Latents, g: Tensor) -> Tensor:
    """``grad_phi <g, mu_phi>`` for a fixed ``g`` (B, ...): ``g sigma(phi) sigma(-phi)`` (binary), or
    ``pi (g - <pi, g>)`` over each variable's classes (categorical); detached."""
    logits = latents.logits.detach()
    if latents.kind == "binary":
        return g * torch.sigmoid(logits) * torch.sigmoid(-logits)
    probs = logits.softmax(-1)
    return probs * (g - (probs * g).sum(-1, keepdim=True))


class InputGradientCV(Estimator):
    """Estimators whose control variates use ``grad_z f`` at the draws (``double-cv``, ``rodeo``).

    - Samples: ``K`` exact draws per example; ``f`` is called once on all of them and differentiated once in
      ``z`` (:func:`value_and_input_gradient`).
    - ``value``: ``mean_k f(z_k)``. ``surrogate``: ``mean_k f(z_k) + <sg(g), logits>`` with ``g`` the estimate
      for the logits in closed form (:meth:`gradient`), so parameters inside ``f`` get ``mean_k grad f(z_k)``.
    - ``aux_loss``: the mean of ``g**2``, differentiable in the estimator's own parameters only (``f``, its
      input gradients and the logits are detached there); None when none of them requires grad. The
      surrogate does not depend on them (``separable_aux``).
    - Without a gradient to take for the logits (no grad mode, or logits that do not require it), ``f`` is
      only evaluated: ``surrogate = value = mean_k f(z_k)``.
    """

    supports = ("binary", "categorical")
    unbiased = True
    min_samples = 2
    separable_aux = True
    cost = "f and grad_z f once per draw (one backward pass through f to z)"

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        z = latents.sample(n_samples)  # (K, B, ...)
        if not (torch.is_grad_enabled() and latents.logits.requires_grad):  # only f's parameters need one
            value = call_f(f, z).mean(0)  # (B,)
            return Estimate(value, value.detach())
        fz, grad_z = value_and_input_gradient(f, z)  # (K, B), (K, B, ...)
        g = self.gradient(latents, z, fz.detach(), grad_z)  # (B, ...)
        learn = g.requires_grad and any(p.requires_grad for p in self.parameters())
        estimate = score_estimate(latents, fz, latents.logits, g)
        return estimate._replace(aux_loss=g.square().mean() if learn else None)

    def gradient(self, latents: Latents, z: Tensor, fz: Tensor, grad_z: Tensor) -> Tensor:
        """The estimate for the logits (B, ...) from the draws ``z`` (K, B, ...), ``f(z)`` (K, B) and
        ``grad_z f(z)`` (K, B, ...), all detached; differentiable in the estimator's parameters."""
        raise NotImplementedError


@register
class DoubleCV(InputGradientCV):
    """Double control variates: ``rloo`` on ``f`` plus a learned multiple of its Taylor expansion around
    the other draws, with the expansion's mean subtracted in closed form (unbiased for any ``alpha``).

    State: the parameter ``alpha`` (checkpointed), trained through ``aux_loss``.
    """

    name = "double-cv"
    Options = DoubleCVOptions

    def __init__(self, options: DoubleCVOptions | None = None):
        super().__init__(options)
        self.alpha = nn.Parameter(torch.tensor(float(self.options.alpha)))

    def gradient(self, latents: Latents, z: Tensor, fz: Tensor, grad_z: Tensor) -> Tensor:
        s = score(latents, z)  # (K, B, ...): grad log q(z_k) = z_k - mu
        alpha = self.alpha.to(fz.dtype)
        taylor = latents.sum_event(leave_one_out_mean(grad_z) * s)  # (K, B): <g_{-k}, z_k - mu>
        F = fz + alpha * taylor  # (K, B)
        signal = F - leave_one_out_mean(F)  # (K, B)
        return (pad_like(signal, s) * s).mean(0) - alpha * mean_gradient(latents, grad_z.mean(0))  # (B, ...)

    def stats(self) -> dict[str, float]:
        return {"alpha": self.alpha.item()}
