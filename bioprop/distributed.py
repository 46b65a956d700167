"""Data-parallel training on torch.distributed (gloo on CPU, NCCL on GPUs), launched by torchrun.

Every rule writes its local update into ``.grad`` as a mean over its batch, so data parallelism
needs nothing rule-specific: each worker runs ``rule.step`` on its slice of the global batch, and
the grads are combined as ``Σ_r (n_r / N) g_r`` with one all-reduce before the optimizer step.
For updates that are batch means of per-sample terms (BP, FA, PEPITA, ...) this equals one
process on the whole global batch, up to float rounding.

Rule state that is not a trainable weight stays identical across workers in one of two ways:
- state drawn from the RNG (feedback matrices, redrawn feedback, dropout masks) is identical
  because every worker seeds identically and consumes the RNG in the same order;
- state updated from data (running means, lateral matrices, BatchNorm statistics) differs per
  worker, so the buffers listed by the rule's ``synced_buffers`` and all floating-point buffers of
  the model are averaged over workers after every step. This equals the single-process update
  when the state update is linear in batch means; otherwise it is the usual data-parallel
  approximation, which the rule's docstring must state.

Communication per step: one all-reduce of all trainable weights' grads (plus the loss), and one
of the synced buffers if there are any.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class Dist:
    """Where this process stands: rank 0 of 1 when not distributed."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init(device_type: str) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else stay single-process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """One GPU per worker: cuda:LOCAL_RANK."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


def shard(x: Tensor, y: Tensor, d: Dist) -> tuple[Tensor, Tensor]:
    """This worker's contiguous slice of a global batch (sizes differ by at most one)."""
    if not d.active:
        return x, y
    idx = torch.tensor_split(torch.arange(len(y), device=y.device), d.world)[d.rank]
    return x[idx], y[idx]


def average_grads(params: list[nn.Parameter], loss: Tensor, n_local: int, n_global: int) -> Tensor:
    """Replace each ``.grad`` by the global-batch mean; return the global-batch mean loss."""
    for p in params:
        if p.grad is None:  # a worker that wrote no update still takes part in the all-reduce
            p.grad = torch.zeros_like(p)
    tensors = [p.grad for p in params] + [loss.detach().reshape(1).to(params[0].grad.dtype)]
    flat = _flatten_dense_tensors(tensors) * (n_local / n_global)
    dist.all_reduce(flat)
    for t, g in zip(tensors[:-1], _unflatten_dense_tensors(flat, tensors)[:-1]):
        t.copy_(g)
    return flat[-1]


def average_buffers(tensors: list[Tensor], world: int) -> None:
    """Average floating-point state in place over the workers."""
    tensors = [t for t in tensors if t.is_floating_point()]
    if not tensors:
        return
    flat = _flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    flat /= world
    for t, v in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
        t.copy_(v)


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over the workers (metrics at the end of an epoch)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
