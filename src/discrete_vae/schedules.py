"""Temperature schedules: pure functions ``step -> value``, and a learnable temperature.

The seeds' exponential anneal, done right (Jang et al. 2017, sec. 4): on the *global* step ``t``,
``tau_t = max(tau_min, tau_0 * exp(-r * t0))`` where ``t0 = every * floor(t / every)`` is the step of
the last update, so the value changes every ``every`` steps, is never reset per epoch, and is a
function of the step alone (a checkpoint that stores the step restores the schedule exactly).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

Schedule = Callable[[int], float]


def constant(value: float) -> Schedule:
    """``step -> value``."""
    if value <= 0:
        raise ValueError(f"temperature must be positive, got {value}")

    def schedule(step: int) -> float:  # noqa: ARG001
        return value

    return schedule


def exponential_decay(init: float, rate: float, floor: float, every: int = 1) -> Schedule:
    """``step -> max(floor, init * exp(-rate * every * floor(step / every)))``."""
    if init <= 0 or floor <= 0:
        raise ValueError("temperatures must be positive")
    if rate < 0:
        raise ValueError(f"anneal rate must be non-negative, got {rate}")
    if every < 1:
        raise ValueError(f"anneal-every must be at least 1, got {every}")

    def schedule(step: int) -> float:
        last_update = (step // every) * every
        return max(floor, init * math.exp(-rate * last_update))

    return schedule


class LearnableTemperature(nn.Module):
    """A temperature trained with the model: ``tau = min_value + exp(log_excess)``.

    Positive by construction (and never below ``min_value``, default 0 for no floor).
    """

    def __init__(self, init: float, min_value: float = 0.0):
        super().__init__()
        if init <= min_value:
            raise ValueError(f"initial temperature {init} must exceed its floor {min_value}")
        self.min_value = float(min_value)
        self.log_excess = nn.Parameter(torch.tensor(math.log(init - min_value)))

    def forward(self) -> Tensor:
        # exp underflows to 0 below log_excess ~ -104 (float32); keep tau > 0 with no floor too
        tiny = torch.finfo(self.log_excess.dtype).tiny
        return (self.log_excess.exp() + self.min_value).clamp_min(tiny)
