"""Data sets: registry, loaders (imported here so that they register), batching."""

from bioprop.data import cifar, embedded, idx  # noqa: F401  (importing registers the loaders)
from bioprop.data.base import (
    AVAILABLE,
    DATASETS,
    Data,
    RawData,
    Split,
    batches,
    cache_dir,
    load_dataset,
    register_dataset,
    resolve_data_dir,
)

__all__ = [
    "AVAILABLE",
    "DATASETS",
    "Data",
    "RawData",
    "Split",
    "batches",
    "cache_dir",
    "load_dataset",
    "register_dataset",
    "resolve_data_dir",
]
