"""CIFAR-10 / CIFAR-100 pickles and the CIFAR-10 JPEG tarball.

Oracles: pickles written here in the original release's format (protocol 2 dicts with bytes
keys, ``b'data'`` uint8 [N, 3072] as R, G, B planes of 32x32 row-major), with chosen pixels at
known [channel, row, col] positions; JPEG tarballs of solid-colour images, whose decoded colour is
known up to JPEG rounding; the README's statistics for the real tarball.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bioprop.data import AVAILABLE, cifar
from bioprop.data.checksums import FileSpec
from bioprop.errors import BiopropError

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
CIFAR10_NAMES += [b"dog", b"frog", b"horse", b"ship", b"truck"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("BIOPROP_CACHE", str(cache))
    return cache


def md5_file(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def flat_index(c: int, r: int, k: int) -> int:
    """Position of pixel (channel c, row r, col k) in a CIFAR row: planes of 1024, rows of 32."""
    return c * 1024 + r * 32 + k


def batch(n: int, labels: list[int], key: bytes, seed: int) -> dict:
    data = np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)
    return {
        b"batch_label": f"batch {seed}".encode(),
        key: labels,
        b"data": data,
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }


def write_cifar10(root: Path, n: int = 4) -> dict[str, dict]:
    """``root/cifar-10-batches-py`` with five train batches and a test batch of ``n`` images."""
    folder = root / "cifar-10-batches-py"
    batches = {}
    for i, spec in enumerate((*cifar.CIFAR10.train, *cifar.CIFAR10.test)):
        labels = [(i + j) % 10 for j in range(n)]
        batches[spec.name] = batch(n, labels, b"labels", seed=i)
        dump(folder / spec.name, batches[spec.name])
    meta = {b"num_cases_per_batch": n, b"label_names": CIFAR10_NAMES, b"num_vis": 3072}
    dump(folder / "batches.meta", meta)
    return batches


def pin_md5s(monkeypatch: pytest.MonkeyPatch, attr: str, folder: Path) -> None:
    """Point the expected md5s of ``cifar.<attr>`` at the synthetic files in ``folder``."""
    ps = getattr(cifar, attr)

    def re(spec: FileSpec) -> FileSpec:
        return FileSpec(spec.name, md5_file(folder / spec.name))

    pinned = cifar.PickleSet(
        ps.dataset,
        ps.folder,
        tuple(map(re, ps.train)),
        tuple(map(re, ps.test)),
        re(ps.meta),
        ps.archive,
    )
    monkeypatch.setattr(cifar, attr, pinned)


@pytest.fixture
def tiny_cifar10(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    data = tmp_path / "data"
    batches = write_cifar10(data)
    pin_md5s(monkeypatch, "CIFAR10", data / "cifar-10-batches-py")
    return data, batches


# --- CIFAR-10 pickles ---------------------------------------------------------------------------


def test_cifar10_pixel_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value written at flat index c*1024 + r*32 + k must come out at x[i, c, r, k]."""
    data = tmp_path / "data"
    batches = write_cifar10(data)
    b1 = batches["data_batch_1"]
    b1[b"data"][:] = 0
    b1[b"data"][2, flat_index(0, 0, 31)] = 11  # red, top right
    b1[b"data"][2, flat_index(1, 5, 7)] = 22  # green, row 5, col 7
    b1[b"data"][2, flat_index(2, 31, 0)] = 255  # blue, bottom left
    dump(data / "cifar-10-batches-py" / "data_batch_1", b1)
    pin_md5s(monkeypatch, "CIFAR10", data / "cifar-10-batches-py")
    x = cifar.cifar10(data).train.x
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32
    img = x[2] * 255
    assert img[0, 0, 31] == 11 and img[1, 5, 7] == 22 and img[2, 31, 0] == 255
    assert img.sum() == 11 + 22 + 255  # nothing else lit: no transposed copy of a pixel


def test_cifar10_pickles_order_labels_and_meta(tiny_cifar10: tuple[Path, dict]) -> None:
    data, batches = tiny_cifar10
    raw = cifar.cifar10(data)
    names = [s.name for s in cifar.CIFAR10.train]
    expected_y = [label for n in names for label in batches[n][b"labels"]]
    assert raw.train.y.tolist() == expected_y and raw.train.y.dtype == torch.int64
    assert raw.test.y.tolist() == batches["test_batch"][b"labels"]
    last = batches["data_batch_5"][b"data"][-1].astype(np.float32) / 255
    torch.testing.assert_close(raw.train.x[-1].reshape(-1), torch.from_numpy(last))
    assert raw.num_classes == 10 and raw.meta["source"] == "pickle"
    assert raw.meta["classes"][1] == "automobile"
    assert AVAILABLE["cifar10"](data) and not AVAILABLE["cifar10"](data / "nothing")


def test_cifar10_real_md5s_reject_other_files(tmp_path: Path) -> None:
    """With the published md5s in force, a synthetic data_batch_1 must be refused by name."""
    write_cifar10(tmp_path)
    with pytest.raises(
        BiopropError, match=r"data_batch_1 .*expected c99cafc152244af753f735de768cd75f"
    ):
        cifar.cifar10(tmp_path)


def test_cifar10_missing_batch(tiny_cifar10: tuple[Path, dict]) -> None:
    data, _ = tiny_cifar10
    (data / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(
        BiopropError,
        match=r"missing data_batch_4: put the original file from cifar-10-python\.tar\.gz into",
    ):
        cifar.cifar10(data)


def test_pickle_cannot_run_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pickle whose md5 is trusted must still not execute code: only arrays are built."""
    data = tmp_path / "data"
    write_cifar10(data)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    dump(data / "cifar-10-batches-py" / "data_batch_2", {b"data": Evil()})
    pin_md5s(monkeypatch, "CIFAR10", data / "cifar-10-batches-py")
    with pytest.raises(BiopropError, match=r"data_batch_2: not a CIFAR pickle .*mkdir"):
        cifar.cifar10(data)
    assert not marker.exists()


def test_wrong_data_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    batches = write_cifar10(data)
    b = batches["test_batch"]
    b[b"data"] = b[b"data"][:, :3000]
    dump(data / "cifar-10-batches-py" / "test_batch", b)
    pin_md5s(monkeypatch, "CIFAR10", data / "cifar-10-batches-py")
    with pytest.raises(BiopropError, match="test_batch"):
        cifar.cifar10(data)


def test_nothing_found_lists_both_sources(tmp_path: Path) -> None:
    with pytest.raises(BiopropError) as err:
        cifar.cifar10(tmp_path)
    msg = str(err.value)
    assert "cifar-10-batches-py/" in msg and "cifar10-jpeg/cifar10-jpeg.tar.gz" in msg
    assert "--download" in msg and "\n" not in msg


# --- CIFAR-100 pickles --------------------------------------------------------------------------


@pytest.fixture
def tiny_cifar100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    data = tmp_path / "data"
    folder = data / "cifar-100-python"
    parts = {}
    for i, name in enumerate(("train", "test")):
        n = 6 if name == "train" else 3
        d = batch(n, [(7 * j + i) % 100 for j in range(n)], b"fine_labels", seed=10 + i)
        d[b"coarse_labels"] = [(3 * j + i) % 20 for j in range(n)]
        d[b"data"][0, flat_index(2, 3, 4)] = 201
        parts[name] = d
        dump(folder / name, d)
    fine = [f"fine{i:02d}".encode() for i in range(100)]
    coarse = [f"coarse{i:02d}".encode() for i in range(20)]
    dump(folder / "meta", {b"fine_label_names": fine, b"coarse_label_names": coarse})
    pin_md5s(monkeypatch, "CIFAR100", folder)
    return data, parts


def test_cifar100_fine(tiny_cifar100: tuple[Path, dict]) -> None:
    data, parts = tiny_cifar100
    raw = cifar.cifar100(data)
    assert raw.num_classes == 100 and raw.train.x.shape == (6, 3, 32, 32)
    assert raw.train.y.tolist() == parts["train"][b"fine_labels"]
    assert raw.test.y.tolist() == parts["test"][b"fine_labels"]
    assert raw.train.x[0, 2, 3, 4] * 255 == 201 and raw.test.x[0, 2, 3, 4] * 255 == 201
    assert raw.meta["classes"][42] == "fine42"


def test_cifar100_coarse(tiny_cifar100: tuple[Path, dict]) -> None:
    data, parts = tiny_cifar100
    raw = cifar.cifar100_coarse(data)
    assert raw.num_classes == 20 and raw.meta["classes"][19] == "coarse19"
    assert raw.train.y.tolist() == parts["train"][b"coarse_labels"]
    assert raw.checksum == cifar.cifar100(data).checksum  # same files, other labels
    assert AVAILABLE["cifar100-coarse"](data)


def test_cifar100_missing() -> None:
    with pytest.raises(BiopropError, match=r"cifar-100-python/ .*--download"):
        cifar.cifar100(None)


# --- CIFAR-10 JPEG tarball ----------------------------------------------------------------------

COLOURS = {"cat": (200, 40, 40), "airplane": (30, 220, 60), "dog": (20, 60, 230)}


def jpeg(colour: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_jpeg_tar(path: Path, order: int = 1, size: int = 32) -> None:
    """Classes added in non-alphabetical order; ``order`` reverses the member order."""
    members = [
        (f"{split}/{cls}/{i:04d}.jpg", jpeg(col, size))
        for split, n in (("train", 3), ("test", 2))
        for cls, col in COLOURS.items()
        for i in range(n)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members[::order]:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


@pytest.fixture
def tiny_jpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    tar = data / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    write_jpeg_tar(tar)
    monkeypatch.setattr(cifar, "JPEG_TAR", FileSpec(tar.name, md5_file(tar)))
    return data


def test_jpeg_labels_from_sorted_folders(tiny_jpeg: Path) -> None:
    raw = cifar.cifar10(tiny_jpeg)
    assert raw.meta["source"] == "jpeg" and raw.meta["classes"] == ["airplane", "cat", "dog"]
    assert raw.train.x.shape == (9, 3, 32, 32) and raw.test.x.shape == (6, 3, 32, 32)
    assert raw.train.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert raw.test.y.tolist() == [0, 0, 1, 1, 2, 2]
    for x, y in ((raw.train.x, raw.train.y), (raw.test.x, raw.test.y)):
        for img, label in zip(x, y):
            colour = torch.tensor(COLOURS[raw.meta["classes"][label]], dtype=torch.float32)
            mean = img.mean((1, 2)) * 255  # channel-first: [3, 32, 32]
            assert torch.allclose(mean, colour, atol=4), (mean, colour)
    assert raw.checksum == cifar.JPEG_TAR.md5 and raw.num_classes == 3


def test_jpeg_order_does_not_depend_on_tar_order(tmp_path: Path, monkeypatch) -> None:
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    write_jpeg_tar(a)
    write_jpeg_tar(b, order=-1)
    da, db = cifar.decode_jpeg_tar(a), cifar.decode_jpeg_tar(b)
    for key in ("train_x", "train_y", "test_x", "test_y", "classes"):
        np.testing.assert_array_equal(da[key], db[key])


def test_jpeg_decoded_cache_is_reused(
    tiny_jpeg: Path, monkeypatch: pytest.MonkeyPatch, _private_cache: Path
) -> None:
    first = cifar.cifar10(tiny_jpeg)
    cached = list((_private_cache / "decoded").glob(f"cifar10-jpeg-{cifar.JPEG_TAR.md5}*.npz"))
    assert len(cached) == 1

    def no_decode(path: Path) -> dict:
        raise AssertionError("decoded the tarball again")

    monkeypatch.setattr(cifar, "decode_jpeg_tar", no_decode)
    second = cifar.cifar10(tiny_jpeg)
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)
    assert second.meta == first.meta


def test_jpeg_damaged_cache_is_redone(tiny_jpeg: Path, _private_cache: Path) -> None:
    first = cifar.cifar10(tiny_jpeg)
    (cached,) = (_private_cache / "decoded").glob("*.npz")
    cached.write_bytes(cached.read_bytes()[:100])
    assert torch.equal(cifar.cifar10(tiny_jpeg).train.x, first.train.x)


def test_jpeg_wrong_size_names_member(tmp_path: Path, monkeypatch) -> None:
    tar = tmp_path / "data" / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
    write_jpeg_tar(tar, size=31)
    monkeypatch.setattr(cifar, "JPEG_TAR", FileSpec(tar.name, md5_file(tar)))
    with pytest.raises(BiopropError, match=r"bad image train/airplane/0000\.jpg"):
        cifar.cifar10(tmp_path / "data")


def test_jpeg_md5_enforced(tmp_path: Path) -> None:
    write_jpeg_tar(tmp_path / "cifar10-jpeg" / "cifar10-jpeg.tar.gz")
    with pytest.raises(
        BiopropError, match=r"cifar10-jpeg\.tar\.gz .*1b8efc6b8e65c52ec0ceeeba50aeeaa5"
    ):
        cifar.cifar10(tmp_path)


def test_pickles_preferred_over_jpeg(tiny_cifar10: tuple[Path, dict], monkeypatch) -> None:
    data, _ = tiny_cifar10
    write_jpeg_tar(data / "cifar10-jpeg" / "cifar10-jpeg.tar.gz")
    assert cifar.cifar10(data).meta["source"] == "pickle"


def test_cifar10_pickles_only_never_reads_jpeg(tiny_jpeg: Path) -> None:
    """cifar10_pickles must refuse a folder with only the JPEG tarball, naming only pickles."""
    assert cifar.cifar10(tiny_jpeg).meta["source"] == "jpeg"  # the tarball is there and valid
    assert not AVAILABLE["cifar10_pickles"](tiny_jpeg)
    with pytest.raises(BiopropError) as err:
        cifar.cifar10_pickles(tiny_jpeg)
    msg = str(err.value)
    assert "cifar-10-batches-py/" in msg and "cifar10-jpeg" not in msg and "\n" not in msg


def test_cifar10_pickles_reads_the_release(tiny_cifar10: tuple[Path, dict]) -> None:
    data, batches = tiny_cifar10
    write_jpeg_tar(data / "cifar10-jpeg" / "cifar10-jpeg.tar.gz")
    raw = cifar.cifar10_pickles(data)
    assert raw.meta["source"] == "pickle" and AVAILABLE["cifar10_pickles"](data)
    assert raw.test.y.tolist() == batches["test_batch"][b"labels"]
    torch.testing.assert_close(raw.train.x, cifar.cifar10(data).train.x)


def test_data_dir_untouched(tiny_jpeg: Path, tiny_cifar100: tuple[Path, dict]) -> None:
    """JPEG and pickle loads write only to the cache, even when the data folder is writable."""
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tiny_jpeg.rglob("*")}
    cifar.cifar10(tiny_jpeg)
    cifar.cifar100(tiny_jpeg)
    after = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tiny_jpeg.rglob("*")}
    assert after == before


# --- the real JPEG tarball (BIOPROP_DATA) -------------------------------------------------------


def _real_tar() -> Path:
    value = os.environ.get("BIOPROP_DATA")
    tar = cifar.find_jpeg_tar(Path(value)) if value else None
    if tar is None:
        pytest.skip("BIOPROP_DATA has no cifar10-jpeg/cifar10-jpeg.tar.gz")
    return tar


@pytest.mark.data
def test_real_jpeg_tarball_checksum() -> None:
    """Cheap: the README's md5 (the full decode is opt-in, below)."""
    tar = _real_tar()
    assert cifar.verify(tar, cifar.JPEG_TAR, "") == "1b8efc6b8e65c52ec0ceeeba50aeeaa5"


@pytest.mark.data
@pytest.mark.slow
def test_real_jpeg_full_decode() -> None:
    """Decodes all 60,000 JPEGs (~10 s); set BIOPROP_TEST_FULL_CIFAR=1 to run it."""
    if os.environ.get("BIOPROP_TEST_FULL_CIFAR") != "1":
        pytest.skip("set BIOPROP_TEST_FULL_CIFAR=1 to decode the real tarball")
    data = _real_tar().parent.parent
    t0 = time.perf_counter()
    raw = cifar.cifar10(data)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = cifar.cifar10(data)
    warm = time.perf_counter() - t0
    assert raw.train.x.shape == (50000, 3, 32, 32) and raw.test.x.shape == (10000, 3, 32, 32)
    assert raw.train.y.bincount().tolist() == [5000] * 10
    assert raw.test.y.bincount().tolist() == [1000] * 10
    mean = raw.train.x.mean((0, 2, 3))
    torch.testing.assert_close(mean, torch.tensor([0.4913, 0.4821, 0.4465]), atol=2e-3, rtol=0)
    assert torch.equal(again.train.x, raw.train.x)
    assert warm < cold / 3, (cold, warm)
