"""The one training loop: data, model, rule, optimizer, epochs, evaluation, checkpoints, results.

Reads top to bottom: ``train(cfg)`` sets up, then for each epoch runs ``rule.step`` on every batch
(the rule fills ``.grad``, the optimizer applies it), evaluates, logs, and checkpoints atomically.
"""

from __future__ import annotations

import math
import platform
import random
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import bioprop
from bioprop import distributed, results
from bioprop.config import TrainConfig, from_dict, to_dict
from bioprop.data import Data, Split, batches, load_dataset
from bioprop.diagnostics import alignment
from bioprop.errors import BiopropError, Diverged
from bioprop.models import build_model
from bioprop.rules import Rule, build_rule

# Keys of the config that may differ between a run and its resumption.
RESUME_FREE = ("progress", "threads", "out", "device")


@dataclass
class Setup:
    cfg: TrainConfig
    data: Data
    rule: Rule
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler | None
    device: torch.device
    shuffle: torch.Generator
    dist: distributed.Dist = field(default_factory=distributed.Dist)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise BiopropError(f"device must be cpu, cuda or auto, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise BiopropError("device 'cuda' requested but torch sees no CUDA device")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic)


def make_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=o.lr,
            momentum=o.momentum,
            nesterov=o.nesterov,
            weight_decay=o.weight_decay,
            fused=o.fused,
        )
    if o.name in ("adam", "adamw"):
        cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
        return cls(
            params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, fused=o.fused
        )
    raise BiopropError(f"unknown optimizer {o.name!r}; known: sgd, adam, adamw")


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer):
    """Schedules step once per epoch; milestones are epochs."""
    s = cfg.sched
    lrs = torch.optim.lr_scheduler
    if s.name == "none":
        return None
    if s.name == "multistep":
        return lrs.MultiStepLR(opt, milestones=s.milestones, gamma=s.gamma)
    if s.name == "cosine":
        return lrs.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1), eta_min=s.eta_min)
    if s.name == "exponential":
        return lrs.ExponentialLR(opt, gamma=s.gamma)
    raise BiopropError(f"unknown schedule {s.name!r}; known: none, multistep, cosine, exponential")


def check_values(cfg: TrainConfig) -> None:
    """Values that type-check but make no sense."""
    bad = [
        (cfg.epochs < 1, "epochs must be >= 1"),
        (cfg.data.batch_size < 1, "data.batch_size must be >= 1"),
        (cfg.data.eval_batch_size < 1, "data.eval_batch_size must be >= 1"),
        (not cfg.optim.lr > 0, "optim.lr must be > 0"),
        (cfg.threads < 0, "threads must be >= 0"),
        (cfg.data.val_size < 0, "data.val_size must be >= 0"),
        (not 0 <= cfg.data.jpeg_quality <= 100, "data.jpeg_quality must be 0 (off) or 1..100"),
        (not 0 <= cfg.data.jpeg_offset <= 7, "data.jpeg_offset must be 0..7"),
    ]
    for failed, msg in bad:
        if failed:
            raise BiopropError(msg)


def build(cfg: TrainConfig, data_dir: str | None = None) -> Setup:
    check_values(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    d = distributed.init(device.type)
    device = distributed.local_device(device)
    seed_everything(cfg.seed, cfg.deterministic)
    data = load_dataset(
        cfg.data.name,
        data_dir,
        download=cfg.data.download,
        flatten=cfg.data.flatten,
        normalize=cfg.data.normalize,
        val_size=cfg.data.val_size,
        seed=cfg.seed,
        swap_splits=cfg.data.swap_splits,
        jpeg_quality=cfg.data.jpeg_quality,
        jpeg_offset=cfg.data.jpeg_offset,
    )
    if device.type == "cuda":  # the whole data set fits on the GPU: no per-batch copies
        data.train, data.test = data.train.to(device), data.test.to(device)
        data.val = data.val.to(device) if data.val is not None else None
    model = build_model(cfg.model.name, data.input_shape, data.num_classes, **cfg.model.args)
    rule = build_rule(cfg.rule.name, model, **cfg.rule.args).to(device)
    rule.prepare(data.train)
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    rule.attach_optimizer(opt)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    return Setup(cfg, data, rule, opt, make_scheduler(cfg, opt), device, shuffle, d)


@torch.no_grad()
def evaluate(
    rule: Rule,
    split: Split,
    batch_size: int,
    device: torch.device,
    d: distributed.Dist | None = None,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``rule.predict``; workers share the split."""
    d = d or distributed.Dist()
    rule.eval()
    loss = correct = 0.0
    part = Split(*distributed.shard(split.x, split.y, d))
    for x, y in batches(part, batch_size, shuffle=False):
        x, y = x.to(device), y.to(device)
        logits = rule.predict(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
    if d.active:
        loss, correct = distributed.all_sum([loss, correct], device)
    n = len(split)
    return {"loss": loss / n, "acc": correct / n}


def _finite(out_loss: torch.Tensor, rule: Rule) -> bool:
    grads = [p.grad.sum() for p in rule.model.parameters() if p.grad is not None]
    total = out_loss.detach().float() + (torch.stack(grads).sum() if grads else 0.0)
    return bool(torch.isfinite(total))


def train_epoch(s: Setup, epoch: int, history: list[dict[str, Any]]) -> dict[str, float]:
    """One pass over the training set; returns mean train loss/accuracy and timing."""
    cfg, rule = s.cfg, s.rule
    rule.train()
    rule.start_epoch(epoch)
    n_batches = math.ceil(len(s.data.train) / cfg.data.batch_size)
    if cfg.max_steps_per_epoch:
        n_batches = min(n_batches, cfg.max_steps_per_epoch)
    it = batches(s.data.train, cfg.data.batch_size, shuffle=True, generator=s.shuffle)
    show = cfg.progress and s.dist.main
    bar = tqdm(total=n_batches, desc=f"epoch {epoch}", disable=not show, leave=False)
    loss_sum = correct = seen = 0.0
    start = time.perf_counter()
    for i, (x, y) in enumerate(it):
        if i == n_batches:
            break
        step = (epoch - 1) * n_batches + i + 1
        x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
        rng = torch.get_rng_state() if cfg.diagnostics_every else None
        s.opt.zero_grad(set_to_none=True)
        out, x, y = _step(s, x, y)
        if not _finite(out.loss, rule):
            bar.close()
            raise Diverged(
                f"non-finite loss or update at epoch {epoch}, step {step}; "
                "the checkpoint of the last finished epoch is kept"
            )
        if cfg.diagnostics_every and step % cfg.diagnostics_every == 0 and s.dist.main:
            history.append(
                {
                    "kind": "diag",
                    "epoch": epoch,
                    "step": step,
                    **alignment(rule, x, y, rng),
                    **rule.metrics(),
                }
            )
        s.opt.step()
        b_loss, b_correct = float(out.loss), float((out.logits.argmax(1) == y).sum())
        loss_sum, correct, seen = loss_sum + b_loss * len(y), correct + b_correct, seen + len(y)
        if cfg.log_every and step % cfg.log_every == 0:
            lr = s.opt.param_groups[0]["lr"]
            history.append({"kind": "step", "epoch": epoch, "step": step, "loss": b_loss, "lr": lr})
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}", refresh=False)
        bar.update()
    bar.close()
    seconds = time.perf_counter() - start
    if s.dist.active:
        loss_sum, correct, seen = distributed.all_sum([loss_sum, correct, seen], s.device)
    return {
        "train_loss": loss_sum / seen,
        "train_acc": correct / seen,
        "seconds": seconds,
        "samples_per_s": seen / seconds,
    }


def dense_grads(params) -> None:
    """Make every ``.grad`` contiguous. torch's fused SGD (and the other fused optimizers) read
    a grad's storage as if it were contiguous: a transposed ``.grad`` (e.g. ``d.T`` of an
    m × k update for a k × m weight) is applied scrambled, silently (checked on torch 2.13;
    ``tests/test_train.py``). Rules write updates of any layout, so the loop fixes it once here;
    a contiguous grad is left untouched (no copy)."""
    for p in params:
        if p.grad is not None and not p.grad.is_contiguous():
            p.grad = p.grad.contiguous()


def _step(s: Setup, x: torch.Tensor, y: torch.Tensor):
    """``rule.step`` on this worker's slice; with several workers, grads and the loss become
    global-batch means and data-dependent state is averaged (see bioprop.distributed).

    Returns the step output and the slice it was computed on (for the running metrics).
    """
    xl, yl = distributed.shard(x, y, s.dist)
    out = s.rule.step(xl, yl)
    dense_grads(s.rule.parameters())
    if s.dist.active:
        params = [p for p in s.rule.model.parameters() if p.requires_grad]
        out.loss = distributed.average_grads(params, out.loss, len(yl), len(y))
        synced = [getattr(s.rule, n) for n in s.rule.synced_buffers]
        distributed.average_buffers(synced + list(s.rule.model.buffers()), s.dist.world)
    return out, xl, yl


def run_dir_for(cfg: TrainConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    return Path("runs") / f"{cfg.rule.name}-{cfg.model.name}-{cfg.data.name}-s{cfg.seed}"


def _rng_state(s: Setup) -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "shuffle": s.shuffle.get_state(),
    }
    if s.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(s: Setup, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    s.shuffle.set_state(state["shuffle"])
    if "cuda" in state and s.device.type == "cuda":
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint(s: Setup, epoch: int, history: list[dict[str, Any]], out: Path) -> None:
    results.save_checkpoint(
        out / results.CHECKPOINT,
        {
            "epoch": epoch,
            "rule": s.rule.state_dict(),
            "opt": s.opt.state_dict(),
            "sched": s.sched.state_dict() if s.sched else None,
            "rng": _rng_state(s),
            "history": history,
        },
    )


def _check_extension(cfg: TrainConfig, saved_epochs: int, done: int, out: Path) -> None:
    """A run may be resumed with more epochs than it was started with (extended), as long as
    nothing it already did depends on the total: the cosine schedule's T_max does."""
    if cfg.epochs == saved_epochs:
        return
    if cfg.sched.name == "cosine":
        raise BiopropError(
            f"cannot extend {out} from {saved_epochs} to {cfg.epochs} epochs: "
            "the cosine schedule depends on the total number of epochs"
        )
    if cfg.epochs < done:
        raise BiopropError(f"cannot resume {out} with epochs={cfg.epochs}: it has done {done}")


def resume(s: Setup, out: Path) -> tuple[int, list[dict[str, Any]]]:
    """Restore a run from its checkpoint; refuses if the saved config differs, except in
    ``RESUME_FREE`` keys and in ``epochs`` (a run can be extended, see ``_check_extension``).
    An extended run is the same run as one started with the larger ``epochs``: the checkpoint
    holds the RNG, optimizer and schedule state (tested)."""
    saved = from_dict(TrainConfig, results.read_yaml_dict(out / results.CONFIG))
    mine, theirs = to_dict(s.cfg), to_dict(saved)
    diff = [k for k in mine if k not in (*RESUME_FREE, "epochs") and mine[k] != theirs[k]]
    if diff:
        raise BiopropError(f"cannot resume {out}: config differs from the saved one in {diff}")
    state = results.load_checkpoint(out / results.CHECKPOINT)
    _check_extension(s.cfg, saved.epochs, state["epoch"], out)
    s.rule.load_state_dict(state["rule"])
    s.opt.load_state_dict(state["opt"])
    if s.sched:
        s.sched.load_state_dict(state["sched"])
    _set_rng_state(s, state["rng"])
    return state["epoch"], state["history"]


def provenance() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(bioprop.__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "bioprop_version": bioprop.__version__,
        "git_commit": commit,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def summarize(s: Setup, history: list[dict[str, Any]], status: str) -> dict[str, Any]:
    epochs = [r for r in history if r["kind"] == "epoch"]
    test = [r["test_acc"] for r in epochs]
    seconds = [r["seconds"] for r in epochs]
    return {
        "status": status,
        "rule": s.cfg.rule.name,
        "model": s.cfg.model.name,
        "dataset": s.data.name,
        "dataset_checksum": s.data.checksum,
        "dataset_meta": s.data.meta,  # e.g. which CIFAR-10 source, the JPEG decoder, jpeg_quality
        "seed": s.cfg.seed,
        "epochs_done": len(epochs),
        "final_test_acc": test[-1] if test else None,
        "best_test_acc": max(test) if test else None,
        "final_val_acc": epochs[-1].get("val_acc") if epochs else None,
        "epochs": epochs,
        "wall_seconds_per_epoch": seconds,
        "samples_per_s": float(np.mean([r["samples_per_s"] for r in epochs])) if epochs else None,
        "peak_memory_mb": peak_memory_mb(s.device),
        "device": str(s.device),
        "threads": torch.get_num_threads(),
        "workers": s.dist.world,
        "num_params": sum(p.numel() for p in s.rule.model.parameters()),
        **provenance(),
    }


def write_outputs(s: Setup, history: list[dict[str, Any]], out: Path, status: str) -> dict:
    from bioprop.plots import plot_runs  # matplotlib import is slow; only when writing

    summary = summarize(s, history, status)
    results.write_json(out / results.RESULT, summary)
    results.write_csv(out / results.METRICS, history)
    if any(r["kind"] == "epoch" for r in history):
        plot_runs({s.cfg.rule.name: history}, out / results.CURVES)
    return summary


def train(cfg: TrainConfig, *, resume_run: bool = False, data_dir: str | None = None) -> dict:
    """Run (or resume) one training run; returns the summary also written to result.json."""
    # data_dir is not a config key: where the data lives is a property of the machine.
    s = build(cfg, data_dir)
    out = run_dir_for(cfg)
    start_epoch, history = 0, []
    if resume_run and (out / results.CHECKPOINT).exists():
        start_epoch, history = resume(s, out)
    elif results.holds_run(out):
        raise BiopropError(f"run directory {out} already holds a run; pass --resume or another out")
    main = s.dist.main  # only rank 0 writes the run directory
    if main:
        results.write_yaml(out / results.CONFIG, to_dict(cfg))
    status = "finished"
    try:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            row = {"kind": "epoch", "epoch": epoch, **train_epoch(s, epoch, history)}
            row["lr"] = s.opt.param_groups[0]["lr"]
            if s.sched:
                s.sched.step()
            ev = evaluate(s.rule, s.data.test, cfg.data.eval_batch_size, s.device, s.dist)
            row.update(test_loss=ev["loss"], test_acc=ev["acc"])
            if s.data.val is not None:
                ev = evaluate(s.rule, s.data.val, cfg.data.eval_batch_size, s.device, s.dist)
                row.update(val_loss=ev["loss"], val_acc=ev["acc"])
            history.append(row)
            if main:
                checkpoint(s, epoch, history, out)
                # One line per epoch even without a progress bar: background logs are files.
                tqdm.write(_epoch_line(row), file=sys.stderr)
    except Diverged:
        if main:
            write_outputs(s, history, out, "diverged")
        raise
    return write_outputs(s, history, out, status) if main else summarize(s, history, status)


def _epoch_line(r: dict[str, Any]) -> str:
    val = f" val {100 * r['val_acc']:.2f}%" if "val_acc" in r else ""
    return (
        f"epoch {r['epoch']:3d}  train loss {r['train_loss']:.4f} acc {100 * r['train_acc']:.2f}%"
        f"  test loss {r['test_loss']:.4f} acc {100 * r['test_acc']:.2f}%{val}"
        f"  {r['seconds']:.1f}s"
    )
