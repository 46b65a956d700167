"""Spiking building blocks: closed-form neuron traces, surrogates, losses, encoders, models.

Expected values are written out by hand (or come from an independent autograd computation);
none is read back from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from bioprop.diagnostics import alignment
from bioprop.models import build_model
from bioprop.models.spiking import (
    LIF,
    SPIKE_LOSSES,
    SpikeFn,
    StageTrace,
    psp_filter,
    spike_loss,
    spike_loss_grad,
    target_train,
)
from bioprop.rules import build_rule
from tests.conftest import tiny_config


def test_psp_trace_of_a_hand_built_spike_train():
    """s = [1,0,1,0,0], τ_s = 2: ψ = [.5, .25, .625, .3125, .15625] (ψ = ψ/2 + s/2)."""
    s = torch.tensor([1.0, 0, 1, 0, 0], dtype=torch.float64)[:, None]
    want = torch.tensor([0.5, 0.25, 0.625, 0.3125, 0.15625], dtype=torch.float64)[:, None]
    assert torch.equal(psp_filter(s, 2.0), want)


def test_psp_target_train():
    """Label neuron [0,1,1,1,1] through τ_s = 2 gives [0, .5, .75, .875, .9375]; T ≥ 10 uses
    [0,1] repeated; other neurons are silent."""
    y = torch.tensor([2])
    tr = target_train(y, 4, 5, torch.float64)
    assert torch.equal(tr[:, 0, 2], torch.tensor([0.0, 1, 1, 1, 1], dtype=torch.float64))
    assert tr[:, 0, [0, 1, 3]].abs().sum() == 0
    want = torch.tensor([0, 0.5, 0.75, 0.875, 0.9375], dtype=torch.float64)
    assert torch.equal(psp_filter(tr, 2.0)[:, 0, 2], want)
    assert torch.equal(
        target_train(y, 4, 10, torch.float64)[:4, 0, 2], torch.tensor([0.0, 1, 0, 1]).double()
    )


def test_if_neuron_subtract_reset_closed_form():
    """IF (β = 1), θ = 1, I = 0.6: V = 0.6, 1.2, 0.8, 1.4 and spikes at steps 2 and 4."""
    lif = LIF(tau_mem=None, tau_syn=1.0, reset="subtract")
    s, u, psi = lif(torch.full((4, 1), 0.6, dtype=torch.float64))
    torch.testing.assert_close(u[:, 0], torch.tensor([0.6, 1.2, 0.8, 1.4], dtype=torch.float64))
    assert s[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert torch.equal(psi, s)  # τ_s = 1: the trace is the spike train


def test_lif_zero_reset_and_leak_closed_form():
    """τ_m = 8 (β = 7/8), zero reset: I = [1.5, 0.5, 0.4, 0]: u = 1.5 (spike), 0.5,
    0.8375, 0.7328125; ψ (τ_s = 2) = [.5, .25, .125, .0625]. Reset "none" keeps integrating."""
    cur = torch.tensor([1.5, 0.5, 0.4, 0.0], dtype=torch.float64)[:, None]
    s, u, psi = LIF(8.0, 2.0, reset="zero")(cur)
    want_u = [1.5, 0.5, 0.5 * 7 / 8 + 0.4, (0.5 * 7 / 8 + 0.4) * 7 / 8]
    torch.testing.assert_close(u[:, 0], torch.tensor(want_u, dtype=torch.float64))
    assert s[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    torch.testing.assert_close(
        psi[:, 0], torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)
    )
    _, u_none, _ = LIF(8.0, 2.0, reset="none")(cur)
    assert math.isclose(float(u_none[1, 0]), 1.5 * 7 / 8 + 0.5)


@pytest.mark.parametrize(
    ("name", "slope", "v", "want"),
    [
        ("sigmoid", 5.0, 0.0, 1.25),  # k/4
        ("atan", 2.0, 0.0, 1.0),
        ("atan", 2.0, 1 / math.pi, 0.5),  # 1 / (1 + π² v²)
        ("fast_sigmoid", 25.0, 0.04, 0.25),  # 1 / (1 + 25·0.04)²
    ],
)
def test_surrogate_derivatives(name, slope, v, want):
    """The spike's backward is σ'(v) of the named surrogate; its forward is the strict step."""
    lif = LIF(surrogate=name, slope=slope)
    x = torch.tensor([v], dtype=torch.float64, requires_grad=True)
    out = SpikeFn.apply(x, lif.sg)
    out.backward(torch.ones_like(out))
    assert math.isclose(float(x.grad), want, rel_tol=1e-12)
    assert float(SpikeFn.apply(torch.zeros(1), lif.sg)) == 0.0  # H(0) = 0: strict >


def test_spatial_mode_cuts_temporal_paths():
    """∂s[3]/∂I[0] is 0 under the spatial proxy and non-zero with BPTT (leak, reset, trace)."""
    cur = torch.full((4, 1), 0.7, dtype=torch.float64, requires_grad=True)
    lif = LIF(8.0, 2.0, surrogate="atan")
    for spatial, nonzero in ((True, False), (False, True)):
        (g,) = torch.autograd.grad(lif(cur, spatial=spatial)[2][3].sum(), cur)
        assert bool(g[0].abs().sum() > 0) == nonzero
        assert g[3].abs().sum() > 0


@pytest.mark.parametrize("kind", SPIKE_LOSSES)
def test_closed_form_loss_gradient_matches_autograd(kind):
    """∂E/∂s_L[t] (spatial proxy) equals autograd of E through ψ[t] = α sg(ψ[t-1]) + s[t]/τ_s."""
    torch.manual_seed(0)
    T, n, k, tau = 5, 3, 4, 2.0
    s = (torch.rand(T, n, k, dtype=torch.float64) < 0.5).double().requires_grad_()
    psi, prev = [], torch.zeros(n, k, dtype=torch.float64)
    for t in range(T):
        prev = (1 - 1 / tau) * prev.detach() + s[t] / tau
        psi.append(prev)
    tr = StageTrace(s, s, s, s, torch.stack(psi), s)
    y = torch.tensor([0, 3, 1])
    (g,) = torch.autograd.grad(spike_loss(kind, tr, y, tau), s)
    torch.testing.assert_close(spike_loss_grad(kind, tr, y, tau), g, atol=1e-12, rtol=0)


def test_poisson_encoder_rate():
    """Poisson spikes fire with probability x at every step."""
    net = build_model("snn_mlp", (4,), 2, hidden=[3], T=2000, encoder="poisson")
    x = torch.tensor([[0.0, 0.25, 0.5, 1.0]])
    rates = net.encode(x).mean(0)[0]
    torch.testing.assert_close(rates, x[0], atol=0.04, rtol=0)
    assert set(net.encode(x).unique().tolist()) <= {0.0, 1.0}


def test_models_shapes_and_readouts():
    """snn_cnn on MNIST is 15C5-P2-40C5-P2-300-10 with 640 inputs to the FC; read-outs: count
    is an integer Σ_t s ≤ T, membrane the mean of u."""
    net = build_model("snn_cnn", (1, 28, 28), 10)
    assert [type(s.op).__name__ for s in net.stages] == [
        "Conv2d",
        "SumPool",
        "Conv2d",
        "SumPool",
        "Linear",
        "Linear",
    ]
    assert net.stages[4].op.in_features == 640
    x = torch.rand(2, 1, 28, 28)
    counts = net(x)
    assert counts.shape == (2, 10) and (counts == counts.round()).all() and counts.max() <= 5
    mem = build_model("snn_mlp", (1, 28, 28), 10, readout="membrane")
    torch.manual_seed(0)
    torch.testing.assert_close(mem(x), mem.run(x)[-1].u.mean(0))
    assert build_model("sp_snn_cnn", (1, 28, 28), 10).stages[2].op.in_features == 1960


def test_microcircuit_trains_through_the_loop_with_diagnostics(tmp_path):
    """`bioprop train` runs the microcircuit on a spiking MLP, and the diagnostics (cosine vs
    the BP gradient, feedback angles) are finite for it."""
    from bioprop.train import train

    cfg = tiny_config(
        tmp_path,
        "rule.name=microcircuit",
        "model.name=snn_mlp",
        "model.args={hidden: [32], weight_scale: 2.0}",
        "optim.name=adam",
        "optim.lr=0.003",
        "epochs=1",
        "max_steps_per_epoch=20",
        "diagnostics_every=10",
    )
    res = train(cfg)
    assert res["status"] == "finished" and res["final_test_acc"] > 0.15
    net = build_model("snn_mlp", (64,), 10, hidden=[32], weight_scale=2.0)
    rule = build_rule("microcircuit", net)
    x, y = torch.rand(16, 64) * 4, torch.randint(0, 10, (16,))
    rng = torch.get_rng_state()
    rule.step(x, y)
    diag = alignment(rule, x, y, rng)
    assert math.isfinite(diag["angle/stages.1.op"]) and diag["angle/stages.1.op"] < 90
    assert any(k.startswith("cos/") and math.isfinite(v) for k, v in diag.items())
