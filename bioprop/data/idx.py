"""MNIST and Fashion-MNIST from the standard gzip-compressed IDX files.

IDX layout: two zero bytes, a type byte (0x08 = uint8), the number of dimensions, then one
big-endian uint32 per dimension, then the data in C order. Images are 0x00000803 (N, rows, cols),
labels 0x00000801 (N). The whole file is gunzipped into memory and viewed with ``np.frombuffer``,
which decodes the 47 MB of MNIST training images in well under a second.

Files are looked for in ``<data_dir>/<folder>/``, then ``<data_dir>/``, then the download cache.
MNIST and Fashion-MNIST share file names, so files directly in ``<data_dir>`` count as found for
both; loading the wrong one then fails its md5 check with a message naming the file.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bioprop.data import download as dl
from bioprop.data.base import RawData, Split, register_dataset
from bioprop.data.checksums import FileSpec, combine, verify
from bioprop.errors import BiopropError

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
_UINT8 = 0x08


@dataclass(frozen=True)
class IdxSet:
    """One IDX data set: its folder name, its four files (in ``ROLES`` order) and its source."""

    folder: str
    files: tuple[FileSpec, FileSpec, FileSpec, FileSpec]
    url: str
    classes: tuple[str, ...]


_MN = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# md5 = the published .gz archives (what a download receives); content_md5 = the gunzipped IDX
# files, which also accept recompressed copies such as the shared data folder's image files.
MNIST = IdxSet(
    "mnist",
    (
        FileSpec(_MN[0], "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
        FileSpec(_MN[1], "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
        FileSpec(_MN[2], "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
        FileSpec(_MN[3], "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"),
    ),
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    tuple(str(d) for d in range(10)),
)
# Only the archive md5s of Fashion-MNIST are published, so those are what is enforced.
FASHION_MNIST = IdxSet(
    "fashion-mnist",
    (
        FileSpec(_MN[0], "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        FileSpec(_MN[1], "25c81989df183df01b3e8a0aad5dffbe"),
        FileSpec(_MN[2], "bef4ecab320f06d8554ea6380940ec79"),
        FileSpec(_MN[3], "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse a gzip-compressed uint8 IDX file with ``ndim`` dimensions; errors name the file."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as e:
        raise BiopropError(f"{path.name}: not a readable gzip file ({e}); replace it") from e
    return parse_idx(raw, ndim, path.name)


def parse_idx(raw: bytes, ndim: int, name: str) -> np.ndarray:
    """Check the IDX header (magic, dims, exact length) and view the data without copying."""
    head = 4 + 4 * ndim
    if len(raw) < head or raw[:2] != b"\0\0" or raw[2] != _UINT8 or raw[3] != ndim:
        magic = raw[:4].hex() if len(raw) >= 4 else "none"
        raise BiopropError(
            f"{name}: bad IDX magic 0x{magic}, expected 0x00000{_UINT8:x}0{ndim} "
            f"(uint8, {ndim} dims)"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    size = int(np.prod(dims))
    if len(raw) != head + size:
        raise BiopropError(
            f"{name}: truncated or padded IDX file: header says {dims} = {size} bytes of data, "
            f"found {len(raw) - head}"
        )
    return np.frombuffer(raw, np.uint8, size, head).reshape(dims)


def find_file(spec: FileSpec, folder: str, data_dir: Path | None) -> Path | None:
    """First existing candidate: data folder subfolder, data folder itself, download cache."""
    places = [data_dir / folder, data_dir] if data_dir is not None else []
    places.append(dl.download_dir(folder))
    for place in places:
        if (place / spec.name).is_file():
            return place / spec.name
    return None


def load_idx_set(ds: IdxSet, data_dir: Path | None, fetch: bool) -> RawData:
    """Locate (or download), verify and decode the four files of ``ds``."""
    paths = [_locate(spec, ds, data_dir, fetch) for spec in ds.files]
    digests = [verify(p, s, _hint(s, ds, data_dir)) for p, s in zip(paths, ds.files)]
    x_tr, y_tr, x_te, y_te = (read_idx(p, 3 if i % 2 == 0 else 1) for i, p in enumerate(paths))
    k = len(ds.classes)
    train, test = _split(x_tr, y_tr, k, paths[0].name), _split(x_te, y_te, k, paths[2].name)
    meta = {"source": "idx", "classes": list(ds.classes)}
    return RawData(train, test, k, combine(digests), meta)


def _locate(spec: FileSpec, ds: IdxSet, data_dir: Path | None, fetch: bool) -> Path:
    path = find_file(spec, ds.folder, data_dir)
    if path is not None:
        return path
    if not fetch:
        raise BiopropError(f"missing {spec.name}: {_hint(spec, ds, data_dir)}")
    url = dl.source_url(ds.folder, ds.url) + spec.name
    return dl.fetch(url, spec, dl.download_dir(ds.folder))


def _hint(spec: FileSpec, ds: IdxSet, data_dir: Path | None) -> str:
    place = f"{data_dir / ds.folder}" if data_dir is not None else f"<data-dir>/{ds.folder}"
    return f"put {spec.name} under {place}/ or pass --download"


def _split(images: np.ndarray, labels: np.ndarray, num_classes: int, name: str) -> Split:
    if len(images) != len(labels) or images.shape[1:] != (28, 28):
        raise BiopropError(f"{name}: {images.shape} images do not match {len(labels)} labels")
    if labels.size and labels.max() >= num_classes:
        raise BiopropError(f"{name}: label {labels.max()} out of range for {num_classes} classes")
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0).unsqueeze(1)
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


def _available(ds: IdxSet) -> Callable[[Path | None], bool]:
    return lambda d: all(find_file(s, ds.folder, d) is not None for s in ds.files)


@register_dataset("mnist", available=_available(MNIST))
def mnist(data_dir: Path | None = None, download: bool = False) -> RawData:
    """MNIST handwritten digits, 28x28 grey, 60000 train / 10000 test, from the IDX .gz files."""
    return load_idx_set(MNIST, data_dir, download)


@register_dataset("fashion-mnist", available=_available(FASHION_MNIST))
def fashion_mnist(data_dir: Path | None = None, download: bool = False) -> RawData:
    """Fashion-MNIST clothing images, 28x28 grey, 60000 train / 10000 test, IDX .gz files."""
    return load_idx_set(FASHION_MNIST, data_dir, download)
