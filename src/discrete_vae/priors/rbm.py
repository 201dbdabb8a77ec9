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

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..errors import ConfigError
from .base import PRIORS, Prior, PriorType
from .samplers import SAMPLERS, LogZ, ais_log_partition

MAX_ENUMERATED_UNITS = 20


class RBMPrior(Prior):
    """RBM prior ``p(z) ∝ exp(-E(z))`` over ``n`` binary latents ``z = (z_a, z_b)`` in {0, 1}.

    - ``z_a = z[..., :n_a]`` and ``z_b = z[..., n_a:]``; parameters ``b_a`` (n_a,), ``b_b`` (n_b,) start at
      zero and the coupling ``W`` (n_a, n_b) at ``N(0, init_scale^2)``.
    - ``log_prob(z) = -E(z)``, *unnormalised* (``normalized = False``); subtract a ``log Z`` estimate.
    - ``sample(n)`` runs the sampler ``sampler`` (``SAMPLERS``: ``pcd`` keeps persistent chains in this
      module's ``state_dict``; ``pa`` anneals a population); ``sampler_options`` go to its constructor.
    - ``log_z``: the inverse temperatures and chains of the AIS estimate of ``log Z`` that validation makes.
    - Gradients of the prior term: an unnormalised cross-entropy (:meth:`cross_entropy`) or relaxed
      density gives the positive phase, and :meth:`negative_phase` adds ``∇ log Z`` beside it.
    """

    normalized = False

    def __init__(self, n: int, n_a: int | None = None, sampler: str = "pcd", init_scale: float = 0.01,
                 log_z: tuple[int, int] = (1000, 1024), **sampler_options):
        super().__init__()
        self.log_z_betas, self.log_z_samples = log_z  # the AIS estimate of log Z at validation
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

    def sample(self, n: int, persist: bool = True) -> Tensor:
        """``n`` samples (n, n_a + n_b) from the configured sampler; no gradient flows through them.

        More than the sampler's ``size`` takes several calls (each one more round of sweeps or annealing).
        ``persist=False`` runs persistent chains from where they are without moving them.
        """
        parts, left = [], n
        while left > 0:
            take = min(left, self.sampler.size)
            parts.append(self.sampler(self, take, persist))
            left -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    # --- training terms of the DVAE family (posteriors/dvae.py) --------------------------------------------
    def negative_phase(self) -> Tensor:
        """A scalar whose *value* is 0 and whose gradient is ``∇ log Z = -E_{z~p}[∇E(z)]``.

        The expectation is the mean over one call of the sampler (all its chains), detached: the negative
        phase, an explicit step of the training loop. Added to a loss built on the unnormalised log density
        (weighted like the KL), it gives the gradient of the normalised one; the value stays unnormalised
        (its ``log Z`` is estimated separately for reporting).
        """
        z_neg = self.sample(self.sampler.size).detach()
        phase = -self.energy(z_neg).mean()
        return phase - phase.detach()

    def cross_entropy(self, probs: Tensor, nu_a: Tensor | None = None) -> Tensor:
        """DVAE++'s analytic cross-entropy ``E_q[E(z)]`` (``log Z`` excluded), (...).

        ``probs`` (..., n) are the posterior's ``q(z_i = 1)``. For a factorial posterior
        ``E_q[E(z)] = -b_a^T q_a - b_b^T q_b - q_a^T W q_b`` exactly. For a hierarchical one whose first
        half precedes the second, ``nu_a`` (..., n_a) are ``q(z_a = 1 | ζ_a)``, the posterior means of the
        first half given its relaxed sample, and ``-b^T q - ν_a^T W q_b`` is unbiased for ``E_q[E(z)]``
        (Vahdat et al. 2018a, §3.2): given every ``ζ`` the units are independent.
        """
        q_a, q_b = self.split(probs)
        nu_a = q_a if nu_a is None else nu_a
        return -(q_a @ self.b_a + q_b @ self.b_b + ((nu_a @ self.w) * q_b).sum(-1))

    def marginal_log_prob_mf(self, zeta: Tensor, smoothing, iterations: int = 5) -> Tensor:
        """DVAE#'s relaxed marginal ``log Σ_z exp(-E(z)) Π_i r(ζ_i|z_i)`` (``log Z`` excluded), (...).

        The sum is the partition function of an RBM with biases shifted by
        ``log r(ζ|1) - log r(ζ|0)``; it is replaced by its mean-field lower bound
        ``max_m [-E_ζ(m) + H(m)]`` after ``iterations`` block updates from ``m = 1/2`` (Vahdat et al. 2018b,
        §3.1; 5 updates as the original code). The value is that bound; the gradient is ``-∇E_ζ(m)`` at the
        (detached) mean-field point, exact at a fixed point by the envelope theorem.
        """
        log_r0, log_r1 = smoothing.log_r0(zeta), smoothing.log_r1(zeta)
        shift = log_r1 - log_r0  # (..., n)
        s_a, s_b = self.split(shift)
        with torch.no_grad():
            m_a = torch.full_like(s_a, 0.5)
            for _ in range(iterations):
                m_b = torch.sigmoid(m_a @ self.w + self.b_b + s_b)
                m_a = torch.sigmoid(m_b @ self.w.t() + self.b_a + s_a)
            m = torch.cat([m_a, m_b], -1)
            entropy = nn.functional.binary_cross_entropy(m, m, reduction="none").sum(-1)
        neg_energy = -self.energy(m) + (m * shift + log_r0).sum(-1)  # -E_ζ(m)
        bound = (neg_energy + entropy).detach()
        return bound + (neg_energy - neg_energy.detach())

    def gaussian_integral_log_prob(self, zeta: Tensor, floor: float) -> Tensor:
        """DVAE#'s Gaussian-integral relaxed prior ``log p(ζ) + log Z``, exact, (...).

        With ``W_s = [[0, W], [W^T, 0]]`` and ``Λ = W_s + λI`` (``λ = max(σ_max(W) + 5, floor)``, detached,
        so ``Λ`` is positive definite: the eigenvalues of ``W_s`` are ``±`` the singular values of ``W``),
        ``r(ζ|z) = N(ζ; z, Λ^{-1})`` sums out ``z`` in closed form (see :mod:`..distributions.smoothing`):
        ``½ log det(Λ/2π) - ½ ζ^T Λ ζ + Σ_i softplus((Λζ)_i + b_i - λ/2)``, with
        ``log det Λ = n log λ + log det(I - W^T W / λ²)`` by the Schur complement.
        """
        lam = self.gaussian_integral_lambda(floor)
        z_a, z_b = self.split(zeta)
        lz_a = lam * z_a + z_b @ self.w.t()  # (Λζ)_a
        lz_b = lam * z_b + z_a @ self.w  # (Λζ)_b
        schur = torch.eye(self.n_b, dtype=self.w.dtype, device=self.w.device) - self.w.t() @ self.w / lam**2
        log_det = self.n * torch.log(lam) + torch.linalg.cholesky(schur).diagonal().log().sum() * 2
        quad = (zeta * torch.cat([lz_a, lz_b], -1)).sum(-1)
        soft = nn.functional.softplus(lz_a + self.b_a - lam / 2).sum(-1) + nn.functional.softplus(
            lz_b + self.b_b - lam / 2).sum(-1)
        return 0.5 * (log_det - self.n * math.log(2 * math.pi)) - 0.5 * quad + soft

    def gaussian_integral_lambda(self, floor: float) -> Tensor:
        """``λ = max(σ_max(W) + 5, floor)`` as the original code computes it (no gradient)."""
        with torch.no_grad():
            top = torch.linalg.matrix_norm(self.w, ord=2)
        return torch.clamp(top + 5.0, min=float(floor))

    def log_partition(self, method: str = "auto", n_betas: int = 1000,
                      n_samples: int = 1024) -> tuple[str, LogZ]:
        """``(method, LogZ)``: ``exact`` (≤ 20 units in a half), ``ais``, ``pa`` (population annealing with
        ``n_betas`` temperatures and ``n_samples`` chains in 8 runs); ``auto``: exact when possible, else
        AIS."""
        with torch.no_grad():
            if method == "auto":
                method = "exact" if min(self.n_a, self.n_b) <= MAX_ENUMERATED_UNITS else "ais"
            if method == "exact":
                return method, LogZ(float(self.log_partition_exact()), 0.0)
            if method == "ais":
                return method, self.log_partition_ais(n_betas=n_betas, n_samples=n_samples)
            if method == "pa":
                runs = 8
                pa = SAMPLERS.get("pa")(self.n_a, self.n_b, population=max(1, n_samples // runs), runs=runs,
                                        n_betas=n_betas)
                return method, pa.log_partition(self)
        raise ValueError(f"unknown log Z method {method!r}; choose auto, exact, ais or pa")

    def distribution(self) -> Distribution:
        """Not available: the RBM is unnormalised and has no ``torch.distributions`` form to enumerate."""
        raise NotImplementedError("the RBM prior is unnormalised: use log_prob, a log Z estimate, sample()")

    def relaxed(self, temperature: Tensor | float) -> Distribution:
        """Not available here: DVAE-family relaxations pair the RBM with a smoothing of each latent."""
        raise NotImplementedError("the RBM prior has no relaxation of its own; DVAE smoothings provide it")


def sampler_options(sampler: str, chains: int, sweeps: int) -> dict:
    """Constructor options giving ``chains`` samples per call after ``sweeps`` sweeps, for either sampler.

    ``pcd``: ``chains`` persistent chains advanced ``sweeps`` sweeps. ``pa``: 4 independent populations of
    ``chains / 4`` annealed through ``sweeps`` temperatures with one sweep each, the same Gibbs cost.
    """
    if sampler == "pa":
        runs = 4 if chains >= 4 and chains % 4 == 0 else 1
        return {"population": chains // runs, "runs": runs, "n_betas": sweeps}
    return {"chains": chains, "sweeps": sweeps}


@dataclass(frozen=True)
class RBMOptions:
    """The RBM prior's sampler (its negative phase while training) and its log Z estimate (validation)."""

    sampler: str = field(default="pcd", metadata={"help": "training sampler: pcd (persistent chains) or pa "
                                                  "(population annealing)"})
    chains: int = field(default=1000, metadata={"help": "sampler: chains (samples) per step"})
    sweeps: int = field(default=40, metadata={"help": "sampler: Gibbs sweeps per step (pa: temperatures, one "
                                              "sweep each)"})
    log_z_betas: int = field(default=1000, metadata={"help": "log Z by AIS at validation: inverse "
                                                     "temperatures"})
    log_z_samples: int = field(default=1024, metadata={"help": "log Z by AIS at validation: chains"})

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS.names():
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS.names())}, got {self.sampler!r}")
        for name in ("chains", "sweeps", "log_z_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.log_z_betas < 2:
            raise ConfigError("--log-z-betas must be at least 2")


def _rbm(n: int, k: int, binary: bool, sampler: str, chains: int, sweeps: int, log_z_betas: int,
         log_z_samples: int) -> Prior:
    if not binary or k != 2:
        raise ConfigError("the RBM prior is over binary latents: use a DVAE model (--latent Nx2)")
    if n < 2:
        raise ConfigError("the RBM prior needs at least 2 latents (one per half)")
    return RBMPrior(n, sampler=sampler, log_z=(log_z_betas, log_z_samples),
                    **sampler_options(sampler, chains, sweeps))


PRIORS.register("rbm")(PriorType(_rbm, RBMOptions))
