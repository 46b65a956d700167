"""Per-epoch CorInfoMax curves of a suite's runs, finished or still running, against the
published per-epoch values (spec §7): a markdown table on stdout and a PNG.

``bioprop bench`` tables only finished runs; this reads each run's last checkpoint, so a 50-epoch
run can be compared with the published epoch-1 / epoch-2 ranges while it is still going.

    python benchmarks/corinfomax_curves.py benchmarks/corinfomax-mnist.yaml --png docs/x.png
"""

from __future__ import annotations

import argparse

from bioprop import results
from bioprop.bench import load_suite, saved_runs
from bioprop.errors import run_script

# Test-accuracy ranges per epoch, spec §7: MNIST rule `slow`, g 0.5, d 0.95, seeds 0-40;
# CIFAR-10 epoch 1 "about 32-36 %", epoch 50 the published final mean ± one std (51.856 ± 0.335).
PUBLISHED = {
    "corinfomax-mnist": {1: (93.41, 94.12), 2: (95.64, 95.84), 50: (97.4, 97.7)},
    "corinfomax-cifar10": {1: (32.0, 36.0), 50: (51.52, 52.19)},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite")
    p.add_argument("--png", help="write test accuracy per epoch here")
    a = p.parse_args()
    suite = load_suite(a.suite)
    pub = PUBLISHED.get(suite.name, {})
    runs = {}
    for e, seed, d in saved_runs(suite):
        runs[f"{e.label} s{seed}"] = results.load_checkpoint(d / results.CHECKPOINT)["history"]
    print("| run | epoch | test acc (%) | published test (%) | running train acc (%) | s/epoch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, h in runs.items():
        for r in (r for r in h if r["kind"] == "epoch"):
            lo_hi = pub.get(r["epoch"])
            ref = f"{lo_hi[0]}–{lo_hi[1]}" if lo_hi else ""
            print(
                f"| {name} | {r['epoch']} | {100 * r['test_acc']:.2f} | {ref} "
                f"| {100 * r['train_acc']:.2f} | {r['seconds']:.0f} |"
            )
    print("\n| run | step | angle W_f² vs W_b¹ᵀ (°) | lateral ratio ‖γHB‖/‖H/ε‖ |")
    print("|---|---:|---:|---:|")
    for name, h in runs.items():
        for r in (r for r in h if r["kind"] == "diag" and r["step"] in (500, 1000, 3000, 15000)):
            print(f"| {name} | {r['step']} | {r['angle/layer2']:.1f} | {r['lateral_ratio']:.1e} |")
    if a.png and runs:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, h in runs.items():
            ep = [r for r in h if r["kind"] == "epoch"]
            ax.plot([r["epoch"] for r in ep], [100 * r["test_acc"] for r in ep], "o-", label=name)
        for epoch, (lo, hi) in pub.items():
            ax.errorbar(epoch, (lo + hi) / 2, yerr=(hi - lo) / 2, fmt="k_", capsize=4)
        ax.plot([], [], "k_", label="published range")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(suite.title, fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.png, dpi=120)


if __name__ == "__main__":
    run_script(main)
