"""Per-epoch curves of the runs of one or more suites, finished, stopped or still running.

``bioprop bench`` draws only finished runs. This script reads each run's last checkpoint, so a
run that was stopped (e.g. one that diverged slowly without going non-finite) can be drawn
beside the others. It prints one row per run every few epochs and writes the project's usual
PNG (accuracy and loss per epoch, train and test). ``--summary`` prints one row per run
instead: epochs done, final and best test accuracy, and the largest training loss with its
epoch, which tells a run that blew up and came back from one that never did.

    python benchmarks/suite_curves.py benchmarks/pepita-cifar10-deep.yaml \\
        benchmarks/pepita-cifar10-deep-wm-probe.yaml --png docs/pepita-cifar10-deep-wm.png
"""

from __future__ import annotations

import argparse

from bioprop import results
from bioprop.bench import load_suite, saved_runs
from bioprop.errors import run_script
from bioprop.plots import plot_runs


def epoch_rows(suite_paths: list[str]) -> dict[str, list[dict]]:
    """Label and seed -> the per-epoch history rows of every run that has a checkpoint. A label
    and seed that an earlier suite already gave (e.g. a probe later extended in another suite)
    is taken from the earlier one."""
    runs = {}
    for path in suite_paths:
        suite = load_suite(path)
        for e, seed, d in saved_runs(suite):
            name = f"{e.label} s{seed}"
            if name not in runs:  # the first suite that has it wins
                h = results.load_checkpoint(d / results.CHECKPOINT)["history"]
                runs[name] = [r for r in h if r["kind"] == "epoch"]
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suites", nargs="+")
    p.add_argument("--every", type=int, default=10, help="print every N-th epoch (and the last)")
    p.add_argument("--png", help="write the curves here")
    p.add_argument("--summary", action="store_true", help="one row per run")
    a = p.parse_args()
    runs = epoch_rows(a.suites)
    if a.summary:
        summary(runs)
    else:
        every(runs, a.every)
    if a.png and runs:
        plot_runs(runs, a.png)


def summary(runs: dict[str, list[dict]]) -> None:
    print("| run | epochs | final test acc (%) | best test acc (%) | max training loss (epoch) |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in runs.items():
        worst = max(rows, key=lambda r: r["train_loss"])
        final, best = rows[-1]["test_acc"], max(r["test_acc"] for r in rows)
        print(
            f"| {name} | {len(rows)} | {100 * final:.2f} | {100 * best:.2f} "
            f"| {worst['train_loss']:.3g} ({worst['epoch']}) |"
        )


def every(runs: dict[str, list[dict]], n: int) -> None:
    print("| run | epoch | test acc (%) | training loss |")
    print("|---|---:|---:|---:|")
    for name, rows in runs.items():
        for r in rows:
            if r["epoch"] % n == 0 or r is rows[-1]:
                print(
                    f"| {name} | {r['epoch']} | {100 * r['test_acc']:.2f} | {r['train_loss']:.4g} |"
                )


if __name__ == "__main__":
    run_script(main)
