"""SigProp (specs/sigprop.md §13): local losses against hand formulas, locality, no label leak.

Oracles: closed-form loss values on tiny tensors; masks written out from the labels; autograd of
one layer's local loss written out by hand on a coupled (non-detached) graph; the same layers
trained inside a shallower net; per-layer vs one optimizer.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bioprop.errors import BiopropError
from bioprop.models import build_model, count_params
from bioprop.rules import build_rule
from bioprop.rules.sigprop import (
    local_logits,
    local_loss,
    make_target,
    max_all_mask,
    max_index,
    similarity,
    topk_mask,
)

Y = torch.tensor([0, 1, 0, 2, 1, 0])


def _same_class(y):
    return (y[:, None] == y[None, :]).float()


def _mlp_rule(depth: int = 2, width: int = 16, **rule_args):
    torch.manual_seed(0)
    model = build_model("sigprop_mlp", (1, 4, 4), 3, width=width, depth=depth)
    return build_rule("sigprop", model, **rule_args)


def _batch(n: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g), torch.arange(n) % 3


def test_direct_loss_hand_value():
    """v1 with h = t = I₂, y = (0, 1): each row is CE([1, 0], 0) = log(1 + e⁻¹)."""
    eye = torch.eye(2)
    loss = local_loss(eye, eye, make_target("direct", torch.tensor([0, 1]), None, 6, "first"))
    assert abs(float(loss) - math.log(1 + math.exp(-1))) < 1e-6
    assert abs(float(loss) - 0.3132617) < 1e-6


def test_max_all_mask_is_same_class_with_tolerance():
    """With S = ccᵀ the v9 mask is 1[y_i = y_j]; a 1e-9 perturbation (exact float equality would
    drop it) stays a positive, a 1e-3 one does not."""
    c = F.one_hot(Y, 3).float()
    s = similarity(c)
    assert torch.equal(max_all_mask(s), _same_class(Y))
    s2 = s.clone()
    s2[0, 2] -= 1e-9
    s2[0, 5] -= 1e-3
    m = max_all_mask(s2)
    assert m[0, 2] == 1 and m[0, 5] == 0


def test_soft_ce_hand_value():
    """softCE(Y, M) = (1/B) Σ_i Σ_j −M_ij log softmax(Y_i)_j, written out with math.exp/log."""
    h = torch.tensor([[1.0, 0.0], [0.5, -1.0]])
    t = torch.tensor([[1.0, 2.0], [0.0, 1.0], [-1.0, 1.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    yl = [[sum(a * b for a, b in zip(hi, tj)) for tj in t.tolist()] for hi in h.tolist()]
    want = 0.0
    for i, row in enumerate(yl):
        lse = math.log(sum(math.exp(v) for v in row))
        want += sum(-m[i, j].item() * (row[j] - lse) for j in range(3))
    assert abs(float(local_loss(h, t, m)) - want / 2) < 1e-6


def test_topk_mask_rows():
    """v15: k ones per row, all of them same-class when the class has ≥ k members; a hand S."""
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    m = topk_mask(similarity(F.one_hot(y, 2).float()), 3)
    assert torch.equal(m.sum(1), torch.full((7,), 3.0))
    assert torch.all(m <= _same_class(y))
    s = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])
    assert torch.equal(topk_mask(s, 2), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))


def test_max_rand_first_and_random():
    """v14: 'first' picks min{j : y_j = y_i}; 'random' is uniform over the same-class j."""
    s = similarity(F.one_hot(Y, 3).float())
    first = max_index(s, "first")
    assert torch.equal(first, torch.tensor([0, 1, 0, 3, 1, 0]))
    draws = 2000
    a = max_index(s.repeat(draws, 1), "random").view(draws, len(Y))
    assert torch.equal(Y[a], Y.expand(draws, -1))
    for i in range(len(Y)):
        members = (Y[i] == Y).nonzero().flatten()
        freq = torch.stack([(a[:, i] == j).float().mean() for j in members])
        assert torch.all((freq - 1 / len(members)).abs() < 0.05), (i, freq)


def test_conv_logits_and_spatial_modes():
    """Conv: Y = mean over positions of per-position logits; 'per_position' = mean over p of the
    FC loss on (h[:, :, p], t[:, :, p]) with the same mask; the two differ on random data."""
    g = torch.Generator().manual_seed(0)
    h, t = torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g)
    per_p = [h[:, :, i, j] @ t[:, :, i, j].T for i in range(2) for j in range(2)]
    assert torch.allclose(local_logits(h, t), torch.stack(per_p).mean(0), atol=1e-6)
    assert torch.allclose(similarity(t), local_logits(t, t))
    m = topk_mask(similarity(t), 2)
    want = torch.stack([local_loss(hp[:, :, None], tp[:, :, None], m) for hp, tp in _pos(h, t)])
    got = local_loss(h, t, m, "per_position")
    assert torch.allclose(got, want.mean(), atol=1e-6)
    assert not torch.allclose(got, local_loss(h, t, m, "mean"), atol=1e-3)
    # logit_scale is an inverse temperature: scaling the logits equals scaling h (Y is linear
    # in h), in both spatial modes; scale 1 is the code's loss.
    for spatial in ("mean", "per_position"):
        got = local_loss(h, t, m, spatial, scale=3.0)
        assert torch.allclose(got, local_loss(3.0 * h, t, m, spatial), atol=1e-6)
        assert not torch.allclose(got, local_loss(h, t, m, spatial), atol=1e-3)


def _pos(h, t):
    return [(h[:, :, i, j], t[:, :, i, j]) for i in range(h.shape[2]) for j in range(h.shape[3])]


def test_grads_equal_autograd_of_each_local_loss_alone():
    """Each block's .grad = autograd of its own loss, written out by hand on a graph that is NOT
    detached between layers (so the hand losses also depend on earlier weights, and only the
    restriction to the layer's own parameters makes them local); the head gets CE only."""
    rule = _mlp_rule(loss="max_all")
    x, y = _batch()
    rule.train()
    rule.step(x, y)
    got = {n: p.grad.clone() for n, p in rule.model.named_parameters()}
    b, sig = rule.model.blocks, rule.model.signal
    c = F.one_hot(y, 3).float()
    h = F.relu(b[0].norm(b[0].op(x.flatten(1))))
    t = F.relu(sig.norm(sig.linear(c)))
    losses = [-(_same_class(y) * F.log_softmax(h @ t.T, 1)).sum(1).mean()]
    for blk in b[1:-1]:
        s = t @ t.T
        rowmax = s.max(1, keepdim=True).values
        m = (s >= rowmax - 1e-6 * rowmax.abs().clamp(min=1)).float()
        h, t = (F.leaky_relu(blk.norm(blk.op(a)), 0.01) for a in (h, t))
        losses.append(-(m * F.log_softmax(h @ t.T, 1)).sum(1).mean())
    losses.append(F.cross_entropy(b[-1].op(h), y))
    for i, loss in enumerate(losses):
        mods = [b[i], sig] if i == 0 else [b[i]]
        names = [f"blocks.{i}.{n}" for n, _ in b[i].named_parameters()]
        names += [f"signal.{n}" for n, _ in sig.named_parameters()] if i == 0 else []
        params = [p for m_ in mods for p in m_.parameters()]
        want = torch.autograd.grad(loss, params, retain_graph=True)
        for n, w in zip(names, want):
            assert torch.allclose(got[n], w, atol=1e-6, rtol=1e-5), n
    # the coupled graph does carry gradient across layers; the rule does not use it
    cross = torch.autograd.grad(losses[-1], list(b[0].parameters()), retain_graph=True)
    assert any(float(g.abs().max()) > 1e-6 for g in cross)


def test_outputs_carry_no_history():
    """Tensors passed between layers have no autograd history."""
    rule = _mlp_rule()
    x, y = _batch()
    h, t = x, rule.context(y)
    for i in range(rule.num_layers - 1):
        h, t, _ = rule.layer_step(i, h, t, y, 0)
        assert h.grad_fn is None and t.grad_fn is None
        assert not h.requires_grad and not t.requires_grad


@pytest.mark.parametrize("rule_name,equal", [("sigprop", True), ("bp", False)])
def test_locality_vs_depth(rule_name, equal):
    """Layers 0–1 (and g_c) after 3 Adam steps are identical in a 2- and a 5-block net under
    SigProp (dropout 0.2, random ties), and differ under BP (the check can fail)."""
    args = {"loss": "max_rand", "tie_break": "random"} if rule_name == "sigprop" else {}
    nets = []
    for depth in (1, 4):
        torch.manual_seed(depth)
        model = build_model("sigprop_mlp", (1, 4, 4), 3, width=16, depth=depth, dropout=0.2)
        nets.append(build_rule(rule_name, model, **args))
    shared = [
        k for k in nets[0].model.state_dict() if k.startswith(("blocks.0.", "blocks.1.", "signal."))
    ]
    nets[1].model.load_state_dict(
        {**nets[1].model.state_dict(), **{k: nets[0].model.state_dict()[k] for k in shared}}
    )
    for rule in nets:
        torch.manual_seed(5)  # BP's dropout draws from the global generator
        opt = torch.optim.Adam(rule.model.parameters(), lr=1e-2)
        rule.train()
        for step in range(3):
            x, y = _batch(seed=step)
            opt.zero_grad()
            rule.step(x, y)
            opt.step()
    a, b = nets[0].model.state_dict(), nets[1].model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in shared) == equal


@pytest.mark.parametrize("predict", ["head", "readout"])
def test_no_label_leak_and_eval_is_inert(predict):
    """predict sees x only: logits equal the label-free h-stream forward (the head, or the
    readout of the last hidden block against the class prototypes), training without labels
    raises, evaluation changes no parameter or buffer, a batch of 1 gives the same logits as a
    batch of 12 (IN/LN; the signal BN uses running statistics)."""
    rule = _mlp_rule(loss="topk", k=2, predict=predict)
    opt = torch.optim.Adam(rule.model.parameters(), lr=1e-2)
    for step in range(2):
        x, y = _batch(seed=step)
        opt.zero_grad()
        rule.step(x, y)
        opt.step()
    before = {k: v.clone() for k, v in rule.state_dict().items()}
    state = {k: v.clone() for k, v in opt.state_dict()["state"][0].items()}
    rule.eval()
    x, _ = _batch(seed=9)
    logits = rule.predict(x)
    want = rule.model(x) if predict == "head" else rule.readout_logits(x, 2)
    assert torch.equal(logits, want)
    assert torch.allclose(rule.predict(x[3:4]), logits[3:4], atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in rule.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in opt.state_dict()["state"][0].items())
    rule.train()
    with pytest.raises(ValueError):
        rule.step(x, None)


@pytest.mark.parametrize(("layer", "scale"), [(0, 1.0), (1, 1.0), (2, 1.0), (1, 4.0)])
def test_readout_logits_are_the_direct_local_logits(layer, scale):
    """In input-label mode the training forward of block ℓ scores h_ℓ against the class
    prototypes t_ℓ(I_C): its local loss (pre-step weights) must equal the cross-entropy of the
    readout logits on the same batch (LN nets, no dropout, so eval and train forwards agree),
    with the same logit_scale on both."""
    rule = _mlp_rule(loss="direct", predict="readout", readout_layer=layer, logit_scale=scale)
    x, y = _batch()
    want = F.cross_entropy(rule.readout_logits(x, layer), y)
    rule.step(x, y)
    assert abs(rule.metrics()[f"local_loss_{layer}"] - float(want)) < 1e-5
    rule.eval()
    logits = rule.predict(x)
    assert logits.shape == (len(x), 3)
    assert torch.equal(logits, rule.readout_logits(x, layer))
    assert not torch.equal(logits, rule.model(x))


@pytest.mark.parametrize("model", ["sigprop_cnn", "vgg"])
def test_one_step_changes_every_layer_conv(model):
    """A conv net: one train step writes a nonzero grad to every block and to g_c."""
    torch.manual_seed(0)
    kw = (
        {"channels": [4, 8], "fc": [16]} if model == "sigprop_cnn" else {"width": 1 / 32, "fc": 512}
    )
    rule = build_rule("sigprop", build_model(model, (3, 16, 16), 4, **kw), loss="topk", k=2)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 4
    rule.step(x, y)
    for i in range(rule.num_layers):
        assert all(float(p.grad.abs().sum()) > 0 for p in rule.layer_params(i)), i


def test_per_layer_optimizers_equal_one_optimizer():
    """Spec layout (a), one Adam per layer stepped inside the forward, equals layout (b), one
    Adam over all parameters stepped after the batch (train.py), bit for bit after 3 steps."""
    rules = [_mlp_rule(loss="max_rand", width=16) for _ in range(2)]
    for r in rules:
        r.model.blocks[1].drop = torch.nn.Dropout(0.2)
    one = torch.optim.Adam(rules[0].model.parameters(), lr=1e-2)
    per = [torch.optim.Adam(rules[1].layer_params(i), lr=1e-2) for i in range(rules[1].num_layers)]
    for step in range(3):
        x, y = _batch(seed=step)
        one.zero_grad()
        rules[0].step(x, y)
        one.step()
        h, t = x, rules[1].context(y)
        for i, opt in enumerate(per):
            opt.zero_grad()
            h, t, _ = rules[1].layer_step(i, h, t, y, step)
            opt.step()
    a, b = rules[0].model.state_dict(), rules[1].model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.1.op.weight"], _mlp_rule().model.blocks[1].op.weight)


def test_parameter_counts_match_spec():
    """specs/sigprop.md §6: counts with g_c (the rule adds it)."""
    for name, shape, c, want in [
        ("sigprop_mlp", (1, 28, 28), 10, 941_578),
        ("sigprop_cnn", (3, 32, 32), 10, 1_014_506),
        ("sigprop_cnn", (1, 28, 28), 10, 692_394),
        ("vgg", (3, 32, 32), 10, 10_624_010),
    ]:
        model = build_model(name, shape, c)
        build_rule("sigprop", model)
        assert count_params(model) == want, name


def test_bad_options_rejected():
    for bad in (
        {"loss": "v9"},
        {"k": 0},
        {"tie_break": "last"},
        {"spatial": "sum"},
        {"predict": "knn"},
        {"readout_layer": 3},
        {"readout_layer": -4},
        {"logit_scale": 0.0},
        {"logit_scale": -1.0},
    ):
        with pytest.raises(BiopropError, match="must"):
            _mlp_rule(**bad)


def test_digits_regression():
    """End to end through train.py's build/epoch/evaluate (its optimizer is built from
    model.parameters() after the rule, so g_c must be in the model to learn): the 8x8 digits,
    MLP-SP width 64, max-all loss, Adam 3e-3, 4 epochs. Measured 92.5 % test accuracy (seed 0,
    one thread); the threshold leaves room for platform differences only."""
    from bioprop.config import load_config
    from bioprop.train import build, evaluate, train_epoch

    sets = [
        "data.name=digits",
        "model.name=sigprop_mlp",
        "model.args.width=64",
        "model.args.depth=1",
        "rule.name=sigprop",
        "rule.args.loss=max_all",
        "optim.name=adam",
        "optim.lr=0.003",
        "data.batch_size=64",
        "threads=1",
        "log_every=0",
        "progress=false",
    ]
    threads = torch.get_num_threads()
    s = build(load_config(None, sets))
    w_c = s.rule.model.signal.linear.weight.clone()
    for epoch in range(1, 5):
        train_epoch(s, epoch, [])
    torch.set_num_threads(threads)
    assert not torch.equal(w_c, s.rule.model.signal.linear.weight)
    assert evaluate(s.rule, s.data.test, 256, s.device)["acc"] >= 0.88
