"""Continue a suite's finished runs for a few more epochs and score the average of their weights.

Usage::

    python benchmarks/tail_average.py SUITE.yaml EXTRA_EPOCHS OUT.json [LABEL ...]

Why: the BMVR Table 1 runs train at batch 1 with fixed rates, so their test accuracy moves by
±0.3 pp from one epoch to the next and the "final" number is one draw from that band. Averaging
the weights over the last epochs (as stochastic weight averaging does for SGD) is the usual way
to read off the level the rule has reached rather than one noisy iterate. This is an
*evaluation* choice of ours, not part of any rule or of the paper's protocol.

For every finished run of the suite (all its epochs done; only the given entry labels, if any),
the run is rebuilt from its checkpoint exactly as ``bioprop train --resume`` would extend it
(same RNG, optimizer and rule state), trained EXTRA_EPOCHS more epochs in memory, and the
rule's floating state (weights, running means and, harmlessly, the rule's own counters) is
averaged over the ends of those epochs. Scored on the test split: all of it, its first 10k
images (validation, the part the earlier probes saw) and the rest (held out): the checkpoint's
own weights, the last epoch's weights, the mean of the per-epoch accuracies, and the averaged
weights. The run folders are only read, never
written; results go to OUT.json, the table to OUT.md (both atomically) and to stdout. Runs
already in OUT.json (same suite, same EXTRA_EPOCHS) are kept and not redone.
Cost: EXTRA_EPOCHS epochs of each run, one after the other.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from bioprop import results
from bioprop.bench import load_suite, run_config, saved_runs
from bioprop.data import Split
from bioprop.errors import BiopropError, run_script
from bioprop.report import fmt
from bioprop.train import build, evaluate, resume, train_epoch

VAL = 10000  # the first VAL test images are the validation slice


def _slices(test: Split) -> dict[str, Split]:
    return {
        "val": Split(test.x[:VAL], test.y[:VAL]),
        "heldout": Split(test.x[VAL:], test.y[VAL:]),
    }


def _score(s, parts: dict[str, Split]) -> dict[str, float]:
    """Accuracy (%) on each slice, and on the whole split as their size-weighted mean (the two
    slices partition it, so it need not be scored a second time)."""
    bs = s.cfg.data.eval_batch_size
    acc = {k: 100 * evaluate(s.rule, p, bs, s.device)["acc"] for k, p in parts.items()}
    acc["all"] = sum(acc[k] * len(p) for k, p in parts.items()) / sum(map(len, parts.values()))
    return acc


def _float_state(rule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in rule.state_dict().items() if v.is_floating_point()}


def tail_average(cfg, d: Path, extra: int) -> dict[str, dict[str, float]]:
    """Extend one run by ``extra`` epochs in memory; scores before, during and averaged."""
    cfg.epochs += extra
    s = build(cfg)
    done, history = resume(s, d)
    parts = _slices(s.data.test)
    out = {"checkpoint": _score(s, parts)}
    total: dict[str, torch.Tensor] = {}
    per_epoch = []
    for epoch in range(done + 1, done + extra + 1):
        train_epoch(s, epoch, history)
        for k, v in _float_state(s.rule).items():
            total[k] = total[k] + v if k in total else v
        per_epoch.append(_score(s, parts))
        print(f"  epoch {epoch}: {per_epoch[-1]}", file=sys.stderr, flush=True)
    out["last"] = per_epoch[-1]
    out["mean_of_epochs"] = {k: statistics.mean(r[k] for r in per_epoch) for k in per_epoch[0]}
    last_state = s.rule.state_dict()
    s.rule.load_state_dict({**last_state, **{k: v / extra for k, v in total.items()}})
    out["averaged"] = _score(s, parts)
    return out


def previous(out_path: Path, suite: str, extra: int) -> dict[str, dict]:
    """The runs an earlier call already scored into OUT.json, so that a cut-off call continues
    where it stopped. A file holding another suite or another EXTRA_EPOCHS is not overwritten."""
    if not out_path.is_file():
        return {}
    old = json.loads(out_path.read_text())
    if (old.get("suite"), old.get("extra_epochs")) != (suite, extra):
        raise BiopropError(
            f"{out_path} holds results of suite {old.get('suite')!r} with "
            f"{old.get('extra_epochs')} extra epochs; write to another file"
        )
    return old["runs"]


def main() -> None:
    if len(sys.argv) < 4 or not sys.argv[2].isdigit() or int(sys.argv[2]) < 1:
        sys.exit(
            "usage: python benchmarks/tail_average.py SUITE.yaml EXTRA_EPOCHS OUT.json [LABEL ...]"
        )
    suite, extra, out_path = load_suite(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    report = previous(out_path, suite.name, extra)
    for entry, seed, d in saved_runs(suite, sys.argv[4:] or None, finished=True):
        if str(seed) in report.get(entry.label, {}):
            continue
        cfg = run_config(entry, seed)
        cfg.progress = False
        print(f"{entry.label}, seed {seed}", file=sys.stderr, flush=True)
        report.setdefault(entry.label, {})[str(seed)] = tail_average(cfg, d, extra)
        results.write_json(out_path, {"suite": suite.name, "extra_epochs": extra, "runs": report})
    order = [e.label for e in suite.entries if e.label in report]
    table = markdown({label: report[label] for label in order}, extra)
    results.write_text(out_path.with_suffix(".md"), header(sys.argv[1:4], extra) + table + "\n")
    print(table)


def header(args: list[str], extra: int) -> str:
    return (
        f"# {Path(args[0]).stem}: {extra} more epochs, weights averaged\n\n"
        f"Produced by `python benchmarks/tail_average.py {' '.join(args)}` (see the script's "
        f"docstring). Test accuracy (%), mean ± std over the seeds. Slices of the test split: "
        f"`all`, `val` = its first {VAL} images, `heldout` = the rest. Columns: the run's "
        f"checkpoint, the weights after {extra} more epochs, the mean of the per-epoch "
        f"accuracies over those epochs, and the weights averaged over their ends.\n\n"
    )


def markdown(report: dict[str, dict], extra: int) -> str:
    kinds = ["checkpoint", "last", "mean_of_epochs", "averaged"]
    head = [
        "run",
        "slice",
        "checkpoint",
        f"after +{extra} epochs",
        "mean over those epochs",
        "averaged weights",
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(kinds)]
    for label, seeds in report.items():
        for part in ("heldout", "val", "all"):
            cells = []
            for kind in kinds:
                accs = [seeds[sd][kind][part] for sd in seeds]
                std = statistics.stdev(accs) if len(accs) > 1 else 0.0
                cells.append(fmt(statistics.mean(accs), std, len(accs)))
            lines.append(f"| {label} | {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    run_script(main)
