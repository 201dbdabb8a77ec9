"""scikit-learn's 8x8 handwritten digits, binarized: a tiny dataset that works offline.

``sklearn.datasets.load_digits()`` gives 1,797 images of 8x8 pixels with values 0..16 (it ships
with scikit-learn, no download). A pixel is 1 when ``x / 16 >= 0.5``. A fixed permutation
(``numpy.random.RandomState(0)``, independent of ``seed``) splits the images into
1,437 train / 180 valid / 180 test. Fixed binarization: ``dynamic_binarization`` is False.

Reference: E. Alpaydin, C. Kaynak, "Optical Recognition of Handwritten Digits", UCI ML
Repository, 1998.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import DATASETS, DataSplits

NAME = "digits"
N_VALID = 180
N_TEST = 180


@DATASETS.register(NAME)
def load_digits(data_dir: Path, download: bool = True, seed: int = 0) -> DataSplits:
    """Binarized digits 1,437 / 180 / 180; ``data_dir``, ``download`` and ``seed`` are unused."""
    from sklearn.datasets import load_digits as sklearn_digits  # slow import, only when used

    x = sklearn_digits().data  # (1797, 64) values 0..16
    bits = torch.from_numpy((x / 16.0 >= 0.5).astype(np.float32))  # (1797, 64)
    perm = torch.from_numpy(np.random.RandomState(0).permutation(bits.shape[0]))
    bits = bits[perm]
    n_train = bits.shape[0] - N_VALID - N_TEST
    return DataSplits(
        name=NAME,
        train=bits[:n_train],
        valid=bits[n_train : n_train + N_VALID],
        test=bits[n_train + N_VALID :],
        image_shape=(8, 8),
        dynamic_binarization=False,
    )
