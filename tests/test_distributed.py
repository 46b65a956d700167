"""Data-parallel training: 2 gloo workers on one host must equal one process on the same batch.

The workers are real processes launched by torchrun (``python -m torch.distributed.run``) on
127.0.0.1. Every rule's ``.grad`` is averaged over the workers, so for batch-mean updates the
trajectory matches a single process up to float rounding (measured: ~3e-7 after 90 steps).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bioprop import results
from bioprop.rules import RULES
from bioprop.train import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# The reference, the second rule, and a rule with feedback-matrix state.
EQUIVALENT_RULES = [r for r in ("bp", "pepita", "fa") if r in RULES]
SETS = ("epochs=2", "log_every=0")

WORKER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import torch
    import bioprop.train as loop
    from tests.conftest import tiny_config

    base, jobs = Path(sys.argv[1]), json.loads(sys.argv[2])
    real_epoch = loop.train_epoch
    for job in jobs:
        def dying_epoch(s, epoch, history, stop_at=job.get("stop_at", 0)):  # a killed job
            if epoch == stop_at:
                raise KeyboardInterrupt
            return real_epoch(s, epoch, history)

        loop.train_epoch = dying_epoch
        cfg = tiny_config(base / job["name"], *job["sets"])
        try:
            loop.train(cfg, resume_run=job.get("resume", False))
        except KeyboardInterrupt:
            continue
        # Each worker saves its own final state: they must all be equal.
        s = loop.build(cfg)
        loop.resume(s, Path(cfg.out))
        torch.save(s.rule.state_dict(), base / job["name"] / f"rank{os.environ['RANK']}.pt")
    # Leave together: exiting with a live gloo group (e.g. right after the simulated kill) could
    # abort one worker ("terminate called without an active exception") under heavy load.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(base: Path, jobs: list[dict]) -> None:
    """Two workers run ``jobs`` ({name, sets, stop_at?, resume?}); fail with their output."""
    base.mkdir(parents=True, exist_ok=True)
    script = base / "worker.py"
    script.write_text(WORKER)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script),
        str(base), json.dumps(jobs),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def final_state(run: Path) -> dict[str, torch.Tensor]:
    return results.load_checkpoint(run / results.CHECKPOINT)["rule"]


def tensors(state: dict) -> dict[str, torch.Tensor]:
    """The tensors of a state dict (rules may also keep small non-tensor extra state)."""
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def assert_states_close(a: dict, b: dict, atol: float = 1e-5) -> None:
    a, b = tensors(a), tensors(b)
    assert a and a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


def assert_states_equal(a: dict, b: dict) -> None:
    a, b = tensors(a), tensors(b)
    assert a and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


BN_SETS = [*SETS, "model.name=convnet", "model.args={channels: [4], fc: [], norm: batch}"]
LONG = [*SETS, "epochs=3"]


@pytest.fixture(scope="module")
def dp_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One torchrun launch for every job (start-up dominates), then one more that resumes."""
    base = tmp_path_factory.mktemp("dp")
    jobs = [{"name": r, "sets": [*SETS, f"rule.name={r}"]} for r in EQUIVALENT_RULES]
    jobs += [
        {"name": "bn", "sets": BN_SETS},
        {"name": "full", "sets": LONG},
        {"name": "cut", "sets": LONG, "stop_at": 2},
    ]
    torchrun(base, jobs)
    assert (base / "cut" / "run" / results.CHECKPOINT).is_file()  # epoch 1 was saved
    torchrun(base, [{"name": "cut", "sets": LONG, "resume": True}])
    return base


def load_rank(run: Path, rank: int) -> dict:
    return torch.load(run / f"rank{rank}.pt", weights_only=False)


@pytest.mark.parametrize("rule", EQUIVALENT_RULES)
def test_two_workers_equal_one_process(dp_runs: Path, tmp_path: Path, rule: str) -> None:
    single = train(tiny_config(tmp_path, f"rule.name={rule}", *SETS))
    assert_states_close(final_state(tmp_path / "run"), final_state(dp_runs / rule / "run"))
    # Workers end identical, bit for bit; rank 0 wrote the run directory.
    assert_states_equal(load_rank(dp_runs / rule, 0), load_rank(dp_runs / rule, 1))
    dp = results.read_result(dp_runs / rule / "run")
    assert dp["workers"] == 2 and abs(dp["final_test_acc"] - single["final_test_acc"]) < 0.01


def test_data_dependent_state_stays_identical_across_workers(dp_runs: Path) -> None:
    """BatchNorm running statistics are updated from each worker's own data; averaging them
    after every step keeps the workers' models identical."""
    r0, r1 = load_rank(dp_runs / "bn", 0), load_rank(dp_runs / "bn", 1)
    assert any("running_mean" in k for k in r0)
    assert_states_equal(r0, r1)


def test_distributed_resume_equals_uninterrupted(dp_runs: Path) -> None:
    a, b = final_state(dp_runs / "full" / "run"), final_state(dp_runs / "cut" / "run")
    assert_states_equal(a, b)
