"""Binarized MNIST with the fixed binarization of Larochelle & Murray (2011).

The discrete-VAE literature (DVAE, DVAE++, DVAE#, REBAR, RELAX, ARM, IWAE) reports on this set:
50,000 train / 10,000 validation / 10,000 test images of 28x28 pixels, each 0 or 1. Files are
``binarized_mnist_{train,valid,test}.amat`` (one image per line, 784 space-separated 0/1
values), optionally gzip-compressed. A file holding another number of images (one cut short at a
line boundary parses cleanly) is one :class:`DataError` line naming it: results on part of a split
are not comparable with the literature's.

A missing file is downloaded from the canonical address, else from the copy in the ARM code's
repository (mingzhang-yin/ARM-gradient) pinned at one commit: MATLAB 5 files (not v7.3) that keep
the ``.amat`` names, each with one variable ``X`` of n x 784 (class double stored as uint8), one
image a row, rows and pixels in the canonical order. Either is re-encoded as canonical text and
must match its pinned sha256 before it is saved; the MATLAB file must also match its own.

Reference: H. Larochelle, I. Murray, "The Neural Autoregressive Distribution Estimator",
AISTATS 2011.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import DATASETS, SPLITS, DataSplits, one_line, read_bytes
from .download import Remote, Source, locate_files

NAME = "binarized_mnist"
DIM = 784
CANONICAL_URL = (
    "https://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{}.amat"
)
MIRROR_COMMIT = "bac893cfcec486bbd00b755b12cf8402053b0e84"  # mingzhang-yin/ARM-gradient
MIRROR_URL = (
    "https://raw.githubusercontent.com/mingzhang-yin/ARM-gradient/"
    f"{MIRROR_COMMIT}/binarized_mnist_{{}}.amat"  # MATLAB files despite the name
)
MIRROR_SHA256 = {  # the MATLAB files as served
    "train": "79a0312c7389d855cfc97e3812de3998417c5829d8a51543b56a90a91252ae7e",
    "valid": "7436afc856959075c7787025bb8a4ba2b520b9230ee39667c66aa7dd2819dd68",
    "test": "5bc30222e1e7896cbccd1e1db6b28540cc1230f4d2d5473841a5f6cc54be8d38",
}
AMAT_SHA256 = {  # the canonical text, uncompressed: "d d ... d\n" per image, in file order
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
AMAT_GZ_SHA256 = {  # a known gzip copy of that text (gzip bytes vary with the compressor)
    "train": "092365d813e5c21dc079caf1c06c0f651976f886cf649818f5272d338cc5dac2",
    "valid": "a340636f6c4a8df5715467d5a5c4c16a727a9fb7405c2d2f707f3f94403b2f15",
    "test": "7f2dd6edd98e934efff89342d83482a591cfd6f4fbe3445112325b957d519cef",
}
SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}  # images per split, as in the pinned files
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


def encode_amat(bits: np.ndarray) -> bytes:
    """The canonical ``.amat`` text of ``(n, 784)`` 0/1 images: ``"d d ... d\\n"`` per image."""
    text = np.full((bits.shape[0], 2 * DIM), _SPACE, dtype=np.uint8)  # (n, 1568)
    text[:, 0::2] = bits.astype(np.uint8) + _ZERO
    text[:, -1] = _NEWLINE
    return text.tobytes()


def canonical_amat(raw: bytes, source: str = "<bytes>") -> bytes:
    """``.amat`` text in any whitespace layout, re-encoded canonically (same values and order)."""
    return encode_amat(parse_amat(raw, source))


def mat_to_amat(raw: bytes, source: str = "<bytes>") -> bytes:
    """The canonical ``.amat`` text of a MATLAB file holding the images as ``X`` (n x 784, 0/1)."""
    import scipy.io  # slow import, only when used

    try:
        mat = scipy.io.loadmat(io.BytesIO(raw))
    except NotImplementedError as e:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise DataError(f"{NAME}: {source} is a MATLAB v7.3 (HDF5) file; scipy reads v4-v7") from e
    except Exception as e:  # scipy raises many types (ValueError, MatReadError, OSError, ...)
        raise DataError(f"{NAME}: cannot read {source}: {one_line(e) or type(e).__name__}") from e
    x = np.asarray(mat.get("X", np.zeros((0, 0))))
    if x.ndim != 2 or x.shape[1] != DIM or x.shape[0] == 0:
        raise DataError(f"{NAME}: {source} variable 'X' has shape {x.shape}, expected (n, {DIM})")
    if not np.isin(x, (0, 1)).all():
        raise DataError(f"{NAME}: {source} variable 'X' holds values other than 0 and 1")
    return encode_amat(x)


def remote(split: str) -> Remote:
    """Where ``split``'s file comes from: the canonical address, then the pinned MATLAB copy."""
    return Remote(
        filename=f"{NAME}_{split}.amat",
        sources=(
            Source(CANONICAL_URL.format(split), convert=canonical_amat),
            Source(MIRROR_URL.format(split), MIRROR_SHA256[split], convert=mat_to_amat),
        ),
        sha256=(AMAT_SHA256[split],),
    )


def read_amat(path: Path, split: str | None = None) -> torch.Tensor:
    """The ``(n, 784)`` float32 0/1 images of an ``.amat`` or ``.amat.gz`` file; with ``split``, exactly
    ``SIZES[split]`` of them, else one :class:`DataError` line naming the file."""
    bits = parse_amat(read_bytes(path, NAME), str(path))
    if split is not None and bits.shape[0] != SIZES[split]:
        state = "is cut short" if bits.shape[0] < SIZES[split] else "holds more"
        raise DataError(f"{NAME}: {path} holds {bits.shape[0]:,} images; the {split} split has "
                        f"{SIZES[split]:,} (the pinned file, sha256 {AMAT_SHA256[split][:12]}...), so the "
                        f"file {state}: replace it, or delete it to download it again")
    return torch.from_numpy(bits.astype(np.float32))


@DATASETS.register(NAME)
def load_binarized_mnist(data_dir: Path, download: bool = True, seed: int = 0) -> DataSplits:
    """Binarized MNIST from ``data_dir/binarized_mnist`` or ``data_dir``; ``seed`` is unused.

    Missing files are downloaded (see the module) when ``download`` is True.
    """
    files: dict[str, str | Remote] = {f"{NAME}_{split}.amat": remote(split) for split in SPLITS}
    paths = locate_files(NAME, data_dir, files, download)
    train, valid, test = (read_amat(paths[f"{NAME}_{split}.amat"], split) for split in SPLITS)
    return DataSplits(
        name=NAME,
        train=train,
        valid=valid,
        test=test,
        image_shape=(28, 28),
        dynamic_binarization=False,
    )
