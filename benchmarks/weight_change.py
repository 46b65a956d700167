"""How far each layer's weights moved in a suite's runs: ‖W_end − W_0‖ / ‖W_0‖ per weight.

    python benchmarks/weight_change.py SUITE_YAML

For every run of the suite that has a checkpoint, the initial weights are rebuilt from the run's
own config.yaml (same seed, so the same init) and compared with the checkpoint's. A layer whose
ratio stays near 0 did not learn (e.g. a PEPITA conv layer whose update is scaled too small);
a ratio far above 1 means the weights grew away from their init. Prints a markdown table.
Data from ``BIOPROP_DATA`` (building a run loads its dataset).
"""

from __future__ import annotations

import sys

from bioprop import results
from bioprop.bench import load_suite, saved_runs
from bioprop.config import TrainConfig, from_dict
from bioprop.errors import run_script
from bioprop.train import build


def changes(d) -> dict[str, float]:
    cfg = from_dict(TrainConfig, results.read_yaml_dict(d / results.CONFIG))
    cfg.out, cfg.progress = None, False
    init = build(cfg).rule.state_dict()
    end = results.load_checkpoint(d / results.CHECKPOINT)["rule"]
    return {
        k.removeprefix("model."): float((end[k] - init[k]).norm() / init[k].norm())
        for k in end
        if k.endswith("weight") and init[k].dim() > 1
    }


def main() -> None:
    suite = load_suite(sys.argv[1])
    print("| run | layer | ‖W_end − W_0‖ / ‖W_0‖ |\n|---|---|---:|")
    for entry, seed, d in saved_runs(suite):
        for layer, r in changes(d).items():
            print(f"| {entry.label} s{seed} | {layer} | {r:.3f} |")


if __name__ == "__main__":
    run_script(main)
