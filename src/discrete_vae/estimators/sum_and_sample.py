r"""``sum-and-sample``: sum exactly over the most probable configurations, REINFORCE on one draw from the
rest (Rao-Blackwellised REINFORCE).

Paper: Liu, Regier, Tripuraneni, Jordan & McAuliffe (2019), "Rao-Blackwellized Stochastic Gradients for
Discrete Distributions", ICML 2019, https://arxiv.org/abs/1810.04777.

With :math:`T` the ``k - 1`` most probable configurations of ``q`` (a set fixed by ``q``, not drawn) and
one draw :math:`z_o \sim q(\cdot \mid z \notin T)`,

.. math::
    \mathbb{E}_q[f] = \sum_{t \in T} q(t) f(t) + \big(1 - q(T)\big)\,
    \mathbb{E}_{q(\cdot \mid z \notin T)}[f],

.. math::
    \hat E = \sum_{t \in T} q(t) f(t) + \big(1 - q(T)\big) f(z_o),\qquad
    \hat\nabla = \sum_{t \in T} q(t)\, g(t) + \big(1 - q(T)\big)\, g(z_o),

.. math:: g(z) = \nabla f(z) + \big(f(z) - b\big)\,\nabla \log q(z),

the single-draw REINFORCE estimate :math:`g` summed over :math:`T` and sampled outside it, with the weights
:math:`q(t)` and :math:`1 - q(T)` held fixed. :math:`\mathbb{E}[g(z_o)]` is the gradient of the remainder's
expectation, so :math:`\hat\nabla` is unbiased, and its variance is at most that of :math:`g` at one draw
from ``q`` (the paper's Rao-Blackwellisation argument); the more mass :math:`T` holds, the smaller. The
baseline :math:`b` must not depend on :math:`z_o`; the paper's two choices are the ``baseline`` option:

- ``sample`` (default; "REINFORCE+", the paper's moving-MNIST runs): :math:`b = f(z')` at an independent
  draw :math:`z' \sim q`, one more evaluation of ``f`` per estimate (summed and sampled terms share it);
- ``none``: :math:`b = 0` (the paper's semi-supervised MNIST runs).

Either way :math:`b` adds :math:`-b\,[\nabla q(T) + \nabla(1 - q(T))] = 0` in expectation.

Factorial latents: the configurations are *joint* configurations of one example's ``N`` variables
(:math:`C^N` of them, ``C = 2`` for binary latents). :math:`T` is found exactly, one configuration at a
time, each the most probable outside the earlier ones (:func:`.joint.most_probable`). The configurations
outside :math:`T` split into parts by where they leave :math:`T`'s trie (:class:`.joint.Outside`), and
:math:`z_o` is drawn exactly and without a rejection loop: a part by its mass, then ``q`` restricted to
it. So a :math:`T` holding nearly all the mass costs nothing extra (where rejection would loop for long).
The weight :math:`1 - q(T)` is the parts' masses summed in log space, positive terms only, so it keeps
every digit however much mass :math:`T` holds (no ``1 -`` a sum near 1).

``n_samples`` is ``k``: ``k - 1`` summed configurations and one sampled, ``k`` evaluations of ``f`` in one
call, plus the baseline's draw with ``baseline = sample`` (:meth:`~SumAndSample.evaluations` says so).
``k >= 2`` (``k = 1`` sums nothing: it is REINFORCE). When the joint space has no more than ``k - 1``
configurations all are summed and nothing is drawn (no baseline either): the estimate is the exact gradient.
Binary and categorical latents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Estimate, Estimator, Latents, Objective, call_f, register
from .exact import count_states, n_states
from .joint import Outside, configurations, most_probable, variable_log_probs
from .reinforce import score

BASELINES = ("sample", "none")


@dataclass(frozen=True)
class SumAndSampleOptions:
    baseline: str = field(default="sample", metadata={
        "help": "REINFORCE baseline b: sample (f at an independent draw of q, one more evaluation of f; "
                "the paper's REINFORCE+) or none"})

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ConfigError(f"--baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")


def split(n_samples: int, states: int) -> tuple[int, bool]:
    """``(summed, drawn)``: how many configurations are summed, and whether one is drawn from the rest."""
    summed = min(n_samples - 1, states)
    return summed, states > summed


@register
class SumAndSample(Estimator):
    """Sum-and-sample (``k = n_samples >= 2``): the ``k - 1`` most probable joint configurations summed
    exactly, one draw from the rest with REINFORCE.

    - Samples: the top ``k - 1`` (deterministic, exact) and one exact draw of ``q`` conditioned on lying
      outside them; with ``baseline = sample`` one more independent draw of ``q``. ``f`` is evaluated once
      on all of them.
    - Value: ``sum_T q(t) f(t) + (1 - q(T)) f(z_o)``, unbiased.
    - Gradient: the REINFORCE estimate ``grad f + (f - b) grad log q`` weighted the same way; unbiased.
      Per example: no state, nothing shared.
    """

    name = "sum-and-sample"
    unbiased = True
    min_samples = 2
    cost = "n_samples + 1 evaluations of f with --baseline sample (the baseline's draw)"
    Options = SumAndSampleOptions

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        m, drawn = split(n_samples, n_states(latents))
        with torch.no_grad():
            log_probs = variable_log_probs(latents)  # (B, C, N)
            summed = most_probable(log_probs, m)  # (B, m, N)
            if drawn:
                rest = Outside(log_probs, summed, sample=True)  # the configurations outside T
                outside = rest.next().unsqueeze(1)  # (B, 1, N)
                log_free = rest.log_mass()  # (B,): log(1 - q(T))
        z = [configurations(latents, summed)]  # (m, B, ...)
        if drawn:
            z.append(configurations(latents, outside))
            if self.options.baseline == "sample":
                z.append(latents.sample(1))
        z = torch.cat(z)  # (m + drawn [+ 1], B, ...)
        fz = call_f(f, z)  # (m + drawn [+ 1], B)
        terms = m + drawn
        log_q = latents.log_prob(z[:terms])  # (terms, B)
        with torch.no_grad():
            weight = log_q.exp()  # (terms, B): q(t), then 1 - q(T) for the draw
            if drawn:
                weight = torch.cat([weight[:m], log_free.exp().unsqueeze(0)])
            baseline = fz[terms].detach() if fz.shape[0] > terms else torch.zeros_like(fz[0])  # (B,)
        f_terms = fz[:terms]
        signal = f_terms.detach() - baseline  # (terms, B)
        surrogate = (weight * (f_terms + signal * score(log_q))).sum(0)  # (B,)
        return Estimate(surrogate, (weight * f_terms.detach()).sum(0))

    def evaluations(self, n_samples: int, kind: str, shape: tuple[int, ...]) -> int:
        """``n_samples`` (+1 for the baseline's draw), fewer where the joint space is smaller."""
        m, drawn = split(n_samples, count_states(kind, shape))
        return m + int(drawn) + int(drawn and self.options.baseline == "sample")
