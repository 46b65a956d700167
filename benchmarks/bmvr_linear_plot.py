"""Objective vs samples seen for the linear BMVR suite: BMVR, BP on the same net, offline optimum.

Usage: ``python benchmarks/bmvr_linear_plot.py [RUNS_DIR] [OUT_PNG]`` after
``bioprop bench benchmarks/bmvr-mnist-linear.yaml``; reads the ``bmvr/*`` columns that the rule's
``metrics`` hook wrote into each run's metrics.csv (one row every ``diagnostics_every`` steps).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

RUNS = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/bench/bmvr-mnist-linear")
OUT = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/bmvr-linear.png")
BATCH = 1  # the suite's data.batch_size: samples seen = step × BATCH


def curves(entry: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean objective over seeds at the common diagnostic steps, and the offline optimum."""
    runs = []
    for metrics in sorted(entry.glob("s*/metrics.csv")):
        with open(metrics) as f:
            runs.append([r for r in csv.DictReader(f) if r["kind"] == "diag"])
    n = min(len(r) for r in runs)
    steps = np.array([float(r["step"]) * BATCH for r in runs[0][:n]])
    loss = np.mean([[float(r["bmvr/loss"]) for r in run[:n]] for run in runs], axis=0)
    return steps, loss, float(runs[0][0]["bmvr/loss_opt"])


def main() -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    opt = None
    for label in ("bmvr", "bp"):
        if (RUNS / label).is_dir():
            steps, loss, opt = curves(RUNS / label)
            ax.plot(steps, loss, label=f"{label.upper()} (mean of seeds)")
    if opt is not None:
        ax.axhline(opt, color="k", ls="--", label="offline optimum (SVD)")
    ax.set_xlabel("samples seen")
    ax.set_ylabel("objective E‖y − ŷ‖² (training set)")
    ax.set_title("Linear 784-2-10 net on MNIST")
    ax.legend()
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=120)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
