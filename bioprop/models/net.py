"""The layered network every rule works on: an ordered list of blocks with one weight layer each.

A block is ``h = post(op(a))`` where ``op`` is the block's only weight layer (``nn.Linear`` or
``nn.Conv2d``) and ``post`` applies, in this order, normalisation, activation, pooling and dropout.
Rules that do not use autograd need, per block, the input ``a`` to ``op``, the pre-activation
``z = op(a)`` and the activation's derivative at ``z``; ``Net.trace`` records them in one place so
that no rule re-implements the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bioprop.models.activations import Activation, get_activation


class Block(nn.Module):
    """One weight layer and what follows it.

    flatten: flatten the input first (the first fully connected block after convolutions).
    act: an ``Activation`` (knows its derivative); the output block uses ``identity``.
    """

    def __init__(
        self,
        op: nn.Linear | nn.Conv2d,
        act: str | Activation = "identity",
        norm: nn.Module | None = None,
        pool: nn.Module | None = None,
        dropout: float = 0.0,
        flatten: bool = False,
    ) -> None:
        super().__init__()
        self.op = op
        self.act = get_activation(act) if isinstance(act, str) else act
        self.norm = norm
        self.pool = pool
        self.drop = nn.Dropout(dropout) if dropout > 0 else None
        self.flatten = flatten

    def prepare(self, x: Tensor) -> Tensor:
        """The input as ``op`` sees it."""
        return x.flatten(1) if self.flatten else x

    def post(self, z: Tensor) -> Tensor:
        """Everything after the weight layer: norm, activation, pool, dropout."""
        if self.norm is not None:
            z = self.norm(z)
        h = self.act(z)
        if self.pool is not None:
            h = self.pool(h)
        if self.drop is not None:
            h = self.drop(h)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.post(self.op(self.prepare(x)))


@dataclass
class LayerTrace:
    """What one block saw in a forward pass: input ``a``, pre-activation ``z``, output ``h``."""

    a: Tensor
    z: Tensor
    h: Tensor


class Net(nn.Module):
    """A sequence of ``Block``s; the last block's output are the logits."""

    def __init__(self, blocks: list[Block], input_shape: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.input_shape = tuple(input_shape)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def trace(self, x: Tensor) -> list[LayerTrace]:
        """Forward pass that keeps every block's (a, z, h); the logits are ``trace[-1].h``."""
        out = []
        for block in self.blocks:
            a = block.prepare(x)
            z = block.op(a)
            x = block.post(z)
            out.append(LayerTrace(a, z, x))
        return out

    @property
    def weight_layers(self) -> list[nn.Linear | nn.Conv2d]:
        """The weight layers in forward order (what feedback rules attach feedback to)."""
        return [b.op for b in self.blocks]

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}"


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def output_shape(blocks: list[Block], input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape after ``blocks`` for one sample of ``input_shape`` (to size the next layer)."""
    x = torch.zeros(1, *input_shape)
    for b in blocks:
        x = b(x)
    return tuple(x.shape[1:])
