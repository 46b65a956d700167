"""Signal Propagation (SigProp; Kohan, Rietman & Siegelmann, 2022, arXiv 2204.01723).

Spec: specs/sigprop.md (the official code amassivek/signalpropagation is followed where the paper
cannot be checked). Symbols:

x, y: input and labels; c = onehot(y); C classes; B batch.
t₀: the context. Input-target mode (losses max_all, max_rand, topk): t₀ = c, one target per
    sample (N_t = B). Input-label mode (loss "direct"): t₀ = I_C, one prototype per class (N_t = C).
g_x: the first block of the net (h₁ = g_x(x)); g_c: ``TargetEmbedding``, t₁ = ReLU(LN(W_c t₀)),
    shaped like h₁. The rule adds g_c to the model as ``model.signal`` (see below).
h_ℓ, t_ℓ: the input and the target stream after block ℓ; both go through the *same* block
    with the same weights, in two calls (independent dropout masks).
Y = h tᵀ / P: the local logits (raw dot products; P = spatial positions of h, 1 for FC).
S = t_in t_inᵀ / P_in: similarity of the detached target input (S = ccᵀ at the signal layer),
    from which the input-target losses build their positives.

Each hidden block ℓ is updated from its own local loss L_ℓ(h_ℓ, t_ℓ) only; the last block (the
head) from cross-entropy on the detached last features. ``torch.autograd`` is used, but only
inside one block: its inputs h_in, t_in are detached, so the graph of L_ℓ contains block ℓ's
parameters and nothing else, and no error signal ever crosses a layer. That is what makes the
rule local: the update of block ℓ is a function of block ℓ's weights, its input activations and
the target stream arriving at it from *below*, exactly as in a forward-only network; autograd is
merely the chain rule inside one layer (weight -> norm -> activation -> loss).

Outputs passed on are computed with the pre-step weights, and the loop in ``train.py`` applies
all updates with one optimizer step at the end of the batch (one optimizer over all parameters;
``layer_params`` gives the per-layer groups). The spec's default, one optimizer per layer stepped
inside the forward, gives exactly the same weights: block ℓ+1 only ever sees outputs computed
before block ℓ steps, each parameter's grad comes from one local loss, and SGD/Adam update each
parameter from its own grad and state alone (no global-norm clipping or summed losses couple
layers). ``tests/test_sigprop.py`` checks the equality.

Where g_c lives: it has trainable parameters, and ``train.py`` builds its optimizer from
``model.parameters()`` *after* building the rule. The rule therefore registers g_c as a
submodule of the model (``model.signal``), so the one optimizer, ``state_dict`` and checkpoints
cover it; the net's ``forward`` never calls it, so inference sees x only (no label leak) and BP on
the same factory is the same net without g_c.

Randomness (dropout, random tie-breaking) is drawn, per block and step, from a generator seeded
with (seed, block, step), so that a pipelined run in several processes reproduces the
sequential run bit for bit.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bioprop.models.net import Block, Net
from bioprop.rules.base import Rule, StepOutput, register_rule

LOSSES = ("direct", "max_all", "max_rand", "topk")
PREDICT = ("head", "readout")
TIE_BREAKS = ("random", "first")
SPATIAL = ("mean", "per_position")


def _positions(a: Tensor) -> int:
    return math.prod(a.shape[2:]) if a.dim() > 2 else 1


def local_logits(h: Tensor, t: Tensor) -> Tensor:
    """Y = h.flatten(1) t.flatten(1)ᵀ / P: the mean over positions of the per-position logits."""
    return h.flatten(1) @ t.flatten(1).T / _positions(h)


def similarity(t_in: Tensor) -> Tensor:
    """S = t_in.flatten(1) t_in.flatten(1)ᵀ / P_in."""
    return local_logits(t_in, t_in)


def max_all_mask(s: Tensor, tol: float = 1e-6) -> Tensor:
    """v9: M_ij = 1[S_ij ≥ rowmax − tol·max(1, |rowmax|)] (tolerant, not exact float equality)."""
    rowmax = s.max(1, keepdim=True).values
    return (s >= rowmax - tol * rowmax.abs().clamp(min=1.0)).to(s.dtype)


def topk_mask(s: Tensor, k: int) -> Tensor:
    """v15: M_ij = 1[j ∈ topk(S_i, k)], k ones per row."""
    idx = s.topk(min(k, s.shape[1]), dim=1).indices
    return torch.zeros_like(s).scatter_(1, idx, 1.0)


def max_index(s: Tensor, tie_break: str = "random") -> Tensor:
    """v14: a_i = an argmax of S_i; uniformly random among (tolerant) ties, or the first one."""
    m = max_all_mask(s)
    if tie_break == "first":
        return m.argmax(1)  # torch.argmax returns the first maximal index
    r = torch.rand(s.shape, device=s.device)
    return r.masked_fill(m == 0, -1.0).argmax(1)


def soft_ce(y_logits: Tensor, m: Tensor) -> Tensor:
    """softCE(Y, M) = (1/B) Σ_i Σ_j −M_ij log softmax(Y_i)_j (rows of M not normalised)."""
    return -(m * F.log_softmax(y_logits, 1)).sum(1).mean()


def make_target(kind: str, y: Tensor, s: Tensor | None, k: int, tie_break: str) -> Tensor:
    """Class indices (direct, max_rand) or a 0/1 mask [B, N_t] (max_all, topk)."""
    if kind == "direct":
        return y
    if kind == "max_all":
        return max_all_mask(s)
    if kind == "topk":
        return topk_mask(s, k)
    return max_index(s, tie_break)


def _ce(y_logits: Tensor, target: Tensor) -> Tensor:
    if target.dtype == torch.long:
        return F.cross_entropy(y_logits, target)
    return soft_ce(y_logits, target)


def local_loss(
    h: Tensor, t: Tensor, target: Tensor, spatial: str = "mean", scale: float = 1.0
) -> Tensor:
    """The local loss of one layer. ``spatial="mean"`` (the code) averages the logits over
    positions before one CE; ``"per_position"`` is the mean over positions of the FC loss on
    (h[:, :, p], t[:, :, p]) with the same target. ``scale`` multiplies the logits before the
    softmax (an inverse temperature; 1 in the code)."""
    if spatial == "mean" or h.dim() == 2:
        return _ce(scale * local_logits(h, t), target)
    p = _positions(h)
    yp = scale * torch.einsum("bkp,nkp->pbn", h.flatten(2), t.flatten(2)).flatten(0, 1)
    rep = target.repeat(p) if target.dim() == 1 else target.repeat(p, 1)
    return _ce(yp, rep)


class TargetEmbedding(nn.Module):
    """g_c: t₁ = ReLU(LN(W_c t₀)).view(N_t, *shape); W_c has no bias, LN is over all features."""

    def __init__(self, num_classes: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        n = math.prod(self.shape)
        self.linear = nn.Linear(num_classes, n, bias=False)
        self.norm = nn.LayerNorm(n)

    def forward(self, t0: Tensor) -> Tensor:
        return F.relu(self.norm(self.linear(t0))).view(-1, *self.shape)


def block_activation(block: Block, a: Tensor) -> Tensor:
    """h = act(norm(op(a))): the block's output before pooling and dropout (where the loss is)."""
    z = block.op(block.prepare(a))
    return block.act(block.norm(z) if block.norm is not None else z)


def block_tail(block: Block, h: Tensor) -> Tensor:
    """Pool, then dropout: the rest of ``Block.post``, which carries no loss."""
    if block.pool is not None:
        h = block.pool(h)
    return block.drop(h) if block.drop is not None else h


@torch.no_grad()
def _signal_shape(model: Net) -> tuple[int, ...]:
    block, mode = model.blocks[0], model.blocks[0].training
    block.eval()  # no running-statistics update from the dummy sample
    shape = tuple(block_activation(block, torch.zeros(1, *model.input_shape)).shape[1:])
    block.train(mode)
    return shape


@register_rule("sigprop")
class SigProp(Rule):
    """SigProp: every block learns from its own local loss between h and t; see the module doc.

    loss: "direct" (v1, input-label), "max_all" (v9), "max_rand" (v14) or "topk" (v15).
    k: positives per row for "topk" (6 in the official script; needs about k samples per class
        in a batch). tie_break: "random" or "first" (parity with the code) for "max_rand".
    spatial: "mean" (logits averaged over positions) or "per_position" (mean of per-position
        losses). seed: seeds the per-(block, step) generators of dropout and tie-breaking.
    logit_scale: multiplies every local loss's logits Y before the softmax (an inverse
        temperature; our addition, the code has none: 1). Instance/layer norm fixes the size of
        h and t, so raw dot products spread little in narrow layers and the softmax over the
        batch stays close to uniform; a larger scale sharpens it. The readout's argmax, the
        targets S and the head do not depend on it.
    """

    demo: ClassVar[dict[str, Any] | None] = {
        "rule.args.loss": "max_all",
        "optim.name": "adam",
        "optim.lr": 0.001,
    }

    def __init__(
        self,
        model: Net,
        loss: str = "topk",
        k: int = 6,
        tie_break: str = "random",
        spatial: str = "mean",
        seed: int = 0,
        predict: str = "head",
        readout_layer: int = -1,
        logit_scale: float = 1.0,
    ) -> None:
        for name, value, allowed in (
            ("loss", loss, LOSSES),
            ("predict", predict, PREDICT),
            ("tie_break", tie_break, TIE_BREAKS),
            ("spatial", spatial, SPATIAL),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not logit_scale > 0:
            raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
        if not isinstance(model, Net) or len(model.blocks) < 2:
            raise ValueError("sigprop needs a Net with at least a signal block and a head")
        super().__init__(model)
        self.loss, self.k, self.tie_break, self.spatial, self.seed = (
            loss,
            k,
            tie_break,
            spatial,
            seed,
        )
        hidden = len(model.blocks) - 1
        if not -hidden <= readout_layer < hidden:
            raise ValueError(f"readout_layer must index one of the {hidden} hidden blocks")
        self.predict_mode, self.readout_layer = predict, readout_layer % hidden
        self.logit_scale = float(logit_scale)
        self.num_classes = model.blocks[-1].op.out_features
        if not isinstance(getattr(model, "signal", None), TargetEmbedding):
            model.signal = TargetEmbedding(self.num_classes, _signal_shape(model))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._losses: list[Tensor] = []

    @property
    def num_layers(self) -> int:
        """Blocks with their own loss: the hidden blocks and the head (the last one)."""
        return len(self.model.blocks)

    def layer_params(self, i: int) -> list[nn.Parameter]:
        """The parameters updated from layer i's loss (layer 0 includes g_c)."""
        mods = [self.model.blocks[i]] + ([self.model.signal] if i == 0 else [])
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    def context(self, y: Tensor) -> Tensor:
        """t₀: onehot(y) (input-target mode) or I_C (input-label mode)."""
        c = self.num_classes
        if self.loss == "direct":
            return torch.eye(c, device=y.device)
        return F.one_hot(y, c).float()

    def _rng(self, i: int, step: int, device: torch.device) -> contextlib.AbstractContextManager:
        if not (self.loss == "max_rand" and self.tie_break == "random") and not any(
            isinstance(m, nn.Dropout) and m.p > 0 for m in self.model.blocks[i].modules()
        ):
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.random.fork_rng([device] if device.type == "cuda" else []))
        torch.manual_seed(hash((self.seed, i, step)) % 2**62)
        return stack

    def layer_step(
        self, i: int, h_in: Tensor, t_in: Tensor | None, y: Tensor, step: int
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Fill ``.grad`` of layer i from its own loss; return its detached outputs (h, t, loss).

        For the head (i = L−1) the outputs are the detached logits, None and the CE loss.
        """
        block, params = self.model.blocks[i], self.layer_params(i)
        with self._rng(i, step, h_in.device), torch.enable_grad():
            h_in = h_in.detach()  # locality: nothing upstream of this layer is in its graph
            if i == self.num_layers - 1:
                h = block(h_in)
                loss = F.cross_entropy(h, y)
                t_out = None
            else:
                t_in = t_in.detach()
                h = block_activation(block, h_in)
                t = self.model.signal(t_in) if i == 0 else block_activation(block, t_in)
                s = None if self.loss == "direct" else similarity(t_in)
                target = make_target(self.loss, y, s, self.k, self.tie_break)
                loss = local_loss(h, t, target, self.spatial, self.logit_scale)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            if i < self.num_layers - 1:
                with torch.no_grad():
                    h, t_out = block_tail(block, h.detach()), block_tail(block, t.detach())
        for p, g in zip(params, grads):
            p.grad = g if g is not None else torch.zeros_like(p)
        return h.detach(), t_out, loss.detach()

    def step(self, x: Tensor, y: Tensor) -> StepOutput:
        if y is None:
            raise ValueError("sigprop needs labels to train; prediction (predict) needs none")
        n = int(self.steps)
        h, t, losses = x, self.context(y), []
        for i in range(self.num_layers):
            h, t, loss = self.layer_step(i, h, t, y, n)
            losses.append(loss)
        self.steps += 1
        self._losses = losses
        return StepOutput(h, losses[-1])

    @torch.no_grad()
    def readout_logits(self, x: Tensor, layer: int) -> Tensor:
        """Y(h_ℓ, t_ℓ(I_C)) [B, C]: block ``layer``'s local logits of x against the C class
        prototypes of the target stream (input-label context I_C in every loss mode), times
        ``logit_scale`` as in the loss."""
        h, t = x, self.model.signal(torch.eye(self.num_classes, device=x.device))
        for i, block in enumerate(self.model.blocks[: layer + 1]):
            h = block_activation(block, h)
            t = t if i == 0 else block_activation(block, t)
            if i < layer:
                h, t = block_tail(block, h), block_tail(block, t)
        return self.logit_scale * local_logits(h, t)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        if self.predict_mode == "readout":
            return self.readout_logits(x, self.readout_layer)
        return self.model(x)

    def metrics(self) -> dict[str, float]:
        return {f"local_loss_{i}": float(v) for i, v in enumerate(self._losses[:-1])}
