"""BP training throughput against the host's matmul throughput, measured in one run.

Usage: python benchmarks/throughput.py [--rounds 5] [--steps 300] [--threads N] [--write]

Prints (and writes to docs/throughput.md with --write):
- sustained fp32 matmul GFLOP/s on large square matrices (the host's peak),
- the same-shape floor: the GEMMs one BP step of MLP 784-1024-10 at batch 64 must do, timed alone,
- BP training GFLOP/s of that MLP on MNIST through the real loop (bioprop.train), and
- the ratios: loop time / same-shape GEMM time (target <= 1.5) and peak / achieved.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bioprop.config import load_config
from bioprop.results import write_text
from bioprop.train import build, train_epoch

WIDTHS = (784, 1024, 10)
BATCH = 64


def timed(fn, min_seconds: float = 2.0) -> float:
    """Seconds per call of ``fn`` after a warm-up, averaged over at least ``min_seconds``."""
    for _ in range(3):
        fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds:
        fn()
        n += 1
    return elapsed / n


def peak_gflops(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timed(lambda: a @ b) / 1e9


def step_flops(widths=WIDTHS, batch: int = BATCH) -> int:
    """Multiply-adds x2 of one BP step: forward, weight gradients, and input gradients of every
    layer but the first (nothing needs the gradient of the data)."""
    pairs = list(itertools.pairwise(widths))
    fwd = sum(2 * batch * i * o for i, o in pairs)
    grad_in = sum(2 * batch * i * o for i, o in pairs[1:])
    return 2 * fwd + grad_in


def same_shape_gemm_seconds(widths=WIDTHS, batch: int = BATCH) -> float:
    """The GEMMs of one BP step, nothing else: the floor a training step cannot beat."""
    pairs = list(itertools.pairwise(widths))
    xs = [torch.randn(batch, i) for i, _ in pairs]
    ws = [torch.randn(o, i) for i, o in pairs]
    gs = [torch.randn(batch, o) for _, o in pairs]

    def step() -> None:
        for x, w in zip(xs, ws):
            x @ w.T
        for x, g in zip(xs, gs):
            g.T @ x
        for w, g in list(zip(ws, gs))[1:]:
            g @ w

    return timed(step)


def loop_rounds(rounds: int, steps: int, data_dir: str | None) -> list[tuple[float, float]]:
    """(loop step seconds, same-shape GEMM floor seconds), measured back to back per round.

    The machine is shared, so the two quantities of one ratio are timed right after each other
    and the median over rounds is reported; the loop is bioprop's own ``train_epoch``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            None,
            [
                "data.name=mnist",
                "model.name=mlp",
                "model.args.hidden=[1024]",
                f"data.batch_size={BATCH}",
                "log_every=0",
                "progress=false",
                f"max_steps_per_epoch={steps}",
                f"out={Path(tmp) / 'run'}",
            ],
        )
        s = build(cfg, data_dir)
        train_epoch(s, 1, [])  # warm-up: first-touch allocations, caches
        out = []
        for epoch in range(2, rounds + 2):
            floor = same_shape_gemm_seconds()
            stats = train_epoch(s, epoch, [])
            out.append((stats["seconds"] / steps, floor))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=300, help="training steps per round")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--data-dir")
    p.add_argument("--write", action="store_true", help="write docs/throughput.md")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    peak = peak_gflops()
    rounds = loop_rounds(a.rounds, a.steps, a.data_dir)
    ratios = sorted(step / floor for step, floor in rounds)
    step_s, floor_s = map(statistics.median, zip(*rounds))
    achieved = step_flops() / step_s / 1e9
    lines = [
        "| quantity | value |",
        "|---|---:|",
        f"| threads | {torch.get_num_threads()} |",
        f"| peak fp32 matmul (2048², GFLOP/s) | {peak:.1f} |",
        f"| same-shape GEMM floor of one BP step (ms, median) | {1e3 * floor_s:.3f} |",
        f"| BP training step through the loop (ms, median) | {1e3 * step_s:.3f} |",
        f"| BP training throughput (samples/s) | {BATCH / step_s:.0f} |",
        f"| BP achieved GFLOP/s | {achieved:.1f} |",
        f"| **loop step / same-shape GEMM floor** (median of {a.rounds} rounds; target ≤ 1.5) "
        f"| **{statistics.median(ratios):.2f}x** (range {ratios[0]:.2f}–{ratios[-1]:.2f}) |",
        f"| peak matmul / BP achieved | {peak / achieved:.2f}x |",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if a.write:
        cmd = f"python benchmarks/throughput.py --threads {torch.get_num_threads()} --write"
        write_text(
            "docs/throughput.md",
            "# BP throughput vs the matmul floor\n\n"
            "MLP 784-1024-10 on MNIST, batch 64, SGD with momentum, through bioprop's own "
            f"training loop; measured in one run by `{cmd}` (torch {torch.__version__}).\n\n"
            "The floor is the five GEMMs one BP step needs (forward, weight gradients, "
            "hidden-error), timed alone at the same shapes right before each round.\n\n" + table,
        )


if __name__ == "__main__":
    main()
