"""Learning rules: one module per rule, all behind ``Rule.step`` and the ``RULES`` registry."""

import bioprop.rules.corinfomax  # noqa: F401  (registers the rule and its model)
import bioprop.rules.spiking as _spiking  # noqa: F401  (registers the spiking-net rules)
from bioprop.rules import bmvr, bp, feedback, pepita, sigprop  # noqa: F401  (importing registers the rules)
from bioprop.rules.base import (
    RULES,
    FeedbackPair,
    Rule,
    StepOutput,
    build_rule,
    register_rule,
)

get = RULES.get

__all__ = [
    "RULES",
    "FeedbackPair",
    "Rule",
    "StepOutput",
    "build_rule",
    "get",
    "register_rule",
]
