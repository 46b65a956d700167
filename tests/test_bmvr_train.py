"""BMVR inside the training loop: the prepare/metrics hooks and the swapped-splits option."""

from __future__ import annotations

import csv

import numpy as np
import torch

from bioprop.data import load_dataset
from bioprop.train import train
from tests.conftest import tiny_config


def test_swap_splits_trains_on_the_official_test_split():
    """Table 1 of BMVR trains on MNIST's test images; the flag must swap, not copy."""
    plain, swapped = load_dataset("digits"), load_dataset("digits", swap_splits=True)
    assert torch.equal(swapped.train.x, plain.test.x)
    assert torch.equal(swapped.test.y, plain.train.y)


def offline_rank_k_loss(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    """min over rank-k B of mean ‖y − Bx‖² for centred x and onehot − ȳ, the textbook way:
    OLS fit, then keep the top-k principal directions of the fitted values."""
    x = x - x.mean(0)
    y = np.eye(10)[labels]
    y = y - y.mean(0)
    b_ols = np.linalg.lstsq(x, y, rcond=None)[0]  # m × n
    fitted = x @ b_ols
    _, _, vt = np.linalg.svd(fitted, full_matrices=False)
    resid = y - fitted @ vt[:k].T @ vt[:k]
    return float(np.mean(np.sum(resid**2, axis=1)))


def test_loop_logs_objective_against_the_offline_optimum(tmp_path):
    """The diag rows must carry the rule's metrics; loss_opt must equal an independent offline
    solution, and the online objective can never go below it."""
    cfg = tiny_config(
        tmp_path,
        "rule.name=bmvr",
        "model.args.hidden=[2]",
        "model.args.bias=false",
        "model.args.activation=identity",
        "rule.args.eta_q=0.02",
        "rule.args.q_init=0.3",
        "optim.lr=0.01",
        "optim.momentum=0.0",
        "data.batch_size=8",
        "diagnostics_every=45",
        "epochs=2",
        "threads=1",
    )
    train(cfg)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "diag"]
    assert rows
    data = load_dataset("digits")
    x = data.train.x.flatten(1).double().numpy()
    expected = offline_rank_k_loss(x, data.train.y.numpy(), 2)
    for r in rows:
        assert abs(float(r["bmvr/loss_opt"]) / expected - 1) < 1e-4  # float32 covariances
        assert float(r["bmvr/loss"]) >= float(r["bmvr/loss_opt"]) * (1 - 1e-4)
    assert float(rows[-1]["bmvr/loss"]) < float(rows[0]["bmvr/loss"])
