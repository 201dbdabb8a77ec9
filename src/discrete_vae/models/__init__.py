"""The discrete VAE that composes encoder, posterior, estimator, prior and decoder."""

from .vae import DiscreteVAE, Terms

__all__ = ["DiscreteVAE", "Terms"]
