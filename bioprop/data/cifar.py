"""CIFAR-10 and CIFAR-100 from the original Python pickles, or CIFAR-10 from a JPEG tarball.

Pickle layout (both releases): each file is a pickled dict with bytes keys; ``b'data'`` is uint8
[N, 3072], each row the 1024 red, then 1024 green, then 1024 blue pixels of a 32x32 image in
row-major order, so ``reshape(N, 3, 32, 32)`` gives [N, C, H, W] directly. The pickles are read
with an unpickler that only builds numpy arrays: a data file must not be able to run code.

CIFAR-10 sources, first found wins: ``cifar-10-batches-py/`` in the data folder or the download
cache, then ``cifar10-jpeg/cifar10-jpeg.tar.gz`` in the data folder; ``--download`` fetches the
pickle release only when neither is present. The JPEG tarball is lossy (re-encoded at quality
75): ``RawData.meta["source"]`` records which one was used. Its 60,000 JPEGs take several
seconds to decode, so the decoded uint8 arrays are cached under ``<cache>/decoded/`` keyed by
the tarball's md5.

Checksums: the pickle files' md5s are the published ones (as listed by torchvision) and are
enforced; the JPEG tarball's md5 is the one in the shared data README.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import PIL
import torch
from PIL import Image

from bioprop.data import download as dl
from bioprop.data.base import RawData, Split, cache_dir, register_dataset
from bioprop.data.checksums import FileSpec, atomic_writer, combine, verify
from bioprop.errors import BiopropError

KRIZ_URL = "https://www.cs.toronto.edu/~kriz/"
JPEG_TAR = FileSpec("cifar10-jpeg.tar.gz", "1b8efc6b8e65c52ec0ceeeba50aeeaa5")
JPEG_FOLDER = "cifar10-jpeg"
_DECODED_VERSION = 1  # bump when the decoded cache layout changes
_DECODED_KEYS = {"train_x", "train_y", "test_x", "test_y", "classes", "decoder"}


@dataclass(frozen=True)
class PickleSet:
    """One pickle release: download folder name, extracted folder, files, archive."""

    dataset: str
    folder: str
    train: tuple[FileSpec, ...]
    test: tuple[FileSpec, ...]
    meta: FileSpec
    archive: FileSpec


CIFAR10 = PickleSet(
    "cifar10",
    "cifar-10-batches-py",
    (
        FileSpec("data_batch_1", "c99cafc152244af753f735de768cd75f"),
        FileSpec("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
        FileSpec("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
        FileSpec("data_batch_4", "634d18415352ddfa80567beed471001a"),
        FileSpec("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
    ),
    (FileSpec("test_batch", "40351d587109b95175f43aff81a1287e"),),
    FileSpec("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
    FileSpec("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
)
CIFAR100 = PickleSet(
    "cifar100",
    "cifar-100-python",
    (FileSpec("train", "16019d7e3df5f24257cddd939b257f8d"),),
    (FileSpec("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
    FileSpec("meta", "7973b15100ade9c7d40fb424638fde48"),
    FileSpec("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
)

# The only globals a CIFAR pickle needs: numpy array reconstruction (numpy 1 wrote
# ``numpy.core``, numpy 2 writes ``numpy._core``) and, for Python 3 writers, bytes via _codecs.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(*_ALLOWED[module, name])


def read_pickle(path: Path) -> dict:
    """Load one CIFAR pickle (bytes keys, as Python 2 wrote them); errors name the file."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any unpickling failure means a damaged or foreign file
        raise BiopropError(f"{path.name}: not a CIFAR pickle ({e}); replace it") from e
    if not isinstance(obj, dict):
        raise BiopropError(f"{path.name}: expected a pickled dict, found {type(obj).__name__}")
    return obj


def batch_arrays(d: dict, label_key: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 3, 32, 32], labels int64 [N]) from one batch dict."""
    data, labels = d.get(b"data"), d.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise BiopropError(f"{name}: b'data' is not a uint8 [N, 3072] array")
    if data.shape[1] != 3072 or labels is None or len(labels) != len(data):
        raise BiopropError(f"{name}: {data.shape} data with {label_key!r} of wrong length")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def find_pickle_dir(ps: PickleSet, data_dir: Path | None) -> Path | None:
    """``<data_dir>/<folder>`` or the download cache's extracted copy, whichever exists first."""
    places = [data_dir] if data_dir is not None else []
    places.append(dl.download_dir(ps.dataset))
    return next((p / ps.folder for p in places if (p / ps.folder).is_dir()), None)


def fetch_pickles(ps: PickleSet) -> Path:
    """Download and safely extract the release into the cache; the archive is then deleted."""
    dest = dl.download_dir(ps.dataset)
    if (dest / ps.folder).is_dir():
        return dest / ps.folder
    url = dl.source_url(ps.dataset, KRIZ_URL) + ps.archive.name
    archive = dl.fetch(url, ps.archive, dest)
    folder = dl.extract_tar(archive, dest, ps.folder)
    archive.unlink()
    return folder


def load_pickles(ps: PickleSet, folder: Path, label_key: bytes, names_key: bytes) -> RawData:
    """Verify every file of ``ps`` in ``folder`` and stack the batches."""
    specs = (*ps.train, *ps.test, ps.meta)
    hint = f"put the original file from {ps.archive.name} into {folder}/"
    digests = [verify(folder / s.name, s, hint) for s in specs]
    names = [n.decode() for n in read_pickle(folder / ps.meta.name).get(names_key, [])]
    if not names:
        raise BiopropError(f"{ps.meta.name}: no {names_key!r} list of class names")
    splits = [_stack(folder, part, label_key, len(names)) for part in (ps.train, ps.test)]
    meta = {"source": "pickle", "classes": names}
    return RawData(splits[0], splits[1], len(names), combine(digests), meta)


def _stack(folder: Path, specs: tuple[FileSpec, ...], label_key: bytes, k: int) -> Split:
    parts = [batch_arrays(read_pickle(folder / s.name), label_key, s.name) for s in specs]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if y.size and (y.min() < 0 or y.max() >= k):
        raise BiopropError(f"{specs[0].name}: labels outside 0..{k - 1}")
    return _to_split(x, y)


def _to_split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(torch.from_numpy(x).float().div_(255.0), torch.from_numpy(y.astype(np.int64)))


def find_jpeg_tar(data_dir: Path | None) -> Path | None:
    """``<data_dir>/cifar10-jpeg/cifar10-jpeg.tar.gz`` (or the tarball directly in data_dir)."""
    if data_dir is None:
        return None
    places = (data_dir / JPEG_FOLDER / JPEG_TAR.name, data_dir / JPEG_TAR.name)
    return next((p for p in places if p.is_file()), None)


def load_jpeg_tar(path: Path, spec: FileSpec) -> RawData:
    """CIFAR-10 from the JPEG tarball, decoded once and then read from the cache."""
    md5 = verify(path, spec, f"put it at {path}")
    cached = cache_dir() / "decoded" / f"cifar10-jpeg-{md5}-v{_DECODED_VERSION}.npz"
    arrays = _read_decoded(cached)
    if arrays is None:
        arrays = decode_jpeg_tar(path)
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(cached) as f:
            np.savez(f, **arrays)
    train = _to_split(arrays["train_x"], arrays["train_y"])
    test = _to_split(arrays["test_x"], arrays["test_y"])
    classes = [str(c) for c in arrays["classes"]]
    meta = {"source": "jpeg", "classes": classes, "decoder": str(arrays["decoder"])}
    return RawData(train, test, len(classes), md5, meta)


def _read_decoded(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return arrays if arrays.keys() >= _DECODED_KEYS else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent or damaged
        return None


def decode_jpeg_tar(path: Path) -> dict[str, np.ndarray]:
    """Decode ``{train,test}/<class>/<file>.jpg`` members in sorted name order.

    Labels are the indices of the class folders in sorted order, which for CIFAR-10 is the
    standard label order. The tar is streamed member by member; nothing is extracted to disk.
    """
    members = sorted(_jpeg_members(path))
    classes = sorted({c for s, c, _, _ in members if s == "train"})
    if classes != sorted({c for s, c, _, _ in members if s == "test"}):
        raise BiopropError(f"{path.name}: train/ and test/ have different class folders")
    out: dict[str, np.ndarray] = {"classes": np.array(classes), "decoder": np.array(_decoder())}
    for split in ("train", "test"):
        chosen = [m for m in members if m[0] == split]
        out[f"{split}_x"] = _decode_all(chosen, path.name)
        out[f"{split}_y"] = np.array([classes.index(m[1]) for m in chosen], dtype=np.int64)
    return out


def _jpeg_members(path: Path) -> list[tuple[str, str, str, bytes]]:
    """(split, class, file name, bytes) for every .jpg under train/ or test/."""
    found = []
    try:
        with tarfile.open(path, "r|*") as tar:
            for m in tar:
                parts = PurePosixPath(m.name).parts
                if not m.isfile() or not m.name.lower().endswith(".jpg") or len(parts) < 3:
                    continue
                split, cls, name = parts[-3:]
                if split in ("train", "test"):
                    found.append((split, cls, name, tar.extractfile(m).read()))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BiopropError(f"{path.name}: cannot read the tar archive ({e}); replace it") from e
    return found


def _decode_all(members: list[tuple[str, str, str, bytes]], archive: str) -> np.ndarray:
    """uint8 [N, 3, 32, 32] from JPEG bytes, converting to RGB as the README's statistics do."""
    x = np.empty((len(members), 32, 32, 3), dtype=np.uint8)
    for i, (split, cls, name, blob) in enumerate(members):
        try:
            with Image.open(io.BytesIO(blob)) as im:
                x[i] = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:  # undecodable, or not 32x32
            raise BiopropError(f"{archive}: bad image {split}/{cls}/{name} ({e})") from e
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _decoder() -> str:
    # JPEG decoders differ in the last bits of some pixels, so the result records which one ran.
    return f"Pillow {PIL.__version__}"


def load_cifar10(data_dir: Path | None, fetch: bool, jpeg: bool = True) -> RawData:
    """Pickles if present, else (``jpeg``) the JPEG tarball, else a download of the pickles."""
    folder = find_pickle_dir(CIFAR10, data_dir)
    if folder is not None:
        return load_pickles(CIFAR10, folder, b"labels", b"label_names")
    tar = find_jpeg_tar(data_dir) if jpeg else None
    if tar is not None:
        return load_jpeg_tar(tar, JPEG_TAR)
    if fetch:
        return load_pickles(CIFAR10, fetch_pickles(CIFAR10), b"labels", b"label_names")
    place = data_dir if data_dir is not None else "<data-dir>"
    sources = (
        f"{CIFAR10.folder}/ or {JPEG_FOLDER}/{JPEG_TAR.name}" if jpeg else f"{CIFAR10.folder}/"
    )
    raise BiopropError(f"no CIFAR-10 files found: put {sources} under {place}/ or pass --download")


def load_cifar100(data_dir: Path | None, fetch: bool, coarse: bool) -> RawData:
    """CIFAR-100 pickles with fine (100) or coarse (20 superclass) labels."""
    folder = find_pickle_dir(CIFAR100, data_dir)
    if folder is None and fetch:
        folder = fetch_pickles(CIFAR100)
    if folder is None:
        place = data_dir if data_dir is not None else "<data-dir>"
        raise BiopropError(
            f"no CIFAR-100 files found: put {CIFAR100.folder}/ (from {CIFAR100.archive.name}) "
            f"under {place}/ or pass --download"
        )
    kind = b"coarse" if coarse else b"fine"
    return load_pickles(CIFAR100, folder, kind + b"_labels", kind + b"_label_names")


def _has_cifar10_pickles(data_dir: Path | None) -> bool:
    return find_pickle_dir(CIFAR10, data_dir) is not None


def _has_cifar10(data_dir: Path | None) -> bool:
    return _has_cifar10_pickles(data_dir) or find_jpeg_tar(data_dir) is not None


def _has_cifar100(data_dir: Path | None) -> bool:
    return find_pickle_dir(CIFAR100, data_dir) is not None


@register_dataset("cifar10", available=_has_cifar10)
def cifar10(data_dir: Path | None = None, download: bool = False) -> RawData:
    """CIFAR-10, 32x32 RGB, 10 classes, 50000 train / 10000 test (pickles or JPEG tarball)."""
    return load_cifar10(data_dir, download)


@register_dataset("cifar10_pickles", available=_has_cifar10_pickles)
def cifar10_pickles(data_dir: Path | None = None, download: bool = False) -> RawData:
    """CIFAR-10 from the original Python pickles only, never the lossy JPEG tarball: for runs
    that must be compared with results on the original release (e.g. the PEPITA notebook's)."""
    return load_cifar10(data_dir, download, jpeg=False)


@register_dataset("cifar100", available=_has_cifar100)
def cifar100(data_dir: Path | None = None, download: bool = False) -> RawData:
    """CIFAR-100, 32x32 RGB, 100 fine classes, 50000 train / 10000 test (Python pickles)."""
    return load_cifar100(data_dir, download, coarse=False)


@register_dataset("cifar100-coarse", available=_has_cifar100)
def cifar100_coarse(data_dir: Path | None = None, download: bool = False) -> RawData:
    """CIFAR-100 with its 20 coarse superclass labels instead of the 100 fine ones."""
    return load_cifar100(data_dir, download, coarse=True)
