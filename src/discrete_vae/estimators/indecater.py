r"""``indecater``: the CatLog-derivative trick for independent categorical variables (IndeCateR).

Paper: De Smet, Sansone & Zuidberg Dos Martires (2023), *Differentiable Sampling of Categorical Distributions
Using the CatLog-Derivative Trick* (NeurIPS 2023), https://arxiv.org/abs/2311.12569; authors' code
https://github.com/ML-KULeuven/catlog.

For an example's ``N`` independent variables :math:`x_d` of ``C`` classes, :math:`q(x) = \prod_d p_d(x_d)`,
and ``S`` draws :math:`x^{(1)}, \dots, x^{(S)} \sim q` shared by every variable,

.. math::
    \bar f_{dk} = \frac1S \sum_{s=1}^S f\big(x^{(s)}_{\ne d},\, x_d = k\big),\qquad
    \hat\nabla_\phi = \sum_{d=1}^N \sum_{k=1}^C \big(\nabla_\phi\, p_d(k)\big)\, \bar f_{dk}
        \;+\; \frac1N \sum_{d=1}^N \sum_{k=1}^C p_d(k)\, \nabla \bar f_{dk},\qquad
    \hat F = \frac1N \sum_{d=1}^N \sum_{k=1}^C p_d(k)\, \bar f_{dk}.

The first term is the paper's estimator: variable ``d`` is summed out exactly while the others keep their
drawn values, which Rao-Blackwellises REINFORCE's term for :math:`\phi_d` given :math:`x_{\ne d}` (so its
variance is never above REINFORCE's with the same ``S``). Since :math:`\sum_k \nabla p_d(k) = 0`, a baseline
constant in :math:`x_d` cancels: there is none. The value :math:`\hat F` and, with :math:`p` held fixed, the
second term (for parameters inside ``f``, and for ``f``'s own dependence on the logits) average the same sums
over the variables: for each ``d``, :math:`\sum_k p_d(k) \bar f_{dk}` averages
:math:`\mathbb{E}[f \mid x_{\ne d}]` over the draws, unbiased and never noisier than
:math:`\frac1S\sum_s f(x^{(s)})`, which the authors' code backpropagates into ``f`` instead. All three parts
are unbiased; for one variable (``N = 1``) all three are exact.

``n_samples`` is ``S``, the draws per example; as in the paper, all ``N`` variables share them (the authors'
code also has a variant with separate draws per variable, not implemented). Factorial latents: each of an
example's ``N`` variables (a Bernoulli, or a one-hot categorical over the last dimension) is summed out in
turn, the others at the same draw. ``f`` at the draw itself is what each variable's drawn class gives, so one
estimate evaluates ``f`` at ``S (N (C - 1) + 1)`` points, not the paper's ``S N C``: the draws, then, for each
draw, variable and class other than the drawn one, the draw with that variable set to that class. They go
through one call of ``f``, stacked along its sample dimension (``chunk`` splits the call into several; the
graph kept for the backward pass is the same). Binary latents are the two-class case,
:math:`p_d(1) = \sigma(l_d)`: :math:`\hat\nabla_{l_d} = \sigma'(l_d)(\bar f_{d1} - \bar f_{d0})`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Estimate, Estimator, Latents, Objective, call_f, class_softmax, register
from .joint import configurations


@dataclass(frozen=True)
class IndeCateROptions:
    chunk: int = field(default=0, metadata={"help": "most latent configurations per call of f (0: all in "
                                            "one call); bounds one call's size, not the backward graph"})

    def __post_init__(self) -> None:
        if self.chunk < 0:
            raise ConfigError(f"--chunk must be 0 (one call) or positive, got {self.chunk}")


def classes(latents: Latents, z: Tensor) -> Tensor:
    """Each variable's class in hard draws: (S, B, ...) -> (S, B, N) int32."""
    index = z if latents.kind == "binary" else z.argmax(-1)
    return index.reshape(*index.shape[:2], -1).to(torch.int32)


def neighbours(x: Tensor, c: int) -> Tensor:
    """For draws ``x`` (S, B, N) of ``c`` classes: each draw with one variable ``d`` moved to class
    ``(x_d + j) mod c``, ``j = 1 .. c - 1``: (S, N, c - 1, B, N)."""
    s, b, n = x.shape
    shift = torch.arange(1, c, dtype=x.dtype, device=x.device).view(1, 1, c - 1, 1)
    moved = (x.transpose(1, 2).unsqueeze(2) + shift) % c  # (S, N, c-1, B): variable d's new class
    own = torch.eye(n, dtype=torch.bool, device=x.device).view(1, n, 1, 1, n)  # variable d of variant d
    return torch.where(own, moved.unsqueeze(-1), x.view(s, 1, 1, b, n))


def evaluate(f: Objective, z: Tensor, chunk: int) -> Tensor:
    """``f`` on ``z`` (R, B, ...) in one call, or in calls of at most ``chunk`` rows: (R, B)."""
    if chunk == 0 or z.shape[0] <= chunk:
        return call_f(f, z)
    return torch.cat([call_f(f, part) for part in z.split(chunk)])


def class_means(f_draws: Tensor, f_moved: Tensor, x: Tensor, c: int) -> Tensor:
    """``fbar[b, d, k]``: ``f`` with variable ``d`` at class ``k`` and the rest at the draw, averaged over the
    draws, from ``f`` at the draws (S, B) and at their neighbours (S, N, c - 1, B): (B, N, c)."""
    s, n, _, b = f_moved.shape
    by_shift = torch.cat([f_draws.view(s, 1, 1, b).expand(s, n, 1, b), f_moved], 2)  # (S, N, c, B)
    k = torch.arange(c, dtype=x.dtype, device=x.device).view(1, 1, c, 1)
    shift = (k - x.transpose(1, 2).unsqueeze(2)) % c  # (S, N, c, B): class k sits at shift k - x_d
    return by_shift.gather(2, shift.long()).mean(0).permute(2, 0, 1)


def class_probs(latents: Latents) -> Tensor:
    """``p_d(k)`` per example: (B, N, C) (binary: ``(1 - sigma(l), sigma(l))``)."""
    logits = latents.logits
    if latents.kind == "binary":
        flat = logits.reshape(logits.shape[0], -1)  # (B, N)
        return torch.stack([torch.sigmoid(-flat), torch.sigmoid(flat)], -1)
    return class_softmax(logits).reshape(logits.shape[0], -1, logits.shape[-1])


@register
class IndeCateR(Estimator):
    """IndeCateR: each variable summed out over its classes, the others at the draws (unbiased).

    - Samples: ``S`` exact draws per example; ``f`` at each draw and at every draw with one variable moved
      to another class, ``S (N (C - 1) + 1)`` points in one call (or ``chunk``-sized calls).
    - Value: ``(1/N) sum_d sum_k p_d(k) fbar_dk``, unbiased.
    - Gradient: ``sum_{d,k} grad p_d(k) fbar_dk`` for ``q``'s logits plus the value's gradient with ``p``
      held fixed for parameters inside ``f``; unbiased, exact for one variable. No state.
    """

    name = "indecater"
    unbiased = True
    cost = "N·(C-1)+1 evaluations of f per draw (N variables of C classes, binary C = 2)"
    Options = IndeCateROptions

    def estimate(self, latents: Latents, f: Objective, n_samples: int, *, tau: Tensor | float | None,
                 context: Tensor | None) -> Estimate:
        probs = class_probs(latents)  # (B, N, C)
        c = probs.shape[-1]
        z = latents.sample(n_samples)  # (S, B, ...)
        x = classes(latents, z)  # (S, B, N)
        moved = neighbours(x, c)  # (S, N, C-1, B, N)
        points = configurations(latents, moved.flatten(0, 2).transpose(0, 1).long())  # (S N (C-1), B, ...)
        fz = evaluate(f, torch.cat([z, points]), self.options.chunk)  # (S (1 + N (C-1)), B)
        s, n = x.shape[0], x.shape[-1]
        fbar = class_means(fz[:s], fz[s:].view(s, n, c - 1, -1), x, c)  # (B, N, C)
        value = (probs.detach() * fbar).sum((1, 2)) / n  # (B,): pathwise in f
        score = ((probs - probs.detach()) * fbar.detach()).sum((1, 2))  # (B,): zero, grad sum grad p fbar
        return Estimate(value + score, value.detach())

    def evaluations(self, n_samples: int, kind: str, shape: tuple[int, ...]) -> int:
        """``S (N (C - 1) + 1)``."""
        n, c = (math.prod(shape), 2) if kind == "binary" else (math.prod(shape[:-1]), shape[-1])
        return n_samples * (n * (c - 1) + 1)
