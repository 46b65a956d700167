"""Score a SigProp suite's finished runs with every prediction the rule offers, from checkpoints.

Usage::

    python benchmarks/sigprop_readout_eval.py SUITE.yaml [--refit-head] [--only LABEL ...]
        [--seed N ...]

For each SigProp run (and for reference each BP run) of the suite, the run is rebuilt with the
library (``train.build``, same config and data), its checkpoint (last epoch) is loaded, and the
test split is scored with the head and with the label-free readout of every hidden block
(``rule.args.predict: readout``, ``readout_layer`` ℓ: block ℓ's local logits against the C
class prototypes of the target stream, spec §5). Nothing is trained and no weight changes.
Why: if a block's readout beats the head, the head (a linear layer trained on features that
keep moving) is what trails BP there, not the features. ``--refit-head`` adds one more score: a
fresh copy of the head trained, from its init, on the *frozen* final features of the training
split (Adam 1e-3, batch 128, 5 epochs, seed 0); if it reaches the readouts while the trained
head does not, the head lagged features that kept moving. Runs with a held-out split
(``data.val_size``) are scored on it too, in a second table: choose a readout block there, not
on the test split. Needs the run folders; data from ``BIOPROP_DATA``. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

from bioprop import results
from bioprop.bench import load_suite, run_config, saved_runs
from bioprop.data.base import Split, batches
from bioprop.errors import run_script
from bioprop.rules import build_rule
from bioprop.train import build, evaluate

REFIT = {"lr": 1e-3, "batch": 128, "epochs": 5, "seed": 0}

Scores = dict[str, tuple[float, list[float]]]


@torch.no_grad()
def features(model, split: Split, batch_size: int) -> Split:
    """The head's input (every block but the last, eval mode) for a whole split."""
    model.eval()
    parts = []  # batch by batch, so that only the final features of the whole split are kept
    for x, _ in batches(split, batch_size, shuffle=False):
        for block in model.blocks[:-1]:
            x = block(x)
        parts.append(x)
    return Split(torch.cat(parts), split.y)


def refit_head(s, cfg) -> dict[str, float]:
    """Accuracy (%) per split of a fresh head trained on frozen training-split features."""
    model, bs = s.rule.model, cfg.data.eval_batch_size
    torch.manual_seed(REFIT["seed"])
    head = copy.deepcopy(model.blocks[-1])
    for m in head.modules():  # back to a fresh init: the trained head is not the start
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    train = features(model, s.data.train, bs)
    opt = torch.optim.Adam(head.parameters(), lr=REFIT["lr"])
    g = torch.Generator().manual_seed(REFIT["seed"])
    for _ in range(REFIT["epochs"]):
        for x, y in batches(train, REFIT["batch"], shuffle=True, generator=g):
            opt.zero_grad()
            F.cross_entropy(head(x), y).backward()
            opt.step()
    out = {}
    with torch.no_grad():
        for name, split in (("test", s.data.test), ("val", s.data.val)):
            if split is not None:
                f = features(model, split, bs)
                out[name] = 100 * float((head(f.x).argmax(1) == f.y).float().mean())
    return out


def scores(cfg, d, refit: bool = False) -> Scores:
    """Per split (test, and val if held out): accuracy (%) with the head, and with the readout
    of every hidden block (SigProp); with ``refit``, the refitted head's last.

    The run is built once (data, model, rule) and its checkpoint read once; each readout is
    a second rule object on the same model, with the same state loaded."""
    s = build(cfg)
    state = results.load_checkpoint(d / results.CHECKPOINT)["rule"]
    s.rule.load_state_dict(state)
    rules = [s.rule]
    if cfg.rule.name == "sigprop":
        for layer in range(len(s.rule.model.blocks) - 1):
            args = {**cfg.rule.args, "predict": "readout", "readout_layer": layer}
            rule = build_rule(cfg.rule.name, s.rule.model, **args).to(s.device)
            rule.load_state_dict(state)
            rules.append(rule)
    splits = {"test": s.data.test, "val": s.data.val}
    out: Scores = {}
    for name, split in splits.items():
        if split is not None:
            accs = [
                100 * evaluate(r, split, cfg.data.eval_batch_size, s.device)["acc"] for r in rules
            ]
            out[name] = (accs[0], accs[1:])
    if refit:
        for name, acc in refit_head(s, cfg).items():
            out[name][1].append(acc)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="Score a SigProp suite's runs: head and readouts.")
    p.add_argument("suite", metavar="SUITE.yaml")
    p.add_argument(
        "--refit-head", action="store_true", help="add a head refitted on frozen features"
    )
    p.add_argument("--only", action="append", metavar="LABEL", help="score only these entries")
    p.add_argument("--seed", action="append", type=int, help="score only these seeds")
    args = p.parse_args()
    suite, refit = load_suite(args.suite), args.refit_head
    rows: dict[str, list[str]] = {"test": [], "val": []}
    for entry, seed, d in saved_runs(suite, args.only, args.seed):
        cfg = run_config(entry, seed)
        cfg.progress = False
        for split, (head, readouts) in scores(cfg, d, refit).items():
            cells = " / ".join(f"{a:.2f}" for a in readouts) or "–"
            rows[split].append(f"| {entry.label} | {seed} | {head:.2f} | {cells} |")
    for split, lines in rows.items():
        if lines:
            print(f"\n{split} accuracy (%)\n")
            extra = " (last: refitted head)" if refit else ""
            print(f"| run | seed | head | readout of hidden block 0, 1, ...{extra} |")
            print("|---|---:|---:|---|")
            print("\n".join(lines), flush=True)


if __name__ == "__main__":
    run_script(main)
