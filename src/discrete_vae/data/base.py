"""Dataset splits, the dataset registry, the data folder, and file helpers the loaders share.

A dataset is one loader function ``(data_dir, download, seed) -> DataSplits`` registered with
``@DATASETS.register("name")``; :func:`load_dataset` looks the name up and calls it.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from ..registry import Registry
from .batches import derive_seed

SPLITS = ("train", "valid", "test")
SUBSET_SEED = 20_161_105  # the fixed permutation behind DataSplits.subset

Loader = Callable[[Path, bool, int], "DataSplits"]
DATASETS: Registry[Loader] = Registry("dataset")


@dataclass
class DataSplits:
    """The three splits of one dataset as flat ``(n, D)`` float32 tensors in ``[0, 1]``.

    - ``train``: binary, or grey levels when ``dynamic_binarization`` is True (then every
      training batch is a fresh Bernoulli draw, see :class:`~discrete_vae.data.BatchIterator`).
    - ``valid``/``test``: always binary; datasets with grey levels binarize them once, with a
      generator seeded from the loader's ``seed``, so that evaluation uses a fixed binary set.
    """

    name: str
    train: torch.Tensor = dataclasses.field(repr=False)  # (n_train, D)
    valid: torch.Tensor = dataclasses.field(repr=False)  # (n_valid, D)
    test: torch.Tensor = dataclasses.field(repr=False)  # (n_test, D)
    image_shape: tuple[int, int]
    dynamic_binarization: bool

    def __post_init__(self) -> None:
        dim = self.image_shape[0] * self.image_shape[1]
        for split in SPLITS:
            x = getattr(self, split)
            if x.dim() != 2 or x.shape[1] != dim:
                raise DataError(
                    f"{self.name}: {split} split has shape {tuple(x.shape)}, expected (n, {dim})"
                )

    def split(self, name: str) -> torch.Tensor:
        """The tensor of split ``name`` ("train", "valid" or "test")."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; choose one of: {', '.join(SPLITS)}")
        return getattr(self, name)

    def subset(self, name: str, limit: int | None = None) -> torch.Tensor:
        """Split ``name``, or ``limit`` of its examples spread over the whole split, in file order.

        The files are not shuffled (the first 1,000 images of the binarized MNIST test file average
        17 % ink, the whole file 13 %, and a GS model scores 10 nats worse on them), so a prefix is a
        biased sample. The examples are the first ``limit`` of one fixed permutation, independent of
        any seed: the same for every run and nested (``limit=1000`` is a subset of ``limit=2000``).
        """
        x = self.split(name)
        if limit is None or limit >= x.shape[0]:
            return x
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(SUBSET_SEED))
        return x[order[:limit].sort().values.to(x.device)]

    def to(self, device: torch.device | str) -> DataSplits:
        """A copy with the three tensors on ``device``."""
        return dataclasses.replace(
            self,
            train=self.train.to(device),
            valid=self.valid.to(device),
            test=self.test.to(device),
        )

    @property
    def dim(self) -> int:
        """Pixels per image, ``D``."""
        return self.train.shape[1]

    @property
    def train_mean(self) -> torch.Tensor:
        """``(D,)`` mean training image (grey levels when dynamic), for decoder-bias init."""
        return self.train.mean(dim=0)

    def __repr__(self) -> str:
        sizes = "/".join(str(getattr(self, s).shape[0]) for s in SPLITS)
        return (
            f"DataSplits(name={self.name!r}, train/valid/test={sizes}, dim={self.dim}, "
            f"image_shape={self.image_shape}, dynamic_binarization={self.dynamic_binarization})"
        )


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The data folder: ``data_dir`` if given, else ``$DVAE_DATA_DIR``, else a per-user cache.

    The cache is ``$XDG_CACHE_HOME/discrete-vae``, or ``~/.cache/discrete-vae`` without it.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get("DVAE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "discrete-vae"


def data_dir_source(data_dir: Path) -> tuple[str, str]:
    """``(where the data folder came from, how to point elsewhere)`` for a missing-files message."""
    env = os.environ.get("DVAE_DATA_DIR")
    if env and Path(env).expanduser() == data_dir:
        return ("the folder $DVAE_DATA_DIR names",
                "set DVAE_DATA_DIR, or pass --data-dir, to the folder that holds them")
    if not env and data_dir == resolve_data_dir(None):
        return ("the user cache, searched without --data-dir or $DVAE_DATA_DIR",
                "pass --data-dir DIR or set DVAE_DATA_DIR")
    return "the folder --data-dir names", "pass the --data-dir that holds them"


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, download: bool = True, seed: int = 0
) -> DataSplits:
    """Load dataset ``name`` from :func:`resolve_data_dir` ``(data_dir)``.

    Unknown names raise a one-line :class:`~discrete_vae.errors.ConfigError` listing the known
    ones; missing or corrupt files raise a one-line :class:`~discrete_vae.errors.DataError`.
    """
    loader = DATASETS.get(name)
    return loader(resolve_data_dir(data_dir), download, seed)


def one_line(text: object) -> str:
    """``text`` with its whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split())


def find_file(data_dir: Path, subdir: str, filename: str) -> Path | None:
    """``filename`` or ``filename.gz`` in ``data_dir/subdir`` or else ``data_dir``; None if absent.

    In each folder the uncompressed file is preferred, as it reads faster.
    """
    for folder in (data_dir / subdir, data_dir):
        for candidate in (folder / filename, folder / f"{filename}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_bytes(path: Path, dataset: str) -> bytes:
    """The contents of ``path``, gunzipped when it ends in ``.gz``; one-line DataError if bad."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{dataset}: cannot read {path}: {one_line(e)}") from e


def binarize_fixed(x: torch.Tensor, seed: int, stream: int) -> torch.Tensor:
    """One fixed Bernoulli draw of grey levels ``x``, from a CPU generator seeded by (seed, stream).

    Used to turn grey-level validation/test sets into fixed binary ones.
    """
    gen = torch.Generator().manual_seed(derive_seed(seed, stream))
    return torch.bernoulli(x, generator=gen)


def grey_splits(
    name: str,
    train: torch.Tensor,
    test: torch.Tensor,
    n_valid: int,
    seed: int,
    source: str,
    image_shape: tuple[int, int] = (28, 28),
) -> DataSplits:
    """Splits of a grey-level dataset: the last ``n_valid`` training images become validation.

    ``train`` stays grey (dynamic binarization); validation and test are binarized once.
    """
    if train.shape[0] <= n_valid:
        raise DataError(
            f"{name}: {source} holds {train.shape[0]} training images, "
            f"need more than the {n_valid} held out for validation"
        )
    return DataSplits(
        name=name,
        train=train[:-n_valid].contiguous(),
        valid=binarize_fixed(train[-n_valid:], seed, stream=1),
        test=binarize_fixed(test, seed, stream=2),
        image_shape=image_shape,
        dynamic_binarization=True,
    )
