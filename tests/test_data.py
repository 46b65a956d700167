"""IDX parsing, MNIST-family loading and the cached md5 checks.

Oracles: IDX files written here byte by byte with ``struct`` (independently of the parser), md5s
computed here with ``hashlib``, and the real MNIST statistics published in the shared data
README (label counts, pixel mean). Real-data tests skip unless BIOPROP_DATA is set.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bioprop.data import AVAILABLE, checksums, idx, load_dataset
from bioprop.data.checksums import FileSpec
from bioprop.errors import BiopropError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("BIOPROP_CACHE", str(cache))
    return cache


def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array, written from the format description."""
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim)
    header += b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_gz(path: Path, content: bytes, level: int = 9) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content, compresslevel=level, mtime=0))


def make_idx_set(root: Path, n_train: int = 30, n_test: int = 12) -> dict[str, bytes]:
    """Four synthetic MNIST-format files under ``root``; returns name -> uncompressed content."""
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    ]
    contents = {}
    for spec, arr in zip(idx.MNIST.files, arrays):
        contents[spec.name] = idx_bytes(arr)
        write_gz(root / spec.name, contents[spec.name])
    return contents


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def tiny_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, bytes]]:
    """A data folder with synthetic MNIST files, and MNIST's expected md5s pointed at them."""
    data = tmp_path / "data"
    contents = make_idx_set(data / "mnist")
    specs = tuple(
        FileSpec(s.name, md5((data / "mnist" / s.name).read_bytes()), md5(contents[s.name]))
        for s in idx.MNIST.files
    )
    monkeypatch.setattr(idx, "MNIST", idx.IdxSet("mnist", specs, "unused", idx.MNIST.classes))
    return data, contents


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of everything under ``root``: any write would change it."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    }


# --- IDX parser ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 4, 5), (7,), (0, 28, 28), (2, 1, 1)])
def test_idx_roundtrip(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """The parser reads back exactly what the format description says was written."""
    arr = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    write_gz(tmp_path / "a.gz", idx_bytes(arr))
    out = idx.read_idx(tmp_path / "a.gz", len(shape))
    assert out.shape == shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=4), st.integers(0, 2**32 - 1))
def test_idx_parse_any_shape(shape: list[int], seed: int) -> None:
    arr = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(idx.parse_idx(idx_bytes(arr), len(shape), "x"), arr)


def test_idx_dims_are_big_endian(tmp_path: Path) -> None:
    """A little-endian reading of the header would see 0x01000000 images, not 1."""
    arr = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    write_gz(tmp_path / "a.gz", idx_bytes(arr))
    assert idx.read_idx(tmp_path / "a.gz", 3)[0, 1, 2] == 5


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x00\x08\x01",  # too short for its own header
        b"\x00\x00\x0d\x01" + struct.pack(">I", 2) + b"ab",  # type float, not uint8
        b"\x00\x00\x08\x03" + struct.pack(">III", 1, 1, 1) + b"a",  # 3 dims where 1 expected
        b"\x01\x02\x08\x01" + struct.pack(">I", 2) + b"ab",  # first two bytes must be zero
        b"PK\x03\x04 not an idx file at all",
    ],
)
def test_idx_bad_magic(tmp_path: Path, content: bytes) -> None:
    write_gz(tmp_path / "labels.gz", content)
    with pytest.raises(BiopropError, match=r"labels\.gz: bad IDX magic"):
        idx.read_idx(tmp_path / "labels.gz", 1)


@pytest.mark.parametrize("delta", [-1, 1])
def test_idx_truncated_or_padded(tmp_path: Path, delta: int) -> None:
    good = idx_bytes(np.zeros((2, 3, 3), np.uint8))
    write_gz(tmp_path / "img.gz", good[:delta] if delta < 0 else good + b"\0")
    with pytest.raises(BiopropError, match=r"img\.gz: truncated or padded"):
        idx.read_idx(tmp_path / "img.gz", 3)


def test_idx_broken_gzip_names_file(tmp_path: Path) -> None:
    blob = gzip.compress(idx_bytes(np.zeros((5, 28, 28), np.uint8)))
    (tmp_path / "cut.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(BiopropError, match=r"cut\.gz"):
        idx.read_idx(tmp_path / "cut.gz", 3)


# --- MNIST loader on synthetic files ------------------------------------------------------------


def test_mnist_loader_values(tiny_mnist: tuple[Path, dict[str, bytes]]) -> None:
    """Pixels are the file's bytes / 255 in [N, 1, 28, 28]; the checksum combines content md5s."""
    data, contents = tiny_mnist
    raw = idx.mnist(data)
    names = [s.name for s in idx.MNIST.files]
    images = np.frombuffer(contents[names[0]][16:], np.uint8).reshape(-1, 28, 28)
    labels = np.frombuffer(contents[names[1]][8:], np.uint8)
    assert raw.train.x.shape == (30, 1, 28, 28) and raw.test.x.shape == (12, 1, 28, 28)
    assert raw.train.x.dtype == torch.float32 and raw.train.y.dtype == torch.int64
    torch.testing.assert_close(raw.train.x[:, 0], torch.tensor(images, dtype=torch.float32) / 255)
    assert raw.train.y.tolist() == labels.tolist()
    assert raw.num_classes == 10 and raw.meta["source"] == "idx"
    expected = md5("\n".join(md5(contents[n]) for n in names).encode())
    assert raw.checksum == expected


def test_mnist_files_directly_in_data_dir(tiny_mnist: tuple[Path, dict[str, bytes]]) -> None:
    data, _ = tiny_mnist
    flat = data.parent / "flat"
    (data / "mnist").rename(flat)
    assert idx.mnist(flat).train.x.shape[0] == 30
    assert AVAILABLE["mnist"](flat) and not AVAILABLE["mnist"](data)


def test_mnist_through_load_dataset(tiny_mnist: tuple[Path, dict[str, bytes]]) -> None:
    data, _ = tiny_mnist
    d = load_dataset("mnist", data, flatten=True)
    assert d.train.x.shape == (30, 784) and d.checksum


def test_recompressed_file_accepted_by_content_md5(
    tiny_mnist: tuple[Path, dict[str, bytes]],
) -> None:
    """Same content in a different gzip wrapper (as in the shared data folder) must pass."""
    data, contents = tiny_mnist
    name = idx.MNIST.files[0].name
    write_gz(data / "mnist" / name, contents[name], level=1)
    assert md5((data / "mnist" / name).read_bytes()) != idx.MNIST.files[0].md5
    assert idx.mnist(data).train.x.shape[0] == 30


def test_corrupt_file_names_file_and_expected_md5(
    tiny_mnist: tuple[Path, dict[str, bytes]],
) -> None:
    data, contents = tiny_mnist
    spec = idx.MNIST.files[2]
    bad = bytearray(contents[spec.name])
    bad[100] ^= 0xFF  # one pixel changed: header still valid, content md5 not
    write_gz(data / "mnist" / spec.name, bytes(bad))
    with pytest.raises(BiopropError) as err:
        idx.mnist(data)
    msg = str(err.value)
    assert "\n" not in msg
    assert spec.name in msg and spec.content_md5 in msg and md5(bytes(bad)) in msg


def test_missing_file_says_where_to_put_it(tiny_mnist: tuple[Path, dict[str, bytes]]) -> None:
    data, _ = tiny_mnist
    name = idx.MNIST.files[3].name
    (data / "mnist" / name).unlink()
    with pytest.raises(BiopropError) as err:
        idx.mnist(data)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"put {name} under {data / 'mnist'}/ or pass --download" in msg
    assert not AVAILABLE["mnist"](data)


def test_no_data_dir_at_all() -> None:
    with pytest.raises(BiopropError, match="under <data-dir>/mnist/ or pass --download"):
        idx.mnist(None)


def test_fashion_enforces_archive_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a published content md5 the archive md5 is checked: a recompressed file fails."""
    data = tmp_path / "data"
    contents = make_idx_set(data / "fashion-mnist")
    specs = tuple(
        FileSpec(s.name, md5((data / "fashion-mnist" / s.name).read_bytes()))
        for s in idx.FASHION_MNIST.files
    )
    ds = idx.IdxSet("fashion-mnist", specs, "unused", idx.FASHION_MNIST.classes)
    monkeypatch.setattr(idx, "FASHION_MNIST", ds)
    raw = idx.fashion_mnist(data)
    assert raw.meta["classes"][9] == "Ankle boot"
    expected = md5("\n".join(md5(contents[s.name]) for s in specs).encode())
    assert raw.checksum == expected  # fingerprint is still the content md5s
    write_gz(data / "fashion-mnist" / specs[1].name, contents[specs[1].name], level=1)
    with pytest.raises(BiopropError, match=specs[1].name):
        idx.fashion_mnist(data)


def test_label_out_of_range(tiny_mnist: tuple[Path, dict[str, bytes]], monkeypatch) -> None:
    data, _ = tiny_mnist
    spec = idx.MNIST.files[1]
    content = idx_bytes(np.full(30, 10, np.uint8))
    write_gz(data / "mnist" / spec.name, content)
    specs = list(idx.MNIST.files)
    specs[1] = FileSpec(spec.name, "x", md5(content))
    monkeypatch.setattr(idx, "MNIST", idx.IdxSet("mnist", tuple(specs), "", idx.MNIST.classes))
    with pytest.raises(BiopropError, match="label 10 out of range"):
        idx.mnist(data)


# --- checksum cache -----------------------------------------------------------------------------


def test_checksum_cache_skips_hashing(
    tiny_mnist: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second load must not hash; touching a file must make it hash that file again."""
    data, _ = tiny_mnist
    first = idx.mnist(data)
    calls: list[Path] = []
    real = checksums.md5_of

    def spy(path: Path, *, gunzip: bool = False) -> str:
        calls.append(path)
        return real(path, gunzip=gunzip)

    monkeypatch.setattr(checksums, "md5_of", spy)
    assert idx.mnist(data).checksum == first.checksum
    assert calls == []
    touched = data / "mnist" / idx.MNIST.files[1].name
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))
    idx.mnist(data)
    assert calls == [touched]


def test_checksum_cache_file_is_valid_json(
    tiny_mnist: tuple[Path, dict[str, bytes]], _private_cache: Path
) -> None:
    data, _ = tiny_mnist
    idx.mnist(data)
    entries = json.loads((_private_cache / checksums.CACHE_NAME).read_text())
    assert len(entries) == 4 and all(k.endswith("|content") for k in entries)
    assert not list(_private_cache.glob("*.tmp"))  # temp files were renamed, not left behind


def test_damaged_checksum_cache_is_rebuilt(
    tiny_mnist: tuple[Path, dict[str, bytes]], _private_cache: Path
) -> None:
    data, _ = tiny_mnist
    _private_cache.mkdir(parents=True, exist_ok=True)
    (_private_cache / checksums.CACHE_NAME).write_text("{ half a file")
    assert idx.mnist(data).train.x.shape[0] == 30
    assert len(json.loads((_private_cache / checksums.CACHE_NAME).read_text())) == 4


def test_verify_plain_file(tmp_path: Path) -> None:
    f = tmp_path / "blob"
    f.write_bytes(b"hello")
    good = FileSpec("blob", md5(b"hello"))
    assert checksums.verify(f, good, "hint") == md5(b"hello")
    with pytest.raises(
        BiopropError, match=r"blob is corrupt .*expected 0{32}\): replace it with the original blob"
    ):
        checksums.verify(f, FileSpec("blob", "0" * 32), "put it back")


def test_data_dir_is_never_written(tiny_mnist: tuple[Path, dict[str, bytes]]) -> None:
    """Loading from a read-only folder works and leaves it exactly as it was.

    chmod does not stop root, so the oracle is the (size, mtime) snapshot, not a PermissionError.
    """
    data, _ = tiny_mnist
    before = snapshot(data)
    modes = {p: p.stat().st_mode for p in [data, *data.rglob("*")]}
    for p in sorted(modes, key=lambda p: -len(p.parts)):
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        idx.mnist(data)
        idx.mnist(data)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert snapshot(data) == before


# --- real MNIST (BIOPROP_DATA) ------------------------------------------------------------------


def _real_data_dir() -> Path:
    value = os.environ.get("BIOPROP_DATA")
    if not value:
        pytest.skip("BIOPROP_DATA is not set")
    root = Path(value)
    if not AVAILABLE["mnist"](root):
        pytest.skip("the MNIST files are not in BIOPROP_DATA")
    return root


@pytest.fixture(scope="module")
def real_mnist(tmp_path_factory: pytest.TempPathFactory):
    root = _real_data_dir()
    cache = tmp_path_factory.mktemp("mnist-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIOPROP_CACHE", str(cache))
        t0 = time.perf_counter()
        raw = idx.mnist(root)
        cold = time.perf_counter() - t0
    return root, cache, raw, cold


@pytest.mark.data
def test_real_mnist_shapes_and_counts(real_mnist) -> None:
    _, _, raw, _ = real_mnist
    assert raw.train.x.shape == (60000, 1, 28, 28) and raw.test.x.shape == (10000, 1, 28, 28)
    assert raw.train.x.dtype == torch.float32 and raw.train.y.dtype == torch.int64
    assert raw.train.y.bincount().tolist() == MNIST_TRAIN_COUNTS
    assert raw.test.y.bincount().tolist() == MNIST_TEST_COUNTS
    assert raw.train.x.min() >= 0.0 and raw.train.x.max() <= 1.0


@pytest.mark.data
def test_real_mnist_pixel_statistics(real_mnist) -> None:
    """README: train mean/std 0.1307/0.3081, test 0.1325/0.3105 (pixels in [0, 1])."""
    _, _, raw, _ = real_mnist
    assert abs(raw.train.x.mean().item() - 0.1307) < 1e-3
    assert abs(raw.train.x.std().item() - 0.3081) < 1e-3
    assert abs(raw.test.x.mean().item() - 0.1325) < 1e-3


@pytest.mark.data
def test_real_mnist_second_load_is_cached_and_fast(
    real_mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache, raw, cold = real_mnist
    monkeypatch.setenv("BIOPROP_CACHE", str(cache))

    def no_hashing(path: Path, *, gunzip: bool = False) -> str:
        raise AssertionError(f"hashed {path.name} again")

    monkeypatch.setattr(checksums, "md5_of", no_hashing)
    t0 = time.perf_counter()
    again = idx.mnist(root)
    warm = time.perf_counter() - t0
    assert again.checksum == raw.checksum
    assert cold < 10 and warm < 4, (cold, warm)  # generous: the CI machine may be busy
