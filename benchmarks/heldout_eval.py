"""Score a suite's finished runs on a slice of their test split, from the saved checkpoints.

Usage::

    python benchmarks/heldout_eval.py SUITE.yaml START [END]

Why: exploratory probes sometimes score on part of a suite's test split (``bmvr_probe.py`` uses
the first 10k images of the BMVR Table 1 test split, i.e. of the 60k MNIST training images). A
setting chosen that way has seen those images, so the honest test number of the suite is the
one on the rest, images START..END of the test split. For BMVR this is also the paper's likely
protocol (train on the 10k official test images, validate on 10k, test on the other 50k).

Each run is rebuilt with the library (``train.build``, same config, same data preparation),
its rule state is loaded from ``checkpoint.pt`` (the last epoch), and ``train.evaluate`` scores
it. Prints a markdown table: per entry, the accuracy of each seed and mean ± sample std. Runs
still training or stopped early are left out. Needs the run folders (records hold no weights).
Data from ``BIOPROP_DATA``.
"""

from __future__ import annotations

import statistics
import sys
from itertools import groupby

from bioprop import results
from bioprop.bench import load_suite, run_config, saved_runs
from bioprop.data import Split
from bioprop.errors import run_script
from bioprop.report import fmt
from bioprop.train import build, evaluate


def heldout_accuracy(cfg, d, start: int, end: int | None) -> float:
    s = build(cfg)
    s.rule.load_state_dict(results.load_checkpoint(d / results.CHECKPOINT)["rule"])
    test = Split(s.data.test.x[start:end], s.data.test.y[start:end])
    return evaluate(s.rule, test, cfg.data.eval_batch_size, s.device)["acc"]


def main() -> None:
    if len(sys.argv) not in (3, 4) or not sys.argv[2].isdigit():
        sys.exit("usage: python benchmarks/heldout_eval.py SUITE.yaml START [END]")
    path, start = sys.argv[1], int(sys.argv[2])
    end = int(sys.argv[3]) if len(sys.argv) > 3 else None
    suite = load_suite(path)
    print(f"| run | test images {start}..{end or 'end'}, per seed (%) | mean ± std |")
    print("|---|---|---:|")
    # saved_runs yields in suite order, so each entry's runs come together: one row per entry.
    for label, runs in groupby(saved_runs(suite, finished=True), key=lambda r: r[0].label):
        accs = [100 * heldout_accuracy(run_config(e, seed), d, start, end) for e, seed, d in runs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        each = " / ".join(f"{a:.2f}" for a in accs)
        summary = fmt(statistics.mean(accs), std, len(accs))
        print(f"| {label} | {each} | {summary} |", flush=True)


if __name__ == "__main__":
    run_script(main)
