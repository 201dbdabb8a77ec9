"""Restricted Boltzmann machine prior over binary latents, as in DVAE++ and DVAE#.

Vahdat, Macready et al. 2018, DVAE++ (https://arxiv.org/abs/1802.04920) and Vahdat, Andriyash & Macready
2018, DVAE# (https://arxiv.org/abs/1805.07445): the ``n`` binary latents are split into two halves,
``z = (z_a, z_b)`` with ``z_a`` the *first* ``n_a`` units (``n_a = n // 2`` unless given; 100 + 100 for 200
latents) and ``z_b`` the rest, coupled only across the halves:

    E(z) = -b_a^T z_a - b_b^T z_b - z_a^T W z_b,        p(z) = exp(-E(z)) / Z.

The partition function ``Z`` is intractable for 100 + 100 units, so ``log_prob`` is unnormalised and ``Z`` is
estimated separately: exactly by enumeration when one half is small, by AIS or by population annealing
(:mod:`.samplers`). Samples come from the configured sampler (``pcd`` or ``pa``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from .base import Prior
from .samplers import SAMPLERS, LogZ, ais_log_partition

MAX_ENUMERATED_UNITS = 20


class RBMPrior(Prior):
    """RBM prior ``p(z) ∝ exp(-E(z))`` over ``n`` binary latents ``z = (z_a, z_b)`` in {0, 1}.

    - ``z_a = z[..., :n_a]`` and ``z_b = z[..., n_a:]``; parameters ``b_a`` (n_a,), ``b_b`` (n_b,) start at
      zero and the coupling ``W`` (n_a, n_b) at ``N(0, init_scale^2)``.
    - ``log_prob(z) = -E(z)``, *unnormalised* (``normalized = False``); subtract a ``log Z`` estimate.
    - ``sample(n)`` runs the sampler ``sampler`` (``SAMPLERS``: ``pcd`` keeps persistent chains in this
      module's ``state_dict``; ``pa`` anneals a population); ``sampler_options`` go to its constructor.
    - Gradients of the prior term come from :meth:`contrastive_loss` (positive minus negative phase).
    """

    normalized = False

    def __init__(self, n: int, n_a: int | None = None, sampler: str = "pcd", init_scale: float = 0.01,
                 **sampler_options):
        super().__init__()
        n_a = n // 2 if n_a is None else n_a
        if not 0 < n_a < n:
            raise ValueError(f"both halves need at least one unit: n = {n}, n_a = {n_a}")
        self.n, self.n_a, self.n_b = n, n_a, n - n_a
        self.b_a = nn.Parameter(torch.zeros(self.n_a))
        self.b_b = nn.Parameter(torch.zeros(self.n_b))
        self.w = nn.Parameter(init_scale * torch.randn(self.n_a, self.n_b))
        self.sampler = SAMPLERS.get(sampler)(self.n_a, self.n_b, **sampler_options)

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(z_a, z_b)`` = ``(z[..., :n_a], z[..., n_a:])``."""
        return z[..., : self.n_a], z[..., self.n_a :]

    def energy(self, z: Tensor) -> Tensor:
        """``E(z) = -b_a^T z_a - b_b^T z_b - z_a^T W z_b`` for ``z`` (..., n): (...)."""
        z_a, z_b = self.split(z)
        return -(z_a @ self.b_a + z_b @ self.b_b + ((z_a @ self.w) * z_b).sum(-1))

    def log_prob(self, z: Tensor) -> Tensor:
        """Unnormalised ``log p(z) + log Z = -E(z)``, (...)."""
        return -self.energy(z)

    def free_energy_a(self, z_a: Tensor) -> Tensor:
        """``F(z_a) = -b_a^T z_a - Σ_j softplus(b_b + W^T z_a)_j``; ``p(z_a) = exp(-F(z_a)) / Z``; (...)."""
        return -(z_a @ self.b_a + nn.functional.softplus(z_a @ self.w + self.b_b).sum(-1))

    def free_energy_b(self, z_b: Tensor) -> Tensor:
        """``F(z_b) = -b_b^T z_b - Σ_i softplus(b_a + W z_b)_i``, so ``p(z_b) = exp(-F(z_b)) / Z``; (...)."""
        return -(z_b @ self.b_b + nn.functional.softplus(z_b @ self.w.t() + self.b_a).sum(-1))

    def prob_b_given_a(self, z_a: Tensor) -> Tensor:
        """``p(z_b = 1 | z_a) = sigmoid(b_b + W^T z_a)``, (..., n_b)."""
        return torch.sigmoid(z_a @ self.w + self.b_b)

    def prob_a_given_b(self, z_b: Tensor) -> Tensor:
        """``p(z_a = 1 | z_b) = sigmoid(b_a + W z_b)``, (..., n_a)."""
        return torch.sigmoid(z_b @ self.w.t() + self.b_a)

    def log_partition_exact(self, chunk: int = 2**14) -> Tensor:
        """Exact ``log Z = logsumexp_{z_s} -F(z_s)`` over every state of the smaller half ``s``.

        The other half is summed out analytically (the free energy), so the cost is ``2^min(n_a, n_b)``
        free energies, enumerated ``chunk`` states at a time; differentiable in the parameters.
        Raises ``ValueError`` when the smaller half has more than 20 units.
        """
        small = min(self.n_a, self.n_b)
        if small > MAX_ENUMERATED_UNITS:
            raise ValueError(f"exact log Z enumerates 2^{small} states of the smaller half; only halves "
                             f"of at most {MAX_ENUMERATED_UNITS} units are allowed (use AIS or PA instead)")
        free_energy = self.free_energy_a if self.n_a <= self.n_b else self.free_energy_b
        bits = 2 ** torch.arange(small, device=self.w.device)  # (s,)
        parts = []
        for start in range(0, 2**small, chunk):
            index = torch.arange(start, min(start + chunk, 2**small), device=self.w.device)
            states = (index[:, None] & bits).ne(0).to(self.w.dtype)  # (chunk, s)
            parts.append(torch.logsumexp(-free_energy(states), 0))
        return torch.logsumexp(torch.stack(parts), 0)

    def log_partition_ais(self, n_betas: int = 1000, n_samples: int = 1024, base: str = "biases") -> LogZ:
        """AIS estimate of ``log Z`` and its standard error (:func:`.samplers.ais_log_partition`)."""
        return ais_log_partition(self, n_betas=n_betas, n_samples=n_samples, base=base)

    def sample(self, n: int) -> Tensor:
        """``n`` samples (n, n_a + n_b) from the configured sampler; no gradient flows through them."""
        return self.sampler(self, n)

    def contrastive_loss(self, z_pos: Tensor, z_neg: Tensor | None = None) -> Tensor:
        """Surrogate loss ``mean E(z_pos) - mean E(z_neg)`` whose gradient is the negative log-likelihood's.

        For ``z_pos`` (B, n) drawn from the posterior and ``z_neg`` (S, n) from the model,

            -∇ log p(z_pos) = ∇E(z_pos) - E_{z~p}[∇E(z)]  ≈  ∇[mean E(z_pos) - mean E(z_neg)],

        the positive phase minus the negative phase; ``z_neg`` is detached and its mean estimates the model
        expectation (unbiased when ``z_neg`` are exact samples). Default ``z_neg``: one call of the sampler
        (all its chains). The *value* is not the negative log-likelihood (``log Z`` is absent): minimise it.
        """
        if z_neg is None:
            z_neg = self.sample(self.sampler.size)
        return self.energy(z_pos).mean() - self.energy(z_neg.detach()).mean()

    def distribution(self) -> Distribution:
        """Not available: the RBM is unnormalised and has no ``torch.distributions`` form to enumerate."""
        raise NotImplementedError("the RBM prior is unnormalised: use log_prob, a log Z estimate, sample()")

    def relaxed(self, temperature: Tensor | float) -> Distribution:
        """Not available here: DVAE-family relaxations pair the RBM with a smoothing of each latent."""
        raise NotImplementedError("the RBM prior has no relaxation of its own; DVAE smoothings provide it")
