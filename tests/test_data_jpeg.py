"""``data.jpeg_quality`` / ``data.jpeg_offset``: one more JPEG pass over the images at load."""

from __future__ import annotations

import math

import pytest
import torch

from bioprop.data.base import load_dataset
from bioprop.data.jpeg import reencode
from bioprop.errors import BiopropError
from bioprop.train import train
from tests.conftest import tiny_config


def photo_like(n: int = 6, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth colour gradients plus a little texture, on the 256 levels of a uint8 image."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    a, b, f, ph = torch.rand(4, n, c, 1, 1, generator=g)
    base = 0.2 + 0.3 * a * xs + 0.3 * b * ys + 0.1 * torch.sin(2 * math.pi * (3 * f * xs + ph))
    noise = 0.03 * torch.randn(n, c, size, size, generator=g)
    return ((base + noise).clamp(0, 1) * 255).round() / 255


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) * 255).pow(2).mean().sqrt())


def test_output_is_images_on_the_uint8_grid() -> None:
    x = photo_like()
    y = reencode(x, 75)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal((y * 255).round() / 255, y)


def test_lower_quality_changes_the_images_more() -> None:
    x = photo_like()
    errs = [rms(x, reencode(x, q)) for q in (95, 75, 30)]
    assert 0 < errs[0] < errs[1] < errs[2]


def test_a_repeat_on_the_same_grid_hardly_changes_a_jpeg_but_a_moved_grid_does() -> None:
    # The reason for jpeg_offset: a second pass at the same quality and grid is nearly a no-op.
    once = reencode(photo_like(), 75)
    same = rms(once, reencode(once, 75))
    moved = rms(once, reencode(once, 75, offset=4))
    first = rms(photo_like(), once)
    assert same < moved / 3
    assert moved > first / 3  # a fresh pass costs about as much as the first one


def test_offset_keeps_the_picture_in_place() -> None:
    # Grey at quality 100 is nearly lossless (colour would lose chroma detail to the 4:2:0
    # subsampling), so a crop off by even one pixel would show.
    x = photo_like(c=1)
    y = reencode(x, 100, offset=3)
    assert rms(x, y) < 1
    for dim in (2, 3):
        assert rms(x.roll(1, dims=dim), y) > 10


def test_grey_images() -> None:
    x = photo_like(c=1)
    y = reencode(x, 50, offset=2)
    assert y.shape == x.shape and 0 < rms(x, y) < 20


@pytest.mark.parametrize(
    ("x", "quality", "offset", "match"),
    [
        (photo_like(1), 0, 0, "jpeg_quality must be 1..100"),
        (photo_like(1), 101, 0, "jpeg_quality must be 1..100"),
        (photo_like(1), 75, 8, "jpeg_offset must be 0..7"),
        (photo_like(1).flatten(1), 75, 0, "needs images"),
        (photo_like(1, c=2), 75, 0, "needs images"),
        (photo_like(1, size=6), 75, 1, "wider than that pad"),
    ],
)
def test_bad_arguments_are_one_line_errors(x, quality, offset, match) -> None:
    with pytest.raises(BiopropError, match=match):
        reencode(x, quality, offset)


def test_load_dataset_reencodes_both_splits_and_records_it() -> None:
    plain = load_dataset("digits")
    q = load_dataset("digits", jpeg_quality=60, jpeg_offset=1)
    for a, b in ((plain.train, q.train), (plain.test, q.test)):
        assert torch.equal(a.y, b.y) and a.x.shape == b.x.shape
        assert 0 < rms(a.x, b.x) < 40
    assert q.meta["jpeg_quality"] == 60 and q.meta["jpeg_offset"] == 1
    with pytest.raises(BiopropError, match="jpeg_offset needs jpeg_quality"):
        load_dataset("digits", jpeg_offset=1)


def test_train_records_the_pass_and_rejects_bad_values(tmp_path) -> None:
    r = train(tiny_config(tmp_path / "ok", "data.jpeg_quality=75"))
    assert r["dataset_meta"]["jpeg_quality"] == 75
    with pytest.raises(BiopropError, match=r"data\.jpeg_quality must be"):
        train(tiny_config(tmp_path / "bad", "data.jpeg_quality=101"))
    with pytest.raises(BiopropError, match=r"data\.jpeg_offset must be"):
        train(tiny_config(tmp_path / "bad2", "data.jpeg_offset=-1"))
