"""Weight initialisation schemes, chosen by name."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from bioprop.errors import BiopropError

INITS: dict[str, Callable[[Tensor], object]] = {
    # He (Kaiming) schemes assume ReLU; PEPITA's reference code uses he_uniform.
    "he_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "he_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    # torch's own default for Linear/Conv2d (kaiming_uniform with a=sqrt(5)).
    "default": lambda w: nn.init.kaiming_uniform_(w, a=math.sqrt(5)),
}


def init_layer(layer: nn.Linear | nn.Conv2d, scheme: str) -> None:
    """Initialise the weight by ``scheme``; biases start at zero except for ``default``."""
    if scheme not in INITS:
        raise BiopropError(f"unknown init {scheme!r}; known: {', '.join(sorted(INITS))}")
    if scheme == "default":
        layer.reset_parameters()
        return
    INITS[scheme](layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
