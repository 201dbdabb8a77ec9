"""The discrete VAE: data -> encoder -> posterior/relaxation -> prior -> decoder -> terms.

One class serves every latent family: the family turns encoder outputs into a relaxed sample and a
KL term for training, and into the discrete posterior for evaluation. The objective is computed by
:mod:`discrete_vae.objectives` from the per-sample terms this returns.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..latents import LatentFamily, LatentSample
from ..priors import Prior
from ..schedules import LearnableTemperature
from .mlp import MLPConfig, build_mlp


class Outputs(NamedTuple):
    """Per-sample terms of one forward pass: ``log_px`` (S, B) and the family's latent sample."""

    log_px: Tensor
    latent: LatentSample


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


class DiscreteVAE(nn.Module):
    """Encoder, latent family, prior and decoder; a learnable temperature when asked for."""

    def __init__(
        self,
        data_dim: int,
        family: LatentFamily,
        prior: Prior,
        encoder: MLPConfig,
        decoder: MLPConfig,
        learnable_temperature: float | None = None,
        center_input: bool = False,
    ):
        super().__init__()
        self.data_dim = data_dim
        self.center_input = center_input
        if center_input:  # the encoder sees x minus the training data's per-pixel mean
            self.register_buffer("x_mean", torch.zeros(data_dim))
        self.family = family
        self.prior = prior
        self.encoder = build_mlp(data_dim, family.param_dim, encoder)
        self.decoder = build_mlp(family.decoder_dim, data_dim, decoder)
        self.temperature = (
            LearnableTemperature(learnable_temperature) if learnable_temperature else None
        )

    def init_decoder_bias(self, train_mean: Tensor) -> None:
        """Set the decoder's output bias to the logit of the data's base rate (and the input centring)."""
        with torch.no_grad():
            self.decoder[-1].bias.copy_(torch.logit(train_mean.clamp(1e-3, 1 - 1e-3)))
            if self.center_input:
                self.x_mean.copy_(train_mean)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(params, context)``: the encoder's outputs and its (centred) input, which hierarchical
        families condition their later groups on."""
        context = x - self.x_mean if self.center_input else x
        return self.encoder(context), context

    def tau(self, scheduled: float) -> Tensor:
        """The temperature in force: the learnable one if present, else the scheduled value."""
        if self.temperature is not None:
            return self.temperature()
        return torch.tensor(scheduled, device=self.decoder[-1].bias.device)

    def forward(self, x: Tensor, scheduled_tau: float, n_samples: int = 1) -> Outputs:
        """Relaxed pass for training: x (B, D) -> log p(x|z) (S, B) and the latent sample.

        ``scheduled_tau`` is the schedule's temperature; a learnable temperature overrides it.
        """
        tau = self.tau(scheduled_tau)
        params, context = self.encode(x)  # (B, P)
        latent = self.family.relaxed(params, self.prior, tau, n_samples, context=context)
        log_px = bernoulli_log_likelihood(self.decoder(latent.z), x)  # (S, B)
        return Outputs(log_px, latent)

    @torch.no_grad()
    def discrete_log_weights(self, x: Tensor, n_samples: int) -> Tensor:
        """``log p(x|z) + log p(z) - log q(z|x)`` for ``n_samples`` hard ``z ~ q(z|x)``: (S, B).

        For a prior that is not normalised, ``log p(z)`` is unnormalised (subtract ``log Z``).
        """
        params, context = self.encode(x)
        q = self.family.discrete_posterior(params, context=context)
        z = q.sample((n_samples,))  # (S, B, *event)
        x_logits = self.decoder(self.family.decoder_input(z))  # (S, B, D)
        return bernoulli_log_likelihood(x_logits, x) + self.prior.log_prob(z) - q.log_prob(z)

    @torch.no_grad()
    def sample_images(self, n: int) -> Tensor:
        """Bernoulli means of ``p(x|z)`` for ``n`` prior draws: (n, D)."""
        z = self.prior.sample(n)
        return torch.sigmoid(self.decoder(self.family.decoder_input(z)))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Bernoulli means of ``p(x|z)`` with ``z`` the posterior's mode: (B, D)."""
        params, context = self.encode(x)
        q = self.family.discrete_posterior(params, context=context)
        return torch.sigmoid(self.decoder(self.family.decoder_input(q.mode.nan_to_num(0.0))))
