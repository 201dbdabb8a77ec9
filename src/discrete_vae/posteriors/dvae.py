r"""DVAE, DVAE++ and DVAE#: binary latents smoothed to continuous ``ζ``, under an RBM prior.

Papers: Rolfe 2017 (https://arxiv.org/abs/1609.02200), Vahdat, Macready et al. 2018a (DVAE++,
https://arxiv.org/abs/1802.04920), Vahdat, Andriyash & Macready 2018b (DVAE#, https://arxiv.org/abs/1805.07445);
setups from their code, https://github.com/QuadrantAI/dvae.

Posterior. ``n`` binary latents in ``levels`` equal groups, ``q(z|x) = Π_l q(z_l | x, ζ_{<l})``, each group
factorial Bernoulli. Group 1's logits come from the model's encoder; group ``l > 1``'s from a network of its
own on ``[x - mean, ζ_1, ..., ζ_{l-1}]`` (the same hidden layers as the encoder). Training smooths every
``z_i`` to ``ζ_i ~ r(ζ|z_i)`` (:mod:`..distributions.smoothing`) and feeds ``ζ`` to the decoder; evaluation
samples hard ``z`` ancestrally (:class:`HierarchicalBernoulli`) and scores ``log q(z|x)`` exactly.

Prior terms (``--kl``, registered for the pair with the RBM prior in :mod:`.kl`):

- ``analytic`` (DVAE, DVAE++): ``KL = E_q[E(z)] + log Z - H(q)`` with DVAE++'s cross-entropy
  (:meth:`RBMPrior.cross_entropy`; for several groups the first half enters through
  ``ν = q(z = 1 | ζ)``) and each group's Bernoulli entropy given the sampled ``ζ_{<l}``.
- ``relaxed`` (DVAE#): per-sample ``log q(ζ|x)`` (the mixtures' densities) and ``log p(ζ)``: the mean-field
  bound on the relaxed Boltzmann marginal (:meth:`RBMPrior.marginal_log_prob_mf`), or for ``dvaes-gi`` the
  exact Gaussian-integral marginal (:meth:`RBMPrior.gaussian_integral_log_prob`). These make the
  importance-weighted bound of DVAE# (``--objective iw``, the default with ``--k`` > 1).

Either way ``log Z`` is left out here: the training loop adds its gradient, weighted like the KL, through the
prior's negative phase (:meth:`RBMPrior.negative_phase`); the logged ``kl`` and objective exclude it.
With one group the posterior is a factorial Bernoulli, so the hard-sample estimators of
:mod:`discrete_vae.estimators` apply too, with the analytic ``E_q[E(z)] - H(q)`` registered for the pair.
Densities of unit-interval smoothings are evaluated at ``ζ`` clamped to ``[1e-7, 1 - 1e-7]`` with the
gradient passed straight through (the power function puts mass at ``ζ`` below 1e-40, where ``log r`` is
infinite; the original code adds 1e-7 inside its logarithms for the same reason).

What the models share is :class:`SmoothedBoltzmann`; what differs is said by the ``MODELS`` table (the
original code's smoothing, the default prior term and the class). DVAE's spike-and-exponential smoothing,
a point mass with no relaxed density, is :class:`SpikeBoltzmann`; DVAE#'s Gaussian integral trick, whose
smoothing is built per unit from the encoder and scored against the prior's exact marginal (so it has no
analytic prior term), is :class:`GaussianIntegralBoltzmann`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, constraints

from ..distributions.dvae_sharp import GaussianIntegral
from ..distributions.hard import HardBernoulli, bernoulli_draws
from ..distributions.smoothed_bernoulli import SmoothedBernoulli
from ..distributions.smoothing import BASELINES, Smoothing, get_smoothing
from ..errors import ConfigError
from ..networks import MLPConfig, build_mlp
from ..priors import Prior
from ..priors.rbm import RBMPrior
from .base import POSTERIORS, LatentSpec, Posterior, PosteriorType
from .kl import LatentSample, kl_kind, register_kl

DENSITY_FLOOR = 1e-7
GI_SCALE_INIT, GI_SCALE_MIN, GI_SHIFT_SCALE = 0.2, 0.05, 0.5  # the original's MixtureNormal settings


def bernoulli_entropy(logits: Tensor) -> Tensor:
    """``H(Bernoulli(σ(l)))`` per unit: ``softplus(l) - l σ(l)``."""
    return F.softplus(logits) - logits * torch.sigmoid(logits)


class HierarchicalBernoulli(Distribution):
    """``q(z|x) = Π_l Bernoulli(z_l; σ(f_l(x, z_{<l})))`` over hard binary ``z`` (..., n).

    ``first`` are group 1's logits (B, n_1); ``nets[l-1]`` maps ``[context, z_1..z_{l-1}]`` to group
    ``l``'s logits (the first ``n_l`` outputs). ``sample`` draws ancestrally; ``log_prob`` re-runs the
    networks on the given ``z`` (and reuses the logits of the draw it was just given).
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, first: Tensor, context: Tensor, nets: nn.ModuleList, sizes: list[int]):
        self.first, self.context, self.nets, self.sizes = first, context, nets, sizes
        self._cache: tuple[Tensor, Tensor] | None = None
        super().__init__(first.shape[:-1], torch.Size([sum(sizes)]), validate_args=False)

    def _logits(self, level: int, previous: list[Tensor]) -> Tensor:
        if level == 0:
            return self.first
        lead = previous[0].shape[:-1]
        inputs = torch.cat([self.context.expand(*lead, -1), *previous], -1)
        return self.nets[level - 1](inputs)[..., : self.sizes[level]]

    def _walk(self, draw) -> tuple[Tensor, Tensor]:
        """Ancestral pass: ``draw(level, logits)`` gives group ``level``; returns ``(z, logits)``."""
        zs, logits = [], []
        for level in range(len(self.sizes)):
            lg = self._logits(level, zs)
            z = draw(level, lg)
            logits.append(lg.expand(*z.shape[:-1], -1))
            zs.append(z)
        return torch.cat(zs, -1), torch.cat(logits, -1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():  # a block, not a decorator: torch.compile traces it
            return self._sample(torch.Size(sample_shape))

    def _sample(self, shape: torch.Size) -> Tensor:

        def draw(level: int, lg: Tensor) -> Tensor:
            return bernoulli_draws(lg, shape) if level == 0 else bernoulli_draws(lg)

        z, logits = self._walk(draw)
        self._cache = (z, logits)
        return z

    def log_prob(self, value: Tensor) -> Tensor:
        if self._cache is not None and self._cache[0] is value:
            logits = self._cache[1]
        else:
            groups = list(value.split(self.sizes, -1))
            logits = torch.cat([self._logits(level, groups[:level]).expand(*value.shape[:-1], -1)
                                for level in range(len(self.sizes))], -1)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)

    @property
    def mode(self) -> Tensor:
        """Greedy: each group's most likely value given the modes of the groups before it."""
        return self._walk(lambda level, lg: (lg > 0).to(lg.dtype))[0]


class SmoothedGroup(NamedTuple):
    """One group of a relaxed draw: its smoothed Bernoulli ``r``, the smoothing, the logits (S, B, n_l) and
    the points where its densities are evaluated (:meth:`SmoothedBoltzmann._density_point`)."""

    r: SmoothedBernoulli
    smoothing: Smoothing
    logits: Tensor
    point: Tensor


class BoltzmannDraw(NamedTuple):
    """A relaxed draw: ``ζ`` (S, B, n), the encoder's outputs, each group's part and ``q(z = 1)`` of every
    unit (S, B, n)."""

    z: Tensor
    params: Tensor
    groups: list[SmoothedGroup]
    probs: Tensor


class SmoothedBoltzmann(Posterior):
    """A DVAE-family posterior over binary latents (``--model dvae-spike-exp|dvaepp-*|dvaes-*``).

    ``model`` names a row of ``MODELS``: the original code's baseline (which smoothing, which β, which
    gradient) and the prior term of ``--kl auto``. A variant overrides what its posterior does otherwise:
    encoder outputs per unit (:attr:`per_unit`), each group's smoothing (:meth:`_group_smoothing`), the
    relaxed prior density (:meth:`_relaxed_log_prior`), and which prior terms apply (the pairs it opts out
    of in the KL registry).
    """

    per_unit: ClassVar[int] = 1  # encoder outputs per binary unit

    def __init__(self, spec: LatentSpec, model: str, kl: str = "auto", beta: float | None = None,
                 dataset: str = "binarized_mnist", struct: str | None = None, levels: int = 1,
                 context_dim: int = 0, level_mlp: MLPConfig | None = None, **_: object):
        super().__init__()
        baseline = MODELS[model].baseline
        if not spec.binary:
            raise ConfigError(f"{model} has binary latents: give --latent N (or Nx2), not {spec}")
        if levels < 1 or spec.n % levels:
            raise ConfigError(f"--levels {levels} must divide the {spec.n} latents into equal groups")
        if levels > 1 and levels % 2:
            raise ConfigError("with several latent groups the RBM halves must hold whole groups: use an even "
                              "--levels (2 or 4)")
        self.spec, self.model, self.name, self.default_kl = spec, model, model, MODELS[model].kl
        self.set_kl(kl)
        self.iw_default = kl_kind(self.kl).relaxed_densities
        self.one_hot = False
        self.levels, self.sizes = levels, [spec.n // levels] * levels
        table = dataset if dataset in ("binarized_mnist", "omniglot") else "binarized_mnist"  # β defaults
        self.smoothing = get_smoothing(baseline, beta, table, struct or "1-layer-lin")
        self.beta = float(self.smoothing.beta)
        # the original samples every DVAE# smoothing through the implicit gradient; where a closed-form
        # inverse CDF exists (exp) it gives the same ζ and gradient (tests/test_smoothing.py), faster
        self.implicit = BASELINES[baseline][1] and not type(self.smoothing).analytic
        self._own_parameters()
        self.param_dim = self.sizes[0] * self.per_unit
        self.decoder_dim = spec.n
        mlp = level_mlp or MLPConfig(())
        self.nets = nn.ModuleList(
            build_mlp(context_dim + sum(self.sizes[:level]), self.sizes[level] * self.per_unit, mlp)
            for level in range(1, levels)
        )
        self._stats: dict[str, Tensor] = {}

    def _own_parameters(self) -> None:
        """The variant's own parameters (registered before the networks of the groups)."""

    @property
    def factorial(self) -> bool:  # one group: an Independent Bernoulli
        return self.levels == 1

    def check_prior(self, prior: Prior) -> None:
        if not isinstance(prior, RBMPrior):
            raise ConfigError(f"{self.model} needs the RBM prior (--prior rbm)")
        if self.levels > 1 and prior.n_a != sum(self.sizes[: self.levels // 2]):
            raise ConfigError("the RBM's first half must be the first half of the latent groups")

    # --- one group ----------------------------------------------------------------------------------------
    def _group_smoothing(self, level: int, extra: Tensor | None) -> Smoothing:
        """The smoothing of group ``level``, given the encoder's outputs beyond the logits (``extra``)."""
        return self.smoothing

    def _split(self, out: Tensor, level: int) -> tuple[Tensor, Tensor | None]:
        """A group's encoder outputs as its logits and the outputs beyond them (None if none)."""
        return out, None

    def _relaxed_log_prior(self, zeta: Tensor, points: list[Tensor], prior: RBMPrior) -> Tensor:
        """``log p(ζ)`` (``log Z`` excluded) of the relaxed samples ``zeta``, each group's density evaluated
        at its ``points``: the mean-field bound on the relaxed Boltzmann marginal."""
        return prior.marginal_log_prob_mf(torch.cat(points, -1), self.smoothing)

    def _density_point(self, zeta: Tensor, smoothing: Smoothing) -> Tensor:
        """``ζ`` where densities are evaluated: clamped into the open unit interval, gradient passed
        straight through (a point mass is left where it is)."""
        if smoothing.support is not constraints.unit_interval or smoothing.point_mass:
            return zeta
        return zeta + (zeta.clamp(DENSITY_FLOOR, 1 - DENSITY_FLOOR) - zeta).detach()

    def draw_relaxed(self, params: Tensor, tau: Tensor, n_samples: int, context: Tensor | None = None,
                     straight_through: bool = False) -> BoltzmannDraw:
        zetas: list[Tensor] = []
        groups: list[SmoothedGroup] = []
        for level in range(self.levels):
            if level == 0:
                out = params
            else:
                lead = zetas[0].shape[:-1]
                out = self.nets[level - 1](torch.cat([context.expand(*lead, -1), *zetas], -1))
            lg, extra = self._split(out, level)
            smoothing = self._group_smoothing(level, extra)
            r = SmoothedBernoulli(lg, smoothing, self.implicit, validate_args=False)
            zeta = r.rsample((n_samples,) if level == 0 else ())  # (S, B, n_l)
            lg = lg.expand_as(zeta)
            groups.append(SmoothedGroup(r, smoothing, lg, self._density_point(zeta, smoothing)))
            zetas.append(zeta)
        probs = torch.sigmoid(torch.cat([group.logits for group in groups], -1))
        self._stats = {"posterior_mean": probs.detach().mean()}  # read (and synchronised) when logged
        return BoltzmannDraw(torch.cat(zetas, -1), params, groups, probs)  # z: (S, B, n)

    def discrete_posterior(self, params: Tensor, context: Tensor | None = None) -> Distribution:
        first = self._split(params, 0)[0]
        if self.levels == 1:
            return Independent(HardBernoulli(logits=first, validate_args=False), 1)
        return HierarchicalBernoulli(first, context, self.nets, self.sizes)

    def decoder_input(self, z: Tensor) -> Tensor:
        return z

    def stats(self) -> dict[str, float]:
        return {name: float(value) for name, value in self._stats.items()}


class GaussianIntegralBoltzmann(SmoothedBoltzmann):
    """DVAE#'s Gaussian integral trick (``dvaes-gi``): per unit the encoder gives a logit and a shift, a
    learned scale per unit completes the Gaussian mixture, and ``log p(ζ)`` is the prior's exact
    Gaussian-integral marginal; the analytic prior term does not apply."""

    per_unit = 2  # logits and a shift per unit

    def _own_parameters(self) -> None:
        self.gi_scale = nn.Parameter(torch.full((self.spec.n,), GI_SCALE_INIT))

    @property
    def factorial(self) -> bool:  # no analytic prior term, even with one group
        return False

    def _group_smoothing(self, level: int, extra: Tensor | None) -> Smoothing:
        lo = sum(self.sizes[:level])
        scale = self.gi_scale[lo : lo + self.sizes[level]].abs() + GI_SCALE_MIN
        shift = GI_SHIFT_SCALE * (torch.sigmoid(extra) - 0.5)
        return GaussianIntegral(self.beta, sigma=scale, shift=shift)

    def _split(self, out: Tensor, level: int) -> tuple[Tensor, Tensor | None]:
        n = self.sizes[level]
        return out[..., :n], out[..., n:]

    def _relaxed_log_prior(self, zeta: Tensor, points: list[Tensor], prior: RBMPrior) -> Tensor:
        return prior.gaussian_integral_log_prob(zeta, self.beta)


class SpikeBoltzmann(SmoothedBoltzmann):
    """DVAE's spike-and-exponential smoothing (``dvae-spike-exp``): ``r(ζ|z = 0)`` is a point mass, so the
    relaxed draw has no density and only the analytic prior term applies."""


@register_kl(SmoothedBoltzmann, RBMPrior, relaxed="analytic")
def _analytic_rbm(posterior: SmoothedBoltzmann, draw: BoltzmannDraw, prior: RBMPrior) -> LatentSample:
    """DVAE++'s ``E_q[E(z)] - H(q)`` (B,), averaged over the draw's samples: the cross-entropy with each
    group's Bernoulli entropy given the sampled ``ζ_{<l}``; with several groups the first half enters the
    cross-entropy through ``ν = q(z = 1 | ζ)``."""
    entropy = 0.0
    nu: list[Tensor] = []
    for level, group in enumerate(draw.groups):
        entropy = entropy + bernoulli_entropy(group.logits).sum(-1)
        if posterior.levels > 1 and level < posterior.levels // 2:  # q(z = 1 | ζ) of the first half
            smoothing, point = group.smoothing, group.point
            nu.append(torch.sigmoid(group.logits + smoothing.log_r1(point) - smoothing.log_r0(point)))
    cross = prior.cross_entropy(draw.probs, torch.cat(nu, -1) if nu else None)  # (S, B)
    return LatentSample(draw.z, kl=(cross - entropy).mean(0))


@register_kl(SmoothedBoltzmann, RBMPrior, relaxed="relaxed")
def _relaxed_rbm(posterior: SmoothedBoltzmann, draw: BoltzmannDraw, prior: RBMPrior) -> LatentSample:
    """DVAE#'s terms: ``log q(ζ|x)`` (the groups' mixture densities) and the posterior's ``log p(ζ)``
    (:meth:`SmoothedBoltzmann._relaxed_log_prior`), (S, B)."""
    log_q = 0.0
    for group in draw.groups:
        log_q = log_q + group.r.expand(group.logits.shape).log_prob(group.point).sum(-1)
    points = [group.point for group in draw.groups]
    return LatentSample(draw.z, log_q=log_q, log_p=posterior._relaxed_log_prior(draw.z, points, prior))


register_kl(SpikeBoltzmann, RBMPrior, relaxed="relaxed")(None)  # a point mass has no density
register_kl(GaussianIntegralBoltzmann, RBMPrior, relaxed="analytic")(None)  # its smoothing needs the prior


@register_kl(SmoothedBoltzmann, RBMPrior)
def _kl_rbm(posterior: SmoothedBoltzmann, params: Tensor, prior: RBMPrior) -> Tensor:
    """Factorial ``q``: ``E_q[E(z)] - H(q)`` (B,), exact up to ``log Z`` (DVAE++'s cross-entropy)."""
    if not posterior.factorial:
        raise ConfigError("the analytic RBM cross-entropy of a hierarchical posterior needs its relaxation: "
                          "use --estimator relaxed")
    return prior.cross_entropy(torch.sigmoid(params)) - bernoulli_entropy(params).sum(-1)


@dataclass(frozen=True)
class SmoothedOptions:
    beta: float | None = field(default=None, metadata={"help": "smoothing sharpness beta (default: the "
                               "original's per model, dataset and structure; other datasets take binarized "
                               "MNIST's)"})
    levels: int = field(default=1, metadata={"help": "groups of binary latents in a hierarchical posterior "
                                             "q(z_1|x) q(z_2|x, z_1) ..."})

    def __post_init__(self) -> None:
        if self.beta is not None and not self.beta > 0:
            raise ConfigError(f"--beta must be positive, got {self.beta}")
        if self.levels < 1:
            raise ConfigError(f"--levels must be at least 1, got {self.levels}")


class Model(NamedTuple):
    """What a ``--model`` of the family is: the original code's ``--baseline``, the prior term of
    ``--kl auto``, and its posterior class."""

    baseline: str
    kl: str
    posterior: type[SmoothedBoltzmann] = SmoothedBoltzmann


MODELS: dict[str, Model] = {
    "dvae-spike-exp": Model("dvae_spike_exp", "analytic", SpikeBoltzmann),
    "dvaepp-exp": Model("dvaepp_exp", "analytic"),
    "dvaepp-power": Model("dvaepp_power", "analytic"),
    "dvaes-gi": Model("dvaes_gi", "relaxed", GaussianIntegralBoltzmann),
    "dvaes-gauss": Model("dvaes_gauss", "relaxed"),
    "dvaes-exp": Model("dvaes_exp", "relaxed"),
    "dvaes-unexp": Model("dvaes_unexp", "relaxed"),
    "dvaes-power": Model("dvaes_power", "relaxed"),
}

for _name, _model in MODELS.items():
    POSTERIORS.register(_name)(PosteriorType(partial(_model.posterior, model=_name), SmoothedOptions,
                                             "DVAE (smoothed binaries)", prior="rbm"))
