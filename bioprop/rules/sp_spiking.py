"""Signal Propagation for spiking nets (SP-Voltage, SP-Surrogate) and a continuous-time network.

Spec: specs/sigprop.md §7 (spiking, our recommended design; the paper's neuron, T, threshold and
widths are unverified) and §8 (continuous-time Hebbian form, entirely our design). The local
losses, targets and the label embedding are those of ``bioprop.rules.sigprop`` (imported, not
copied); only how a layer's representation is formed differs.

Spiking (``sigprop_snn``), on a ``SpikingNet`` whose hidden stages are op -> norm -> IF/LIF
(-> max-pool per step) and whose last stage is a non-spiking Linear head (``sp_snn_mlp``,
``sp_snn_cnn``):
- x and the target current LN(W_c t₀) (g_c before its ReLU) are repeated for T steps.
- Each hidden stage runs both streams; its local loss compares h and t summarised over time:
  "voltage": V̄ = (1/T) Σ_τ V[τ], and the spike function is never differentiated (spikes enter
  the graph only as constants through the reset); "surrogate": the rate (1/T) Σ_τ s[τ], with
  the neuron's surrogate and backprop through time inside the layer.
- Between stages only detached spike tensors travel; S comes from the target input's rates;
  the head learns by CE on the detached last spikes (Linear on the rate).

Continuous-time (``sigprop_ct``), on a ReLU ``mlp``: layer ℓ has a data population u^h and C
target populations u^{t,k} sharing W, b, τu̇ = −u + W r_in + b, r = ReLU(u), Euler with
Δ/τ = ``dt``; at layer 1, W_x x drives u^h and W_c e_k drives u^{t,k}. During the learning window
(gate g = 1, after ``settle`` steps), every step adds, per layer,
    z_k = r^h·r^{t,k}, p = softmax(z), δ_k = p_k − y_k,
    e^h = (Σ_k δ_k r^{t,k}) ⊙ 1[u^h > 0],  e^{t,k} = δ_k r^h ⊙ 1[u^{t,k} > 0],
    −ΔW ∝ e^h r_inᵀ + Σ_k e^{t,k} r_in^{t,k}ᵀ,   −Δb ∝ e^h + Σ_k e^{t,k}:
post-synaptic factor × presynaptic rate, with δ a third factor available inside the layer.
The rule holds W fixed through a batch's window and writes the window mean (batch mean) to
``.grad``; the optimizer's lr is η. At the fixed point this is ∇_W of the direct (v1) local loss.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop.models.activations import ReLU
from bioprop.models.net import Net
from bioprop.models.spiking import SpikingNet, Stage, StageTrace
from bioprop.rules.base import Rule, StepOutput, register_rule
from bioprop.rules.sigprop import LOSSES, TargetEmbedding, local_loss, make_target, similarity

VARIANTS = ("voltage", "surrogate")


@register_rule("sigprop_snn")
class SigPropSNN(Rule):
    """SigProp on a spiking net: SP-Voltage or SP-Surrogate (see the module docstring).

    variant: "voltage" (loss on the mean membrane voltage, no surrogate) or "surrogate"
        (loss on the rate, surrogate gradient through time inside the layer).
    loss, k, tie_break: the local loss of ``sigprop`` ("direct", "max_all", "max_rand", "topk").
    """

    demo: ClassVar[dict[str, Any] | None] = None

    def __init__(
        self,
        model: SpikingNet,
        variant: str = "surrogate",
        loss: str = "topk",
        k: int = 6,
        tie_break: str = "random",
    ) -> None:
        if variant not in VARIANTS or loss not in LOSSES:
            raise ValueError(f"variant in {VARIANTS}, loss in {LOSSES}; got {variant!r}, {loss!r}")
        if not isinstance(model, SpikingNet) or model.stages[-1].neuron is not None:
            raise ValueError("sigprop_snn needs a SpikingNet with a non-spiking head (sp_snn_*)")
        if any(st.neuron is None for st in model.stages[:-1]):
            raise ValueError("every hidden stage of sigprop_snn must spike")
        super().__init__(model)
        self.variant, self.loss, self.k, self.tie_break = variant, loss, k, tie_break
        self.num_classes = model.stages[-1].op.out_features
        if not isinstance(getattr(model, "signal", None), TargetEmbedding):
            model.signal = TargetEmbedding(self.num_classes, self._signal_shape())
        self._losses: list[Tensor] = []

    @torch.no_grad()
    def _signal_shape(self) -> tuple[int, ...]:
        st, mode = self.model.stages[0], self.model.training
        self.model.eval()
        a = st.prepare(self.model.encode(torch.zeros(1, *self.model.input_shape))[:1])
        shape = tuple(st.current(a).shape[2:])
        self.model.train(mode)
        return shape

    def context(self, y: Tensor) -> Tensor:
        """t₀: I_C (input-label mode, "direct") or onehot(y) (input-target mode)."""
        if self.loss == "direct":
            return torch.eye(self.num_classes, device=y.device)
        return F.one_hot(y, self.num_classes).float()

    def summary(self, tr: StageTrace) -> Tensor:
        return tr.u.mean(0) if self.variant == "voltage" else tr.s.mean(0)

    def _run(self, st: Stage, a: Tensor, current: Tensor) -> StageTrace:
        return st.run(a, current, spatial=False, spike_grad=self.variant == "surrogate")

    def layer_step(
        self, i: int, h_in: Tensor, t_in: Tensor, y: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Fill ``.grad`` of stage i from its own loss; return detached output spikes (h, t)."""
        st, T = self.model.stages[i], self.model.T
        params = [p for p in st.parameters() if p.requires_grad]
        if i == 0:
            params += list(self.model.signal.parameters())
        with torch.enable_grad():
            a = st.prepare(h_in.detach())  # locality: nothing upstream is in this graph
            tr_h = self._run(st, a, st.current(a))
            if i == 0:  # the target current LN(W_c t₀), before g_c's ReLU, at every step
                g = self.model.signal
                v = g.norm(g.linear(t_in)).view(-1, *g.shape)
                a_t = cur_t = v.unsqueeze(0).expand(T, *v.shape)
                s_in = similarity(t_in)
            else:
                a_t = st.prepare(t_in.detach())
                cur_t = st.current(a_t)
                s_in = similarity(t_in.mean(0))  # S from the target input's rates
            tr_t = self._run(st, a_t, cur_t)
            s_in = None if self.loss == "direct" else s_in
            target = make_target(self.loss, y, s_in, self.k, self.tie_break)
            loss = local_loss(self.summary(tr_h), self.summary(tr_t), target)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, gr in zip(params, grads):
            p.grad = gr if gr is not None else torch.zeros_like(p)
        return tr_h.out.detach(), tr_t.out.detach(), loss.detach()

    def step(self, x: Tensor, y: Tensor) -> StepOutput:
        if y is None:
            raise ValueError("sigprop_snn needs labels to train; predict needs none")
        h, t, losses = self.model.encode(x), self.context(y).to(x.dtype), []
        for i in range(len(self.model.stages) - 1):
            h, t, loss = self.layer_step(i, h, t, y)
            losses.append(loss)
        head = self.model.stages[-1]
        params = [p for p in head.parameters() if p.requires_grad]
        with torch.enable_grad():
            logits = self.model.read(head(h.detach()))
            loss = F.cross_entropy(logits, y)
            grads = torch.autograd.grad(loss, params)
        for p, gr in zip(params, grads):
            p.grad = gr
        self._losses = losses
        return StepOutput(logits.detach(), loss.detach())

    def metrics(self) -> dict[str, float]:
        return {f"local_loss_{i}": float(v) for i, v in enumerate(self._losses)}


@register_rule("sigprop_ct")
class SigPropCT(Rule):
    """Continuous-time SigProp with three-factor Hebbian updates (our design, see module doc).

    settle: Euler steps before the gate opens; learn: steps with the gate open (their mean is
    the update); dt: Δ/τ. Needs a ReLU ``mlp`` (Linear blocks, no norm, no dropout).
    """

    demo: ClassVar[dict[str, Any] | None] = {"optim.name": "adam", "optim.lr": 0.001}

    def __init__(self, model: Net, settle: int = 20, learn: int = 10, dt: float = 0.1) -> None:
        if not isinstance(model, Net) or len(model.blocks) < 2:
            raise ValueError("sigprop_ct needs a Net (mlp) with at least one hidden layer")
        for b in model.blocks[:-1]:
            if not isinstance(b.op, nn.Linear) or not isinstance(b.act, ReLU):
                raise ValueError("sigprop_ct needs Linear blocks with ReLU (an mlp)")
            if b.norm is not None or b.pool is not None or b.drop is not None:
                raise ValueError("sigprop_ct blocks must have no norm, pool or dropout")
        if settle < 0 or learn < 1 or not 0 < dt <= 1:
            raise ValueError(f"need settle >= 0, learn >= 1, 0 < dt <= 1: {settle}, {learn}, {dt}")
        super().__init__(model)
        self.settle, self.learn, self.dt = settle, learn, dt
        self.num_classes = model.blocks[-1].op.out_features
        if not isinstance(getattr(model, "signal_ct", None), nn.Linear):
            w = model.blocks[0].op
            model.signal_ct = nn.Linear(self.num_classes, w.out_features, bias=False)
            nn.init.kaiming_uniform_(model.signal_ct.weight, a=math.sqrt(5))

    def _drive(self, i: int, r_h: Tensor, r_t: Tensor) -> tuple[Tensor, Tensor]:
        op = self.model.blocks[i].op
        t_drive = self.model.signal_ct(r_t) + op.bias if i == 0 else op(r_t)
        return op(r_h), t_drive

    @torch.no_grad()
    def hebbian_grads(self, x: Tensor, y: Tensor) -> tuple[dict[nn.Parameter, Tensor], Tensor]:
        """Run the dynamics; return {param: mean −ΔW/η over the window} and the head's logits."""
        hidden, head = self.model.blocks[:-1], self.model.blocks[-1].op
        x0 = x.flatten(1)
        eye = torch.eye(self.num_classes, dtype=x0.dtype, device=x0.device)
        onehot = F.one_hot(y, self.num_classes).to(x0.dtype)
        u_h = [x0.new_zeros(len(x0), b.op.out_features) for b in hidden]
        u_t = [x0.new_zeros(self.num_classes, b.op.out_features) for b in hidden]
        grads: dict[nn.Parameter, Tensor] = {}

        def add(p: nn.Parameter | None, g: Tensor) -> None:
            if p is not None:
                grads[p] = grads.get(p, 0) + g / self.learn

        for step in range(self.settle + self.learn):
            r_h, r_t = [x0, *map(F.relu, u_h)], [eye, *map(F.relu, u_t)]
            if step >= self.settle:  # gate open: the three-factor updates of every layer
                for i, b in enumerate(hidden):
                    h, t = r_h[i + 1], r_t[i + 1]
                    delta = (torch.softmax(h @ t.T, 1) - onehot) / len(x0)
                    e_h = (delta @ t) * (u_h[i] > 0)
                    e_t = (delta.T @ h) * (u_t[i] > 0)
                    add(b.op.weight, e_h.T @ r_h[i] + (0 if i == 0 else e_t.T @ r_t[i]))
                    add(b.op.bias, e_h.sum(0) + e_t.sum(0))
                    if i == 0:
                        add(self.model.signal_ct.weight, e_t.T @ eye)
                logits = head(r_h[-1])
                d_out = (torch.softmax(logits, 1) - onehot) / len(x0)
                add(head.weight, d_out.T @ r_h[-1])
                add(head.bias, d_out.sum(0))
            for i in range(len(hidden)):  # Euler, all layers from the previous step's rates
                d_h, d_t = self._drive(i, r_h[i], r_t[i])
                u_h[i] = u_h[i] + self.dt * (d_h - u_h[i])
                u_t[i] = u_t[i] + self.dt * (d_t - u_t[i])
        return grads, logits

    def step(self, x: Tensor, y: Tensor) -> StepOutput:
        grads, logits = self.hebbian_grads(x, y)
        for p in self.model.parameters():
            p.grad = grads[p] if p in grads else torch.zeros_like(p)
        return StepOutput(logits, F.cross_entropy(logits, y))
