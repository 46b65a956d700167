"""benchmarks/tail_average.py: extending finished runs in memory and scoring averaged weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from bioprop import results
from bioprop.bench import load_suite, run_config, run_dir, run_suite
from bioprop.data import Split
from bioprop.train import build, evaluate, train
from tests.conftest import load_script


@pytest.fixture
def tail(monkeypatch):
    mod = load_script("tail_average")
    monkeypatch.setattr(mod, "VAL", 100)  # the digits test split has a few hundred images
    return mod


def bmvr_suite(tmp_path: Path) -> Path:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        f"name: tiny\ndoc: {tmp_path / 'd.md'}\nruns_dir: {tmp_path / 'runs'}\n"
        f"records: {tmp_path / 'records'}\n"
        "base: {data: {name: digits, batch_size: 8}, epochs: 1, threads: 1, progress: false,\n"
        "  model: {args: {hidden: [16], bias: false, activation: relu}},\n"
        "  rule: {name: bmvr, args: {eta_q: 0.01, q_init: 0.3, eps_mu: 0.01, init: scale}},\n"
        "  optim: {name: sgd, lr: 0.01, momentum: 0.0}}\n"
        "entries:\n  - label: BMVR\n"
    )
    return suite


def _extended(d: Path, cfg, epochs: int, where: Path) -> Path:
    """The run in ``d`` extended to ``epochs`` by the library's own resume, in a copy."""
    shutil.copytree(d, where)
    cfg.epochs, cfg.out = epochs, str(where)
    train(cfg, resume_run=True)
    return where


def test_averaged_weights_are_the_mean_of_the_resumed_epochs(tail, tmp_path):
    """Oracle: the same run extended with ``bioprop train --resume`` to 2 and to 3 epochs; the
    mean of those two checkpoints' rule states must score exactly what the script reports."""
    suite = load_suite(bmvr_suite(tmp_path))
    run_suite(suite, data_dir=None, progress=False)
    entry = suite.entries[0]
    d = run_dir(suite, entry, 0)
    before = (d / results.CHECKPOINT).read_bytes()

    got = tail.tail_average(run_config(entry, 0), d, 2)

    assert (d / results.CHECKPOINT).read_bytes() == before  # the run folder is only read
    final = results.read_result(d)["final_test_acc"]
    assert got["checkpoint"]["all"] == pytest.approx(100 * final, abs=1e-9)
    e2 = _extended(d, run_config(entry, 0), 2, tmp_path / "e2")
    e3 = _extended(d, run_config(entry, 0), 3, tmp_path / "e3")
    assert got["last"]["all"] == pytest.approx(100 * results.read_result(e3)["final_test_acc"])
    s2, s3 = (results.load_checkpoint(e / results.CHECKPOINT)["rule"] for e in (e2, e3))
    mean = {k: (v + s3[k]) / 2 if v.is_floating_point() else s3[k] for k, v in s2.items()}
    s = build(run_config(entry, 0))
    s.rule.load_state_dict(mean)
    test = s.data.test
    heldout = Split(test.x[100:], test.y[100:])
    acc = evaluate(s.rule, heldout, 1000, torch.device("cpu"))["acc"]
    assert got["averaged"]["heldout"] == pytest.approx(100 * acc, abs=1e-9)
    assert got["mean_of_epochs"]["all"] == pytest.approx(
        (got["last"]["all"] + 100 * results.read_result(e2)["final_test_acc"]) / 2
    )


def test_script_writes_json_and_table_and_rejects_unknown_labels(tail, tmp_path, monkeypatch):
    suite = bmvr_suite(tmp_path)
    run_suite(load_suite(suite), data_dir=None, progress=False)
    out = tmp_path / "tail.json"
    monkeypatch.setattr("sys.argv", ["tail_average.py", str(suite), "1", str(out)])
    tail.main()
    data = json.loads(out.read_text())
    one = data["runs"]["BMVR"]["0"]
    assert data["extra_epochs"] == 1 and one["averaged"] == one["last"]  # one epoch: no average
    assert "| BMVR | heldout |" in out.with_suffix(".md").read_text()
    # A second call keeps what the file holds instead of redoing it (a cut-off call resumes).
    one["averaged"]["heldout"] = -1.0
    out.write_text(json.dumps(data))
    tail.main()
    assert json.loads(out.read_text())["runs"]["BMVR"]["0"]["averaged"]["heldout"] == -1.0
    # ... but never overwrites results made with another number of extra epochs.
    monkeypatch.setattr("sys.argv", ["tail_average.py", str(suite), "2", str(out)])
    with pytest.raises(Exception, match="write to another file"):
        tail.main()
    monkeypatch.setattr("sys.argv", ["tail_average.py", str(suite), "1", str(out), "nope"])
    with pytest.raises(Exception, match="has no entry 'nope'"):
        tail.main()
