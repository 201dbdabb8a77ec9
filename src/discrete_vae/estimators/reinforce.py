r"""``reinforce``: the score-function (likelihood-ratio) estimator with a moving-average baseline.

Paper: Williams (1992), "Simple statistical gradient-following algorithms for connectionist reinforcement
learning", https://doi.org/10.1007/BF00992696. The decaying-average baseline and its default decay 0.9 follow
Pyro's ``TraceGraph_ELBO`` (``use_decaying_avg_baseline``, ``baseline_beta``),
https://pyro.ai/examples/svi_part_iii.html.

.. math::
    \hat\nabla = \frac1S \sum_s \big(f(z_s) - b\big)\,\nabla_\phi \log q_\phi(z_s) + \nabla f(z_s),
    \qquad z_s \sim q_\phi,

.. math:: b \leftarrow \beta\, b + (1 - \beta)\, \overline{f}\quad\text{after each training call}

where :math:`\overline{f}` is the batch mean of :math:`f(z_s)` (the first training call sets
:math:`b = \overline{f}`). The baseline is shared across the batch and used *before* it is updated, so
it does not depend on the draws it multiplies and the estimator stays unbiased given the past.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Estimate, Estimator, Latents, Objective, call_f, register


def score(log_q: Tensor) -> Tensor:
    """Zero in the forward pass, ``grad log q`` in the backward pass: ``log_q - log_q.detach()``."""
    return log_q - log_q.detach()


def score_surrogate(fz: Tensor, signal: Tensor, log_q: Tensor) -> Tensor:
    """``mean_s [f(z_s) + signal_s * score(log q(z_s))]`` (S, B) -> (B,).

    Its value is the sample mean of ``f``; its gradient is the pathwise term ``mean_s grad f(z_s)`` plus
    the score-function term ``mean_s signal_s grad log q(z_s)`` (``signal`` is detached here)."""
    return (fz + signal.detach() * score(log_q)).mean(0)


def check_decay(decay: float) -> None:
    """``__post_init__`` check of a moving average's decay."""
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"--decay must be in [0, 1), got {decay}")


@dataclass(frozen=True)
class ReinforceOptions:
    decay: float = field(default=0.9, metadata={"help": "decay beta of the moving-average baseline "
                                                "b <- beta b + (1 - beta) mean f, in [0, 1)"})

    def __post_init__(self) -> None:
        check_decay(self.decay)


@register
class Reinforce(Estimator):
    """REINFORCE with a moving-average baseline.

    - Samples: exact draws ``z ~ q``; ``f`` is evaluated once on all ``S`` of them.
    - Value: ``mean_s f(z_s)``, unbiased.
    - Gradient: ``(f(z_s) - b) grad log q(z_s)`` for ``q``'s logits plus ``grad f(z_s)`` for parameters
      inside ``f``, averaged over samples; unbiased.
    - State: the buffers ``baseline`` and ``steps`` (checkpointed with ``state_dict``). They are shared by
      the whole batch and updated from its mean after each call in training mode only (``.eval()``
      freezes them; a fresh estimator in eval mode is plain REINFORCE with ``b = 0``).
    """

    name = "reinforce"
    unbiased = True
    Options = ReinforceOptions

    def __init__(self, options: ReinforceOptions | None = None):
        super().__init__(options)
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        z = latents.sample(n_samples)  # (S, B, ...)
        fz = call_f(f, z)  # (S, B)
        signal = fz.detach() - self.baseline.to(fz)  # (S, B): the baseline from before this call
        surrogate = score_surrogate(fz, signal, latents.log_prob(z))  # (B,)
        if self.training:
            self.update(fz.detach().mean())
        return Estimate(surrogate, fz.detach().mean(0))

    def update(self, mean: Tensor) -> None:
        """``b <- beta b + (1 - beta) mean``; the first update sets ``b = mean`` (a tensor condition, so that
        a compiled step does not branch on the buffer)."""
        with torch.no_grad():
            decay = (self.steps > 0).to(self.baseline) * self.options.decay
            self.baseline.mul_(decay).add_((1.0 - decay) * mean.to(self.baseline))
            self.steps.add_(1)

    def stats(self) -> dict[str, float]:
        return {"baseline": float(self.baseline)}
