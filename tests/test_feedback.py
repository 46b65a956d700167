"""Feedback layers against autograd and closed forms (specs/feedback-alignment.md §9, 1-4, 7, 10).

Oracles: ``nn.Linear`` / ``nn.Conv2d`` autograd (B = W must be BP bit for bit up to float64
rounding), hand-written FA backward passes, and the closed-form angles of sign feedback.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bioprop.convert import convert
from bioprop.diagnostics import angle_deg
from bioprop.rules import build_rule
from bioprop.rules._feedback import FAConv2d, FALinear, Feedback, convert_layers, layer_seed

ATOL = 1e-10


pytestmark = pytest.mark.usefixtures("one_thread")


def autograd_grads(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    params = [p for p in layer.parameters()]
    return list(torch.autograd.grad(layer(x), [x, *params], g))


def feedback_equal_to_w(layer: nn.Module, how: str) -> nn.Module:
    """The layer converted with B = W: FA with R = W, or SCFA with M = |W|."""
    if how == "fa":
        new, (m,) = convert_layers(copy.deepcopy(layer), Feedback("random"))
        m.R = m.weight.detach().clone()
        return new
    return convert_layers(copy.deepcopy(layer), Feedback("sign", magnitude="abs_w"))[0]


@pytest.mark.parametrize("how", ["fa", "abs_w"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 7)])
def test_linear_with_b_equal_w_is_autograd(how: str, bias: bool, shape: tuple) -> None:
    """A wrong transpose, a lost leading dimension or a bias summed over the wrong axis breaks
    this: with B = W every gradient must be autograd's."""
    torch.manual_seed(1)
    layer = nn.Linear(7, 6, bias=bias).double()
    x = torch.randn(*shape, dtype=torch.float64)
    g = torch.randn(*shape[:-1], 6, dtype=torch.float64)
    fb = feedback_equal_to_w(layer, how)
    assert isinstance(fb, FALinear)
    for got, want in zip(autograd_grads(fb, x, g), autograd_grads(layer, x, g)):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


CONVS = [
    dict(in_channels=4, out_channels=6, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),  # needs output_padding
    dict(in_channels=4, out_channels=6, kernel_size=3, dilation=2, padding=2),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 5), groups=2, padding="same"),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, bias=False, padding="valid"),
]


@pytest.mark.parametrize("how", ["fa", "abs_w"])
@pytest.mark.parametrize("kw", CONVS, ids=range(len(CONVS)))
def test_conv2d_with_b_equal_w_is_autograd(how: str, kw: dict) -> None:
    """Stride, padding (integer and string), dilation and groups all enter the transposed
    convolution; an input of 8x8 with stride 2 needs output_padding to come back to 8x8."""
    torch.manual_seed(2)
    layer = nn.Conv2d(**kw).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    g = torch.randn_like(layer(x))
    fb = feedback_equal_to_w(layer, how)
    assert isinstance(fb, FAConv2d)
    for got, want in zip(autograd_grads(fb, x, g), autograd_grads(layer, x, g)):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_conv2d_rejects_what_it_cannot_transpose() -> None:
    with pytest.raises(NotImplementedError, match="padding_mode"):
        convert_layers(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), Feedback("random"))
    with pytest.raises(NotImplementedError, match="even kernel"):
        convert_layers(nn.Conv2d(1, 1, 4, padding="same"), Feedback("random"))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_weight_gradient_is_local_for_random_feedback(kind: str) -> None:
    """Whatever B is, grad W = g^T x (the layer's own input and output error) and grad x = g B."""
    torch.manual_seed(3)
    layer = nn.Linear(5, 4) if kind == "linear" else nn.Conv2d(3, 4, 3, padding=1)
    layer = convert_layers(layer.double(), Feedback("random"))[0]
    x = torch.randn(6, 5, dtype=torch.float64) if kind == "linear" else torch.randn(2, 3, 5, 5)
    x = x.double().requires_grad_(True)
    out = layer(x)
    captured = {}
    out.register_hook(lambda g: captured.setdefault("g", g))
    (out * torch.randn_like(out)).sum().backward()
    g, B = captured["g"], layer.R
    if kind == "linear":
        want_w, want_x = g.t() @ x.detach(), g @ B
    else:
        want_w = torch.nn.grad.conv2d_weight(x.detach(), layer.weight.shape, g, padding=1)
        want_x = torch.nn.grad.conv2d_input(x.shape, B, g, padding=1)
    torch.testing.assert_close(layer.weight.grad, want_w, atol=ATOL, rtol=0)
    torch.testing.assert_close(x.grad, want_x, atol=ATOL, rtol=0)


def test_user_module_converted_with_b_equal_w_is_autograd() -> None:
    """``bioprop.convert`` on a plain nn.Sequential (conv, pool, flatten, linear) keeps its
    Parameters and, with B = W, gives autograd's gradients for all of them."""
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, stride=2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4, 5),
        nn.ReLU(),
        nn.Linear(5, 3),
    ).double()
    ref = copy.deepcopy(net)
    params = list(net.parameters())
    model = convert(net, "scfa", magnitude="abs_w")
    assert model is net and list(model.parameters()) == params
    assert sum(isinstance(m, (FALinear, FAConv2d)) for m in model.modules()) == 4
    x, y = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(ref(x), y).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=ATOL, rtol=0)


def hand_fa_grads(net: nn.Sequential, Bs: list[torch.Tensor], x, y) -> list[torch.Tensor]:
    """FA backward written out for Linear-tanh-Linear-tanh-Linear with mean cross-entropy."""
    W = [net[0].weight, net[2].weight, net[4].weight]
    b = [net[0].bias, net[2].bias, net[4].bias]
    with torch.no_grad():
        a1 = x @ W[0].T + b[0]
        h1 = torch.tanh(a1)
        a2 = h1 @ W[1].T + b[1]
        h2 = torch.tanh(a2)
        a3 = h2 @ W[2].T + b[2]
        d3 = (torch.softmax(a3, 1) - F.one_hot(y, 4).double()) / len(y)
        d2 = (d3 @ Bs[2]) * (1 - h2**2)
        d1 = (d2 @ Bs[1]) * (1 - h1**2)
    return [d1.T @ x, d1.sum(0), d2.T @ h1, d2.sum(0), d3.T @ h2, d3.sum(0)]


def expected_feedback(rule: str, layer: nn.Module, index: int, seed: int) -> torch.Tensor:
    """B from closed forms and independent draws, never from the layer's own B method."""
    w = layer.weight.detach()
    fan_in, fan_out = w.shape[1], w.shape[0]
    if rule == "fa":
        return layer.R
    if rule == "usf":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.sign(w)
    if rule == "frsf":
        return layer.M.abs() * torch.sign(w)
    gen = torch.Generator().manual_seed(
        layer_seed(seed, index)
    )  # brSF: M_0 at init, M_1 at the forward
    bound = math.sqrt(6 / (fan_in + fan_out))
    torch.rand(w.shape, generator=gen, dtype=w.dtype)
    return bound * torch.rand(w.shape, generator=gen, dtype=w.dtype) * torch.sign(w)


@pytest.mark.parametrize("rule", ["fa", "usf", "frsf", "brsf"])
def test_rules_match_hand_written_fa_backward(rule: str) -> None:
    """A 3-layer tanh MLP: each rule's .grad equals the FA backward written by hand with the
    B that rule should use (Xavier s for uSF, |M_0| for frSF, the generator's second draw for
    brSF); one SGD step then equals the manual update W - lr·grad."""
    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 4)
    ).double()
    x, y = torch.randn(7, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1, 2])
    r = build_rule(rule, net, seed=11)
    layers = [net[0], net[2], net[4]]
    before = [p.detach().clone() for p in net.parameters()]
    r.step(x, y)
    Bs = [expected_feedback(rule, m, i, 11) for i, m in enumerate(layers)]
    want = hand_fa_grads(net, Bs, x, y)
    for p, w in zip(net.parameters(), want):
        torch.testing.assert_close(p.grad, w, atol=ATOL, rtol=0)
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    for p, p0, w in zip(net.parameters(), before, want):
        torch.testing.assert_close(p.detach(), p0 - 0.1 * w, atol=ATOL, rtol=0)


def initial_angle(rule: str, weight: torch.Tensor, **kw) -> float:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data = weight
    (pair,) = build_rule(rule, nn.Sequential(layer), **kw).feedback_pairs()
    return angle_deg(pair.weight, pair.feedback)


def test_initial_angles_match_closed_forms() -> None:
    """W ~ N(0,1): cos(uSF) = E|w|/√E[w²] = √(2/π) (37.0°); frSF with M ~ U(0,1) adds E[m]/√E[m²]
    = √3/2 (46.3°); FA ≈ 90°. W ~ U(-1,1): uSF 30.0°, frSF 41.4°. Reported angles use the
    effective feedback: a diagnostic that read |M_0| instead would say ≈90° for frSF."""
    torch.manual_seed(6)
    gauss, unif = torch.randn(500, 800), 2 * torch.rand(500, 800) - 1
    deg = math.degrees
    cases = [
        ("usf", gauss, {}, deg(math.acos(math.sqrt(2 / math.pi)))),
        ("frsf", gauss, {"feedback_scale": "none"}, deg(math.acos(0.5 * math.sqrt(6 / math.pi)))),
        ("fa", gauss, {}, 90.0),
        ("usf", unif, {}, deg(math.acos(math.sqrt(3) / 2))),
        ("frsf", unif, {}, deg(math.acos(0.75))),
        ("brsf", gauss, {}, deg(math.acos(0.5 * math.sqrt(6 / math.pi)))),
    ]
    for rule, w, kw, want in cases:
        assert abs(initial_angle(rule, w.clone(), **kw) - want) < 1.0, rule


def test_brsf_redraws_on_every_training_forward_only() -> None:
    """M changes on every training forward with autograd on, is the same for the same seed,
    and is left alone in eval mode and under no_grad; frSF's M never changes."""
    torch.manual_seed(7)

    def build(rule: str, seed: int) -> tuple[nn.Module, nn.Module]:
        net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        return build_rule(rule, net, seed=seed).model, net[2]

    x = torch.randn(5, 4)
    net, top = build("brsf", 3)
    seen = [top.M.clone()]
    for _ in range(3):
        net(x)
        seen.append(top.M.clone())
    assert all(not torch.equal(a, b) for a, b in itertools.pairwise(seen))
    net2, top2 = build("brsf", 3)
    for _ in range(3):
        net2(x)
    assert torch.equal(top2.M, seen[-1])
    net.eval()
    net(x)
    net.train()
    with torch.no_grad():
        net(x)
    assert torch.equal(top.M, seen[-1])
    net3, top3 = build("frsf", 3)
    m0 = top3.M.clone()
    for _ in range(3):
        net3(x).sum().backward()
    assert torch.equal(top3.M, m0)


@pytest.mark.parametrize("rule", ["fa", "usf", "brsf", "frsf", "dfa", "scfa"])
def test_forward_and_backward_edit_nothing_in_place(rule: str) -> None:
    """Neither W nor any buffer may be edited in place by a forward or a backward pass (the
    biotorch defect of B ← B·sign(W) on every forward)."""
    torch.manual_seed(8)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3))
    model = build_rule(rule, net).model
    model(torch.randn(2, 1, 5, 5))  # DFA creates its D matrices on the first pass
    tensors = [*model.parameters(), *(b for b in model.buffers() if b is not None)]
    versions = [t._version for t in tensors]
    model(torch.randn(2, 1, 5, 5)).sum().backward()
    assert [t._version for t in tensors] == versions


@pytest.mark.parametrize("rule", ["fa", "brsf", "frsf", "dfa"])
def test_state_dict_round_trip_reproduces_feedback(rule: str) -> None:
    """Feedback state lives in buffers (and brSF's generator in the extra state): loading a
    state_dict into a rule built from another seed reproduces B_eff and the next redraw."""

    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
        return build_rule(rule, net, seed=seed)

    x = torch.randn(5, 4)
    a, b = build(0), build(1)
    a.model(x)
    b.load_state_dict(a.state_dict())
    a.model(x), b.model(x)
    for ma, mb in zip(a.layers, b.layers):
        fa, fb = ma.effective_feedback(), mb.effective_feedback()
        assert (fa is None and fb is None) or torch.equal(fa, fb)
        assert (ma.D is None and mb.D is None) or torch.equal(ma.D, mb.D)


def test_convert_respects_exclude_and_rejects_other_rules() -> None:
    """Excluded layers stay plain torch layers; a single layer converts to a feedback layer;
    a rule outside the family is a user error, not a silent no-op."""
    from bioprop.errors import BiopropError

    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model = convert(net, "usf", exclude=("0",))
    assert type(model[0]) is nn.Linear and isinstance(model[2], FALinear)
    assert isinstance(convert(nn.Linear(3, 2), "fa"), FALinear)
    with pytest.raises(BiopropError, match="not a feedback rule"):
        convert(nn.Sequential(nn.Linear(3, 2)), "bp")
