"""Denormal floats on the CPU: flushed to zero while the toolkit trains and evaluates.

Gradients through saturated sigmoids and softmaxes (a relaxed unit far from 1/2, a decoder sure of a
pixel) fall below float32's smallest normal number, 1.2e-38. x86 CPUs handle such denormal numbers in
microcode, tens of times slower per operation, and a matrix product with many of them in one operand
slows with it: a trained model's training step can take twice as long or more (``bench/denormals.py``).
Flushing them to zero (the x86 FTZ and DAZ modes, :func:`torch.set_flush_denormal`) changes numbers
only below 1.2e-38 (2.2e-308 in float64), far below anything the bounds resolve.

The mode belongs to each CPU thread, and a thread starts with its creator's mode: ``dvae`` sets it
before it starts any intra-op thread, so its whole thread pool flushes; :func:`discrete_vae.train.train`
and the other entry points called from Python set it for the calling thread. ``DVAE_FLUSH_DENORMALS=0``
keeps IEEE denormals (slower, for comparison).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

ENV = "DVAE_FLUSH_DENORMALS"


def flushed() -> bool:
    """Whether the calling thread flushes denormals: does a float32 product that lands at 1e-40 read 0?"""
    return float(torch.full((1,), 1e-30) * 1e-10) == 0.0


def wanted() -> bool:
    """Flush unless ``DVAE_FLUSH_DENORMALS`` is ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormals to zero in the calling thread while the block runs (unless the environment says
    not to), then give the thread back the mode it had. A no-op where the CPU has no such mode."""
    before = flushed()
    torch.set_flush_denormal(wanted())
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
