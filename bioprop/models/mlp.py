"""Fully connected networks."""

from __future__ import annotations

import itertools
import math

from torch import nn

from bioprop.models.init import init_layer
from bioprop.models.net import Block, Net
from bioprop.models.registry import register_model


def mlp(
    widths: list[int],
    activation: str = "relu",
    bias: bool = True,
    dropout: float = 0.0,
    init: str = "he_uniform",
    input_shape: tuple[int, ...] | None = None,
) -> Net:
    """MLP with layer sizes ``widths`` = [input, hidden..., output].

    Dropout follows every hidden activation (not the input, not the logits). Inputs of any
    shape are flattened by the first block.
    """
    if len(widths) < 2 or any(int(w) < 1 for w in widths):
        raise ValueError(f"mlp needs at least [input, output] positive widths, got {widths}")
    blocks = []
    n = len(widths) - 1
    for i, (w_in, w_out) in enumerate(itertools.pairwise(widths)):
        last = i == n - 1
        op = nn.Linear(w_in, w_out, bias=bias)
        init_layer(op, init)
        act = "identity" if last else activation
        blocks.append(Block(op, act, dropout=0.0 if last else dropout, flatten=i == 0))
    return Net(blocks, input_shape or (widths[0],))


@register_model("mlp")
def mlp_model(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: list[int] = (1024,),
    activation: str = "relu",
    bias: bool = True,
    dropout: float = 0.0,
    init: str = "he_uniform",
) -> Net:
    """Fully connected net: flattened input, ``hidden`` widths, ``num_classes`` outputs."""
    widths = [math.prod(input_shape), *hidden, num_classes]
    return mlp(widths, activation, bias, dropout, init, input_shape)
