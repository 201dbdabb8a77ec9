"""Networks and the discrete VAE that composes encoder, latent family, prior and decoder."""

from .mlp import ACTIVATIONS, MLPConfig, build_mlp
from .vae import DiscreteVAE, Outputs

__all__ = ["ACTIVATIONS", "DiscreteVAE", "MLPConfig", "Outputs", "build_mlp"]
