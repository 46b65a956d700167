"""Data sets as tensors in memory, a registry of loaders, and index batching.

Every data set is loaded once into float32 / int64 tensors; training batches are slices of a
permutation (no per-sample DataLoader: for MNIST-size data its overhead dominates an MLP step).

Data location: ``--data-dir`` beats the ``BIOPROP_DATA`` environment variable. The data folder is
only ever read; decoded caches and downloads go to the user cache (``BIOPROP_CACHE`` or
``~/.cache/bioprop``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from bioprop.data.jpeg import reencode
from bioprop.errors import BiopropError
from bioprop.registry import Registry


@dataclass
class Split:
    """One split: ``x`` float32 [N, ...] in [0, 1] (before normalisation), ``y`` int64 [N]."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Data:
    """A loaded data set: train/test (and optional validation) splits plus what models need."""

    name: str
    train: Split
    test: Split
    num_classes: int
    val: Split | None = None
    checksum: str = ""  # md5 fingerprint of the source files, recorded in result.json
    meta: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


@dataclass
class RawData:
    """What a registered loader returns: unnormalised splits in [0, 1], images as [N, C, H, W]."""

    train: Split
    test: Split
    num_classes: int
    checksum: str = ""
    meta: dict = field(default_factory=dict)


# A loader takes (data_dir or None, download flag) and returns RawData.
Loader = Callable[[Path | None, bool], RawData]
DATASETS: Registry[Loader] = Registry("dataset")
# name -> callable(data_dir) -> bool: are the files there? (for `bioprop datasets`)
AVAILABLE: dict[str, Callable[[Path | None], bool]] = {}


def register_dataset(name: str, available: Callable[[Path | None], bool] | None = None):
    """Register a loader; ``available(data_dir)`` says whether its files can be found."""

    def deco(fn: Loader) -> Loader:
        DATASETS.register(name)(fn)
        AVAILABLE[name] = available or (lambda _d: True)
        return fn

    return deco


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """``--data-dir`` if given, else ``$BIOPROP_DATA``, else None (only embedded data then)."""
    value = data_dir or os.environ.get("BIOPROP_DATA")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise BiopropError(f"data directory {path} does not exist (set --data-dir or BIOPROP_DATA)")
    return path


def cache_dir() -> Path:
    """Per-user cache for downloads, checksum results and decoded tensors (never the data dir)."""
    root = os.environ.get("BIOPROP_CACHE") or Path.home() / ".cache" / "bioprop"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    download: bool = False,
    flatten: bool = False,
    normalize: bool = False,
    val_size: int | float = 0,
    seed: int = 0,
    swap_splits: bool = False,
    jpeg_quality: int = 0,
    jpeg_offset: int = 0,
) -> Data:
    """Load ``name`` and apply the options every data set shares.

    normalize: subtract the per-channel train mean and divide by the std (else pixels stay in
        [0, 1]). Statistics come from the training part only (after the validation split).
    val_size: a count, or a fraction of the training set, held out with a seeded permutation.
    swap_splits: train on the official test split and test on the official training split
        (done first, so validation and normalisation statistics come from the new training part).
    jpeg_quality: 1..100 puts every image (both splits) through one more JPEG encode/decode at
        that quality before anything else (``bioprop.data.jpeg``); 0 = off.
    jpeg_offset: move that pass's 8x8 block grid by 0-7 pixels (a fresh pass, not a repeat).
    """
    raw = DATASETS.get(name)(resolve_data_dir(data_dir), download)
    if jpeg_quality:
        raw = _jpeg(raw, jpeg_quality, jpeg_offset)
    elif jpeg_offset:
        raise BiopropError("jpeg_offset needs jpeg_quality (1..100)")
    train, test = (raw.test, raw.train) if swap_splits else (raw.train, raw.test)
    train, val = _split_val(train, val_size, seed)
    if normalize:
        mean, std = _channel_stats(train.x)
        train, test = _norm(train, mean, std), _norm(test, mean, std)
        val = _norm(val, mean, std) if val is not None else None
    if flatten:
        train, test = _flat(train), _flat(test)
        val = _flat(val) if val is not None else None
    return Data(name, train, test, raw.num_classes, val, raw.checksum, raw.meta)


def _jpeg(raw: RawData, quality: int, offset: int) -> RawData:
    train, test = (Split(reencode(s.x, quality, offset), s.y) for s in (raw.train, raw.test))
    meta = {**raw.meta, "jpeg_quality": quality, "jpeg_offset": offset}
    return RawData(train, test, raw.num_classes, raw.checksum, meta)


def _split_val(train: Split, val_size: int | float, seed: int) -> tuple[Split, Split | None]:
    n = len(train)
    k = round(val_size * n) if isinstance(val_size, float) and val_size < 1 else int(val_size)
    if k <= 0:
        return train, None
    if k >= n:
        raise BiopropError(f"val_size={val_size} leaves no training data (train has {n} samples)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    tr, va = perm[k:], perm[:k]
    return Split(train.x[tr], train.y[tr]), Split(train.x[va], train.y[va])


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    # Images [N, C, H, W]: one statistic per channel; vectors [N, D]: one per feature would
    # blow up constant pixels, so vectors get one global mean/std.
    if x.dim() == 4:
        dims = (0, 2, 3)
        mean, std = x.mean(dims, keepdim=True)[0], x.std(dims, keepdim=True)[0]
    else:
        mean, std = x.mean().reshape(1), x.std().reshape(1)
    return mean, std.clamp_min(1e-8)


def _norm(s: Split, mean: Tensor, std: Tensor) -> Split:
    return Split((s.x - mean) / std, s.y)


def _flat(s: Split) -> Split:
    return Split(s.x.reshape(len(s), -1), s.y)


def batches(
    split: Split, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (x, y) slices; with ``shuffle`` a fresh permutation from ``generator`` per call.

    The permutation is drawn on the CPU from the given generator, so a checkpointed generator
    state reproduces the exact batch order on resume, whatever the device.
    """
    n = len(split)
    if shuffle:
        idx = torch.randperm(n, generator=generator).to(split.x.device)
        for i in range(0, n, batch_size):
            j = idx[i : i + batch_size]
            yield split.x[j], split.y[j]
    else:
        for i in range(0, n, batch_size):
            yield split.x[i : i + batch_size], split.y[i : i + batch_size]
