"""Relaxed distributions over discrete variables, as ``torch.distributions`` citizens."""

from .gumbel_softmax import (
    BinaryConcrete,
    ExpConcrete,
    GumbelSoftmax,
    LogitBinaryConcrete,
    straight_through_binary,
    straight_through_one_hot,
)

__all__ = [
    "BinaryConcrete",
    "ExpConcrete",
    "GumbelSoftmax",
    "LogitBinaryConcrete",
    "straight_through_binary",
    "straight_through_one_hot",
]
