"""BMVR / Bio-RRR: pyramidal neurons with apical plateaus and SST-like interneurons.

Golkar, Lipshutz, Bahroun, Sengupta, Chklovskii: arXiv 2010.12660 (Bio-RRR) and 2011.15031
(BMVR, "biologically plausible multivariate regression").
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bioprop import linalg
from bioprop.data import Split
from bioprop.errors import Diverged
from bioprop.models.activations import Identity, ReLU
from bioprop.models.net import Net
from bioprop.rules.base import Rule, StepOutput, register_rule

UPDATES = ("bmvr", "bp")
INITS = ("whiten", "scale", "cov", "keep")


def check_net(model: nn.Module) -> None:
    """BMVR needs ``mlp`` with one hidden layer, no biases, and identity or ReLU hidden units."""
    ok = isinstance(model, Net) and len(model.blocks) == 2
    if ok:
        b1, b2 = model.blocks
        ok = (
            all(isinstance(b.op, nn.Linear) and b.op.bias is None for b in (b1, b2))
            and isinstance(b1.act, Identity | ReLU)
            and isinstance(b2.act, Identity)
            and all(b.norm is None and b.pool is None and b.drop is None for b in (b1, b2))
        )
    if not ok:
        raise ValueError(
            "bmvr needs model mlp with one hidden layer, bias=false, activation identity or relu "
            "and no dropout (e.g. model.args: {hidden: [64], bias: false, activation: relu})"
        )


@register_rule("bmvr")
class BMVR(Rule):
    """BMVR / Bio-RRR on the two-layer net ``ŷ = W2·z``, ``z = W1·x`` (Golkar et al. 2020).

    Symbols (rows are samples; the spec writes ``Vx = W1ᵀ`` (m×k), ``Vy = W2`` (n×k)):
        z = W1·x          pyramidal (somatic) output; ReLU: z = relu(u) − μ with u = W1·x
        a = W2ᵀ·y         apical tuft current driven by the target
        n = Qᵀ·z          k SST-like interneurons (n = R·z when ``decoupled``)
        p = a − Q·n       calcium plateau; it gates the proximal update of W1
        ΔVx = x·(g⊙p)ᵀ    g = 1[u > 0] for ReLU, 1 for the linear net
        ΔVy = y·zᵀ − s·y·aᵀ − (1−s)·Vy,   ΔQ = z·nᵀ − Q,   ΔR = n·zᵀ − R
    Outer products are averaged over the batch. No output ŷ or error travels backwards, only y.
    s ∈ [0, 1] interpolates between reduced-rank regression (s = 0) and CCA (s = 1).

    Which tensor is what, and why:
        W1, W2 are the network's weights; they minimise the objective, so they are trainable
        parameters: the rule writes ``.grad = −ΔW·f(t)`` and the optimizer applies it.
        Q (and R) are the interneurons' synapses, but mathematically Q·Qᵀ is the Lagrange
        multiplier of the constraint ``E[zzᵀ] ⪯ I``: Q *ascends* the objective. A generic
        optimizer (momentum, Adam, weight decay, the loop's schedule) on the ascending player
        changes the saddle dynamics (spec §3), so Q and R are buffers that the rule updates in
        place with plain SGD. μ (running mean of relu(u)), the input statistics, the target mean
        ȳ and the sample counter t are buffers too.

    Learning rates (how the paper's η0/(1+t/t0) maps onto the optimizer): ``optim.lr`` is ηx0
    (use SGD with momentum 0 to reproduce the paper). The rule multiplies its ``.grad`` by the
    schedule f(t) = 1/(1 + t/t0), t = samples seen before the batch (t0 = 0: constant rates),
    and W2's ``.grad`` also by ``y_rate`` = ηy0/ηx0. Q and R move by ``eta_q``·f(t) in place.
    The loop's own scheduler should stay ``none``.

    Inputs and targets: ``prepare(train)`` centres x per feature and (``scale_inputs``) divides
    it by one scale so that λmax(Ĉxx) = 1 (un-normalised inputs diverged), sets ȳ (class
    frequencies, or the mean of real-valued targets), whitens W1 on ≤ ``whiten_samples`` samples
    (``VxᵀĈxxVx = I``, so Q is not starved early on; for ReLU each unit's relu(u) is then scaled
    to unit variance and μ starts at its mean: with μ0 = 0 the uncentred z violates the
    constraint by about k·E[relu(u)]² and Q blew up within a few hundred samples on MNIST),
    and stores the covariances for ``metrics``.
    ``init`` picks W1's data-dependent init: "whiten" (the spec's default; exact, but on inputs
    with near-constant pixels it amplifies W1 in low-variance directions, where the restoring
    force ηx·λ(Cxx)·QQᵀ is tiny, and linear MNIST runs stalled), "scale" (the random init times
    one scalar so that E‖z‖² = k), "cov" (rows first multiplied by Ĉxx, then scaled) or
    "keep" (the model's own init, e.g. He-uniform, on the scaled inputs; for ReLU μ still starts
    at E[relu(u)]). "keep" is what the BP baseline uses: with E‖z‖² = k the stable LMS rate of
    W2 is below about 2/k, and BP at such rates learned far more slowly than the paper's.
    Q0 = ``q_init``·I; at the optimum QQᵀ = diag(σ²), so a Q0 far above σ (MNIST: σ ≈ 0.3)
    first shrinks Vx until the constraint is slack and Q collapses (the Bio-RRR demo uses I/3).
    Integer targets become ``onehot(y) − ȳ``; float targets (T × n) are regression targets.
    ``ref_ridge`` = λ > 0 adds a second reference to ``metrics`` (``bmvr/loss_ridge``): the
    true objective of the rank-k optimum solved with Ĉxx + λ·I (scaled inputs). Input
    directions with variance ≪ λ, which no online rule at these rates can learn in a few epochs,
    get no weight there, so it is a reachable line beside the exact optimum (our choice of
    reference; the paper's FMNIST demo quotes "ridge λ = 0.1", most likely the public code's
    ridge terms in the update, which ``ridge`` below provides).
    ``ridge`` = λ > 0 trains against the ridge constraint ``Vxᵀ(Cxx + λI)Vx ⪯ I`` instead
    (the public Bio-RRR code's optional terms, spec §9): ΔVx gains −λ·Vx·QQᵀ and ΔQ gains
    +λ·VxᵀVx·Q, so the saddle is the rank-k ridge solution (tested with exact covariances).
    The extra terms are not local (a synapse of W1 needs QQᵀ, Q needs W1·W1ᵀ) and are not
    gated by the ReLU; default 0 (off), as the spec asks. For ReLU it acts as a weight decay
    on W1 whose strength per direction is the Lagrange multiplier QQᵀ (our extension).
    ``init_ridge`` (our choice, default False) makes W1's init meet the ridge constraint
    rather than the plain one: "whiten" whitens against Ĉxx + λI, "scale"/"cov" set
    E‖z‖² + λ‖Vx‖²_F = k, and for ReLU each unit gets Var(relu(u)) + λ‖w‖² = 1 ("keep" is
    left as it is). Without it λ‖w‖² starts far above 1 on MNIST (near-constant pixels let
    random rows grow long), Q grows until −λ·Vx·QQᵀ catches up, and at k = 256 λ 0.02 and 0.03
    diverged within 800 samples; off by default so that earlier ridge runs reproduce.
    ``predict`` returns ``ŷ = W2·z + ȳ``, the s = 0 read-out (argmax gives the class).

    Guards: Q starts at ``q_init``·I, full rank (its expected update is multiplicative, so its
    rank can never grow); 0 < eta_q < 1; a non-finite update or Q raises ``BiopropError`` at
    once, and every ``check_every`` steps cond(QQᵀ) > ``q_cond_max`` does too (nothing is
    clipped). The rank check applies only where theory says Q must stay full rank: the linear
    net with k ≤ rank(Cxy) (n − 1 for centred one-hot targets). With more units, or ReLU, the
    extra directions are unidentified and Q may lose rank; ``metrics`` logs eig(QQᵀ) instead.

    update: "bmvr" (the local rule) or "bp" (backprop of ½‖y − ŷ‖² on the same net, inputs and
        targets: ΔVy = e·zᵀ, ΔVx = x·(g⊙W2ᵀe)ᵀ with e = y − ŷ), the spec's baseline.
    """

    # 8x8 digits, ReLU net without biases, batch 32, 20 epochs: 84.2 / 84.2 / 86.1 % test for
    # seeds 0 / 1 / 2 with the Table 1 suite's init (E‖z‖² = k, Q0 = 0.1·I, fast running mean);
    # the spec's defaults (whitened W1, Q0 = I) diverged here, and y_rate 0.2 gave 72.8 %.
    demo: ClassVar[dict[str, Any] | None] = {
        "model.args.bias": False,
        "model.args.activation": "relu",
        "optim.lr": 0.01,
        "optim.momentum": 0.0,
        "rule.args.eta_q": 0.05,
        "rule.args.init": "scale",
        "rule.args.q_init": 0.1,
        "rule.args.eps_mu": 0.01,
    }

    def __init__(
        self,
        model: nn.Module,
        eta_q: float = 0.005,
        y_rate: float = 1.0,
        t0: float = 0.0,
        s: float = 0.0,
        decoupled: bool = False,
        update: str = "bmvr",
        eps_mu: float = 1e-4,
        whiten_samples: int = 10000,
        check_every: int = 100,
        q_cond_max: float = 1e8,
        vy_init: float = 0.1,
        q_init: float = 1.0,
        scale_inputs: bool = True,
        init: str = "whiten",
        ref_ridge: float = 0.0,
        ridge: float = 0.0,
        init_ridge: bool = False,
    ) -> None:
        super().__init__(model)
        check_net(model)
        if not 0 < eta_q < 1:
            raise ValueError(f"eta_q must lie in (0, 1) (Q decays by 1 − eta_q per step): {eta_q}")
        if not 0 <= s <= 1:
            raise ValueError(f"s must lie in [0, 1], got {s}")
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if t0 < 0 or y_rate <= 0 or check_every < 1 or q_init <= 0 or min(ref_ridge, ridge) < 0:
            raise ValueError(
                "need t0 >= 0, y_rate > 0, check_every >= 1, q_init > 0, ref_ridge >= 0 "
                "and ridge >= 0"
            )
        if ridge and update == "bp":
            raise ValueError("ridge is a term of the bmvr update; for update 'bp' use weight decay")
        self.ref_ridge, self.ridge = ref_ridge, ridge
        self.init_ridge = init_ridge
        self.eta_q, self.y_rate, self.t0, self.s = eta_q, y_rate, t0, s
        self.decoupled, self.update, self.eps_mu = decoupled, update, eps_mu
        self.scale_inputs, self.init = scale_inputs, init
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.whiten_samples, self.check_every, self.q_cond_max = (
            whiten_samples,
            check_every,
            q_cond_max,
        )
        w1, w2 = self.w1, self.w2
        k, m, n = w1.shape[0], w1.shape[1], w2.shape[0]
        self.relu = isinstance(model.blocks[0].act, ReLU)
        with torch.no_grad():
            w2.normal_(0.0, vy_init)
        kw = {"dtype": w1.dtype, "device": w1.device}
        self.register_buffer("Q", q_init * torch.eye(k, **kw))
        self.register_buffer("R", q_init * torch.eye(k, **kw) if decoupled else None)
        self.register_buffer("mu", torch.zeros(k, **kw))
        self.register_buffer("x_mean", torch.zeros(m, **kw))
        self.register_buffer("x_scale", torch.ones((), **kw))
        self.register_buffer("y_mean", torch.zeros(n, **kw))
        self.register_buffer("t", torch.zeros((), dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.ref: dict[str, Any] = {}
        self.rank = min(m, n)  # rank(Cxy) once prepare has seen the data

    @property
    def w1(self) -> Tensor:
        return self.model.blocks[0].op.weight  # k × m, = Vxᵀ

    @property
    def w2(self) -> Tensor:
        return self.model.blocks[1].op.weight  # n × k, = Vy

    def inputs(self, x: Tensor) -> Tensor:
        return (x.flatten(1).to(self.w1.dtype) - self.x_mean) / self.x_scale

    def targets(self, y: Tensor) -> Tensor:
        if y.dtype in (torch.int64, torch.int32):
            y = nn.functional.one_hot(y.long(), self.w2.shape[0]).to(self.w1.dtype)
        return y.to(self.w1.dtype) - self.y_mean

    @torch.no_grad()
    def hidden(self, xc: Tensor) -> tuple[Tensor, Tensor]:
        """(z, gate) for standardised inputs; the gate is 1 for the linear net."""
        u = xc @ self.w1.T
        if not self.relu:
            return u, torch.ones_like(u)
        return u.clamp_min(0) - self.mu, (u > 0).to(u.dtype)

    @torch.no_grad()
    def prepare(self, train: Split) -> None:
        """Input/target statistics, whitened W1 and the offline reference (see the class doc)."""
        x = train.x.flatten(1).to(self.w1.dtype)
        y = self.targets(train.y) + self.y_mean  # one-hot or raw targets, uncentred
        self.x_mean.copy_(x.mean(0))
        self.y_mean.copy_(y.mean(0))
        xc, yc = x - self.x_mean, y - self.y_mean
        cxx = xc.T @ xc / len(xc)
        if self.scale_inputs:
            self.x_scale.copy_(torch.linalg.eigvalsh(cxx)[-1].sqrt())
        xc = xc / self.x_scale
        cxx, cxy, cyy = linalg.covariances(xc, yc)
        sub = xc[: self.whiten_samples]
        self._init_w1(sub)
        if self.relu:  # μ0 = E[relu(u)], and (relu is 1-homogeneous) unit variance per unit
            h = (sub @ self.w1.T).clamp_min(0)
            mean = h.mean(0)
            if self.init != "keep":
                sd = (h.var(0) + self._ridge0() * self.w1.square().sum(1)).sqrt().clamp_min(1e-8)
                self.w1.div_(sd[:, None])
                mean = mean / sd
            self.mu.copy_(mean)
        k = self.w1.shape[0]
        sol = linalg.solve_rrr(cxx, cxy, cyy, min(k, cxy.shape[1]), self.s)
        self.rank = int((sol.sigma > 1e-6 * sol.sigma[0]).sum())
        self.ref = {"cxx": cxx, "cxy": cxy, "cyy": cyy, "sol": sol, "x": xc[:2000]}
        self.ref["cxx_half"] = linalg.psd_power(cxx, 0.5)
        if self.ref_ridge > 0:
            self.ref["loss_ridge"] = linalg.ridge_rrr_loss(
                cxx, cxy, cyy, min(k, cxy.shape[1]), self.ref_ridge, self.s
            )

    @torch.no_grad()
    def _init_w1(self, sub: Tensor) -> None:
        """W1's data-dependent init from the standardised samples ``sub`` (see ``init``)."""
        if self.init == "keep":
            return
        vx, k = self.w1.T, self.w1.shape[0]
        cxx, lam = sub.T @ sub / len(sub), self._ridge0()
        c = vx.T @ cxx @ vx + lam * vx.T @ vx  # the constraint's left side at this init
        if self.init == "whiten":
            self.w1.copy_((vx @ linalg.psd_power(c, -0.5)).T)
            return
        if self.init == "cov":  # W1's rows in the high-variance input directions
            vx = sub.T @ (sub @ vx) / len(sub)
            c = vx.T @ cxx @ vx + lam * vx.T @ vx
        self.w1.copy_(vx.T * (k / torch.trace(c)).sqrt())  # one scalar: E‖z‖² = k

    def _ridge0(self) -> float:
        """λ of the constraint W1's init meets: the ridge λ with ``init_ridge``, else 0."""
        return self.ridge if self.init_ridge else 0.0

    @torch.no_grad()
    def currents(self, z: Tensor, yc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Apical current a = W2ᵀ·y, interneurons n = Qᵀ·z (or R·z), plateau p = a − Q·n."""
        a = yc @ self.w2
        n = z @ (self.R.T if self.decoupled else self.Q)
        return a, n, a - n @ self.Q.T

    def rate(self) -> float:
        """f(t) = 1/(1 + t/t0) at the current sample count (1 when t0 = 0)."""
        return 1.0 / (1.0 + float(self.t) / self.t0) if self.t0 > 0 else 1.0

    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor) -> StepOutput:
        xc, yc = self.inputs(x), self.targets(y)
        b = len(xc)
        w1, w2, q = self.w1, self.w2, self.Q
        z, g = self.hidden(xc)
        y_hat = z @ w2.T
        loss = ((yc - y_hat) ** 2).sum(1).mean()
        f = self.rate()
        if self.update == "bp":
            e = yc - y_hat
            d_vy = e.T @ z / b
            d_w1 = (g * (e @ w2)).T @ xc / b  # = d_vxᵀ, computed k × m so it is contiguous
        else:
            a, n, p = self.currents(z, yc)
            d_w1 = (g * p).T @ xc / b
            d_vy = yc.T @ z / b - self.s * (yc.T @ a) / b - (1 - self.s) * w2
            d_q = z.T @ n / b - q
            if self.ridge:  # gradient of Tr(QQᵀ·λ·VxᵀVx): the ridge part of the constraint
                d_w1 = d_w1 - self.ridge * (q @ q.T) @ w1
                d_q = d_q + self.ridge * (w1 @ w1.T) @ q
            if self.decoupled:
                self.R.add_(n.T @ z / b - self.R, alpha=self.eta_q * f)
            q.add_(d_q, alpha=self.eta_q * f)
        w1.grad = -f * d_w1
        w2.grad = -(f * self.y_rate) * d_vy
        if self.relu:  # the running mean is updated after use
            eps_b = 1 - (1 - self.eps_mu) ** b
            self.mu.add_(z.mean(0), alpha=eps_b)  # z = relu(u) − μ
        self.t += b
        self.steps += 1
        self.check(w1.grad, w2.grad)
        return StepOutput(y_hat + self.y_mean, loss)

    def check(self, *grads: Tensor) -> None:
        """Raise a clear error instead of letting NaNs or a collapsed Q through."""
        if not all(bool(torch.isfinite(t).all()) for t in (*grads, self.Q)):
            raise Diverged(
                f"bmvr: non-finite update or Q at sample {int(self.t)}: the saddle diverged. "
                "Lower optim.lr (ηx·λmax(Cxx)·σ₁² ≲ 0.5 is needed), and centre/scale the inputs "
                "(rule.prepare does this in the training loop)"
            )
        if self.update == "bmvr" and int(self.steps) % self.check_every == 0:
            self.check_q()

    def check_q(self) -> None:
        if self.relu or self.w1.shape[0] > self.rank:
            return  # extra units are unidentified: Q may lose rank legitimately (spec §2, §5)
        lam = torch.linalg.eigvalsh(self.Q @ self.Q.T)
        if not lam[0] > 0 or lam[-1] / lam[0] > self.q_cond_max:
            raise Diverged(
                f"bmvr: Q has degenerated at sample {int(self.t)} (eig(QQᵀ) in "
                f"[{float(lam[0]):.3g}, {float(lam[-1]):.3g}], cond > {self.q_cond_max:g}); "
                "the interneurons lost rank. Try another τ = ηx/ηq (optim.lr / eta_q): "
                "a smaller τ when Q lags a tight constraint, a larger one when the constraint "
                "goes slack (docs/bmvr-notes.md); check that k ≤ rank(Cxy), and centre/scale "
                "the inputs"
            )

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        z, _ = self.hidden(self.inputs(x))
        return z @ self.w2.T + self.y_mean

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        """Objective, bound, constraint error and subspace distance to the offline optimum."""
        lam = torch.linalg.eigvalsh(self.Q @ self.Q.T)
        out = {"bmvr/qq_min": float(lam[0]), "bmvr/qq_max": float(lam[-1])}
        if not self.ref:
            return out
        r, vx, vy = self.ref, self.w1.T, self.w2
        sol = r["sol"]
        out["bmvr/loss_opt"] = sol.loss
        if "loss_ridge" in r:
            out["bmvr/loss_ridge"] = r["loss_ridge"]
        if self.relu:
            z, _ = self.hidden(r["x"])
            eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
            out["bmvr/constraint"] = float(torch.linalg.matrix_norm(z.T @ z / len(z) - eye))
            return out
        cxx, cxy, cyy = r["cxx"], r["cxy"], r["cyy"]
        out["bmvr/loss"] = linalg.rrr_loss(vx, vy, cxx, cxy, cyy, self.s)
        out["bmvr/bound"] = linalg.bound(vx, vy, self.Q, cxx, cxy, cyy, self.s)
        out["bmvr/constraint"] = linalg.constraint_error(vx, cxx)
        if vx.shape[1] == sol.vx.shape[1]:
            h = r["cxx_half"]
            out["bmvr/subspace"] = linalg.subspace_distance(h @ vx, h @ sol.vx)
        return out
