"""discrete-vae: variational autoencoders with discrete latent variables."""

__version__ = "0.1.0"
