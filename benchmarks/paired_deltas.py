"""Differences between a suite's entries and one baseline entry, paired by seed.

Usage::

    python benchmarks/paired_deltas.py SUITE.yaml BASELINE [LABEL ...] [--key best_test_acc]
        [--baseline-suite OTHER.yaml]

Why: on these 2-core machines two CIFAR-10 runs of one entry can end 0.5-1 pp apart, so the
spread of two entries' means hides differences that every seed agrees on. Runs with the same
seed share the batch order and, on the same net, the initial weights and feedback matrices, so
the difference seed by seed is the fairer comparison (docs/pepita-results.md quotes these).

For every entry (or only the given labels) that shares finished seeds with BASELINE, prints a
markdown row: the seeds paired, the difference of the final test accuracy (pp) on each, and
mean ± sample std over them. Entries with no common seed are listed as such. With
``--baseline-suite`` the baseline is an entry of that other suite (e.g. the same recipe on other
data) and every entry of SUITE is compared with it. Reads only the run
folders or the committed records (``bioprop bench`` writes both), so it needs neither the data
nor the checkpoints and takes a second.
"""

from __future__ import annotations

import argparse
import statistics

from bioprop.bench import Entry, Suite, _check_selection, finished_results, load_suite
from bioprop.errors import BiopropError, run_script


def finals(suite: Suite, entry: Entry, key: str) -> dict[int, float]:
    """Seed -> metric (%) of the entry's finished runs."""
    runs = finished_results(suite, entry)
    return {seed: 100 * r[key] for seed, r in runs.items() if r.get(key) is not None}


def paired(base: dict[int, float], other: dict[int, float]) -> dict[int, float]:
    """Seed -> other − base, over the seeds both have."""
    return {s: other[s] - base[s] for s in sorted(base.keys() & other.keys())}


def row(label: str, deltas: dict[int, float]) -> str:
    if not deltas:
        return f"| {label} | – | no common finished seed | – |"
    v = list(deltas.values())
    each = " / ".join(f"{d:+.2f}" for d in v)
    mean = f"{statistics.mean(v):+.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else "")
    return f"| {label} | {', '.join(map(str, deltas))} | {each} | {mean} |"


def table(
    suite: Suite, baseline: str, labels: list[str], key: str, base_suite: Suite | None = None
) -> str:
    base_suite = base_suite or suite
    _check_selection(base_suite, [baseline], None)
    _check_selection(suite, labels, None)
    base_entry = next(e for e in base_suite.entries if e.label == baseline)
    by_label = {e.label: e for e in suite.entries}
    base = finals(base_suite, base_entry, key)
    if not base:
        raise BiopropError(f"baseline {baseline!r} has no finished run")
    where = "" if base_suite is suite else f" of suite {base_suite.name!r}"
    lines = [
        f"Difference in {key} (pp) against {baseline!r}{where}, paired by seed:",
        "",
        "| entry | seeds | per seed | mean ± std |",
        "|---|---|---|---:|",
    ]
    others = [e.label for e in suite.entries if e is not base_entry]
    for label in labels or others:
        lines.append(row(label, paired(base, finals(suite, by_label[label], key))))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite")
    ap.add_argument("baseline", help="label of the entry the others are compared with")
    ap.add_argument("labels", nargs="*", help="entries to compare (default: all others)")
    ap.add_argument("--key", default="final_test_acc", choices=["final_test_acc", "best_test_acc"])
    ap.add_argument("--baseline-suite", help="the suite BASELINE belongs to (default: SUITE)")
    a = ap.parse_args()
    other = load_suite(a.baseline_suite) if a.baseline_suite else None
    print(table(load_suite(a.suite), a.baseline, a.labels, a.key, other))


if __name__ == "__main__":
    run_script(main)
