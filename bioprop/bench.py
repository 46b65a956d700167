"""Benchmark suites: YAML files listing runs and the published numbers they are compared to.

A suite::

    name: bp-mnist
    title: Backprop, MLP 784-1024-10 on MNIST
    doc: docs/bp-mnist.md          # where the markdown table is written
    runs_dir: runs/bench/bp-mnist  # one sub-folder per entry and seed
    metric: accuracy               # or "error": how published values are expressed (in %)
    reference: BP                  # entry whose s/epoch is the denominator of the time ratios
    notes: free text printed under the table
    base: {...}                    # a TrainConfig mapping shared by all entries
    entries:
      - label: BP
        set: {rule.name: bp}       # dotted overrides applied to base
        seeds: [0, 1, 2]
        published: {value: 98.0, source: "paper, Table 1", confidence: "unverified"}

``bioprop bench SUITE`` trains every (entry, seed) that has not finished, resumes interrupted
ones from their checkpoint, then writes the table (and a curves plot beside it).

Records: run folders (checkpoints, hundreds of MB) stay out of version control, so each finished
(or diverged) run also leaves its ``result.json`` and config in a small *record*,
``records/<suite name>/<entry slug>/s<seed>.json`` beside the suite file (key ``records`` to
move it). Records are committed with the table: a later checkout can rewrite the table, add seeds
or entries, and does not retrain what a record already holds. A record counts only while the
entry's config still matches it (everything but the seed, threads, logging and output folder);
change an entry's settings and its old records are ignored and the runs are done again.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bioprop import results
from bioprop.config import TrainConfig, apply_overrides, from_dict, read_yaml, to_dict
from bioprop.errors import BiopropError, Diverged
from bioprop.report import Group, fmt, identity, mean_curves

SUITE_KEYS = {
    "name", "title", "doc", "runs_dir", "records", "metric", "reference", "notes", "base", "entries"
}  # fmt: skip
ENTRY_KEYS = {"label", "set", "seeds", "published", "target"}


@dataclass
class Entry:
    label: str
    config: dict[str, Any]
    seeds: list[int]
    published: dict[str, Any] = field(default_factory=dict)
    target: str = ""


@dataclass
class Suite:
    path: Path
    name: str
    title: str
    doc: Path
    runs_dir: Path
    metric: str
    reference: str
    notes: str
    entries: list[Entry]
    records: Path = Path("records")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def load_suite(path: str | Path) -> Suite:
    raw = read_yaml(path)
    unknown = set(raw) - SUITE_KEYS
    if unknown:
        raise BiopropError(
            f"{path}: unknown suite keys {sorted(unknown)}; known: {sorted(SUITE_KEYS)}"
        )
    if not raw.get("entries"):
        raise BiopropError(f"{path}: a suite needs a non-empty 'entries' list")
    name = raw.get("name") or Path(path).stem
    entries = [_entry(path, raw.get("base", {}), e) for e in raw["entries"]]
    metric = raw.get("metric", "accuracy")
    if metric not in ("accuracy", "error"):
        raise BiopropError(f"{path}: metric must be 'accuracy' or 'error', got {metric!r}")
    return Suite(
        Path(path),
        name,
        raw.get("title", name),
        Path(raw.get("doc", f"docs/{name}.md")),
        Path(raw.get("runs_dir", f"runs/bench/{name}")),
        metric,
        raw.get("reference", entries[0].label),
        raw.get("notes", ""),
        entries,
        Path(raw["records"]) if "records" in raw else Path(path).parent / "records" / name,
    )


def _entry(path: str | Path, base: dict[str, Any], raw: dict[str, Any]) -> Entry:
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        raise BiopropError(
            f"{path}: unknown entry keys {sorted(unknown)}; known: {sorted(ENTRY_KEYS)}"
        )
    cfg = apply_overrides(
        copy.deepcopy(base), [f"{k}={_yaml(v)}" for k, v in raw.get("set", {}).items()]
    )
    from_dict(TrainConfig, cfg)  # validate now, not after hours of other runs
    return Entry(
        raw["label"],
        cfg,
        list(raw.get("seeds", [0])),
        raw.get("published") or {},
        raw.get("target", ""),
    )


def _yaml(v: Any) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def run_dir(suite: Suite, entry: Entry, seed: int) -> Path:
    return suite.runs_dir / slug(entry.label) / f"s{seed}"


def selected(
    suite: Suite, only: list[str] | None = None, seeds: list[int] | None = None
) -> Iterator[tuple[Entry, int]]:
    """(entry, seed) of every run of the suite, in suite order, restricted to the entries labelled
    in ``only`` and the seeds in ``seeds`` when given; an unknown label or seed is an error."""
    _check_selection(suite, only, seeds)
    for entry in suite.entries:
        if only and entry.label not in only:
            continue
        for seed in entry.seeds:
            if not seeds or seed in seeds:
                yield entry, seed


def saved_runs(
    suite: Suite,
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    finished: bool = False,
) -> Iterator[tuple[Entry, int, Path]]:
    """(entry, seed, run folder) of every selected run (see ``selected``) whose folder holds a
    checkpoint: what the analysis scripts under benchmarks/ read. A run still training (or
    stopped) has a checkpoint too; ``finished=True`` leaves such runs out, for scripts that
    report a run's final weights."""
    for entry, seed in selected(suite, only, seeds):
        d = run_dir(suite, entry, seed)
        if not (d / results.CHECKPOINT).is_file():
            continue
        if not finished or dir_status(d, run_config(entry, seed).epochs) == "finished":
            yield entry, seed, d


def run_config(entry: Entry, seed: int) -> TrainConfig:
    cfg = from_dict(TrainConfig, copy.deepcopy(entry.config))
    cfg.seed = seed
    return cfg


def record_path(suite: Suite, entry: Entry, seed: int) -> Path:
    return suite.records / slug(entry.label) / f"s{seed}.json"


def _status_of(r: dict[str, Any] | None, epochs: int) -> str:
    """Status of a result.json (from a run folder or a record); None means no result yet."""
    if r is None:
        return "todo"
    if r.get("status") == "diverged":
        return "diverged"
    return (
        "finished" if r.get("status") == "finished" and r.get("epochs_done") == epochs else "todo"
    )


def _dir_result(d: Path) -> dict[str, Any] | None:
    return results.read_result(d) if (d / results.RESULT).is_file() else None


def dir_status(d: Path, epochs: int) -> str:
    return _status_of(_dir_result(d), epochs)


def read_record(suite: Suite, entry: Entry, seed: int) -> dict[str, Any] | None:
    """The recorded result of (entry, seed), or None if absent or made with other settings."""
    p = record_path(suite, entry, seed)
    if not p.is_file():
        return None
    rec = json.loads(p.read_text())
    return rec["result"] if rec.get("identity") == _identity(entry, seed) else None


def _identity(entry: Entry, seed: int) -> str:
    return identity(to_dict(run_config(entry, seed)))


def run_result(suite: Suite, entry: Entry, seed: int) -> tuple[str, dict[str, Any] | None]:
    """("finished" | "diverged" | "todo", result): the run folder first, then the record."""
    epochs = run_config(entry, seed).epochs
    r = _dir_result(run_dir(suite, entry, seed))
    if (st := _status_of(r, epochs)) == "todo":
        r = read_record(suite, entry, seed)
        st = _status_of(r, epochs)
    return st, (None if st == "todo" else r)


def status(suite: Suite, entry: Entry, seed: int) -> str:
    """ "finished", "diverged" (final: rerunning a seeded run diverges again) or "todo"."""
    return run_result(suite, entry, seed)[0]


def write_record(suite: Suite, entry: Entry, seed: int) -> None:
    """Record the run folder of (entry, seed) if it finished or diverged (atomic write)."""
    r = _dir_result(run_dir(suite, entry, seed))
    if _status_of(r, run_config(entry, seed).epochs) == "todo":
        return
    rec = {"identity": _identity(entry, seed), "result": r}
    p = record_path(suite, entry, seed)
    if not p.is_file() or json.loads(p.read_text()) != rec:
        results.write_json(p, rec)


def write_records(suite: Suite) -> None:
    """Record every finished or diverged run folder of the suite."""
    for entry in suite.entries:
        for seed in entry.seeds:
            write_record(suite, entry, seed)


def run_suite(
    suite: Suite,
    *,
    data_dir: str | None,
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    progress: bool = True,
    dry_run: bool = False,
) -> None:
    """Train what is missing (resuming partial runs), in suite order.

    ``only`` and ``seeds`` restrict the work to some entries / seeds, so that one suite can be
    spread over several processes (one per seed) that all write into the same runs folder.
    """
    from bioprop.train import train

    for entry, seed in selected(suite, only, seeds):
        cfg, d = run_config(entry, seed), run_dir(suite, entry, seed)
        cfg.progress, cfg.out = progress, str(d)
        if status(suite, entry, seed) != "todo":
            continue
        print(f"[bench {suite.name}] {entry.label} seed {seed} -> {d}", file=sys.stderr)
        if dry_run:
            continue
        try:
            train(cfg, resume_run=True, data_dir=data_dir)
        except Diverged as err:  # a diverged run is a result; the suite goes on
            print(f"[bench {suite.name}] {entry.label} seed {seed} diverged: {err}",
                  file=sys.stderr)  # fmt: skip
        write_record(suite, entry, seed)


def _check_selection(suite: Suite, only: list[str] | None, seeds: list[int] | None) -> None:
    labels = [e.label for e in suite.entries]
    if unknown := [x for x in only or [] if x not in labels]:
        raise BiopropError(f"suite {suite.name} has no entry {unknown[0]!r}; entries: {labels}")
    known = sorted({s for e in suite.entries for s in e.seeds})
    if unknown := [x for x in seeds or [] if x not in known]:
        raise BiopropError(f"suite {suite.name} has no seed {unknown[0]}; seeds: {known}")


def finished_results(suite: Suite, entry: Entry) -> dict[int, dict[str, Any]]:
    """Seed -> result of each finished run of an entry, from run folders or records."""
    out = {}
    for seed in entry.seeds:
        st, r = run_result(suite, entry, seed)
        if st == "finished":
            out[seed] = r
    return out


def entry_group(suite: Suite, entry: Entry) -> Group:
    """The finished runs of an entry, from run folders or records."""
    g = Group(entry.label)
    for seed, r in finished_results(suite, entry).items():
        g.runs.append(run_dir(suite, entry, seed))
        g.results.append(r)
    return g


def _published(entry: Entry, metric: str) -> str:
    p = entry.published
    if "value" not in p:
        return "–"
    return f"{p['value']}" + (f" ({p['confidence']})" if p.get("confidence") else "")


def _threads(groups) -> str:
    """The torch threads the finished runs used (from their result.json), e.g. "1" or "1, 2"."""
    seen = sorted({r["threads"] for g in groups for r in g.results if r.get("threads")})
    return ", ".join(map(str, seen)) or "–"


def render(suite: Suite) -> str:
    """The markdown page for ``suite`` from whatever runs have finished."""
    groups = {e.label: entry_group(suite, e) for e in suite.entries}
    ref = groups.get(suite.reference)
    ref_time = ref.seconds_per_epoch() if ref and ref.results else float("nan")
    scale, name = (
        (100, "test accuracy (%)") if suite.metric == "accuracy" else (-100, "test error (%)")
    )
    lines = [
        f"# {suite.title}",
        "",
        f"Produced by `bioprop bench {suite.path.as_posix()}` (suite `{suite.name}`) on "
        f"{datetime.date.today().isoformat()}, torch {torch.__version__}, "
        f"threads per run: {_threads(groups.values())}. Mean ± sample std over the seeds listed.",
        "",
        f"| run | epochs | seeds done | final {name} | best {name} | published | source | "
        f"target | s/epoch | time vs {suite.reference} |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for e in suite.entries:
        g = groups[e.label]
        final, best = _metric(g, "final_test_acc", scale), _metric(g, "best_test_acc", scale)
        t = g.seconds_per_epoch()
        n_div = sum(status(suite, e, s) == "diverged" for s in e.seeds)
        done = f"{len(g.results)}/{len(e.seeds)}" + (f" ({n_div} diverged)" if n_div else "")
        lines.append(
            f"| {e.label} | {e.config.get('epochs', '')} | {done} | {final} | {best} | "
            f"{_published(e, suite.metric)} | {e.published.get('source', '')} | {e.target} | "
            f"{_num(t, '.2f')} | {_num(t / ref_time, '.2f', 'x')} |"
        )
    if suite.notes:
        lines += ["", suite.notes.strip()]
    lines += ["", f"![curves]({suite.doc.with_suffix('.png').name})", ""]
    return "\n".join(lines)


def _num(v: float, spec: str, unit: str = "") -> str:
    """A number for the table, or "–" where it is undefined (no finished runs to time)."""
    return "–" if math.isnan(v) else f"{v:{spec}}{unit}"


def _metric(g: Group, key: str, scale: float) -> str:
    mean, std, n = g.mean_std(key, abs(scale))
    if scale < 0:
        mean = 100 - mean
    return fmt(mean, std, n)


_ROW = re.compile(r"^\| (?P<label>.+?) \| [^|]* \| (?P<done>\d+)/\d+")


def _rows_done(doc: Path) -> dict[str, int]:
    """Finished runs per entry as an existing table states them ("seeds done" column)."""
    if not doc.is_file():
        return {}
    rows = (_ROW.match(line) for line in doc.read_text().splitlines())
    return {m["label"]: int(m["done"]) for m in rows if m}


def _traces(suite: Suite, entry: Entry) -> int:
    """Seeds of ``entry`` that have a run folder or a record here (of any settings)."""
    return sum(
        results.holds_run(run_dir(suite, entry, s)) or record_path(suite, entry, s).is_file()
        for s in entry.seeds
    )


def lost_rows(suite: Suite) -> list[str]:
    """Entries for which the current table lists more finished runs than have left a trace
    here (run folders deleted, no records): rewriting the table would silently drop their
    numbers. An entry whose settings changed keeps its folders or records and is not counted."""
    before = _rows_done(suite.doc)
    return [e.label for e in suite.entries if before.get(e.label, 0) > _traces(suite, e)]


def write_doc(suite: Suite) -> Path:
    from bioprop.plots import plot_runs

    write_records(suite)
    results.write_text(suite.doc, render(suite))
    curves = {
        e.label: mean_curves(g) for e in suite.entries if (g := entry_group(suite, e)).results
    }
    if curves:
        plot_runs(curves, suite.doc.with_suffix(".png"))
    return suite.doc
