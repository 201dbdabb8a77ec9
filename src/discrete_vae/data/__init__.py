"""Datasets as in-memory tensors, and exact, resumable minibatches over them.

``load_dataset(name, data_dir)`` returns :class:`DataSplits`; :class:`BatchIterator` slices
minibatches out of one split. Importing this package registers every dataset in ``DATASETS``:
``binarized_mnist``, ``mnist``, ``fashion_mnist``, ``omniglot`` and ``digits``.
"""

from . import binarized_mnist, digits, idx, omniglot  # noqa: F401  (register the datasets)
from .base import DATASETS, DataSplits, load_dataset, resolve_data_dir
from .batches import BatchIterator

__all__ = ["DATASETS", "BatchIterator", "DataSplits", "load_dataset", "resolve_data_dir"]
