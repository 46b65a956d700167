"""Score a SigProp suite's finished runs with every prediction the rule offers, from checkpoints.

Usage::

    python benchmarks/sigprop_readout_eval.py SUITE.yaml

For each SigProp run (and for reference each BP run) of the suite, the run is rebuilt with the
library (``train.build``, same config and data), its checkpoint (last epoch) is loaded, and the
test split is scored with the head and with the label-free readout of every hidden block
(``rule.args.predict: readout``, ``readout_layer`` ℓ: block ℓ's local logits against the C
class prototypes of the target stream, spec §5). Nothing is trained and no weight changes.
Why: if a block's readout beats the head, the head (a linear layer trained on features that
keep moving) is what trails BP there, not the features. Needs the run folders; data from
``BIOPROP_DATA``. Prints a markdown table.
"""

from __future__ import annotations

import sys

from bioprop import results
from bioprop.bench import load_suite, run_config, run_dir
from bioprop.errors import BiopropError
from bioprop.train import build, evaluate


def accuracy(cfg, d) -> float:
    s = build(cfg)
    s.rule.load_state_dict(results.load_checkpoint(d / results.CHECKPOINT)["rule"])
    return 100 * evaluate(s.rule, s.data.test, cfg.data.eval_batch_size, s.device)["acc"]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/sigprop_readout_eval.py SUITE.yaml")
    suite = load_suite(sys.argv[1])
    print("| run | seed | head | readout of hidden block 0, 1, ... |")
    print("|---|---:|---:|---|")
    for entry in suite.entries:
        for seed in entry.seeds:
            d = run_dir(suite, entry, seed)
            if not (d / results.CHECKPOINT).is_file():
                continue
            cfg = run_config(entry, seed)
            cfg.progress = False
            head = accuracy(cfg, d)
            cells = []
            if cfg.rule.name == "sigprop":
                n_hidden = len(build(cfg).rule.model.blocks) - 1
                for layer in range(n_hidden):
                    cfg.rule.args = {**cfg.rule.args, "predict": "readout", "readout_layer": layer}
                    cells.append(f"{accuracy(cfg, d):.2f}")
            print(
                f"| {entry.label} | {seed} | {head:.2f} | {' / '.join(cells) or '–'} |", flush=True
            )


if __name__ == "__main__":
    try:
        main()
    except BiopropError as e:
        sys.exit(f"error: {e}")
