"""Binarized MNIST with the fixed binarization of Larochelle & Murray (2011).

The discrete-VAE literature (DVAE, DVAE++, DVAE#, REBAR, RELAX, ARM, IWAE) reports on this set:
50,000 train / 10,000 validation / 10,000 test images of 28x28 pixels, each 0 or 1. Files are
``binarized_mnist_{train,valid,test}.amat`` (one image per line, 784 space-separated 0/1
values), optionally gzip-compressed. Split sizes are whatever the files hold.

Reference: H. Larochelle, I. Murray, "The Neural Autoregressive Distribution Estimator",
AISTATS 2011.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import DATASETS, SPLITS, DataSplits, read_bytes
from .download import locate_files

NAME = "binarized_mnist"
DIM = 784
URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{}.amat"
_ZERO, _ONE, _SPACE, _NEWLINE = ord("0"), ord("1"), ord(" "), ord("\n")


def _parse_canonical(raw: bytes) -> np.ndarray | None:
    """Fast path for the canonical layout ``"d d ... d\\n"`` (1568 bytes a row); None otherwise."""
    width = 2 * DIM
    if not raw or len(raw) % width:
        return None
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, width)  # (n, 1568)
    seps = rows[:, 1::2]  # (n, 784): spaces, then the newline
    if not ((seps[:, :-1] == _SPACE).all() and (seps[:, -1] == _NEWLINE).all()):
        return None
    bits = rows[:, 0::2] - _ZERO  # (n, 784), wraps around for bytes below "0"
    if not (bits <= 1).all():
        return None
    return bits


def _parse_general(raw: bytes, source: str) -> np.ndarray:
    """Any whitespace layout, one image a line; locates the first bad line for the error."""
    images = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        values = line.split()
        if not values:
            continue
        if len(values) != DIM:
            raise DataError(
                f"{NAME}: {source} line {lineno} has {len(values)} values, expected {DIM}"
            )
        bits = np.frombuffer(b"".join(values), dtype=np.uint8) - _ZERO  # (784,) if 1 char each
        if bits.shape[0] != DIM or not (bits <= 1).all():
            bad = next(v for v in values if v not in (b"0", b"1"))
            raise DataError(
                f"{NAME}: {source} line {lineno} holds the value "
                f"{bad.decode(errors='replace')!r}; expected only 0 and 1"
            )
        images.append(bits)
    if not images:
        raise DataError(f"{NAME}: {source} holds no images")
    return np.stack(images)


def parse_amat(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse ``.amat`` text into an ``(n, 784)`` uint8 array of 0/1; one-line DataError if bad."""
    bits = _parse_canonical(raw)
    return bits if bits is not None else _parse_general(raw, source)


def read_amat(path: Path) -> torch.Tensor:
    """The ``(n, 784)`` float32 0/1 images of an ``.amat`` or ``.amat.gz`` file."""
    bits = parse_amat(read_bytes(path, NAME), str(path))
    return torch.from_numpy(bits.astype(np.float32))


@DATASETS.register(NAME)
def load_binarized_mnist(data_dir: Path, download: bool = True, seed: int = 0) -> DataSplits:
    """Binarized MNIST from ``data_dir/binarized_mnist`` or ``data_dir``; ``seed`` is unused.

    Missing files are downloaded from Larochelle's address when ``download`` is True.
    """
    files = {f"{NAME}_{split}.amat": URL.format(split) for split in SPLITS}
    paths = locate_files(NAME, data_dir, files, download)
    train, valid, test = (read_amat(paths[f"{NAME}_{split}.amat"]) for split in SPLITS)
    return DataSplits(
        name=NAME,
        train=train,
        valid=valid,
        test=test,
        image_shape=(28, 28),
        dynamic_binarization=False,
    )
