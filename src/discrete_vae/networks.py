"""Multilayer perceptrons from a typed config (the seeds' 784-512-256 encoders and mirrors).

The networks of the VAE (:mod:`.models`) and of the hierarchical posteriors' later groups
(:mod:`.posteriors.dvae`) both come from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import ConfigError

LEAKY_RELU_SLOPE = 0.3  # negative slope of `leaky_relu` (Dong, Mnih & Tucker 2020; Keras's default alpha)
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),  # in place: one activation buffer fewer per layer
    "tanh": nn.Tanh,
    # the DisARM code's nonlinear networks (google-research disarm/binary): Keras LeakyReLU(alpha=0.3)
    "leaky_relu": lambda: nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True),
}


@dataclass(frozen=True)
class MLPConfig:
    """An MLP: ``hidden`` layer widths (empty for a linear map) and their ``activation``.

    The output layer is linear: encoders emit unconstrained logits, decoders Bernoulli logits.
    """

    hidden: tuple[int, ...] = (512, 256)
    activation: str = "relu"
    batch_norm: bool = False  # batch norm before each hidden activation (the DVAE code's nonlinear nets)

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {self.activation!r}; choose one of: {', '.join(ACTIVATIONS)}"
            )
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden widths must be positive, got {self.hidden}")

    def mirrored(self) -> MLPConfig:
        return MLPConfig(tuple(reversed(self.hidden)), self.activation, self.batch_norm)


class BatchNorm(nn.BatchNorm1d):
    """Batch norm over every leading dimension of (..., C) inputs (samples x examples alike).

    Momentum 0.2 and epsilon 1e-2 are the DVAE code's (TensorFlow's momentum 0.8 is the running averages'
    decay, PyTorch's the new batch's weight).
    """

    def __init__(self, width: int):
        super().__init__(width, eps=1e-2, momentum=0.2)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view(x.shape)


def build_mlp(in_dim: int, out_dim: int, config: MLPConfig) -> nn.Sequential:
    """``in_dim -> hidden... -> out_dim`` with ``config.activation`` (after batch norm, if asked for)
    between layers."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in config.hidden:
        layers.append(nn.Linear(width, h))
        if config.batch_norm:
            layers.append(BatchNorm(h))
        layers.append(ACTIVATIONS[config.activation]())
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


@contextmanager
def evaluating(module: nn.Module, device: torch.device, seed: int | None = None) -> Iterator[None]:
    """Run ``module`` in eval mode (batch norm on its running averages, which stay as they are) with the
    random number generator forked, and seeded when ``seed`` is given; the module's mode and the
    generator's state are put back afterwards.

    Everything that looks at a model in training without training it (validation, image grids, the
    one pass that sizes lazy parameters) goes through here, so that it changes neither the model nor
    the random numbers of the steps that follow.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        module.train(was_training)
