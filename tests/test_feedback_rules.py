"""Feedback-alignment rules on bioprop's nets: DFA, sign concordance, BM/NSC, diagnostics,
training and resume (specs/feedback-alignment.md §9, 1, 5, 6, 8, 9, 11).

Oracles: the ``bp`` rule (autograd), DFA's δ written out by hand, sign identities, and an
uninterrupted run for resume.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bioprop.diagnostics import alignment, angle_deg
from bioprop.models import build_model
from bioprop.rules import build_rule
from bioprop.train import build, evaluate, train_epoch
from tests.conftest import tiny_config, train_cut_and_resumed

ATOL = 1e-10


pytestmark = pytest.mark.usefixtures("one_thread")


NETS = {
    "mlp": ((1, 6, 6), {"hidden": [12, 8], "activation": "tanh"}),
    "convnet": ((2, 8, 8), {"channels": [3, 4], "kernel": 3, "fc": [6], "norm": "batch"}),
    "lenet5": ((1, 28, 28), {}),
}


def make(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    shape, args = NETS[name]
    model = build_model(name, shape, 5, **args).double()
    x = torch.randn(6, *shape, dtype=torch.float64)
    return model, x, torch.tensor([0, 1, 2, 3, 4, 0])


def bp_grads(model: torch.nn.Module, x, y) -> list[torch.Tensor]:
    rule = build_rule("bp", copy.deepcopy(model))
    rule.step(x, y)
    return [p.grad for p in rule.model.parameters()]


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("rule", ["fa", "scfa"])
def test_nets_with_feedback_equal_to_weights_are_bp(net: str, rule: str) -> None:
    """MLP, conv net (with batch norm) and LeNet-5: FA with R = W and SCFA with M = |W| write
    the same .grad as autograd BP, for every parameter."""
    torch.manual_seed(10)
    model, x, y = make(net)
    want = bp_grads(model, x, y)
    kw = {"magnitude": "abs_w"} if rule == "scfa" else {}
    r = build_rule(rule, model, **kw)
    for m in r.layers if rule == "fa" else ():
        m.R = m.weight.detach().clone()
    r.step(x, y)
    for p, w in zip(r.model.parameters(), want):
        torch.testing.assert_close(p.grad, w, atol=ATOL, rtol=0)


@pytest.mark.parametrize("net", NETS)
@pytest.mark.parametrize("rule", ["fa", "dfa", "usf", "brsf", "frsf"])
def test_output_layer_update_is_bp(net: str, rule: str) -> None:
    """The output layer's update needs no transport: every rule must equal BP there (and,
    with random feedback, differ from BP below it)."""
    torch.manual_seed(11)
    model, x, y = make(net)
    want = bp_grads(model, x, y)
    r = build_rule(rule, model)
    r.step(x, y)
    got = [p.grad for p in r.model.parameters()]
    for g, w in zip(got[-2:], want[-2:]):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)
    assert not torch.allclose(got[-4], want[-4])


@pytest.mark.parametrize("net", ["mlp", "convnet"])
def test_dfa_hidden_delta_is_projected_output_error(net: str) -> None:
    """For every hidden block, δ at its output h_l is e D_l (e = ∂L/∂logits, D_l the layer's
    matrix) and the weight gradient is that δ pulled back through the block's own
    post-processing (activation, pooling, norm) to z_l, then δ_z^T a_l."""
    torch.manual_seed(12)
    model, x, y = make(net)
    r = build_rule("dfa", model)
    r.step(x, y)
    with torch.no_grad():
        trace = r.model.trace(x)
    e = (torch.softmax(trace[-1].h, 1) - F.one_hot(y, 5).double()) / len(y)
    blocks = list(r.model.blocks)
    for i, (block, t) in enumerate(zip(blocks[:-1], trace[:-1])):
        D = blocks[i + 1].op.D
        z = t.z.detach().requires_grad_(True)
        with torch.enable_grad():
            h = block.post(z)
        (delta_z,) = torch.autograd.grad(h, z, (e @ D).reshape(h.shape))
        a, W = t.a, block.op.weight
        if isinstance(block.op, torch.nn.Conv2d):
            want = torch.nn.grad.conv2d_weight(a, W.shape, delta_z, padding=block.op.padding)
        else:
            want = delta_z.T @ a
        torch.testing.assert_close(W.grad, want, atol=ATOL, rtol=0)


def test_dfa_with_one_hidden_layer_and_d_equal_w2_is_bp() -> None:
    """With one hidden layer, e D_1 with D_1 = W_2 is exactly BP's δ_1 W_2."""
    torch.manual_seed(13)
    model = build_model("mlp", (7,), 4, hidden=[9], activation="tanh").double()
    x, y = torch.randn(5, 7, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])
    want = bp_grads(model, x, y)
    r = build_rule("dfa", model)
    r.layers[1].D = r.layers[1].weight.detach().clone()
    r.step(x, y)
    for p, w in zip(r.model.parameters(), want):
        torch.testing.assert_close(p.grad, w, atol=ATOL, rtol=0)


def concordance(rule) -> float:
    """Worst layer's fraction of sign agreement, counted here from feedback_pairs by hand."""
    values = []
    for pair in rule.feedback_pairs():
        nz = pair.weight != 0
        same = torch.sign(pair.feedback) == torch.sign(pair.weight)
        values.append(float(same[nz].float().mean()))
    assert abs(min(values) - min(rule.metrics().values())) < 1e-6  # the logged metric agrees
    return min(values)


def run_steps(rule_name: str, steps: int = 5, **kw) -> tuple[float, float]:
    """(min concordance over steps, fraction of weights that crossed zero) at a large lr."""
    torch.manual_seed(14)
    model = build_model("mlp", (10,), 4, hidden=[16, 16])
    r = build_rule(rule_name, model, **kw)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    r.attach_optimizer(opt)
    w0 = [m.weight.detach().clone() for m in r.layers]
    x, y = torch.randn(32, 10), torch.randint(0, 4, (32,))
    worst = 1.0
    for _ in range(steps):
        opt.zero_grad()
        r.step(x, y)
        worst = min(worst, concordance(r))
        opt.step()
    flipped = sum(int((torch.sign(m.weight) != torch.sign(w)).sum()) for m, w in zip(r.layers, w0))
    return worst, flipped / sum(w.numel() for w in w0)


@pytest.mark.parametrize("rule", ["usf", "brsf", "frsf"])
def test_sign_feedback_stays_concordant_while_weights_cross_zero(rule: str) -> None:
    worst, flipped = run_steps(rule)
    assert flipped > 0.01
    assert worst == 1.0


def test_signed_fa_loses_concordance_unless_signs_are_frozen() -> None:
    """FA with R = s·sign(W_0): frozen feedback signs drift from W's as weights cross zero;
    with nsc no weight changes sign, so concordance stays 1."""
    worst, flipped = run_steps("fa", steps=6, signed_init=True)
    assert flipped > 0.01 and worst < 1.0
    worst, flipped = run_steps("fa", steps=6, signed_init=True, nsc=True)
    assert flipped == 0 and worst == 1.0


def test_batch_manhattan_writes_signs() -> None:
    torch.manual_seed(15)
    model, x, y = make("mlp")
    r = build_rule("fa", model, bm=True)
    r.step(x, y)
    for p in model.parameters():
        assert set(p.grad.unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_last_layer_bp_sends_the_error_through_w() -> None:
    """Two layers, last_layer='bp': the only transport is through W_2, so uSF equals BP."""
    torch.manual_seed(16)
    model = build_model("mlp", (7,), 4, hidden=[9]).double()
    x, y = torch.randn(5, 7, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])
    want = bp_grads(model, x, y)
    r = build_rule("usf", model, last_layer="bp")
    r.step(x, y)
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w, atol=ATOL, rtol=0)


def test_diagnostics_cosine_and_angles() -> None:
    """cos = 1 for BP; for FA < 1 below the output layer and 1 at it. frSF's angle is that of
    |M|∘sign(W) against W, not of the stored M. The BP probe leaves .grad and Adam's state alone."""
    torch.manual_seed(17)
    model, x, y = make("mlp")
    rng = torch.get_rng_state()
    bp = build_rule("bp", copy.deepcopy(model))
    bp.step(x, y)
    assert all(abs(v - 1) < 1e-12 for k, v in alignment(bp, x, y, rng).items())

    fa = build_rule("fa", copy.deepcopy(model))
    fa.step(x, y)
    cos = {k: v for k, v in alignment(fa, x, y, rng).items() if k.startswith("cos/")}
    assert abs(cos["cos/blocks.2.op.weight"] - 1) < 1e-12
    assert cos["cos/blocks.1.op.weight"] < 0.99 and cos["cos/blocks.0.op.weight"] < 0.99

    fr = build_rule("frsf", copy.deepcopy(model))
    opt = torch.optim.Adam(fr.model.parameters())
    fr.step(x, y)
    opt.step()
    fr.step(x, y)
    grads = [p.grad.clone() for p in fr.model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    diag = alignment(fr, x, y, rng)
    top = fr.model.blocks[1].op
    W = top.weight.detach()
    assert abs(diag["angle/blocks.1.op"] - angle_deg(W, top.M.abs() * torch.sign(W))) < 1e-9
    assert abs(diag["angle/blocks.1.op"] - angle_deg(W, top.M)) > 20
    for p, g in zip(fr.model.parameters(), grads):
        assert torch.equal(p.grad, g)
    after = opt.state_dict()
    for k in state["state"]:
        for name, v in state["state"][k].items():
            assert torch.equal(after["state"][k][name], v)


@pytest.mark.parametrize("rule", ["fa", "brsf"])
def test_resumed_run_equals_uninterrupted(tmp_path, monkeypatch, rule: str) -> None:
    """Feedback state (R; M and brSF's generator) is in the checkpoint: a run cut after epoch 1
    and resumed ends bit-identical to one trained for 2 epochs straight (DFA's D: see the
    state_dict round trip in test_feedback.py)."""
    sets = ("epochs=2", f"rule.name={rule}", "diagnostics_every=20", "threads=1")
    full, resumed, *_ = train_cut_and_resumed(tmp_path, monkeypatch, sets, cut_epoch=2)
    assert full["final_test_acc"] == resumed["final_test_acc"]


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "usf", "brsf", "frsf", "scfa"])
def test_every_rule_learns_the_digits(tmp_path, rule: str) -> None:
    """Smoke test on the embedded 8x8 digits (3 epochs, MLP 64-32-10, the loop's own epoch
    and evaluation); the threshold was calibrated once (BP and FA reach about 94 %) and frozen."""
    s = build(tiny_config(tmp_path, f"rule.name={rule}", "log_every=0", "threads=1"))
    history: list = []
    for epoch in (1, 2, 3):
        train_epoch(s, epoch, history)
    assert evaluate(s.rule, s.data.test, 1000, s.device)["acc"] >= 0.85
