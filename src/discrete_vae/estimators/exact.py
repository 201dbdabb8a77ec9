r"""Exact expectations by enumeration: the reference every estimator is checked against.

For ``q`` with at most :data:`MAX_STATES` joint states per example,

.. math:: \mathbb{E}_q[f] = \sum_z q(z) f(z),\qquad
          \nabla\mathbb{E}_q[f] = \sum_z \big(\nabla q(z)\big) f(z) + q(z) \nabla f(z)

are computed exactly (autograd through the sum gives the exact gradient with respect to the logits and to
parameters inside ``f``). :func:`exact_iw_expectation` does the same for the ``S``-sample
importance-weighted objective :math:`\mathbb{E}_{z_{1..S}}[\log \frac1S \sum_s e^{f(z_s)}]`, enumerating
the ``M^S`` joint draws.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..errors import ConfigError
from .base import Latents, Objective, call_f

MAX_STATES = 2**16


def count_states(kind: str, shape: tuple[int, ...]) -> int:
    """Joint states of one example's latents of ``kind`` and ``shape`` (``(..., K)`` when categorical)."""
    if kind == "binary":
        return 2 ** math.prod(shape)
    return shape[-1] ** math.prod(shape[:-1])


def n_states(latents: Latents) -> int:
    """Joint states of one example's latents."""
    return count_states(latents.kind, tuple(latents.logits.shape[1:]))


def states(latents: Latents, limit: int = MAX_STATES) -> Tensor:
    """Every joint state of one example's latents: (M, *shape) for binary, (M, *shape, K) one-hot."""
    m = n_states(latents)
    if m > limit:
        raise ConfigError(f"{m} latent states per example is too many to enumerate (at most {limit})")
    shape = latents.logits.shape[1:]
    dtype, device = latents.logits.dtype, latents.logits.device
    index = torch.arange(m, device=device)
    if latents.kind == "binary":
        n = shape.numel()
        bits = (index.unsqueeze(-1) >> torch.arange(n, device=device)) & 1  # (M, N)
        return bits.to(dtype).view(m, *shape)
    k, n = shape[-1], shape[:-1].numel()
    digits = (index.unsqueeze(-1) // k ** torch.arange(n, device=device)) % k  # (M, N)
    return torch.nn.functional.one_hot(digits, k).to(dtype).view(m, *shape)


def exact_expectation(q: Distribution, f: Objective, limit: int = MAX_STATES) -> Tensor:
    """``E_q[f]`` per example (B,), exact and differentiable; ``f`` is called once on all states
    (M, B, ...)."""
    latents = Latents.of(q)
    z = states(latents, limit)
    z = z.unsqueeze(1).expand(z.shape[0], latents.batch, *z.shape[1:])  # (M, B, ...)
    return (latents.log_prob(z).exp() * call_f(f, z)).sum(0)


def exact_iw_expectation(q: Distribution, f: Objective, n_samples: int, limit: int = 4096) -> Tensor:
    """``E[log (1/S) sum_s exp f(z_s)]`` over ``S`` independent draws per example (B,), exact and
    differentiable, by enumerating the ``M^S`` joint draws (at most ``limit``)."""
    latents = Latents.of(q)
    z = states(latents)
    m = z.shape[0]
    if m**n_samples > limit:
        raise ConfigError(f"{m}^{n_samples} joint draws are too many to enumerate (at most {limit})")
    z = z.unsqueeze(1).expand(m, latents.batch, *z.shape[1:])
    log_q, fz = latents.log_prob(z), call_f(f, z)  # (M, B)
    combos = torch.tensor(list(itertools.product(range(m), repeat=n_samples)), device=fz.device)  # (C, S)
    log_weight = log_q[combos].sum(1)  # (C, B): log of the joint probability of the S draws
    bound = fz[combos].logsumexp(1) - math.log(n_samples)  # (C, B)
    return (log_weight.exp() * bound).sum(0)
