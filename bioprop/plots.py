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


def _colors(n: int) -> list:
    """One colour per label, distinct for up to 20 labels (a default cycle of 10 would give
    two entries of a large suite the same colour)."""
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("turbo")(i / (n - 1)) for i in range(n)]


def plot_runs(runs: dict[str, list[dict[str, Any]]], path: str | Path) -> None:
    """``runs``: label -> metric rows (epoch rows have kind == "epoch"). One colour per label:
    test solid, train dashed; alignment diagnostics in the label's colour, one style per key."""
    diag_rows = {lab: [r for r in rows if r.get("kind") == "diag"] for lab, rows in runs.items()}
    diag = sorted({k for rows in diag_rows.values() for k in _diag_keys(rows)})
    ncols = 3 if diag else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4))
    styles = ["-", "--", ":", "-."]
    for (label, rows), color in zip(runs.items(), _colors(len(runs))):
        ep = [r for r in rows if r.get("kind") == "epoch"]
        x = [r["epoch"] for r in ep]
        for ax, key, scale in ((axes[0], "acc", 100), (axes[1], "loss", 1)):
            ax.plot(x, [scale * r[f"test_{key}"] for r in ep], color=color, label=f"{label} test")
            train = [scale * r[f"train_{key}"] for r in ep]
            ax.plot(x, train, "--", color=color, alpha=0.6, label=f"{label} train")
        for i, key in enumerate(diag):
            pts = [(r["step"], r[key]) for r in diag_rows[label] if r.get(key) not in (None, "")]
            if pts:
                style = styles[i % len(styles)]
                axes[2].plot(*zip(*pts), style, color=color, label=f"{label} {key}")
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
