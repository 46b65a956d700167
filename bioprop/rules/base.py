"""The rule interface and the rule registry.

Sign convention, stated once for every rule: papers write an update ΔW that is *added* to the
weights; a rule stores ``p.grad = -ΔW`` so that any ``torch.optim`` optimizer, which subtracts
``lr * grad``, applies it. The paper's learning rate becomes the optimizer's ``lr``; momentum,
weight decay and schedules then work for every rule without editing it.

A rule is an ``nn.Module`` that holds the model as a submodule and registers its own state
(feedback matrices, lateral weights, running means) as buffers, so that ``.to(device)``,
``state_dict()`` and checkpoints cover the model and the rule's state together. Such state is
not a trainable weight and is updated by the rule itself inside ``step``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bioprop.errors import BiopropError
from bioprop.registry import Registry, check_kwargs


@dataclass
class StepOutput:
    """What the training loop needs from one step: logits for accuracy, a scalar loss."""

    logits: Tensor
    loss: Tensor


@dataclass
class FeedbackPair:
    """A forward weight and the feedback that a rule actually used in its place (diagnostics)."""

    name: str
    weight: Tensor
    feedback: Tensor


class Rule(nn.Module):
    """Base class: ``step(x, y)`` fills ``p.grad`` of every trainable weight of ``self.model``.

    Subclasses take the model and their own hyper-parameters as keyword arguments.
    ``predict`` is what evaluation uses; relaxation networks override it.
    ``demo``: dotted config overrides with which ``bioprop demo`` trains this rule on the 8x8
    digits MLP (None keeps the rule out of the demo, e.g. when it needs another model).
    ``synced_buffers``: names of buffers the rule updates from data (running means, lateral
    matrices); data-parallel training averages them over workers after every step. Buffers
    drawn from the RNG (feedback matrices) need no entry: identical seeding keeps them equal.
    """

    demo: ClassVar[dict[str, Any] | None] = None
    synced_buffers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def step(self, x: Tensor, y: Tensor) -> StepOutput:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.model(x)

    def feedback_pairs(self) -> list[FeedbackPair]:
        """(W, B) pairs whose angle diagnostics should report; none by default."""
        return []

    def bp_mode(self) -> contextlib.AbstractContextManager:
        """Context in which autograd through ``self.model`` is plain backprop (the diagnostics'
        reference); rules whose layers change the backward pass switch that off here."""
        return contextlib.nullcontext()

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Called once by the loop with the optimizer that applies ``.grad`` (e.g. to register
        step hooks); nothing by default."""

    def start_epoch(self, epoch: int) -> None:
        """Called by the loop before every training epoch (1-based, also after a resume); rules
        with a schedule over epochs read it here; nothing by default."""

    def prepare(self, train: Any) -> None:
        """Called once by the loop with the training ``Split`` before training (statistics,
        data-dependent init); nothing by default. Rule state set here must be buffers."""

    def metrics(self) -> dict[str, float]:
        """Rule-specific diagnostics (floats), logged with the ``diagnostics_every`` rows."""
        return {}


RULES: Registry[type[Rule]] = Registry("rule")


def register_rule(name: str) -> Callable[[type[Rule]], type[Rule]]:
    """Class decorator: make a rule available by ``name`` to the CLI, benchmarks and tests."""
    return RULES.register(name)


def build_rule(name: str, model: nn.Module, **kwargs: Any) -> Rule:
    """Build a registered rule on ``model``; unknown options or bad values are user errors."""
    cls = RULES.get(name)
    check_kwargs(cls.__init__, kwargs, f"rule {name!r}")
    try:
        return cls(model, **kwargs)
    except (ValueError, TypeError) as err:
        raise BiopropError(f"cannot build rule {name!r} with {kwargs}: {err}") from err
