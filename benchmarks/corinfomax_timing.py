"""Time the CorInfoMax rule: one training batch (free + nudged phase, update, lateral step) and
evaluation per sample, then extrapolate a 50-epoch run (training batches + test-set evaluation
each epoch, as the loop does).

Both wall-clock and process CPU time are reported: on a shared machine the wall time depends on
what else runs, while the CPU time of a single-threaded run is close to its wall time on an idle
core. Inputs are uniform noise of the data set's shape (the cost does not depend on the values).

    python benchmarks/corinfomax_timing.py [--threads 1] [--batches 200] [--nets mnist,cifar10]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from bioprop.models import build_model
from bioprop.rules import build_rule

NETS = {  # name: input shape, hidden widths, T_free, T_nudge, training samples, test samples
    "mnist": ((1, 28, 28), [500], 30, 10, 60000, 10000),
    "mnist-3l": ((1, 28, 28), [500, 500], 30, 10, 60000, 10000),
    "cifar10": ((3, 32, 32), [1000], 30, 10, 50000, 10000),
    "cifar10-3l": ((3, 32, 32), [1000, 500], 30, 10, 50000, 10000),
    "cifar100": ((3, 32, 32), [2000, 1000], 50, 20, 50000, 10000),
}


def timed(fn, repeat: int) -> tuple[float, float]:
    """Mean wall and CPU seconds per call."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - wall) / repeat, (time.process_time() - cpu) / repeat


def measure(name: str, batches: int, eval_batch: int) -> dict[str, float]:
    shape, hidden, t_free, t_nudge, n_train, n_test = NETS[name]
    n_out = 100 if name == "cifar100" else 10
    torch.manual_seed(0)
    model = build_model("corinfomax_mlp", shape, n_out, hidden=hidden)
    rule = build_rule("corinfomax", model, t_free=t_free, t_nudge=t_nudge, lam=0.99999)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.0)
    x, y = torch.rand(20, *shape), torch.randint(0, n_out, (20,))
    xe = torch.rand(eval_batch, *shape)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        rule.step(x, y)
        opt.step()

    timed(train_step, 5)  # warm-up: buffers, allocator, BLAS
    tw, tc = timed(train_step, batches)
    rule.predict(xe)
    ew, ec = timed(lambda: rule.predict(xe), 2)
    per_epoch = {k: n_train / 20 * t + n_test * e / eval_batch for k, t, e in
                 (("wall", tw, ew), ("cpu", tc, ec))}  # fmt: skip
    return {
        "train_ms_wall": 1e3 * tw,
        "train_ms_cpu": 1e3 * tc,
        "eval_us_wall": 1e6 * ew / eval_batch,
        "eval_us_cpu": 1e6 * ec / eval_batch,
        "epoch_s_wall": per_epoch["wall"],
        "epoch_s_cpu": per_epoch["cpu"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--eval-batch", type=int, default=10000)
    p.add_argument("--nets", default="mnist,mnist-3l,cifar10,cifar10-3l")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads {a.threads}, load average {os.getloadavg()}")
    print(
        "| net | train ms/batch (wall / CPU) | eval µs/sample (wall / CPU) "
        "| s/epoch (wall / CPU) | 50 epochs, min (wall / CPU) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name in a.nets.split(","):
        r = measure(name, a.batches, a.eval_batch)
        print(
            f"| {name} | {r['train_ms_wall']:.1f} / {r['train_ms_cpu']:.1f} "
            f"| {r['eval_us_wall']:.0f} / {r['eval_us_cpu']:.0f} "
            f"| {r['epoch_s_wall']:.0f} / {r['epoch_s_cpu']:.0f} "
            f"| {50 * r['epoch_s_wall'] / 60:.0f} / {50 * r['epoch_s_cpu'] / 60:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
