"""Grey-level MNIST and Fashion-MNIST from their IDX files, with dynamic binarization.

Files: ``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte`` (plain or ``.gz``) in
``data_dir/<name>/`` or ``data_dir``. The 60,000 training images split into 55,000 train and
the last :data:`VALID_SIZE` = 5,000 for validation; the test set has 10,000 images. Training
images stay grey levels in ``[0, 1]`` (a fresh Bernoulli draw per batch); validation and test
are binarized once, with a generator seeded from ``seed``.

IDX format (LeCun et al.): magic ``0x00000803`` (unsigned bytes, 3 dimensions), then the three
dimensions as big-endian uint32, then ``n * rows * cols`` pixel bytes.

References: Y. LeCun et al., "Gradient-based learning applied to document recognition", 1998;
H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST", arXiv:1708.07747, 2017.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import DATASETS, DataSplits, grey_splits, read_bytes
from .download import locate_files

IDX_MAGIC = 0x00000803
VALID_SIZE = 5000  # last training images held out for validation; tests lower it
TRAIN_FILE = "train-images-idx3-ubyte"
TEST_FILE = "t10k-images-idx3-ubyte"
URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}


def parse_idx_images(raw: bytes, source: str = "<bytes>", dataset: str = "idx") -> np.ndarray:
    """Parse IDX image bytes into an ``(n, rows, cols)`` uint8 array; one-line DataError if bad."""
    if len(raw) < 16:
        raise DataError(f"{dataset}: {source} is truncated ({len(raw)} bytes, header needs 16)")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != IDX_MAGIC:
        raise DataError(
            f"{dataset}: {source} has magic number 0x{magic:08x}, expected 0x{IDX_MAGIC:08x} "
            "(IDX unsigned-byte images with 3 dimensions)"
        )
    expected = 16 + n * rows * cols
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(
            f"{dataset}: {source} is {state}: {len(raw)} bytes, header ({n}x{rows}x{cols}) "
            f"says {expected}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def read_idx_images(path: Path, dataset: str) -> torch.Tensor:
    """The ``(n, 784)`` float32 grey levels in ``[0, 1]`` of a 28x28 IDX image file."""
    images = parse_idx_images(read_bytes(path, dataset), str(path), dataset)  # (n, 28, 28)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{dataset}: {path} holds {images.shape[1:]} images, expected (28, 28)")
    flat = images.reshape(images.shape[0], -1).astype(np.float32) / 255.0  # (n, 784)
    return torch.from_numpy(flat)


def _idx_loader(name: str) -> Callable[[Path, bool, int], DataSplits]:
    def load(data_dir: Path, download: bool = True, seed: int = 0) -> DataSplits:
        files = {f: f"{URLS[name]}{f}.gz" for f in (TRAIN_FILE, TEST_FILE)}
        paths = locate_files(name, data_dir, files, download)
        train = read_idx_images(paths[TRAIN_FILE], name)
        test = read_idx_images(paths[TEST_FILE], name)
        return grey_splits(name, train, test, VALID_SIZE, seed, str(paths[TRAIN_FILE]))

    load.__name__ = f"load_{name}"
    load.__doc__ = f"{name}: 55,000 / 5,000 / 10,000 images, dynamic binarization (see module)."
    return load


load_mnist = DATASETS.register("mnist")(_idx_loader("mnist"))
load_fashion_mnist = DATASETS.register("fashion_mnist")(_idx_loader("fashion_mnist"))
