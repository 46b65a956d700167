"""CorInfoMax on real MNIST through the training loop: a short regression (spec §9, tests 9–10).

A full epoch (3000 batches, about 80 s on one busy core) is too long for the test suite, so this
trains the first 1000 batches (a third of epoch 1) with the official settings and checks the
W_f/W_b angle against the published curve and the test accuracy against a measured threshold.
The full epoch-1 comparison with the published 93.4–94.1 % lives in
benchmarks/corinfomax-mnist.yaml (docs/corinfomax-mnist.md).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from bioprop.config import load_config
from bioprop.diagnostics import angle_deg
from bioprop.models import build_model
from bioprop.rules import build_rule
from bioprop.train import train

OFFICIAL = [
    "data.name=mnist",
    "data.batch_size=20",
    "data.eval_batch_size=10000",
    "model.name=corinfomax_mlp",
    "model.args.hidden=[500]",
    "rule.name=corinfomax",
    "rule.args.mu_f=[1.0, 0.7]",
    "rule.args.mu_b=[0.15]",
    "optim.name=sgd",
    "optim.lr=1.0",
    "optim.momentum=0.0",
]


def test_init_angle_is_near_orthogonal():
    """Independent xavier draws of W_f² and W_b¹ᵀ: published ≈ 89–92° at the start."""
    torch.manual_seed(0)
    rule = build_rule("corinfomax", build_model("corinfomax_mlp", (1, 28, 28), 10, hidden=[500]))
    (pair,) = rule.feedback_pairs()
    assert 85 <= angle_deg(pair.weight, pair.feedback) <= 95


def test_first_thousand_batches(shared_data: Path, tmp_path: Path):
    """Angle < 80° after 500 batches and < 76° after 1000 (published ≈ 73–74° and ≈ 70°); test
    accuracy after 1000 batches ≥ 90 %. Measured: 91.40 % and 73.1° / 70.1° for seed 0 (this
    test), 91.14 % and 73.2° / 70.1° for seed 10. A sign or scale slip in the update, or a
    broken schedule, lands far below."""
    cfg = load_config(
        None,
        [
            *OFFICIAL,
            "epochs=1",
            "max_steps_per_epoch=1000",
            "diagnostics_every=500",
            "threads=1",
            "progress=false",
            "log_every=0",
            f"out={tmp_path / 'run'}",
        ],
    )
    before = torch.get_num_threads()
    try:
        summary = train(cfg, data_dir=str(shared_data))
    finally:
        torch.set_num_threads(before)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    angle = {int(r["step"]): float(r["angle/layer2"]) for r in rows if r["kind"] == "diag"}
    assert angle[500] < 80 and angle[1000] < 76
    assert summary["final_test_acc"] >= 0.90
