"""One more pass of JPEG compression over a loaded image set (``data.jpeg_quality``).

Why: the shared CIFAR-10 is a JPEG re-encoding of an image set that was itself JPEG, so results
on it may differ from the original release. Compressing once more and measuring the change shows
how sensitive a rule is to that kind of loss, without the original files. Off by default.

Each image goes through Pillow's encoder (baseline JFIF, 4:2:0 chroma subsampling for RGB, the
standard tables scaled to ``quality``) and back, as uint8. Grey images ([N, 1, H, W]) are encoded
as single-channel JPEG. Pixels are first rounded to the 256 levels a JPEG holds (exact for the
uint8 loaders: MNIST, CIFAR). Both splits are re-encoded, as in the shared data. About 10 s for
CIFAR-10's 60,000 images on one core; not cached.

``offset`` (``data.jpeg_offset``, 0-7 pixels) moves the 8x8 block grid: the image is padded by
reflection, ``offset`` pixels at the top and left and ``8 - offset`` at the bottom and right,
encoded, and cropped back. Why: a JPEG re-encoded at its own quality on its own grid hardly
changes (a third quality-75 pass over the shared CIFAR-10 moves pixels by 0.7 grey levels RMS),
so it says little about what the first pass cost. On a moved grid the pass is a fresh one
(6.0-6.5 levels RMS for offsets 1-4); by how much it smooths the images it is half to one times
the compression already in the shared CIFAR-10 (docs/pepita-results.md, "What one more JPEG
pass costs").
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from bioprop.errors import BiopropError


def reencode(x: Tensor, quality: int, offset: int = 0) -> Tensor:
    """Images float [N, C, H, W] in [0, 1] (C = 1 or 3) through JPEG at ``quality`` and back,
    with the block grid moved by ``offset`` pixels (see the module docstring)."""
    if not 1 <= quality <= 100:
        raise BiopropError(f"jpeg_quality must be 1..100 (0 = off), got {quality}")
    if not 0 <= offset <= 7:
        raise BiopropError(f"jpeg_offset must be 0..7 pixels, got {offset}")
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise BiopropError(
            f"jpeg_quality needs images [N, 1 or 3, H, W], got shape {tuple(x.shape)}"
        )
    h, w = x.shape[2:]
    if offset:
        if max(offset, 8 - offset) >= min(h, w):  # reflection needs pads narrower than the image
            raise BiopropError(
                f"jpeg_offset {offset} needs images wider than that pad, got {h}x{w}"
            )
        x = torch.nn.functional.pad(x, (offset, 8 - offset, offset, 8 - offset), mode="reflect")
    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.empty_like(u8)
    for i, img in enumerate(u8):
        out[i] = _roundtrip(img, quality)
    out = out[:, offset : offset + h, offset : offset + w]
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().float().div_(255)


def _roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """One HWC uint8 image through the encoder and decoder; same shape back."""
    grey = img.shape[2] == 1
    im = Image.fromarray(img[:, :, 0] if grey else img)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, subsampling=0 if grey else 2)
    buf.seek(0)
    with Image.open(buf) as back:
        arr = np.asarray(back.convert("L" if grey else "RGB"))
    return arr[:, :, None] if grey else arr
