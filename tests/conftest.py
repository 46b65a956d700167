"""Shared fixtures: CPU only, a fresh seed per test, and a private cache folder.

Every test gets its own BIOPROP_CACHE so that nothing touches the user's real cache and results
do not depend on test order.
"""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIOPROP_CACHE", str(tmp_path_factory.mktemp("cache")))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(False)


def load_script(name: str):
    """Import ``benchmarks/<name>.py`` (not a package) as a module, for tests of its functions."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def one_thread():
    """One intra-op thread for tests of tiny kernels: on a shared machine an oversubscribed
    OpenMP pool makes them up to ~100x slower. Use with ``pytestmark``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_cut_and_resumed(tmp_path: Path, monkeypatch, sets, cut_epoch: int):
    """Train ``sets`` straight (tmp_path/full) and again (tmp_path/cut) with a KeyboardInterrupt
    at the start of epoch ``cut_epoch``, then ``--resume`` it. Returns (full result, resumed
    result, the cut run's rule state before the resume, full rule state, resumed rule state)."""
    import bioprop.train as loop
    from bioprop import results

    full = loop.train(tiny_config(tmp_path / "full", *sets))
    real_epoch = loop.train_epoch

    def dying_epoch(s, epoch, history):
        if epoch == cut_epoch:
            raise KeyboardInterrupt
        return real_epoch(s, epoch, history)

    monkeypatch.setattr(loop, "train_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        loop.train(tiny_config(tmp_path / "cut", *sets))
    ckpt = tmp_path / "cut" / "run" / results.CHECKPOINT
    first = results.load_checkpoint(ckpt)["rule"]
    monkeypatch.setattr(loop, "train_epoch", real_epoch)
    resumed = loop.train(tiny_config(tmp_path / "cut", *sets), resume_run=True)
    a = results.load_checkpoint(tmp_path / "full" / "run" / results.CHECKPOINT)["rule"]
    b = results.load_checkpoint(ckpt)["rule"]
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
    return full, resumed, first, a, b


@pytest.fixture
def shared_data() -> Path:
    """The real data folder (BIOPROP_DATA); tests that need it skip when it is absent."""
    value = os.environ.get("BIOPROP_DATA")
    if not value or not (Path(value) / "mnist").is_dir():
        pytest.skip("BIOPROP_DATA does not point at the shared data sets")
    return Path(value)


def tiny_config(tmp_path: Path, *sets: str):
    """A seconds-long run on the embedded digits data."""
    from bioprop.config import load_config

    base = [
        "data.name=digits",
        "model.args.hidden=[32]",
        "epochs=3",
        "data.batch_size=32",
        "optim.lr=0.05",
        "progress=false",
        "log_every=10",
        f"out={tmp_path / 'run'}",
    ]
    return load_config(None, [*base, *sets])
