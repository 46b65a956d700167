"""BP training throughput against the host's matmul throughput, measured in one run.

Usage: python benchmarks/throughput.py [--epochs 1] [--threads N] [--data-dir DIR]

Prints (and writes to docs/throughput.md with --write):
- sustained fp32 matmul GFLOP/s on large square matrices (the host's peak),
- the same-shape floor: the GEMMs one BP step of MLP 784-1024-10 at batch 64 must do, timed alone,
- BP training GFLOP/s of that MLP on MNIST through the real loop (bioprop.train), and
- the ratios: loop time / same-shape GEMM time (target <= 1.5) and peak / achieved.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch

from bioprop.config import load_config
from bioprop.results import write_text
from bioprop.train import train

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


def bp_samples_per_s(epochs: int, data_dir: str | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            None,
            [
                "data.name=mnist",
                "model.name=mlp",
                "model.args.hidden=[1024]",
                f"data.batch_size={BATCH}",
                f"epochs={epochs}",
                "log_every=0",
                "progress=false",
                f"out={Path(tmp) / 'run'}",
            ],
        )
        r = train(cfg, data_dir=data_dir)
    return max(e["samples_per_s"] for e in r["epochs"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--data-dir")
    p.add_argument("--write", action="store_true", help="write docs/throughput.md")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    peak = peak_gflops()
    floor_s = same_shape_gemm_seconds()
    sps = bp_samples_per_s(a.epochs, a.data_dir)
    step_s = BATCH / sps
    achieved = step_flops() / step_s / 1e9
    lines = [
        "| quantity | value |",
        "|---|---:|",
        f"| threads | {torch.get_num_threads()} |",
        f"| peak fp32 matmul (2048², GFLOP/s) | {peak:.1f} |",
        f"| same-shape GEMM floor of one BP step (ms) | {1e3 * floor_s:.3f} |",
        f"| BP training step through the loop (ms) | {1e3 * step_s:.3f} |",
        f"| BP training throughput (samples/s) | {sps:.0f} |",
        f"| BP achieved GFLOP/s | {achieved:.1f} |",
        f"| **loop step / same-shape GEMM floor** (target ≤ 1.5) | **{step_s / floor_s:.2f}x** |",
        f"| peak matmul / BP achieved | {peak / achieved:.2f}x |",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if a.write:
        write_text(
            "docs/throughput.md",
            "# BP throughput vs the matmul floor\n\n"
            "MLP 784-1024-10 on MNIST, batch 64, SGD, measured in one run by "
            "`python benchmarks/throughput.py --write` (torch "
            f"{torch.__version__}).\n\n" + table,
        )


if __name__ == "__main__":
    main()
