"""Largest singular value of every PEPITA weight matrix, and how well F lines up with the
forward product, for each run of one or more suites, read from the run's last checkpoint.

Weight mirroring keeps F close to c·(W_L⋯W₁)ᵀ. This script shows whether the forward weights
stay bounded while it does, which is how the 100-epoch depth suite's mirrored run was found to
blow up, and whether F keeps several directions (stable rank ‖F‖²_F/‖F‖²₂; C = 10 at most),
which is how that run and the WD 1e-3 probe were found to have collapsed to rank one.

    python benchmarks/pepita_spectra.py benchmarks/pepita-cifar10-deep.yaml \\
        benchmarks/pepita-cifar10-deep-wm-probe.yaml
"""

from __future__ import annotations

import sys

import torch

from bioprop import results
from bioprop.bench import load_suite, saved_runs
from bioprop.errors import run_script
from bioprop.rules.pepita import chain, feedback_stats, stable_rank


def spectra(state: dict) -> tuple[list[float], float, float, float]:
    """Top singular value of each W_l, cos(F, (W_L⋯W₁)ᵀ) over all entries, and the stable
    ranks of F and of W_{L−1}⋯W₁ (the hidden layers' product)."""
    # Block index order (a plain sort would put block 10 before block 2).
    keys = [k for k in state if k.startswith("model.blocks.") and k.endswith(".op.weight")]
    ws = [state[k].double() for k in sorted(keys, key=lambda k: int(k.split(".")[2]))]
    top = [torch.linalg.matrix_norm(w, ord=2).item() for w in ws]
    stats = feedback_stats(state["F"].double(), ws)
    hidden = stable_rank(chain(ws[:-1]))
    return top, stats["pepita/F_cos"], stats["pepita/F_rank"], hidden


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/pepita_spectra.py SUITE.yaml [SUITE.yaml ...]")
    print(
        "| run | epoch | largest singular value of W₁, W₂, … | cos(F, (W_L⋯W₁)ᵀ) "
        "| stable rank of F | stable rank of W_{L−1}⋯W₁ |"
    )
    print("|---|---:|---|---:|---:|---:|")
    for path in sys.argv[1:]:
        suite = load_suite(path)
        for e, seed, d in saved_runs(suite):
            state = results.load_checkpoint(d / results.CHECKPOINT)
            if "F" not in state["rule"]:  # not a PEPITA run
                continue
            top, cos, f_rank, h_rank = spectra(state["rule"])
            cells = " / ".join(f"{t:.3g}" for t in top)
            row = f"| {e.label} s{seed} | {state['epoch']} | {cells} | {cos:.3f} "
            print(f"{row}| {f_rank:.2f} | {h_rank:.2f} |", flush=True)


if __name__ == "__main__":
    run_script(main)
