"""Every committed benchmark suite loads, and each entry's model and rule build.

A suite is edited by hand (a new entry, a renamed option) and run hours later; a typo in an
entry's ``set`` or ``rule.args`` should fail here, not at the start of a long run. The data
are not needed: the models are built for the data set's known input shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bioprop.bench import load_suite, run_config
from bioprop.models import build_model
from bioprop.rules import build_rule
from bioprop.train import check_values

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SHAPES = {  # input shape, classes
    "mnist": ((1, 28, 28), 10),
    "fashion-mnist": ((1, 28, 28), 10),
    "digits": ((1, 8, 8), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
}


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.yaml")), ids=lambda p: p.stem)
def test_suite_entries_build(path: Path) -> None:
    suite = load_suite(path)
    assert suite.entries, f"{path.name} has no entries"
    built = set()
    for entry in suite.entries:
        cfg = run_config(entry, entry.seeds[0])
        check_values(cfg)
        key = json.dumps(
            [cfg.data.name, cfg.model.name, cfg.model.args, cfg.rule.name, cfg.rule.args],
            sort_keys=True,
            default=str,
        )
        if key in built:
            continue
        built.add(key)
        shape, classes = SHAPES[cfg.data.name]
        if cfg.data.flatten:
            shape = (shape[0] * shape[1] * shape[2],)
        model = build_model(cfg.model.name, shape, classes, **cfg.model.args)
        build_rule(cfg.rule.name, model, **cfg.rule.args)
