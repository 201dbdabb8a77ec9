"""IGR posteriors: ``igr-i``, ``igr-sb`` (countably infinite), ``igr-sb-finite``, ``igr-planar``.

Paper: Potapczynski, Loaiza-Ganem, Cunningham (2020), https://arxiv.org/abs/1912.09588.

The encoder gives, per latent variable, ``K - 1`` means and log standard deviations of the Gaussian
pre-image ``kappa``; the decoder sees the relaxed sample on the ``K``-simplex. The KL term lives in
the pre-image space, against the Gaussian prior whose ``tau -> 0`` limit is the uniform categorical
(:mod:`discrete_vae.priors.igr`):

- ``--kl analytic``: the closed-form Gaussian KL (IGR-I, IGR-SB);
- ``--kl relaxed``: a single-sample Monte Carlo KL ``log q(kappa) - log p(kappa)`` (with flows, the
  flow's log-determinant enters ``log q``; IGR-Planar has no closed form, so this is its only KL).

Either way the objective bounds the likelihood of the *relaxed* model. Evaluation scores the
discrete model: hard samples and exact log probabilities of the categorical each posterior implies
(quadrature for IGR-I, closed form for IGR-SB, a Monte Carlo estimate for IGR-Planar, used as the
proposal so that the bound stays a true lower bound).

Each variant is a class on :class:`IGRCategorical`, which holds what they share (the encoder's
parameters, the pre-image prior, the two KLs): :class:`IGRICategorical` (softmax++),
:class:`IGRPlanarCategorical` (softmax++ after a planar flow), :class:`IGRSBFiniteCategorical` (stick
breaking) and :class:`IGRSBCategorical` (stick breaking truncated per batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Independent, Normal

from ..distributions import ExpIGR, ExpIGRPlanar, ExpIGRSB, GaussianPreimage, PlanarFlow, truncate_sticks
from ..distributions.hard import HardOneHotCategorical
from ..errors import ConfigError
from ..priors import CategoricalPrior, Prior
from ..priors.igr import uniform_preimage_prior
from .base import POSTERIORS, LatentSpec, Posterior, PosteriorType
from .kl import LatentSample, register_kl


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class IGROptions:
    prior_scale: float = field(default=1.0, metadata=_help("std of the Gaussian pre-image prior (it implies "
                                                           "a uniform prior)"))

    def __post_init__(self) -> None:
        if not self.prior_scale > 0:
            raise ConfigError(f"--prior-scale must be positive, got {self.prior_scale}")


@dataclass(frozen=True)
class IGRIOptions(IGROptions):
    delta: float = field(default=1.0, metadata=_help("weight of softmax++'s extra class (igr-i, igr-planar)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.delta > 0:
            raise ConfigError(f"--delta must be positive, got {self.delta}")


@dataclass(frozen=True)
class IGRSBOptions(IGROptions):
    sb_threshold: float = field(default=0.99, metadata=_help("igr-sb: stick mass the classes kept must "
                                                             "reach"))
    sb_percentile: float = field(default=70.0, metadata=_help("igr-sb: percentile over the batch of the "
                                                              "classes needed"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.sb_threshold < 1:
            raise ConfigError(f"--sb-threshold must be in (0, 1), got {self.sb_threshold}")
        if not 0 <= self.sb_percentile <= 100:
            raise ConfigError(f"--sb-percentile must be in [0, 100], got {self.sb_percentile}")


@dataclass(frozen=True)
class IGRPlanarOptions(IGRIOptions):
    flow_layers: int = field(default=2, metadata=_help("igr-planar: planar-flow layers per latent variable"))
    mc_samples: int = field(default=1000, metadata=_help("igr-planar: draws estimating the implied discrete "
                                                         "posterior"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.flow_layers < 1 or self.mc_samples < 1:
            raise ConfigError("--flow-layers and --mc-samples must be at least 1")


class IGRDraw(NamedTuple):
    """A relaxed draw: the decoder's inputs ``z``, the encoder's outputs, the posterior ``q`` at ``tau``,
    its pre-image draws ``kappa`` (S, B, N, K-1) with the log density the draw came with (or None), and how
    many pre-image coordinates the relaxed sample uses."""

    z: Tensor
    params: Tensor
    q: GaussianPreimage
    kappa: Tensor
    drawn: Tensor | None
    used: int


class IGRCategorical(Posterior):
    """``N`` categorical latents of ``K`` classes relaxed by an IGR map: what the variants share.

    A variant, registered as ``igr-{kind}``, says which map takes the Gaussian pre-image to the simplex
    (:meth:`preimage_map`) and which KL it defaults to (the KL terms are registered pairs), and keeps its own
    options (those of its ``Options``); the keywords beyond those are the model's context.
    """

    kind: str  # registered as igr-{kind}
    Options: type = IGROptions

    def __init__(self, spec: LatentSpec, kl: str = "auto", prior_scale: float = 1.0, **options: object):
        super().__init__()
        self.name = f"igr-{self.kind}"
        self.set_kl(kl)
        self.spec = spec
        self._keep_options(**options)
        n, k = spec.n, spec.k
        self.param_dim = 2 * n * (k - 1)
        self.decoder_dim = n * k
        loc, scale = uniform_preimage_prior(self.kind, k, prior_scale)
        self.register_buffer("prior_loc", loc)
        self.register_buffer("prior_scale", scale)

    def _keep_options(self, **_: object) -> None:
        """Keep the variant's own options, checked by its ``Options`` (the keywords left are the model's
        context)."""

    def preimage_map(self, tau: Tensor | float, loc: Tensor, scale: Tensor) -> GaussianPreimage:
        """The log-space IGR distribution of pre-image ``N(loc, scale^2)``, (..., N, K-1), at ``tau``."""
        raise NotImplementedError

    def posterior(self, params: Tensor, tau: Tensor | float = 1.0) -> GaussianPreimage:
        """The log-space IGR posterior, batch (..., N), pre-image (K-1)."""
        n, k = self.spec.n, self.spec.k
        loc, log_scale = params.view(*params.shape[:-1], n, 2, k - 1).unbind(-2)
        scale = log_scale.exp()
        return self.preimage_map(tau, loc, scale)

    def preimage_prior(self) -> Normal:
        return Normal(self.prior_loc, self.prior_scale, validate_args=False)

    def _draw(self, q: GaussianPreimage, shape: torch.Size) -> tuple[Tensor, Tensor | None]:
        """Pre-image draws (S, B, N, K-1) and the log density (S, B, N) the draw comes with, if any."""
        return q.rsample_preimage(shape), None

    def _kept(self, log_psi: Tensor) -> tuple[Tensor, int]:
        """The relaxed sample on the simplex (S, B, N, K), and how many pre-image coordinates it uses."""
        return log_psi.exp(), self.spec.k - 1

    def _log_q(self, q: GaussianPreimage, kappa: Tensor, drawn: Tensor | None, used: int) -> Tensor:
        """``log q(kappa)`` per variable (S, B, N), over the first ``used`` coordinates."""
        return Normal(q.loc, q.scale, validate_args=False).log_prob(kappa)[..., :used].sum(-1)

    def draw_relaxed(self, params: Tensor, tau: Tensor, n_samples: int, context: Tensor | None = None,
                     straight_through: bool = False) -> IGRDraw:
        q = self.posterior(params, tau)
        kappa, drawn = self._draw(q, torch.Size([n_samples]))  # (S, B, N, K-1)
        log_psi = q.to_log_simplex(kappa)  # (S, B, N, K)
        z, used = self._kept(log_psi)
        return IGRDraw(z.flatten(-2), params, q, kappa, drawn, used)

    def discrete_posterior(self, params: Tensor, context: Tensor | None = None) -> Independent:
        logits = self.posterior(params).discrete_log_probs()
        return Independent(HardOneHotCategorical(logits=logits, validate_args=False), 1)

    def decoder_input(self, z: Tensor) -> Tensor:
        return z.flatten(-2)

    def check_prior(self, prior: Prior) -> None:
        """The pre-image prior is fitted to the uniform categorical: refuse any other prior."""
        uniform = isinstance(prior, CategoricalPrior) and not isinstance(prior.logits, torch.nn.Parameter)
        if not uniform:
            raise ConfigError(
                f"--model igr-{self.kind} needs --prior uniform (its Gaussian pre-image prior implies it)"
            )


class IGRICategorical(IGRCategorical):
    """IGR-I: ``log softmax++(kappa / tau)`` with weight ``delta`` on the extra class."""

    kind = "i"
    Options = IGRIOptions

    def _keep_options(self, delta: float = 1.0, **_: object) -> None:
        self.delta = delta

    def preimage_map(self, tau: Tensor | float, loc: Tensor, scale: Tensor) -> ExpIGR:
        return ExpIGR(tau, loc, scale, self.delta, validate_args=False)


class IGRPlanarCategorical(IGRICategorical):
    """IGR-Planar: IGR-I with a learned planar flow on the pre-image. Its density has no closed-form KL
    (the relaxed KL takes the flow's log-determinant from the draw) and its implied discrete posterior
    is a Monte Carlo estimate of ``mc_samples`` draws."""

    kind = "planar"
    Options = IGRPlanarOptions
    default_kl = "relaxed"

    def __init__(self, spec: LatentSpec, kl: str = "auto", prior_scale: float = 1.0, flow_layers: int = 2,
                 **options: object):
        super().__init__(spec, kl, prior_scale, **options)
        self.flow = PlanarFlow(spec.n, spec.k - 1, flow_layers)

    def _keep_options(self, mc_samples: int = 1000, **options: object) -> None:
        super()._keep_options(**options)
        self.mc_samples = mc_samples

    def preimage_map(self, tau: Tensor | float, loc: Tensor, scale: Tensor) -> ExpIGRPlanar:
        return ExpIGRPlanar(tau, loc, scale, self.flow, self.delta, self.mc_samples, validate_args=False)

    def _draw(self, q: GaussianPreimage, shape: torch.Size) -> tuple[Tensor, Tensor | None]:
        return q.rsample_preimage_log_prob(shape)  # (S, B, N, K-1), (S, B, N)

    def _log_q(self, q: GaussianPreimage, kappa: Tensor, drawn: Tensor | None, used: int) -> Tensor:
        return drawn


class IGRSBFiniteCategorical(IGRCategorical):
    """IGR-SB over all ``K`` classes: the stick-breaking map, no truncation."""

    kind = "sb-finite"

    def preimage_map(self, tau: Tensor | float, loc: Tensor, scale: Tensor) -> ExpIGRSB:
        return ExpIGRSB(tau, loc, scale, validate_args=False)


class IGRSBCategorical(IGRSBFiniteCategorical):
    """IGR-SB, countably infinite: each relaxed batch keeps the classes that reach ``sb_threshold`` of the
    stick mass for ``sb_percentile`` percent of its draws (``n_required``, logged with the training
    metrics); the KL covers the sticks broken before the last class kept."""

    kind = "sb"
    Options = IGRSBOptions

    def _keep_options(self, sb_threshold: float = 0.99, sb_percentile: float = 70.0, **_: object) -> None:
        self.sb_threshold, self.sb_percentile = sb_threshold, sb_percentile
        self.n_required = self.spec.k  # classes in use by the last relaxed batch

    def _kept(self, log_psi: Tensor) -> tuple[Tensor, int]:
        cut = truncate_sticks(log_psi, self.sb_threshold, self.sb_percentile)
        self.n_required = cut.n_required
        return cut.psi, cut.n_required - 1

    def stats(self) -> dict[str, float]:
        return {"n_required": self.n_required}


@register_kl(IGRCategorical, CategoricalPrior, relaxed="analytic")
def _analytic_preimage(posterior: IGRCategorical, draw: IGRDraw, prior: CategoricalPrior) -> LatentSample:
    """The closed-form Gaussian KL of the pre-image against the pre-image prior, over the coordinates the
    draw uses (B,)."""
    used, q = draw.used, draw.q
    kl = normal_kl(q.loc[..., :used], q.scale[..., :used], posterior.prior_loc[:used],
                   posterior.prior_scale[:used])
    return LatentSample(draw.z, kl=kl.sum((-2, -1)))


@register_kl(IGRCategorical, CategoricalPrior, relaxed="relaxed")
def _relaxed_preimage(posterior: IGRCategorical, draw: IGRDraw, prior: CategoricalPrior) -> LatentSample:
    """The single-sample KL of the pre-image: ``log q(kappa)`` and ``log p(kappa)`` over the coordinates the
    draw uses (S, B)."""
    log_p = posterior.preimage_prior().log_prob(draw.kappa)[..., :draw.used].sum((-2, -1))
    log_q = posterior._log_q(draw.q, draw.kappa, draw.drawn, draw.used)
    return LatentSample(draw.z, log_q=log_q.sum(-1), log_p=log_p)


register_kl(IGRPlanarCategorical, CategoricalPrior, relaxed="analytic")(None)  # the flow has no closed form

VARIANTS = (IGRICategorical, IGRSBCategorical, IGRSBFiniteCategorical, IGRPlanarCategorical)
KINDS = tuple(variant.kind for variant in VARIANTS)

for _variant in VARIANTS:
    POSTERIORS.register(f"igr-{_variant.kind}")(PosteriorType(_variant, _variant.Options, "IGR"))


def normal_kl(loc_q: Tensor, scale_q: Tensor, loc_p: Tensor, scale_p: Tensor) -> Tensor:
    """``KL(N(loc_q, scale_q²) || N(loc_p, scale_p²))`` elementwise:
    ``log(scale_p / scale_q) + (scale_q² + (loc_q - loc_p)²) / (2 scale_p²) - 1/2``."""
    ratio = (scale_q / scale_p).square()
    return 0.5 * (ratio + ((loc_q - loc_p) / scale_p).square() - 1 - ratio.log())
