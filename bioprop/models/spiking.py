"""Spiking networks: LIF neurons with a PSP trace, surrogate spikes, encoders and read-outs.

Tensors are time-major, ``[T, B, ...]`` (snnTorch, SpikingJelly, Norse). State starts at 0 for
every batch. A stage is one weight layer (``nn.Linear``, ``nn.Conv2d`` or the fixed ``SumPool``)
followed by LIF neurons (specs/microcircuit.md §1):

    I[t] = op(ψ_in[t])                          input current (T folded into the batch)
    u[t] = β·u[t-1]·(1 - s[t-1]) + I[t]          reset "zero"
    u[t] = β·u[t-1] + I[t] - θ·s[t-1]            reset "subtract"   (β = 1 - 1/τ_m;
    u[t] = β·u[t-1] + I[t]                       reset "none"        τ_m = None: IF, β = 1)
    s[t] = H(u[t] - θ)                           strict >; backward σ'(u - θ), the surrogate
    ψ[t] = (1 - 1/τ_s)·ψ[t-1] + s[t]/τ_s         PSP trace, the input of the next stage
    φ[t] = σ'(u[t] - θ)/τ_s                      local gain (1/τ_s = ∂ψ/∂s)

τ_s = 1 makes ψ = s (stages then pass spikes). ``spatial=True`` is the spatial proxy: no
derivative flows through u[t-1], the reset or ψ[t-1], so credit stays inside a time step;
``spatial=False`` is full backprop through time.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop.models.registry import register_model

# name -> (default slope k, σ'(v; k)); every σ' is ≥ 0.
SURROGATES: dict[str, tuple[float, Callable[[Tensor, float], Tensor]]] = {
    # TSSL-BP's warm-up derivative, k·sig(kv)(1 - sig(kv))
    "sigmoid": (5.0, lambda v, k: k * torch.sigmoid(k * v) * torch.sigmoid(-k * v)),
    # snnTorch's atan: (k/2) / (1 + (π k v / 2)²); k = 2 gives 1 / (1 + π² v²)
    "atan": (2.0, lambda v, k: (k / 2) / (1 + (math.pi * k * v / 2) ** 2)),
    # snnTorch's fast sigmoid: 1 / (1 + k|v|)²
    "fast_sigmoid": (25.0, lambda v, k: 1 / (1 + k * v.abs()) ** 2),
}
RESETS = ("zero", "subtract", "none")
ENCODERS = ("direct", "poisson")
READOUTS = ("count", "membrane")


def _surrogate(name: str, slope: float | None = None) -> Callable[[Tensor], Tensor]:
    """σ' of the surrogate ``name`` with ``slope`` (None: the default slope of that name)."""
    key = name.replace("-", "_")
    if key not in SURROGATES:
        raise ValueError(f"surrogate must be one of {tuple(SURROGATES)}, got {name!r}")
    k0, fn = SURROGATES[key]
    k = k0 if slope is None else float(slope)
    return lambda v: fn(v, k)


class SpikeFn(torch.autograd.Function):
    """Forward the step H(v) (strict >), backward the surrogate derivative σ'(v)."""

    @staticmethod
    def forward(ctx: Any, v: Tensor, grad: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.save_for_backward(v)
        ctx.grad = grad
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (v,) = ctx.saved_tensors
        return g * ctx.grad(v), None


class LIF(nn.Module):
    """Leaky integrate-and-fire neurons with a PSP trace (symbols in the module docstring).

    tau_mem: τ_m (None: integrate-and-fire). tau_syn: τ_s of the trace ψ. threshold: θ.
    reset: "zero", "subtract" or "none". surrogate, slope: σ' by name (see ``SURROGATES``).
    detach_reset: no derivative through the reset term even in BPTT (snnTorch's default).
    """

    def __init__(
        self,
        tau_mem: float | None = 8.0,
        tau_syn: float = 2.0,
        threshold: float = 1.0,
        reset: str = "zero",
        surrogate: str = "sigmoid",
        slope: float | None = None,
        detach_reset: bool = False,
    ) -> None:
        super().__init__()
        if reset not in RESETS:
            raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
        if (tau_mem is not None and tau_mem < 1) or tau_syn < 1:
            raise ValueError(f"time constants must be >= 1 step, got {tau_mem}, {tau_syn}")
        self.tau_mem, self.tau_syn, self.threshold, self.reset = tau_mem, tau_syn, threshold, reset
        self.beta = 1.0 if tau_mem is None else 1 - 1 / tau_mem
        self.alpha = 1 - 1 / tau_syn
        self.detach_reset = detach_reset
        self.sg = _surrogate(surrogate, slope)

    def _spike(self, u: Tensor) -> Tensor:
        return SpikeFn.apply(u - self.threshold, self.sg)

    def gain(self, u: Tensor) -> Tensor:
        """φ = σ'(u - θ)/τ_s."""
        return self.sg(u - self.threshold) / self.tau_syn

    def forward(
        self, current: Tensor, spatial: bool = False, spike_grad: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(s, u, ψ), each [T, ...], from the input current [T, ...].

        spike_grad=False: spikes carry no derivative at all (no surrogate is ever used).
        """
        u = s = psi = torch.zeros_like(current[0])
        ss, us, ps = [], [], []
        for i_t in current:
            if spatial:  # the spatial proxy: no path through the previous step
                u, s, psi = u.detach(), s.detach(), psi.detach()
            r = s.detach() if self.detach_reset else s
            if self.reset == "zero":
                u = self.beta * u * (1 - r) + i_t
            elif self.reset == "subtract":
                u = self.beta * u + i_t - self.threshold * r
            else:
                u = self.beta * u + i_t
            s = self._spike(u) if spike_grad else (u > self.threshold).to(u.dtype)
            psi = self.alpha * psi + s / self.tau_syn
            ss.append(s)
            us.append(u)
            ps.append(psi)
        return torch.stack(ss), torch.stack(us), torch.stack(ps)


class SumPool(nn.Module):
    """Fixed sum-pool, ``weight`` per tap (TSSL-BP: 1.1), as a depthwise conv with stride k.

    Its weight is a buffer, not a parameter; the pool is its own exact transpose (the
    microcircuit's feedback through it uses M = weight).
    """

    def __init__(self, channels: int, kernel: int = 2, weight: float = 1.1) -> None:
        super().__init__()
        self.register_buffer("weight", torch.full((channels, 1, kernel, kernel), float(weight)))
        self.bias = None
        self.stride, self.padding, self.dilation, self.groups = (
            (kernel, kernel),
            (0, 0),
            (1, 1),
            channels,
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)


@dataclass
class StageTrace:
    """One stage over all T: input ``a`` as op sees it, current I, spikes s, membrane u, trace
    ψ and the output ``out`` passed on (ψ, max-pooled per step if the stage pools)."""

    a: Tensor
    current: Tensor
    s: Tensor
    u: Tensor
    psi: Tensor
    out: Tensor


class Stage(nn.Module):
    """op -> norm -> LIF -> pool. ``neuron=None``: a non-spiking read-out (u = s = ψ = I)."""

    def __init__(
        self,
        op: nn.Linear | nn.Conv2d | SumPool,
        neuron: LIF | None,
        norm: nn.Module | None = None,
        pool: nn.Module | None = None,
        flatten: bool = False,
    ) -> None:
        super().__init__()
        self.op, self.neuron, self.norm, self.pool, self.flatten = op, neuron, norm, pool, flatten

    def prepare(self, x: Tensor) -> Tensor:
        return x.flatten(2) if self.flatten else x

    def current(self, a: Tensor) -> Tensor:
        """I = norm(op(a)) with T folded into the batch."""
        z = self.op(a.flatten(0, 1))
        if self.norm is not None:
            z = self.norm(z)
        return z.unflatten(0, a.shape[:2])

    def tail(self, psi: Tensor) -> Tensor:
        return (
            psi if self.pool is None else self.pool(psi.flatten(0, 1)).unflatten(0, psi.shape[:2])
        )

    def run(
        self, a: Tensor, current: Tensor, spatial: bool = False, spike_grad: bool = True
    ) -> StageTrace:
        if self.neuron is None:
            return StageTrace(a, current, current, current, current, self.tail(current))
        s, u, psi = self.neuron(current, spatial, spike_grad)
        return StageTrace(a, current, s, u, psi, self.tail(psi))

    def forward(self, x: Tensor, spatial: bool = False, spike_grad: bool = True) -> StageTrace:
        a = self.prepare(x)
        return self.run(a, self.current(a), spatial, spike_grad)


class SpikingNet(nn.Module):
    """Stages over T steps; ``forward(x)`` takes images [B, ...] and returns logits [B, C].

    T: time steps. encoder: "direct" (x at every step) or "poisson" (Bernoulli(x) spikes; x in
    [0, 1]). readout: "count" (Σ_t s_L) or "membrane" (mean_t u_L). spatial: the default mode
    of ``forward`` (True: the spatial proxy, for autograd-based rules such as scfa).
    """

    def __init__(
        self,
        stages: list[Stage],
        input_shape: tuple[int, ...],
        T: int = 5,
        encoder: str = "direct",
        readout: str = "count",
        spatial: bool = False,
    ) -> None:
        super().__init__()
        if encoder not in ENCODERS or readout not in READOUTS or T < 1:
            raise ValueError(f"bad encoder {encoder!r}, readout {readout!r} or T {T}")
        self.stages = nn.ModuleList(stages)
        self.input_shape, self.T, self.encoder, self.readout = (
            tuple(input_shape),
            T,
            encoder,
            readout,
        )
        self.spatial = spatial

    def encode(self, x: Tensor) -> Tensor:
        xt = x.unsqueeze(0).expand(self.T, *x.shape)
        if self.encoder == "poisson":
            return (torch.rand_like(xt) < x.clamp(0, 1)).to(x.dtype)
        return xt

    def run(
        self, x: Tensor, spatial: bool | None = None, spike_grad: bool = True
    ) -> list[StageTrace]:
        """Every stage's trace for images x [B, ...] (all T at once, stage by stage)."""
        h, out = self.encode(x), []
        for stage in self.stages:
            tr = stage(h, self.spatial if spatial is None else spatial, spike_grad)
            out.append(tr)
            h = tr.out
        return out

    def read(self, tr: StageTrace) -> Tensor:
        return tr.s.sum(0) if self.readout == "count" else tr.u.mean(0)

    def forward(self, x: Tensor) -> Tensor:
        return self.read(self.run(x)[-1])

    @property
    def weight_layers(self) -> list[nn.Linear | nn.Conv2d]:
        return [s.op for s in self.stages if isinstance(s.op, nn.Linear | nn.Conv2d)]

    def extra_repr(self) -> str:
        return f"T={self.T}, encoder={self.encoder}, readout={self.readout}"


# ---------------------------------------------------------------- global spiking errors
SPIKE_LOSSES = ("psp_mse", "count_mse", "count_ce")


def target_train(y: Tensor, num_classes: int, T: int, dtype: torch.dtype) -> Tensor:
    """Desired spikes [T, N, C]: the label neuron fires [0,1,1,1,…] (T < 10) or [0,1,0,1,…]
    (T ≥ 10); the others are silent (TSSL-BP)."""
    t = torch.arange(T)
    train = ((t % 2 == 1) if T >= 10 else (t >= 1)).to(dtype)
    onehot = F.one_hot(y, num_classes).to(dtype)
    return train[:, None, None] * onehot


def psp_filter(s: Tensor, tau_syn: float) -> Tensor:
    """ψ of a spike train [T, ...] through the PSP filter (ψ̂ of the target train)."""
    out, psi = [], torch.zeros_like(s[0])
    for s_t in s:
        psi = (1 - 1 / tau_syn) * psi + s_t / tau_syn
        out.append(psi)
    return torch.stack(out)


def spike_loss(kind: str, out: StageTrace, y: Tensor, tau_syn: float) -> Tensor:
    """E, differentiable (autograd gives the BPTT or spatial gradient, by how out was run).

    psp_mse: (1/N) Σ_n ½ Σ_t Σ_k (ψ_L - ψ̂)². count_mse: (1/N) Σ_n ½ Σ_k (c - ĉ)², c = Σ_t s_L,
    ĉ = round(0.8T) for the label and round(0.2T) otherwise. count_ce: CE(softmax(c), y).
    """
    T, n, k = out.s.shape
    if kind == "psp_mse":
        target = psp_filter(target_train(y, k, T, out.s.dtype), tau_syn)
        return 0.5 * ((out.psi - target) ** 2).sum() / n
    c = out.s.sum(0)
    if kind == "count_ce":
        return F.cross_entropy(c, y)
    hi, lo = round(0.8 * T), round(0.2 * T)
    target = lo + (hi - lo) * F.one_hot(y, k).to(c.dtype)
    return 0.5 * ((c - target) ** 2).sum() / n


def spike_loss_grad(kind: str, out: StageTrace, y: Tensor, tau_syn: float) -> Tensor:
    """∂E/∂s_L[t] under the spatial proxy, [T, N, K], in closed form (includes the 1/N)."""
    T, n, k = out.s.shape
    if kind == "psp_mse":
        target = psp_filter(target_train(y, k, T, out.s.dtype), tau_syn)
        return (out.psi - target) / (n * tau_syn)
    c = out.s.sum(0)
    if kind == "count_ce":
        g = (torch.softmax(c, 1) - F.one_hot(y, k).to(c.dtype)) / n
    else:
        hi, lo = round(0.8 * T), round(0.2 * T)
        g = (c - lo - (hi - lo) * F.one_hot(y, k).to(c.dtype)) / n
    return g.unsqueeze(0).expand(T, n, k)


# ---------------------------------------------------------------- models
def _scaled(op: nn.Linear | nn.Conv2d, weight_scale: float) -> nn.Linear | nn.Conv2d:
    with torch.no_grad():
        op.weight.mul_(weight_scale)
    return op


def _check_choices(surrogate_name: str, encoder: str, readout: str) -> None:
    _surrogate(surrogate_name)
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
    if readout not in READOUTS:
        raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")


@register_model("snn_mlp")
def snn_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: list[int] = (400,),
    T: int = 5,
    tau_mem: float | None = 8.0,
    tau_syn: float = 2.0,
    threshold: float = 1.0,
    reset: str = "zero",
    surrogate: str = "sigmoid",
    slope: float | None = None,
    detach_reset: bool = False,
    encoder: str = "direct",
    readout: str = "count",
    weight_scale: float = 1.0,
    spatial: bool = False,
) -> SpikingNet:
    """Spiking MLP: LIF after every Linear, output neurons spike too (specs/microcircuit.md)."""
    _check_choices(surrogate, encoder, readout)
    kw = dict(
        tau_mem=tau_mem,
        tau_syn=tau_syn,
        threshold=threshold,
        reset=reset,
        surrogate=surrogate,
        slope=slope,
        detach_reset=detach_reset,
    )
    widths = [math.prod(input_shape), *hidden, num_classes]
    stages = [
        Stage(_scaled(nn.Linear(a, b), weight_scale), LIF(**kw), flatten=i == 0)
        for i, (a, b) in enumerate(itertools.pairwise(widths))
    ]
    return SpikingNet(stages, input_shape, T, encoder, readout, spatial)


@register_model("snn_cnn")
def snn_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: list[int] = (15, 40),
    kernel: int = 5,
    padding: int = 0,
    pool: int = 2,
    pools: list[int] | None = None,
    pool_weight: float = 1.1,
    fc: list[int] = (300,),
    T: int = 5,
    tau_mem: float | None = 8.0,
    tau_syn: float = 2.0,
    threshold: float = 1.0,
    reset: str = "zero",
    surrogate: str = "sigmoid",
    slope: float | None = None,
    detach_reset: bool = False,
    encoder: str = "direct",
    readout: str = "count",
    weight_scale: float = 1.0,
    spatial: bool = False,
) -> SpikingNet:
    """Spiking conv net: [C k×k -> LIF -> sum-pool ×pool_weight -> LIF]* -> FC LIF* -> output
    (15C5-P2-40C5-P2-300-10 by default, TSSL-BP's MNIST net). pools: the pool size after each
    conv (0: none); None: ``pool`` after every conv."""
    if len(input_shape) != 3:
        raise ValueError(f"snn_cnn needs image input [C, H, W], got {input_shape}")
    _check_choices(surrogate, encoder, readout)
    kw = dict(
        tau_mem=tau_mem,
        tau_syn=tau_syn,
        threshold=threshold,
        reset=reset,
        surrogate=surrogate,
        slope=slope,
        detach_reset=detach_reset,
    )
    stages, c_in = [], input_shape[0]
    pools = [pool] * len(channels) if pools is None else list(pools)
    if len(pools) != len(channels):
        raise ValueError(f"pools needs one entry per conv, got {pools} for {channels}")
    for c, k in zip(channels, pools):
        stages.append(
            Stage(_scaled(nn.Conv2d(c_in, c, kernel, padding=padding), weight_scale), LIF(**kw))
        )
        if k:
            stages.append(Stage(SumPool(c, k, pool_weight), LIF(**kw)))
        c_in = c
    with torch.no_grad():
        probe = torch.zeros(1, 1, *input_shape)
        for st in stages:
            probe = st.op(probe.flatten(0, 1)).unsqueeze(0)
    widths = [probe[0, 0].numel(), *fc, num_classes]
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        stages.append(Stage(_scaled(nn.Linear(a, b), weight_scale), LIF(**kw), flatten=i == 0))
    return SpikingNet(stages, input_shape, T, encoder, readout, spatial)


def _sp_neuron(surrogate: str, slope: float | None, tau_mem: float | None) -> LIF:
    # specs/sigprop.md §7: IF (β = 1) or LIF, θ = 1, subtract reset through sg(s), no PSP filter
    return LIF(tau_mem, 1.0, 1.0, "subtract", surrogate, slope, detach_reset=True)


@register_model("sp_snn_mlp")
def sp_snn_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: list[int] = (512, 512),
    T: int = 4,
    tau_mem: float | None = None,
    surrogate: str = "atan",
    slope: float | None = 2.0,
) -> SpikingNet:
    """SigProp spiking MLP: [Linear -> LayerNorm -> IF]* -> Linear head on the rate (T = 4)."""
    widths = [math.prod(input_shape), *hidden]
    stages = [
        Stage(nn.Linear(a, b), _sp_neuron(surrogate, slope, tau_mem), nn.LayerNorm(b), None, i == 0)
        for i, (a, b) in enumerate(itertools.pairwise(widths))
    ]
    stages.append(Stage(nn.Linear(widths[-1], num_classes), None))
    return SpikingNet(stages, input_shape, T, "direct", "membrane")


@register_model("sp_snn_cnn")
def sp_snn_cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: list[int] = (20, 40),
    fc: list[int] = (128,),
    T: int = 4,
    tau_mem: float | None = None,
    surrogate: str = "atan",
    slope: float | None = 2.0,
) -> SpikingNet:
    """SigProp spiking CNN (specs/sigprop.md §7): [conv3×3 -> norm -> IF -> max-pool 2]* ->
    [FC -> LayerNorm -> IF]* -> Linear head on the rate. Norm: GroupNorm(1, C), i.e. per-sample
    LayerNorm over C×H×W (our choice: batch-independent, no running statistics to share between
    the h and t streams; the report used BN)."""
    if len(input_shape) != 3:
        raise ValueError(f"sp_snn_cnn needs image input [C, H, W], got {input_shape}")
    stages, c_in, hw = [], input_shape[0], input_shape[1:]
    for c in channels:
        conv = nn.Conv2d(c_in, c, 3, padding=1)
        neuron = _sp_neuron(surrogate, slope, tau_mem)
        stages.append(Stage(conv, neuron, nn.GroupNorm(1, c), nn.MaxPool2d(2)))
        c_in, hw = c, (hw[0] // 2, hw[1] // 2)
    widths = [c_in * hw[0] * hw[1], *fc]
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        neuron = _sp_neuron(surrogate, slope, tau_mem)
        stages.append(Stage(nn.Linear(a, b), neuron, nn.LayerNorm(b), None, i == 0))
    stages.append(Stage(nn.Linear(widths[-1], num_classes), None, flatten=len(fc) == 0))
    return SpikingNet(stages, input_shape, T, "direct", "membrane")
