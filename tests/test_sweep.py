"""Sweeps on Optuna storage: SQLite on one machine, a real PostgreSQL server for shared stores.

Oracles: every grid point runs exactly once even with two workers racing for trials; the best
value reported equals the best result.json; an interrupted sweep finishes on the next call and
the crashed trial resumes its own checkpoint. The PostgreSQL test starts a real server from the
Debian package (installed by .ci/run) on 127.0.0.1; it is skipped locally when none is installed
and fails in CI (CI=true), where it must run.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bioprop import results
from bioprop.errors import BiopropError
from bioprop.sweep import load_spec, make_study, run_sweep

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BASE = """
base:
  data: {name: digits, batch_size: 32}
  model: {args: {hidden: [16]}}
  optim: {lr: 0.05}
  epochs: EPOCHS
  log_every: 0
  threads: 1
"""


def write_spec(tmp: Path, body: str, epochs: int = 1, name: str = "s") -> Path:
    spec = tmp / f"{name}.yaml"
    spec.write_text(
        f"name: {name}\nruns_dir: {tmp / 'runs'}\n" + BASE.replace("EPOCHS", str(epochs)) + body
    )
    return spec


def completed(spec: Path, storage: str | None = None):
    from optuna.trial import TrialState

    study = make_study(load_spec(spec, storage))
    return study.get_trials(states=(TrialState.COMPLETE,))


def check_grid(spec: Path, storage: str | None, n: int, epochs: int = 1) -> None:
    """Every grid point completed, each trained exactly once (a trial that found its point taken
    by a worker that then finished may complete too, reading the same run directory)."""
    trials = completed(spec, storage)
    dirs = {t.user_attrs["run_dir"] for t in trials}
    assert len(dirs) == n
    for t in trials:
        r = results.read_result(t.user_attrs["run_dir"])
        assert t.value == r["best_test_acc"]
        assert [e["epoch"] for e in r["epochs"]] == list(range(1, epochs + 1))


GRID = "sampler: grid\ngrid: {seed: [0, 1], optim.lr: [0.03, 0.1]}\n"


def test_grid_sweep_two_workers_sqlite(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, GRID)
    table = run_sweep(spec, workers=2)
    check_grid(spec, None, 4)
    assert (tmp_path / "runs" / "sweep.md").read_text() == table
    assert "Grouped over seeds" in table and "| 2 |" in table  # 2 lr groups x 2 seeds
    before = (tmp_path / "runs.db").stat().st_mtime_ns
    n_done = len(completed(spec))
    run_sweep(spec)  # a finished sweep runs nothing more
    assert len(completed(spec)) == n_done
    assert before <= (tmp_path / "runs.db").stat().st_mtime_ns


def test_random_search_respects_space_and_budget(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        "sampler: random\nn_trials: 3\nspace:\n  optim.lr: {low: 0.01, high: 0.2, log: true}\n"
        "  model.args.hidden: {choices: [[8], [16, 8]]}\n",
    )
    run_sweep(spec)
    trials = completed(spec)
    assert len(trials) == 3
    for t in trials:
        cfg = results.read_yaml_dict(Path(t.user_attrs["run_dir"]) / results.CONFIG)
        assert 0.01 <= cfg["optim"]["lr"] <= 0.2
        assert cfg["model"]["args"]["hidden"] in ([8], [16, 8])


def test_bad_specs_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(BiopropError, match="needs a 'grid'"):
        load_spec(write_spec(tmp_path, "sampler: grid\n"))
    with pytest.raises(BiopropError, match=r"unknown config key 'optim\.lrr'"):
        load_spec(write_spec(tmp_path, "grid: {optim.lrr: [1]}\n"))
    with pytest.raises(BiopropError, match="cannot open sweep storage"):
        make_study(load_spec(write_spec(tmp_path, GRID), "postgresql://nobody@127.0.0.1:1/x"))


def test_interrupted_sweep_continues_and_resumes_the_crashed_run(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("BIOPROP_SWEEP_HEARTBEAT", "1,3")
    spec = write_spec(tmp_path, "sampler: grid\ngrid: {seed: [0, 1]}\n", epochs=6)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "bioprop", "sweep", str(spec), "--no-summary"]
    worker = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not glob.glob(str(tmp_path / "runs" / "*" / results.CHECKPOINT)):
        assert time.time() < deadline and worker.poll() is None, "worker never checkpointed"
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)  # a crash: no clean-up, the trial stays RUNNING
    worker.wait()
    crashed = Path(glob.glob(str(tmp_path / "runs" / "*" / results.CHECKPOINT))[0]).parent
    assert not (crashed / results.RESULT).exists()
    run_sweep(spec)
    check_grid(spec, None, 2, epochs=6)
    r = results.read_result(crashed)
    assert r["status"] == "finished" and r["epochs_done"] == 6
    # The crashed run continued from its checkpoint (its log holds each epoch once, checked by
    # check_grid) and the crashed trial is recorded as failed.
    from optuna.trial import TrialState

    failed = make_study(load_spec(spec)).get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return (
        Path(found[-1]).parent
        if found
        else (Path(p).parent if (p := shutil.which("initdb")) else None)
    )


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1 (as user postgres when running as root)."""
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed; .ci/run installs the Debian package")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    datadir = Path(tempfile.mkdtemp(prefix="bioprop-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(datadir, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *a: subprocess.run([*as_user, *a], check=True, capture_output=True)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(datadir / "db"), "-A", "trust", "-U", "postgres")
    opts = f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1"
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(datadir / "db"),
        "-o",
        opts,
        "-l",
        str(datadir / "log"),
        "-w",
        "start",
    )
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(datadir / "db"), "-m", "fast", "-w", "stop")
        shutil.rmtree(datadir, ignore_errors=True)


def test_grid_sweep_two_workers_postgresql(tmp_path: Path, postgres_url: str) -> None:
    spec = write_spec(tmp_path, GRID, name="pg")
    run_sweep(spec, workers=2, storage_url=postgres_url)
    check_grid(spec, postgres_url, 4)
    assert not (tmp_path / "runs.db").exists()  # the study lives in PostgreSQL, not SQLite
