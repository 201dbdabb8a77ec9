r"""``unordered``: the unordered set estimator, ``k`` distinct draws without replacement and a built-in
baseline.

Paper: Kool, van Hoof & Welling (2020), "Estimating Gradients for Discrete Random Variables by Sampling
without Replacement", ICLR 2020, https://arxiv.org/abs/2002.06043.

For a set :math:`S = \{s_1, \dots, s_k\}` of ``k`` distinct draws without replacement from ``q`` over the
domain :math:`D` (Gumbel-top-k), let :math:`p^{D \setminus A}(B)` be the probability that draws without
replacement from ``q`` restricted to :math:`D \setminus A` start with the elements of :math:`B` in any order,

.. math::
    p^{D \setminus A}(B) = \sum_{\text{orders } o \text{ of } B} \prod_i
    \frac{q(b_{o_i})}{1 - q(A) - \sum_{j < i} q(b_{o_j})},

:math:`p(S) = p^{D}(S)`, and the leave-one-out ratios

.. math::
    R(S, s) = \frac{p^{D \setminus \{s\}}(S \setminus \{s\})}{p(S)},\qquad
    R^{D \setminus \{s\}}(S, s') = \frac{p^{D \setminus \{s, s'\}}(S \setminus \{s, s'\})}
    {p^{D \setminus \{s\}}(S \setminus \{s\})}\quad (= 1 \text{ for } s' = s).

The estimator with its built-in baseline is

.. math::
    \hat E = \sum_{s \in S} w_s f(s),\qquad
    \hat\nabla = \sum_{s \in S} w_s \Big[\nabla f(s) + \big(f(s) - b_s\big) \nabla \log q(s)\Big],

.. math::
    w_s = q(s) R(S, s),\qquad b_s = \sum_{s' \in S} q(s') R^{D \setminus \{s\}}(S, s') f(s').

:math:`w_s` is the probability that ``s`` was drawn first given the unordered set (the weights sum to 1), so
:math:`\hat E` and :math:`\hat\nabla` without :math:`b_s` are the single-draw estimates Rao-Blackwellised
over the order of the draws. Given that ``s`` was drawn first, :math:`b_s` is :math:`q(s) f(s)` plus the
same estimator's estimate of :math:`\sum_{s' \ne s} q(s') f(s')` from the other ``k - 1`` draws, so its
expectation is :math:`\mathbb{E}_q[f]` whatever ``s`` is, and the baseline adds nothing in expectation. The
estimator is unbiased, needs ``k >= 2`` (with one draw there is nothing to build the baseline from) and
has no state.

Set probabilities: exactly, by a recursion over the :math:`2^k` subsets :math:`V \subseteq S` rather than
the :math:`k!` orders or the paper's numerical integration. With
:math:`F(V) = p^{D \setminus V}(S \setminus V)`,

.. math:: F(S) = 1,\qquad F(V) = \sum_{t \in S \setminus V} \frac{q(t)}{1 - q(V)}\, F(V \cup \{t\}),

so :math:`p(S) = F(\emptyset)`, :math:`R(S, s) = F(\{s\}) / F(\emptyset)` and
:math:`R^{D \setminus \{s\}}(S, s') = F(\{s, s'\}) / F(\{s\})`: :math:`k\,2^{k-1}` positive terms in
log space (5,120 per example at ``k = 10``, where one set's orders alone are 3,628,800), exact up to
rounding. :math:`1 - q(V)` is computed as :math:`1 - q(v_{\max})` (by ``expm1``) minus the others' mass,
and bounded below by :math:`q(S \setminus V)` (true, as :math:`S \setminus V \subseteq D \setminus V`):
accurate when one configuration holds nearly all the mass, where the paper's code (once the draws hold all
but :math:`10^{-5}` of it) takes the exact gradient's weights instead.

Factorial latents: the sample space is the *joint* configuration of one example's ``N`` variables
(:math:`C^N` configurations, ``C = 2`` for binary latents), as in the paper's VAE experiments. The ``k``
distinct joint configurations are drawn one after another, each from ``q`` restricted to the
configurations not drawn yet (:func:`.joint.draw_without_replacement`: exact, vectorised over the variables,
``k`` Python iterations): sampling without replacement, whose draws have the law of the Gumbel-top-k of the
joint. ``n_samples`` is ``k``: distinct configurations, evaluated by ``f`` in one call. Binary and
categorical latents. When the joint space has ``M < k`` configurations, all ``M`` are taken (and
evaluated): then every :math:`F = 1`, :math:`w_s = q(s)`, :math:`b_s = \mathbb{E}_q[f]`, and the
estimate is the exact gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Estimate, Estimator, Latents, Objective, call_f, register
from .exact import count_states, n_states
from .joint import configurations, draw_without_replacement, variable_log_probs
from .reinforce import score


@torch.no_grad()
def set_probabilities(log_p: Tensor) -> Tensor:
    """``log F(V) = log p^{D \\ V}(S \\ V)`` for every subset ``V`` of the ``k`` draws ``S`` whose log
    probabilities are ``log_p`` (B, k): (B, 2^k), ``V`` as a bitmask (bit ``i`` for draw ``i``)."""
    b, k = log_p.shape
    n = 2**k
    order = log_p.argsort(-1, descending=True)
    lp = log_p.gather(1, order)  # (B, k) sorted: a subset's most probable draw is its lowest bit
    subsets = torch.arange(n, device=log_p.device)
    member = (subsets.unsqueeze(-1) >> torch.arange(k, device=log_p.device)) & 1 == 1  # (2^k, k)
    mass = lp.new_full((b, 1), -math.inf)  # log q(U) for every subset U, by doubling
    for i in range(k):
        mass = torch.cat([mass, torch.logaddexp(mass, lp[:, i : i + 1])], 1)
    top = torch.where(subsets == 0, -math.inf, lp[:, member.to(torch.uint8).argmax(-1)])  # (B, 2^k)
    others = mass[:, subsets & (subsets - 1)]  # log q(V without its most probable draw)
    log_free = (-torch.expm1(top) - others.exp()).clamp_min(0).log()  # log(1 - q(V))
    log_free = torch.maximum(log_free, mass.flip(-1))  # >= log q(S \\ V), exact when S is all of D
    log_f = lp.new_zeros(b, n)  # F(S) = 1; the smaller sets are filled below, size by size
    by_size = member.sum(-1).argsort(stable=True)  # the empty set first, S last
    end = n - 1
    for size in range(k - 1, -1, -1):
        sets = by_size[end - math.comb(k, size) : end]  # (count,)
        absent = member[sets].to(torch.uint8).argsort(dim=-1, stable=True)[:, : k - size]  # (count, k - size)
        successor = sets.unsqueeze(-1) | 2**absent
        log_f[:, sets] = (lp[:, absent] + log_f[:, successor]).logsumexp(-1) - log_free[:, sets]
        end -= math.comb(k, size)
    rank = 2 ** order.argsort(-1)  # (B, k): each draw's bit in the sorted labels
    index = torch.zeros_like(rank[:, :1])  # each subset's index in the sorted labels, by doubling
    for i in range(k):
        index = torch.cat([index, index + rank[:, i : i + 1]], 1)
    return log_f.gather(1, index)


@torch.no_grad()
def unordered_weights(log_p: Tensor) -> tuple[Tensor, Tensor]:
    """``(w, v)`` for draws of log probabilities ``log_p`` (B, k): ``w_s = q(s) R(S, s)`` (B, k), and
    ``v[s, s'] = q(s') R^{D \\ s}(S, s')`` (B, k, k), whose rows weigh ``f`` into the baselines."""
    log_f = set_probabilities(log_p)  # (B, 2^k)
    single = 2 ** torch.arange(log_p.shape[1], device=log_p.device)  # (k,): the set {s}
    log_f1 = log_f[:, single]  # (B, k)
    log_f2 = log_f[:, single.unsqueeze(1) | single]  # (B, k, k): {s, s'}, the diagonal {s}
    w = (log_p + log_f1 - log_f[:, :1]).exp()
    v = (log_p.unsqueeze(1) + log_f2 - log_f1.unsqueeze(-1)).exp()
    return w, v


def unordered_estimate(latents: Latents, f: Objective, z: Tensor) -> Estimate:
    """The estimate from ``z`` (k, B, ...), ``k`` distinct draws without replacement per example (or
    all configurations where there are fewer); ``f`` is called once on them."""
    fz = call_f(f, z)  # (k, B)
    log_q = latents.log_prob(z)  # (k, B)
    w, v = unordered_weights(log_q.detach().T)  # (B, k), (B, k, k)
    f_det = fz.detach().T  # (B, k)
    baseline = (v * f_det.unsqueeze(1)).sum(-1)  # (B, k)
    signal = (f_det - baseline).T  # (k, B)
    surrogate = (w.T * (fz + signal * score(log_q))).sum(0)  # (B,)
    return Estimate(surrogate, (w * f_det).sum(-1))


@register
class Unordered(Estimator):
    """The unordered set estimator with its built-in baseline (``k = n_samples >= 2`` distinct draws).

    - Samples: ``k`` distinct joint configurations per example, drawn without replacement (each from ``q``
      restricted to those not drawn yet: the Gumbel-top-k of the joint); ``f`` is evaluated once on all.
    - Value: ``sum_s w_s f(s)`` with ``w_s = q(s) R(S, s)``, the probability that ``s`` came first given
      the set; unbiased.
    - Gradient: ``w_s [grad f(s) + (f(s) - b_s) grad log q(s)]`` summed over the set, with the baseline
      ``b_s`` from the same ``k`` evaluations; unbiased. Per example: no state, nothing shared.
    - Fewer than ``k`` joint configurations: all of them, and the exact gradient.
    """

    name = "unordered"
    unbiased = True
    min_samples = 2

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        k = min(n_samples, n_states(latents))
        with torch.no_grad():
            log_probs = variable_log_probs(latents)  # (B, C, N)
        z = configurations(latents, draw_without_replacement(log_probs, k))  # (k, B, ...)
        return unordered_estimate(latents, f, z)

    def evaluations(self, n_samples: int, kind: str, shape: tuple[int, ...]) -> int:
        """``n_samples``, or the joint space's size where smaller."""
        return min(n_samples, count_states(kind, shape))
