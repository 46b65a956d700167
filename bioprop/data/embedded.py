"""Small data sets that ship inside a dependency: no download, no data folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from bioprop.data.base import RawData, Split, register_dataset


@register_dataset("digits")
def digits(data_dir: Path | None = None, download: bool = False) -> RawData:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes); fixed 1437/360 split."""
    from sklearn.datasets import load_digits  # imported lazily: sklearn takes ~1 s to import

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixels are 0..16
    y = torch.tensor(bunch.target, dtype=torch.int64)
    # A fixed seeded split (the data set has none) so every run and test sees the same test set.
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = perm[:360], perm[360:]
    checksum = hashlib.md5(bunch.images.tobytes()).hexdigest()
    return RawData(Split(x[train], y[train]), Split(x[test], y[test]), 10, checksum)
