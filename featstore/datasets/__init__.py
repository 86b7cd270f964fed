"""Datasets named by a spec string (``digits``, ``cifar100:DIR``, ``folder:DIR``, ``idx:DIR``), one module per
format.

Importing this package registers every format; ``load_dataset(spec, split)`` builds one.
"""

from featstore.datasets import digits, idx, images  # noqa: F401  (registration side effects)
from featstore.datasets.base import DATASETS, SPLITS, ImageDataset, load_dataset

__all__ = ["DATASETS", "SPLITS", "ImageDataset", "load_dataset"]
