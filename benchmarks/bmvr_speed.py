"""Time per training step of BMVR vs BP (``update: bp``) on the same 784-k-10 net, interleaved.

Usage: ``python benchmarks/bmvr_speed.py``. Each round times ``STEPS`` steps (rule.step plus
an SGD step) of one rule, then of the other, on random MNIST-shaped data; the table gives medians
over rounds, so a loaded machine slows both alike. One thread.
"""

from __future__ import annotations

import statistics
import time

import torch

from bioprop.models import mlp
from bioprop.rules.bmvr import BMVR

STEPS, ROUNDS = 300, 7


def seconds_per_step(rule: BMVR, opt: torch.optim.Optimizer, x, y) -> float:
    start = time.perf_counter()
    for i in range(STEPS):
        opt.zero_grad(set_to_none=True)
        rule.step(x[i], y[i])
        opt.step()
    return (time.perf_counter() - start) / STEPS


def main() -> None:
    torch.set_num_threads(1)
    print("| activation | k | batch | BMVR ms/step | BP ms/step | BMVR / BP |")
    print("|---|---:|---:|---:|---:|---:|")
    for act, k, batch in [("identity", 2, 1), ("relu", 64, 1), ("relu", 256, 1), ("relu", 64, 32)]:
        x = torch.rand(STEPS, batch, 784)
        y = torch.randint(0, 10, (STEPS, batch))
        rules = {}
        for update in ("bmvr", "bp"):
            torch.manual_seed(0)
            rule = BMVR(mlp([784, k, 10], activation=act, bias=False), eta_q=1e-4, update=update)
            rules[update] = (rule, torch.optim.SGD(rule.model.parameters(), lr=1e-4))
        times = {u: [] for u in rules}
        for _ in range(ROUNDS):
            for u, (rule, opt) in rules.items():
                times[u].append(seconds_per_step(rule, opt, x, y))
        t = {u: 1e3 * statistics.median(v) for u, v in times.items()}
        ratio = t["bmvr"] / t["bp"]
        print(f"| {act} | {k} | {batch} | {t['bmvr']:.3f} | {t['bp']:.3f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
