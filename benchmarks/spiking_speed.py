"""Step time of spiking training vs the non-spiking MLP, interleaved in one process.

    python benchmarks/spiking_speed.py [--steps 15] [--batch 64] [--threads 1]

Rules on snn_mlp 784-400-10 (microcircuit, full BPTT, spatial surrogate BP) at several T, and
BP on the ANN mlp 784-400-10, one random batch. Every round runs one step of every
configuration in turn, so slow drifts of a shared machine's load hit all of them alike; the
median over rounds is reported, with the ratio to the ANN. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bioprop.models import build_model
from bioprop.rules import build_rule


def configs(ts: list[int]) -> dict[str, tuple[str, str, dict, dict]]:
    out = {"ANN BP": ("bp", "mlp", {"hidden": [400]}, {})}
    for T in ts:
        snn = {"hidden": [400], "T": T}
        out[f"microcircuit T={T}"] = ("microcircuit", "snn_mlp", snn, {})
        out[f"BPTT T={T}"] = ("bptt", "snn_mlp", snn, {})
        out[f"spatial BP T={T}"] = ("bptt", "snn_mlp", snn, {"spatial": True})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--T", type=int, nargs="+", default=[2, 5, 10])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.rand(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
    rules = {}
    for label, (rule, model, margs, rargs) in configs(args.T).items():
        rules[label] = build_rule(rule, build_model(model, (1, 28, 28), 10, **margs), **rargs)
    times: dict[str, list[float]] = {k: [] for k in rules}
    for _ in range(args.steps + 2):  # the first two rounds are warm-up
        for label, rule in rules.items():
            t0 = time.perf_counter()
            rule.step(x, y)
            times[label].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[2:]) for k, v in times.items()}
    ref = med["ANN BP"]
    print(f"| configuration | ms/step (median of {args.steps}) | vs ANN BP |")
    print("|---|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {1000 * v:.1f} | {v / ref:.1f}x |")


if __name__ == "__main__":
    main()
