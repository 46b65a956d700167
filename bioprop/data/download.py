"""``--download``: fetch missing data files from their public sources into the user cache.

Files land in ``<cache>/downloads/<dataset>/``, never in the data folder, which is treated as
read-only. A download streams into ``<name>.part``; an interrupted one is resumed with an HTTP
Range request where the server honours it (else restarted), transient failures are retried with
exponential backoff, and only a file whose md5 matches is renamed into place, so a file with its
final name is always complete and verified.

``BIOPROP_MIRROR`` replaces every canonical source: ``<mirror>/<dataset>/<file name>``.
"""

from __future__ import annotations

import http.client
import os
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from bioprop.data.base import cache_dir
from bioprop.data.checksums import FileSpec, md5_of
from bioprop.errors import BiopropError

MIRROR_ENV = "BIOPROP_MIRROR"
RETRIES = 4  # attempts after the first
BACKOFF_S = 1.0  # first wait; doubles after each failure
TIMEOUT_S = 60.0
_CHUNK = 1 << 16

# Errors worth another attempt: dropped connections, timeouts, server-side (5xx) failures.
_TRANSIENT = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)


class _Retry(Exception):
    """A transient failure inside one attempt."""


def download_dir(dataset: str) -> Path:
    """The cache folder that holds ``dataset``'s downloads (created by ``fetch`` when needed)."""
    return cache_dir() / "downloads" / dataset


def source_url(dataset: str, canonical_base: str, base_url: str | None = None) -> str:
    """Base URL to fetch from: ``base_url`` beats ``$BIOPROP_MIRROR/<dataset>/`` beats canonical."""
    if base_url:
        return base_url.rstrip("/") + "/"
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        return f"{mirror.rstrip('/')}/{dataset}/"
    return canonical_base


def fetch(
    url: str,
    spec: FileSpec,
    dest_dir: Path,
    *,
    retries: int = RETRIES,
    backoff_s: float = BACKOFF_S,
    timeout_s: float = TIMEOUT_S,
) -> Path:
    """Download ``url`` to ``dest_dir/spec.name`` unless it is already there; return the path.

    The file there is trusted because only a verified download is ever renamed to that name.
    """
    dest = dest_dir / spec.name
    if dest.is_file():
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _attempt(url, part, timeout_s)
            break
        except _Retry as e:
            if attempt == retries:
                raise BiopropError(f"downloading {url} failed {retries + 1} times: {e}") from e
            time.sleep(backoff_s * 2**attempt)
    actual = md5_of(part)
    if actual != spec.md5:
        part.unlink()  # a wrong file must not be resumed next time either
        raise BiopropError(
            f"downloaded {spec.name} from {url} has md5 {actual}, expected {spec.md5}; "
            "deleted it (try again, or check the mirror)"
        )
    os.replace(part, dest)
    return dest


def _attempt(url: str, part: Path, timeout_s: float) -> None:
    """One HTTP request, appending to ``part`` if the server resumes, else rewriting it."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            resumed = have > 0 and resp.status == 206 and _starts_at(resp, have)
            if have and resp.status == 206 and not resumed:
                part.unlink()  # a range we did not ask for: start over on the next attempt
                raise _Retry(f"server sent an unexpected range ({resp.headers['Content-Range']})")
            total = _expected_total(resp, have if resumed else 0)
            with open(part, "ab" if resumed else "wb") as f:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
    except urllib.error.HTTPError as e:
        if e.code == 416:  # the .part is not a prefix we can extend: start over
            part.unlink(missing_ok=True)
            raise _Retry("server refused the resume range; restarting") from e
        if e.code >= 500 or e.code == 429:
            raise _Retry(f"HTTP {e.code}") from e
        raise BiopropError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from e
    except _TRANSIENT as e:
        raise _Retry(str(e) or type(e).__name__) from e
    if total is not None and part.stat().st_size != total:
        raise _Retry(f"connection closed after {part.stat().st_size} of {total} bytes")


def _starts_at(resp: http.client.HTTPResponse, offset: int) -> bool:
    return (resp.headers.get("Content-Range") or "").startswith(f"bytes {offset}-")


def _expected_total(resp: http.client.HTTPResponse, offset: int) -> int | None:
    length = resp.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def extract_tar(archive: Path, dest_dir: Path, member_root: str) -> Path:
    """Extract ``archive`` (whose files all sit under ``member_root/``) into ``dest_dir``.

    Members with absolute paths, '..' components or links are rejected before anything is
    written. Extraction goes to a temp folder first, then one rename, so ``dest_dir/member_root``
    either is complete or does not exist.
    """
    target = dest_dir / member_root
    if target.is_dir():
        return target
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for m in members:
            _check_member(m, archive, member_root)
        with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".extract-") as tmp:
            tar.extractall(tmp, members=members, filter="data")
            os.replace(Path(tmp) / member_root, target)
    return target


def _check_member(m: tarfile.TarInfo, archive: Path, root: str) -> None:
    p = PurePosixPath(m.name)
    bad = p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir())
    if bad or (p.parts and p.parts[0] != root):
        raise BiopropError(f"{archive.name}: refusing unsafe or unexpected tar member {m.name!r}")
