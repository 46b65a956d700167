"""``--download`` against a local HTTP server on 127.0.0.1 (never the internet).

The server is ``http.server`` in a thread with a handler that can honour or ignore Range
requests, fail the first requests with 500, or drop the connection half way; it logs every
request so the tests can check what the client asked for, not just the final file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from bioprop.data import cifar, idx
from bioprop.data import download as dl
from bioprop.data.checksums import FileSpec
from bioprop.errors import BiopropError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("BIOPROP_CACHE", str(cache))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 must be reached directly
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    return cache


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class Behaviour:
    """What the test server does; ``log`` records (path, Range header, status, bytes sent)."""

    files: dict[str, bytes] = field(default_factory=dict)
    ranges: bool = True
    fail_first: int = 0  # this many requests get a 500
    drop_first: int = 0  # this many requests send half the body, then close
    log: list[tuple[str, str | None, int, int]] = field(default_factory=list)


class Handler(BaseHTTPRequestHandler):
    behaviour: Behaviour

    def do_GET(self) -> None:
        b = self.behaviour
        n = len(b.log)  # requests are sequential: each is logged before its response is sent
        rng = self.headers.get("Range")
        body = b.files.get(self.path)
        if n < b.fail_first:
            return self._send(500, b"", rng)
        if body is None:
            return self._send(404, b"", rng)
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng and b.ranges else 0
        if start >= len(body) > 0:
            return self._send(416, b"", rng)
        drop = n < b.fail_first + b.drop_first
        status = 206 if start and b.ranges else 200
        self._send(status, body[start:], rng, total=len(body), start=start, drop=drop)

    def _send(self, status, body, rng, total=0, start=0, drop=False) -> None:
        sent = body[: len(body) // 2] if drop else body
        self.behaviour.log.append((self.path, rng, status, len(sent)))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        self.end_headers()
        self.wfile.write(sent)
        if drop:
            self.close_connection = True

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour()
    handler = type("H", (Handler,), {"behaviour": behaviour})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", behaviour
    httpd.shutdown()
    httpd.server_close()


BLOB = bytes(range(256)) * 400  # 100 kB, enough for several read chunks


def fetch(url: str, spec: FileSpec, dest: Path, **kw) -> Path:
    return dl.fetch(url, spec, dest, backoff_s=0.0, timeout_s=10, **kw)


def test_fetch_verifies_and_renames(server, tmp_path: Path) -> None:
    base, b = server
    b.files["/f.bin"] = BLOB
    out = fetch(base + "/f.bin", FileSpec("f.bin", md5(BLOB)), tmp_path)
    assert out == tmp_path / "f.bin" and out.read_bytes() == BLOB
    assert not (tmp_path / "f.bin.part").exists()
    fetch(base + "/f.bin", FileSpec("f.bin", md5(BLOB)), tmp_path)
    assert len(b.log) == 1  # already there: no second request


def test_md5_mismatch_leaves_nothing(server, tmp_path: Path) -> None:
    base, b = server
    b.files["/f.bin"] = BLOB
    with pytest.raises(BiopropError, match=f"f.bin .*md5 {md5(BLOB)}, expected {'0' * 32}"):
        fetch(base + "/f.bin", FileSpec("f.bin", "0" * 32), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_resume_partial_file_with_range(server, tmp_path: Path) -> None:
    base, b = server
    b.files["/f.bin"] = BLOB
    (tmp_path / "f.bin.part").write_bytes(BLOB[:30000])
    out = fetch(base + "/f.bin", FileSpec("f.bin", md5(BLOB)), tmp_path)
    assert out.read_bytes() == BLOB
    assert b.log == [("/f.bin", "bytes=30000-", 206, len(BLOB) - 30000)]


def test_restart_when_server_ignores_range(server, tmp_path: Path) -> None:
    base, b = server
    b.files["/f.bin"] = BLOB
    b.ranges = False
    (tmp_path / "f.bin.part").write_bytes(BLOB[:30000])
    out = fetch(base + "/f.bin", FileSpec("f.bin", md5(BLOB)), tmp_path)
    assert out.read_bytes() == BLOB  # not the first 30000 bytes twice
    assert b.log == [("/f.bin", "bytes=30000-", 200, len(BLOB))]


def test_part_longer_than_file_restarts(server, tmp_path: Path) -> None:
    base, b = server
    b.files["/f.bin"] = BLOB
    (tmp_path / "f.bin.part").write_bytes(BLOB + b"junk")
    assert fetch(base + "/f.bin", FileSpec("f.bin", md5(BLOB)), tmp_path).read_bytes() == BLOB
    assert [entry[2] for entry in b.log] == [416, 200]


def test_retry_after_server_error(server, tmp_path: Path) -> None:
    base, b = server
    b.files["/f.bin"] = BLOB
    b.fail_first = 1
    assert fetch(base + "/f.bin", FileSpec("f.bin", md5(BLOB)), tmp_path).read_bytes() == BLOB
    assert [entry[2] for entry in b.log] == [500, 200]


def test_dropped_connection_is_resumed(server, tmp_path: Path) -> None:
    base, b = server
    b.files["/f.bin"] = BLOB
    b.drop_first = 1
    assert fetch(base + "/f.bin", FileSpec("f.bin", md5(BLOB)), tmp_path).read_bytes() == BLOB
    half = len(BLOB) // 2
    assert b.log == [("/f.bin", None, 200, half), ("/f.bin", f"bytes={half}-", 206, half)]


def test_gives_up_after_retries(server, tmp_path: Path) -> None:
    base, b = server
    b.files["/f.bin"] = BLOB
    b.fail_first = 100
    with pytest.raises(BiopropError, match="failed 3 times: HTTP 500"):
        fetch(base + "/f.bin", FileSpec("f.bin", md5(BLOB)), tmp_path, retries=2)
    assert len(b.log) == 3


def test_not_found_is_not_retried(server, tmp_path: Path) -> None:
    base, b = server
    with pytest.raises(BiopropError, match="HTTP 404"):
        fetch(base + "/nope", FileSpec("nope", "0" * 32), tmp_path)
    assert len(b.log) == 1


def test_source_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    canonical = "https://example.org/mnist/"
    assert dl.source_url("mnist", canonical) == canonical
    monkeypatch.setenv(dl.MIRROR_ENV, "http://mirror.local/data/")
    assert dl.source_url("mnist", canonical) == "http://mirror.local/data/mnist/"
    assert dl.source_url("mnist", canonical, "http://arg.local/x") == "http://arg.local/x/"


# --- whole data sets through BIOPROP_MIRROR -----------------------------------------------------


def idx_gz(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(head + arr.tobytes(), mtime=0)


def test_mnist_download(server, tmp_path: Path, monkeypatch, _private_cache: Path) -> None:
    """Missing files come from the mirror into the cache; the (empty) data folder stays empty."""
    base, b = server
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 5, dtype=np.uint8),
        rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 2, dtype=np.uint8),
    ]
    specs = []
    for spec, arr in zip(idx.MNIST.files, arrays):
        blob = idx_gz(arr)
        b.files[f"/mnist/{spec.name}"] = blob
        specs.append(FileSpec(spec.name, md5(blob), md5(gzip.decompress(blob))))
    monkeypatch.setattr(idx, "MNIST", idx.IdxSet("mnist", tuple(specs), "", idx.MNIST.classes))
    monkeypatch.setenv(dl.MIRROR_ENV, base)
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(BiopropError, match="or pass --download"):
        idx.mnist(data, False)
    raw = idx.mnist(data, True)
    assert raw.train.y.tolist() == arrays[1].tolist() and raw.test.x.shape == (2, 1, 28, 28)
    assert sorted(p.name for p in (_private_cache / "downloads" / "mnist").iterdir()) == sorted(
        s.name for s in specs
    )
    assert list(data.iterdir()) == []
    idx.mnist(data, False)  # now found in the cache without downloading
    assert len(b.log) == 4


def cifar10_tarball(n: int = 2) -> tuple[bytes, dict[str, bytes]]:
    """cifar-10-python.tar.gz in the release layout, with tiny batches; also the member bytes."""
    members: dict[str, bytes] = {}
    for i, spec in enumerate((*cifar.CIFAR10.train, *cifar.CIFAR10.test)):
        d = {
            b"batch_label": b"b",
            b"labels": [i] * n,
            b"data": np.full((n, 3072), i, dtype=np.uint8),
            b"filenames": [b"f"] * n,
        }
        members[spec.name] = pickle.dumps(d, protocol=2)
    names = [f"c{i}".encode() for i in range(10)]
    members["batches.meta"] = pickle.dumps({b"label_names": names}, protocol=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue(), members


def test_cifar10_download_and_extract(server, monkeypatch, _private_cache: Path) -> None:
    base, b = server
    tarball, members = cifar10_tarball()
    b.files["/cifar10/cifar-10-python.tar.gz"] = tarball
    ps = cifar.CIFAR10
    pinned = cifar.PickleSet(
        ps.dataset,
        ps.folder,
        tuple(FileSpec(s.name, md5(members[s.name])) for s in ps.train),
        tuple(FileSpec(s.name, md5(members[s.name])) for s in ps.test),
        FileSpec("batches.meta", md5(members["batches.meta"])),
        FileSpec(ps.archive.name, md5(tarball)),
    )
    monkeypatch.setattr(cifar, "CIFAR10", pinned)
    monkeypatch.setenv(dl.MIRROR_ENV, base)
    raw = cifar.cifar10(None, True)
    assert raw.train.y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4] and raw.test.y.tolist() == [5, 5]
    assert float(raw.train.x[4].max()) == pytest.approx(2 / 255)
    folder = _private_cache / "downloads" / "cifar10"
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-batches-py"]  # archive removed
    assert cifar.cifar10(None, False).checksum == raw.checksum  # found in the cache
    assert len(b.log) == 1


def write_tar(path: Path, members: list[tarfile.TarInfo]) -> None:
    with tarfile.open(path, "w") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize(
    "bad",
    [
        _file("../escape"),
        _file("/abs/path"),
        _file("root/../../escape"),
        _link("root/link", "/etc/passwd"),
        _file("other/file"),
    ],
)
def test_extract_rejects_unsafe_members(tmp_path: Path, bad: tarfile.TarInfo) -> None:
    archive = tmp_path / "a.tar"
    write_tar(archive, [_file("root/ok"), bad])
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(BiopropError, match="unsafe or unexpected tar member"):
        dl.extract_tar(archive, dest, "root")
    assert list(dest.iterdir()) == [] and not (tmp_path / "escape").exists()


def test_extract_ok(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    write_tar(archive, [_file("top/a"), _file("./top/sub/b")])
    out = dl.extract_tar(archive, tmp_path, "top")
    assert (out / "a").read_bytes() == b"x" and (out / "sub" / "b").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
