"""md5 verification of data files, computed once per file version and cached.

Hashing the 47 MB of MNIST training images on every run would cost more than decoding them, so a
digest is stored in ``<cache>/checksums.json`` under the key (absolute path, size, mtime_ns): a
file that is replaced or touched gets a new key and is hashed again.

For gzip files of the MNIST family the check is on the *uncompressed content*: the same IDX
content can sit in differently compressed ``.gz`` archives (the shared MNIST image files were
recompressed), and only the content matters to the loader.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from bioprop.data.base import cache_dir
from bioprop.errors import BiopropError

CACHE_NAME = "checksums.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileSpec:
    """A data file and what its bytes must hash to.

    md5: md5 of the file as published (what a download is checked against).
    content_md5: md5 of the gunzipped content, checked instead of ``md5`` when known, because it
        survives recompression.
    """

    name: str
    md5: str
    content_md5: str | None = None


def md5_of(path: Path, *, gunzip: bool = False) -> str:
    """md5 of the file's bytes, or of its gunzipped content; streamed in 1 MiB chunks."""
    digest = hashlib.md5()
    opener = gzip.open if gunzip else open
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise BiopropError(f"{path.name}: cannot read {path} ({e}); replace the file") from e
    return digest.hexdigest()


def cached_md5(path: Path, *, gunzip: bool = False) -> str:
    """``md5_of`` through the on-disk cache keyed by (absolute path, size, mtime_ns)."""
    key = _key(path, gunzip)
    cache = _read_cache()
    if key in cache:
        return cache[key]
    value = md5_of(path, gunzip=gunzip)
    cache = _read_cache()  # re-read: another process may have added entries meanwhile
    cache[key] = value
    _write_cache(cache)
    return value


def verify(path: Path, spec: FileSpec, hint: str) -> str:
    """Check ``path`` against ``spec`` and return its content md5 (the file md5 if not gzip).

    hint: where a missing file should go, e.g. "put X under <dir>/ or pass --download". A corrupt
        file's message names its path instead: replacing it there is the fix.
    """
    if not path.is_file():
        raise BiopropError(f"missing {spec.name}: {hint}")
    gz = path.name.endswith(".gz") and not path.name.endswith(".tar.gz")
    if spec.content_md5 is not None:
        actual, expected, what = cached_md5(path, gunzip=True), spec.content_md5, "content md5"
    else:
        actual, expected, what = cached_md5(path), spec.md5, "md5"
    if actual != expected:
        raise BiopropError(
            f"{path} is corrupt or not the right file ({what} {actual}, expected {expected}): "
            f"replace it with the original {spec.name}"
        )
    return cached_md5(path, gunzip=True) if gz else actual


def combine(digests: list[str]) -> str:
    """One md5 standing for several files (order matters), for ``RawData.checksum``."""
    return hashlib.md5("\n".join(digests).encode()).hexdigest()


def _key(path: Path, gunzip: bool) -> str:
    st = path.stat()
    kind = "content" if gunzip else "file"
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{kind}"


def _read_cache() -> dict[str, str]:
    path = cache_dir() / CACHE_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # absent or damaged: start afresh, it is only a cache
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache: dict[str, str]) -> None:
    atomic_write_bytes(cache_dir() / CACHE_NAME, json.dumps(cache, indent=0).encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``atomic_writer``."""
    with atomic_writer(path) as f:
        f.write(data)


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A file object for a temp file beside ``path``, renamed over it only on success.

    ``os.replace`` is atomic within one file system, so a reader (or a second process) sees the
    old file or the complete new one, never half a file, even if this process is killed.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
