"""CorInfoMax oracles (spec specs/corinfomax.md §9): closed forms and an independent reference.

The reference ``ref_dyn`` / ``ref_update`` below is written the way the official code is
(features × batch, basal and apical potentials, per-sample outer products), not the way the rule
is (batch-major, fused addmm with folded coefficients), so it catches sign, order, scale and
transpose slips in the rule.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bioprop.models import build_model
from bioprop.models.activations import HardSigmoid
from bioprop.rules import build_rule
from bioprop.rules.corinfomax import lr_factor

pytestmark = pytest.mark.usefixtures("one_thread")


def make(widths: list[int], dtype=torch.float64, **kw):
    model = build_model("corinfomax_mlp", (widths[0],), widths[-1], hidden=widths[1:-1])
    rule = build_rule("corinfomax", model.to(dtype), **kw)
    return rule.to(dtype)


@torch.no_grad()
def ref_dyn(rule, x, h0, beta, y, steps, jacobi=False):
    """Official-style dynamics, column-major: h[k] is N_k × n; returns the clamped states."""
    wf, wb, B = rule.wf, rule.wb, rule.B
    eps, g, gam, L = rule.eps, rule.g, rule.gamma, len(wf)
    h = [x.T] + [t.T.clone() for t in h0]
    u = [None] + [t.T.clone() for t in h0]
    for t in range(steps):
        eta = rule.eta_at(t)
        src = [v.clone() for v in h] if jacobi else h
        for k in range(1, L + 1):
            basal = wf[k - 1] @ src[k - 1]
            if k < L:
                apical = eps * (2 * gam * B[k - 1] @ src[k] + g * src[k]) + wb[k - 1] @ src[k + 1]
                du = (basal - u[k]) / eps + (apical - u[k]) / eps - g * u[k]
            else:
                apical = gam * B[k - 1] @ src[k] + g * src[k] - beta * (src[k] - y.T)
                du = (basal - u[k]) / eps + (apical - u[k]) - g * u[k]
            u[k] = u[k] + eta * du
            h[k] = u[k].clamp(0, 1)
    return [v.T for v in h[1:]]


@torch.no_grad()
def ref_update(rule, x, hf, hn, beta):
    """ΔW (to be added) as the mean over samples of per-sample outer products."""
    L, n = len(rule.wf), len(x)
    xs_f, xs_n = [x, *hf], [x, *hn]
    dwf, dwb = [], []
    for k in range(1, L + 1):
        w = rule.wf[k - 1]
        acc = torch.zeros_like(w)
        for i in range(n):
            for hs, sgn in ((xs_n, 1.0), (xs_f, -1.0)):
                e = hs[k][i] - w @ hs[k - 1][i]
                acc += sgn * torch.outer(e, hs[k - 1][i])
        dwf.append(acc / (beta * n))
    for k in range(1, L):
        w = rule.wb[k - 1]
        acc = torch.zeros_like(w)
        for i in range(n):
            for hs, sgn in ((xs_n, 1.0), (xs_f, -1.0)):
                d = hs[k][i] - w @ hs[k + 1][i]
                acc += sgn * torch.outer(d, hs[k + 1][i])
        dwb.append(acc / (beta * n))
    return dwf, dwb


def test_clamp_equals_hard_sigmoid_form():
    """clamp(x, 0, 1) = (1 + hardtanh(2x − 1))/2; a wrong activation breaks the dynamics' range."""
    x = torch.linspace(-2, 3, 2001)
    form = (1 + F.hardtanh(2 * x - 1)) / 2
    clamp = HardSigmoid()(x)
    assert torch.allclose(clamp, form, atol=1.2e-7, rtol=0)
    outside = (x <= 0) | (x >= 1)
    assert torch.equal(clamp[outside], form[outside])


def test_batched_matmul_equals_mean_of_outer_products():
    """E.T @ H / n (what the rule computes) equals the mean of per-sample outer products."""
    e, h = torch.randn(20, 7, dtype=torch.float64), torch.randn(20, 5, dtype=torch.float64)
    mean_outer = torch.stack([torch.outer(e[i], h[i]) for i in range(20)]).mean(0)
    torch.testing.assert_close(e.T @ h / 20, mean_outer, rtol=1e-12, atol=0)


@pytest.mark.parametrize("widths", [[12, 9, 4], [12, 9, 7, 4]])
def test_step_matches_reference_dynamics_update_and_lateral(widths):
    """Free/nudged states, .grad, one SGD step and the B recursion all equal the reference:
    a swapped phase, a wrong sign of β, a missing 1/n or a transposed W_b fails here."""
    rule = make(widths, mu_f=[0.7] * (len(widths) - 1), mu_b=[0.3] * (len(widths) - 2), lam=0.9)
    x, y = torch.rand(6, widths[0], dtype=torch.float64), torch.randint(0, widths[-1], (6,))
    y1 = F.one_hot(y, widths[-1]).double()
    zeros = [torch.zeros(6, n, dtype=torch.float64) for n in widths[1:]]
    ref = copy.deepcopy(rule)  # the pre-update weights and B
    w_before = [p.detach().clone() for p in ref.model.parameters()]
    opt = torch.optim.SGD(rule.model.parameters(), lr=1.0, momentum=0.0)
    opt.zero_grad()
    out = rule.step(x, y)
    beta = rule.last["beta"]
    hf = ref_dyn(ref, x, zeros, 0.0, y1, rule.t_free)
    hn = ref_dyn(ref, x, hf, beta, y1, rule.t_nudge)
    torch.testing.assert_close(out.logits, hf[-1], rtol=0, atol=1e-12)
    dwf, dwb = ref_update(ref, x, hf, hn, beta)
    for w, dw in zip(rule.wf, dwf):
        torch.testing.assert_close(w.grad, -0.7 * dw, rtol=1e-10, atol=1e-13)
    for w, dw in zip(rule.wb, dwb):
        torch.testing.assert_close(w.grad, -0.3 * dw, rtol=1e-10, atol=1e-13)
    opt.step()
    expected = [w + 0.7 * dw for w, dw in zip(w_before[: len(dwf)], dwf)]
    expected += [w + 0.3 * dw for w, dw in zip(w_before[len(dwf) :], dwb)]
    for p, e in zip(rule.model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-13)
    gam, lam = rule.gamma, rule.lam
    for b, b0, h in zip(rule.B, ref.B, hn):
        z = h @ b0
        torch.testing.assert_close(b, (b0 - gam * z.T @ z / 6) / lam, rtol=1e-12, atol=1e-14)


def test_first_layer_shortcut():
    """For k = 1 the general nudged-minus-free formula reduces to (H_1ⁿ − H_1ᶠ)ᵀX."""
    w, x = torch.randn(9, 12, dtype=torch.float64), torch.rand(6, 12, dtype=torch.float64)
    hf, hn = torch.rand(6, 9, dtype=torch.float64), torch.rand(6, 9, dtype=torch.float64)
    general = (hn - x @ w.T).T @ x - (hf - x @ w.T).T @ x
    torch.testing.assert_close((hn - hf).T @ x, general, rtol=1e-12, atol=1e-12)


@torch.no_grad()
def grad_j(rule, H, x):
    """∇J_k(H_k) of every layer's local objective at β = 0 (spec §3), batch-major."""
    wf, wb, B, eps, gam = rule.wf, rule.wb, rule.B, rule.eps, rule.gamma
    hs, out, L = [x, *H], [], len(H)
    for k in range(1, L + 1):
        fwd = -(hs[k] - hs[k - 1] @ wf[k - 1].T) / eps
        if k < L:
            out.append(2 * gam * hs[k] @ B[k - 1] + fwd - (hs[k] - hs[k + 1] @ wb[k - 1].T) / eps)
        else:
            out.append(gam * hs[k] @ B[k - 1] - hs[k] + fwd)
    return out


def test_fixed_point_is_stationary_for_every_local_objective():
    """After 300 free iterations U stops moving; interior units have ∇J_k = 0 and clamped ones
    sit where the leak balances the push outwards (∇J = c(U − H): ≤ 0 at 0, ≥ 0 at 1)."""
    rule = make([50, 30, 5], lam=1 / 1.01, eta=0.05, g=0.5, t_free=300)
    for b in rule.B:
        a = torch.randn(len(b), len(b), dtype=torch.float64)
        b.copy_(a @ a.T / len(b) + torch.eye(len(b), dtype=torch.float64))
    x = torch.rand(40, 50, dtype=torch.float64)
    H = [h.clone() for h in rule.free_phase(x)]
    U, Hb = rule.buffers_for(40, x)
    u_before = [u.clone() for u in U]
    rule.relax(U, Hb, x @ rule.wf[0].T, 1)
    assert max(float((u - v).abs().max()) for u, v in zip(U, u_before)) < 1e-10
    c = [rule.g + 2 / rule.eps, rule.g + 1 + 1 / rule.eps]
    n_interior = n_clamped = 0
    for gj, h, u, ck in zip(grad_j(rule, H, x), H, u_before, c):
        inside = (h > 0) & (h < 1)
        n_interior, n_clamped = n_interior + int(inside.sum()), n_clamped + int((~inside).sum())
        assert float(gj[inside].abs().max()) < 1e-8
        torch.testing.assert_close(gj[~inside], (ck * (u - h))[~inside], rtol=0, atol=1e-8)
        assert bool((gj[h == 0] <= 1e-12).all()) and bool((gj[h == 1] >= -1e-12).all())
    assert n_interior > 100 and n_clamped > 100  # both cases were exercised


@pytest.mark.parametrize("sweep", ["gauss_seidel", "jacobi"])
def test_sweep_order(sweep):
    """One iteration from a non-zero state on a 3-layer toy equals the hand-written sweep of
    the chosen order and differs from the other order."""
    rule = make([6, 5, 4, 3], sweep=sweep)
    x = torch.rand(4, 6, dtype=torch.float64)
    h0 = [torch.rand(4, n, dtype=torch.float64) for n in (5, 4, 3)]
    U, H = rule.buffers_for(4, x)
    for u, h, v in zip(U, H, h0):
        u.copy_(v)
        h.copy_(v)
    rule.relax(U, H, x @ rule.wf[0].T, 1)
    y0 = torch.zeros(4, 3, dtype=torch.float64)
    mine = ref_dyn(rule, x, h0, 0.0, y0, 1, jacobi=sweep == "jacobi")
    other = ref_dyn(rule, x, h0, 0.0, y0, 1, jacobi=sweep != "jacobi")
    for a, b in zip(H, mine):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    assert max(float((a - b).abs().max()) for a, b in zip(H, other)) > 1e-6


@pytest.mark.parametrize("beta", [1.0, -1.0])
def test_nudge_sign(beta):
    """From the free state, β = +1 lowers ‖H_L − Y‖² for every sample and β = −1 raises it."""
    rule = make([30, 20, 10])
    x, y = torch.rand(200, 30, dtype=torch.float64), torch.randint(0, 10, (200,))
    y1 = F.one_hot(y, 10).double()
    hf = [h.clone() for h in rule.free_phase(x)]
    U, H = rule.buffers_for(200, x)
    rule.relax(U, H, x @ rule.wf[0].T, rule.t_nudge, beta, y1)
    before, after = ((hf[-1] - y1) ** 2).sum(1), ((H[-1] - y1) ** 2).sum(1)
    assert bool((after < before).all()) if beta > 0 else bool((after > before).all())


def lateral_run(rule, mean, chol, steps, gen, keep=0):
    kept = []
    for t in range(steps):
        h = mean + torch.randn(20, 10, dtype=torch.float64, generator=gen) @ chol.T
        rule.update_lateral([h, torch.zeros(20, 3, dtype=torch.float64)])
        if t >= steps - keep:
            kept.append(rule.B[0].clone())
    return kept


def lateral_setup(**kw):
    rule = make([5, 10, 3], lam=0.99, **kw)
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(10, 10, dtype=torch.float64, generator=gen)
    cov = a @ a.T / 10 + 0.5 * torch.eye(10, dtype=torch.float64)
    mean = torch.linspace(0.2, 1.0, 10, dtype=torch.float64)
    c = cov + torch.outer(mean, mean)  # uncentred second moment E[hhᵀ]
    return rule, gen, mean, torch.linalg.cholesky(cov), c


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_lateral_recursion_tracks_lambda_inverse_correlation():
    """The anti-Hebbian recursion (denominator dropped, as the official code) targets λC⁻¹."""
    rule, gen, mean, chol, c = lateral_setup()
    kept = lateral_run(rule, mean, chol, 5000, gen, keep=3000)
    target = rule.lam * torch.linalg.inv(c)
    assert rel(torch.stack(kept).mean(0), target) < 0.03
    assert rel(kept[-1], target) < 0.10


def test_lateral_woodbury_tracks_inverse_correlation():
    rule, gen, mean, chol, c = lateral_setup(woodbury=True)
    kept = lateral_run(rule, mean, chol, 5000, gen, keep=3000)
    assert rel(torch.stack(kept).mean(0), torch.linalg.inv(c)) < 0.03


@pytest.mark.parametrize("symmetrize", [False, True])
def test_antisymmetric_part(symmetrize):
    """Unsymmetrised, an antisymmetric part grows by exactly 1/λ per step (spec §8.1)."""
    rule, gen, mean, chol, _ = lateral_setup(symmetrize=symmetrize)
    lateral_run(rule, mean, chol, 50, gen)
    a = torch.randn(10, 10, dtype=torch.float64, generator=gen)
    skew0 = 1e-8 * (a - a.T) / 2
    rule.B[0].add_(skew0)
    lateral_run(rule, mean, chol, 100, gen)
    skew = (rule.B[0] - rule.B[0].T) / 2
    if symmetrize:
        assert float(skew.abs().max()) == 0.0
    else:
        torch.testing.assert_close(skew, skew0 / rule.lam**100, rtol=1e-5, atol=0)


def test_eval_batch_invariance():
    """Samples do not interact: H_L at evaluation batch 20 equals that at batch 1000 (float32)."""
    rule = make([784, 500, 10], dtype=torch.float32)
    x = torch.rand(1000, 784)
    whole = rule.predict(x)
    parts = torch.cat([rule.predict(c) for c in x.split(20)])
    torch.testing.assert_close(parts, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("eta", "diverges"), [(0.15, True), (0.05, False)])
def test_step_size_edge(eta, diverges):
    """η·c_hid > 2 (η = 0.15, g = 0.5) makes the dynamics blow up; η = 0.05 converges."""
    rule = make([784, 500, 10], eta=eta, g=0.5, t_free=200)
    x = torch.rand(20, 784, dtype=torch.float64)
    rule.free_phase(x)
    U, H = rule.buffers_for(20, x)
    umax = max(float(u.abs().max()) for u in U)
    if diverges:
        assert umax > 1e3
    else:
        u0 = [u.clone() for u in U]
        rule.relax(U, H, x @ rule.wf[0].T, 1)
        assert umax < 10 and max(float((u - v).abs().max()) for u, v in zip(U, u0)) < 1e-6


def test_schedule_spot_values():
    """μ(e)/μ₀ of spec §6, and the rule scales .grad by it from the epoch it has counted."""
    off = [[0, 0.95], [15, 0.9]]
    assert math.isclose(lr_factor(14, off), 0.4877, rel_tol=1e-4)
    assert math.isclose(lr_factor(15, off), 0.2059, rel_tol=1e-3)
    assert math.isclose(lr_factor(49, off), 0.00573, rel_tol=1e-3)
    assert math.isclose(lr_factor(25, [[0, 0.95], [20, 0.9], [25, 0.8]]), 0.00378, rel_tol=1e-3)
    rule = make([12, 9, 4], random_sign=False)
    rule.prepare(torch.zeros(100))
    state = {k: v.clone() for k, v in rule.state_dict().items()}
    x, y = torch.rand(6, 12, dtype=torch.float64), torch.randint(0, 4, (6,))
    rule.step(x, y)
    g0 = [p.grad.clone() for p in rule.model.parameters()]
    rule.load_state_dict(state)
    rule.seen.fill_(15 * 100 + 40)  # 0-based epoch 15
    rule.step(x, y)
    for p, g in zip(rule.model.parameters(), g0):
        torch.testing.assert_close(p.grad, g * 0.9**15, rtol=1e-12, atol=0)


def test_input_transform_and_angle_pairs():
    """x_mean/x_std act per channel on flattened C×H×W inputs; the angle pair is (W_f², W_b¹ᵀ)."""
    model = build_model("corinfomax_mlp", (3, 2, 2), 4, hidden=[5])
    rule = build_rule("corinfomax", model, x_mean=[0.1, 0.2, 0.3], x_std=[1.0, 2.0, 4.0])
    x = torch.rand(2, 3, 2, 2)
    want = (x - torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)) / torch.tensor([1, 2, 4.0]).view(
        3, 1, 1
    )
    torch.testing.assert_close(rule.inputs(x), want.flatten(1))
    (pair,) = rule.feedback_pairs()
    assert torch.equal(pair.weight, model.blocks[1].op.weight) and torch.equal(
        pair.feedback, model.wb[0].T
    )
