"""PEPITA against oracles: autograd at F = 0, feedback alignment in the small-F limit, explicit
loops for the conv update, the dropout mask shared by both passes, and the follow-up variants.

Everything is float64 and seeded; oracles are written here with plain tensors, independently of
``bioprop.rules.pepita`` (which only supplies the update under test).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as nnf
from torch import nn

from bioprop.errors import BiopropError
from bioprop.models.conv import convnet
from bioprop.models.mlp import mlp
from bioprop.models.net import Block, Net
from bioprop.rules import build_rule

pytestmark = pytest.mark.usefixtures("one_thread")


def make_mlp(widths, dropout=0.0, bias=True, seed=0) -> Net:
    torch.manual_seed(seed)
    return mlp(list(widths), dropout=dropout, bias=bias).double()


def ce_grads(model: Net, x, y) -> list[torch.Tensor]:
    """Autograd gradient of mean cross-entropy for every parameter, in model order."""
    params = list(model.parameters())
    with torch.enable_grad():
        loss = nnf.cross_entropy(model(x), y)
        return list(torch.autograd.grad(loss, params))


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


# -- F = 0 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule_name", ["pepita", "pepita_hebbian"])
def test_zero_feedback_is_bp_on_last_layer_fc(rule_name) -> None:
    """F = 0: both passes coincide (masks on), hidden G = 0 exactly and the last layer gets
    autograd's cross-entropy gradient under the same dropout masks; no graph is built.
    Breaks if the masks differ between passes or from nn.Dropout's, or the last-layer error or
    its 1/B is wrong."""
    model = make_mlp([12, 20, 16, 5], dropout=0.3)
    rule = build_rule(rule_name, model, feedback_scale=0.0)
    x, y = torch.rand(9, 12, dtype=torch.float64), torch.randint(0, 5, (9,))
    state = torch.get_rng_state()
    rule.step(x, y)
    torch.set_rng_state(state)  # nn.Dropout in autograd's forward draws the same masks
    bp = ce_grads(model, x, y)
    params = list(model.parameters())
    for p in params[:-2]:
        assert torch.equal(p.grad, torch.zeros_like(p))
    for p, g in zip(params[-2:], bp[-2:]):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=1e-10)
    assert all(p.grad.grad_fn is None and not p.grad.requires_grad for p in params)


def test_zero_feedback_is_bp_on_last_layer_conv() -> None:
    """The same for a conv net with two conv layers (padding, pooling) and biases."""
    torch.manual_seed(1)
    model = convnet((2, 8, 8), 4, channels=[3, 5], kernel=3, fc=[]).double()
    rule = build_rule("pepita", model, feedback_scale=0.0)
    x, y = torch.rand(6, 2, 8, 8, dtype=torch.float64), torch.randint(0, 4, (6,))
    rule.step(x, y)
    bp = ce_grads(model, x, y)
    params = list(model.parameters())
    for p in params[:-2]:
        assert torch.equal(p.grad, torch.zeros_like(p))
    for p, g in zip(params[-2:], bp[-2:]):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=1e-10)


# -- small F: feedback alignment with B = −s·W1·F -------------------------------------------


def fa_first_layer(w1, w2, feedback, x, y) -> torch.Tensor:
    """FA oracle: grad of ⟨e, h1·B_fb⟩/B w.r.t. W1 with e = softmax(W2 h1) − Y held fixed."""
    w1 = w1.clone().requires_grad_(True)
    with torch.enable_grad():
        h1 = torch.relu(x @ w1.T)
        e = (h1 @ w2.T).softmax(1) - nnf.one_hot(y, w2.shape[0]).double()
        (g,) = torch.autograd.grad((e.detach() * (h1 @ feedback)).sum() / len(x), w1)
    return g


@pytest.mark.parametrize("sign", [1, -1])
def test_small_feedback_limit_is_feedback_alignment(sign) -> None:
    """20-30-5, B = 16, F = εF₀: relative error of G₁ against FA with feedback −s·W₁F falls
    about 10x per decade of ε and is < 1e-2 at 1e-4; G_L − G_L^BP = O(ε). Breaks on a wrong
    sign of the modulation or of the hidden update, or a wrong input in the outer product."""
    model = make_mlp([20, 30, 5], bias=False)
    x, y = torch.rand(16, 20, dtype=torch.float64), torch.randint(0, 5, (16,))
    w1, w2 = (b.op.weight.detach().clone() for b in model.blocks)
    f0 = torch.randn(20, 5, dtype=torch.float64)
    bp_last = ce_grads(model, x, y)[-1]
    errors, last = [], []
    for eps in (1e-3, 1e-4, 1e-5):
        rule = build_rule("pepita", model, sign=sign)
        rule.F.copy_(eps * f0)
        rule.step(x, y)
        oracle = fa_first_layer(w1, w2, -sign * w1 @ (eps * f0), x, y)
        errors.append(rel(model.blocks[0].op.weight.grad, oracle))
        last.append(rel(model.blocks[1].op.weight.grad, bp_last))
    assert errors[1] < 1e-2
    for a, b in itertools.pairwise(errors):
        assert 5 < a / b < 20
    for a, b in itertools.pairwise(last):
        assert 5 < a / b < 20


# -- loops against the vectorised update ------------------------------------------------------


def patches(a: torch.Tensor, conv: nn.Conv2d, i: int, j: int) -> torch.Tensor:
    """The input patch (B, C_in, kh, kw) that output position (i, j) sees."""
    (ph, pw), (sh, sw), (kh, kw) = conv.padding, conv.stride, conv.kernel_size
    padded = nnf.pad(a, (pw, pw, ph, ph))
    return padded[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]


def loop_conv_update(a, delta, conv) -> torch.Tensor:
    """Σ_b Σ_positions delta[b, :, i, j] ⊗ patch[b, :, i, j], one sample and position at a time."""
    g = torch.zeros_like(conv.weight)
    for b in range(a.shape[0]):
        for i in range(delta.shape[2]):
            for j in range(delta.shape[3]):
                patch = patches(a[b : b + 1], conv, i, j)[0]
                g += delta[b, :, i, j].view(-1, 1, 1, 1) * patch.unsqueeze(0)
    return g


def tiny_conv_net(seed=0) -> Net:
    """8x8x2 → conv 3x3 pad 1 (3 ch) relu maxpool 2 → conv 2x2 stride 2 (4 ch) relu → fc 16→5."""
    torch.manual_seed(seed)
    blocks = [
        Block(nn.Conv2d(2, 3, 3, padding=1, bias=False), "relu", pool=nn.MaxPool2d(2)),
        Block(nn.Conv2d(3, 4, 2, stride=2, bias=False), "relu"),
        Block(nn.Linear(16, 5, bias=False), flatten=True),
    ]
    return Net(blocks, (2, 8, 8)).double()


def manual_conv_pepita(model: Net, F: torch.Tensor, x, y, sign: int):
    """Both passes with torch.nn.functional, the update with per-position loops (unscaled)."""
    (c1, c2, fc) = (b.op for b in model.blocks)

    def run(inp):
        h1 = torch.relu(nnf.conv2d(inp, c1.weight, padding=1))
        a2 = nnf.max_pool2d(h1, 2)
        h2 = torch.relu(nnf.conv2d(a2, c2.weight, stride=2))
        return h1, a2, h2, h2.flatten(1) @ fc.weight.T

    h1, _, h2, logits = run(x)
    e = logits.softmax(1) - nnf.one_hot(y, 5).double()
    x_mod = x + sign * (e @ F.T).view_as(x)
    hm1, am2, hm2, _ = run(x_mod)
    g1 = loop_conv_update(x_mod, h1 - hm1, c1)
    g2 = loop_conv_update(am2, h2 - hm2, c2)
    g3 = sum(torch.outer(e[b], hm2[b].flatten()) for b in range(len(x)))
    return g1, g2, g3, (h1.shape[2] * h1.shape[3], h2.shape[2] * h2.shape[3])


def test_conv_update_equals_loops() -> None:
    """Two conv layers: .grad = loop/B (``sum``), loop/(B·P), and the official quirk
    −loop/(B²·P); the fc layer equals a per-sample outer-product loop / B. Breaks on a wrong
    padding/stride in conv2d_weight, the wrong input (clean vs modulated, pre- vs post-pool)
    or a wrong scale."""
    x, y = torch.rand(3, 2, 8, 8, dtype=torch.float64), torch.randint(0, 5, (3,))
    model = tiny_conv_net()
    F = torch.randn(128, 5, dtype=torch.float64) * 0.1
    g1, g2, g3, (p1, p2) = manual_conv_pepita(model, F, x, y, sign=-1)
    cases = [
        ({}, 1.0, 1.0),
        ({"conv_scale": "mean_positions"}, 1.0 / p1, 1.0 / p2),
        (
            {"conv_scale": "mean_positions", "official_conv_quirk": True},
            -1 / (3 * p1),
            -1 / (3 * p2),
        ),
    ]
    for opts, s1, s2 in cases:
        rule = build_rule("pepita", model, **opts)
        rule.F.copy_(F)
        rule.step(x, y)
        ws = [b.op.weight.grad for b in model.blocks]
        torch.testing.assert_close(ws[0], g1 * s1 / 3, rtol=0, atol=1e-10)
        torch.testing.assert_close(ws[1], g2 * s2 / 3, rtol=0, atol=1e-10)
        torch.testing.assert_close(ws[2], g3 / 3, rtol=0, atol=1e-10)


def test_one_by_one_conv_equals_fc_rule() -> None:
    """A 1x1 conv on a 1x1 image is a linear layer: same .grad as the FC rule."""
    torch.manual_seed(0)
    conv = Net(
        [Block(nn.Conv2d(6, 8, 1, bias=True), "relu"), Block(nn.Linear(8, 3), flatten=True)],
        (6, 1, 1),
    ).double()
    fc = make_mlp([6, 8, 3])
    with torch.no_grad():
        fc.blocks[0].op.weight.copy_(conv.blocks[0].op.weight.view(8, 6))
        fc.blocks[0].op.bias.copy_(conv.blocks[0].op.bias)
        fc.blocks[1].op.load_state_dict(conv.blocks[1].op.state_dict())
    x, y = torch.rand(5, 6, 1, 1, dtype=torch.float64), torch.randint(0, 3, (5,))
    F = torch.randn(6, 3, dtype=torch.float64)
    for net, inp in ((conv, x), (fc, x.flatten(1))):
        rule = build_rule("pepita", net)
        rule.F.copy_(F)
        rule.step(inp, y)
    for pc, pf in zip(conv.parameters(), fc.parameters()):
        torch.testing.assert_close(pc.grad.view_as(pf), pf.grad, rtol=0, atol=1e-12)


def manual_mlp_passes(ws, F, x, y, sign, masks=None):
    """Clean and modulated pass of a bias-free ReLU MLP: activities, probs, targets, e."""
    masks = masks or [None] * (len(ws) - 1)

    def run(inp):
        hs = [inp]
        for w, m in zip(ws[:-1], masks):
            h = torch.relu(hs[-1] @ w.T)
            hs.append(h * m if m is not None else h)
        return hs, (hs[-1] @ ws[-1].T).softmax(1)

    hs, probs = run(x)
    target = nnf.one_hot(y, ws[-1].shape[0]).double()
    e = probs - target
    hms, probs_m = run(x + sign * e @ F.T)
    return hs, hms, probs, probs_m, target, e


@pytest.mark.parametrize("error", ["first", "modulated"])
def test_fc_update_equals_per_sample_loop(error) -> None:
    """Three weight layers: .grad equals Σ_b outer products / B with the modulated input and,
    for the last layer, e or e_mod as chosen."""
    model = make_mlp([7, 9, 6, 4], bias=False)
    ws = [b.op.weight.detach() for b in model.blocks]
    x, y = torch.rand(5, 7, dtype=torch.float64), torch.randint(0, 4, (5,))
    F = torch.randn(7, 4, dtype=torch.float64) * 0.3
    rule = build_rule("pepita", model, sign=1, error=error)
    rule.F.copy_(F)
    rule.step(x, y)
    hs, hms, _, probs_m, target, e = manual_mlp_passes(ws, F, x, y, sign=1)
    e_out = e if error == "first" else probs_m - target
    deltas = [hs[1] - hms[1], hs[2] - hms[2], e_out]
    for block, delta, pre in zip(model.blocks, deltas, hms):
        loop = sum(torch.outer(delta[b], pre[b]) for b in range(5)) / 5
        torch.testing.assert_close(block.op.weight.grad, loop, rtol=0, atol=1e-12)


# -- dropout ------------------------------------------------------------------------------------


def test_one_dropout_mask_serves_both_passes() -> None:
    """B = 1, p = 0.5: units dropped in the shared mask give zero rows of G_l and zero columns
    of G_{l+1}; with a second, independent mask some of those rows would not vanish. The mask
    is nn.Dropout's (same RNG draw), evaluation uses none, and its mean is 1 ± 0.01."""
    model = make_mlp([10, 40, 30, 3], dropout=0.5)
    rule = build_rule("pepita", model, feedback_scale=5.0)
    x, y = torch.rand(1, 10, dtype=torch.float64), torch.tensor([2])
    state = torch.get_rng_state()
    out = rule.step(x, y)
    torch.set_rng_state(state)
    with torch.no_grad():
        trace = model.trace(x)  # nn.Dropout draws from the same RNG state
    torch.testing.assert_close(out.logits, trace[-1].h, rtol=0, atol=1e-12)
    dropped = [(t.h == 0) & (t.z > 0) for t in trace[:-1]]  # active unit, zero output
    assert all(d.any() for d in dropped)
    g = [b.op.weight.grad for b in model.blocks]
    for layer, d in enumerate(dropped):
        assert torch.all(g[layer][d[0]] == 0)
        assert torch.all(g[layer + 1][:, d[0]] == 0)
        assert g[layer][~d[0] & (trace[layer].z[0] > 0)].abs().sum() > 0
    rule.eval()
    torch.testing.assert_close(rule.predict(x), model.eval()(x), rtol=0, atol=1e-12)
    rule.train()
    mask = rule._mask(model.blocks[0], torch.ones(200, 500, dtype=torch.float64))
    assert abs(float(mask.mean()) - 1) < 0.01


# -- variants -----------------------------------------------------------------------------------


def test_hebbian_is_pepita_plus_hebbian_correction() -> None:
    """Hebbian = PEPITA + h_lᵀ(h_{l−1} − hm_{l−1})/B at F ≠ 0 (output: yᵀh − Yᵀhm); its F = 0
    case (hidden G = 0, last layer = BP) is in the F = 0 test above."""
    model = make_mlp([8, 12, 10, 3], bias=False)
    ws = [b.op.weight.detach() for b in model.blocks]
    x, y = torch.rand(6, 8, dtype=torch.float64), torch.randint(0, 3, (6,))
    F = torch.randn(8, 3, dtype=torch.float64) * 0.2
    grads = {}
    for name in ("pepita", "pepita_hebbian"):
        rule = build_rule(name, model)
        rule.F.copy_(F)
        rule.step(x, y)
        grads[name] = [b.op.weight.grad.clone() for b in model.blocks]
    hs, hms, probs, *_ = manual_mlp_passes(ws, F, x, y, sign=-1)
    posts = [hs[1], hs[2], probs]
    for i, post in enumerate(posts):
        extra = post.T @ (hs[i] - hms[i]) / 6
        torch.testing.assert_close(
            grads["pepita_hebbian"][i], grads["pepita"][i] + extra, rtol=0, atol=1e-12
        )


@pytest.mark.parametrize("error", ["first", "modulated"])
def test_hebbian_layers_mix_the_two_updates(error) -> None:
    """hebbian_layers picks, layer by layer, the Hebbian update or PEPITA's: [] is PEPITA, and
    [0, -1] takes the full Hebbian rule's first and last layers and PEPITA's middle one."""
    model = make_mlp([8, 12, 10, 3], bias=False)
    x, y = torch.rand(6, 8, dtype=torch.float64), torch.randint(0, 3, (6,))
    F = torch.randn(8, 3, dtype=torch.float64) * 0.2

    def grads(name, **opts):
        rule = build_rule(name, model, error=error, **opts)
        rule.F.copy_(F)
        rule.step(x, y)
        return [b.op.weight.grad.clone() for b in model.blocks]

    pep, heb = grads("pepita"), grads("pepita_hebbian")
    for got, want in zip(grads("pepita_hebbian", hebbian_layers=[]), pep):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    mixed = grads("pepita_hebbian", hebbian_layers=[0, -1])
    for got, want in zip(mixed, [heb[0], pep[1], heb[2]]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert rel(heb[1], pep[1]) > 1e-3  # the middle layer's two updates do differ
    with pytest.raises(BiopropError, match="out of range"):
        build_rule("pepita_hebbian", model, hebbian_layers=[3])


def test_time_local_step_sums_to_hebbian() -> None:
    """lr = 0 and shared masks: the two optimizer steps of time-local see grads (a) h_lᵀh_{l−1}
    and (b) −hm_lᵀhm_{l−1} that add up to PEPITA-Hebbian's, with dropout on."""
    model = make_mlp([8, 12, 10, 3], dropout=0.2)
    x, y = torch.rand(6, 8, dtype=torch.float64), torch.randint(0, 3, (6,))
    F = torch.randn(8, 3, dtype=torch.float64) * 0.2
    params = list(model.parameters())
    tl = build_rule("pepita_tl", model, fresh_masks=False)
    tl.F.copy_(F)
    opt = torch.optim.SGD(params, lr=0.0)
    seen = []
    opt.register_step_pre_hook(lambda *_: seen.append([p.grad.clone() for p in params]))
    tl.attach_optimizer(opt)
    torch.manual_seed(3)
    tl.step(x, y)
    opt.step()
    heb = build_rule("pepita_hebbian", model)
    heb.F.copy_(F)
    torch.manual_seed(3)
    heb.step(x, y)
    assert len(seen) == 2
    for p, a, b in zip(params, *seen):
        torch.testing.assert_close(a + b, p.grad, rtol=0, atol=1e-12)
        assert a.abs().sum() > 0 and b.abs().sum() > 0


def test_time_local_fresh_masks() -> None:
    """fresh_masks (official): pass 2 draws its own dropout mask. B = 1, lr = 0: the units
    silenced by dropout (active pre-activation, zero row of G) differ between (a) and (b),
    and both sets are non-empty."""
    model = make_mlp([10, 40, 3], dropout=0.5, bias=False)
    x, y = torch.rand(1, 10, dtype=torch.float64), torch.tensor([1])
    F = torch.randn(10, 3, dtype=torch.float64) * 0.2
    w1 = model.blocks[0].op.weight.detach().clone()
    rule = build_rule("pepita_tl", model)
    rule.F.copy_(F)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    seen = []
    opt.register_step_pre_hook(lambda *_: seen.append(model.blocks[0].op.weight.grad.clone()))
    rule.attach_optimizer(opt)
    out = rule.step(x, y)
    opt.step()
    e = out.logits.softmax(1) - nnf.one_hot(y, 3).double()
    z, z_mod = x @ w1.T, (x - e @ F.T) @ w1.T
    dropped_a = (seen[0].abs().sum(1) == 0) & (z[0] > 0)
    dropped_b = (seen[1].abs().sum(1) == 0) & (z_mod[0] > 0)
    assert dropped_a.any() and dropped_b.any()
    assert not torch.equal(dropped_a, dropped_b)


def test_time_local_second_pass_uses_updated_weights() -> None:
    """With lr > 0 the modulated pass runs on the weights after step (a): its grads equal the
    (b) grads computed by hand from those weights."""
    model = make_mlp([8, 12, 3], bias=False)
    x, y = torch.rand(6, 8, dtype=torch.float64), torch.randint(0, 3, (6,))
    F = torch.randn(8, 3, dtype=torch.float64) * 0.2
    rule = build_rule("pepita_tl", model)
    rule.F.copy_(F)
    rule.attach_optimizer(torch.optim.SGD(model.parameters(), lr=0.5))
    ws0 = [b.op.weight.detach().clone() for b in model.blocks]
    rule.step(x, y)
    _, _, _, _, _, e = manual_mlp_passes(ws0, F, x, y, sign=-1)
    ws1 = [b.op.weight.detach() for b in model.blocks]
    hm1 = torch.relu((x - e @ F.T) @ ws1[0].T)
    target = nnf.one_hot(y, 3).double()
    torch.testing.assert_close(ws1[0], ws0[0] - 0.5 * (torch.relu(x @ ws0[0].T).T @ x / 6))
    torch.testing.assert_close(model.blocks[0].op.weight.grad, -hm1.T @ (x - e @ F.T) / 6)
    torch.testing.assert_close(model.blocks[1].op.weight.grad, -target.T @ hm1 / 6)


@pytest.mark.parametrize("kind", ["sample", "batch"])
def test_activation_normalisation(kind) -> None:
    """Hidden activities are divided by their per-sample L2 norm (or the batch Frobenius norm)
    in both passes and at evaluation; the update uses the normalised activities."""
    model = make_mlp([8, 12, 3], bias=False)
    ws = [b.op.weight.detach() for b in model.blocks]
    x, y = torch.rand(6, 8, dtype=torch.float64), torch.randint(0, 3, (6,))
    F = torch.randn(8, 3, dtype=torch.float64) * 0.2
    rule = build_rule("pepita", model, normalize=kind)
    rule.F.copy_(F)
    rule.step(x, y)

    def hidden(inp):
        h = torch.relu(inp @ ws[0].T)
        return h / (h.norm(dim=1, keepdim=True) if kind == "sample" else h.norm())

    logits = hidden(x) @ ws[1].T
    e = logits.softmax(1) - nnf.one_hot(y, 3).double()
    x_mod = x - e @ F.T
    torch.testing.assert_close(
        model.blocks[0].op.weight.grad, (hidden(x) - hidden(x_mod)).T @ x_mod / 6
    )
    torch.testing.assert_close(model.blocks[1].op.weight.grad, e.T @ hidden(x_mod) / 6)
    torch.testing.assert_close(rule.predict(x), logits)


def test_feedback_distributions_and_pairs() -> None:
    """F's bound and std follow the spec (CIFAR |F| ≤ 2.21e-3); the factorised F has std σ_F
    within sampling error; feedback_pairs reports (W_L⋯W_2, (−s·W₁F)ᵀ)."""
    torch.manual_seed(0)
    net = mlp([3072, 64, 10], bias=False)
    uniform = build_rule("pepita", net).F
    assert float(uniform.abs().max()) <= 0.05 * (6 / 3072) ** 0.5 and uniform.abs().max() > 2.1e-3
    sigma = 0.05 * (2 / 3072) ** 0.5
    normal = build_rule("pepita", net, feedback="normal").F
    assert abs(float(normal.std()) / sigma - 1) < 0.05
    deep = mlp([3072, 64, 32, 10], bias=False)
    fact = build_rule("pepita", deep, feedback="factorised")
    assert abs(float(fact.F.std()) / sigma - 1) < 0.3  # a product of 3 random matrices
    torch.testing.assert_close(fact.F, fact.B1 @ fact.B2 @ fact.B3)
    (pair,) = fact.feedback_pairs()
    w = [b.op.weight for b in deep.blocks]
    torch.testing.assert_close(pair.weight, w[2] @ w[1])
    torch.testing.assert_close(pair.feedback, (w[0] @ fact.F).T)


def test_bad_options_are_rejected() -> None:
    net = make_mlp([4, 5, 2])
    for opts in (
        {"sign": 0},
        {"error": "second"},
        {"feedback": "cauchy"},
        {"mirror_every": 1},  # needs a factorised F
        {"mirror_every": 1, "feedback": "factorised", "sign": 1},
        {"mirror_every": 1, "feedback": "factorised", "mirror_spectrum": "sorted"},
    ):
        with pytest.raises(BiopropError):
            build_rule("pepita", net, **opts)
