"""The hard samplers of binary and categorical latents, one per kind, and the distributions that draw
with them.

- Binary: ``1[u < sigmoid(l)]``, one uniform ``u`` per latent.
- Categorical: the inverse CDF, the class ``i`` with ``F_{i-1} <= u F_C < F_i`` (``F`` the cumulative sum
  of the probabilities over the classes, laid out first so that the sums run over whole slabs; a class
  of probability 0 is never drawn).

Both are several times faster on the CPU than ``torch.bernoulli`` and ``torch.multinomial``. Training (the
estimators' draws), evaluation (the discrete posterior's ``sample``) and the stochastic binary networks of
``dvae sop`` all draw with them: :class:`HardBernoulli` and :class:`HardOneHotCategorical` are
``torch.distributions``' Bernoulli and OneHotCategorical with these ``sample`` methods.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Bernoulli, OneHotCategorical


def bernoulli_draws(logits: Tensor, shape: torch.Size = torch.Size()) -> Tensor:
    """Hard draws ``1[u < sigmoid(logits)]``: (*shape, *logits.shape), no gradient."""
    with torch.no_grad():  # a block, not a decorator: torch.compile traces it
        u = torch.rand((*shape, *logits.shape), dtype=logits.dtype, device=logits.device)
        return (u < torch.sigmoid(logits)).to(logits.dtype)


def one_hot_draws(logits: Tensor, shape: torch.Size = torch.Size()) -> Tensor:
    """Hard one-hot draws from ``softmax(logits)`` over the last dimension by the inverse CDF:
    (*shape, *logits.shape), no gradient."""
    with torch.no_grad():
        cdf = logits.movedim(-1, 0).softmax(0).cumsum(0)  # (C, ...)
        u = torch.rand((*shape, *cdf.shape[1:]), dtype=logits.dtype, device=logits.device)
        below = cdf.view(cdf.shape[0], *(1,) * len(shape), *cdf.shape[1:]) <= u.mul_(cdf[-1])
        index = below.sum(0).clamp_(max=cdf.shape[0] - 1)  # (*shape, ...)
        return torch.zeros((*shape, *logits.shape), dtype=logits.dtype, device=logits.device).scatter_(
            -1, index.unsqueeze(-1), 1.0)


class HardBernoulli(Bernoulli):
    """:class:`~torch.distributions.Bernoulli` whose ``sample`` is :func:`bernoulli_draws` (of its logits)."""

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return bernoulli_draws(self.logits, torch.Size(sample_shape))


class HardOneHotCategorical(OneHotCategorical):
    """:class:`~torch.distributions.OneHotCategorical` whose ``sample`` is :func:`one_hot_draws`."""

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return one_hot_draws(self.logits, torch.Size(sample_shape))
