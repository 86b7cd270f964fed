"""Datasets named by a spec string, one module per format.

The formats are ``digits``, ``cifar100:DIR``, ``idx:DIR`` (in memory), ``folder:DIR`` and ``mxrec:DIR`` (lazy,
decoded by DataLoader workers). Importing this package registers every format; ``load_dataset(spec, split)`` builds one.
"""

from featstore.datasets import cifar100, digits, folder, idx, mxrec  # noqa: F401  (registration side effects)
from featstore.datasets.base import (
    DATASETS,
    MAX_IMAGE_SIZE,
    SPLITS,
    Dataset,
    ImageDataset,
    LoadOptions,
    SampleViews,
    SplitNotFound,
    load_dataset,
    load_eval_dataset,
)

__all__ = [
    "DATASETS",
    "MAX_IMAGE_SIZE",
    "SPLITS",
    "Dataset",
    "ImageDataset",
    "LoadOptions",
    "SampleViews",
    "SplitNotFound",
    "load_dataset",
    "load_eval_dataset",
]
