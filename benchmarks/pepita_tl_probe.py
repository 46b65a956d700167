"""Does PEPITA-time-local learn on CIFAR-10? Watch its first batches and its hidden units.

Usage::

    python benchmarks/pepita_tl_probe.py N [KEY=VALUE ...]

Builds the 1-hidden-layer CIFAR-10 recipe (batch 64, dropout 0.1, no bias, SGD lr 0.01 with
momentum 0.9, inputs in [0, 1]) with rule ``pepita_tl`` through ``bioprop.train.build``, runs
N training steps (at most one epoch) and every 100 steps prints the running train accuracy of
those 100 steps, the fraction of hidden ReLUs active on the batch (pre-dropout) and the weight
norms. ``KEY=VALUE`` overrides any config key (e.g. ``optim.lr=0.001 data.normalize=true``).
Data from ``BIOPROP_DATA``. Findings: docs/pepita-results.md (the ablation section).
"""

from __future__ import annotations

import sys

import torch

from bioprop.config import TrainConfig, apply_overrides, from_dict
from bioprop.data import batches
from bioprop.errors import run_script
from bioprop.train import build

RECIPE = {
    "data": {"name": "cifar10", "batch_size": 64},
    "model": {"name": "mlp", "args": {"hidden": [1024], "bias": False, "dropout": 0.1}},
    "rule": {"name": "pepita_tl"},
    "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "seed": 0,
    "threads": 1,
    "progress": False,
}


def main() -> None:
    if len(sys.argv) < 2 or not sys.argv[1].isdigit():
        sys.exit("usage: python benchmarks/pepita_tl_probe.py N [KEY=VALUE ...]")
    steps = int(sys.argv[1])
    cfg = from_dict(TrainConfig, apply_overrides(RECIPE, sys.argv[2:]))
    s = build(cfg)
    w1 = s.rule.model.blocks[0].op.weight
    correct = seen = 0
    split = s.data.train
    for i, (x, y) in enumerate(
        batches(split, cfg.data.batch_size, shuffle=True, generator=s.shuffle)
    ):
        if i == steps:
            break
        s.opt.zero_grad()
        out = s.rule.step(x, y)
        s.opt.step()
        correct += int((out.logits.argmax(1) == y).sum())
        seen += len(y)
        if (i + 1) % 100 == 0:
            with torch.no_grad():
                active = float((x.flatten(1) @ w1.T > 0).float().mean())
                norms = " ".join(f"{float(p.norm()):.2f}" for p in s.rule.model.parameters())
            print(
                f"step {i + 1}: running acc {100 * correct / seen:.2f} %, active {active:.3f}, "
                f"|W| {norms}",
                flush=True,
            )
            correct = seen = 0


if __name__ == "__main__":
    run_script(main)
