"""Shared fixtures: CPU only, a fresh seed per test, and a private cache folder.

Every test gets its own BIOPROP_CACHE so that nothing touches the user's real cache and results
do not depend on test order.
"""

from __future__ import annotations

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
