"""BMVR / Bio-RRR against closed forms: the offline optimum, its identities, and the online rule.

Synthetic problem of spec §10 (float64): m=10, n=6, k=2, T=5000, singular values about
3.05, 1.81, 0.51, so the rank-2 optimum is well separated.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bioprop import linalg
from bioprop.errors import BiopropError
from bioprop.models import mlp
from bioprop.rules.bmvr import BMVR

M, N, K, T = 10, 6, 2, 5000


pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return linalg.synthetic_problem(seed, T)


@pytest.fixture(scope="module")
def problem() -> dict:
    x, y = synthetic()
    cxx, cxy, cyy = linalg.covariances(x, y)
    return {"x": x, "y": y, "cxx": cxx, "cxy": cxy, "cyy": cyy}


def make_rule(k: int = K, seed: int = 0, **kw) -> BMVR:
    torch.manual_seed(seed)
    net = mlp([M, k, N], activation=kw.pop("activation", "identity"), bias=False).double()
    return BMVR(net, **kw)


def exact_rows(cxx, cxy, cyy) -> tuple[torch.Tensor, torch.Tensor]:
    """m+n rows whose empirical covariances equal (Cxx, Cxy, Cyy) exactly: one batch of them is
    a gradient-descent-ascent step with exact covariances."""
    c = torch.cat([torch.cat([cxx, cxy], 1), torch.cat([cxy.T, cyy], 1)], 0)
    rows = math.sqrt(len(c)) * linalg.psd_power(c, 0.5, rcond=0)
    return rows[:, :M], rows[:, M:]


def whiten(rule: BMVR, cxx: torch.Tensor) -> None:
    with torch.no_grad():
        vx = rule.w1.T
        rule.w1.copy_((vx @ linalg.psd_power(vx.T @ cxx @ vx, -0.5)).T)


# ---- offline solution -------------------------------------------------------------------------


def test_offline_rrr_is_rank_k_projection_of_ols(problem):
    """The SVD recipe must give P_k·B_ols (the classical RRR map) and whitened hidden units."""
    sol = linalg.solve_rrr(problem["cxx"], problem["cxy"], problem["cyy"], K)
    ref = linalg.rank_k_projection_of_ols(problem["cxx"], problem["cxy"], K)
    assert float((sol.vy @ sol.vx.T - ref).abs().max()) < 1e-10
    eye = torch.eye(K, dtype=torch.float64)
    assert float((sol.vx.T @ problem["cxx"] @ sol.vx - eye).abs().max()) < 1e-10
    assert sol.sigma[1] > 1.5 and sol.sigma[2] < 0.7  # the gap the other tests rely on


def test_ridge_reference_is_rank_k_ridge_map_on_true_objective(problem):
    """The ridge reference (rank-k optimum of Cxx + λI, scored on Cxx) equals numpy's rank-k
    projection of the ridge map B = Cyx(Cxx + λI)⁻¹ in the metric Cxx + λI, scored sample by
    sample; it lies above L* and tends to it as λ → 0; the rule logs it."""
    from bioprop.data import Split

    x, y = problem["x"].numpy(), problem["y"].numpy()
    c = (problem["cxx"], problem["cxy"], problem["cyy"])
    lam_star = linalg.solve_rrr(*c, K).loss
    for lam in (0.3, 0.05):
        cr = x.T @ x / T + lam * np.eye(M)
        b = np.linalg.solve(cr, x.T @ y / T).T
        _, vec = np.linalg.eigh(b @ cr @ b.T)
        b_k = vec[:, -K:] @ vec[:, -K:].T @ b
        oracle = np.mean(np.sum((y - x @ b_k.T) ** 2, axis=1))
        got = linalg.ridge_rrr_loss(*c, K, lam)
        assert abs(got / oracle - 1) < 1e-10
        assert got > lam_star * (1 + 1e-6)
    assert abs(linalg.ridge_rrr_loss(*c, K, 1e-9) / lam_star - 1) < 1e-6
    rule = make_rule(K, ref_ridge=0.3, scale_inputs=False)
    rule.prepare(Split(problem["x"], problem["y"]))
    assert abs(rule.metrics()["bmvr/loss_ridge"] / linalg.ridge_rrr_loss(*c, K, 0.3) - 1) < 1e-10
    assert "bmvr/loss_ridge" not in make_rule(K).metrics()


@pytest.mark.parametrize("s", [0.0, 0.3, 1.0])
def test_optimal_loss_formula(problem, s):
    """L* = Tr(S⁻¹Cyy) − Σσ² must equal the loss measured sample by sample at (Vx*, Vy*)."""
    x, y = problem["x"].numpy(), problem["y"].numpy()
    sol = linalg.solve_rrr(problem["cxx"], problem["cxy"], problem["cyy"], K, s)
    smat = s * (y.T @ y / T) + (1 - s) * np.eye(N)
    resid = y - x @ (smat @ sol.vy.numpy() @ sol.vx.numpy().T).T
    empirical = np.mean(np.sum(resid @ np.linalg.inv(smat) * resid, axis=1))
    assert abs(empirical / sol.loss - 1) < 1e-10
    assert (
        abs(
            linalg.rrr_loss(sol.vx, sol.vy, problem["cxx"], problem["cxy"], problem["cyy"], s)
            / sol.loss
            - 1
        )
        < 1e-10
    )
    if s == 1.0:  # CCA: L* = n − Σρ², with ρ the canonical correlations (all ≤ 1)
        assert abs(sol.loss - (N - float((sol.sigma[:K] ** 2).sum()))) < 1e-10
        assert float(sol.sigma.max()) <= 1 + 1e-12


def test_plateau_identity_at_offline_optimum(problem):
    """At the saddle, a − Q·n = W2ᵀ·(y − Cyx·Cxx⁻¹·x) for any x, y (s = 0)."""
    sol = linalg.solve_rrr(problem["cxx"], problem["cxy"], problem["cyy"], K)
    rule = make_rule()
    with torch.no_grad():
        rule.w1.copy_(sol.vx.T)
        rule.w2.copy_(sol.vy)
        rule.Q.copy_(linalg.psd_power(sol.vx.T @ problem["cxy"] @ sol.vy, 0.5))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, M, generator=gen, dtype=torch.float64)
    y = torch.randn(7, N, generator=gen, dtype=torch.float64)
    z, _ = rule.hidden(x)
    _, _, p = rule.currents(z, y)
    ols = torch.linalg.solve(problem["cxx"], problem["cxy"])  # Cxx⁻¹·Cxy
    assert float((p - (y - x @ ols) @ sol.vy).abs().max().detach()) < 1e-10


# ---- the rule through .grad and an optimizer ----------------------------------------------


def sgd_steps(rule: BMVR, x, y, lr: float, steps: int, batch: int | None = None) -> None:
    opt = torch.optim.SGD(rule.model.parameters(), lr=lr, momentum=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = slice(None) if batch is None else torch.randperm(len(x), generator=gen)[:batch]
        opt.zero_grad(set_to_none=True)
        rule.step(x[idx], y[idx])
        opt.step()


def test_one_step_matches_hand_coded_rule_with_schedule():
    """.grad = −dθ·f(t) plus SGD(lr=ηx) must equal the spec's update written out in numpy,
    including the per-parameter rates and f(t) = 1/(1+t/t0) with t = samples seen before."""
    gen = torch.Generator().manual_seed(3)
    xs = torch.randn(2, 4, M, generator=gen, dtype=torch.float64)
    ys = torch.randn(2, 4, N, generator=gen, dtype=torch.float64)
    eta_x, eta_y, eta_q, t0, s = 0.03, 0.01, 0.02, 10.0, 0.3
    rule = make_rule(3, eta_q=eta_q, y_rate=eta_y / eta_x, t0=t0, s=s)
    vx, vy = rule.w1.detach().numpy().T.copy(), rule.w2.detach().numpy().copy()
    q = rule.Q.numpy().copy()
    opt = torch.optim.SGD(rule.model.parameters(), lr=eta_x, momentum=0.0)
    for i in range(2):
        opt.zero_grad(set_to_none=True)
        rule.step(xs[i], ys[i])
        opt.step()
        x, y, f = xs[i].numpy(), ys[i].numpy(), 1 / (1 + 4 * i / t0)
        z = x @ vx
        a, n = y @ vy, z @ q
        p = a - n @ q.T
        dvx, dq = x.T @ p / 4, z.T @ n / 4 - q
        dvy = y.T @ z / 4 - s * y.T @ a / 4 - (1 - s) * vy
        vx, vy, q = vx + eta_x * f * dvx, vy + eta_y * f * dvy, q + eta_q * f * dq
    assert np.abs(rule.w1.detach().numpy().T - vx).max() < 1e-12
    assert np.abs(rule.w2.detach().numpy() - vy).max() < 1e-12
    assert np.abs(rule.Q.numpy() - q).max() < 1e-12
    assert float(rule.t) == 8


def test_q_ascends_when_constraint_is_violated(problem):
    """With VxᵀCxxVx = 2I the multiplier must grow (ascent): a descending Q would shrink."""
    rule = make_rule(eta_q=0.05)
    whiten(rule, problem["cxx"])
    with torch.no_grad():
        rule.w1.mul_(math.sqrt(2))
    x, y = exact_rows(problem["cxx"], problem["cxy"], problem["cyy"])
    before = float(rule.Q.norm())
    sgd_steps(rule, x, y, lr=0.05, steps=1)
    assert float(rule.Q.norm()) > before * 1.04


def gda(problem, s: float, eta: float, steps: int, seed: int, ridge: float = 0.0) -> BMVR:
    rule = make_rule(seed=seed, eta_q=eta / 0.5, s=s, check_every=10**9, ridge=ridge)
    whiten(rule, problem["cxx"])
    x, y = exact_rows(problem["cxx"], problem["cxy"], problem["cyy"])
    sgd_steps(rule, x, y, lr=eta, steps=steps)
    return rule


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_gda_with_exact_covariances_reaches_offline_optimum(problem, seed):
    """Spec §10.3 (s = 0): subspace, constraint, map, Lagrange multiplier and plateau."""
    cxx, cxy, cyy = problem["cxx"], problem["cxy"], problem["cyy"]
    sol = linalg.solve_rrr(cxx, cxy, cyy, K)
    rule = gda(problem, 0.0, 0.05, 3000, seed)
    vx, vy = rule.w1.T.detach(), rule.w2.detach()
    assert linalg.subspace_distance(vx, sol.vx) < 1e-12
    assert linalg.constraint_error(vx, cxx) < 1e-8
    b_rrr = sol.vy @ sol.vx.T
    assert (
        float(torch.linalg.matrix_norm(vy @ vx.T - b_rrr) / torch.linalg.matrix_norm(b_rrr)) < 1e-8
    )
    qq = torch.linalg.eigvalsh(rule.Q @ rule.Q.T)
    assert float((qq - sol.sigma[:K].flip(0) ** 2).abs().max()) < 1e-6
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, M, generator=gen, dtype=torch.float64)
    y = torch.randn(5, N, generator=gen, dtype=torch.float64)
    _, _, p = rule.currents(rule.hidden(x)[0], y)
    assert float((p - (y - x @ torch.linalg.solve(cxx, cxy)) @ vy).abs().max()) < 1e-6


def test_ridge_gda_reaches_the_ridge_optimum(problem):
    """With ``ridge`` = λ the saddle is the rank-k optimum of Cxx + λI (spec §9's optional
    terms): subspace, constraint Vxᵀ(Cxx + λI)Vx = I, map, and eig(QQᵀ) = the ridge σ²; the
    plain optimum is not (λ large enough to move it)."""
    cxx, cxy, cyy = problem["cxx"], problem["cxy"], problem["cyy"]
    lam = 0.3
    cr = cxx + lam * torch.eye(M, dtype=cxx.dtype)
    sol = linalg.solve_rrr(cr, cxy, cyy, K)
    rule = gda(problem, 0.0, 0.05, 3000, 0, ridge=lam)
    vx, vy = rule.w1.T.detach(), rule.w2.detach()
    assert linalg.subspace_distance(vx, sol.vx) < 1e-12
    assert linalg.constraint_error(vx, cr) < 1e-8
    b_ridge = sol.vy @ sol.vx.T
    assert float(torch.linalg.matrix_norm(vy @ vx.T - b_ridge) / b_ridge.norm()) < 1e-8
    qq = torch.linalg.eigvalsh(rule.Q @ rule.Q.T)
    assert float((qq - sol.sigma[:K].flip(0) ** 2).abs().max()) < 1e-6
    plain = linalg.solve_rrr(cxx, cxy, cyy, K)
    assert linalg.subspace_distance(vx, plain.vx) > 1e-4
    with pytest.raises(ValueError, match="ridge"):
        make_rule(ridge=0.1, update="bp")


@pytest.mark.parametrize("s", [0.0, 0.3, 1.0])
def test_offline_optimum_is_a_fixed_point_of_the_rule(problem, s):
    """With exact covariances the update vanishes at (Vx*, Vy*, Q*), Q*Q*ᵀ = Vx*ᵀCxyVy*, for
    every s: the rule's saddle is the Bio-RRR / CCA optimum, where the bound L̃ is tight.
    (For s = 1 plain GDA at τ = 0.5 oscillates on this problem instead of converging; see
    docs/bmvr-notes.md.)"""
    cxx, cxy, cyy = problem["cxx"], problem["cxy"], problem["cyy"]
    sol = linalg.solve_rrr(cxx, cxy, cyy, K, s)
    rule = make_rule(s=s)
    q_star = linalg.psd_power(sol.vx.T @ cxy @ sol.vy, 0.5)
    with torch.no_grad():
        rule.w1.copy_(sol.vx.T)
        rule.w2.copy_(sol.vy)
        rule.Q.copy_(q_star)
    assert abs(linalg.bound(sol.vx, sol.vy, q_star, cxx, cxy, cyy, s) / sol.loss - 1) < 1e-10
    rule.step(*exact_rows(cxx, cxy, cyy))
    assert float(rule.w1.grad.abs().max()) < 1e-10
    assert float(rule.w2.grad.abs().max()) < 1e-10
    assert float((rule.Q - q_star).abs().max()) < 1e-10


def test_decoupled_r_converges_to_q_transpose_geometrically(problem):
    """Qᵀ − R shrinks by exactly (1 − ηq) per step, whatever the data."""
    rule = make_rule(eta_q=0.05, decoupled=True)
    with torch.no_grad():
        rule.R.copy_(torch.randn(K, K, dtype=torch.float64) + torch.eye(K, dtype=torch.float64))
    gap0 = float((rule.Q.T - rule.R).norm())
    opt = torch.optim.SGD(rule.model.parameters(), lr=0.01, momentum=0.0)
    for t in range(1, 201):
        idx = torch.randint(0, T, (8,))
        opt.zero_grad(set_to_none=True)
        rule.step(problem["x"][idx], problem["y"][idx])
        opt.step()
        if t % 50 == 0:
            gap = float((rule.Q.T - rule.R).norm())
            assert abs(gap / (0.95**t * gap0) - 1) < 1e-9


@pytest.mark.parametrize("decoupled", [False, True])
def test_online_minibatch_reaches_offline_loss(problem, decoupled):
    """Spec §10.4, B = 32, η0 = 0.05, τ = 0.5, t0 = 5000, 20 epochs: L/L* − 1 < 0.2 %."""
    cxx, cxy, cyy = problem["cxx"], problem["cxy"], problem["cyy"]
    sol = linalg.solve_rrr(cxx, cxy, cyy, K)
    rule = make_rule(eta_q=0.1, t0=5000.0, decoupled=decoupled)
    whiten(rule, cxx)
    if decoupled:  # R0 = Q0ᵀ would make R ≡ Qᵀ forever and the test moot
        with torch.no_grad():
            rule.R.add_(0.5 * torch.randn(K, K, dtype=torch.float64))
    opt = torch.optim.SGD(rule.model.parameters(), lr=0.05, momentum=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        for idx in torch.randperm(T, generator=gen).split(32):
            opt.zero_grad(set_to_none=True)
            rule.step(problem["x"][idx], problem["y"][idx])
            opt.step()
    loss = linalg.rrr_loss(rule.w1.T.detach(), rule.w2.detach(), cxx, cxy, cyy)
    assert 0 <= loss / sol.loss - 1 < 0.002


@pytest.mark.parametrize("init", ["whiten", "scale", "cov", "keep"])
def test_prepare_standardises_inputs_and_initialises_w1(problem, init):
    """prepare: centred inputs with λmax(Ĉxx) = 1, ȳ = target mean, and W1 such that
    VxᵀĈxxVx = I (whiten) or E‖z‖² = k (scale, cov) or the model's own (keep); the stored
    optimum is that of the standardised data."""
    from bioprop.data import Split

    x, y = 3 * problem["x"] + 2, problem["y"] - 1  # uncentred, wrong scale
    rule = make_rule(4, init=init)
    w1 = rule.w1.detach().clone()
    rule.prepare(Split(x, y))
    xc = rule.inputs(x)
    cxx = xc.T @ xc / T
    assert float(xc.mean(0).abs().max()) < 1e-12
    assert abs(float(torch.linalg.eigvalsh(cxx)[-1]) - 1) < 1e-12
    assert float((rule.y_mean + 1).abs().max()) < 1e-12
    z, _ = rule.hidden(xc)
    cz = z.T @ z / T
    if init == "whiten":
        assert float((cz - torch.eye(4, dtype=torch.float64)).abs().max()) < 1e-10
    elif init == "keep":
        assert torch.equal(rule.w1, w1)
    else:
        assert abs(float(torch.trace(cz)) - 4) < 1e-10
    sol = linalg.solve_rrr(cxx, *linalg.covariances(xc, y + 1)[1:], 4)
    assert abs(rule.metrics()["bmvr/loss_opt"] / sol.loss - 1) < 1e-10


@pytest.mark.parametrize("init", ["whiten", "scale", "cov", "relu"])
def test_init_ridge_meets_the_ridge_constraint(problem, init):
    """init_ridge: W1 starts on the ridge constraint Vxᵀ(Ĉxx + λI)Vx: = I (whiten), trace k
    (scale, cov) and, for ReLU, Var(relu(u)) + λ‖w‖² = 1 per unit."""
    from bioprop.data import Split

    lam, k = 0.3, 4
    kw = {"activation": "relu", "init": "scale"} if init == "relu" else {"init": init}
    rule = make_rule(k, ridge=lam, init_ridge=True, **kw)
    rule.prepare(Split(problem["x"], problem["y"]))
    xc = rule.inputs(problem["x"])
    z, _ = rule.hidden(xc)
    vx = rule.w1.detach().T
    if init == "relu":
        per_unit = z.var(0) + lam * vx.square().sum(0)
        assert float((per_unit - 1).abs().max()) < 1e-10
        return
    c = z.T @ z / T + lam * vx.T @ vx
    if init == "whiten":
        assert float((c - torch.eye(k, dtype=torch.float64)).abs().max()) < 1e-10
    else:
        assert abs(float(torch.trace(c)) - k) < 1e-10


def test_prepare_centres_relu_units():
    """ReLU: each unit's relu(u) has unit variance and μ starts at its mean (z centred)."""
    from bioprop.data import Split

    x, y = synthetic(1)
    rule = make_rule(5, activation="relu")
    rule.prepare(Split(x, y))
    z, _ = rule.hidden(rule.inputs(x))
    assert float(z.mean(0).abs().max()) < 1e-10
    assert float((z.std(0) - 1).abs().max()) < 1e-10


@pytest.mark.parametrize("activation", ["identity", "relu"])
def test_bp_update_is_the_autograd_gradient(activation):
    """update="bp" (the baseline on the same net) must write ∂/∂W of ½·mean‖y − ŷ‖², with
    ŷ = W2·(act(W1·x) − μ), exactly as autograd computes it."""
    rule = make_rule(4, activation=activation, update="bp")
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        rule.mu.copy_(torch.rand(4, generator=gen, dtype=torch.float64))
    x = torch.randn(9, M, generator=gen, dtype=torch.float64)
    y = torch.randn(9, N, generator=gen, dtype=torch.float64)
    w1, w2 = rule.w1.detach().clone().requires_grad_(), rule.w2.detach().clone().requires_grad_()
    u = x @ w1.T
    z = (u.clamp_min(0) - rule.mu) if activation == "relu" else u
    loss = 0.5 * ((y - z @ w2.T) ** 2).sum(1).mean()
    g1, g2 = torch.autograd.grad(loss, [w1, w2])
    rule.step(x, y)
    assert float((rule.w1.grad - g1).abs().max()) < 1e-12
    assert float((rule.w2.grad - g2).abs().max()) < 1e-12


# ---- nonlinear gate, guards -------------------------------------------------------------------


def test_relu_gate_zeroes_inactive_units():
    """A hidden unit that is silent over the whole batch gets no proximal update (column of ΔVx)."""
    rule = make_rule(4, activation="relu")
    x = torch.rand(16, M, dtype=torch.float64)  # positive inputs
    with torch.no_grad():
        rule.w1.abs_()
        rule.w1[1] = -rule.w1[1]  # unit 1 is silent for every positive x, the others never
    rule.step(x, torch.randn(16, N, dtype=torch.float64))
    assert float(rule.w1.grad[1].abs().max()) == 0.0
    assert all(float(rule.w1.grad[i].abs().max()) > 0 for i in (0, 2, 3))


def test_degenerate_q_raises_clear_error(problem):
    """A rank-deficient Q must stop training with BiopropError, not run on into NaNs."""
    rule = make_rule(check_every=1)
    with torch.no_grad():
        rule.Q.copy_(torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64))
    with pytest.raises(BiopropError, match="Q has degenerated"):
        rule.step(problem["x"][:8], problem["y"][:8])


def test_divergence_raises_clear_error(problem):
    """Un-normalised inputs with a large rate blow up; the rule must say so before any NaN."""
    rule = make_rule(eta_q=0.5)
    opt = torch.optim.SGD(rule.model.parameters(), lr=0.5, momentum=0.0)
    with pytest.raises(BiopropError, match="bmvr"):
        for _ in range(200):
            opt.zero_grad(set_to_none=True)
            rule.step(1e3 * problem["x"][:16], problem["y"][:16])
            opt.step()
    assert all(bool(torch.isfinite(p).all()) for p in rule.model.parameters())


def test_rejects_models_it_cannot_train():
    with pytest.raises(ValueError, match="bias=false"):
        BMVR(mlp([M, K, N], bias=True))
    with pytest.raises(ValueError, match="eta_q"):
        BMVR(mlp([M, K, N], bias=False), eta_q=1.5)
