"""The SigProp nets of specs/sigprop.md §6: MLP-SP, CNN-S-SP and a width-scalable VGG8.

The first block is the signal layer g_x (the ``sigprop`` rule adds g_c beside it); BP trains the
same factories, which then are the spec's "same nets without g_c". Layer defaults follow the
official code: PyTorch's default init, LeakyReLU(0.01), instance norm in conv blocks, layer norm
in FC blocks (independent of the batch), batch norm only in the signal block (it sees h only).
"""

from __future__ import annotations

import math

from torch import nn

from bioprop.models.net import Block, Net, output_shape
from bioprop.models.registry import register_model

# VGG8 of the official code: channels per conv block, "M" = 2x2 max-pool after that block.
VGG8 = (128, 128, (256, "M"), 256, (512, "M"), (512, "M"), (512, "M"))


def _conv_block(c_in: int, c_out: int, *, signal: bool, pool: bool, dropout: float) -> Block:
    op = nn.Conv2d(c_in, c_out, 3, padding=1, bias=not signal)
    norm = nn.BatchNorm2d(c_out) if signal else nn.InstanceNorm2d(c_out, affine=True)
    act = "relu" if signal else "leaky_relu"
    return Block(op, act, norm, nn.MaxPool2d(2) if pool else None, 0.0 if signal else dropout)


def _fc_block(d_in: int, d_out: int, *, signal: bool, dropout: float, flatten: bool) -> Block:
    act = "relu" if signal else "leaky_relu"
    drop = 0.0 if signal else dropout
    return Block(nn.Linear(d_in, d_out), act, nn.LayerNorm(d_out), dropout=drop, flatten=flatten)


def _with_head(blocks: list[Block], input_shape, fc: list[int], num_classes: int, dropout: float):
    d = math.prod(output_shape(blocks, input_shape))
    for w in fc:
        blocks.append(_fc_block(d, w, signal=False, dropout=dropout, flatten=True))
        d = w
    blocks.append(Block(nn.Linear(d, num_classes), "identity", flatten=True))
    return Net(blocks, input_shape)


@register_model("sigprop_mlp")
def sigprop_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: int = 512,
    depth: int = 2,
    dropout: float = 0.0,
) -> Net:
    """MLP-SP: signal ReLU(LN(Linear in→width)), ``depth`` blocks Linear→LN→LeakyReLU, head."""
    d_in = math.prod(input_shape)
    blocks = [_fc_block(d_in, width, signal=True, dropout=0.0, flatten=True)]
    blocks += [
        _fc_block(width, width, signal=False, dropout=dropout, flatten=False) for _ in range(depth)
    ]
    blocks.append(Block(nn.Linear(width, num_classes), "identity"))
    return Net(blocks, input_shape)


@register_model("sigprop_cnn")
def sigprop_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: list[int] = (32, 64, 128),
    fc: list[int] = (256,),
    dropout: float = 0.0,
) -> Net:
    """CNN-S-SP: signal conv (BN) → pool → conv (IN) → pool → ... → FC (LN) → head."""
    if len(input_shape) != 3:
        raise ValueError(f"sigprop_cnn needs image input [C, H, W], got {input_shape}")
    blocks, c_in = [], input_shape[0]
    for i, c in enumerate(channels):
        blocks.append(_conv_block(c_in, c, signal=i == 0, pool=True, dropout=dropout))
        c_in = c
    return _with_head(blocks, input_shape, list(fc), num_classes, dropout)


@register_model("vgg")
def vgg(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: float = 1.0,
    fc: int = 1024,
    dropout: float = 0.0,
) -> Net:
    """VGG8 of SigProp's code (signal 128 → c128 → c256 → pool → c256 → c512 → pool → c512 →
    pool → c512 → pool → FC 1024 → head), every width multiplied by ``width`` (and ``fc``)."""
    if len(input_shape) != 3:
        raise ValueError(f"vgg needs image input [C, H, W], got {input_shape}")
    blocks, c_in = [], input_shape[0]
    for i, spec in enumerate(VGG8):
        c, pool = (spec[0], True) if isinstance(spec, tuple) else (spec, False)
        c = max(1, round(c * width))
        blocks.append(_conv_block(c_in, c, signal=i == 0, pool=pool, dropout=dropout))
        c_in = c
    return _with_head(blocks, input_shape, [max(1, round(fc * width))], num_classes, dropout)
