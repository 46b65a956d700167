"""``bioprop demo``: every rule that supports it, trained side by side on the 8x8 digits.

The data ships inside scikit-learn, so the demo needs no download and no data folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bioprop import results
from bioprop.config import load_config
from bioprop.rules import RULES

BASE = [
    "data.name=digits",
    "model.name=mlp",
    "model.args.hidden=[128]",
    "data.batch_size=32",
    "optim.lr=0.05",
    "log_every=0",
]


def demo_rules() -> list[str]:
    return [n for n in RULES.names() if RULES.get(n).demo is not None]


def run_demo(out: str | Path = "runs/demo", epochs: int = 20, seed: int = 0) -> str:
    """Train each demo rule with the same net, data and seed; return a markdown table."""
    from bioprop.train import train

    rows = []
    for name in demo_rules():
        d = Path(out) / name
        if (d / results.CONFIG).exists():  # only ever remove a previous demo run
            shutil.rmtree(d)
        sets = [f"{k}={v}" for k, v in RULES.get(name).demo.items()]
        cfg = load_config(
            None,
            [*BASE, f"rule.name={name}", f"epochs={epochs}", f"seed={seed}", f"out={d}", *sets],
        )
        r = train(cfg)
        rows.append((name, r))
    bp = next((r for n, r in rows if n == "bp"), rows[0][1])
    ref = sum(bp["wall_seconds_per_epoch"]) / len(bp["wall_seconds_per_epoch"])
    lines = [
        "| rule | final test acc (%) | best test acc (%) | s/epoch | time vs bp |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        t = sum(r["wall_seconds_per_epoch"]) / len(r["wall_seconds_per_epoch"])
        lines.append(
            f"| {name} | {100 * r['final_test_acc']:.2f} | {100 * r['best_test_acc']:.2f} "
            f"| {t:.3f} | {t / ref:.2f}x |"
        )
    return "\n".join(lines) + f"\n\nRuns and curves are in {Path(out)}/<rule>/.\n"
