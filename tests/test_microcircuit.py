"""Microcircuit rule: oracle tests (specs/microcircuit.md §7), float64, CPU, tiny nets.

The reference is written here with plain tensors and autograd, independently of the model code:
it steps time in the outer loop (the model runs stage by stage over all T), uses its own spike
function, its own PSP target and SCFA autograd Functions (backward reads B = M ∘ sign W in place
of W). If the rule's E⁺/E⁻ routing, φ, the Hebbian sums or the 1/N were wrong, the 1e-6
comparison would fail.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

from bioprop.models import build_model
from bioprop.models.spiking import SumPool
from bioprop.rules import build_rule
from bioprop.rules.microcircuit import Microcircuit, SurrogateBPTT, hebbian, split_errors

TAU_M, TAU_S, THETA, K, T, N = 8.0, 2.0, 1.0, 5.0, 5, 4


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return (v > 0).double()

    @staticmethod
    def backward(ctx, g):
        (v,) = ctx.saved_tensors
        sig = 1 / (1 + torch.exp(-K * v))
        return g * K * sig * (1 - sig)


class SCFALinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, B):
        ctx.save_for_backward(x, B)
        return x @ w.T + b

    @staticmethod
    def backward(ctx, g):
        x, B = ctx.saved_tensors
        return g @ B, g.T @ x, g.sum(0), None


class SCFAConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, B):
        ctx.save_for_backward(x, B)
        ctx.wshape = w.shape
        return F.conv2d(x, w, b)

    @staticmethod
    def backward(ctx, g):
        x, B = ctx.saved_tensors
        gx = conv2d_input(x.shape, B, g)
        return gx, conv2d_weight(x, ctx.wshape, g), g.sum((0, 2, 3)), None


def dense_net():
    return build_model("snn_mlp", (20,), 10, hidden=[30, 25], weight_scale=3.0)


def conv_net():
    return build_model(
        "snn_cnn", (1, 12, 12), 10, channels=[4, 8], kernel=3, pools=[2, 0], fc=[], weight_scale=3.0
    )


def data(net):
    torch.manual_seed(1)
    return 2 * torch.rand(N, *net.input_shape), torch.tensor([0, 3, 7, 9])


def reference(net, B: dict[int, torch.Tensor] | None, x, y):
    """Autograd on the SNN under the spatial proxy; B[l] replaces W_l in the backward (SCFA),
    None: plain layers (surrogate BP). Returns ({param name: grad}, spikes per stage)."""
    params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    stages = list(net.stages)
    u = [0.0] * len(stages)
    s = [0.0] * len(stages)
    psi = [0.0] * len(stages)
    spikes = [[] for _ in stages]
    loss = 0.0
    target = torch.tensor([0.0, 0.5, 0.75, 0.875, 0.9375])  # [0,1,1,1,1] through the PSP filter
    for t in range(T):
        h = x
        for k, st in enumerate(stages):
            if isinstance(st.op, SumPool):
                cur = F.avg_pool2d(h, 2) * 4 * 1.1
            else:
                w, b = params[f"stages.{k}.op.weight"], params[f"stages.{k}.op.bias"]
                h = h.flatten(1) if w.dim() == 2 else h
                if B is None or k not in B:
                    cur = F.linear(h, w, b) if w.dim() == 2 else F.conv2d(h, w, b)
                else:
                    fn = SCFALinear if w.dim() == 2 else SCFAConv
                    cur = fn.apply(h, w, b, B[k])
            prev_u = u[k].detach() if torch.is_tensor(u[k]) else u[k]
            prev_s = s[k].detach() if torch.is_tensor(s[k]) else s[k]
            prev_p = psi[k].detach() if torch.is_tensor(psi[k]) else psi[k]
            u[k] = (1 - 1 / TAU_M) * prev_u * (1 - prev_s) + cur
            s[k] = Spike.apply(u[k] - THETA)
            psi[k] = (1 - 1 / TAU_S) * prev_p + s[k] / TAU_S
            spikes[k].append(s[k].detach())
            h = psi[k]
        goal = target[t] * F.one_hot(y, 10).double()
        loss = loss + 0.5 * ((psi[-1] - goal) ** 2).sum() / len(y)
    names = list(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    return dict(zip(names, grads)), [torch.stack(sp) for sp in spikes]


def scfa_feedback(rule):
    return {k: rule.feedback(k) for k in range(1, len(rule.model.stages))}


def check_rates(rule):
    traces, _ = rule._last
    for tr in traces:
        assert 0.02 <= float(tr.s.mean()) <= 0.95, "a stage is (almost) silent or saturated"


def assert_equal_to_reference(rule, B, x, y):
    grads = rule.compute_grads(x, y)
    check_rates(rule)
    ref, spikes = reference(rule.model, B, x, y)
    for tr, sp in zip(rule._last[0], spikes):
        assert torch.equal(tr.s, sp.reshape(tr.s.shape))
    assert set(grads) == set(ref)
    for name, g in ref.items():
        torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=0)
        assert g.abs().max() > 0, name


def sgd_cross_zero(rule, x, y, lr):
    """One SGD step with the rule's update; returns the fraction of weights that changed sign."""
    before = [p.detach().clone() for p in rule.model.parameters() if p.dim() > 1]
    rule.step(x, y)
    with torch.no_grad():
        for p in rule.model.parameters():
            p -= lr * p.grad
    after = [p.detach() for p in rule.model.parameters() if p.dim() > 1]
    crossed = sum(int((torch.sign(a) != torch.sign(b)).sum()) for a, b in zip(after, before))
    return crossed / sum(a.numel() for a in after)


@pytest.mark.parametrize("make", [dense_net, conv_net], ids=["dense", "conv"])
def test_equals_scfa_reference_before_and_after_sign_changes(make):
    """grad == spatial autograd with SCFA layers (B = M∘sign W), incl. after weights cross zero
    (would break if routing froze the initial signs or E⁺/E⁻ were mis-routed)."""
    net = make()
    x, y = data(net)
    rule = Microcircuit(net, faithful=True)
    assert_equal_to_reference(rule, scfa_feedback(rule), x, y)
    crossed = sum(sgd_cross_zero(rule, x, y, lr=0.5) for _ in range(3))
    assert crossed > 0.001
    assert_equal_to_reference(rule, scfa_feedback(rule), x, y)


@pytest.mark.parametrize("make", [dense_net, conv_net], ids=["dense", "conv"])
def test_abs_w_equals_spatial_surrogate_bp(make):
    """M = |W| is spatial surrogate-gradient BP: the plain-layer reference and the bptt rule."""
    net = make()
    x, y = data(net)
    rule = Microcircuit(net, magnitude="abs_w")
    assert_equal_to_reference(rule, None, x, y)
    grads = rule.compute_grads(x, y)
    SurrogateBPTT(net, spatial=True).step(x, y)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], atol=1e-10, rtol=0)


def test_full_bptt_differs_from_spatial():
    """The temporal paths matter: full BPTT is not the spatial proxy (else the BP-limit test
    above would not distinguish them)."""
    net = dense_net()
    x, y = data(net)
    SurrogateBPTT(net, spatial=True).step(x, y)
    spatial = [p.grad.clone() for p in net.parameters()]
    SurrogateBPTT(net, spatial=False).step(x, y)
    assert any((a - p.grad).abs().max() > 1e-6 for a, p in zip(spatial, net.parameters()))


@pytest.mark.parametrize("make", [dense_net, conv_net], ids=["dense", "conv"])
def test_split_identity(make):
    """exc − inh == δ (M∘sign W) to 1e-12; E⁺ − E⁻ == δ; E⁺E⁻ == 0; both ≥ 0."""
    net = make()
    x, y = data(net)
    rule = Microcircuit(net, faithful=True)
    rule.compute_grads(x, y)
    traces, errs = rule._last
    for k in range(1, len(net.stages)):
        op = net.stages[k].op
        delta = torch.randn_like(traces[k].u)
        Ep, En = delta.clamp(min=0), (-delta).clamp(min=0)
        torch.testing.assert_close(Ep - En, delta, atol=0, rtol=0)
        M = rule.magnitude_of(k)
        exc, inh = split_errors(op, Ep, En, M, traces[k].a.shape, faithful=True)
        B = M * torch.sign(op.weight.detach())
        if isinstance(op, torch.nn.Linear):
            want = delta @ B
        else:
            shape = (T * N, *traces[k].a.shape[2:])
            want = conv2d_input(shape, B, delta.flatten(0, 1), op.stride, groups=op.groups)
        torch.testing.assert_close(exc - inh, want.reshape(exc.shape), atol=1e-12, rtol=0)
        assert (exc >= 0).all() and (inh >= 0).all()
    for Ep, En in errs:
        assert (Ep >= 0).all() and (En >= 0).all() and (Ep * En == 0).all()
        assert (Ep > 0).any() and (En > 0).any()


def test_concordance_stays_one_when_weights_change_sign():
    """After steps in which ≥ 1% of weights cross zero, B = M ∘ sign(W_now) and concordance 1."""
    net = dense_net()
    x, y = data(net)
    rule = Microcircuit(net)
    M = {k: rule.magnitude_of(k).clone() for k in (1, 2)}
    crossed = sum(sgd_cross_zero(rule, x, y, lr=2.0) for _ in range(4))
    assert crossed >= 0.01
    rule.step(x, y)
    for name, value in rule.metrics().items():
        if name.startswith("concordance/"):
            assert value == 1.0
    for k in (1, 2):
        w = net.stages[k].op.weight.detach()
        assert torch.equal(rule.feedback(k), M[k] * torch.sign(w))


def test_output_layer_exact_and_zero_feedback_silences_hidden():
    """grad W_L equals the reference for any M; with M = 0 every hidden grad is 0."""
    net = dense_net()
    x, y = data(net)
    rule = Microcircuit(net)
    for k in (1, 2):
        getattr(rule, f"M_{k}").zero_()
    grads = rule.compute_grads(x, y)
    ref, _ = reference(net, None, x, y)  # any M: the output layer does not read feedback
    for name in ("stages.2.op.weight", "stages.2.op.bias"):
        torch.testing.assert_close(grads[name], ref[name], atol=1e-6, rtol=0)
        assert ref[name].abs().max() > 0
    for name in ("stages.0.op.weight", "stages.0.op.bias", "stages.1.op.weight"):
        assert (grads[name] == 0).all()


@pytest.mark.parametrize("make", [dense_net, conv_net], ids=["dense", "conv"])
def test_hebbian_update_is_local(make):
    """grad W[i, j] depends only on post i's error and pre j's trace: perturbing another
    pre j' or post i' leaves it bit-identical (for conv: another input/output channel)."""
    net = make()
    x, y = data(net)
    rule = Microcircuit(net)
    rule.compute_grads(x, y)
    traces, errs = rule._last
    for k, st in enumerate(net.stages):
        if isinstance(st.op, SumPool):
            continue
        D, X = errs[k][0] - errs[k][1], traces[k].a
        gw, _ = hebbian(st.op, D, X)
        D2 = D.clone()
        D2[:, :, 1] += torch.randn_like(D2[:, :, 1])  # post i' = 1
        g_post, _ = hebbian(st.op, D2, X)
        assert torch.equal(g_post[0], gw[0]) and not torch.equal(g_post[1], gw[1])
        if X.shape[2] > 1:  # (the first conv has one input channel)
            X2 = X.clone()
            X2[:, :, 1] += torch.randn_like(X2[:, :, 1])  # pre j' = 1
            g_pre, _ = hebbian(st.op, D, X2)
            assert torch.equal(g_pre[:, 0], gw[:, 0]) and not torch.equal(g_pre[:, 1], gw[:, 1])


def test_feedback_to_one_unit_reads_only_its_own_column():
    """Perturbing M_{l+1}[:, j'] leaves E^±_{l,j} (j ≠ j') unchanged, and changes E^±_{l,j'}."""
    net = dense_net()
    x, y = data(net)
    rule = Microcircuit(net, faithful=True)
    rule.compute_grads(x, y)
    traces, before = rule._last
    rule.M_2[:, 3] *= 3.0
    after = rule.errors(traces, y)
    keep = [j for j in range(25) if j != 3]
    for a, b in zip(after[1], before[1]):
        assert torch.equal(a[..., keep], b[..., keep])
    assert not torch.equal(
        after[1][0][..., 3] - after[1][1][..., 3], before[1][0][..., 3] - before[1][1][..., 3]
    )


def test_deterministic_no_autograd_and_fast_path_equal():
    """Two runs are bit-identical, no graph is built, and the 1-product path equals the
    4-pathway one."""
    net = dense_net()
    x, y = data(net)
    g1 = Microcircuit(net, faithful=True).compute_grads(x, y)
    torch.manual_seed(0)
    rule = Microcircuit(net, faithful=True)
    torch.manual_seed(0)
    fast = Microcircuit(net, faithful=False)
    a, b, c = rule.compute_grads(x, y), rule.compute_grads(x, y), fast.compute_grads(x, y)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert all(v.grad_fn is None for v in a.values())
    for n in a:
        torch.testing.assert_close(a[n], c[n], atol=1e-12, rtol=0)
    assert any(not torch.equal(g1[n], a[n]) for n in a if "stages.0" in n)  # M is drawn, not W


def test_redraw_and_const_magnitudes():
    """brSF redraws M every training step (non-negative); uSF's M is a constant."""
    net = dense_net()
    x, y = data(net)
    rule = Microcircuit(net, magnitude="redraw")
    m0 = rule.M_1.clone()
    rule.compute_grads(x, y)
    assert not torch.equal(m0, rule.M_1) and (rule.M_1 >= 0).all()
    const = Microcircuit(net, magnitude="const")
    assert torch.equal(const.M_1, torch.full_like(const.M_1, math.sqrt(2 / (30 + 25))))


@pytest.mark.parametrize("make", [dense_net, conv_net], ids=["dense", "conv"])
def test_equals_the_library_scfa_rule_on_the_spatial_snn(make):
    """The library's ``scfa`` rule (CE on spike counts) on the same SNN in spatial mode gives the
    microcircuit's grads with loss ``count_ce`` and the scfa layers' own M (1e-6)."""
    net = make()
    net.spatial = True
    x, y = data(net)
    scfa = build_rule("scfa", net, loss="ce", magnitude="fixed")
    scfa.step(x, y)
    want = {n: p.grad.clone() for n, p in scfa.model.named_parameters()}
    rule = Microcircuit(scfa.model, loss="count_ce", faithful=True)
    for k, st in enumerate(scfa.model.stages):
        if k > 0 and not isinstance(st.op, SumPool):
            setattr(rule, f"M_{k}", st.op.M.clone())
    grads = rule.compute_grads(x, y)
    check_rates(rule)
    for name, g in want.items():
        torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=0)
        assert g.abs().max() > 0, name
