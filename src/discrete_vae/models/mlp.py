"""Multilayer perceptrons from a typed config (the seeds' 784-512-256 encoders and mirrors)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),  # in place: one activation buffer fewer per layer
    "tanh": nn.Tanh,
}


@dataclass(frozen=True)
class MLPConfig:
    """An MLP: ``hidden`` layer widths (empty for a linear map) and their ``activation``.

    The output layer is linear: encoders emit unconstrained logits, decoders Bernoulli logits.
    """

    hidden: tuple[int, ...] = (512, 256)
    activation: str = "relu"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"unknown activation {self.activation!r}; choose one of: {', '.join(ACTIVATIONS)}"
            )
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden widths must be positive, got {self.hidden}")

    def mirrored(self) -> MLPConfig:
        return MLPConfig(tuple(reversed(self.hidden)), self.activation)


def build_mlp(in_dim: int, out_dim: int, config: MLPConfig) -> nn.Sequential:
    """``in_dim -> hidden... -> out_dim`` with ``config.activation`` between layers."""
    layers: list[nn.Module] = []
    width = in_dim
    for h in config.hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[config.activation]()]
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)
