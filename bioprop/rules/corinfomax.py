"""Supervised CorInfoMax: correlative-information maximisation with lateral inhibition.

Bozkurt, Pehlevan, Erdogan: arXiv 2306.04810; official code BariscanBozkurt/Supervised-CorInfoMax
(class ``ContrastiveCorInfoMaxHopfield``). Objective restated in arXiv 2504.11558, §3.2.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bioprop.models.net import Block, Net
from bioprop.models.registry import register_model
from bioprop.rules.base import FeedbackPair, Rule, StepOutput, register_rule

ETA_RULES = ("const", "slow")
SWEEPS = ("gauss_seidel", "jacobi")
LATERAL_FROM = ("nudged", "free")


class CorInfoMaxNet(Net):
    """Bias-free MLP of clamped units, plus the backward predictors W_b.

    ``blocks[k-1].op.weight`` is the forward predictor W_f^(k) (N_k × N_{k-1}); ``wb[k-1]`` is the
    backward predictor W_b^(k) (N_k × N_{k+1}), k = 1..L-1. Both are trainable parameters, so the
    loop's optimizer applies the rule's ``.grad`` to them. ``forward`` is the feed-forward pass
    through clamp(·, 0, 1) units; the rule predicts by relaxation instead, and ``forward`` only
    serves the diagnostics' backprop reference.
    """

    def __init__(self, widths: list[int], input_shape: tuple[int, ...]) -> None:
        blocks = []
        for i in range(len(widths) - 1):
            op = nn.Linear(widths[i], widths[i + 1], bias=False)
            nn.init.xavier_uniform_(op.weight)
            blocks.append(Block(op, "hard_sigmoid", flatten=i == 0))
        super().__init__(blocks, input_shape)
        self.wb = nn.ParameterList(
            nn.Parameter(nn.init.xavier_uniform_(torch.empty(widths[k], widths[k + 1])))
            for k in range(1, len(widths) - 1)
        )


@register_model("corinfomax_mlp")
def corinfomax_mlp(
    input_shape: tuple[int, ...], num_classes: int, hidden: list[int] = (500,)
) -> CorInfoMaxNet:
    """The CorInfoMax network: ``hidden`` widths (one or two layers in the paper), xavier init."""
    widths = [math.prod(input_shape), *hidden, num_classes]
    if len(widths) < 3 or any(int(w) < 1 for w in widths):
        raise ValueError(f"corinfomax_mlp needs at least one positive hidden width, got {hidden}")
    return CorInfoMaxNet(widths, input_shape)


def lr_factor(epoch: int, decay: list[list[float]]) -> float:
    """Schedule μ(e)/μ₀ = d^e, with d the factor of the last ``[start_epoch, d]`` entry whose
    start is ≤ e (0-based epochs). The official ``[[0, 0.95], [15, 0.9]]`` jumps at e = 15."""
    d = 1.0
    for start, factor in decay:
        if epoch >= start:
            d = factor
    return d**epoch


@register_rule("corinfomax")
class CorInfoMax(Rule):
    """Supervised CorInfoMax (Bozkurt et al. 2023) on ``corinfomax_mlp`` with L = 2 or 3 layers.

    Symbols (batch-major: rows are samples; n the batch size, H_0 = X, Y one-hot):
        W_f^(k)   forward predictor h^(k-1) → h^(k); trainable (``model.blocks[k-1].op.weight``)
        W_b^(k)   backward predictor h^(k+1) → h^(k), k < L; trainable (``model.wb[k-1]``)
        B_k       lateral inhibition ≈ λ R_k⁻¹ (N_k × N_k, symmetric); buffer ``B{k}``, *not* a
                  trainable weight: the rule updates it itself by the anti-Hebbian recursion
                  B ← (B − γ ZᵀZ/n)/λ, Z = H_kB_k, then symmetrises it.
        U_k, H_k  membrane state and clamped output H = clamp(U, 0, 1)
        ε = ``eps``, λ = ``lam``, γ = (1 − λ)/λ, g = leak, η_t = neural step, β = nudge strength
    Dynamics (t = 0..T-1, layers k = 1..L in order, Gauss–Seidel), U ← U + η_t G, H ← clamp(U):
        hidden: G = g(H_k−U_k) + 2γH_kB_k + (H_{k-1}W_f^(k)ᵀ − U_k)/ε + (H_{k+1}W_b^(k)ᵀ − U_k)/ε
        output: G = g(H_L−U_L) + γH_LB_L − U_L − β(H_L − Y) + (H_{L-1}W_f^(L)ᵀ − U_L)/ε
    A step runs a free phase (β = 0, from zeros, ``t_free`` iterations) and a nudged phase
    (β = ±``beta``, random sign, from the free state, ``t_nudge`` iterations), then
        ΔW_f^(k) = (E_kⁿᵀH_{k-1}ⁿ − E_kᶠᵀH_{k-1}ᶠ)/(βn),  E_k = H_k − H_{k-1}W_f^(k)ᵀ
        ΔW_b^(k) = (D_kⁿᵀH_{k+1}ⁿ − D_kᶠᵀH_{k+1}ᶠ)/(βn),  D_k = H_k − H_{k+1}W_b^(k)ᵀ
    with the pre-update weights, stored as ``.grad = −μ·s(e)·ΔW`` (sign convention of base.py).

    Learning rates: the paper's per-layer rates μ_f^(k) (``mu_f``) and μ_b^(k) (``mu_b``) and its
    epoch schedule s(e) = ``lr_factor(e, lr_decay)`` scale the ``.grad`` (e = samples seen //
    training-set size, counted from ``prepare``; a ``max_steps_per_epoch`` cap shifts it). With
    ``optim: {name: sgd, lr: 1.0, momentum: 0}`` this is exactly the official plain SGD with one
    rate per layer and kind; the loop's own scheduler should stay ``none``. Defaults are the
    MNIST 784-500-10 settings of spec §6, except ``mu_f``/``mu_b`` (1 per layer: set them).

    Prediction (``predict``) is the free-phase relaxation; it returns H_L (argmax = class).
    Samples do not interact, so the result does not depend on the evaluation batch size.

    Options the spec leaves open (official behaviour by default):
        eta_rule: "const" (η_t = η₀) or "slow" (η_t = max(η₀/(1+0.01t), 0.001)).
        sweep: "gauss_seidel" (official) or "jacobi" (all layers from the previous iterate; a
            deviation from the official code).
        symmetrize: symmetrise B after every update (ours; the official code lets the
            antisymmetric part grow by 1/λ per step). woodbury: exact inverse update of
            R ← λR + (1−λ)HᵀH/n instead of the official first-order one (which targets λC⁻¹).
        lateral_from: states that drive the B recursion, "nudged" (official) or "free".
        random_sign: β's sign uniform on {±1} per batch (official) or always +1.
        x_mean, x_std: per-channel input transform (x − mean)/std applied inside the rule
            (CIFAR: mean (0.4914, 0.4822, 0.4465), std 3·(0.2023, 0.1994, 0.2010)); None keeps
            the loader's inputs.
    ``metrics``: current s(e), last β and ‖γHB‖/‖H/ε‖ of the first hidden layer's last
    lateral-update state (how much lateral inhibition enters the dynamics at all).
    """

    # 8x8 digits, batch 32, 20 epochs: the MNIST rates doubled and no decay (96.9 % test;
    # the MNIST settings as they are reach 93.6 %), and a shorter lateral memory.
    demo: ClassVar[dict[str, Any] | None] = {
        "model.name": "corinfomax_mlp",
        "optim.lr": 1.0,
        "optim.momentum": 0.0,
        "rule.args.mu_f": [2.0, 1.4],
        "rule.args.mu_b": [0.3],
        "rule.args.lam": 0.999,
        "rule.args.lr_decay": [[0, 1.0]],
    }

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.15,
        lam: float = 0.99999,
        g: float = 0.5,
        eta: float = 0.05,
        eta_rule: str = "const",
        t_free: int = 30,
        t_nudge: int = 10,
        beta: float = 1.0,
        random_sign: bool = True,
        mu_f: list[float] | None = None,
        mu_b: list[float] | None = None,
        lr_decay: list[list[float]] | None = None,
        sweep: str = "gauss_seidel",
        symmetrize: bool = True,
        woodbury: bool = False,
        lateral_from: str = "nudged",
        x_mean: list[float] | None = None,
        x_std: list[float] | None = None,
    ) -> None:
        super().__init__(model)
        if not isinstance(model, CorInfoMaxNet):
            raise ValueError("corinfomax needs model corinfomax_mlp (e.g. hidden: [500])")
        L = len(model.blocks)
        if eta_rule not in ETA_RULES or sweep not in SWEEPS or lateral_from not in LATERAL_FROM:
            raise ValueError(
                f"eta_rule in {ETA_RULES}, sweep in {SWEEPS}, lateral_from in {LATERAL_FROM}"
            )
        if not (eps > 0 and 0 < lam < 1 and g >= 0 and eta > 0 and beta > 0):
            raise ValueError("need eps > 0, 0 < lam < 1, g >= 0, eta > 0 and beta > 0")
        if t_free < 1 or t_nudge < 1:
            raise ValueError("t_free and t_nudge must be >= 1")
        mu_f = [1.0] * L if mu_f is None else [float(m) for m in mu_f]
        mu_b = [1.0] * (L - 1) if mu_b is None else [float(m) for m in mu_b]
        if len(mu_f) != L or len(mu_b) != L - 1:
            raise ValueError(f"need {L} mu_f and {L - 1} mu_b values for {L} layers")
        self.eps, self.lam, self.gamma, self.g = eps, lam, (1 - lam) / lam, g
        self.eta, self.eta_rule, self.t_free, self.t_nudge = eta, eta_rule, t_free, t_nudge
        self.beta, self.random_sign, self.mu_f, self.mu_b = beta, random_sign, mu_f, mu_b
        self.lr_decay = [[0, 0.95], [15, 0.9]] if lr_decay is None else lr_decay
        self.sweep, self.symmetrize, self.woodbury = sweep, symmetrize, woodbury
        self.lateral_from = lateral_from
        w = self.wf[0]
        self.widths = [w.shape[1]] + [wf.shape[0] for wf in self.wf]
        kw = {"dtype": w.dtype, "device": w.device}
        for k, n in enumerate(self.widths[1:], start=1):
            a = nn.init.xavier_uniform_(torch.empty(n, n, **kw))
            self.register_buffer(f"B{k}", a @ a.T)  # E[B] = I, eigenvalues spread over ≈[0, 4]
        self.synced_buffers = tuple(f"B{k}" for k in range(1, L + 1))
        self.register_buffer("x_shift", self._channels(x_mean, 0.0))
        self.register_buffer("x_scale", self._channels(x_std, 1.0))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_train", torch.zeros((), dtype=torch.long))
        self.register_buffer("sign_seed", torch.randint(0, 2**62, (), dtype=torch.long))
        self.last: dict[str, float] = {}
        self.last_ratio = float("nan")
        self._bufs: dict[tuple, tuple[list[Tensor], list[Tensor]]] = {}

    def _channels(self, values: list[float] | None, default: float) -> Tensor | None:
        if values is None:
            return None
        n0 = self.widths[0]
        if n0 % len(values):
            raise ValueError(f"{len(values)} channel values do not divide the input size {n0}")
        v = torch.tensor(values, dtype=self.wf[0].dtype)
        return v.repeat_interleave(n0 // len(values))  # inputs are flattened C×H×W

    @property
    def wf(self) -> list[Tensor]:
        return [b.op.weight for b in self.model.blocks]

    @property
    def wb(self) -> list[Tensor]:
        return list(self.model.wb)

    @property
    def B(self) -> list[Tensor]:
        return [getattr(self, f"B{k}") for k in range(1, len(self.wf) + 1)]

    def inputs(self, x: Tensor) -> Tensor:
        x = x.flatten(1).to(self.wf[0].dtype)
        if self.x_shift is not None:
            x = (x - self.x_shift) / self.x_scale
        return x

    def eta_at(self, t: int) -> float:
        if self.eta_rule == "const":
            return self.eta
        return max(self.eta / (1 + 0.01 * t), 0.001)

    def epoch(self) -> int:
        return int(self.seen // self.n_train) if int(self.n_train) > 0 else 0

    def prepare(self, train: Any) -> None:
        """Remember the training-set size: the learning-rate schedule counts epochs."""
        self.n_train.fill_(len(train))

    def buffers_for(self, rows: int, like: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Preallocated U and H (rows × N_k per layer), reused while the batch shape holds."""
        key = (rows, like.dtype, like.device)
        if key not in self._bufs:
            if len(self._bufs) > 4:  # odd last batches: keep the cache small
                self._bufs.clear()
            self._bufs[key] = tuple(
                [
                    torch.zeros(rows, n, dtype=like.dtype, device=like.device)
                    for n in self.widths[1:]
                ]
                for _ in range(2)
            )
        return self._bufs[key]

    def couplings(self, beta: float) -> list[Tensor]:
        """M_k with U ← (1 − η c_k)U + η(H_kM_k + drives): hidden 2γB + gI, output γB + (g−β)I."""
        out = []
        for k, b in enumerate(self.B, start=1):
            hidden = k < len(self.B)
            m = b * (2 * self.gamma if hidden else self.gamma)
            m.diagonal().add_(self.g if hidden else self.g - beta)
            out.append(m)
        return out

    @torch.no_grad()
    def relax(
        self,
        U: list[Tensor],
        H: list[Tensor],
        a1: Tensor,
        steps: int,
        beta: float = 0.0,
        y: Tensor | None = None,
    ) -> None:
        """Run ``steps`` iterations of the neural dynamics in place on U and H (spec §3)."""
        L, eps, wf, wb = len(U), self.eps, self.wf, self.wb
        m = self.couplings(beta)
        c_hid, c_out = self.g + 2 / eps, self.g + 1 + 1 / eps
        for t in range(steps):
            eta = self.eta_at(t)
            for k in range(L):
                u = U[k]
                last = k == L - 1
                u.addmm_(H[k], m[k], beta=1 - eta * (c_out if last else c_hid), alpha=eta)
                if k == 0:
                    u.add_(a1, alpha=eta / eps)
                else:
                    u.addmm_(H[k - 1], wf[k].T, alpha=eta / eps)
                if not last:
                    u.addmm_(H[k + 1], wb[k].T, alpha=eta / eps)
                elif beta:
                    u.add_(y, alpha=eta * beta)
                if self.sweep == "gauss_seidel":
                    torch.clamp(u, 0, 1, out=H[k])
            if self.sweep == "jacobi":
                for u, h in zip(U, H):
                    torch.clamp(u, 0, 1, out=h)

    @torch.no_grad()
    def free_phase(self, x: Tensor) -> list[Tensor]:
        """Free relaxation of inputs ``x`` from zeros; returns H (views of reused buffers)."""
        x = self.inputs(x)
        U, H = self.buffers_for(len(x), x)
        for t in (*U, *H):
            t.zero_()
        self.relax(U, H, x @ self.wf[0].T, self.t_free)
        return H

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.free_phase(x)[-1].clone()

    def draw_beta(self) -> float:
        if not self.random_sign:
            return self.beta
        gen = torch.Generator().manual_seed(int(self.sign_seed) + int(self.seen))
        return self.beta * (1.0 if torch.randint(0, 2, (), generator=gen) else -1.0)

    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor) -> StepOutput:
        x = self.inputs(x)
        n, wf = len(x), self.wf
        y1 = nn.functional.one_hot(y, self.widths[-1]).to(x.dtype)
        beta = self.draw_beta()
        # rows 0..n-1 hold the free phase, rows n..2n-1 the nudged one
        U, H = self.buffers_for(2 * n, x)
        Uf, Hf = [u[:n] for u in U], [h[:n] for h in H]
        Un, Hn = [u[n:] for u in U], [h[n:] for h in H]
        for t in (*Uf, *Hf):
            t.zero_()
        a1 = x @ wf[0].T  # the first-layer drive is fixed for both phases
        self.relax(Uf, Hf, a1, self.t_free)
        logits = Hf[-1].clone()
        for u, h, hf in zip(Un, Hn, Hf):
            u.copy_(hf)
            h.copy_(hf)
        self.relax(Un, Hn, a1, self.t_nudge, beta, y1)
        self.write_grads(x, H, n, beta)
        self.update_lateral(Hn if self.lateral_from == "nudged" else Hf)
        self.last = {"beta": beta, "lr_factor": lr_factor(self.epoch(), self.lr_decay)}
        self.seen += n
        loss = 0.5 * ((logits - y1) ** 2).sum(1).mean()
        return StepOutput(logits, loss)

    def write_grads(self, x: Tensor, H: list[Tensor], n: int, beta: float) -> None:
        """``.grad = −μ s(e) ΔW`` for W_f and W_b from stacked free/nudged states H (2n rows)."""
        s = lr_factor(self.epoch(), self.lr_decay) / (beta * n)
        sign = torch.ones(2 * n, 1, dtype=x.dtype, device=x.device)
        sign[:n] = -1  # nudged minus free
        wf, wb, L = self.wf, self.wb, len(H)
        # k = 1: H_0 = X in both phases, so E_1ⁿ − E_1ᶠ = H_1ⁿ − H_1ᶠ
        wf[0].grad = (H[0][:n] - H[0][n:]).T @ x * (self.mu_f[0] * s)
        for k in range(1, L):
            e = torch.addmm(H[k], H[k - 1], wf[k].T, alpha=-1).mul_(sign)
            wf[k].grad = e.T @ H[k - 1] * (-self.mu_f[k] * s)
        for k in range(L - 1):
            d = torch.addmm(H[k], H[k + 1], wb[k].T, alpha=-1).mul_(sign)
            wb[k].grad = d.T @ H[k + 1] * (-self.mu_b[k] * s)

    @torch.no_grad()
    def update_lateral(self, H: list[Tensor]) -> None:
        """B ← (B − γZᵀZ/n)/λ with Z = HB (or the exact Woodbury step), then symmetrise."""
        n = len(H[0])
        for k, (b, h) in enumerate(zip(self.B, H)):
            z = h @ b
            if k == 0:
                self.last_ratio = float(
                    self.gamma * z.norm() * self.eps / h.norm().clamp_min(1e-30)
                )
            if self.woodbury:
                eye = torch.eye(n, dtype=h.dtype, device=h.device)
                inner = torch.addmm(eye * (n / self.gamma), z, h.T)
                b.sub_(z.T @ torch.linalg.solve(inner, z))
            else:
                b.addmm_(z.T, z, alpha=-self.gamma / n)
            b.div_(self.lam)
            if self.symmetrize:
                b.copy_((b + b.T) / 2)

    def feedback_pairs(self) -> list[FeedbackPair]:
        """Angle between W_f^(k+1) and W_b^(k)ᵀ (no weight symmetry is imposed; spec §7)."""
        return [
            FeedbackPair(f"layer{k + 2}", self.wf[k + 1].detach(), self.wb[k].detach().T)
            for k in range(len(self.wb))
        ]

    def metrics(self) -> dict[str, float]:
        return {**self.last, "lateral_ratio": self.last_ratio}
