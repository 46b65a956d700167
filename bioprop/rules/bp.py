"""Backpropagation: the reference rule, and the only one that runs autograd."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop.rules.base import Rule, StepOutput, register_rule

LOSSES = ("ce", "mse")


def classification_loss(logits: Tensor, y: Tensor, loss: str) -> Tensor:
    """Mean cross-entropy, or mean squared error against one-hot targets (sum over classes)."""
    if loss == "ce":
        return F.cross_entropy(logits, y)
    onehot = F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return 0.5 * ((logits - onehot) ** 2).sum(1).mean()


@register_rule("bp")
class Backprop(Rule):
    """Backpropagation (autograd) of cross-entropy or MSE; the baseline for every comparison.

    loss: "ce" (softmax cross-entropy) or "mse" (0.5 * ||logits - onehot||², summed over
        classes, averaged over the batch).
    """

    demo: ClassVar[dict[str, Any] | None] = {}

    def __init__(self, model: nn.Module, loss: str = "ce") -> None:
        super().__init__(model)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.loss = loss

    def step(self, x: Tensor, y: Tensor) -> StepOutput:
        params = [p for p in self.model.parameters() if p.requires_grad]
        with torch.enable_grad():
            logits = self.model(x)
            loss = classification_loss(logits, y, self.loss)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g if g is not None else torch.zeros_like(p)
        return StepOutput(logits.detach(), loss.detach())
