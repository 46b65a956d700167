"""The CorInfoMax benchmark suites hold the published settings (spec §6), and the CIFAR-100
suite's code path runs end to end on a synthetic CIFAR-100 pickle (the real data is not here)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bioprop.bench import load_suite
from bioprop.config import TrainConfig, from_dict
from bioprop.data import cifar
from bioprop.train import train

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

# spec §6, typed in from the table: arch, mu_f, mu_b, eta0, rule, g, lambda, T_free/T_nudge,
# schedule [[0, d], [e_c, 0.9], ...]
SPEC = {
    "mnist": (
        [500], [1.0, 0.7], [0.15], 0.05, "const", 0.5, 0.99999, 30, 10, [[0, 0.95], [15, 0.9]],
    ),
    "fashion-mnist": (
        [500], [0.3, 0.22], [0.07], 0.07, "slow", 0.3, 0.99999, 30, 10,
        [[0, 0.95], [20, 0.9], [25, 0.8]],
    ),
    "cifar10": (
        [1000], [0.08, 0.04], [0.04], 0.05, "const", 0.1, 0.99995, 30, 10, [[0, 0.95], [15, 0.9]],
    ),
    "cifar100": (
        [2000, 1000], [0.18, 0.15, 0.09], [0.08, 0.06], 0.06, "const", 0.1, 0.99999, 50, 20,
        [[0, 0.99], [20, 0.9]],
    ),
    "mnist-3l": (
        [500, 500], [1.1, 0.75, 0.6], [0.17, 0.07], 0.05, "const", 0.2, 0.99999, 30, 10,
        [[0, 0.95], [15, 0.9]],
    ),
    "cifar10-3l": (
        [1000, 500], [0.11, 0.06, 0.035], [0.045, 0.015], 0.05, "const", 0.1, 0.99999, 30, 10,
        [[0, 0.95], [15, 0.9]],
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SPEC))
def test_suite_holds_published_settings(name: str):
    """Every suite entry: plain SGD at lr 1 (rates live in mu_f/mu_b), batch 20, 50 epochs,
    eps 0.15, beta 1, and the per-dataset values of the spec's table."""
    suite = load_suite(BENCH / f"corinfomax-{name}.yaml")
    hidden, mu_f, mu_b, eta, rule, g, lam, tf, tn, decay = SPEC[name]
    for entry in suite.entries:
        cfg = from_dict(TrainConfig, entry.config)
        a = cfg.rule.args
        assert cfg.rule.name == "corinfomax" and cfg.model.name == "corinfomax_mlp"
        assert cfg.model.args["hidden"] == hidden and cfg.epochs == 50
        assert cfg.data.batch_size == 20 and cfg.optim.name == "sgd"
        assert cfg.optim.lr == 1.0 and cfg.optim.momentum == 0 and cfg.optim.weight_decay == 0
        assert cfg.sched.name == "none"
        got = (a["mu_f"], a["mu_b"], a["eta"], a["eta_rule"], a["g"], a["lam"])
        assert got == (mu_f, mu_b, eta, rule, g, lam)
        assert (a["t_free"], a["t_nudge"], a["lr_decay"]) == (tf, tn, decay)
        assert a["eps"] == 0.15 and a["beta"] == 1.0
        if name.startswith("cifar"):
            assert a["x_mean"] == [0.4914, 0.4822, 0.4465]
            assert a["x_std"] == pytest.approx([3 * 0.2023, 3 * 0.1994, 3 * 0.2010], abs=1e-4)


def write_cifar100(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Synthetic ``cifar-100-python`` in the release's pickle format, md5s pinned to it."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", 20), ("test", 5)):
        labels = [int(v) for v in rng.integers(0, 100, n)]
        d = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": labels,
            b"coarse_labels": [v // 5 for v in labels],
        }
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    meta = {
        b"fine_label_names": [f"f{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"c{i}".encode() for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))

    def pin(spec: cifar.FileSpec) -> cifar.FileSpec:
        return cifar.FileSpec(spec.name, hashlib.md5((folder / spec.name).read_bytes()).hexdigest())

    ps = cifar.CIFAR100
    pinned = cifar.PickleSet(
        ps.dataset, ps.folder, tuple(map(pin, ps.train)), tuple(map(pin, ps.test)),
        pin(ps.meta), ps.archive,
    )  # fmt: skip
    monkeypatch.setattr(cifar, "CIFAR100", pinned)


def test_cifar100_suite_runs_on_synthetic_pickle(tmp_path: Path, monkeypatch):
    """The CIFAR-100 suite's exact config (3072-2000-1000-100, T 50/20) trains one batch,
    evaluates, and logs the W_f/W_b angle of both layer pairs of the 3-layer net."""
    write_cifar100(tmp_path / "data" / "cifar-100-python", monkeypatch)
    entry = load_suite(BENCH / "corinfomax-cifar100.yaml").entries[0]
    raw = dict(entry.config, epochs=1, progress=False, out=str(tmp_path / "run"), threads=1)
    raw["diagnostics_every"] = 1
    before = torch.get_num_threads()
    try:
        summary = train(from_dict(TrainConfig, raw), data_dir=str(tmp_path / "data"))
    finally:
        torch.set_num_threads(before)
    assert summary["status"] == "finished" and summary["epochs_done"] == 1
    assert 0.0 <= summary["final_test_acc"] <= 1.0
    metrics = (tmp_path / "run" / "metrics.csv").read_text()
    assert "angle/layer2" in metrics and "angle/layer3" in metrics
