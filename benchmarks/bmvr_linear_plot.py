"""Objective vs samples seen for a linear BMVR suite: every entry (BMVR, BP on the same net), one
line per seed, the offline optimum and, where the runs logged it (``rule.args.ref_ridge``), the
rank-k ridge optimum.

Usage::

    python benchmarks/bmvr_linear_plot.py [SUITE_YAML] [OUT_PNG]

(defaults: benchmarks/bmvr-mnist-linear.yaml, docs/bmvr-linear.png) after ``bioprop bench`` on the
suite. Reads the ``bmvr/*`` columns that the rule's ``metrics`` hook wrote into each run's
metrics.csv (one row every ``diagnostics_every`` steps). A run that stopped early (the rule
raises when Q degenerates) ends in an ×: its curve is what it logged before it stopped.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from bioprop.bench import dir_status, load_suite, run_dir
from bioprop.errors import run_script

SUITE = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/bmvr-mnist-linear.yaml")
OUT = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/bmvr-linear.png")


def curve(d: Path, batch: int) -> tuple[np.ndarray, np.ndarray, float, float | None] | None:
    """(samples seen, objective, offline optimum, ridge reference or None) of one run, or None
    if it logged nothing."""
    if not (d / "metrics.csv").is_file():
        return None
    with open(d / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "diag"]
    if not rows:
        return None
    steps = np.array([float(r["step"]) * batch for r in rows])
    loss = np.array([float(r["bmvr/loss"]) for r in rows])
    ridge = rows[0].get("bmvr/loss_ridge")
    return steps, loss, float(rows[0]["bmvr/loss_opt"]), float(ridge) if ridge else None


def main() -> None:
    suite = load_suite(SUITE)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    opt = ridge = lam = None
    for i, entry in enumerate(suite.entries):
        batch = int(entry.config.get("data", {}).get("batch_size", 1))
        epochs = int(entry.config.get("epochs", 1))
        for j, seed in enumerate(entry.seeds):
            d = run_dir(suite, entry, seed)
            c = curve(d, batch)
            if c is None:
                continue
            steps, loss, opt, r = c
            if r is not None:
                ridge, lam = r, entry.config["rule"]["args"]["ref_ridge"]
            label = entry.label if j == 0 else None
            ax.plot(steps, loss, color=f"C{i}", lw=1, label=label)
            if dir_status(d, epochs) != "finished":
                ax.plot(steps[-1], loss[-1], "x", color=f"C{i}", ms=8)
    if opt is not None:
        ax.axhline(opt, color="k", ls="--", label="offline optimum (SVD)")
    if ridge is not None:
        ax.axhline(ridge, color="k", ls=":", label=f"rank-k ridge optimum, λ = {lam}")
    ax.set_xlabel("samples seen")
    ax.set_ylabel("objective E‖y − ŷ‖² (training set)")
    ax.set_title(suite.title.split(" (")[0], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=120)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    run_script(main)
