"""Bring your own model: turn its ``nn.Linear`` / ``nn.Conv2d`` layers into feedback layers.

    model = convert(my_model, "frsf")           # layers swapped in place, Parameters kept
    loss = F.cross_entropy(model(x), y)
    loss.backward()                             # .grad now holds frSF's update
    optimizer.step()

Any registered rule of the feedback-alignment family works (``fa``, ``dfa``, ``usf``, ``brsf``,
``frsf``, ``scfa``), with the same options as ``rule.args``. The layers keep the model's own
Parameters, so an optimizer built before the conversion still applies. Layers are taken in
registration order, which must be the forward order (the last one is the output layer). For
``nsc`` call ``bioprop.rules._feedback.no_sign_change(optimizer, weights)`` yourself; for ``bm``
replace each ``.grad`` by its sign before ``optimizer.step()``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from bioprop.errors import BiopropError
from bioprop.rules import RULES, build_rule
from bioprop.rules.feedback import FeedbackRule


def convert(
    model: nn.Module,
    rule: str = "fa",
    exclude: tuple[str, ...] = (),
    last_layer: str = "rule",
    **options: Any,
) -> nn.Module:
    """Swap ``model``'s Linear/Conv2d layers (except ``exclude``) for ``rule``'s feedback layers.

    Returns the converted model (the same object unless ``model`` is itself a single layer).
    last_layer: ``rule`` or ``bp`` (the output layer sends the error down through W itself).
    """
    if not issubclass(RULES.get(rule), FeedbackRule):
        raise BiopropError(f"rule {rule!r} is not a feedback rule; use fa, dfa, usf, brsf, ...")
    if last_layer != "rule":
        options["last_layer"] = last_layer
    return build_rule(rule, model, exclude=tuple(exclude), **options).model
