"""BP is the reference every other rule is measured against: its gradients must be exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bioprop.models import build_model, mlp
from bioprop.rules import build_rule


def finite_difference(model, loss_fn, p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of loss_fn() w.r.t. every entry of ``p`` (float64)."""
    g = torch.zeros_like(p)
    flat, gf = p.data.view(-1), g.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + eps
        up = loss_fn().item()
        flat[i] = old - eps
        down = loss_fn().item()
        flat[i] = old
        gf[i] = (up - down) / (2 * eps)
    return g


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_bp_grad_equals_finite_differences(loss: str, arch: str) -> None:
    torch.manual_seed(1)
    if arch == "mlp":
        model, x = mlp([5, 4, 3], activation="tanh"), torch.randn(6, 5)
    else:
        model = build_model(
            "convnet", (1, 6, 6), 3, channels=[2], kernel=3, fc=[4], activation="tanh"
        )
        x = torch.randn(4, 1, 6, 6)
    model = model.double()
    x, y = x.double(), torch.randint(0, 3, (len(x),))
    rule = build_rule("bp", model, loss=loss)
    rule.step(x, y)

    def loss_fn() -> torch.Tensor:
        out = model(x)
        if loss == "ce":
            return F.cross_entropy(out, y)
        return 0.5 * ((out - F.one_hot(y, 3).double()) ** 2).sum(1).mean()

    with torch.no_grad():
        for p in model.parameters():
            torch.testing.assert_close(
                p.grad, finite_difference(model, loss_fn, p), rtol=1e-6, atol=1e-8
            )


def test_bp_grad_sign_lets_sgd_descend() -> None:
    """The optimizer subtracts .grad: one small SGD step must lower the training loss."""
    torch.manual_seed(0)
    model = mlp([8, 16, 3]).double()
    x, y = torch.randn(32, 8).double(), torch.randint(0, 3, (32,))
    rule = build_rule("bp", model)
    before = rule.step(x, y).loss
    torch.optim.SGD(model.parameters(), lr=0.05).step()
    assert rule.step(x, y).loss < before


def test_bp_rejects_unknown_loss() -> None:
    from bioprop.errors import BiopropError

    with pytest.raises(BiopropError, match="loss must be one of"):
        build_rule("bp", mlp([2, 2]), loss="hinge")
