"""SigProp on spiking nets (SP-Voltage, SP-Surrogate) and the continuous-time Hebbian form.

Oracles: autograd of sigprop's own local loss at the fixed point (continuous time), gradient
isolation per layer, no surrogate ever called by SP-Voltage, no label leak.
"""

from __future__ import annotations

import pytest
import torch

from bioprop.models import build_model
from bioprop.rules import build_rule
from bioprop.rules.sigprop import local_loss


def _batch(n=12, shape=(1, 8, 8)):
    torch.manual_seed(3)
    return torch.rand(n, *shape) * 3, torch.arange(n) % 4


def test_sp_voltage_never_uses_a_surrogate_and_gets_finite_nonzero_grads():
    """SP-Voltage: with every surrogate replaced by one that raises, a step still fills finite,
    non-zero grads in every layer (the loss is on V̄, spikes are constants)."""
    net = build_model("sp_snn_mlp", (1, 8, 8), 4, hidden=[16, 16])
    rule = build_rule("sigprop_snn", net, variant="voltage", loss="direct")

    def boom(v):
        raise AssertionError("surrogate called")

    for st in net.stages[:-1]:
        st.neuron.sg = boom
    x, y = _batch()
    rule.step(x, y)
    for name, p in net.named_parameters():
        assert torch.isfinite(p.grad).all(), name
        if name.endswith("weight") and "norm" not in name:
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("variant", ["voltage", "surrogate"])
def test_each_layer_learns_only_from_its_own_loss(variant):
    """Layer 0's grads do not change when layer 1 is replaced (nothing flows between layers),
    and the head's CE leaves hidden grads untouched."""
    x, y = _batch()
    torch.manual_seed(0)
    a = build_model("sp_snn_mlp", (1, 8, 8), 4, hidden=[16, 16])
    torch.manual_seed(0)
    b = build_model("sp_snn_mlp", (1, 8, 8), 4, hidden=[16, 16])
    with torch.no_grad():
        b.stages[1].op.weight.mul_(-3.0)
    ra = build_rule("sigprop_snn", a, variant=variant, loss="max_all")
    rb = build_rule("sigprop_snn", b, variant=variant, loss="max_all")
    rb.model.signal.load_state_dict(ra.model.signal.state_dict())
    ra.step(x, y), rb.step(x, y)
    assert torch.equal(a.stages[0].op.weight.grad, b.stages[0].op.weight.grad)
    assert not torch.equal(a.stages[1].op.weight.grad, b.stages[1].op.weight.grad)
    assert a.stages[0].op.weight.grad.abs().sum() > 0


def test_sp_surrogate_differs_from_voltage_and_predict_ignores_labels():
    """The two variants give different updates; eval logits need no labels (no leak)."""
    x, y = _batch()
    torch.manual_seed(0)
    net = build_model("sp_snn_cnn", (1, 8, 8), 4, channels=[4, 6], fc=[8])
    rule = build_rule("sigprop_snn", net, variant="surrogate", loss="direct")
    rule.step(x, y)
    g_sur = net.stages[0].op.weight.grad.clone()
    rule.variant = "voltage"
    rule.step(x, y)
    assert not torch.allclose(g_sur, net.stages[0].op.weight.grad)
    rule.eval()
    assert torch.equal(rule.predict(x), net(x))


def test_continuous_time_hebbian_equals_local_loss_gradient_at_fixed_point():
    """After settling (Δ/τ = 0.1, 300 steps: residual 0.9^300), the three-factor update of
    every hidden layer equals autograd of sigprop's direct (v1) local loss with detached
    inputs, and the head's equals CE on the detached last rates (±1e-5, float64)."""
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        net = build_model("mlp", (6,), 3, hidden=[8, 7])
        rule = build_rule("sigprop_ct", net, settle=300, learn=1)
        x, y = torch.rand(5, 6), torch.tensor([0, 1, 2, 0, 1])
        grads, _ = rule.hebbian_grads(x, y)
        eye = torch.eye(3)
        h_in, t_in = x, None
        for i, block in enumerate(net.blocks):
            ps = list(block.parameters()) + ([net.signal_ct.weight] if i == 0 else [])
            ps = [p.detach().clone().requires_grad_() for p in ps]
            w, b = ps[0], ps[1]
            h = torch.relu(h_in @ w.T + b)
            if i == len(net.blocks) - 1:
                loss = torch.nn.functional.cross_entropy(h_in @ w.T + b, y)
            else:
                t = torch.relu((eye @ ps[2].T if i == 0 else t_in @ w.T) + b)
                loss = local_loss(h, t, y)
            ref = torch.autograd.grad(loss, ps)
            got = [
                grads[p]
                for p in list(block.parameters()) + ([net.signal_ct.weight] if i == 0 else [])
            ]
            for g, r in zip(got, ref):
                torch.testing.assert_close(g, r, atol=1e-5, rtol=0)
                assert r.abs().max() > 1e-4
            if i < len(net.blocks) - 1:
                h_in, t_in = h.detach(), t.detach()
    finally:
        torch.set_default_dtype(torch.float32)


def test_continuous_time_before_settling_is_not_the_fixed_point():
    """With too few settling steps the update differs from the fixed-point one (the dynamics
    matter; the test above would be vacuous otherwise)."""
    torch.manual_seed(0)
    net = build_model("mlp", (6,), 3, hidden=[8])
    x, y = torch.rand(5, 6), torch.tensor([0, 1, 2, 0, 1])
    early, _ = build_rule("sigprop_ct", net, settle=2, learn=1).hebbian_grads(x, y)
    late, _ = build_rule("sigprop_ct", net, settle=200, learn=1).hebbian_grads(x, y)
    w = net.blocks[0].op.weight
    assert not torch.allclose(early[w], late[w], atol=1e-4)
