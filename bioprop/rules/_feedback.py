"""Feedback layers: ``nn.Linear`` / ``nn.Conv2d`` whose backward pass sends the error down
through a feedback tensor B instead of the forward weight W.

Mechanism. BP's backward through ``a = h W^T + b`` computes three things from the incoming
error g = ∂L/∂a: ``grad_W = g^T h`` and ``grad_b = Σ g`` (they need only g and the layer's own
input: local), and ``grad_h = g W`` (the only place W is read: weight transport). The custom
autograd functions below compute the first two exactly as autograd does and read B in place of
W for the third. So every ``.grad`` is the exact local gradient given the δ that reached the
layer, and no backward pass ever reads W. ``B = None`` sends no error down at all (DFA, where
the error arrives directly from the output instead).

Feedback (``Feedback.kind``):
- ``weight``: B = W (plain autograd; the exact last layer of ``last_layer='bp'``).
- ``random``: B = R, a fixed random buffer (FA), or R = s·sign(W_0) (``signed_init``).
- ``sign``: B = M ∘ sign(W) with M from ``magnitude``: ``const`` (s), ``fixed`` (|M_0|, drawn
  once), ``redraw`` (|M_t|, drawn on every training forward from the layer's own generator) or
  ``abs_w`` (|W|, which makes B = W). sign(0) = ``sign_zero`` (0 by default).
- ``direct``: DFA; the layer sends nothing down, a marker on its input injects e D instead.

B is rebuilt out of place from the current W and the buffers on every forward; nothing is
edited in place. ``concordance`` p < 1 multiplies B by a fixed ±1 mask with P(+1) = p, and
``scale='match_w'`` rescales B so that ‖B‖_F = ‖W‖_F.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("weight", "random", "sign", "direct")
MAGNITUDES = ("const", "fixed", "redraw", "abs_w")
SCALES = ("xavier", "fan_in", "match_w", "none")

_BACKPROP = contextvars.ContextVar("bioprop_backprop", default=False)

# brSF's generators must not replay the global stream that drew the weights (same seed, same
# numbers: M_0 would be correlated with |W_0|), hence a salt.
_SALT = 0x9E3779B9


def layer_seed(seed: int, index: int) -> int:
    """Seed of layer ``index``'s brSF generator for the global ``seed``."""
    return (seed ^ _SALT) + index


@contextlib.contextmanager
def backprop() -> Iterator[None]:
    """Inside this context every feedback layer runs plain autograd (B = W, no DFA markers, no
    redraw): the reference gradient of the diagnostics, taken on the same converted model."""
    token = _BACKPROP.set(True)
    try:
        yield
    finally:
        _BACKPROP.reset(token)


@dataclass(frozen=True)
class Feedback:
    """How a layer builds its feedback B (see the module docstring for the choices)."""

    kind: str
    magnitude: str = "const"
    scale: str = "xavier"
    signed_init: bool = False
    concordance: float = 1.0
    sign_zero: float = 0.0

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.kind, KINDS, "kind"),
            (self.magnitude, MAGNITUDES, "magnitude"),
            (self.scale, SCALES, "feedback_scale"),
        ):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
        if not 0.0 <= self.concordance <= 1.0:
            raise ValueError(f"concordance must lie in [0, 1], got {self.concordance}")
        if self.sign_zero not in (0.0, 1.0):
            raise ValueError(f"sign_zero must be 0 or 1, got {self.sign_zero}")
        if self.kind == "direct" and self.scale == "match_w":
            raise ValueError("DFA has no forward weight to match; use xavier, fan_in or none")

    @property
    def redraws(self) -> bool:
        return self.kind == "sign" and self.magnitude == "redraw"


def feedback_constant(fan_in: int, fan_out: int, scale: str) -> float:
    """s of uSF and of signed FA: Xavier's std, willwx's 1/√fan_in, or 1."""
    table = {"xavier": math.sqrt(2 / (fan_in + fan_out)), "fan_in": 1 / math.sqrt(fan_in)}
    return table.get(scale, 1.0)


def feedback_bound(fan_in: int, fan_out: int, scale: str) -> float:
    """a in R ~ U(-a, a) and M ~ U(0, a): Xavier-uniform, U(±1/√fan_in), or U(±1)."""
    table = {"xavier": math.sqrt(6 / (fan_in + fan_out)), "fan_in": 1 / math.sqrt(fan_in)}
    return table.get(scale, 1.0)


def _sign(w: Tensor, sign_zero: float) -> Tensor:
    s = torch.sign(w)
    return s if sign_zero == 0 else torch.where(w == 0, torch.ones_like(s), s)


_MAGNITUDE: dict[str, Callable[[FeedbackLayer], Tensor | float]] = {
    "const": lambda m: m.s,
    "fixed": lambda m: m.M,
    "redraw": lambda m: m.M,
    "abs_w": lambda m: m.weight.abs(),
}

_FEEDBACK: dict[str, Callable[[FeedbackLayer], Tensor | None]] = {
    "weight": lambda m: m.weight.detach(),
    "random": lambda m: m.R,
    # _sign returns a fresh tensor: scaling it in place saves a W-sized allocation per step
    "sign": lambda m: _sign(m.weight, m.fb.sign_zero).mul_(_MAGNITUDE[m.fb.magnitude](m)),
    "direct": lambda m: None,
}


class _LinearFn(torch.autograd.Function):
    """``y = x W^T + b``; backward ``grad_x = g B``, ``grad_W = g^T x``, ``grad_b = Σ g``.

    Leading dimensions are flattened, as ``nn.Linear`` does. B = None: no input gradient.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None, B: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, B)
        ctx.has_b = b is not None
        return F.linear(x, w, b)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, B = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        gx = gw = gb = None
        if ctx.needs_input_grad[0] and B is not None:
            gx = (g2 @ B).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            gw = g2.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_b and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb, None


class _Conv2dFn(torch.autograd.Function):
    """``y = conv2d(x, W, b)``; backward: the transposed convolution of g with B for x, and
    autograd's own weight/bias gradients (``aten.convolution_backward``, which is what
    ``torch.nn.grad.conv2d_input/_weight`` call, done in one call)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, w: Tensor, b: Tensor | None, B: Tensor | None, geom: tuple
    ) -> Tensor:
        ctx.save_for_backward(x, w if B is None else B)
        ctx.send, ctx.geom, ctx.has_b = B is not None, geom, b is not None
        stride, padding, dilation, groups = geom
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, B = ctx.saved_tensors  # B is only W's shape when nothing is sent down
        stride, padding, dilation, groups = ctx.geom
        mask = [
            ctx.send and ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            ctx.has_b and ctx.needs_input_grad[2],
        ]
        bias_sizes = [B.shape[0]] if ctx.has_b else None
        gx, gw, gb = torch.ops.aten.convolution_backward(
            g, x, B, bias_sizes, stride, padding, dilation, False, [0, 0], groups, mask
        )
        return gx, gw, gb, None, None


@dataclass
class DFAState:
    """Shared by one model's DFA layers: the output error e of the current backward pass.

    n_out: width of the output layer (the rows of every D_l).
    points: markers recorded in the forward pass now running; ``remaining``: markers still to
    read e in the backward pass now running (e is cleared when it reaches 0).
    """

    n_out: int
    scale: str = "xavier"
    e: Tensor | None = None
    points: int = 0
    remaining: int = 0


class _DFAOutput(torch.autograd.Function):
    """Identity on the output layer's pre-activation; its backward stores e = g (which already
    holds the loss's 1/N) and passes g on unchanged, so the output layer stays exact."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, state: DFAState) -> Tensor:
        ctx.state, ctx.points, state.points = state, state.points, 0
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        ctx.state.e = g.reshape(g.shape[0], -1)
        ctx.state.remaining = ctx.points
        return g, None


class _DFAPoint(torch.autograd.Function):
    """Identity on a hidden layer's output h_l; its backward discards the incoming gradient and
    returns e D_l (autograd then applies f'(a_l) and whatever else lies below)."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, D: Tensor, state: DFAState) -> Tensor:
        ctx.save_for_backward(D)
        ctx.state, ctx.shape = state, h.shape
        return h.view_as(h)

    @staticmethod
    def backward(ctx: Any, _g: Tensor) -> tuple[Tensor, None, None]:
        state = ctx.state
        if state.e is None:
            raise RuntimeError("DFA: no output error e; the output marker's backward did not run")
        (D,) = ctx.saved_tensors
        out = (state.e @ D).reshape(ctx.shape)
        state.remaining -= 1
        if state.remaining <= 0:
            state.e = None
        return out, None, None


class FeedbackLayer(nn.Module):
    """What ``FALinear`` and ``FAConv2d`` share: buffers, B, redraw, DFA markers.

    Buffers (persistent, so checkpoints cover them): R (FA), M (frSF / brSF / SCFA), mask
    (concordance < 1), D (DFA, created at the first forward that needs it). brSF draws M from a
    per-layer ``torch.Generator`` whose state is the layer's extra state.
    """

    fb: Feedback
    weight: Tensor

    def _setup(self, fb: Feedback, seed: int, dfa: DFAState | None, is_output: bool) -> None:
        self.fb, self.dfa, self.is_output = fb, dfa, is_output
        w = self.weight.detach()
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
        self.s = feedback_constant(fan_in, fan_out, fb.scale)
        self.bound = feedback_bound(fan_in, fan_out, fb.scale)
        self.gen = torch.Generator().manual_seed(seed) if fb.redraws else None
        for name in ("R", "M", "mask", "D"):
            self.register_buffer(name, None)
        if fb.kind == "random":
            self.R = self.s * torch.sign(w) if fb.signed_init else self._uniform(-1.0)
        if fb.kind == "sign" and fb.magnitude in ("fixed", "redraw"):
            self.M = self._uniform(0.0)
        if fb.kind in ("random", "sign") and fb.concordance < 1:
            keep = torch.rand(w.shape, dtype=w.dtype, device=w.device) < fb.concordance
            self.mask = torch.where(keep, 1.0, -1.0).to(w.dtype)

    def _uniform(self, low: float) -> Tensor:
        """U(low·a, a) in W's shape, from the layer's generator if it has one."""
        w = self.weight
        u = torch.rand(w.shape, generator=self.gen, dtype=w.dtype).to(w.device)
        if low == 0:  # brSF's hot path: one pass over a fresh tensor (same values)
            return u.mul_(self.bound)
        return self.bound * (low + (1 - low) * u)

    @torch.no_grad()
    def effective_feedback(self) -> Tensor | None:
        """The B the next backward pass uses (None for DFA), built out of place."""
        B = _FEEDBACK[self.fb.kind](self)
        if B is None or self.fb.kind == "weight":
            return B
        if self.mask is not None:
            B = B * self.mask
        if self.fb.scale == "match_w":
            norm = B.norm()
            B = B * (self.weight.norm() / norm) if norm > 0 else B
        return B

    @property
    def reports_feedback(self) -> bool:
        """True when B is a feedback matrix distinct from W (what the angle diagnostics read)."""
        return self.fb.kind in ("random", "sign")

    def _prepare(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Put the DFA marker on the input, redraw brSF's M, build B if an input grad is needed."""
        needs = x.requires_grad
        if self.dfa is not None and needs:
            x = self._point(x)
        if not needs:
            return x, None
        if self.fb.redraws and self.training:
            self.M = self._uniform(0.0)
        return x, self.effective_feedback()

    def _point(self, x: Tensor) -> Tensor:
        if self.D is None:
            n_out, n_in = self.dfa.n_out, x[0].numel()
            bound = feedback_bound(n_out, n_in, self.dfa.scale)
            self.D = bound * (2 * torch.rand(n_out, n_in, dtype=x.dtype, device=x.device) - 1)
        self.dfa.points += 1
        return _DFAPoint.apply(x, self.D, self.dfa)

    def _finish(self, out: Tensor) -> Tensor:
        if self.is_output and self.dfa is not None:
            return _DFAOutput.apply(out, self.dfa)
        return out

    def _plain(self) -> bool:
        return _BACKPROP.get() or self.fb.kind == "weight" or not torch.is_grad_enabled()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        key = prefix + "D"
        if self.dfa is not None and self.D is None and key in state_dict:
            self.D = torch.empty_like(state_dict[key], device=self.weight.device)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.gen.get_state() if self.gen is not None else None}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if self.gen is not None and state.get("generator") is not None:
            self.gen.set_state(state["generator"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, feedback={self.fb}"


class FALinear(FeedbackLayer, nn.Linear):
    """``nn.Linear`` whose backward sends the error down through B (see ``FeedbackLayer``)."""

    def forward(self, x: Tensor) -> Tensor:
        if self._plain():
            return F.linear(x, self.weight, self.bias)
        x, B = self._prepare(x)
        return self._finish(_LinearFn.apply(x, self.weight, self.bias, B))

    @classmethod
    def from_layer(
        cls, layer: nn.Linear, fb: Feedback, seed: int, dfa: DFAState | None, is_output: bool
    ) -> FALinear:
        """A feedback layer that holds ``layer``'s own Parameters (no copy, no RNG used)."""
        with torch.device("meta"):
            new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None)
        new.weight, new.bias = layer.weight, layer.bias
        new.train(layer.training)
        new._setup(fb, seed, dfa, is_output)
        return new


def _int_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Resolve string padding to integers (the transposed convolution needs them)."""
    if conv.padding_mode != "zeros":
        raise NotImplementedError(f"padding_mode {conv.padding_mode!r}; only 'zeros' is supported")
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise NotImplementedError("padding='same' with an even kernel pads asymmetrically")
        return (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)


class FAConv2d(FeedbackLayer, nn.Conv2d):
    """``nn.Conv2d`` whose backward sends the error down through B (see ``FeedbackLayer``)."""

    def forward(self, x: Tensor) -> Tensor:
        if self._plain():
            return F.conv2d(
                x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        unbatched = x.dim() == 3
        x, B = self._prepare(x.unsqueeze(0) if unbatched else x)
        geom = (list(self.stride), list(self.padding), list(self.dilation), self.groups)
        out = self._finish(_Conv2dFn.apply(x, self.weight, self.bias, B, geom))
        return out.squeeze(0) if unbatched else out

    @classmethod
    def from_layer(
        cls, layer: nn.Conv2d, fb: Feedback, seed: int, dfa: DFAState | None, is_output: bool
    ) -> FAConv2d:
        """A feedback layer that holds ``layer``'s own Parameters (no copy, no RNG used)."""
        with torch.device("meta"):
            new = cls(
                layer.in_channels,
                layer.out_channels,
                layer.kernel_size,
                layer.stride,
                _int_padding(layer),
                layer.dilation,
                layer.groups,
                bias=layer.bias is not None,
            )
        new.weight, new.bias = layer.weight, layer.bias
        new.train(layer.training)
        new._setup(fb, seed, dfa, is_output)
        return new


LAYERS: dict[type[nn.Module], type[FeedbackLayer]] = {nn.Linear: FALinear, nn.Conv2d: FAConv2d}


def _layer_kind(m: nn.Module) -> type[nn.Module] | None:
    if isinstance(m, FeedbackLayer):
        return None
    return next((t for t in LAYERS if isinstance(m, t)), None)


def convert_layers(
    model: nn.Module,
    fb: Feedback,
    *,
    exclude: tuple[str, ...] = (),
    last_layer: str = "rule",
    seed: int | None = None,
) -> tuple[nn.Module, list[FeedbackLayer]]:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` (except the names in
    ``exclude``) by its feedback version, keeping the Parameters; returns (model, layers).

    Layers are taken in registration order, which must be the forward order: the last one is
    the output layer (exact under ``last_layer='bp'``; DFA's error e is read at its output).
    brSF's generators are seeded from ``seed`` (default: torch's initial seed) and the layer index.
    """
    if last_layer not in ("rule", "bp"):
        raise ValueError(f"last_layer must be 'rule' or 'bp', got {last_layer!r}")
    found = [(n, m) for n, m in model.named_modules() if _layer_kind(m) and n not in exclude]
    if not found:
        raise ValueError("the model has no nn.Linear or nn.Conv2d layer to convert")
    dfa = None
    if fb.kind == "direct":
        out = found[-1][1]
        if not isinstance(out, nn.Linear):
            raise NotImplementedError("DFA needs an nn.Linear output layer")
        dfa = DFAState(out.out_features, fb.scale)
    seed = torch.initial_seed() if seed is None else seed
    layers = []
    for i, (name, m) in enumerate(found):
        last = i == len(found) - 1
        layer_fb = Feedback("weight") if last and last_layer == "bp" else fb
        new = LAYERS[_layer_kind(m)].from_layer(m, layer_fb, layer_seed(seed, i), dfa, last)
        if name:
            model.set_submodule(name, new)
        else:
            model = new
        layers.append(new)
    return model, layers


@torch.no_grad()
def no_sign_change(optimizer: torch.optim.Optimizer, weights: list[Tensor]) -> list[Any]:
    """Keep every weight's sign through each ``optimizer.step()`` (arXiv 1510.05067, willwx
    ``bm_nsc_sgd``): a weight that flipped or reached 0 is set to ±1e-10 with its old sign; an
    old 0 counts as positive. Works with any optimizer; returns the hook handles."""
    old: list[Tensor] = []

    def pre(*_: Any) -> None:
        old[:] = [torch.where(w >= 0, 1.0, -1.0).to(w.dtype) for w in weights]

    def post(*_: Any) -> None:
        with torch.no_grad():
            for w, s in zip(weights, old):
                w.copy_(torch.where(w * s <= 0, 1e-10 * s, w))

    return [optimizer.register_step_pre_hook(pre), optimizer.register_step_post_hook(post)]


@torch.no_grad()
def materialize(model: nn.Module, example: Tensor) -> None:
    """One forward pass in eval mode with autograd on, so that DFA's D matrices (sized by the
    hidden activations) exist before an optimizer or a checkpoint sees the model."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.enable_grad():
            model(example)
    finally:
        for m, mode in modes.items():
            m.train(mode)
