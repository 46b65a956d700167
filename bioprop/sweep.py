"""``bioprop sweep SPEC.yaml``: grids and random / TPE searches on Optuna's database storage.

A spec::

    name: bp-lr
    runs_dir: runs/sweeps/bp-lr      # one run directory per parameter set (bioprop report-able)
    storage: sqlite:///runs/sweeps/bp-lr.db    # default; postgresql://user@host/db to share
    sampler: grid                    # grid | random | tpe
    n_trials: 20                     # random / tpe: trials to complete (grid: the grid size)
    metric: best_test_acc            # a number in result.json
    direction: maximize
    seed: 0                          # sampler seed
    base: {...}                      # a TrainConfig mapping shared by every trial
    grid: {seed: [0, 1, 2], optim.lr: [0.01, 0.05]}               # sampler: grid
    space:                                                         # sampler: random / tpe
      optim.lr: {low: 0.001, high: 0.1, log: true}
      model.args.hidden: {choices: [[64], [128]]}
      seed: {choices: [0, 1, 2]}

Several workers (processes, or machines sharing a PostgreSQL store) run the same spec; Optuna's
storage hands each a different trial. A trial's run directory is named after its parameters, so
a trial retried after a crash resumes its checkpoint. Interrupted sweeps continue: a worker whose
heartbeat stopped has its trial failed and re-queued with the same parameters.
"""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bioprop import results
from bioprop.config import TrainConfig, apply_overrides, from_dict, read_yaml
from bioprop.errors import BiopropError

KEYS = {"name", "runs_dir", "storage", "sampler", "n_trials", "metric", "direction", "seed",
        "base", "grid", "space"}  # fmt: skip


def _heartbeat() -> tuple[int, int]:
    """(interval, grace) in seconds: a worker silent for ``grace`` seconds is taken as dead.
    BIOPROP_SWEEP_HEARTBEAT="1,4" shortens both (tests); the defaults suit real runs."""
    interval, grace = os.environ.get("BIOPROP_SWEEP_HEARTBEAT", "10,60").split(",")
    return int(interval), int(grace)


@dataclass
class SweepSpec:
    name: str
    runs_dir: Path
    storage: str
    sampler: str
    n_trials: int
    metric: str
    direction: str
    seed: int
    base: dict[str, Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    space: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_spec(path: str | Path, storage: str | None = None) -> SweepSpec:
    raw = read_yaml(path)
    unknown = set(raw) - KEYS
    if unknown:
        raise BiopropError(f"{path}: unknown sweep keys {sorted(unknown)}; known: {sorted(KEYS)}")
    name = raw.get("name") or Path(path).stem
    runs_dir = Path(raw.get("runs_dir", f"runs/sweeps/{name}"))
    sampler = raw.get("sampler", "grid")
    if sampler not in ("grid", "random", "tpe"):
        raise BiopropError(f"{path}: sampler must be grid, random or tpe, got {sampler!r}")
    grid, space = raw.get("grid") or {}, raw.get("space") or {}
    if sampler == "grid" and (not grid or space):
        raise BiopropError(f"{path}: sampler 'grid' needs a 'grid' mapping (and no 'space')")
    if sampler != "grid" and (not space or grid):
        raise BiopropError(f"{path}: sampler {sampler!r} needs a 'space' mapping (and no 'grid')")
    n_grid = 1
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise BiopropError(f"{path}: grid.{key} must be a non-empty list")
        n_grid *= len(values)
    spec = SweepSpec(
        name, runs_dir, storage or raw.get("storage") or f"sqlite:///{runs_dir}.db", sampler,
        int(raw.get("n_trials", n_grid)), raw.get("metric", "best_test_acc"),
        raw.get("direction", "maximize"), int(raw.get("seed", 0)), raw.get("base") or {}, grid,
        space,
    )  # fmt: skip
    for params in [_first_point(spec)]:  # fail now on a bad key, not after hours of trials
        trial_config(spec, params)
    return spec


def _first_point(spec: SweepSpec) -> dict[str, Any]:
    if spec.grid:
        return {k: v[0] for k, v in spec.grid.items()}
    return {k: d["choices"][0] if "choices" in d else d["low"] for k, d in spec.space.items()}


def trial_config(spec: SweepSpec, params: dict[str, Any]) -> TrainConfig:
    sets = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in params.items()]
    sets = [s.removesuffix("\n...").removesuffix(" ...") for s in sets]
    data = apply_overrides(copy.deepcopy(spec.base), sets)
    cfg = from_dict(TrainConfig, data)
    cfg.out = str(spec.runs_dir / run_name(params))
    cfg.progress = False
    return cfg


def run_name(params: dict[str, Any]) -> str:
    """Readable and unique: ``optim.lr=0.01,seed=1`` (hashed when too long for a file name)."""
    text = ",".join(f"{k}={_short(v)}" for k, v in sorted(params.items()))
    if len(text) > 120:
        text = text[:100] + "-" + hashlib.md5(text.encode()).hexdigest()[:12]
    return text.replace("/", "_").replace(" ", "")


def _short(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _encode(v: Any) -> str:
    """Optuna's grid and categorical values must be scalars: lists travel as YAML text."""
    return yaml.safe_dump(v, default_flow_style=True).strip()


def suggest(trial, spec: SweepSpec) -> dict[str, Any]:
    params = {}
    if spec.grid:
        for key, values in spec.grid.items():
            params[key] = yaml.safe_load(
                trial.suggest_categorical(key, [_encode(v) for v in values])
            )
        return params
    for key, d in spec.space.items():
        if "choices" in d:
            params[key] = yaml.safe_load(
                trial.suggest_categorical(key, [_encode(v) for v in d["choices"]])
            )
        elif isinstance(d["low"], int) and isinstance(d["high"], int):
            params[key] = trial.suggest_int(key, d["low"], d["high"], log=d.get("log", False))
        else:
            params[key] = trial.suggest_float(key, d["low"], d["high"], log=d.get("log", False))
    return params


def storage(spec: SweepSpec):
    import optuna

    url = spec.storage
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Several local workers write to one file: wait for the lock instead of failing.
        kwargs = {"connect_args": {"timeout": 60}}
    else:
        kwargs = {"pool_pre_ping": True}
    # Heartbeats are flagged experimental by Optuna; they are what makes crashed trials retry.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)
    interval, grace = _heartbeat()
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=interval, grace_period=grace,
            heartbeat_stale_trial_callback=retry,
        )  # fmt: skip
    except Exception as err:  # bad URL, server down, missing driver: all user-fixable
        raise BiopropError(f"cannot open sweep storage {url}: {err}".splitlines()[0]) from err


def make_study(spec: SweepSpec):
    import optuna

    if spec.sampler == "grid":
        space = {k: [_encode(v) for v in vals] for k, vals in spec.grid.items()}
        sampler = optuna.samplers.GridSampler(space, seed=spec.seed)
    elif spec.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=spec.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=spec.seed)
    return optuna.create_study(
        study_name=spec.name, storage=storage(spec), sampler=sampler, direction=spec.direction,
        load_if_exists=True,
    )  # fmt: skip


def objective(spec: SweepSpec, data_dir: str | None):
    from bioprop.train import train

    def run(trial) -> float:
        params = suggest(trial, spec)
        _wait_for_others(trial, params)
        cfg = trial_config(spec, params)
        trial.set_user_attr("run_dir", cfg.out)
        done = Path(cfg.out) / results.RESULT
        if done.is_file() and results.read_result(cfg.out).get("status") == "finished":
            r = results.read_result(cfg.out)
        else:
            r = train(cfg, resume_run=True, data_dir=data_dir)
        if r.get(spec.metric) is None:
            raise BiopropError(f"result.json has no number {spec.metric!r}")
        return float(r[spec.metric])

    return run


def _wait_for_others(trial, params: dict[str, Any]) -> None:
    """When every grid point has started, the grid sampler hands out running ones again. Wait
    until the other worker finishes (this trial then reads its result) or is found dead (this
    trial resumes its checkpoint: the run directory is the same). Pruning the duplicate instead
    would count the point as visited and could end the grid with it unfinished."""
    import optuna

    while _taken_by_other(trial, params):
        time.sleep(1.0)
        optuna.storages.fail_stale_trials(trial.study)


def _taken_by_other(trial, params: dict[str, Any]) -> bool:
    from optuna.trial import TrialState

    others = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return any(t.number != trial.number and _decoded(t.params) == params for t in others)


def _decoded(params: dict[str, Any]) -> dict[str, Any]:
    return {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in params.items()}


def work(spec: SweepSpec, data_dir: str | None = None) -> None:
    """One worker: take trials until the grid is done or ``n_trials`` have completed."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = make_study(spec)
    done = optuna.study.MaxTrialsCallback(spec.n_trials, states=(TrialState.COMPLETE,))
    if _n_complete(study) >= spec.n_trials and not _waiting(study):
        return
    study.optimize(objective(spec, data_dir), callbacks=[done], catch=())


def _n_complete(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _waiting(study) -> bool:
    from optuna.trial import TrialState

    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def run_sweep(
    path: str | Path,
    *,
    workers: int = 1,
    storage_url: str | None = None,
    data_dir: str | None = None,
) -> str:
    """Run ``workers`` local worker processes (1: this process) and summarise the study."""
    spec = load_spec(path, storage_url)
    make_study(spec)  # create the tables once, before workers race to do it
    if workers <= 1:
        work(spec, data_dir)
    else:
        cmd = [sys.executable, "-m", "bioprop", "sweep", str(path), "--workers", "1",
               "--storage", spec.storage, "--no-summary"]  # fmt: skip
        if data_dir:
            cmd += ["--data-dir", data_dir]
        procs = [subprocess.Popen(cmd) for _ in range(workers)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise BiopropError(f"sweep workers exited with codes {codes}")
    return summary(spec)


def summary(spec: SweepSpec) -> str:
    """Completed trials, best first, then the seeds-aggregated table of ``bioprop report``."""
    from optuna.trial import TrialState

    from bioprop.report import report

    study = make_study(spec)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    trials = list({t.user_attrs.get("run_dir", t.number): t for t in trials}.values())
    trials.sort(key=lambda t: t.value, reverse=spec.direction == "maximize")
    lines = [f"| trial | {spec.metric} | run directory |", "|---:|---:|---|"]
    lines += [f"| {t.number} | {t.value:.4f} | {t.user_attrs.get('run_dir', '')} |" for t in trials]
    dirs = sorted({t.user_attrs["run_dir"] for t in trials if "run_dir" in t.user_attrs})
    table = "\n".join(lines) + "\n"
    if dirs:
        table += "\nGrouped over seeds (`bioprop report`):\n\n" + report(dirs)
    results.write_text(spec.runs_dir / "sweep.md", table)
    return table
