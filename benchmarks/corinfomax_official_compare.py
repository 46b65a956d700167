"""Side-by-side timing: the official ``ContrastiveCorInfoMaxHopfield`` (BariscanBozkurt/
Supervised-CorInfoMax, commit e5fb839) against bioprop's ``corinfomax`` on the same batches,
same process, same thread count. Blocks of the two alternate, so both see the same machine load.

The official code is not part of bioprop: check it out in a scratch folder outside this
repository and pass its ``src`` folder. Its module imports pandas and torchvision at the top
without using them for training; missing ones are replaced by empty modules while it loads.

    python benchmarks/corinfomax_official_compare.py --official-src SCRATCH/src --batches 100
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import types

import numpy as np
import torch
import torch.nn.functional as F

from bioprop.models import build_model
from bioprop.rules import build_rule


def load_official(src: str):
    stubs = [m for m in ("pandas", "torchvision") if importlib.util.find_spec(m) is None]
    for m in stubs:
        sys.modules[m] = types.ModuleType(m)
    sys.path.insert(0, src)
    try:
        from ContrastiveModels import ContrastiveCorInfoMaxHopfield
        from torch_utils import hard_sigmoid
    finally:
        for m in stubs:  # torch.compile machinery chokes on spec-less modules later
            del sys.modules[m]
    return ContrastiveCorInfoMaxHopfield, hard_sigmoid


def clock(fn, reps: int = 1) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official-src", required=True)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    Official, hard_sigmoid = load_official(a.official_src)
    torch.manual_seed(0)
    off = Official([784, 500, 10], 0.99999, 0.15, hard_sigmoid, device=torch.device("cpu"))
    model = build_model("corinfomax_mlp", (784,), 10, hidden=[500])
    rule = build_rule("corinfomax", model, mu_f=[1.0, 0.7], mu_b=[0.15])
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.0)
    xs = [torch.rand(20, 784) for _ in range(a.batches)]
    ys = [torch.randint(0, 10, (20,)) for _ in range(a.batches)]
    lr = {"ff": np.array([1.0, 0.7]), "fb": np.array([0.15, 0.15])}

    def off_train() -> None:
        for x, y in zip(xs, ys):
            off.batch_step_hopfield(
                x.T, F.one_hot(y, 10).T, 0.5, lr, 0.05, 0.001, "constant", 0.01, 30, 10, 1
            )

    def our_train() -> None:
        for x, y in zip(xs, ys):
            opt.zero_grad(set_to_none=True)
            rule.step(x, y)
            opt.step()

    def off_eval(x: torch.Tensor) -> None:
        n = off.init_neurons(x.size(0), device=off.device)
        off.run_neural_dynamics_hopfield(x.T, 0, n, 0.5, 0.05, 0.001, "constant", 0.01, 30, beta=0)

    tot = {"official": [0.0, 0.0], "bioprop": [0.0, 0.0]}
    for _ in range(2):
        for name, fn in (("official", off_train), ("bioprop", our_train)):
            w, c = clock(fn)
            tot[name][0] += w
            tot[name][1] += c
    print(f"threads {a.threads}; MNIST 784-500-10, batch 20, T 30/10")
    print("| what | official wall / CPU | bioprop wall / CPU | speed-up (CPU) |")
    print("|---|---:|---:|---:|")
    n = 2 * a.batches
    o, b = [1e3 * v / n for v in tot["official"]], [1e3 * v / n for v in tot["bioprop"]]
    print(f"| train, ms/batch | {o[0]:.1f} / {o[1]:.1f} | {b[0]:.1f} / {b[1]:.1f} "
          f"| {o[1] / b[1]:.1f}x |")  # fmt: skip
    xe = torch.rand(1000, 784)
    evals = {
        "eval, µs/sample, batch 20": (
            lambda: [off_eval(c) for c in xe.split(20)],
            lambda: [rule.predict(c) for c in xe.split(20)],
        ),
        "eval, µs/sample, batch 1000": (lambda: off_eval(xe), lambda: rule.predict(xe)),
    }
    for what, (fo, fb) in evals.items():
        fo(), fb()
        o, b = clock(fo), clock(fb)
        print(f"| {what} | {1e3 * o[0]:.0f} / {1e3 * o[1]:.0f} | {1e3 * b[0]:.0f} / "
              f"{1e3 * b[1]:.0f} | {o[1] / b[1]:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
