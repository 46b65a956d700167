"""Aggregate finished runs: group by configuration, mean ± std over seeds, table and plot."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bioprop import results
from bioprop.errors import BiopropError

# Keys that do not define *what* was trained: runs differing only here are seeds of one group.
NOT_IDENTITY = {"seed", "out", "progress", "threads", "device", "log_every", "diagnostics_every"}
# Config fields added after runs were first recorded, with their defaults. At the default they
# are left out of the identity, so that adding a field neither orphans every committed suite
# record (bench) nor splits older run folders from new ones (report). Add new fields here.
ADDED_LATER = {"data": {"jpeg_quality": 0, "jpeg_offset": 0}}


@dataclass
class Group:
    label: str
    runs: list[Path] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [r[key] for r in self.results if r.get(key) is not None]

    def mean_std(self, key: str, scale: float = 1.0) -> tuple[float, float, int]:
        v = np.array(self.values(key), dtype=float) * scale
        if len(v) == 0:
            return float("nan"), float("nan"), 0
        # Sample std (ddof=1) over seeds; 0 for a single seed.
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)

    def seconds_per_epoch(self) -> float:
        per_run = [np.mean(r["wall_seconds_per_epoch"]) for r in self.results if r["epochs"]]
        return float(np.mean(per_run)) if per_run else float("nan")


def identity(cfg: dict[str, Any]) -> str:
    """What defines a run's settings: the config without NOT_IDENTITY and defaulted ADDED_LATER."""
    kept = {k: v for k, v in cfg.items() if k not in NOT_IDENTITY}
    for section, defaults in ADDED_LATER.items():
        if isinstance(kept.get(section), dict):
            kept[section] = {
                k: v for k, v in kept[section].items() if not (k in defaults and v == defaults[k])
            }
    return json.dumps(kept, sort_keys=True)


def label_for(cfg: dict[str, Any]) -> str:
    hidden = cfg["model"]["args"].get("hidden")
    model = cfg["model"]["name"] + (f" {hidden}" if hidden else "")
    return f"{cfg['rule']['name']} · {model} · {cfg['data']['name']} · {cfg['epochs']} ep"


def load_groups(run_dirs: list[str | Path]) -> list[Group]:
    """Finished runs grouped by everything in config.yaml except the seed and run plumbing."""
    groups: dict[str, Group] = {}
    for d in map(Path, run_dirs):
        if not (d / results.RESULT).is_file() or not (d / results.CONFIG).is_file():
            raise BiopropError(f"{d} is not a run directory (no result.json / config.yaml)")
        cfg = results.read_yaml_dict(d / results.CONFIG)
        g = groups.setdefault(identity(cfg), Group(label_for(cfg)))
        g.runs.append(d)
        g.results.append(results.read_result(d))
    return list(groups.values())


def fmt(mean: float, std: float, n: int, digits: int = 2) -> str:
    if n == 0:
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def markdown_table(groups: list[Group]) -> str:
    lines = [
        "| configuration | seeds | final test acc (%) | best test acc (%) | s/epoch |",
        "|---|---:|---:|---:|---:|",
    ]
    for g in groups:
        final, best = g.mean_std("final_test_acc", 100), g.mean_std("best_test_acc", 100)
        t = g.seconds_per_epoch()
        lines.append(f"| {g.label} | {final[2]} | {fmt(*final)} | {fmt(*best)} | {t:.2f} |")
    return "\n".join(lines) + "\n"


def mean_curves(group: Group) -> list[dict[str, Any]]:
    """Per-epoch mean over the seeds of a group, as metric rows for ``plot_runs``."""
    per_seed = [r["epochs"] for r in group.results]
    n = min(len(e) for e in per_seed)
    keys = ("train_loss", "train_acc", "test_loss", "test_acc")
    return [
        {
            "kind": "epoch",
            "epoch": i + 1,
            **{k: float(np.mean([e[i][k] for e in per_seed])) for k in keys},
        }
        for i in range(n)
    ]


def report(run_dirs: list[str | Path], plot: str | Path | None = None) -> str:
    groups = load_groups(run_dirs)
    if plot:
        from bioprop.plots import plot_runs

        plot_runs({g.label: mean_curves(g) for g in groups}, plot)
    return markdown_table(groups)
