"""Curves per epoch (accuracy, loss, alignment diagnostics), for one run or a group of runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt

from bioprop.results import atomic_write


def _diag_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys = {k for r in rows for k in r if k.startswith(("cos/", "angle/"))}
    return sorted(keys)


def plot_runs(runs: dict[str, list[dict[str, Any]]], path: str | Path) -> None:
    """``runs``: label -> metric rows (epoch rows have kind == "epoch"). One line per label."""
    diag_rows = {lab: [r for r in rows if r.get("kind") == "diag"] for lab, rows in runs.items()}
    diag = sorted({k for rows in diag_rows.values() for k in _diag_keys(rows)})
    ncols = 3 if diag else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4))
    for label, rows in runs.items():
        ep = [r for r in rows if r.get("kind") == "epoch"]
        x = [r["epoch"] for r in ep]
        axes[0].plot(x, [100 * r["test_acc"] for r in ep], label=f"{label} test")
        axes[0].plot(x, [100 * r["train_acc"] for r in ep], "--", alpha=0.6, label=f"{label} train")
        axes[1].plot(x, [r["test_loss"] for r in ep], label=f"{label} test")
        axes[1].plot(x, [r["train_loss"] for r in ep], "--", alpha=0.6, label=f"{label} train")
        for key in diag:
            pts = [(r["step"], r[key]) for r in diag_rows[label] if r.get(key) not in (None, "")]
            if pts:
                axes[2].plot(*zip(*pts), label=f"{label} {key}")
    axes[0].set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    axes[1].set(xlabel="epoch", ylabel="loss", title="loss", yscale="log")
    if diag:
        axes[2].set(xlabel="step", ylabel="cosine / degrees", title="alignment")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    suffix = Path(path).suffix.lstrip(".") or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=suffix, dpi=120), mode="wb")
    plt.close(fig)
