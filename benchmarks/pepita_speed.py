"""PEPITA vs BP speed in one run: FLOPs per sample, step time, achieved FLOP/s, GEMM floor.

Usage: python benchmarks/pepita_speed.py [--rounds 5] [--steps 20] [--threads 1] [--write]

For each net (MLP 3072-1024-10 and 3072-1024-1024-1024-10, no bias, dropout 0.1, batch 64,
as in the CIFAR-10 recipe) both rules are built on the same initial weights, each with fused
SGD with momentum, and one training step (``rule.step`` + ``opt.step``) is timed on random
CIFAR-shaped batches. The rules alternate over ``--rounds`` rounds of ``--steps`` steps, so that
load from other processes hits both alike; medians are reported.

MACs per sample with Φ = Σ d_{l−1}·d_l (specs/pepita.md, cost section):
- BP: 3Φ − d₀d₁ (forward, weight gradients, input gradients of every layer but the first);
- PEPITA: 3Φ + C·d₀ (two forward passes, one outer product per layer, the modulation F·e).
Achieved FLOP/s = 2·MACs·batch / step time. The GEMM floor of a rule is the same matmuls at the
same shapes timed alone (for BP exactly ``throughput.same_shape_gemm_seconds``).
Issue criterion: PEPITA's achieved FLOP/s ≥ 90 % of BP's on the same net in the same run.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch
from throughput import same_shape_gemm_seconds, timed

from bioprop.bench import load_suite
from bioprop.config import TrainConfig, from_dict
from bioprop.errors import run_script
from bioprop.models import build_model
from bioprop.results import write_text
from bioprop.rules import build_rule
from bioprop.train import build, train_epoch

NETS = ([3072, 1024, 10], [3072, 1024, 1024, 1024, 10])
BATCH = 64
SHAPE = (3, 32, 32)


def macs(widths: list[int], rule: str) -> int:
    phi = sum(i * o for i, o in itertools.pairwise(widths))
    if rule == "bp":
        return 3 * phi - widths[0] * widths[1]
    return 3 * phi + widths[-1] * widths[0]


def pepita_gemm_seconds(widths: list[int], batch: int = BATCH) -> float:
    """The GEMMs of one PEPITA step alone: two forward passes, modulation, one outer product
    per layer."""
    pairs = list(itertools.pairwise(widths))
    xs = [torch.randn(batch, i) for i, _ in pairs]
    ws = [torch.randn(o, i) for i, o in pairs]
    gs = [torch.randn(batch, o) for _, o in pairs]
    f = torch.randn(widths[0], widths[-1])
    e = torch.randn(batch, widths[-1])

    def step() -> None:
        for _ in range(2):
            for x, w in zip(xs, ws):
                x @ w.T
        e @ f.T
        for x, g in zip(xs, gs):
            g.T @ x

    return timed(step)


def make(rule: str, widths: list[int]):
    torch.manual_seed(0)
    model = build_model("mlp", SHAPE, widths[-1], hidden=widths[1:-1], bias=False, dropout=0.1)
    r = build_rule(rule, model)
    r.train()
    opt = torch.optim.SGD(r.parameters(), lr=1e-3, momentum=0.9, fused=True)
    return r, opt


def step_seconds(r, opt, batches, steps: int) -> float:
    start = time.perf_counter()
    for x, y in itertools.islice(itertools.cycle(batches), steps):
        opt.zero_grad(set_to_none=True)
        r.step(x, y)
        opt.step()
    return (time.perf_counter() - start) / steps


def measure(widths: list[int], rounds: int, steps: int) -> dict:
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.rand(BATCH, *SHAPE, generator=g), torch.randint(0, 10, (BATCH,), generator=g))
        for _ in range(8)
    ]
    rules = {name: make(name, widths) for name in ("bp", "pepita")}
    times: dict[str, list[float]] = {name: [] for name in rules}
    for r, opt in rules.values():
        step_seconds(r, opt, batches, 3)  # warm-up
    for _ in range(rounds):
        for name, (r, opt) in rules.items():
            times[name].append(step_seconds(r, opt, batches, steps))
    floor = {"bp": same_shape_gemm_seconds(widths), "pepita": pepita_gemm_seconds(widths)}
    out = {}
    for name in rules:
        t = statistics.median(times[name])
        out[name] = {
            "macs": macs(widths, name),
            "step_s": t,
            "gflops": 2 * macs(widths, name) * BATCH / t / 1e9,
            "floor_s": floor[name],
        }
    return out


def loop_epochs(rounds: int, steps: int, data_dir: str | None) -> dict[str, float]:
    """Median seconds of ``steps`` CIFAR-10 batches through bioprop's own loop (``train_epoch``)
    with the configs of the CIFAR-10 suite's BP and PEPITA (defaults) entries, alternating: the
    epoch-time ratio without evaluation."""
    suite = load_suite("benchmarks/pepita-cifar10.yaml")
    entries = {e.label: e for e in suite.entries}
    setups = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rule, label in (("bp", "BP"), ("pepita", "PEPITA (defaults)")):
            cfg = from_dict(TrainConfig, copy.deepcopy(entries[label].config))
            cfg.max_steps_per_epoch, cfg.log_every, cfg.progress = steps, 0, False
            cfg.out = str(Path(tmp) / rule)
            setups[rule] = build(cfg, data_dir)
            train_epoch(setups[rule], 1, [])  # warm-up
        times: dict[str, list[float]] = {rule: [] for rule in setups}
        for epoch in range(2, rounds + 2):
            for rule, s in setups.items():
                times[rule].append(train_epoch(s, epoch, [])["seconds"])
    return {rule: statistics.median(t) for rule, t in times.items()}


def table(results: dict[str, dict]) -> str:
    lines = [
        "| net | MAC/sample BP / PEPITA | FLOP ratio | step time BP / PEPITA (ms) | time ratio "
        "| GFLOP/s BP / PEPITA | FLOP/s ratio PEPITA/BP | step / GEMM floor BP / PEPITA |",
        "|---|---|---:|---|---:|---|---:|---|",
    ]
    for net, m in results.items():
        b, p = m["bp"], m["pepita"]
        lines.append(
            f"| {net} | {b['macs'] / 1e6:.2f} M / {p['macs'] / 1e6:.2f} M "
            f"| {p['macs'] / b['macs']:.3f} "
            f"| {1e3 * b['step_s']:.1f} / {1e3 * p['step_s']:.1f} "
            f"| {p['step_s'] / b['step_s']:.2f} | {b['gflops']:.1f} / {p['gflops']:.1f} "
            f"| **{p['gflops'] / b['gflops']:.2f}** "
            f"| {b['step_s'] / b['floor_s']:.2f} / {p['step_s'] / p['floor_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epoch-steps", type=int, default=200, help="CIFAR-10 batches per loop epoch")
    p.add_argument("--data-dir", help="folder with the data sets (default: $BIOPROP_DATA)")
    p.add_argument("--write", action="store_true", help="write docs/pepita-speed.md")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    results = {"-".join(map(str, w)): measure(w, a.rounds, a.steps) for w in NETS}
    text = table(results)
    if a.epoch_steps:
        ep = loop_epochs(a.rounds, a.epoch_steps, a.data_dir)
        text += (
            f"\nThrough the training loop on CIFAR-10 (3072-1024-10, {a.epoch_steps} batches per "
            f"timed epoch, medians of {a.rounds} alternating epochs): BP {ep['bp']:.2f} s, PEPITA "
            f"{ep['pepita']:.2f} s, **epoch-time ratio PEPITA/BP {ep['pepita'] / ep['bp']:.2f}**"
            f" (FLOP ratio 1.50).\n"
        )
    print(text)
    if a.write:
        cmd = (
            f"python benchmarks/pepita_speed.py --rounds {a.rounds} --steps {a.steps} "
            f"--epoch-steps {a.epoch_steps}"
        )
        write_text(
            "docs/pepita-speed.md",
            "# PEPITA vs BP: FLOPs, step time, achieved FLOP/s\n\n"
            f"Measured in one run by `{cmd} --threads {a.threads} --write` "
            f"(torch {torch.__version__}, {a.threads} thread(s)); method in the script's "
            "docstring. Medians over interleaved rounds; compare the ratios, not the absolute "
            "values (the host is shared).\n\n" + text,
        )


if __name__ == "__main__":
    run_script(main)
