"""Networks and the discrete VAE that composes encoder, posterior, estimator, prior and decoder."""

from .mlp import ACTIVATIONS, MLPConfig, build_mlp
from .vae import DiscreteVAE, Terms

__all__ = ["ACTIVATIONS", "DiscreteVAE", "MLPConfig", "Terms", "build_mlp"]
