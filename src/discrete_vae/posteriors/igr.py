"""IGR posteriors: ``igr-i``, ``igr-sb`` (countably infinite), ``igr-sb-finite``, ``igr-planar``.

Paper: Potapczynski, Loaiza-Ganem, Cunningham (2020), https://arxiv.org/abs/1912.09588.

The encoder gives, per latent variable, ``K - 1`` means and log standard deviations of the Gaussian
pre-image ``kappa``; the decoder sees the relaxed sample on the ``K``-simplex. The KL term lives in
the pre-image space, against the Gaussian prior whose ``tau -> 0`` limit is the uniform categorical
(:mod:`discrete_vae.priors.igr`):

- ``kl="analytic"``: the closed-form Gaussian KL (IGR-I, IGR-SB);
- ``kl="relaxed"``: a single-sample Monte Carlo KL ``log q(kappa) - log p(kappa)`` (with flows, the
  flow's log-determinant enters ``log q``; IGR-Planar has no closed form, so this is its only KL).

Either way the objective bounds the likelihood of the *relaxed* model. Evaluation scores the
discrete model: hard samples and exact log probabilities of the categorical each posterior implies
(quadrature for IGR-I, closed form for IGR-SB, a Monte Carlo estimate for IGR-Planar, used as the
proposal so that the bound stays a true lower bound).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.distributions import Independent, Normal, OneHotCategorical

from ..distributions import ExpIGR, ExpIGRPlanar, ExpIGRSB, PlanarFlow, truncate_sticks
from ..errors import ConfigError
from ..priors import CategoricalPrior, Prior
from ..priors.igr import uniform_preimage_prior
from .base import POSTERIORS, LatentSample, LatentSpec, Posterior, PosteriorType

KINDS = ("i", "sb", "sb-finite", "planar")


class IGRCategorical(Posterior):
    """``N`` categorical latents of ``K`` classes relaxed by an IGR map of kind ``kind``."""

    def __init__(
        self,
        spec: LatentSpec,
        kind: str,
        kl: str = "auto",
        delta: float = 1.0,
        prior_scale: float = 1.0,
        sb_threshold: float = 0.99,
        sb_percentile: float = 70.0,
        flow_layers: int = 2,
        mc_samples: int = 1000,
        **_: object,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"unknown IGR kind {kind!r}")
        if kl == "auto":
            kl = "relaxed" if kind == "planar" else "analytic"
        if kl not in ("analytic", "relaxed"):
            raise ConfigError(f"--kl must be analytic or relaxed, got {kl!r}")
        if kind == "planar" and kl == "analytic":
            raise ConfigError("igr-planar has no closed-form KL: use --kl relaxed")
        if not 0 < sb_threshold < 1:
            raise ConfigError(f"--sb-threshold must be in (0, 1), got {sb_threshold}")
        if not 0 <= sb_percentile <= 100:
            raise ConfigError(f"--sb-percentile must be in [0, 100], got {sb_percentile}")
        if delta <= 0:
            raise ConfigError(f"--delta must be positive, got {delta}")
        if prior_scale <= 0:
            raise ConfigError(f"--prior-scale must be positive, got {prior_scale}")
        self.spec, self.kind, self.kl, self.delta = spec, kind, kl, delta
        self.sb_threshold, self.sb_percentile, self.mc_samples = sb_threshold, sb_percentile, mc_samples
        n, k = spec.n, spec.k
        self.param_dim = 2 * n * (k - 1)
        self.decoder_dim = n * k
        loc, scale = uniform_preimage_prior(kind, k, prior_scale)
        self.register_buffer("prior_loc", loc)
        self.register_buffer("prior_scale", scale)
        self.flow = PlanarFlow(n, k - 1, flow_layers) if kind == "planar" else None
        self.n_required = k  # classes in use by the last relaxed batch (IGR-SB's truncation)

    def posterior(self, params: Tensor, tau: Tensor | float = 1.0) -> ExpIGR:
        """The log-space IGR posterior, batch (..., N), pre-image (K-1)."""
        n, k = self.spec.n, self.spec.k
        loc, log_scale = params.view(*params.shape[:-1], n, 2, k - 1).unbind(-2)
        scale = log_scale.exp()
        if self.kind == "planar":
            return ExpIGRPlanar(tau, loc, scale, self.flow, self.delta, self.mc_samples, validate_args=False)
        if self.kind == "i":
            return ExpIGR(tau, loc, scale, self.delta, validate_args=False)
        return ExpIGRSB(tau, loc, scale, validate_args=False)

    def preimage_prior(self) -> Normal:
        return Normal(self.prior_loc, self.prior_scale, validate_args=False)

    def relaxed(self, params: Tensor, prior: Prior, tau: Tensor, n_samples: int,
                context: Tensor | None = None, straight_through: bool = False) -> LatentSample:
        q = self.posterior(params, tau)
        shape = torch.Size([n_samples])
        if self.kind == "planar":
            kappa, log_q = q.rsample_preimage_log_prob(shape)  # (S, B, N, K-1), (S, B, N)
        else:
            kappa = q.rsample_preimage(shape)
        log_psi = q.to_log_simplex(kappa)  # (S, B, N, K)
        used = self.spec.k - 1
        if self.kind == "sb":
            cut = truncate_sticks(log_psi, self.sb_threshold, self.sb_percentile)
            z, self.n_required = cut.psi, cut.n_required
            used = cut.n_required - 1  # sticks broken before the last class kept
        else:
            z = log_psi.exp()
        z = z.flatten(-2)
        if self.kl == "analytic":
            kl = normal_kl(q.loc[..., :used], q.scale[..., :used], self.prior_loc[:used],
                           self.prior_scale[:used])
            return LatentSample(z, kl=kl.sum((-2, -1)))
        log_p = self.preimage_prior().log_prob(kappa)[..., :used].sum((-2, -1))
        if self.kind != "planar":
            log_q = Normal(q.loc, q.scale, validate_args=False).log_prob(kappa)[..., :used].sum(-1)
        return LatentSample(z, log_q=log_q.sum(-1), log_p=log_p)

    def discrete_posterior(self, params: Tensor, context: Tensor | None = None) -> Independent:
        logits = self.posterior(params).discrete_log_probs()
        return Independent(OneHotCategorical(logits=logits, validate_args=False), 1)

    def decoder_input(self, z: Tensor) -> Tensor:
        return z.flatten(-2)

    def check_prior(self, prior: Prior) -> None:
        """The pre-image prior is fitted to the uniform categorical: refuse any other prior."""
        uniform = isinstance(prior, CategoricalPrior) and not isinstance(prior.logits, torch.nn.Parameter)
        if not uniform:
            raise ConfigError(
                f"--model igr-{self.kind} needs --prior uniform (its Gaussian pre-image prior implies it)"
            )

    def stats(self) -> dict[str, float]:
        return {"n_required": self.n_required} if self.kind == "sb" else {}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class IGROptions:
    prior_scale: float = field(default=1.0, metadata=_help("std of the Gaussian pre-image prior (it implies "
                                                           "a uniform prior)"))


@dataclass(frozen=True)
class IGRIOptions(IGROptions):
    delta: float = field(default=1.0, metadata=_help("weight of softmax++'s extra class (igr-i, igr-planar)"))


@dataclass(frozen=True)
class IGRSBOptions(IGROptions):
    sb_threshold: float = field(default=0.99, metadata=_help("igr-sb: stick mass the classes kept must "
                                                             "reach"))
    sb_percentile: float = field(default=70.0, metadata=_help("igr-sb: percentile over the batch of the "
                                                              "classes needed"))


@dataclass(frozen=True)
class IGRPlanarOptions(IGRIOptions):
    flow_layers: int = field(default=2, metadata=_help("igr-planar: planar-flow layers per latent variable"))
    mc_samples: int = field(default=1000, metadata=_help("igr-planar: draws estimating the implied discrete "
                                                         "posterior"))


def _positive(options: IGRPlanarOptions) -> None:
    if options.flow_layers < 1 or options.mc_samples < 1:
        raise ConfigError("--flow-layers and --mc-samples must be at least 1")


IGRPlanarOptions.__post_init__ = _positive
OPTIONS = {"i": IGRIOptions, "sb": IGRSBOptions, "sb-finite": IGROptions, "planar": IGRPlanarOptions}


def _igr(kind: str) -> PosteriorType:
    return PosteriorType(lambda spec, **options: IGRCategorical(spec, kind, **options), OPTIONS[kind], "IGR")


for _kind in KINDS:
    POSTERIORS.register(f"igr-{_kind}")(_igr(_kind))


def normal_kl(loc_q: Tensor, scale_q: Tensor, loc_p: Tensor, scale_p: Tensor) -> Tensor:
    """``KL(N(loc_q, scale_q²) || N(loc_p, scale_p²))`` elementwise:
    ``log(scale_p / scale_q) + (scale_q² + (loc_q - loc_p)²) / (2 scale_p²) - 1/2``."""
    ratio = (scale_q / scale_p).square()
    return 0.5 * (ratio + ((loc_q - loc_p) / scale_p).square() - 1 - ratio.log())
