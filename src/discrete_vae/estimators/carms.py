r"""``carms``: Categorical-Antithetic-REINFORCE Multi-Sample, importance-weighted pairs of coupled draws.

Paper: Dimitriev & Zhou (2021), "CARMS: Categorical-Antithetic-REINFORCE Multi-Sample Gradient Estimator",
NeurIPS 2021, https://arxiv.org/abs/2110.14002 (reference code: https://github.com/alekdimi/carms). This is
the paper's exact variant, CARMS-I (inverse CDF, ``grad_type=carms``); CARMS-G estimates its pair
probabilities by Monte Carlo and is not implemented.

``n_samples`` is the number :math:`K \ge 2` of draws per example. Each categorical variable of an
example (probabilities :math:`p` over ``C`` classes) takes its ``K`` classes from ``K`` uniforms coupled by
the Dirichlet copula of ``arms`` (:math:`u_k = (1 - d_k)^{K-1}`, :math:`d \sim \mathrm{Dir}(1, \dots, 1)`),
read through the inverse CDF of :math:`p` with the classes laid out in an order :math:`\pi` drawn uniformly
from a set :math:`\Pi` of :math:`C(C-1)/2` orders (one per pair :math:`a < b`: :math:`a` first, :math:`b`
last, the others in cyclic order from :math:`b + 1`; the reference code's set). One order per variable,
shared by its ``K`` draws; the variables' orders and copulas are independent, so draw :math:`z_k` (the joint
configuration of an example's variables) is an exact draw of ``q``. Two draws of a variable are classes
:math:`(a, b)` with probability

.. math::
    J(a, b) = \frac{1}{|\Pi|} \sum_{\pi \in \Pi} \Big[ D(R^\pi_a, R^\pi_b) - D(L^\pi_a, R^\pi_b)
    - D(R^\pi_a, L^\pi_b) + D(L^\pi_a, L^\pi_b) \Big],\qquad D(x, y) = (x^s + y^s - 1)_+^{K-1},
    \ s = \tfrac{1}{K-1},

with :math:`[L^\pi_a, R^\pi_a)` class :math:`a`'s interval of the CDF in order :math:`\pi` and :math:`D`
the copula's bivariate CDF. For each variable, with :math:`w(a, b) = p_a p_b / J(a, b)` of its classes and
``f`` of the whole draws,

.. math::
    \hat\nabla_\phi = \frac{1}{K(K-1)} \sum_{k \ne j} w(z_k, z_j)
    \big(f(z_k) - f(z_j)\big)\,\nabla_\phi \log q_\phi(z_k)
    = \frac{1}{K(K-1)} \sum_{k < j} w(z_k, z_j) \big(f(z_k) - f(z_j)\big)\,(e_{z_k} - e_{z_j})

(on the variable's logits :math:`\nabla_\phi \log q(z_k) = e_{z_k} - p`; the :math:`p` terms cancel in the
symmetric sum, and so do pairs of equal classes): RLOO's pairs reweighted. It is unbiased because
:math:`\mathbb{E}[w(z_k, z_j)\, h(z_k, z_j)] = \sum_{a, b} p_a p_b\, h(a, b)` as long as
:math:`J(a, b) > 0` for :math:`a \ne b`. One fixed order can fail that (at :math:`K = 2`,
:math:`u_2 = 1 - u_1`: two middle classes are never drawn together), hence the random order and :math:`J`
averaged over :math:`\Pi`, the law of a pair of draws not given the order. The order with :math:`a` first and
:math:`b` last and :math:`D(x, y) \le xy` give :math:`J(a, b) \ge p_a p_b / |\Pi|`, so the weights are at
most :math:`|\Pi|` (a floor that guards rounding). With independent draws the weights are 1 and CARMS is
RLOO. The reference code trains with the weights smoothed and clipped, :math:`(p_a p_b + 10^{-3}) /
(J(a, b) + 10^{-3})` held in :math:`[0.01, 10]`, which biases it (pairs of rare classes are pulled towards
weight 1); here they are exact. The value is the mean of ``f`` over the ``K`` draws; the surrogate adds it
for the pathwise part of the gradient. One call of ``f`` on all ``K`` draws; the weights take
:math:`O(K^2 |\Pi|)` memory per variable.

Binary latents are the case :math:`C = 2` (classes :math:`b = 0, 1`, one order, :math:`b = 1` iff
:math:`u \ge 1 - p`): the form of ``arms`` with its Dirichlet copula, which CARMS generalises. ``arms`` also
turns the copula per coordinate so that the rarer outcome lies in its lower tail; here the order is fixed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .arm import pad_like, score_estimate
from .arms import dirichlet_cdf, dirichlet_uniforms
from .base import Estimate, Estimator, Latents, Objective, call_f, class_softmax, register


def class_orders(c: int) -> list[list[int]]:
    """The ``C (C - 1) / 2`` class orders: for each pair ``a < b``, ``a`` first, ``b`` last, the other classes
    in cyclic order from ``b + 1``."""
    return [[a, *[(b + t) % c for t in range(1, c) if (b + t) % c != a], b]
            for a in range(c) for b in range(a + 1, c)]


def rectangle(x0: Tensor, x1: Tensor, y0: Tensor, y1: Tensor, n: int) -> Tensor:
    """``P(x0 <= u_k < x1, y0 <= u_j < y1)`` for two of the ``n`` Dirichlet-copula uniforms."""
    return (dirichlet_cdf(x1, y1, n) - dirichlet_cdf(x0, y1, n) - dirichlet_cdf(x1, y0, n)
            + dirichlet_cdf(x0, y0, n))


@torch.no_grad()
def coupled_draws(probs: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``n`` draws per variable of ``probs`` (B, ..., C) by the Dirichlet copula through the inverse CDF in a
    random order: their classes (n, B, ...) and the pair weights ``p_a p_b / J(a, b)`` for the pairs
    ``k < j`` (M, B, ...), ``M = n (n - 1) / 2`` in :func:`torch.triu_indices` order."""
    c = probs.shape[-1]
    orders = torch.tensor(class_orders(c), device=probs.device)  # (P, C): rank -> class
    ranks = orders.argsort(-1)  # (P, C): class -> rank
    batch = probs.shape[:-1]
    right = probs[..., orders].cumsum(-1)  # (B, ..., P, C): right ends of the intervals, in rank order
    pick = torch.randint(orders.shape[0], batch, device=probs.device)  # (B, ...): one order per variable
    ends = right.gather(-2, pick[..., None, None].expand(*batch, 1, c)).squeeze(-2)  # (B, ..., C)
    u = dirichlet_uniforms(n, probs[..., 0]) * ends[..., -1]  # (n, B, ...)
    rank = (ends.unsqueeze(0) <= u.unsqueeze(-1)).sum(-1).clamp_(max=c - 1)  # (n, B, ...)
    cls = orders[pick].expand(n, *batch, c).gather(-1, rank.unsqueeze(-1)).squeeze(-1)  # (n, B, ...)
    # the intervals of the drawn classes in every order: (n, B, ..., P) each
    right = right.gather(-1, ranks.expand(*batch, *ranks.shape))  # (B, ..., P, C) in class order
    index = cls[..., None, None].expand(n, *batch, orders.shape[0], 1)
    r = right.expand(n, *right.shape).gather(-1, index).squeeze(-1)
    p = probs.expand(n, *probs.shape).gather(-1, cls.unsqueeze(-1)).squeeze(-1)  # (n, B, ...)
    lo = (r - p.unsqueeze(-1)).clamp_min(0)
    k, j = torch.triu_indices(n, n, 1, device=probs.device)  # (M,) each
    joint = rectangle(lo[k], r[k], lo[j], r[j], n).mean(-1)  # (M, B, ...)
    both = p[k] * p[j]
    return cls, both / torch.maximum(joint, both / orders.shape[0])


@register
class CARMS(Estimator):
    """CARMS: RLOO pairs of ``K`` copula-coupled draws, importance-weighted by their pair probability.

    - Samples: ``K = n_samples >= 2`` exact draws per example, coupled per variable by the Dirichlet copula
      through the inverse CDF in a random class order; ``f`` is evaluated once on all of them.
    - Value: ``mean_k f(z_k)``, unbiased.
    - Gradient: ``p_a p_b / J(a, b) (f(z_k) - f(z_j)) (e_{z_k} - e_{z_j})`` over pairs ``k < j``, divided by
      ``K (K - 1)``, plus ``grad f(z_k)`` for parameters inside ``f``; unbiased. No state.
    - Binary latents are two classes.
    """

    name = "carms"
    supports = ("binary", "categorical")
    unbiased = True
    min_samples = 2

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        binary = latents.kind == "binary"
        if binary:  # classes b = 0, 1 with logits (0, l)
            logit = latents.logits
            latents = Latents("categorical", torch.stack([torch.zeros_like(logit), logit], -1))
        logits = latents.logits  # (B, ..., C)
        probs = class_softmax(logits.detach())
        cls, weight = coupled_draws(probs, n_samples)  # (K, B, ...), (M, B, ...): M pairs k < j
        z = torch.nn.functional.one_hot(cls, probs.shape[-1]).to(probs.dtype)  # (K, B, ..., C)
        f_all = call_f(f, z[..., 1] if binary else z)  # (K, B)
        fz = f_all.detach()
        k, j = torch.triu_indices(n_samples, n_samples, 1, device=fz.device)
        signal = weight * pad_like(fz[k] - fz[j], weight)  # (M, B, ...)
        grad = (signal.unsqueeze(-1) * (z[k] - z[j])).sum(0) / (n_samples * (n_samples - 1))  # (B, ..., C)
        return score_estimate(latents, f_all, logits, grad)
