"""The spiking cortical-microcircuit rule (after Yang & Li, arXiv 2205.07292) and surrogate BPTT.

Spec: specs/microcircuit.md, our reconstruction from the paper's abstract (its body is not
available). Symbols, per stage l = 1..L of a ``SpikingNet`` (see ``bioprop.models.spiking``):

P_l: pyramidal LIF cells; W_l, b_l their plastic feed-forward synapses; ψ_{l-1} the presynaptic
    PSP trace (ψ_0 = the encoded input); φ_l = σ'(u_l - θ)/τ_s their local gain.
E⁺_l = [δ_l]_+, E⁻_l = [-δ_l]_+: two populations of non-negative error cells; δ_l = E⁺ - E⁻.
M_{l+1} ≥ 0: fixed local feedback E^±_{l+1} -> E^±_l, routed by S = sign(W_{l+1}) (re-read at
    every step): a positive synapse makes same-sign pairs excite and cross-sign pairs inhibit,
    a negative one the reverse, a zero one nothing. Effective feedback B = M ∘ sign(W) (SCFA).
E: the global spiking error at the output (``spike_loss``); δ_L = ∂E/∂s_L ⊙ σ'(u_L - θ) with
    ∂E/∂s_L under the spatial proxy (credit stays inside a time step).

Two phases: a forward phase stores ψ and φ; an error phase, for all t at once,
    a = exc - inh = (E⁺ - E⁻)_{l+1} · (M ∘ sign W)_{l+1},  E⁺_l = φ_l [a]_+,  E⁻_l = φ_l [-a]_+
and the Hebbian update of every plastic synapse is post-synaptic error × presynaptic trace,
summed over t (the 1/N batch mean is already in ∂E/∂s_L):
    ΔW_l = -Σ_t Σ_n (E⁺ - E⁻)_l ψ_{l-1}ᵀ,   stored as  W_l.grad = -ΔW_l  (E⁻ potentiates).
It equals autograd on the same SNN under the spatial proxy with SCFA layers (B = M ∘ sign W),
and spatial surrogate-gradient BP when M = |W|: both compute δ_l = φ_l ⊙ (δ_{l+1} B_{l+1}) and
grad W_l = Σ_t δ_lᵀ ψ_{l-1} (tests/test_microcircuit.py checks this to 1e-6 in float64).

Fixed sum-pool stages are not plastic; their feedback is M = the pool weight, the pool's own
transpose. Dale's law is not modelled (error cells make both kinds of synapse).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_input, conv2d_weight

from bioprop.models.spiking import (
    SPIKE_LOSSES,
    SpikingNet,
    Stage,
    StageTrace,
    SumPool,
    spike_loss,
    spike_loss_grad,
)
from bioprop.rules.base import FeedbackPair, Rule, StepOutput, register_rule

MAGNITUDES = ("fixed", "redraw", "const", "abs_w")


def _geom(op: nn.Conv2d | SumPool) -> tuple:
    return op.stride, op.padding, op.dilation, op.groups


def transmit(op: nn.Module, d: Tensor, B: Tensor, in_shape: torch.Size) -> Tensor:
    """d [T, N, ...out] sent down through B (W's shape): d B (dense) or the transposed conv."""
    if isinstance(op, nn.Linear):
        return d @ B
    x_shape = (in_shape[0] * in_shape[1], *in_shape[2:])
    return conv2d_input(x_shape, B, d.flatten(0, 1), *_geom(op)).unflatten(0, in_shape[:2])


def split_errors(
    op: nn.Module, Ep: Tensor, En: Tensor, M: Tensor, in_shape: torch.Size, faithful: bool
) -> tuple[Tensor, Tensor]:
    """(exc, inh) arriving at the error cells below stage ``op`` from E⁺ and E⁻ above it.

    ``faithful``: four separate pathways (E⁺ and E⁻ through the excitatory and inhibitory
    routes); otherwise one pass with B = Fp - Fn and inh = 0 (same a = exc - inh).
    """
    S = torch.sign(op.weight)  # re-read on every call: routing follows the current sign
    Fp, Fn = M * (S > 0), M * (S < 0)
    if not faithful:
        a = transmit(op, Ep - En, Fp - Fn, in_shape)
        return a, torch.zeros_like(a)
    exc = transmit(op, Ep, Fp, in_shape) + transmit(op, En, Fn, in_shape)
    inh = transmit(op, Ep, Fn, in_shape) + transmit(op, En, Fp, in_shape)
    return exc, inh


def hebbian(op: nn.Linear | nn.Conv2d, D: Tensor, X: Tensor) -> tuple[Tensor, Tensor]:
    """(grad W, grad b) = Σ_t Σ_n post error D × presynaptic trace X, T folded into the batch."""
    if isinstance(op, nn.Linear):
        D2, X2 = D.reshape(-1, D.shape[-1]), X.reshape(-1, X.shape[-1])
        return D2.T @ X2, D2.sum(0)
    D2, X2 = D.flatten(0, 1), X.flatten(0, 1)
    return conv2d_weight(X2, op.weight.shape, D2, *_geom(op)), D2.sum((0, 2, 3))


def _check(model: nn.Module) -> SpikingNet:
    if not isinstance(model, SpikingNet):
        raise ValueError("microcircuit needs a SpikingNet (snn_mlp, snn_cnn)")
    for st in model.stages:
        if st.neuron is None or st.norm is not None or st.pool is not None:
            raise ValueError("microcircuit stages must be op -> LIF (no norm, no max-pool)")
        if not isinstance(st.op, nn.Linear | nn.Conv2d | SumPool):
            raise ValueError(f"unsupported stage op {type(st.op).__name__}")
    return model


@register_rule("microcircuit")
class Microcircuit(Rule):
    """Cortical-microcircuit Hebbian rule (E⁺/E⁻ error cells, sign-routed feedback M ≥ 0).

    loss: global spiking error, "psp_mse" (TSSL-BP kernel loss), "count_mse" or "count_ce".
    magnitude: M = |M_0| drawn like W's init ("fixed", frSF), redrawn every step ("redraw",
        brSF), a constant ("const", uSF: Xavier's std) or |W| ("abs_w": the BP limit).
    faithful: four-pathway E⁺/E⁻ feedback (4 transposed products); False: one product with
        B = M ∘ sign(W) (same numbers up to rounding; the training default).
    """

    demo: ClassVar[dict[str, Any] | None] = None

    def __init__(
        self,
        model: SpikingNet,
        loss: str = "psp_mse",
        magnitude: str = "fixed",
        faithful: bool = False,
    ) -> None:
        if loss not in SPIKE_LOSSES:
            raise ValueError(f"loss must be one of {SPIKE_LOSSES}, got {loss!r}")
        if magnitude not in MAGNITUDES:
            raise ValueError(f"magnitude must be one of {MAGNITUDES}, got {magnitude!r}")
        super().__init__(_check(model))
        self.loss, self.magnitude, self.faithful = loss, magnitude, faithful
        for k, st in enumerate(model.stages):
            if k > 0 and not isinstance(st.op, SumPool):
                self.register_buffer(f"M_{k}", self._draw(st.op.weight.detach()))
        self._stats: dict[str, float] = {}

    def _draw(self, w: Tensor) -> Tensor | None:
        if self.magnitude == "abs_w":
            return None
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
        if self.magnitude == "const":
            return torch.full_like(w, math.sqrt(2 / (fan_in + fan_out)))
        return nn.init.kaiming_uniform_(torch.empty_like(w), a=math.sqrt(5)).abs_()

    def magnitude_of(self, k: int) -> Tensor:
        """M_k ≥ 0, the feedback magnitude of stage k (onto stage k-1's error cells)."""
        op = self.model.stages[k].op
        if isinstance(op, SumPool):
            return op.weight
        if self.magnitude == "abs_w":
            return op.weight.detach().abs()
        return getattr(self, f"M_{k}")

    def feedback(self, k: int) -> Tensor:
        """B_k = M_k ∘ sign(W_k), the effective feedback the error phase uses now."""
        return self.magnitude_of(k) * torch.sign(self.model.stages[k].op.weight.detach())

    @torch.no_grad()
    def errors(self, traces: list[StageTrace], y: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(E⁺_l, E⁻_l) for every stage, from the stored forward phase (output first computed)."""
        stages: list[Stage] = list(self.model.stages)
        out, neuron = traces[-1], stages[-1].neuron
        d = spike_loss_grad(self.loss, out, y, neuron.tau_syn) * neuron.sg(out.u - neuron.threshold)
        errs = [(d.clamp(min=0), (-d).clamp(min=0))]
        for k in range(len(stages) - 1, 0, -1):
            Ep, En = errs[0]
            exc, inh = split_errors(
                stages[k].op, Ep, En, self.magnitude_of(k), traces[k].a.shape, self.faithful
            )
            a = (exc - inh).reshape(traces[k - 1].u.shape)
            phi = stages[k - 1].neuron.gain(traces[k - 1].u)
            errs.insert(0, (phi * a.clamp(min=0), phi * (-a).clamp(min=0)))
        return errs

    @torch.no_grad()
    def compute_grads(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Run both phases; return {param name: grad} without touching ``.grad``."""
        if self.magnitude == "redraw" and self.training:
            for name, buf in self.named_buffers(recurse=False):
                if name.startswith("M_"):
                    setattr(self, name, self._draw(buf))
        traces = self.model.run(x, spatial=True)
        errs = self.errors(traces, y)
        self._last = (traces, errs)
        grads = {}
        for k, (st, (Ep, En), tr) in enumerate(zip(self.model.stages, errs, traces)):
            if isinstance(st.op, SumPool):
                continue
            gw, gb = hebbian(st.op, Ep - En, tr.a)
            grads[f"stages.{k}.op.weight"] = gw
            if st.op.bias is not None:
                grads[f"stages.{k}.op.bias"] = gb
        return grads

    def step(self, x: Tensor, y: Tensor) -> StepOutput:
        grads = self.compute_grads(x, y)
        for name, p in self.model.named_parameters():
            p.grad = grads[name].to(p.dtype) if name in grads else torch.zeros_like(p)
        traces, _ = self._last
        out, neuron = traces[-1], self.model.stages[-1].neuron
        loss = spike_loss(self.loss, out, y, neuron.tau_syn)
        self._stats = {f"rate_{k}": float(tr.s.mean()) for k, tr in enumerate(traces)}
        return StepOutput(self.model.read(out), loss)

    def feedback_pairs(self) -> list[FeedbackPair]:
        return [
            FeedbackPair(f"stages.{k}.op", st.op.weight.detach(), self.feedback(k))
            for k, st in enumerate(self.model.stages)
            if k > 0 and not isinstance(st.op, SumPool)
        ]

    def metrics(self) -> dict[str, float]:
        """Firing rate per stage, and sign concordance of B with W (over nonzero weights)."""
        out = dict(self._stats)
        for pair in self.feedback_pairs():
            nz = pair.weight != 0
            same = torch.sign(pair.feedback[nz]) == torch.sign(pair.weight[nz])
            out[f"concordance/{pair.name}"] = float(same.double().mean())
        return out


@register_rule("bptt")
class SurrogateBPTT(Rule):
    """Surrogate-gradient backprop on a SpikingNet (autograd): through time, or spatial only.

    loss: "ce" (cross-entropy on the read-out, as ``bp``) or a global spiking error
        ("psp_mse", "count_mse", "count_ce"; see ``spike_loss``).
    spatial: detach u[t-1], the reset and ψ[t-1] (the spatial proxy; the microcircuit's
        BP limit); False is full BPTT.
    """

    def __init__(self, model: SpikingNet, loss: str = "psp_mse", spatial: bool = False) -> None:
        if not isinstance(model, SpikingNet):
            raise ValueError("bptt needs a SpikingNet")
        if loss not in ("ce", *SPIKE_LOSSES):
            raise ValueError(f"loss must be 'ce' or one of {SPIKE_LOSSES}, got {loss!r}")
        super().__init__(model)
        self.loss, self.spatial = loss, spatial

    def step(self, x: Tensor, y: Tensor) -> StepOutput:
        params = [p for p in self.model.parameters() if p.requires_grad]
        with torch.enable_grad():
            out = self.model.run(x, spatial=self.spatial)[-1]
            logits = self.model.read(out)
            if self.loss == "ce":
                loss = F.cross_entropy(logits, y)
            else:
                loss = spike_loss(self.loss, out, y, self.model.stages[-1].neuron.tau_syn)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g if g is not None else torch.zeros_like(p)
        return StepOutput(logits.detach(), loss.detach())
