r"""``gst``: the Gapped Straight-Through estimator.

Paper: Fan, Chi, Rudnicky & Ramadge (2022), *Training Discrete Deep Generative Models via Gapped
Straight-Through Estimator* (ICML 2022, PMLR 162:6059-6073), https://arxiv.org/abs/2206.07235; authors'
code https://github.com/chijames/GST.

ST-GS differentiates through :math:`\mathrm{softmax}((\theta + G)/\tau)` with Gumbel noise :math:`G`; GST
keeps the properties the paper finds essential in it and drops the noise. Given the hard draw
:math:`D \sim \mathrm{Cat}(\mathrm{softmax}\,\theta)` and :math:`m = \max_k \bar\theta_k` (bars: values held
fixed), the logits are moved deterministically,

.. math::
    \tilde\theta_D = \theta_D + (m - \bar\theta_D),\qquad
    \tilde\theta_j = \theta_j - \max(0,\ \bar\theta_j - m + \delta)\quad (j \ne D),

.. math::
    z = D\ \text{(forward)},\qquad \frac{\partial z}{\partial\theta}
    = \frac{\partial}{\partial\theta}\,\mathrm{softmax}(\tilde\theta / \tau)
    = \tfrac1\tau\big(\mathrm{diag}(s) - s s^\top\big),\quad s = \mathrm{softmax}(\tilde\theta/\tau).

In value :math:`\tilde\theta_D = m` and :math:`\tilde\theta_j = \min(\bar\theta_j, m - \delta)`: the drawn
class is the relaxed point's argmax (consistency) with every other logit at least :math:`\delta` below it
(the gap). The paper's GST-1.0 takes :math:`\delta = 1` (``--gap 1``, the default, as the authors' README
does); GST-p (``--probability-gap``) takes :math:`\delta = -\log(1 - \pi_D)/\pi_D`, here with
:math:`\log(1 - \pi_D) = \log\sum_{j \ne D}\pi_j`, or ``log1p`` when :math:`\pi_D < 1/2` (the authors scale
:math:`\pi_D` by :math:`1 - 10^{-5}` instead). ``--temperature`` :math:`\tau` defaults to 1, as in the
authors' code. (That code also centres :math:`\tilde\theta`, which changes neither softmax nor its Jacobian.)

``f`` sees an exact sample of ``q``, so the value is unbiased; the gradient is biased and, given the draw,
deterministic: its only noise is the draw's. ``n_samples`` draws per example, one evaluation of ``f`` each.
Factorial latents: each variable is drawn, moved and relaxed on its own, so the draw also serves networks of
stochastic layers. Binary latents are the two-class case :math:`\theta = (0, l)`; with
:math:`\epsilon = 2b - 1`,

.. math:: z = b,\qquad \frac{\partial z}{\partial l} = \tfrac1\tau\,\sigma'(y / \tau),\quad
          y = \epsilon \max(\epsilon \bar l,\ \delta),

the relaxed logit :math:`y` on the drawn bit's side and at least :math:`\delta` from 0 (GST-p:
:math:`\pi_D = \sigma(\epsilon \bar l)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.nn.functional import logsigmoid

from ..errors import ConfigError
from .base import Latents, Pathwise, class_log_softmax, class_softmax, positive_temperature, register


@dataclass(frozen=True)
class GSTOptions:
    temperature: float = field(default=1.0, metadata={"help": "tau of the relaxed point softmax(moved "
                                                      "logits / tau) (a training schedule overrides it)"})
    gap: float = field(default=1.0, metadata={"help": "delta, how far below the drawn class's logit the "
                                              "others are moved (GST-1.0: 1)"})
    probability_gap: bool = field(default=False, metadata={"help": "GST-p: the gap -log(1 - pi_D) / pi_D of "
                                                           "the drawn class's probability, not --gap"})

    def __post_init__(self) -> None:
        positive_temperature(self)
        if not self.gap > 0:
            raise ConfigError(f"--gap must be positive, got {self.gap}")

    @property
    def delta(self) -> float | None:
        """The constant gap, or None for GST-p's probability-dependent one."""
        return None if self.probability_gap else self.gap


def probability_gap(log_pi: Tensor, log_rest: Tensor) -> Tensor:
    """GST-p's ``-log(1 - pi) / pi`` from ``log pi`` and ``log(1 - pi)`` (at least 1, and 1 as ``pi -> 0``):
    ``log1p`` below ``pi = 1/2``, the complement's own log above it."""
    pi = log_pi.exp().clamp_min(torch.finfo(log_pi.dtype).tiny)
    minus_log_rest = torch.where(pi < 0.5, -torch.log1p(-pi.clamp(max=0.5)), -log_rest)
    return minus_log_rest / pi


def gapped_logits(latents: Latents, hard: Tensor, delta: float | None) -> Tensor:
    """The moved logits' values (held fixed): categorical :math:`\\tilde\\theta` (n, B, ..., K); binary the
    relaxed logit ``y`` (n, B, ...), on the drawn bit's side and at least ``delta`` from 0."""
    logits = latents.logits.detach()
    if latents.kind == "binary":
        side = 2 * hard - 1  # (n, B, ...)
        x = side * logits  # logit of pi_D
        gap = probability_gap(logsigmoid(x), logsigmoid(-x)) if delta is None else delta
        return side * torch.maximum(x, torch.as_tensor(gap, dtype=x.dtype, device=x.device))
    top = logits.max(-1, keepdim=True).values  # (B, ..., 1)
    if delta is None:
        log_pi = class_log_softmax(logits)  # (B, ..., K)
        log_pi_d = (hard * log_pi).sum(-1, keepdim=True)  # (n, B, ..., 1)
        log_rest = log_pi.masked_fill(hard.bool(), -torch.inf).logsumexp(-1, keepdim=True)
        gap = probability_gap(log_pi_d, log_rest)
    else:
        gap = delta
    return torch.where(hard.bool(), top, torch.minimum(logits, top - gap))


def gst(latents: Latents, hard: Tensor, tau: Tensor, delta: float | None) -> Tensor:
    """``hard`` (n, B, ...) forward, the Jacobian of the gapped relaxed point backward."""
    logits = latents.logits
    moved = logits + (gapped_logits(latents, hard, delta) - logits.detach())  # the logits' gradient, shifted
    soft = torch.sigmoid(moved / tau) if latents.kind == "binary" else class_softmax(moved / tau)
    return hard + (soft - soft.detach())


@register
class GappedStraightThrough(Pathwise):
    """GST: a hard sample of ``q`` forward, the Jacobian of a deterministically gapped softmax backward."""

    name = "gst"
    Options = GSTOptions

    def rsample(self, latents: Latents, n: int, tau: Tensor | float | None = None) -> Tensor:
        return gst(latents, latents.sample(n), self.temperature(tau, latents.logits), self.options.delta)
