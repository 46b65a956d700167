"""benchmarks/paired_deltas.py: entry-vs-baseline differences paired by seed, from records."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from bioprop import results
from bioprop.bench import _identity, load_suite, record_path
from bioprop.errors import BiopropError
from tests.conftest import load_script

FINALS = {"A": {0: 0.50, 1: 0.52, 2: 0.51}, "B": {0: 0.53, 1: 0.52}, "C": {}}


@pytest.fixture
def paired():
    return load_script("paired_deltas")


def write_suite(folder: Path, name: str, finals: dict[str, dict[int, float]], lr: float = 0.01):
    """A suite whose finished runs exist only as records (no run folders)."""
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "suite.yaml"
    entries = "".join(f"  - {{label: {k}, seeds: [0, 1, 2]}}\n" for k in finals)
    p.write_text(
        f"name: {name}\ndoc: {folder / 'd.md'}\nruns_dir: {folder / 'runs'}\n"
        f"records: {folder / 'records'}\n"
        f"base: {{data: {{name: digits}}, epochs: 3, rule: {{name: bp}}, optim: {{lr: {lr}}}}}\n"
        f"entries:\n{entries}"
    )
    s = load_suite(p)
    for entry in s.entries:
        for seed, acc in finals[entry.label].items():
            result = {"status": "finished", "epochs_done": 3, "final_test_acc": acc}
            results.write_json(
                record_path(s, entry, seed), {"identity": _identity(entry, seed), "result": result}
            )
    return s


@pytest.fixture
def suite(tmp_path: Path):
    """A three-entry suite whose finished runs exist only as records (no run folders)."""
    s = write_suite(tmp_path, "tiny", FINALS)
    # An unfinished run must not be paired: seed 2 of B stopped after one epoch.
    b = s.entries[1]
    unfinished = {"status": "running", "epochs_done": 1, "final_test_acc": 0.9}
    results.write_json(record_path(s, b, 2), {"identity": _identity(b, 2), "result": unfinished})
    return s


def test_deltas_are_per_seed_differences_over_common_finished_seeds(paired, suite):
    base, b = (paired.finals(suite, e, "final_test_acc") for e in suite.entries[:2])
    d = paired.paired(base, b)
    assert list(d) == [0, 1]  # seed 2 of B is unfinished, so it is not paired
    assert d[0] == pytest.approx(3.0) and d[1] == pytest.approx(0.0)
    text = paired.table(suite, "A", [], "final_test_acc")
    sd = statistics.stdev([3.0, 0.0])
    assert f"| B | 0, 1 | +3.00 / +0.00 | +1.50 ± {sd:.2f} |" in text
    assert "| C | – | no common finished seed | – |" in text
    assert "| A |" not in text  # the baseline is not compared with itself


def test_unknown_label_or_empty_baseline_is_a_user_error(paired, suite):
    with pytest.raises(BiopropError, match="no entry 'nope'"):
        paired.table(suite, "A", ["nope"], "final_test_acc")
    with pytest.raises(BiopropError, match="no finished run"):
        paired.table(suite, "C", [], "final_test_acc")


def test_baseline_from_another_suite(paired, suite, tmp_path):
    # The same labels in a second suite (other settings): every entry there is compared with
    # the baseline entry of the first suite, and the header names that suite.
    other = write_suite(tmp_path / "other", "other", {"A": {0: 0.49, 2: 0.55}, "B": {1: 0.5}}, 0.1)
    text = paired.table(other, "A", [], "final_test_acc", suite)
    assert "against 'A' of suite 'tiny'" in text
    sd = statistics.stdev([-1.0, 4.0])
    assert f"| A | 0, 2 | -1.00 / +4.00 | +1.50 ± {sd:.2f} |" in text
    assert "| B | 1 | -2.00 | -2.00 |" in text
    with pytest.raises(BiopropError, match="suite tiny has no entry 'Z'"):
        paired.table(other, "Z", [], "final_test_acc", suite)
