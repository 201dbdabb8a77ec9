"""The discrete VAE: data -> encoder -> posterior -> estimator -> prior and decoder -> objective terms.

One class serves every posterior, estimator and prior. The posterior turns encoder outputs into the
discrete q(z|x); the estimator (:mod:`discrete_vae.estimators`) decides how ``E_q[f]`` and its gradient are
obtained, calling ``f(z) = log p(x|z)`` (plus ``log p(z) - log q(z|x)`` where the KL is not analytic) as
often as it needs. The estimators a posterior names in its ``relaxations`` (``gs``, ``st-gs``, ``relaxed``)
are handed its own relaxation instead of the discrete posterior, through the same call.
Encoder and decoder are any ``nn.Module``: the encoder maps ``(B, D)`` to ``(B, posterior.param_dim)``,
the decoder ``(..., posterior.decoder_dim)`` to Bernoulli logits ``(..., D)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from ..errors import ConfigError
from ..estimators import Estimator, build_estimator
from ..networks import MLPConfig, build_mlp, evaluating
from ..posteriors import Posterior
from ..posteriors.base import Relaxation
from ..posteriors.kl import analytic_kl, kl_kind
from ..priors import Prior
from ..schedules import LearnableTemperature


class Terms(NamedTuple):
    """One training pass. ``loss``: the scalar to minimise (its gradient is the estimate); ``objective``
    (B,): the training objective's value; ``log_px``, ``kl`` (B,): its parts (``kl`` unweighted);
    ``aux_loss``: what the estimator's own parameters minimise (None without)."""

    loss: Tensor
    objective: Tensor
    log_px: Tensor
    kl: Tensor
    aux_loss: Tensor | None = None


def bernoulli_log_likelihood(x_logits: Tensor, x: Tensor) -> Tensor:
    """``log p(x | z) = sum_d [x_d * l_d - softplus(l_d)]`` for decoder logits ``l``.

    ``x_logits`` (S, B, D) and ``x`` (B, D) -> (S, B). One sample per example (training) takes
    torch's fused kernel; many samples (evaluation) take a batched dot product for the data term,
    so ``x`` is never copied to the samples' shape (both measured fastest in their setting).
    """
    if x_logits.shape[0] == 1:
        return -F.binary_cross_entropy_with_logits(
            x_logits, x.expand_as(x_logits), reduction="none"
        ).sum(-1)
    return torch.einsum("sbd,bd->sb", x_logits, x) - F.softplus(x_logits).sum(-1)


class DiscreteTerms(NamedTuple):
    """``q`` (the discrete posterior), ``f`` (:class:`Integrand`), ``kl`` (B,) or None, and the encoder's
    ``context`` (what learned baselines condition on)."""

    q: Distribution
    f: Integrand
    kl: Tensor | None
    context: Tensor


class Integrand:
    """``f(z)`` of the ELBO for a batch ``x``: ``log p(x|z)``, minus ``w`` times ``log_ratio(z)`` (the Monte
    Carlo KL ``log q(z|x) - log p(z)``) when one is given and not None for ``z``. Hard latents are embedded by
    the posterior's ``decoder_input``; a ``relaxation``'s draws are the decoder's inputs already. Remembers
    each call's parts, so that the terms logged are their means over the draws an estimator's value is made
    of (:meth:`means`)."""

    def __init__(self, model: DiscreteVAE, x: Tensor, log_ratio: Callable[[Tensor], Tensor | None] | None,
                 kl_weight: float, relaxation: bool = False):
        self.model, self.x, self.log_ratio, self.kl_weight = model, x, log_ratio, kl_weight
        self.relaxation = relaxation  # z are a relaxation's draws: decoder inputs, all of them logged
        self.seen: list[tuple[Tensor, Tensor, Tensor]] = []  # (hard mask, log p(x|z), log q - log p) per call

    def __call__(self, z: Tensor) -> Tensor:  # (S, B, ...) -> (S, B)
        inputs = z if self.relaxation else self.model.posterior.decoder_input(z)
        log_px = bernoulli_log_likelihood(self.model.run_net(self.model.decoder, inputs), self.x)
        log_ratio = None if self.log_ratio is None else self.log_ratio(z)  # log Z excluded for the RBM prior
        self.seen.append((_hard_rows(z), log_px.detach(),
                          torch.zeros_like(log_px) if log_ratio is None else log_ratio.detach()))
        return log_px if log_ratio is None else log_px - self.kl_weight * log_ratio

    def means(self) -> tuple[Tensor, Tensor]:
        """``log p(x|z)`` and ``log q - log p`` (B,) averaged over the hard draws of every call so far (an
        estimator's value is made of those), or over every draw of a relaxation."""
        if self.relaxation:  # one draw is reduced in its own layout (a reduction's order depends on it)
            parts = [[t[i] for t in self.seen] for i in (1, 2)]
            return tuple((p[0] if len(p) == 1 else torch.cat(p)).mean(0) for p in parts)
        mask = torch.cat([m for m, _, _ in self.seen]).to(self.x.dtype)  # (sum S, B)
        count = mask.sum(0).clamp_min(1)
        return tuple((torch.cat([t[i] for t in self.seen]) * mask).sum(0) / count for i in (1, 2))


def _network(module: nn.Module | MLPConfig, n_in: int, n_out: int) -> nn.Module:
    return build_mlp(n_in, n_out, module) if isinstance(module, MLPConfig) else module


def _hard_rows(z: Tensor) -> Tensor:
    """(S, B) mask of the draws in ``z`` (S, B, ...) that are hard (every entry 0 or 1)."""
    return ((z == 0) | (z == 1)).flatten(2).all(-1)


class DiscreteVAE(nn.Module):
    """Encoder, posterior, estimator, prior and decoder; a learnable temperature when asked for.

    ``encoder`` and ``decoder`` are modules, or :class:`MLPConfig` to build multilayer perceptrons of the
    right sizes. ``estimator`` defaults to the posterior's first relaxation (``gs`` for categorical latents).
    """

    def __init__(
        self,
        data_dim: int,
        posterior: Posterior,
        prior: Prior,
        encoder: nn.Module | MLPConfig,
        decoder: nn.Module | MLPConfig,
        estimator: Estimator | None = None,
        learnable_temperature: float | None = None,
        center_input: bool = False,
    ):
        super().__init__()
        self.data_dim = data_dim
        self.center_input = center_input
        if center_input:  # the encoder sees x minus the training data's per-pixel mean
            self.register_buffer("x_mean", torch.zeros(data_dim))
        self.posterior = posterior
        self.prior = prior
        self.encoder = _network(encoder, data_dim, posterior.param_dim)
        self.decoder = _network(decoder, posterior.decoder_dim, data_dim)
        self.temperature = (
            LearnableTemperature(learnable_temperature) if learnable_temperature else None
        )
        if estimator is None:  # the posterior's own relaxation
            estimator = build_estimator(next(iter(posterior.relaxations)))
        self.estimator = estimator
        self.train_dtype: torch.dtype | None = None  # e.g. bfloat16: the nets' autocast while training
        self.check_estimator()

    def check_estimator(self, n_samples: int | None = None) -> None:
        """One error line for a posterior the estimator cannot serve, or ``n_samples`` per example (default:
        its minimum) that it cannot take."""
        name = self.estimator.name
        if self.straight_through is not None:
            self.posterior.check_relaxation(self.prior)  # its KL terms under --kl
            return
        if not self.posterior.factorial or set(self.estimator.supports) <= {"relaxation"}:
            serves = ", ".join(self.posterior.relaxations)
            more = " or any estimator" if self.posterior.factorial else ""
            raise ConfigError(f"estimator {name} does not apply to this posterior "
                              f"({type(self.posterior).__name__}); it takes {serves}{more}")
        kind = "binary" if not self.posterior.one_hot else "categorical"
        self.estimator.check(kind, self.estimator.min_samples if n_samples is None else n_samples)

    def prepare(self, x: Tensor) -> None:
        """Size the estimator's lazily shaped parameters (a learned baseline's input width) with one pass
        over ``x`` that changes nothing else: eval mode, the RNG state restored, no backward pass. Call it
        before building the optimizer; a checkpoint's ``load_state_dict`` sizes them too."""
        if not any(isinstance(p, nn.parameter.UninitializedParameter) for p in self.estimator.parameters()):
            return
        # gradients stay on: control variates skip their networks under no_grad
        with evaluating(self, x.device):
            self(x, 1.0, max(2, self.estimator.min_samples))

    def init_decoder_bias(self, train_mean: Tensor) -> None:
        """Start the decoder's output bias at the logit of the data's base rate (when its last layer is a
        ``Linear`` with one bias per pixel), and set the input centring."""
        with torch.no_grad():
            last = [m for m in self.decoder.modules() if isinstance(m, nn.Linear)]
            if last and last[-1].bias is not None and last[-1].bias.shape == train_mean.shape:
                last[-1].bias.copy_(torch.logit(train_mean.clamp(1e-3, 1 - 1e-3)))
            if self.center_input:
                self.x_mean.copy_(train_mean)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(params, context)``: the encoder's outputs and its (centred) input, which hierarchical
        posteriors condition their later groups on."""
        context = x - self.x_mean if self.center_input else x
        return self.run_net(self.encoder, context), context

    def run_net(self, net: nn.Module, inputs: Tensor) -> Tensor:
        """``net(inputs)``; while training with ``train_dtype`` set, under autocast to that dtype, the
        output cast back to float32, so that distributions, samplers and bounds stay in float32 (and
        evaluation, in eval mode, is float32 throughout)."""
        if self.training and self.train_dtype is not None:
            with torch.autocast(inputs.device.type, dtype=self.train_dtype):
                return net(inputs).float()
        return net(inputs)

    def tau(self, scheduled: float) -> Tensor:
        """The temperature in force: the learnable one if present, else the scheduled value."""
        if self.temperature is not None:
            return self.temperature()
        device = next(self.decoder.parameters()).device
        return torch.as_tensor(scheduled, dtype=torch.float32, device=device)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x|z)`` (S, B) for latents ``z`` (S, B, ...), hard or relaxed."""
        return bernoulli_log_likelihood(self.run_net(self.decoder, self.posterior.decoder_input(z)), x)

    @property
    def straight_through(self) -> bool | None:
        """None where the estimator works on the discrete posterior; where it draws from the posterior's own
        relaxation (one of its ``relaxations``), whether that draw is straight-through."""
        return self.posterior.relaxations.get(self.estimator.name)

    def training_objective(self, requested: str, k: int) -> str:
        """``elbo`` or ``iw`` for this estimator with ``k`` samples per example; ``auto``: iw for posteriors
        that train with it (DVAE#) when k > 1. The ``vimco`` estimator's value is the IW bound itself; other
        estimators outside a relaxation train the ELBO."""
        relaxation = self.straight_through is not None
        if self.estimator.trains_iw_bound:
            if requested == "elbo":
                raise ConfigError(f"{self.estimator.name} trains the importance-weighted bound: "
                                  "drop --objective elbo")
            return "iw"
        if requested == "iw" and not relaxation:
            relaxations = ", ".join(self.posterior.relaxations)
            raise ConfigError(f"--objective iw needs a relaxation estimator ({relaxations}) or vimco")
        if requested != "auto":
            return requested
        return "iw" if self.posterior.iw_default and k > 1 and relaxation else "elbo"

    def forward(self, x: Tensor, scheduled_tau: float, n_samples: int = 1, kl_weight: float = 1.0,
                objective: str = "elbo") -> Terms:
        """One training pass over ``x`` (B, D): ``estimator(q, f, n_samples)``, ``q`` the discrete posterior
        or, for the estimators a posterior names in ``relaxations``, its own relaxation.

        ``objective``: ``elbo``, or ``iw``, the importance-weighted bound over the ``n_samples`` draws (the KL
        inside ``f``; ``vimco``'s value is always that bound). ``kl_weight`` < 1 is KL warm-up.
        """
        tau = self.tau(scheduled_tau)
        iw, relaxation = objective == "iw", self.straight_through is not None
        if not relaxation:
            sampled = iw or self.estimator.trains_iw_bound or kl_kind(self.posterior.kl).hard_samples
            q, f, kl, context = self.discrete_terms(x, sampled, kl_weight)
        else:
            q, f, context = self.relaxed_terms(x, tau, kl_weight)
        out = self.estimator(q, f, n_samples, tau=None if self.estimator.learns_temperature else tau,
                             context=context, iw=iw)  # REBAR and RELAX learn their tau
        if relaxation:
            kl = q.kl  # what came with the draw
            if iw and kl is not None:
                raise ConfigError("--objective iw needs per-sample prior and posterior densities: use a "
                                  "relaxed KL (--kl relaxed) or --objective elbo")
        log_px, log_ratio = f.means()
        if kl is None:
            return Terms(-out.surrogate.mean(), out.value, log_px, log_ratio, out.aux_loss)
        objective = out.value - kl_weight * kl.detach()
        return Terms(-(out.surrogate - kl_weight * kl).mean(), objective, log_px, kl.detach() + log_ratio,
                     out.aux_loss)

    def discrete_terms(self, x: Tensor, sampled: bool = False, kl_weight: float = 1.0) -> DiscreteTerms:
        """The discrete ELBO of ``x`` as ``E_q[f] - KL``: ``q`` the discrete posterior, ``f(z) = log p(x|z)``
        and ``kl`` the registered analytic KL (B,); or, with ``sampled`` (or no registered pair), ``kl`` None
        and ``f(z) = log p(x|z) - w (log q(z|x) - log p(z))`` (``log Z`` excluded for the RBM prior)."""
        params, context = self.encode(x)
        q = self.posterior.discrete_posterior(params, context=context)
        kl = None if sampled else analytic_kl(self.posterior, params, self.prior)

        def log_ratio(z: Tensor) -> Tensor:
            return q.log_prob(z) - self.prior.log_prob(z)

        return DiscreteTerms(q, Integrand(self, x, log_ratio if kl is None else None, kl_weight), kl, context)

    def relaxed_terms(self, x: Tensor, tau: Tensor, kl_weight: float) -> tuple[Relaxation, Integrand, Tensor]:
        """``(q, f, context)`` of the relaxed objective: ``q`` the posterior's relaxation at ``tau``,
        ``f(zeta) = log p(x|zeta)`` minus ``w`` times the draw's Monte Carlo KL where it has one (else the
        draw's analytic KL, ``q.kl``, sits outside)."""
        params, context = self.encode(x)  # (B, P)
        q = self.posterior.relaxation(params, self.prior, tau, context=context,
                                      straight_through=self.straight_through)
        return q, Integrand(self, x, q.log_ratio, kl_weight, relaxation=True), context

    @torch.no_grad()
    def discrete_log_weights(self, x: Tensor, n_samples: int) -> tuple[Tensor, Tensor]:
        """``(log p(x|z) + log p(z) - log q(z|x), log p(x|z))`` for ``n_samples`` hard ``z ~ q(z|x)``:
        both (S, B).

        For a prior that is not normalised, ``log p(z)`` is unnormalised (subtract ``log Z``).
        """
        params, context = self.encode(x)
        q = self.posterior.discrete_posterior(params, context=context)
        z = q.sample((n_samples,))  # (S, B, *event)
        log_px = self.log_likelihood(x, z)
        return log_px + self.prior.log_prob(z) - q.log_prob(z), log_px

    @torch.no_grad()
    def sample_images(self, n: int) -> Tensor:
        """Bernoulli means of ``p(x|z)`` for ``n`` prior draws: (n, D); an RBM's training chains stay put."""
        z = self.prior.sample(n, persist=False)
        return torch.sigmoid(self.decoder(self.posterior.decoder_input(z)))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Bernoulli means of ``p(x|z)`` with ``z`` the posterior's mode: (B, D)."""
        params, context = self.encode(x)
        q = self.posterior.discrete_posterior(params, context=context)
        return torch.sigmoid(self.decoder(self.posterior.decoder_input(q.mode.nan_to_num(0.0))))
