"""The feedback-alignment family: FA, DFA, sign symmetry (uSF, brSF, frSF) and SCFA.

Every rule keeps BP's exact local weight gradient ``grad W_l = δ_l^T h_{l-1}`` and changes only
how δ travels down: the backward pass reads a feedback tensor B_l in place of W_l (see
``bioprop.rules._feedback`` for the mechanism and why it is exact and local). The variants
differ by one choice, the ``Feedback`` each builds; ``step`` is BP's autograd step run through
the converted layers, so ``.grad`` holds the rule's update (``p.grad = -ΔW``).

Options shared by the rules:
- loss: "ce" or "mse", as for ``bp``.
- feedback_scale: ``xavier`` (default, jsalbert/biotorch), ``fan_in`` (willwx/sign-symmetry),
  ``match_w`` (‖B‖ = ‖W‖ on every forward) or ``none`` (s = 1, M ~ U(0, 1)).
- last_layer: ``rule`` (default) or ``bp`` (the output layer's feedback is W itself).
- exclude: names of layers (as in ``named_modules``) left as plain autograd layers.
- bm: Batch Manhattan, ``.grad ← sign(.grad)`` (before the optimizer's decay and momentum).
- nsc: no sign change of the converted weights through optimizer steps (arXiv 1510.05067).
- seed: seed of brSF's per-layer generators (default: torch's initial seed) + layer index.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bioprop.rules._feedback import (
    Feedback,
    backprop,
    convert_layers,
    materialize,
    no_sign_change,
)
from bioprop.rules.base import FeedbackPair, StepOutput, register_rule
from bioprop.rules.bp import Backprop


class FeedbackRule(Backprop):
    """Base of the family: converts the model's layers to ``feedback``, then trains by autograd."""

    def __init__(
        self,
        model: nn.Module,
        feedback: Feedback,
        loss: str = "ce",
        last_layer: str = "rule",
        exclude: list[str] | tuple[str, ...] = (),
        bm: bool = False,
        nsc: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(model, loss)
        converted, self.layers = convert_layers(
            model, feedback, exclude=tuple(exclude), last_layer=last_layer, seed=seed
        )
        if converted is not model:
            self.model = converted
        self.feedback, self.bm, self.nsc = feedback, bm, nsc
        if feedback.kind == "direct" and getattr(model, "input_shape", ()):
            dtype = next(model.parameters()).dtype
            materialize(self.model, torch.zeros(1, *model.input_shape, dtype=dtype))

    def step(self, x: Tensor, y: Tensor) -> StepOutput:
        out = super().step(x, y)
        if self.bm:
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad = torch.sign(p.grad)
        return out

    def bp_mode(self) -> AbstractContextManager:
        return backprop()

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if self.nsc:
            self._nsc_hooks = no_sign_change(optimizer, [m.weight for m in self.layers])

    def feedback_pairs(self) -> list[FeedbackPair]:
        """(W, B_eff) per layer, B_eff rebuilt exactly as the last backward pass used it."""
        return [
            FeedbackPair(name, m.weight.detach(), m.effective_feedback())
            for name, m in self.model.named_modules()
            if m in self.layers and m.reports_feedback
        ]

    def metrics(self) -> dict[str, float]:
        """``concordance/<layer>``: the fraction of entries with W ≠ 0 where sign B = sign W."""
        out = {}
        for pair in self.feedback_pairs():
            nonzero = pair.weight != 0
            same = torch.sign(pair.feedback) == torch.sign(pair.weight)
            out[f"concordance/{pair.name}"] = float(same[nonzero].double().mean())
        return out


@register_rule("fa")
class FeedbackAlignment(FeedbackRule):
    """Feedback alignment (Lillicrap et al., arXiv 1411.0247): B = R, fixed random.

    R ~ Xavier-uniform by default (see ``feedback_scale``); signed_init: R = s·sign(W_0)
    instead, frozen signs that agree with W only while no weight changes sign (use nsc).
    """

    demo: ClassVar[dict[str, Any] | None] = {}

    def __init__(
        self,
        model: nn.Module,
        loss: str = "ce",
        feedback_scale: str = "xavier",
        signed_init: bool = False,
        last_layer: str = "rule",
        exclude: list[str] | tuple[str, ...] = (),
        bm: bool = False,
        nsc: bool = False,
        seed: int | None = None,
    ) -> None:
        fb = Feedback("random", scale=feedback_scale, signed_init=signed_init)
        super().__init__(model, fb, loss, last_layer, exclude, bm, nsc, seed)


@register_rule("scfa")
class SignConcordantFA(FeedbackRule):
    """Sign-concordant feedback: B = M ∘ sign(W), re-signed from the current W on every forward.

    magnitude: M = ``const`` s (uSF), ``fixed`` |M_0| (frSF), ``redraw`` |M_t| drawn on every
    training forward (brSF), or ``abs_w`` |W| (exactly BP). concordance: probability p that an
    entry keeps the sign of W (a fixed ±1 mask). sign_zero: the value of sign(0), 0 or 1.
    """

    demo: ClassVar[dict[str, Any] | None] = {}
    magnitude: ClassVar[str | None] = None  # fixed by the named variants below

    def __init__(
        self,
        model: nn.Module,
        loss: str = "ce",
        magnitude: str | None = None,
        feedback_scale: str = "xavier",
        concordance: float = 1.0,
        sign_zero: float = 0.0,
        last_layer: str = "rule",
        exclude: list[str] | tuple[str, ...] = (),
        bm: bool = False,
        nsc: bool = False,
        seed: int | None = None,
    ) -> None:
        fixed = type(self).magnitude
        if fixed and magnitude not in (None, fixed):
            raise ValueError(f"this rule fixes magnitude={fixed!r}; use rule 'scfa' to choose")
        fb = Feedback(
            "sign",
            magnitude=fixed or magnitude or "fixed",
            scale=feedback_scale,
            concordance=concordance,
            sign_zero=sign_zero,
        )
        super().__init__(model, fb, loss, last_layer, exclude, bm, nsc, seed)


@register_rule("usf")
class UniformSignFeedback(SignConcordantFA):
    """Uniform sign-concordant feedback (uSF; Liao et al., arXiv 1510.05067): B = s·sign(W)."""

    magnitude = "const"


@register_rule("brsf")
class BatchRandomSignFeedback(SignConcordantFA):
    """Batchwise random-magnitude sign feedback (brSF): B = |M_t|∘sign(W), M_t redrawn per batch.

    M_t is drawn on every training forward (Moskovitz et al., arXiv 1812.06488), only for layers
    whose input needs a gradient (the first layer's feedback is never used).
    """

    magnitude = "redraw"


@register_rule("frsf")
class FixedRandomSignFeedback(SignConcordantFA):
    """Fixed random-magnitude sign feedback (frSF): B = |M_0|∘sign(W), M_0 drawn once.

    Moskovitz et al., arXiv 1812.06488.
    """

    magnitude = "fixed"


@register_rule("dfa")
class DirectFeedbackAlignment(FeedbackRule):
    """Direct feedback alignment (Nøkland, arXiv 1609.01596): δ_l = f'(a_l) ⊙ (e D_l).

    e = δ_L, the output layer's error (which keeps its exact BP update); D_l, of shape
    (n_L, n_l), is a fixed random matrix per hidden layer (Xavier-uniform by default) that
    projects e straight onto the output h_l of hidden layer l, after its nonlinearity.
    """

    demo: ClassVar[dict[str, Any] | None] = {}

    def __init__(
        self,
        model: nn.Module,
        loss: str = "ce",
        feedback_scale: str = "xavier",
        exclude: list[str] | tuple[str, ...] = (),
        bm: bool = False,
        seed: int | None = None,
    ) -> None:
        fb = Feedback("direct", scale=feedback_scale)
        super().__init__(model, fb, loss, "rule", exclude, bm, False, seed)

    def feedback_pairs(self) -> list[FeedbackPair]:
        return []  # D_l has no forward weight of its shape: no angle (use the grad cosine)
