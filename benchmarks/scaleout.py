"""Scale-out measurements on one host: data-parallel workers and sweep workers, 1 vs 2.

Usage: python benchmarks/scaleout.py [--steps 300] [--postgres URL] [--write]

(a) Data parallel: ``torchrun --nproc-per-node N -m bioprop train`` for N = 1, 2 (one thread per
    worker, same global batch 64) on the MNIST MLP 784-1024-10, for BP and PEPITA (when
    registered); training samples/s from result.json, ratio N=2 / N=1.
(b) Sweeps: a 6-point grid of short digits runs with 1 and 2 worker processes on one SQLite
    store (and a PostgreSQL store with --postgres); wall time ratio.
Both ratios of a pair are measured in the same invocation, back to back.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bioprop.results import write_text
from bioprop.rules import RULES

DP_SETS = [
    "data.name=mnist", "model.args.hidden=[1024]", "model.args.bias=false", "epochs=1",
    "threads=1", "log_every=0", "data.batch_size=64",
]  # fmt: skip
SWEEP = """name: scaleout
runs_dir: {runs}
sampler: grid
grid: {{seed: [0, 1, 2], optim.lr: [0.03, 0.1]}}
base:
  data: {{name: digits, batch_size: 32}}
  model: {{args: {{hidden: [64]}}}}
  epochs: 3
  threads: 1
  log_every: 0
"""


def dp_samples_per_s(rule: str, nproc: int, steps: int, tmp: Path) -> float:
    out = tmp / f"{rule}-{nproc}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "-m", "bioprop", "train", "--no-progress",
           "--out", str(out), "--rule", rule, "--set", f"max_steps_per_epoch={steps}",
           *[a for s in DP_SETS for a in ("--set", s)]]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return json.loads((out / "result.json").read_text())["samples_per_s"]


def sweep_seconds(workers: int, tmp: Path, storage: str | None) -> float:
    runs = tmp / f"sweep-{workers}-{'pg' if storage else 'sqlite'}"
    spec = tmp / f"{runs.name}.yaml"
    spec.write_text(SWEEP.format(runs=runs))
    cmd = [sys.executable, "-m", "bioprop", "sweep", str(spec), "--workers", str(workers),
           "--no-summary"]  # fmt: skip
    if storage:
        cmd += ["--storage", storage]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps per DP measurement")
    p.add_argument("--postgres", help="a PostgreSQL URL for the shared-store sweep measurement")
    p.add_argument("--write", action="store_true", help="write docs/scale-out-measurements.md")
    a = p.parse_args()
    rows = ["| measurement | 1 worker | 2 workers | ratio (2 / 1) |", "|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for rule in [r for r in ("bp", "pepita") if r in RULES]:
            one, two = (dp_samples_per_s(rule, n, a.steps, Path(tmp)) for n in (1, 2))
            rows.append(f"| DP {rule}, MNIST MLP 784-1024-10, samples/s | {one:.0f} | {two:.0f} "
                        f"| {two / one:.2f}x |")  # fmt: skip
        for name, url in [("SQLite", None)] + ([("PostgreSQL", a.postgres)] if a.postgres else []):
            one, two = (sweep_seconds(n, Path(tmp), url) for n in (1, 2))
            rows.append(f"| sweep, 6 digits trials on {name}, wall s | {one:.1f} | {two:.1f} "
                        f"| {one / two:.2f}x faster |")  # fmt: skip
    table = "\n".join(rows) + "\n"
    print(table)
    if a.write:
        cmd = "python benchmarks/scaleout.py" + (" --postgres URL" if a.postgres else "")
        write_text("docs/scale-out-measurements.md",
                   f"# Scale-out measurements\n\nMeasured by `{cmd} --write` on a 2-core CPU host "
                   f"(torch {torch.__version__}), one thread per worker.\n\n" + table)  # fmt: skip


if __name__ == "__main__":
    main()
