"""Command-line front-end. No logic of its own: it parses, calls the library, reports errors.

A user mistake (``BiopropError``) prints one line and exits with 2; a diverged run exits with 3.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bioprop.errors import BiopropError


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder with the data sets (default: $BIOPROP_DATA)")


def cmd_train(a: argparse.Namespace) -> int:
    from bioprop.config import load_config
    from bioprop.train import train

    sets = list(a.set or [])
    for flag, key in (
        ("rule", "rule.name"),
        ("model", "model.name"),
        ("dataset", "data.name"),
        ("epochs", "epochs"),
        ("seed", "seed"),
        ("device", "device"),
        ("threads", "threads"),
        ("out", "out"),
    ):
        if getattr(a, flag) is not None:
            sets.insert(0, f"{key}={getattr(a, flag)}")
    if a.download:
        sets.append("data.download=true")
    cfg = load_config(a.config, sets)
    if a.no_progress:
        cfg.progress = False
    r = train(cfg, resume_run=a.resume, data_dir=a.data_dir)
    final, best = 100 * r["final_test_acc"], 100 * r["best_test_acc"]
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one report rather than one a worker
        print(f"final test accuracy {final:.2f}% (best {best:.2f}%)")
    return 0


def cmd_list(kind: str) -> int:
    if kind == "datasets":
        from bioprop.data import AVAILABLE, DATASETS, resolve_data_dir

        try:
            d = resolve_data_dir()
        except BiopropError:
            d = None
        for n in DATASETS.names():
            found = "found" if AVAILABLE[n](d) else "missing"
            print(f"{n:18s} [{found:7s}] {DATASETS.summary(n)}")
        return 0
    if kind == "rules":
        from bioprop.rules import RULES as reg
    else:
        from bioprop.models import MODELS as reg
    for n in reg.names():
        print(f"{n:12s} {reg.summary(n)}")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from bioprop.report import report

    table = report(a.runs, a.plot)
    if a.out:
        from bioprop.results import write_text

        write_text(a.out, table)
    print(table, end="")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from bioprop.bench import load_suite, lost_rows, run_suite, write_doc

    suite = load_suite(a.suite)
    if not (a.force or a.dry_run) and (lost := lost_rows(suite)):
        raise BiopropError(
            f"{suite.doc} lists finished runs of {lost}, but their run folders are gone and they "
            "have no records: rewriting it would drop them (pass --force to rewrite it anyway)"
        )
    if not a.report_only:
        run_suite(
            suite,
            data_dir=a.data_dir,
            only=a.only,
            seeds=a.seed,
            progress=not a.no_progress,
            dry_run=a.dry_run,
        )
    if not a.dry_run:
        print(f"wrote {write_doc(suite)}")
    return 0


def cmd_sweep(a: argparse.Namespace) -> int:
    from bioprop.sweep import run_sweep

    table = run_sweep(a.spec, workers=a.workers, storage_url=a.storage, data_dir=a.data_dir)
    if not a.no_summary:
        print(table, end="")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from bioprop.demo import run_demo

    print(run_demo(a.out, a.epochs, a.seed), end="")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bioprop", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train one run")
    t.add_argument("--config", help="YAML config file")
    t.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override, e.g. optim.lr=0.01"
    )
    t.add_argument("--rule")
    t.add_argument("--model")
    t.add_argument("--dataset")
    t.add_argument("--epochs", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", choices=["cpu", "cuda", "auto"])
    t.add_argument("--threads", type=int)
    t.add_argument("--out", help="run directory (default runs/<rule>-<model>-<dataset>-s<seed>)")
    t.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    t.add_argument("--download", action="store_true", help="fetch missing data into the cache")
    t.add_argument("--no-progress", action="store_true")
    _add_data_dir(t)
    t.set_defaults(fn=cmd_train)

    for kind in ("rules", "models", "datasets"):
        sub.add_parser(kind, help=f"list the {kind}").set_defaults(fn=lambda a, k=kind: cmd_list(k))

    r = sub.add_parser("report", help="mean ± std over seeds for run directories")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--plot", help="write combined curves to this PNG")
    r.add_argument("--out", help="also write the markdown table here")
    r.set_defaults(fn=cmd_report)

    b = sub.add_parser("bench", help="run a benchmark suite and write its docs table")
    b.add_argument("suite", metavar="SUITE.yaml")
    b.add_argument("--only", action="append", metavar="LABEL", help="run only these entries")
    b.add_argument(
        "--seed",
        action="append",
        type=int,
        metavar="N",
        help="run only these seeds (e.g. one per process)",
    )
    b.add_argument("--report-only", action="store_true", help="write the table from finished runs")
    b.add_argument("--dry-run", action="store_true", help="list what would run")
    b.add_argument("--force", action="store_true", help="rewrite the table even if it loses rows")
    b.add_argument("--no-progress", action="store_true")
    _add_data_dir(b)
    b.set_defaults(fn=cmd_bench)

    w = sub.add_parser("sweep", help="grid / random / TPE sweep on Optuna storage")
    w.add_argument("spec", metavar="SPEC.yaml")
    w.add_argument("--workers", type=int, default=1, help="local worker processes")
    w.add_argument("--storage", help="Optuna storage URL (default: the spec's, else SQLite)")
    w.add_argument("--no-summary", action="store_true")
    _add_data_dir(w)
    w.set_defaults(fn=cmd_sweep)

    d = sub.add_parser("demo", help="compare the rules on the 8x8 digits (no download)")
    d.add_argument("--epochs", type=int, default=20)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="runs/demo")
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from bioprop.train import Diverged

    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except Diverged as err:
        print(f"bioprop: diverged: {err}", file=sys.stderr)
        return 3
    except BiopropError as err:
        print(f"bioprop: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "bioprop: interrupted; finished epochs are checkpointed (continue with --resume)",
            file=sys.stderr,
        )
        return 130
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
