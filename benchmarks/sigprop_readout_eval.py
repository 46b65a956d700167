"""Score a SigProp suite's finished runs with every prediction the rule offers, from checkpoints.

Usage::

    python benchmarks/sigprop_readout_eval.py SUITE.yaml

For each SigProp run (and for reference each BP run) of the suite, the run is rebuilt with the
library (``train.build``, same config and data), its checkpoint (last epoch) is loaded, and the
test split is scored with the head and with the label-free readout of every hidden block
(``rule.args.predict: readout``, ``readout_layer`` ℓ: block ℓ's local logits against the C
class prototypes of the target stream, spec §5). Nothing is trained and no weight changes.
Why: if a block's readout beats the head, the head (a linear layer trained on features that
keep moving) is what trails BP there, not the features. Runs with a held-out split
(``data.val_size``) are scored on it too, in a second table: choose a readout block there, not
on the test split. Needs the run folders; data from ``BIOPROP_DATA``. Prints markdown tables.
"""

from __future__ import annotations

import sys

from bioprop import results
from bioprop.bench import load_suite, run_config, saved_runs
from bioprop.errors import run_script
from bioprop.rules import build_rule
from bioprop.train import build, evaluate

Scores = dict[str, tuple[float, list[float]]]


def scores(cfg, d) -> Scores:
    """Per split (test, and val if held out): accuracy (%) with the head, and with the readout
    of every hidden block (SigProp).

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
    return out


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/sigprop_readout_eval.py SUITE.yaml")
    suite = load_suite(sys.argv[1])
    rows: dict[str, list[str]] = {"test": [], "val": []}
    for entry, seed, d in saved_runs(suite):
        cfg = run_config(entry, seed)
        cfg.progress = False
        for split, (head, readouts) in scores(cfg, d).items():
            cells = " / ".join(f"{a:.2f}" for a in readouts) or "–"
            rows[split].append(f"| {entry.label} | {seed} | {head:.2f} | {cells} |")
    for split, lines in rows.items():
        if lines:
            print(f"\n{split} accuracy (%)\n")
            print("| run | seed | head | readout of hidden block 0, 1, ... |")
            print("|---|---:|---:|---|")
            print("\n".join(lines), flush=True)


if __name__ == "__main__":
    run_script(main)
