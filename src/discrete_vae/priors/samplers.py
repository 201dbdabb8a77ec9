"""Samplers and log-partition estimators for the RBM prior: PCD, population annealing and AIS.

The RBM (:mod:`.rbm`) has energy ``E(z) = -b_a^T z_a - b_b^T z_b - z_a^T W z_b`` over ``z = (z_a, z_b)``.
Every sampler here runs *block Gibbs* sweeps: ``z_b ~ p(z_b | z_a)`` then ``z_a ~ p(z_a | z_b)``, all chains
as one matrix product per half-sweep.

Annealing path (PA and AIS). Between a factorial base ``p_0(z) ∝ exp(b0^T z)`` (``base="biases"``: ``b0 = b``,
the biases-only model; ``base="uniform"``: ``b0 = 0``) and the RBM, the intermediate models are

    E_β(z) = (1 - β) E_0(z) + β E(z),   E_0(z) = -b0^T z,   log Z_0 = Σ_i softplus(b0_i),

whose block conditionals are ``p_β(z_b | z_a) = sigmoid((1-β) b0_b + β (b_b + W^T z_a))``. Moving from ``β``
to ``β'`` multiplies a chain's importance weight by ``exp(-(β' - β) (E(z) - E_0(z)))``.

- ``pcd``: persistent contrastive divergence (Tieleman 2008, https://doi.org/10.1145/1390156.1390290).
- ``pa``: population annealing (Hukushima & Iba 2003, https://doi.org/10.1063/1.1632130; Machta 2010,
  https://arxiv.org/abs/1006.2292), with a log Z estimate and its standard error.
- :func:`ais_log_partition`: annealed importance sampling (Neal 2001, https://arxiv.org/abs/physics/9803008;
  Salakhutdinov & Murray 2008, https://doi.org/10.1145/1390156.1390266).

Defaults follow the DVAE# code (https://github.com/QuadrantAI/dvae): 1000 chains and 40 sweeps per call for
training samples; AIS with 1000 linearly spaced β's and 1024 samples for evaluation.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn

from ..registry import Registry

SAMPLERS: Registry = Registry("sampler")
BASES = ("biases", "uniform")


class RBMLike(Protocol):
    """What a sampler reads from an RBM: the half sizes and the parameters."""

    n_a: int
    n_b: int
    b_a: Tensor
    b_b: Tensor
    w: Tensor


class LogZ(NamedTuple):
    """A log-partition estimate and its standard error (``nan`` when it cannot be estimated)."""

    log_z: float
    stderr: float


class GibbsKernel:
    """In-place block-Gibbs sweeps of ``chains`` RBM chains at inverse temperature ``β`` on the base path.

    A half-sweep is ``pre = β (b + v W) + (1 - β) b0`` (one ``addmm``), ``p = sigmoid(pre)``,
    ``z = [r < t(p)]``. The Bernoulli draw compares 32-bit random integers ``r`` (uniform on
    ``[-2^31, 2^31)``) with the threshold ``t(p) = 2^32 p - 2^31``, so ``P(z = 1) = p`` up to float32
    rounding of ``t`` (about ``2^-24``, the resolution of a float32 uniform). Each 64-bit draw of the
    generator gives two such integers; those for up to ``block`` sweeps are drawn at once, none left over
    after a call (a call's randomness is then set by the global generator alone, so a resumed sampler repeats
    an uninterrupted one). Halving the generator calls is most of the speed-up over
    ``torch.bernoulli(torch.sigmoid(...))``; buffers are preallocated and reused.
    """

    def __init__(self, chains: int, n_a: int, n_b: int, like: Tensor, block: int = 4):
        self.shape_a, self.shape_b, self.block = (chains, n_a), (chains, n_b), block
        self.pre_a = like.new_empty(self.shape_a)
        self.pre_b = like.new_empty(self.shape_b)
        self._words = chains * (n_a + n_b)  # 32-bit words per sweep
        self._bits64 = torch.empty((block * self._words + 1) // 2, dtype=torch.int64, device=like.device)
        self._bits = self._bits64.view(torch.int32)
        self._pos = 0

    def _refill(self, sweeps: int) -> None:
        """Draw the integers for the next ``sweeps`` sweeps (never more, so no draws outlive a call)."""
        self._bits64[: (sweeps * self._words + 1) // 2].random_(-(2**63), None)  # both 32-bit halves uniform
        self._pos = 0

    def _draw(self, shape: tuple[int, int]) -> Tensor:
        need = shape[0] * shape[1]
        out = self._bits[self._pos : self._pos + need].view(shape)
        self._pos += need
        return out

    def half(self, v: Tensor, w: Tensor, bias: Tensor, beta: float, pre: Tensor, out: Tensor) -> None:
        """``out ~ Bernoulli(sigmoid(bias + β v w))`` in place (integers from ``_refill``), ``v`` (C, n)."""
        torch.addmm(bias, v, w, alpha=beta, out=pre)  # (C, n_out)
        pre.sigmoid_().mul_(2.0**32).sub_(2.0**31)
        torch.lt(self._draw(pre.shape), pre, out=out)

    def sweeps(self, z_a: Tensor, z_b: Tensor, rbm: RBMLike, k: int, beta: float = 1.0,
               base: str = "biases") -> None:
        """``k`` sweeps (``z_b | z_a`` then ``z_a | z_b``) of ``p_β``, in place on ``z_a``, ``z_b``."""
        w, b_a, b_b = rbm.w.detach(), rbm.b_a.detach(), rbm.b_b.detach()
        if base == "uniform" and beta != 1.0:
            b_a, b_b = beta * b_a, beta * b_b
        for s in range(k):
            if s % self.block == 0:
                self._refill(min(self.block, k - s))
            self.half(z_a, w, b_b, beta, self.pre_b, z_b)
            self.half(z_b, w.t(), b_a, beta, self.pre_a, z_a)


def _base_logits(rbm: RBMLike, base: str) -> Tensor:
    """The base model's logits ``b0`` over all units (n_a + n_b,)."""
    if base not in BASES:
        raise ValueError(f"unknown annealing base {base!r}; choose one of: {', '.join(BASES)}")
    b = torch.cat([rbm.b_a.detach(), rbm.b_b.detach()])
    return b if base == "biases" else torch.zeros_like(b)


def _base_sample(rbm: RBMLike, base: str, n: int) -> tuple[Tensor, Tensor]:
    """``n`` exact samples of the factorial base, split into halves (n, n_a), (n, n_b)."""
    probs = torch.sigmoid(_base_logits(rbm, base)).expand(n, -1)
    z = torch.bernoulli(probs)
    return z[:, : rbm.n_a].contiguous(), z[:, rbm.n_a :].contiguous()


def _energy_gap(rbm: RBMLike, base: str, z_a: Tensor, z_b: Tensor) -> Tensor:
    """``E_0(z) - E(z) = (b - b0)^T z + z_a^T W z_b`` in float64, (C,). Zero bias term for the biases base."""
    gap = ((z_a @ rbm.w.detach()) * z_b).sum(-1)
    if base == "uniform":
        gap = gap + z_a @ rbm.b_a.detach() + z_b @ rbm.b_b.detach()
    return gap.double()


def _log_mean_exp_with_se(log_w: Tensor) -> LogZ:
    """``log mean(w)`` and its delta-method standard error ``sd(w) / (sqrt(N) mean(w))``; ``log_w`` (N,)."""
    n = log_w.numel()
    w = torch.exp(log_w - log_w.max())
    mean = w.mean()
    se = (w.std() / (math.sqrt(n) * mean)).item() if n > 1 else math.nan
    return LogZ((log_w.max() + mean.log()).item(), se)


def linear_betas(n_betas: int) -> Tensor:
    """``n_betas`` inverse temperatures from 0 to 1, evenly spaced (float64), as in the DVAE# code."""
    if n_betas < 2:
        raise ValueError(f"need at least 2 inverse temperatures, got {n_betas}")
    return torch.linspace(0.0, 1.0, n_betas, dtype=torch.float64)


@torch.no_grad()
def ais_log_partition(rbm: RBMLike, n_betas: int = 1000, n_samples: int = 1024, base: str = "biases",
                      betas: Tensor | None = None) -> LogZ:
    """Annealed importance sampling estimate of ``log Z`` with a delta-method standard error.

    Each of ``n_samples`` chains starts at an exact sample of the base and carries
    ``log w = Σ_t -(β_t - β_{t-1}) (E(z_t) - E_0(z_t))``, with one block-Gibbs sweep of ``p_{β_t}`` between
    temperatures, so that ``E[w] = Z / Z_0``. The estimate is ``log Z_0 + log mean(w)``; its standard error is
    the delta method on the mean, ``sd(w) / (sqrt(N) mean(w))``, which is reliable when the weights are not
    heavy-tailed (compare runs with more β's when in doubt). ``betas`` overrides the linear schedule.
    """
    betas = linear_betas(n_betas) if betas is None else betas.double().cpu()
    if betas[0] != 0 or betas[-1] != 1 or bool((betas.diff() < 0).any()):
        raise ValueError("AIS inverse temperatures must increase from 0 to 1")
    log_z0 = nn.functional.softplus(_base_logits(rbm, base).double()).sum().item()
    z_a, z_b = _base_sample(rbm, base, n_samples)
    kernel = GibbsKernel(n_samples, rbm.n_a, rbm.n_b, like=z_a)
    log_w = torch.zeros(n_samples, dtype=torch.float64, device=z_a.device)
    for t in range(1, betas.numel()):
        log_w += (betas[t] - betas[t - 1]).item() * _energy_gap(rbm, base, z_a, z_b)
        if t < betas.numel() - 1:
            kernel.sweeps(z_a, z_b, rbm, 1, beta=betas[t].item(), base=base)
    est = _log_mean_exp_with_se(log_w)
    return LogZ(log_z0 + est.log_z, est.stderr)


@SAMPLERS.register("pcd")
class PCDSampler(nn.Module):
    """Persistent contrastive divergence: ``chains`` block-Gibbs chains that persist across calls.

    - Each call runs ``sweeps`` sweeps of every chain from where the last call left it and returns the states.
    - The chains are the buffer ``chains`` (chains, n_a + n_b), so they are part of ``state_dict`` and survive
      checkpoint and resume; they start as independent fair coins.
    - Under DistributedDataParallel each rank keeps its own chains (``rank_local_buffers``): they are not
      broadcast from rank 0, each rank redraws them from its own noise (:meth:`reset_rank_local`), and
      checkpoints hold one copy per rank.
    """

    rank_local_buffers = ("chains",)

    def __init__(self, n_a: int, n_b: int, chains: int = 1000, sweeps: int = 40, block: int = 4):
        super().__init__()
        self.n_a, self.n_b, self.sweeps, self.block = n_a, n_b, sweeps, block
        self.register_buffer("chains", torch.bernoulli(torch.full((chains, n_a + n_b), 0.5)))
        self._kernel: GibbsKernel | None = None

    @property
    def size(self) -> int:
        """How many samples one call can return."""
        return self.chains.shape[0]

    @torch.no_grad()
    def reset_rank_local(self) -> None:
        """Redraw the chains as independent fair coins from the current RNG stream."""
        self.chains.copy_(torch.bernoulli(torch.full_like(self.chains, 0.5)))

    def _kernel_for(self, like: Tensor) -> GibbsKernel:
        k = self._kernel
        if k is None or k.pre_a.dtype != like.dtype or k.pre_a.device != like.device:
            k = self._kernel = GibbsKernel(self.size, self.n_a, self.n_b, like=like, block=self.block)
        return k

    @torch.no_grad()
    def forward(self, rbm: RBMLike, n: int, persist: bool = True) -> Tensor:
        """Advance all chains ``sweeps`` sweeps; return the first ``n`` states (n, n_a + n_b), a copy.
        ``persist=False`` sweeps copies and leaves the chains where they were."""
        if n > self.size:
            raise ValueError(f"asked for {n} samples from {self.size} persistent chains; raise `chains`")
        like = rbm.w.detach()
        z_a = self.chains[:, : self.n_a].to(like, copy=True)  # (C, n_a), contiguous working copies
        z_b = self.chains[:, self.n_a :].to(like, copy=True)  # (C, n_b)
        self._kernel_for(like).sweeps(z_a, z_b, rbm, self.sweeps)
        if not persist:
            return torch.cat([z_a[:n], z_b[:n]], 1).to(self.chains.dtype)
        self.chains.copy_(torch.cat([z_a, z_b], 1))
        return self.chains[:n].clone()


class PAResult(NamedTuple):
    """One population-annealing run: equally weighted samples at β = 1 and the log Z estimate."""

    samples: Tensor  # (runs * population, n_a + n_b)
    log_z: LogZ
    resamples: int  # how many (run, temperature) pairs were resampled


@SAMPLERS.register("pa")
class PASampler(nn.Module):
    """Population annealing over ``runs`` independent populations of ``population`` chains each.

    - Start: exact samples of the factorial base (β = 0); schedule: ``n_betas`` temperatures, linear in β,
      ending at β = 1, with ``sweeps_per_beta`` block-Gibbs sweeps of ``p_β`` at each.
    - Reweighting to the next β multiplies weights by ``exp(-Δβ (E - E_0))``; a run is resampled
      (``"systematic"`` or ``"multinomial"``) when its effective sample size ``1 / Σ W_i^2`` falls below
      ``ess_threshold · population``, and always at β = 1, so the returned samples are equally weighted.
    - ``log Z_r = log Z_0 + Σ_t log Σ_i W_i^{(t)} exp(-Δβ_t (E - E_0)(z_i))`` per run
      (``W``: normalised weights), combined as ``log mean_r exp(log Z_r)`` (``Z_r`` is unbiased for ``Z``)
      with the delta-method standard error over the ``runs`` independent estimates (``nan`` for one run).
    """

    def __init__(self, n_a: int, n_b: int, population: int = 250, runs: int = 4, n_betas: int = 40,
                 sweeps_per_beta: int = 1, ess_threshold: float = 0.5, resampling: str = "systematic",
                 base: str = "biases"):
        super().__init__()
        if resampling not in ("systematic", "multinomial"):
            raise ValueError(f"unknown resampling {resampling!r}; choose systematic or multinomial")
        self.n_a, self.n_b, self.population, self.runs = n_a, n_b, population, runs
        self.n_betas, self.sweeps_per_beta, self.ess_threshold = n_betas, sweeps_per_beta, ess_threshold
        self.resampling, self.base = resampling, base

    @property
    def size(self) -> int:
        return self.runs * self.population

    def _resample_index(self, log_w: Tensor) -> Tensor:
        """Ancestor indices (R, P) into each run's population from normalised log weights (R, P)."""
        r, p = log_w.shape
        if self.resampling == "multinomial":
            return torch.multinomial(log_w.exp(), p, replacement=True)
        cum = log_w.exp().cumsum(1)  # (R, P)
        u = (torch.arange(p, dtype=cum.dtype, device=cum.device) + torch.rand(r, 1, dtype=cum.dtype,
                                                                                device=cum.device)) / p
        return torch.searchsorted(cum / cum[:, -1:], u, right=True).clamp_(max=p - 1)  # (R, P)

    @torch.no_grad()
    def run(self, rbm: RBMLike) -> PAResult:
        """Anneal the populations from the base to the RBM; return samples and the log Z estimate."""
        r, p = self.runs, self.population
        betas = linear_betas(self.n_betas + 1)  # β_0 = 0 is the base; n_betas temperatures follow
        z_a, z_b = _base_sample(rbm, self.base, r * p)
        kernel = GibbsKernel(r * p, self.n_a, self.n_b, like=z_a)
        log_w = torch.full((r, p), -math.log(p), dtype=torch.float64, device=z_a.device)  # normalised
        log_z = torch.full((r,), nn.functional.softplus(_base_logits(rbm, self.base).double()).sum().item(),
                           dtype=torch.float64, device=z_a.device)
        offsets = torch.arange(r, device=z_a.device)[:, None] * p  # (R, 1)
        resamples = 0
        for t in range(1, betas.numel()):
            log_w += (betas[t] - betas[t - 1]).item() * _energy_gap(rbm, self.base, z_a, z_b).view(r, p)
            step = torch.logsumexp(log_w, 1)  # (R,) log Z_t / Z_{t-1} per run
            log_z += step
            log_w -= step[:, None]
            low = torch.exp(-torch.logsumexp(2 * log_w, 1)) < self.ess_threshold * p  # (R,)
            if t == betas.numel() - 1:
                low[:] = True
            if low.any():
                idx = torch.where(low[:, None], self._resample_index(log_w),
                                  torch.arange(p, device=z_a.device).expand(r, p))
                flat = (idx + offsets).reshape(-1)
                z_a.copy_(z_a[flat])
                z_b.copy_(z_b[flat])
                log_w[low] = -math.log(p)
                resamples += int(low.sum())
            kernel.sweeps(z_a, z_b, rbm, self.sweeps_per_beta, beta=betas[t].item(), base=self.base)
        est = _log_mean_exp_with_se(log_z)
        return PAResult(torch.cat([z_a, z_b], 1), est, resamples)

    def forward(self, rbm: RBMLike, n: int, persist: bool = True) -> Tensor:
        """``n`` equally weighted samples at β = 1 from one annealing of all populations (n, n_a + n_b);
        nothing persists between calls, whatever ``persist``."""
        if n > self.size:
            raise ValueError(f"asked for {n} samples from a population of {self.size}; raise `population`")
        return self.run(rbm).samples[:n]

    def log_partition(self, rbm: RBMLike) -> LogZ:
        """The population-annealing estimate of ``log Z`` and its standard error over the runs."""
        return self.run(rbm).log_z
