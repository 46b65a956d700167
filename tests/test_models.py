"""Models: shapes, the per-layer trace rules rely on, activation derivatives, init schemes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bioprop.errors import BiopropError
from bioprop.models import ACTIVATIONS, build_model, get_activation, mlp


@pytest.mark.parametrize("name", ACTIVATIONS.names())
@settings(max_examples=20, deadline=None)
@given(
    values=st.lists(
        st.floats(-4, 4).filter(lambda v: abs(v) > 1e-3 and abs(v - 1) > 1e-3),
        min_size=1,
        max_size=16,
    )
)
def test_activation_derivative_matches_autograd(name: str, values: list[float]) -> None:
    """Rules without autograd use f'(z); it must equal autograd's away from kinks."""
    act = get_activation(name)
    z = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(act(z).sum(), z)
    torch.testing.assert_close(act.derivative(z.detach()), g)


def test_mlp_structure_and_trace_match_forward() -> None:
    torch.manual_seed(0)
    net = mlp([12, 7, 5, 3], activation="tanh", bias=False, dropout=0.0)
    assert [tuple(b.op.weight.shape) for b in net.blocks] == [(7, 12), (5, 7), (3, 5)]
    assert all(b.op.bias is None for b in net.blocks)
    x = torch.randn(4, 3, 2, 2)  # any shape is flattened by the first block
    trace = net.trace(x)
    torch.testing.assert_close(trace[-1].h, net(x))
    for t, b in zip(trace, net.blocks):
        torch.testing.assert_close(t.z, b.op(t.a))  # z is the weight layer applied to a
    torch.testing.assert_close(trace[1].a, torch.tanh(trace[0].z))
    torch.testing.assert_close(trace[-1].h, trace[-1].z)  # identity output


def test_dropout_only_on_hidden_layers() -> None:
    net = mlp([4, 8, 8, 2], dropout=0.5)
    assert [b.drop is not None for b in net.blocks] == [True, True, False]


def test_he_uniform_bound() -> None:
    torch.manual_seed(0)
    w = mlp([400, 300], init="he_uniform").blocks[0].op.weight
    bound = math.sqrt(6 / 400)
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.95 * bound  # uniform on the full interval
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.01 * bound


def test_xavier_normal_std() -> None:
    torch.manual_seed(0)
    w = mlp([300, 200], init="xavier_normal").blocks[0].op.weight
    assert abs(w.std().item() - math.sqrt(2 / 500)) < 0.02 * math.sqrt(2 / 500)


@pytest.mark.parametrize(
    ("name", "shape", "kwargs"),
    [
        ("lenet5", (1, 28, 28), {}),
        ("lenet5", (3, 32, 32), {"activation": "tanh"}),
        ("convnet", (3, 32, 32), {"channels": [8, 16, 16], "norm": "batch", "pool": "avg"}),
        ("convnet", (1, 28, 28), {"kernel": 3, "padding": "valid", "fc": []}),
        ("mlp", (1, 28, 28), {"hidden": [32, 32]}),
    ],
)
def test_model_registry_shapes(name: str, shape: tuple, kwargs: dict) -> None:
    net = build_model(name, shape, 10, **kwargs)
    x = torch.randn(2, *shape)
    assert net(x).shape == (2, 10)
    assert len(net.trace(x)) == len(net.weight_layers)


def test_lenet5_layer_sizes() -> None:
    """LeNet-5 on 28x28 MNIST: 6@28x28 -> pool 14 -> 16@10x10 -> pool 5 -> 400-120-84-10."""
    net = build_model("lenet5", (1, 28, 28), 10)
    sizes = [tuple(layer.weight.shape) for layer in net.weight_layers]
    assert sizes == [(6, 1, 5, 5), (16, 6, 5, 5), (120, 400), (84, 120), (10, 84)]


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("mlp", {"widths": [3]}, "unknown option 'widths'"),
        ("mlp", {"activation": "swish"}, "unknown activation"),
        ("mlp", {"init": "orthogonal-ish"}, "unknown init"),
        ("convnet", {"pool": "median"}, "unknown pool"),
        ("nope", {}, "unknown model 'nope'"),
    ],
)
def test_bad_model_options_are_user_errors(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(BiopropError, match=match):
        build_model(name, (1, 8, 8), 10, **kwargs)
