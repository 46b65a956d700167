"""The run directory: config.yaml, result.json, metrics.csv, curves.png, checkpoint.pt.

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted run never leaves a half-written file where a reader (or ``--resume``) looks.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from bioprop.config import yaml_load

CONFIG, RESULT, METRICS, CURVES, CHECKPOINT = (
    "config.yaml",
    "result.json",
    "metrics.csv",
    "curves.png",
    "checkpoint.pt",
)


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_yaml(path: str | Path, data: Any) -> None:
    write_text(path, yaml.safe_dump(data, sort_keys=False))


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rows may differ in keys (step, epoch, diagnostics rows): the header is their union."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    # weights_only=False: the checkpoint holds RNG states and metric history, written by us.
    return torch.load(path, map_location="cpu", weights_only=False)


def holds_run(run_dir: str | Path) -> bool:
    """Whether a run (finished, or checkpointed part-way) lives in ``run_dir``."""
    d = Path(run_dir)
    return (d / CHECKPOINT).is_file() or (d / RESULT).is_file()


def read_result(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / RESULT).read_text())


def read_yaml_dict(path: str | Path) -> dict[str, Any]:
    return yaml_load(Path(path).read_text()) or {}
