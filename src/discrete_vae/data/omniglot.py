"""The 28x28 Omniglot of the IWAE paper (``chardata.mat``), with dynamic binarization.

``chardata.mat`` holds ``data`` (784 x 24,345 grey levels in ``[0, 1]``) and ``testdata``
(784 x 8,070). Each column is one image stored column-major, so images are read as the IWAE
code does, ``data.T.reshape((-1, 28, 28), order="F")``, then flattened row-major. The last
:data:`VALID_SIZE` = 1,345 training images are held out for validation, leaving 23,000 train;
the test set has 8,070 images. Training images stay grey (a fresh Bernoulli draw per batch);
validation and test are binarized once with a generator seeded from ``seed``.

References: B. M. Lake, R. Salakhutdinov, J. B. Tenenbaum, "Human-level concept learning through
probabilistic program induction", Science 2015; Y. Burda, R. Grosse, R. Salakhutdinov,
"Importance Weighted Autoencoders", ICLR 2016 (https://github.com/yburda/iwae).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import DATASETS, DataSplits, grey_splits, one_line, read_bytes
from .download import locate_files

NAME = "omniglot"
FILE = "chardata.mat"
URL = "https://raw.github.com/yburda/iwae/master/datasets/OMNIGLOT/chardata.mat"
VALID_SIZE = 1345  # last training images held out for validation; tests lower it


def _images(mat: dict, key: str, path: Path) -> torch.Tensor:
    """``mat[key]`` (784 x n, column-major images) as ``(n, 784)`` float32, row-major pixels."""
    if key not in mat:
        raise DataError(f"{NAME}: {path} has no variable {key!r} (expected 'data' and 'testdata')")
    x = np.asarray(mat[key])
    if x.ndim != 2 or x.shape[0] != 784 or x.shape[1] == 0:
        raise DataError(f"{NAME}: {path} variable {key!r} has shape {x.shape}, expected (784, n)")
    try:
        x = x.astype(np.float32)
    except (TypeError, ValueError) as e:
        raise DataError(f"{NAME}: {path} variable {key!r} is not numeric: {one_line(e)}") from e
    if not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise DataError(f"{NAME}: {path} variable {key!r} has values outside [0, 1]")
    images = x.T.reshape((-1, 28, 28), order="F")  # (n, 28, 28), as in the IWAE code
    return torch.from_numpy(np.ascontiguousarray(images.reshape(-1, 784)))  # (n, 784)


def read_chardata(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(train, test)`` grey-level images of ``chardata.mat``, each ``(n, 784)`` float32."""
    import scipy.io  # slow import, only when used

    raw = read_bytes(path, NAME)  # chardata.mat or chardata.mat.gz
    try:
        mat = scipy.io.loadmat(io.BytesIO(raw))
    except Exception as e:  # scipy raises many types (ValueError, MatReadError, OSError, ...)
        raise DataError(f"{NAME}: cannot read {path}: {one_line(e) or type(e).__name__}") from e
    return _images(mat, "data", path), _images(mat, "testdata", path)


@DATASETS.register(NAME)
def load_omniglot(data_dir: Path, download: bool = True, seed: int = 0) -> DataSplits:
    """Omniglot 23,000 / 1,345 / 8,070 from ``data_dir/omniglot`` or ``data_dir``."""
    path = locate_files(NAME, data_dir, {FILE: URL}, download)[FILE]
    train, test = read_chardata(path)
    return grey_splits(NAME, train, test, VALID_SIZE, seed, str(path))
