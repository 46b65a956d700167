"""PEPITA: learning from a second, error-modulated forward pass instead of a backward pass.

Dellaferrera & Kreiman, "Error-driven input modulation" (arXiv 2201.11665, ICML 2022), and the
follow-up of Srinivasan et al. (arXiv 2302.05440, ICLR 2024): weight mirroring of F,
PEPITA-Hebbian, PEPITA-time-local and activation normalisation. Weight decay is the optimizer's.

Symbols, per batch of B samples and C classes (x has d₀ entries per sample):

- F (d₀ × C): fixed random projection of the output error onto the input; a buffer.
- s ∈ {+1, −1}: modulation sign, x_mod = x + s · e Fᵀ.
- h_l, hm_l: activity of layer l in the clean and the modulated pass (after the activation and
  the dropout mask, before pooling); h₀ = x, hm₀ = x_mod. A block's input (pooled, flattened) is
  what multiplies its update.
- y = softmax(logits), Y = one-hot targets, e = y − Y (first pass), e_mod = y_mod − Y.

Update (``.grad`` = −ΔW, as everywhere in bioprop), with a conv layer summing over positions:

    G_l = (h_l − hm_l)ᵀ hm_{l−1} / B      hidden layers
    G_L = e_outᵀ hm_{L−1} / B             e_out = e (``error="first"``) or e_mod

In the small-F limit this is feedback alignment with the direct feedback −s·W₁F for the first
layer (``feedback_pairs`` reports it). Biases, when the model has them, get the same rule with
an input of ones. One dropout mask per block and batch serves both passes: the rule draws it
itself (in block order, as ``nn.Dropout`` would from the same RNG state) and reads only ``p``
from the block's ``nn.Dropout``.

The rule updates its own state: with weight mirroring it changes F (and its factors B_l) inside
``step``, and F is a buffer, so checkpoints and resumption cover it.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from bioprop.models.net import Block, Net
from bioprop.rules.base import FeedbackPair, Rule, StepOutput, register_rule

FEEDBACKS = ("uniform", "normal", "factorised")
CONV_SCALES = {
    "sum": lambda p: 1.0,
    "mean_positions": lambda p: 1.0 / p,
    "sqrt_positions": lambda p: 1.0 / math.sqrt(p),
}
NORMALIZE = ("none", "sample", "batch")
MIRROR_SPECTRA = ("keep", "flat")


def outer(block: Block, post: Tensor, pre: Tensor) -> tuple[Tensor, Tensor | None]:
    """Σ over the batch (and over positions for a conv) of post ⊗ pre, for weight and bias.

    ``post`` has the shape of the layer's output, ``pre`` of its input; a convolution reuses
    the weight gradient of autograd's conv backward, one call for all positions.
    """
    op = block.op
    if isinstance(op, nn.Conv2d):
        g = torch.nn.grad.conv2d_weight(
            pre, op.weight.shape, post, op.stride, conv_padding(op), op.dilation, op.groups
        )
        return g, post.sum((0, 2, 3)) if op.bias is not None else None
    return post.T @ pre, post.sum(0) if op.bias is not None else None


def conv_padding(op: nn.Conv2d) -> tuple[int, int]:
    """Numeric padding of a conv ('same' needs odd kernels, where it is symmetric)."""
    if op.padding_mode != "zeros":
        raise ValueError(f"PEPITA supports zero padding only, got {op.padding_mode!r}")
    if op.padding == "valid":
        return (0, 0)
    if op.padding == "same":
        if any(k % 2 == 0 for k in op.kernel_size):
            raise ValueError("padding='same' with an even kernel is asymmetric; use numbers")
        return tuple(d * (k - 1) // 2 for d, k in zip(op.dilation, op.kernel_size))
    return tuple(op.padding)


def stable_rank(m: Tensor) -> float:
    """‖m‖²_F / ‖m‖²₂: the number of directions that carry m's energy (1 for rank one)."""
    sv = torch.linalg.svdvals(m.double())
    return float((sv**2).sum() / sv[0] ** 2)


def chain(ws: list[Tensor]) -> Tensor:
    """W_n⋯W₁ for ws = [W₁, …, W_n], multiplied from W_n, the narrow (C-row) end."""
    out = ws[-1]
    for w in reversed(ws[:-1]):
        out = out @ w
    return out


def feedback_stats(f: Tensor, ws: list[Tensor] | None) -> dict[str, float]:
    """``pepita/F_rank``: stable rank of F (C when all singular values are equal, 1 when F has
    collapsed to one direction); with the weights of a fully connected net also
    ``pepita/F_cos``: cos(F, (W_L⋯W₁)ᵀ), the alignment weight mirroring aims at."""
    out = {"pepita/F_rank": stable_rank(f)}
    if ws is not None:
        path = chain(ws)
        out["pepita/F_cos"] = float(nnf.cosine_similarity(path.T.flatten(), f.flatten(), 0))
    return out


def normalized(h: Tensor, kind: str) -> Tensor:
    """h / ‖h‖: per sample (L2 over all but the batch dimension) or over the whole batch."""
    if kind == "none":
        return h
    norm = h.flatten(1).norm(dim=1).view(-1, *[1] * (h.dim() - 1)) if kind == "sample" else h.norm()
    return h / norm.clamp_min(1e-12)  # a silent layer gives 0, not 0/0


@register_rule("pepita")
class Pepita(Rule):
    """PEPITA for MLPs and conv nets (blocks: Linear/Conv2d, activation, optional pool/dropout).

    feedback: distribution of F: ``uniform`` U(±√(6/d₀))·scale (ICML code), ``normal``
        N(0, σ_F²), or ``factorised`` F = B₁⋯B_L with B_l ~ N(0, σ_B²) (follow-up; needed for
        mirroring), σ_F = scale·√(2/d₀), σ_B = (σ_F/√∏_{l<L} d_l)^{1/L}.
    feedback_scale: the 0.05 above; 0 gives F = 0 (then PEPITA is BP on the last layer only).
    sign: s; −1 (follow-up, required by mirroring) or +1 (ICML code).
    error: last-layer error ``first`` (e) or ``modulated`` (e_mod, ICML tutorial).
    normalize: activation normalisation after each hidden activation, in both passes and at
        evaluation: ``none``, ``sample`` (per-sample L2) or ``batch`` (official Frobenius).
    conv_scale: a conv update divided by B (``sum``), B·P or B·√P (P = output positions).
        With ``sum`` a two-conv-layer net diverged on the 8x8 digits at lr 0.01 (one conv
        layer trains); deeper conv nets may need ``mean_positions``.
    official_conv_quirk: flip the conv update's sign and divide once more by B, as the official
        conv script does (only to reproduce its numbers; the filters then hardly move).
    mirror_every, mirror_pre_epochs: weight mirroring (WM) of the factors B_l in (0-based)
        epoch e if e < E_pre or (e+1) mod M = 0; during the first E_pre epochs only WM runs
        (the weights get no ``.grad``). 0 and 0: no mirroring. The epoch comes from the
        loop through ``start_epoch``.
    mirror_lr, mirror_wd, mirror_noise: η_WM, λ_WM and the amplitude of the noise ξ.
    mirror_spectrum: what a mirror step makes of F. ``keep`` (the follow-up): F = B₁⋯B_L.
        ``flat`` (our design, not in the papers): F = c·U Vᵀ, the product's singular vectors
        with all C singular values equal, so F keeps the product's directions but not its
        spectrum. Tried because mirroring every epoch ended with F of rank 1 in our failing
        3-hidden-layer CIFAR-10 runs; on the digits it did not prevent the failure, which
        comes with the close alignment, not the rank (docs/pepita-results.md). The factors
        B_l still track W_lᵀ; with ``flat`` F is no longer their product.
    """

    demo: ClassVar[dict[str, Any] | None] = {}

    def __init__(
        self,
        model: nn.Module,
        feedback: str = "uniform",
        feedback_scale: float = 0.05,
        sign: int = -1,
        error: str = "first",
        normalize: str = "none",
        conv_scale: str = "sum",
        official_conv_quirk: bool = False,
        mirror_every: int = 0,
        mirror_pre_epochs: int = 0,
        mirror_lr: float = 0.1,
        mirror_wd: float = 0.5,
        mirror_noise: float = 0.1,
        mirror_spectrum: str = "keep",
    ) -> None:
        super().__init__(model)
        choices = [
            ("feedback", feedback, FEEDBACKS),
            ("sign", sign, (1, -1)),
            ("error", error, ("first", "modulated")),
            ("normalize", normalize, NORMALIZE),
            ("conv_scale", conv_scale, tuple(CONV_SCALES)),
            ("mirror_spectrum", mirror_spectrum, MIRROR_SPECTRA),
        ]
        for name, value, allowed in choices:
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not isinstance(model, Net):
            raise TypeError(f"PEPITA needs a bioprop Net of Blocks, got {type(model).__name__}")
        self.blocks: list[Block] = list(model.blocks)
        for b in self.blocks:
            if b.norm is not None or (b.pool is not None and b.drop is not None):
                raise ValueError("PEPITA blocks may not have a norm layer, nor pool with dropout")
        self.sign, self.error, self.normalize = sign, error, normalize
        self.conv_scale, self.quirk = conv_scale, official_conv_quirk
        self.mirror_every, self.mirror_pre_epochs = mirror_every, mirror_pre_epochs
        self.mirror_lr, self.mirror_wd, self.mirror_noise = mirror_lr, mirror_wd, mirror_noise
        self.mirror_spectrum = mirror_spectrum
        self.epoch = 0  # 0-based, set by ``start_epoch``; only the mirroring schedule reads it
        self._init_feedback(feedback, feedback_scale)

    # -- feedback ---------------------------------------------------------------------------

    def _init_feedback(self, kind: str, scale: float) -> None:
        w = self.blocks[0].op.weight
        d0 = math.prod(self.model.input_shape) if self.model.input_shape else w[0].numel()
        n_classes = self.blocks[-1].op.weight.shape[0]
        self.sigma_f = scale * math.sqrt(2.0 / d0)
        mirroring = self.mirror_every > 0 or self.mirror_pre_epochs > 0
        if mirroring and (kind != "factorised" or scale <= 0):
            raise ValueError("weight mirroring needs feedback='factorised' and feedback_scale > 0")
        if mirroring and self.sign != -1:
            raise ValueError("weight mirroring needs sign=-1 (with +1 F anti-aligns with BP)")
        opts = {"dtype": w.dtype, "device": w.device}
        self.factors: list[str] = []
        if kind == "factorised":
            if not all(isinstance(b.op, nn.Linear) for b in self.blocks):
                raise ValueError("a factorised F (and mirroring) needs a fully connected net")
            widths = [d0] + [b.op.out_features for b in self.blocks]
            n = len(self.blocks)
            sigma_b = (self.sigma_f / math.sqrt(math.prod(widths[1:-1]))) ** (1.0 / n)
            for i in range(n):
                self.factors.append(f"B{i + 1}")
                factor = torch.randn(widths[i], widths[i + 1], **opts) * sigma_b
                self.register_buffer(self.factors[-1], factor)
            self.register_buffer("F", self._product())
        elif kind == "uniform":
            bound = scale * math.sqrt(6.0 / d0)
            self.register_buffer("F", torch.empty(d0, n_classes, **opts).uniform_(-bound, bound))
        else:
            self.register_buffer("F", torch.randn(d0, n_classes, **opts) * self.sigma_f)
        # Data-parallel workers keep F equal even if their RNG streams drift apart.
        self.synced_buffers = ("F", *self.factors)

    def _product(self) -> Tensor:
        """F = B_1 ⋯ B_L, multiplied from the narrow (C-column) end: d_{l-1}·d_l·C per factor
        instead of d_0·d_l·d_{l+1} (for 3072-1024-1024-1024-10, about 50 M instead of 6.4 G
        multiply-adds, which made every mirrored step cost several times a PEPITA step)."""
        out = getattr(self, self.factors[-1])
        for name in reversed(self.factors[:-1]):
            out = getattr(self, name) @ out
        return out

    def feedback_pairs(self) -> list[FeedbackPair]:
        """Layer 1's effective direct feedback −s·W₁F (d₁ × C, transposed to C × d₁) against
        what BP sends back to layer 1 through a linear net, W_L⋯W₂ (fully connected only)."""
        if len(self.blocks) < 2 or not all(isinstance(b.op, nn.Linear) for b in self.blocks):
            return []
        w = [b.op.weight.detach() for b in self.blocks]
        return [FeedbackPair("W1F", chain(w[1:]), (-self.sign * w[0] @ self.F).T)]

    def metrics(self) -> dict[str, float]:
        """F's stable rank and, for a fully connected net, its alignment (``feedback_stats``)."""
        linear = all(isinstance(b.op, nn.Linear) for b in self.blocks)
        ws = [b.op.weight.detach() for b in self.blocks] if linear else None
        return feedback_stats(self.F, ws)

    # -- passes -----------------------------------------------------------------------------

    def _pass(self, x: Tensor, masks: list[Tensor | None] | None) -> tuple[list, list, Tensor]:
        """One forward pass; returns the blocks' inputs, their activities and the logits.

        masks: None (no dropout, evaluation) or a list; an empty list is filled with one fresh
        mask per block (None where the block has no dropout), a full one is reused.
        """
        draw = masks is not None and not masks
        inputs, acts = [], []
        for i, block in enumerate(self.blocks):
            a = block.prepare(x)
            h = block.act(block.op(a))
            if masks is not None:
                if draw:
                    masks.append(self._mask(block, h))
                if masks[i] is not None:
                    h = h * masks[i]
            if i < len(self.blocks) - 1:
                h = normalized(h, self.normalize)
            inputs.append(a)
            acts.append(h)
            x = block.pool(h) if block.pool is not None else h
        return inputs, acts, x

    @staticmethod
    def _mask(block: Block, h: Tensor) -> Tensor | None:
        if block.drop is None:
            return None
        q = 1.0 - block.drop.p
        return torch.empty_like(h).bernoulli_(q).div_(q)  # the draw nn.Dropout makes

    def _modulate(self, x: Tensor, e: Tensor) -> Tensor:
        return x + self.sign * (e @ self.F.T).view_as(x)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self._pass(x, None)[2]

    # -- updates ----------------------------------------------------------------------------

    def _grad(self, block: Block, post: Tensor, pre: Tensor, batch: int) -> tuple[Tensor, ...]:
        """post ⊗ pre summed, divided by the batch size (and scaled as chosen for a conv)."""
        scale = 1.0 / batch
        if isinstance(block.op, nn.Conv2d):
            scale *= CONV_SCALES[self.conv_scale](post[0, 0].numel())
            if self.quirk:
                scale *= -1.0 / batch
        # The sum is linear in ``post``: scaling it (B × d_out) is far cheaper than scaling the
        # weight-sized result, which cost a sixth of a step on a 3072-1024-10 net.
        return outer(block, post * scale, pre)

    def _assign(self, block: Block, grads: tuple[Tensor, ...]) -> None:
        block.op.weight.grad = grads[0]
        if block.op.bias is not None:
            block.op.bias.grad = grads[1]

    def _learn(self, x: Tensor, y: Tensor, masks: list) -> Tensor:
        """Both passes and the ``.grad`` of every layer; returns the first pass's logits."""
        inputs, acts, logits = self._pass(x, masks)
        target = nnf.one_hot(y, logits.shape[1]).to(logits.dtype)
        e = logits.softmax(1) - target
        inputs_m, acts_m, logits_m = self._pass(self._modulate(x, e), masks)
        e_out = e if self.error == "first" else logits_m.softmax(1) - target
        self._write(x.shape[0], inputs, acts, inputs_m, acts_m, e_out, logits.softmax(1), target)
        return logits

    def _write(
        self,
        batch: int,
        inputs: list[Tensor],
        acts: list[Tensor],
        inputs_m: list[Tensor],
        acts_m: list[Tensor],
        e_out: Tensor,
        probs: Tensor,
        target: Tensor,
    ) -> None:
        """Fill ``.grad`` from both passes (block inputs, activities, output error and
        probabilities, one-hot target); the Hebbian variant overrides only this."""
        for i, block in enumerate(self.blocks):
            self._assign(block, self._pepita_grad(i, batch, inputs_m, acts, acts_m, e_out))

    def _pepita_grad(
        self,
        i: int,
        batch: int,
        inputs_m: list[Tensor],
        acts: list[Tensor],
        acts_m: list[Tensor],
        e_out: Tensor,
    ) -> tuple[Tensor, ...]:
        """Layer i's update: (h − h_mod) against its modulated input; the last layer uses e_out."""
        post = e_out if i == len(self.blocks) - 1 else acts[i] - acts_m[i]
        return self._grad(self.blocks[i], post, inputs_m[i], batch)

    @torch.no_grad()
    def step(self, x: Tensor, y: Tensor) -> StepOutput:
        e = self.epoch
        pre = e < self.mirror_pre_epochs
        mirror = pre or (self.mirror_every > 0 and (e + 1) % self.mirror_every == 0)
        masks: list = [] if self.model.training else None
        logits = self._pass(x, masks)[2] if pre else self._learn(x, y, masks)
        if mirror:
            self.mirror(x.shape[0])
        return StepOutput(logits, nnf.cross_entropy(logits, y))

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch - 1

    # -- weight mirroring -------------------------------------------------------------------

    @torch.no_grad()
    def mirror(self, batch: int) -> None:
        """One WM step on every factor, then rescale F to std σ_F (arXiv 2302.05440, §5.3).

        B_l ← (1 − η λ) B_l + η ξᵀu / B with ξ = noise (mean removed), u = the block's response
        to ξ (fresh dropout mask; softmax on the output): a separate SGD without momentum.
        With ``mirror_spectrum="flat"`` F is then the polar factor of B₁⋯B_L, at std σ_F.
        """
        for block, name in zip(self.blocks, self.factors):
            w = block.op.weight
            xi = self.mirror_noise * torch.randn(batch, w.shape[1], dtype=w.dtype, device=w.device)
            xi -= xi.mean()
            u = block.act(block.op(xi))
            if block is self.blocks[-1]:
                u = u.softmax(1)
            else:
                mask = self._mask(block, u)
                u = u * mask if mask is not None else u
            factor = getattr(self, name)
            factor.mul_(1 - self.mirror_lr * self.mirror_wd).add_(
                xi.T @ u, alpha=self.mirror_lr / batch
            )
        product = self._product()
        ratio = self.sigma_f / product.std()
        gain = ratio ** (1.0 / len(self.factors))
        for name in self.factors:
            getattr(self, name).mul_(gain)
        if self.mirror_spectrum == "flat":
            u, _, vh = torch.linalg.svd(product, full_matrices=False)
            flat = u @ vh
            self.F.copy_(flat.mul_(self.sigma_f / flat.std()))
            return
        # F is linear in each factor, so scaling all L factors by gain scales F by gain^L = ratio
        self.F.copy_(product.mul_(ratio))


@register_rule("pepita_hebbian")
class PepitaHebbian(Pepita):
    """PEPITA-Hebbian (``mixed`` in arXiv 2302.05440): anti-Hebbian in pass 1, Hebbian in pass 2.

    G_l = (h_lᵀh_{l−1} − hm_lᵀhm_{l−1}) / B,  G_L = (yᵀh_{L−1} − Yᵀhm_{L−1}) / B: PEPITA plus
    h_lᵀ(h_{l−1} − hm_{l−1}) / B; the output is clamped to the target Y in pass 2.

    hebbian_layers: the (0-based, negative from the end) weight layers that take the Hebbian
        form; the others take PEPITA's update (with ``error`` for the last layer). None (the
        paper's rule): all of them. Our design, for locating instabilities: with 3 hidden layers
        the full rule diverged on CIFAR-10 (2 of 2 seeds at lr 0.01, 1 of 1 at 0.003) and on
        the 8x8 digits (3 of 3 at 0.01); on the digits the Hebbian form of hidden layer 2 or 3
        alone suffices for that, while that of layer 1 or of the output layer does not
        (``benchmarks/pepita-digits-hebbian.yaml``, docs/pepita-results.md).
    """

    def __init__(self, model: nn.Module, hebbian_layers: list[int] | None = None, **kwargs: Any):
        super().__init__(model, **kwargs)
        n = len(self.blocks)
        chosen = range(n) if hebbian_layers is None else list(hebbian_layers)
        if bad := [i for i in chosen if not -n <= i < n]:
            raise ValueError(f"hebbian_layers {bad} out of range for a net of {n} weight layers")
        self.hebbian = {i % n for i in chosen}

    def _write(
        self,
        batch: int,
        inputs: list[Tensor],
        acts: list[Tensor],
        inputs_m: list[Tensor],
        acts_m: list[Tensor],
        e_out: Tensor,
        probs: Tensor,
        target: Tensor,
    ) -> None:
        outs, outs_m = [*acts[:-1], probs], [*acts_m[:-1], target]
        for i, block in enumerate(self.blocks):
            if i not in self.hebbian:
                self._assign(block, self._pepita_grad(i, batch, inputs_m, acts, acts_m, e_out))
                continue
            g1 = self._grad(block, outs[i], inputs[i], batch)
            g2 = self._grad(block, outs_m[i], inputs_m[i], batch)
            self._assign(block, tuple(a - b if a is not None else None for a, b in zip(g1, g2)))


@register_rule("pepita_tl")
class PepitaTimeLocal(Pepita):
    """PEPITA-time-local (``mixed_tl`` in arXiv 2302.05440): two optimizer steps per batch.

    (a) after pass 1: G_l = h_lᵀh_{l−1} / B, G_L = yᵀh_{L−1} / B, and the optimizer steps;
    (b) pass 2 with the updated weights (e from pass 1): G_l = −hm_lᵀhm_{l−1} / B,
    G_L = −Yᵀhm_{L−1} / B, applied by the loop's step. Momentum and weight decay see both.
    fresh_masks: draw new dropout masks for pass 2 (official) or reuse pass 1's.
    The rule calls the optimizer the loop attached (``attach_optimizer``).
    Caution: step (a) lowers the weights before pass 2 runs, so the halves do not cancel to
    PEPITA's h − h_mod. On uncentred inputs with large x_iᵀx_j (CIFAR-10 in [0, 1]: ≈ 950) at
    lr 0.01 the hidden units fall silent within 100 batches and the net stays at chance
    (docs/pepita-results.md; ``benchmarks/pepita_tl_probe.py``).
    """

    # Each half-step is a full Hebbian term, not a small difference: a smaller lr, and no
    # biases (their half-steps are the raw mean activities). 82 % on the digits in 10 epochs.
    demo: ClassVar[dict[str, Any] | None] = {"optim.lr": 0.01, "model.args.bias": False}

    def __init__(self, model: nn.Module, fresh_masks: bool = True, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.fresh_masks = fresh_masks
        self.optimizer: torch.optim.Optimizer | None = None

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def _learn(self, x: Tensor, y: Tensor, masks: list) -> Tensor:
        if self.optimizer is None:
            raise RuntimeError("pepita_tl steps the optimizer itself: call attach_optimizer")
        batch = x.shape[0]
        inputs, acts, logits = self._pass(x, masks)
        target = nnf.one_hot(y, logits.shape[1]).to(logits.dtype)
        e = logits.softmax(1) - target
        for block, post, pre in zip(self.blocks, [*acts[:-1], logits.softmax(1)], inputs):
            self._assign(block, self._grad(block, post, pre, batch))
        self.optimizer.step()
        if masks is not None and self.fresh_masks:
            masks = []
        inputs_m, acts_m, _ = self._pass(self._modulate(x, e), masks)
        for block, post, pre in zip(self.blocks, [*acts_m[:-1], target], inputs_m):
            self._assign(block, self._grad(block, -post, pre, batch))
        return logits
