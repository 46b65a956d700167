"""Every committed benchmark suite loads, each entry's model and rule build, and every
committed record still belongs to its entry.

A suite is edited by hand (a new entry, a renamed option) and run hours later; a typo in an
entry's ``set`` or ``rule.args`` should fail here, not at the start of a long run. The data
are not needed: the models are built for the data set's known input shape. A record is
matched to its entry by the run's settings, so a change to the config (a new field, a renamed
default) can silently orphan hours of recorded runs; that fails here too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bioprop.bench import load_suite, read_record, record_path, run_config
from bioprop.config import TrainConfig, to_dict
from bioprop.models import build_model
from bioprop.report import identity
from bioprop.rules import build_rule
from bioprop.train import check_values

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SHAPES = {  # input shape, classes
    "mnist": ((1, 28, 28), 10),
    "fashion-mnist": ((1, 28, 28), 10),
    "digits": ((1, 8, 8), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar10_pickles": ((3, 32, 32), 10),
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


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_committed_record_matches_its_entry(path: Path) -> None:
    suite = load_suite(path)
    owners = {record_path(suite, e, seed): (e, seed) for e in suite.entries for seed in e.seeds}
    for p in sorted(suite.records.glob("*/s*.json")):
        assert p in owners, f"{p} belongs to no entry or seed of {path.name}"
        entry, seed = owners[p]
        assert read_record(suite, entry, seed) is not None, (
            f"{p} was made with other settings than {entry.label!r} now has"
        )


def test_identity_leaves_out_later_fields_only_at_their_default() -> None:
    new = to_dict(TrainConfig())
    old = json.loads(json.dumps(new))
    del old["data"]["jpeg_quality"], old["data"]["jpeg_offset"]  # a config from before them
    assert identity(new) == identity(old)
    new["data"]["jpeg_quality"] = 75
    assert identity(new) != identity(old)
