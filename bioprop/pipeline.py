"""Layer-parallel SigProp: one worker process per contiguous block of layers, forward messages only.

Stage s owns layers ``splits[s]`` and an optimizer over their parameters. At tick τ it takes
batch τ (stage 0: from the data; stage s > 0: the detached (h, t, y) from stage s−1), runs its
layers' ``SigProp.layer_step`` (each layer learns from its own loss), sends (h, t, y) on to stage
s+1 and steps its optimizer. Nothing is ever sent backward.

Why this equals the sequential run exactly: a layer's outputs for batch τ are computed with its
weights *before* its own step for batch τ, so the h, t that stage s+1 receives are the ones the
sequential loop would have passed on; each layer's grad comes from its own loss only, and the
optimizers update each parameter from its own grad and state only. Randomness (dropout,
tie-breaking) is seeded per (layer, batch) by the rule, not by the process. Hence the weights
after N batches are bit-identical to one process running all layers with one optimizer
(``tests/test_pipeline.py``).

Messages go through ``torch.distributed`` point-to-point send/recv: gloo on CPU (workers bound to
127.0.0.1), NCCL on GPUs (worker s uses cuda:s); the code is the same. Each message is a fixed
12-entry int64 header with the shapes of h and t (all zeros = end of data), then h, t and y.
"""

from __future__ import annotations

import dataclasses
import itertools
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from bioprop.models import build_model
from bioprop.rules import build_rule
from bioprop.rules.sigprop import SigProp

HEADER = 12  # [h.dim, h.shape (≤ 5), t.dim, t.shape (≤ 5)]


@dataclass
class PipelineJob:
    """What every worker builds identically: the net (same seed, same weights), the rule, the
    optimizer (Adam) and, on stage 0, ``batches`` synthetic batches drawn from ``seed``."""

    model: str = "sigprop_mlp"
    model_args: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = (1, 28, 28)
    num_classes: int = 10
    rule_args: dict[str, Any] = field(default_factory=dict)
    lr: float = 5e-4
    batch_size: int = 128
    batches: int = 20
    seed: int = 0
    threads: int = 1
    backend: str = "gloo"


def build_job_rule(job: PipelineJob) -> SigProp:
    torch.manual_seed(job.seed)
    model = build_model(job.model, job.input_shape, job.num_classes, **job.model_args)
    return build_rule("sigprop", model, **job.rule_args)


def synthetic_batches(job: PipelineJob) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(job.seed + 1)
    return [
        (
            torch.randn(job.batch_size, *job.input_shape, generator=g),
            torch.randint(job.num_classes, (job.batch_size,), generator=g),
        )
        for _ in range(job.batches)
    ]


def balance(times: list[float], stages: int) -> list[range]:
    """Contiguous split of the layers into ``stages`` ranges minimising the slowest stage."""
    n = len(times)
    best: tuple[float, tuple[int, ...]] = (float("inf"), ())
    for cuts in itertools.combinations(range(1, n), stages - 1):
        bounds = (0, *cuts, n)
        worst = max(sum(times[a:b]) for a, b in itertools.pairwise(bounds))
        best = min(best, (worst, bounds))
    return [range(a, b) for a, b in itertools.pairwise(best[1])]


def layer_times(job: PipelineJob, repeats: int = 3) -> list[float]:
    """Median seconds per layer step (forward, local backward) on this process's threads."""
    rule = build_job_rule(job)
    x, y = synthetic_batches(dataclasses.replace(job, batches=1))[0]
    samples: list[list[float]] = [[] for _ in range(rule.num_layers)]
    for r in range(repeats + 1):
        h, t = x, rule.context(y)
        for i in range(rule.num_layers):
            start = time.perf_counter()
            h, t, _ = rule.layer_step(i, h, t, y, r)
            if r:  # the first pass is warm-up
                samples[i].append(time.perf_counter() - start)
    return [sorted(s)[len(s) // 2] for s in samples]


def _send(h: Tensor | None, t: Tensor | None, y: Tensor | None, dst: int) -> list[Any]:
    header = torch.zeros(HEADER, dtype=torch.long)
    if h is not None:
        header[0], header[1 : 1 + h.dim()] = h.dim(), torch.tensor(h.shape)
        header[6], header[7 : 7 + t.dim()] = t.dim(), torch.tensor(t.shape)
    device = h.device if h is not None else _device()
    sent = [header.to(device)] + ([a.contiguous() for a in (h, t, y)] if h is not None else [])
    # The tensors are returned with their handles: they must stay alive until ``wait``.
    return [(dist.isend(a, dst), a) for a in sent]


def _recv(src: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor] | None:
    header = torch.empty(HEADER, dtype=torch.long, device=device)
    dist.recv(header, src)
    header = header.tolist()
    if header[0] == 0:
        return None
    h_shape, t_shape = header[1 : 1 + header[0]], header[7 : 7 + header[6]]
    h = torch.empty(h_shape, device=device)
    t = torch.empty(t_shape, device=device)
    y = torch.empty(h_shape[0], dtype=torch.long, device=device)
    for a in (h, t, y):
        dist.recv(a, src)
    return h, t, y


def _device() -> torch.device:
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", dist.get_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def _worker(rank: int, world: int, port: int, job: PipelineJob, splits, out: str) -> None:
    torch.set_num_threads(job.threads)
    if world > 1:
        dist.init_process_group(
            job.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
    device = _device()
    rule = build_job_rule(job).to(device)
    rule.train()
    layers = splits[rank]
    opt = torch.optim.Adam([p for i in layers for p in rule.layer_params(i)], lr=job.lr)
    data = iter(synthetic_batches(job)) if rank == 0 else None
    pending: list[Any] = []
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    for step in itertools.count():
        if rank == 0:
            batch = next(data, None)
            if batch is None:
                break
            h, y = batch[0].to(device), batch[1].to(device)
            t = rule.context(y)
        else:
            msg = _recv(rank - 1, device)
            if msg is None:
                break
            h, t, y = msg
        opt.zero_grad(set_to_none=True)
        for i in layers:
            h, t, _ = rule.layer_step(i, h, t, y, step)
        if rank < world - 1:
            for w, _ in pending:  # the previous message's buffers may be reused only now
                w.wait()
            pending = _send(h, t, y, rank + 1)
        opt.step()
    if rank < world - 1:
        for w, _ in pending + _send(None, None, None, rank + 1):
            w.wait()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    state = {k: v.cpu() for k, v in rule.state_dict().items() if _owned(k, layers)}
    torch.save({"seconds": seconds, "state": state}, Path(out) / f"stage{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


def _owned(key: str, layers: range) -> bool:
    return any(key.startswith(f"model.blocks.{i}.") for i in layers) or (
        0 in layers and key.startswith("model.signal.")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pipeline(
    job: PipelineJob, stages: int, splits: list[range] | None = None
) -> dict[str, Any]:
    """Train ``job.batches`` batches in ``stages`` worker processes; returns the wall time of the
    slowest stage (``seconds``), the merged weights of all layers (``state``) and the split."""
    if splits is None:
        n = build_job_rule(job).num_layers
        splits = balance([1.0] * n, stages) if stages > 1 else [range(n)]
    if len(splits) != stages:
        raise ValueError(f"{stages} stages need {stages} layer ranges, got {splits}")
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(stages, free_port(), job, splits, out), nprocs=stages, join=True)
        parts = [torch.load(Path(out) / f"stage{r}.pt") for r in range(stages)]
    state = {k: v for p in parts for k, v in p["state"].items()}
    return {"seconds": max(p["seconds"] for p in parts), "state": state, "splits": splits}
