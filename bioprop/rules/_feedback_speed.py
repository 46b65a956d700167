"""Step time of each feedback rule against BP on the same net, measured interleaved.

Usage: python -m bioprop.rules._feedback_speed [--rounds 15] [--steps 20] [--write docs/fa-speed.md]

On a shared machine the load changes from minute to minute, so per-epoch times of runs made one
after the other (the bench tables) compare different loads. Here every round times ``steps``
optimizer steps (``rule.step`` + SGD with momentum) of each rule in turn, on the same random
batch, and the table reports per-rule medians over rounds and their ratio to BP's median.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from bioprop.models import build_model
from bioprop.results import write_text
from bioprop.rules import build_rule

RULES = ("bp", "fa", "dfa", "usf", "brsf", "frsf")
NETS = {
    "lenet5 (MNIST)": ("lenet5", (1, 28, 28), {}),
    "mlp 784-800-800-10 tanh": ("mlp", (1, 28, 28), {"hidden": [800, 800], "activation": "tanh"}),
    "convnet 16-32-fc128 (CIFAR-10)": (
        "convnet",
        (3, 32, 32),
        {"channels": [16, 32], "kernel": 5, "fc": [128]},
    ),
}


def time_net(name: str, rounds: int, steps: int, batch: int = 64) -> dict[str, float]:
    """Median milliseconds per step of each rule on net ``name``."""
    model_name, shape, args = NETS[name]
    torch.manual_seed(0)
    base = build_model(model_name, shape, 10, **args)
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))
    setups = []
    for rule in RULES:
        r = build_rule(rule, copy.deepcopy(base))
        setups.append((rule, r, torch.optim.SGD(r.model.parameters(), lr=1e-3, momentum=0.9)))
    times: dict[str, list[float]] = {rule: [] for rule in RULES}
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        for rule, r, opt in setups:
            start = time.perf_counter()
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                r.step(x, y)
                opt.step()
            times[rule].append(1e3 * (time.perf_counter() - start) / steps)
    return {rule: statistics.median(t[1:]) for rule, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--write", default="")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    lines = [
        "# Feedback-alignment family: step time against BP",
        "",
        f"`python -m bioprop.rules._feedback_speed --rounds {a.rounds} --steps {a.steps}` "
        f"(torch {torch.__version__}, {a.threads} thread(s), batch 64, SGD with momentum): "
        "median ms per step over interleaved rounds, and the ratio to BP's median.",
        "",
        "| net | " + " | ".join(RULES) + " |",
        "|---|" + "---:|" * len(RULES),
    ]
    for name in NETS:
        ms = time_net(name, a.rounds, a.steps)
        cells = [f"{ms[r]:.1f} ms ({ms[r] / ms['bp']:.2f}x)" for r in RULES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if a.write:
        write_text(a.write, text)
    print(text)


if __name__ == "__main__":
    main()
