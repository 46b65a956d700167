"""The command line: listings, reports, benchmark suites, and one-line errors for user mistakes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bioprop.cli import main
from bioprop.errors import BiopropError, run_script

TINY = ["--dataset", "digits", "--set", "model.args.hidden=[16]", "--epochs", "1", "--no-progress"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--set", "optim.lrx=1"], "unknown config key 'optim.lrx'"),
        (["train", "--set", "optim.lr=fast"], "'optim.lr' must be float"),
        (["train", "--set", "epochs=0"], "epochs must be >= 1"),
        (["train", "--set", "nonsense"], "must look like key=value"),
        (["train", "--rule", "magic"], "unknown rule 'magic'"),
        (["train", "--model", "resnet9000"], "unknown model 'resnet9000'"),
        (["train", "--dataset", "imagenet-21k"], "unknown dataset 'imagenet-21k'"),
        (["train", "--set", "model.args.depth=3"], "unknown option 'depth'"),
        (["train", "--set", "rule.args.loss=hinge"], "loss must be one of"),
        (["train", "--set", "optim.name=lbfgs"], "unknown optimizer 'lbfgs'"),
        (["train", "--set", "sched.name=warmup"], "unknown schedule 'warmup'"),
        (["train", "--config", "no/such/file.yaml"], "config file no/such/file.yaml not found"),
        (["train", "--data-dir", "no/such/dir"], "data directory no/such/dir does not exist"),
        (["report", "no/such/run"], "is not a run directory"),
        (["bench", "no/such/suite.yaml"], "not found"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(capsys, tmp_path, argv, needle) -> None:
    rc, _, err = run_cli(
        capsys, *argv, *([] if argv[0] != "train" else ["--out", str(tmp_path / "r")])
    )
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("bioprop: error:")
    assert needle in err


def test_bad_yaml_and_bad_suite(capsys, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    rc, _, err = run_cli(capsys, "train", "--config", str(bad))
    assert rc == 2 and "not valid YAML" in err and err.count("\n") == 1
    suite = tmp_path / "suite.yaml"
    suite.write_text("entries: [{label: x, sett: {}}]\n")
    rc, _, err = run_cli(capsys, "bench", str(suite))
    assert rc == 2 and "unknown entry keys ['sett']" in err


def test_benchmark_scripts_report_a_missing_suite_in_one_line(tmp_path) -> None:
    # The developer scripts under benchmarks/ go through errors.run_script like the CLI does.
    path = Path(__file__).parents[1] / "benchmarks" / "weight_change.py"
    r = subprocess.run(
        [sys.executable, str(path), str(tmp_path / "none.yaml")], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: config file")


def test_run_script_keeps_tracebacks_for_bugs() -> None:

    with pytest.raises(SystemExit) as e:
        run_script(lambda: (_ for _ in ()).throw(BiopropError("bad value")))
    assert e.value.code == 2
    with pytest.raises(ZeroDivisionError):
        run_script(lambda: 1 / 0)


def test_listings(capsys) -> None:
    for kind, name in (("rules", "bp"), ("models", "lenet5"), ("datasets", "digits")):
        rc, out, _ = run_cli(capsys, kind)
        assert rc == 0
        assert any(line.startswith(name) for line in out.splitlines())
    _, out, _ = run_cli(capsys, "datasets")
    assert "digits" in out and "[found" in out.split("digits", 1)[1].splitlines()[0]


def test_report_mean_std_over_seeds(capsys, tmp_path) -> None:
    dirs = []
    for seed in (0, 1, 2):
        d = tmp_path / f"s{seed}"
        assert run_cli(capsys, "train", *TINY, "--seed", str(seed), "--out", str(d))[0] == 0
        dirs.append(str(d))
    rc, out, _ = run_cli(capsys, "report", *dirs, "--plot", str(tmp_path / "c.png"))
    accs = [
        100 * json.loads((tmp_path / f"s{i}" / "result.json").read_text())["final_test_acc"]
        for i in range(3)
    ]
    expected = f"{np.mean(accs):.2f} ± {np.std(accs, ddof=1):.2f}"
    assert rc == 0 and expected in out and "| 3 |" in out
    assert (tmp_path / "c.png").stat().st_size > 0


def test_bench_runs_missing_runs_only_and_writes_table(capsys, tmp_path) -> None:
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        f"""
name: tiny
title: Tiny suite
doc: {tmp_path / "docs" / "tiny.md"}
runs_dir: {tmp_path / "runs"}
base: {{data: {{name: digits}}, model: {{args: {{hidden: [16]}}}}, epochs: 1, progress: false}}
entries:
  - label: BP
    seeds: [0, 1]
    published: {{value: 97.5, source: "made up for the test"}}
  - label: BP mse
    set: {{rule.args.loss: mse}}
    seeds: [0]
"""
    )
    assert run_cli(capsys, "bench", str(suite), "--no-progress")[0] == 0
    result = tmp_path / "runs" / "bp" / "s1" / "result.json"
    stamp = result.stat().st_mtime_ns
    assert run_cli(capsys, "bench", str(suite), "--no-progress")[0] == 0
    assert result.stat().st_mtime_ns == stamp  # finished runs are not run again
    table = (tmp_path / "docs" / "tiny.md").read_text()
    assert "| BP | 1 | 2/2 |" in table and "made up for the test" in table
    assert "| BP mse | 1 | 1/1 |" in table and "1.00x" in table
    assert (tmp_path / "docs" / "tiny.png").is_file()


def tiny_suite(tmp_path, entries: str, base: str = "progress: false") -> Path:
    """A suite of 1-epoch runs on digits writing ``d.md`` and ``runs/`` under tmp_path."""
    suite = tmp_path / "suite.yaml"
    model = "data: {name: digits}, model: {args: {hidden: [8]}}, epochs: 1"
    suite.write_text(
        f"doc: {tmp_path / 'd.md'}\nruns_dir: {tmp_path / 'runs'}\n"
        f"base: {{{model}, {base}}}\nentries:\n{entries}"
    )
    return suite


def test_bench_table_states_the_runs_threads_not_the_reporters(capsys, tmp_path, one_thread):
    suite = tiny_suite(tmp_path, "  - label: BP\n", "threads: 1")
    assert run_cli(capsys, "bench", str(suite), "--no-progress")[0] == 0
    torch.set_num_threads(2)  # the reporter's count differs from the run's; one_thread restores it
    assert run_cli(capsys, "bench", str(suite), "--report-only")[0] == 0
    assert "threads per run: 1." in (tmp_path / "d.md").read_text()


def test_bench_refuses_to_drop_table_rows_whose_runs_are_gone(capsys, tmp_path):
    suite = tiny_suite(tmp_path, "  - label: BP\n    seeds: [0, 1]\n")
    assert run_cli(capsys, "bench", str(suite))[0] == 0
    table = (tmp_path / "d.md").read_text()
    shutil.rmtree(tmp_path / "runs" / "bp" / "s1")
    shutil.rmtree(tmp_path / "records")
    code, _, err = run_cli(capsys, "bench", str(suite), "--report-only")
    assert code == 2 and "lists finished runs of ['BP']" in err and "--force" in err
    assert (tmp_path / "d.md").read_text() == table  # untouched
    assert run_cli(capsys, "bench", str(suite), "--report-only", "--force")[0] == 0
    assert "| BP | 1 | 1/2 |" in (tmp_path / "d.md").read_text()
    assert run_cli(capsys, "bench", str(suite), "--report-only")[0] == 0  # nothing more to lose


def test_console_script_entry_point(tmp_path) -> None:
    """The installed program (not just main()) maps a user mistake to exit code 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "bioprop", "train", "--rule", "nope"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "bioprop: error: unknown rule 'nope'; known: " + proc.stderr.split("known: ")[1].strip()
    )
    assert "Traceback" not in proc.stderr


def test_bench_records_a_diverged_run_and_goes_on(capsys, tmp_path) -> None:
    entries = "  - label: exploding\n    set: {optim.lr: 1.0e+30}\n  - label: fine\n"
    suite = tiny_suite(tmp_path, entries)
    assert run_cli(capsys, "bench", str(suite))[0] == 0
    table = (tmp_path / "d.md").read_text()
    assert "| exploding | 1 | 0/1 (1 diverged) |" in table and "| fine | 1 | 1/1 |" in table
    stamp = (tmp_path / "runs" / "exploding" / "s0" / "result.json").stat().st_mtime_ns
    run_cli(capsys, "bench", str(suite))  # a diverged seeded run is not retried
    assert (tmp_path / "runs" / "exploding" / "s0" / "result.json").stat().st_mtime_ns == stamp


def test_bench_seed_selects_seeds_and_rejects_unknown_ones(capsys, tmp_path) -> None:
    suite = tiny_suite(tmp_path, "  - label: BP\n    seeds: [0, 1, 2]\n")
    assert run_cli(capsys, "bench", str(suite), "--seed", "2", "--seed", "0")[0] == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "bp").iterdir()) == ["s0", "s2"]
    assert "| BP | 1 | 2/3 |" in (tmp_path / "d.md").read_text()
    from bioprop.bench import load_suite, saved_runs

    found = [(e.label, seed, d.name) for e, seed, d in saved_runs(load_suite(suite))]
    assert found == [("BP", 0, "s0"), ("BP", 2, "s2")]  # seed 1 has no checkpoint
    assert [seed for _, seed, _ in saved_runs(load_suite(suite), ["BP"], [2, 1])] == [2]
    # A run stopped early (or still training) has a checkpoint but is not finished.
    res = tmp_path / "runs" / "bp" / "s2" / "result.json"
    res.write_text(res.read_text().replace('"epochs_done": 1', '"epochs_done": 0'))
    assert [seed for _, seed, _ in saved_runs(load_suite(suite), finished=True)] == [0]
    assert len(list(saved_runs(load_suite(suite)))) == 2
    with pytest.raises(BiopropError, match="has no seed 7"):
        list(saved_runs(load_suite(suite), seeds=[7]))
    code, _, err = run_cli(capsys, "bench", str(suite), "--seed", "7")
    assert code != 0 and "has no seed 7; seeds: [0, 1, 2]" in err
    code, _, err = run_cli(capsys, "bench", str(suite), "--only", "FA")
    assert code != 0 and "has no entry 'FA'" in err


def test_bench_records_stand_in_for_deleted_runs_until_the_entry_changes(capsys, tmp_path):
    suite = tiny_suite(tmp_path, "  - label: BP\n    seeds: [0, 1]\n")
    text = suite.read_text()
    assert run_cli(capsys, "bench", str(suite))[0] == 0
    record = tmp_path / "records" / "suite" / "bp" / "s1.json"
    table = (tmp_path / "d.md").read_text()
    shutil.rmtree(tmp_path / "runs")  # checkpoints are not kept; the records are
    assert run_cli(capsys, "bench", str(suite), "--report-only")[0] == 0
    assert (tmp_path / "d.md").read_text() == table and "| BP | 1 | 2/2 |" in table
    code, _, err = run_cli(capsys, "bench", str(suite), "--dry-run")
    assert code == 0 and "seed" not in err  # nothing left to train
    stamp = record.stat().st_mtime_ns
    suite.write_text(text.replace("hidden: [8]", "hidden: [9]"))  # other settings: stale records
    assert run_cli(capsys, "bench", str(suite), "--report-only")[0] == 0
    assert "| BP | 1 | 0/2 |" in (tmp_path / "d.md").read_text()
    assert run_cli(capsys, "bench", str(suite), "--seed", "1")[0] == 0
    assert (
        record.stat().st_mtime_ns != stamp and "| BP | 1 | 1/2 |" in (tmp_path / "d.md").read_text()
    )
