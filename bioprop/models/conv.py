"""Convolutional networks built from the same ``Block``s as the MLPs."""

from __future__ import annotations

import itertools
import math

from torch import nn

from bioprop.errors import BiopropError
from bioprop.models.init import init_layer
from bioprop.models.net import Block, Net, output_shape
from bioprop.models.registry import register_model

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def _pool(kind: str, size: int) -> nn.Module | None:
    if kind == "none" or size <= 1:
        return None
    if kind not in POOLS:
        raise BiopropError(f"unknown pool {kind!r}; known: none, {', '.join(POOLS)}")
    return POOLS[kind](size)


def _norm(kind: str, channels: int) -> nn.Module | None:
    # affine=False: the only trainable weights stay the conv/linear ones, which every rule
    # updates; a learnable scale/shift would need its own rule-specific update.
    if kind == "none":
        return None
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=False)
    raise BiopropError(f"unknown norm {kind!r}; known: none, batch")


def _head(
    blocks: list[Block], input_shape, fc: list[int], num_classes: int, opts: dict
) -> list[Block]:
    """Fully connected blocks after the convolutions; the first one flattens."""
    width = math.prod(output_shape(blocks, input_shape))
    widths = [width, *fc, num_classes]
    head = []
    for i, (w_in, w_out) in enumerate(itertools.pairwise(widths)):
        last = i == len(widths) - 2
        op = nn.Linear(w_in, w_out, bias=opts["bias"])
        init_layer(op, opts["init"])
        act = "identity" if last else opts["activation"]
        head.append(Block(op, act, dropout=0.0 if last else opts["dropout"], flatten=i == 0))
    return head


@register_model("convnet")
def convnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: list[int] = (32, 64),
    kernel: int = 5,
    padding: str = "same",
    pool: str = "max",
    pool_size: int = 2,
    norm: str = "none",
    fc: list[int] = (256,),
    activation: str = "relu",
    bias: bool = True,
    dropout: float = 0.0,
    init: str = "he_uniform",
) -> Net:
    """Configurable conv stack: [conv-norm-act-pool] per channel count, then an fc head."""
    if len(input_shape) != 3:
        raise ValueError(f"convnet needs image input [C, H, W], got {input_shape}")
    opts = {"bias": bias, "init": init, "activation": activation, "dropout": dropout}
    blocks, c_in = [], input_shape[0]
    for c_out in channels:
        op = nn.Conv2d(c_in, c_out, kernel, padding=padding if padding != "valid" else 0, bias=bias)
        init_layer(op, init)
        blocks.append(Block(op, activation, _norm(norm, c_out), _pool(pool, pool_size)))
        c_in = c_out
    return Net(blocks + _head(blocks, input_shape, list(fc), num_classes, opts), input_shape)


@register_model("lenet5")
def lenet5(
    input_shape: tuple[int, ...],
    num_classes: int,
    activation: str = "relu",
    pool: str = "max",
    bias: bool = True,
    init: str = "xavier_uniform",
) -> Net:
    """LeNet-5 style: conv6@5x5-pool-conv16@5x5-pool-fc120-fc84-out (28x28 inputs padded by 2)."""
    if len(input_shape) != 3:
        raise ValueError(f"lenet5 needs image input [C, H, W], got {input_shape}")
    # MNIST's 28x28 is padded to LeNet's original 32x32 in the first convolution.
    pad = 2 if input_shape[1] == 28 else 0
    specs = [(input_shape[0], 6, pad), (6, 16, 0)]
    blocks = []
    for c_in, c_out, p in specs:
        op = nn.Conv2d(c_in, c_out, 5, padding=p, bias=bias)
        init_layer(op, init)
        blocks.append(Block(op, activation, pool=_pool(pool, 2)))
    opts = {"bias": bias, "init": init, "activation": activation, "dropout": 0.0}
    return Net(blocks + _head(blocks, input_shape, [120, 84], num_classes, opts), input_shape)
