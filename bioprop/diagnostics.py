"""Alignment diagnostics for any rule, measured on the batch the rule just learned from.

- ``cos/<param>``: cosine between the update a rule wrote into ``.grad`` and the true
  backprop gradient of cross-entropy on the same batch (1.0 for BP itself).
- ``angle/<name>`` and ``ratio/<name>``: for rules that use feedback matrices, the angle in degrees
  between the forward weight W and the feedback B actually used in its place, and ||B|| / ||W||.

The BP gradient is computed with the RNG rewound to its state before the rule's step, so dropout
masks match the rule's first forward pass, and the RNG is then put back: logging diagnostics
never changes a training trajectory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from bioprop.rules.base import Rule


def cosine(a: Tensor, b: Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    denom = a.norm() * b.norm()
    return float(a @ b / denom) if denom > 0 else float("nan")


def angle_deg(a: Tensor, b: Tensor) -> float:
    c = cosine(a, b)
    return math.degrees(math.acos(max(-1.0, min(1.0, c)))) if c == c else float("nan")


def bp_gradients(rule: Rule, x: Tensor, y: Tensor, rng_state: Tensor) -> dict[str, Tensor]:
    """Autograd gradient of mean cross-entropy for every trainable parameter of ``rule.model``."""
    named = [(n, p) for n, p in rule.model.named_parameters() if p.requires_grad]
    after = torch.get_rng_state()
    torch.set_rng_state(rng_state)
    try:
        with rule.bp_mode(), torch.enable_grad():
            loss = F.cross_entropy(rule.model(x), y)
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    finally:
        torch.set_rng_state(after)
    return {n: g for (n, _), g in zip(named, grads) if g is not None}


def alignment(rule: Rule, x: Tensor, y: Tensor, rng_state: Tensor) -> dict[str, float]:
    """All diagnostics for the ``.grad`` the rule holds now (call right after ``rule.step``)."""
    out: dict[str, float] = {}
    bp = bp_gradients(rule, x, y, rng_state)
    for name, p in rule.model.named_parameters():
        if p.grad is not None and name in bp:
            out[f"cos/{name}"] = cosine(p.grad, bp[name])
    for pair in rule.feedback_pairs():
        w, b = pair.weight, pair.feedback.reshape(pair.weight.shape)
        out[f"angle/{pair.name}"] = angle_deg(w, b)
        out[f"ratio/{pair.name}"] = float(b.norm() / w.norm()) if w.norm() > 0 else float("nan")
    return out
