"""SigProp vs BP efficiency in one run: memory vs depth, time per step, pipeline throughput.

    python benchmarks/sigprop_efficiency.py [--out docs/sigprop-efficiency.md] [--quick]

(a) Memory. Nets of a signal conv block, N identical blocks (Conv 3x3 32→32, instance norm,
    ReLU at 16x16) and a linear head; batch 32; N = 4, 8, 16. "Saved" is the largest number of
    bytes of activations (parameters excluded) that autograd holds for the weight update at any
    moment of one training step, counted with torch.autograd.graph.saved_tensors_hooks: a packed
    tensor counts from its save until its graph is freed. Deterministic. "Peak" is the rise of
    memory over one step after a warm-up step, in a fresh subprocess per configuration (CPU RSS)
    or max_memory_allocated minus the allocation before the step (CUDA); see ``peak_one``.
(b) Time. Median seconds per step over ``--steps`` steps after 2 warm-up steps, BP and SigProp
    steps alternating so that load from other processes hits both alike.
(c) Pipeline. bioprop.pipeline on an MLP-SP of width 1024 and depth 6 (``--pipe-depth``;
    synthetic MNIST-shaped data, batch 128, top-k loss): one process with 1 thread, one process
    with 2 threads, and 2 stages of 1 thread each (split balanced by measured per-layer time);
    rounds interleaved.
    Depth 6, not 4: the signal layer costs half a block, so with 4 blocks the best 2-way split
    is 2.5 vs 2 blocks (ideal 1.8x); with 6 it is 3.5 vs 3 plus the head (ideal about 1.9x).
    ``--batches`` ≥ 48 keeps the pipeline's fill and drain (one batch each) small.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn

from bioprop.models.net import Block, Net
from bioprop.pipeline import PipelineJob, balance, layer_times, run_pipeline
from bioprop.rules import build_rule

DEPTHS = (4, 8, 16)
BATCH, WIDTH, SIDE, CLASSES = 32, 32, 16, 10


def depth_net(n: int) -> Net:
    torch.manual_seed(0)
    blocks = [Block(nn.Conv2d(3, WIDTH, 3, padding=1, bias=False), "relu", nn.BatchNorm2d(WIDTH))]
    for _ in range(n):
        conv = nn.Conv2d(WIDTH, WIDTH, 3, padding=1)
        blocks.append(Block(conv, "relu", nn.InstanceNorm2d(WIDTH, affine=True)))
    blocks.append(Block(nn.Linear(WIDTH * SIDE * SIDE, CLASSES), flatten=True))
    return Net(blocks, (3, SIDE, SIDE))


def make_rule(name: str, n: int):
    args = {"loss": "topk", "k": 2} if name == "sigprop" else {}
    if name == "sigprop-direct":
        name, args = "sigprop", {"loss": "direct"}
    return build_rule(name, depth_net(n), **args)


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, SIDE, SIDE, generator=g), torch.arange(BATCH) % CLASSES


class SavedBytes:
    """saved_tensors_hooks that track the bytes of live saved activations and their maximum."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def pack(self, t: torch.Tensor):
        n = 0 if (t.is_leaf and t.requires_grad) else t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        return _Held(t, n, self)

    @staticmethod
    def unpack(held):
        return held.t


class _Held:
    __slots__ = ("counter", "n", "t")

    def __init__(self, t, n, counter) -> None:
        self.t, self.n, self.counter = t, n, counter

    def __del__(self) -> None:
        self.counter.live -= self.n


def saved_bytes(name: str, n: int) -> int:
    rule, (x, y) = make_rule(name, n), batch()
    counter = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        rule.step(x, y)
    return counter.peak


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_one(name: str, n: int) -> float:
    """In a fresh process: MiB by which the second training step raises memory above what is
    allocated before it (model, data, warmed-up allocator). CUDA: max_memory_allocated; CPU:
    resident set size sampled every 0.2 ms by a thread (the subprocess runs with a fixed mmap
    threshold, so freed buffers go back to the OS and RSS tracks live memory)."""
    torch.set_num_threads(1)
    rule, (x, y) = make_rule(name, n), batch()
    cuda = torch.cuda.is_available()
    if cuda:
        rule, x, y = rule.cuda(), x.cuda(), y.cuda()
    rule.step(x, y)  # warm-up
    for p in rule.parameters():
        p.grad = None
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        rule.step(x, y)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0002)

    thread = threading.Thread(target=sample)
    thread.start()
    rule.step(x, y)
    done.set()
    thread.join()
    return (max(peak[0], _rss()) - base) / 2**20


def peak_subprocess(name: str, n: int) -> float:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [sys.executable, __file__, "--peak-one", name, str(n)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return float(out.stdout.strip().splitlines()[-1])


def step_times(n: int, names: list[str], steps: int) -> dict[str, float]:
    torch.set_num_threads(1)
    rules, (x, y) = {m: make_rule(m, n) for m in names}, batch()
    times: dict[str, list[float]] = {m: [] for m in names}
    for i in range(steps + 2):
        for m, rule in rules.items():
            start = time.perf_counter()
            rule.step(x, y)
            if i >= 2:
                times[m].append(time.perf_counter() - start)
    return {m: statistics.median(v) for m, v in times.items()}


def pipeline_throughput(rounds: int, batches: int, depth: int) -> dict:
    job = PipelineJob(
        model_args={"width": 1024, "depth": depth},
        rule_args={"loss": "topk"},
        batch_size=128,
        batches=batches,
    )
    torch.set_num_threads(1)
    times = layer_times(job)
    split = balance(times, 2)
    runs: dict[str, list[float]] = {"seq1": [], "seq2": [], "pipe2": []}
    for _ in range(rounds):
        runs["seq1"].append(run_pipeline(job, 1)["seconds"])
        job2 = PipelineJob(**{**job.__dict__, "threads": 2})
        runs["seq2"].append(run_pipeline(job2, 1)["seconds"])
        runs["pipe2"].append(run_pipeline(job, 2, split)["seconds"])
    stage = [sum(times[i] for i in r) for r in split]
    return {
        "layer_times": times,
        "split": [[r.start, r.stop] for r in split],
        "bound": sum(times) / max(stage),
        "runs": runs,
        "images": batches * job.batch_size,
        "depth": depth,
    }


def write_doc(out: Path, mem: dict, peak: dict, times: dict, pipe: dict, cmd: str) -> None:
    lines = [
        "# SigProp vs BP: memory, time per step, layer-parallel throughput",
        "",
        f"Produced by `{cmd}` (one run; {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, CPU, {os.cpu_count()} cores shared with other jobs; load "
        f"average at the end {os.getloadavg()[0]:.1f}).",
        "Method: see the docstring of `benchmarks/sigprop_efficiency.py`.",
        "",
        "## (a) Activation memory retained for the weight update vs depth",
        "",
        f"Signal conv + N x [Conv 3x3 {WIDTH}→{WIDTH}, IN, ReLU] at {SIDE}x{SIDE} + linear head, "
        f"batch {BATCH}; SigProp in input-target mode (top-k, 2B rows per layer).",
        "",
        "| N blocks | BP saved (MiB) | SigProp saved (MiB) | BP peak (MiB) | SigProp peak (MiB) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in DEPTHS:
        lines.append(
            f"| {n} | {mem['bp'][n] / 2**20:.2f} | {mem['sigprop'][n] / 2**20:.2f} "
            f"| {peak['bp'][n]:.1f} | {peak['sigprop'][n]:.1f} |"
        )
    r = {m: mem[m][16] / mem[m][4] for m in mem}
    pr = {m: peak[m][16] / max(peak[m][4], 1e-9) for m in peak}
    lines += [
        "",
        f"Ratio 16 vs 4 blocks, saved bytes: BP {r['bp']:.2f}, SigProp {r['sigprop']:.2f} "
        f"(spec oracle: BP > 2.5, SigProp < 1.5). Peak RSS rise: BP {pr['bp']:.2f}, "
        f"SigProp {pr['sigprop']:.2f} (RSS includes the grad buffers of all layers, which every "
        "rule needs, and allocator effects).",
        "",
        "![memory vs depth](sigprop-efficiency.png)",
        "",
        "## (b) Time per training step (1 thread, median)",
        "",
        "| N blocks | BP (s) | SigProp top-k (s) | SigProp direct (s) | top-k / BP | direct / BP |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in DEPTHS:
        t = times[n]
        lines.append(
            f"| {n} | {t['bp']:.4f} | {t['sigprop']:.4f} | {t['sigprop-direct']:.4f} "
            f"| {t['sigprop'] / t['bp']:.2f} | {t['sigprop-direct'] / t['bp']:.2f} |"
        )
    runs = pipe["runs"]
    med = {k: statistics.median(v) for k, v in runs.items()}
    lines += [
        "",
        "Input-target mode runs each layer on 2B rows (h and t), input-label mode on B + C rows;",
        "both still run one local backward per layer, as BP runs one global one.",
        "",
        "## (c) Layer-parallel pipeline (bioprop.pipeline, gloo, 127.0.0.1)",
        "",
        f"MLP-SP width 1024, depth {pipe['depth']} ({pipe['depth'] + 2} layers incl. signal and "
        f"head), batch 128, top-k loss, "
        f"{pipe['images']} synthetic images per run; stage split {pipe['split']} by measured "
        f"per-layer time; ideal speed-up of this split Σt/max(stage) = {pipe['bound']:.2f}.",
        "",
        "| configuration | s per run (each round) | median images/s | vs 1-thread sequential |",
        "|---|---|---:|---:|",
    ]
    labels = {
        "seq1": "sequential, 1 process, 1 thread",
        "seq2": "sequential, 1 process, 2 threads",
        "pipe2": "pipeline, 2 stages x 1 thread",
    }
    for k, label in labels.items():
        each = ", ".join(f"{v:.2f}" for v in runs[k])
        lines.append(
            f"| {label} | {each} | {pipe['images'] / med[k]:.0f} | {med['seq1'] / med[k]:.2f}x |"
        )
    per_round = [a / b for a, b in zip(runs["seq1"], runs["pipe2"])]
    lines += [
        "",
        "Pipeline speed-up per round (same round, 1-thread sequential / pipeline): "
        + ", ".join(f"{v:.2f}x" for v in per_round)
        + ". Target ≥ 1.6x. The weights of the pipelined run equal the sequential run's bit for "
        "bit (tests/test_pipeline_sigprop.py).",
        "",
    ]
    out.write_text("\n".join(lines))


def plot(out: Path, mem: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for m, label in (("bp", "BP"), ("sigprop", "SigProp")):
        ax.plot(DEPTHS, [mem[m][n] / 2**20 for n in DEPTHS], "o-", label=label)
    ax.set(xlabel="identical blocks N", ylabel="saved activations (MiB)", xticks=DEPTHS)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/sigprop-efficiency.md")
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=24)
    p.add_argument("--pipe-depth", type=int, default=6, help="hidden blocks of the pipelined MLP")
    p.add_argument("--peak-one", nargs=2, metavar=("RULE", "N"))
    a = p.parse_args()
    if a.peak_one:
        print(peak_one(a.peak_one[0], int(a.peak_one[1])))
        return
    torch.set_num_threads(1)
    names = ["bp", "sigprop"]
    mem = {m: {n: saved_bytes(m, n) for n in DEPTHS} for m in names}
    peak = {m: {n: peak_subprocess(m, n) for n in DEPTHS} for m in names}
    print(json.dumps({"saved": mem, "peak_mib": peak}), flush=True)
    times = {n: step_times(n, [*names, "sigprop-direct"], a.steps) for n in DEPTHS}
    print(json.dumps({"step_s": times}), flush=True)
    pipe = pipeline_throughput(a.rounds, a.batches, a.pipe_depth)
    print(json.dumps({"pipeline": pipe}), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = " ".join(["python benchmarks/sigprop_efficiency.py", *sys.argv[1:]])
    write_doc(out, mem, peak, times, pipe, cmd.strip())
    plot(out.with_suffix(".png"), mem)


if __name__ == "__main__":
    main()
