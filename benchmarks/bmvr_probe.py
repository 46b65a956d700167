"""Probe a BMVR run on Table 1's setting: its own read-out vs a least-squares read-out of the
same hidden features, and how many directions Q and E[zzᵀ] keep.

Usage::

    python benchmarks/bmvr_probe.py EPOCHS [--from-bp N BP_LR] [KEY=VALUE ...]

KEY=VALUE are the same dotted overrides as ``bioprop train --set`` on top of the BMVR k=64 entry
of ``benchmarks/bmvr-mnist-table1.yaml`` (e.g. ``optim.lr=0.01 rule.args.eta_q=0.01``). Training
goes through the library's own loop (``train.build`` + ``train_epoch``); the probe scores the
first 10k images of the test split (the 60k training images, since the suite swaps splits)
after the initial state and five times during training. The ridge read-out (λ = 1e-3) is fitted
on the training split's features: if it beats the rule's own read-out by far, the read-out is the
problem; if both are low, the features are. Data from ``BIOPROP_DATA``.

``--from-bp N BP_LR`` asks whether BP's solution is a resting point of BMVR: the same net is
first trained for N epochs by backprop (``update: bp``, lr BP_LR; add ``rule.args.init=keep`` for
the model's own init, as the suite's BP entries use), then
put at the point that the linear theory calls the saddle (W1 scaled so that λmax(E[zzᵀ]) = 1,
W2 = C_yz, Q = (W2ᵀW2)^½ + 1e-2·I so that QQᵀ ≈ W2ᵀW2), and then trained by BMVR for EPOCHS
epochs with the rates of the entry and the overrides.
"""

from __future__ import annotations

import copy
import sys
import time

import torch
import torch.nn.functional as F

from bioprop.bench import load_suite
from bioprop.config import TrainConfig, apply_overrides, from_dict
from bioprop.data import Split
from bioprop.errors import run_script
from bioprop.train import build, train_epoch

SUITE, ENTRY = "benchmarks/bmvr-mnist-table1.yaml", "BMVR k=64"


def features(rule, x: torch.Tensor) -> torch.Tensor:
    return rule.hidden(rule.inputs(x))[0]


def ridge_accuracy(rule, train: Split, test: Split, lam: float = 1e-3) -> float:
    def design(x):
        z = features(rule, x).double()
        return torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1)

    a, b = design(train.x), design(test.x)
    w = torch.linalg.solve(
        a.T @ a + lam * torch.eye(a.shape[1], dtype=a.dtype), a.T @ F.one_hot(train.y, 10).double()
    )
    return float(((b @ w).argmax(1) == test.y).float().mean())


def accuracy(rule, split: Split) -> float:
    return float((rule.predict(split.x).argmax(1) == split.y).float().mean())


def ranks(rule, train: Split) -> str:
    z = features(rule, train.x)
    ev = torch.linalg.eigvalsh(z.T @ z / len(z))
    q = torch.linalg.eigvalsh(rule.Q @ rule.Q.T)
    return (
        f"eig E[zz^T]: max {float(ev[-1]):.2f}, >0.5: {int((ev > 0.5).sum())} | "
        f"rank QQ^T (eig > 1e-3 max): {int((q > 1e-3 * q[-1]).sum())}"
    )


@torch.no_grad()
def to_saddle(rule, train: Split) -> None:
    """Scale W1 (ReLU is 1-homogeneous), set W2 = C_yz and QQᵀ ≈ W2ᵀW2 (see the module doc)."""
    z = features(rule, train.x)
    scale = torch.linalg.eigvalsh(z.T @ z / len(z))[-1].sqrt()
    rule.w1.div_(scale)
    rule.mu.div_(scale)
    z = features(rule, train.x)
    rule.w2.copy_(rule.targets(train.y).T @ z / len(z))
    ev, u = torch.linalg.eigh(rule.w2.T @ rule.w2)
    rule.Q.copy_(u @ torch.diag(ev.clamp_min(0).sqrt() + 1e-2) @ u.T)


def main() -> None:
    args = sys.argv[1:]
    epochs, bp_epochs, bp_lr = int(args.pop(0)), 0, 0.0
    if args[:1] == ["--from-bp"]:
        bp_epochs, bp_lr, args = int(args[1]), float(args[2]), args[3:]
    entry = next(e for e in load_suite(SUITE).entries if e.label == ENTRY)
    cfg = from_dict(
        TrainConfig,
        apply_overrides(copy.deepcopy(entry.config), [f"epochs={epochs + bp_epochs}", *args]),
    )
    cfg.progress, cfg.log_every = False, 0
    s = build(cfg)
    rule, train = s.rule, s.data.train
    test = Split(s.data.test.x[:10000], s.data.test.y[:10000])

    def report(label: str) -> None:
        print(
            f"{label}: own test {accuracy(rule, test):.4f}, own train {accuracy(rule, train):.4f},"
            f" LS test {ridge_accuracy(rule, train, test):.4f} | {ranks(rule, train)}",
            flush=True,
        )

    report("init")
    start = time.perf_counter()
    if bp_epochs:
        lrs = [g["lr"] for g in s.opt.param_groups]
        rule.update = "bp"
        for g in s.opt.param_groups:
            g["lr"] = bp_lr
        for epoch in range(1, bp_epochs + 1):
            train_epoch(s, epoch, [])
        report(f"after {bp_epochs} BP epochs")
        to_saddle(rule, train)
        report("moved to the saddle")
        rule.update = "bmvr"
        for g, lr in zip(s.opt.param_groups, lrs, strict=True):
            g["lr"] = lr
    for epoch in range(bp_epochs + 1, bp_epochs + epochs + 1):
        train_epoch(s, epoch, [])
        if s.sched:  # as the library loop does (per epoch), so sched.* overrides take effect
            s.sched.step()
        if epoch % max(1, epochs // 5) == 0 or epoch == bp_epochs + epochs:
            report(f"epoch {epoch} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    run_script(main)
