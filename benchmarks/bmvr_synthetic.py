"""BMVR on the spec's synthetic problem (m=10, n=6, k=2, T=5000): the runs too slow for the tests.

Usage: ``python benchmarks/bmvr_synthetic.py [OUT_MD]`` (default docs/bmvr-synthetic.md).
Online: τ = ηx/ηq = 0.5, t0 = 5000, 20 epochs, SGD(lr = η0, momentum 0) applying the rule's .grad.
Batch GDA: one batch of m + n rows whose empirical covariances are exactly (Cxx, Cxy, Cyy).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from bioprop import linalg
from bioprop.models import mlp
from bioprop.rules.bmvr import BMVR

M, N, K, T = 10, 6, 2, 5000


def make(seed: int, **kw) -> BMVR:
    torch.manual_seed(seed)
    return BMVR(mlp([M, K, N], activation="identity", bias=False).double(), **kw)


def whiten(rule: BMVR, cxx: torch.Tensor) -> None:
    with torch.no_grad():
        vx = rule.w1.T
        rule.w1.copy_((vx @ linalg.psd_power(vx.T @ cxx @ vx, -0.5)).T)


def online(batch: int, eta: float, decoupled: bool, seed: int = 0) -> float:
    x, y = linalg.synthetic_problem(0, T)
    cxx, cxy, cyy = linalg.covariances(x, y)
    rule = make(seed, eta_q=eta / 0.5, t0=5000.0, decoupled=decoupled)
    whiten(rule, cxx)
    if decoupled:  # R0 = Q0ᵀ would keep R ≡ Qᵀ: start R elsewhere
        with torch.no_grad():
            rule.R.add_(0.5 * torch.randn(K, K, dtype=torch.float64))
    opt = torch.optim.SGD(rule.model.parameters(), lr=eta, momentum=0.0)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(20):
        for idx in torch.randperm(T, generator=gen).split(batch):
            opt.zero_grad(set_to_none=True)
            rule.step(x[idx], y[idx])
            opt.step()
    loss = linalg.rrr_loss(rule.w1.T.detach(), rule.w2.detach(), cxx, cxy, cyy)
    return loss / linalg.solve_rrr(cxx, cxy, cyy, K).loss - 1


def gda(s: float, eta: float, steps: int, seed: int = 0) -> tuple[float, float]:
    x, y = linalg.synthetic_problem(0, T)
    cxx, cxy, cyy = linalg.covariances(x, y)
    c = torch.cat([torch.cat([cxx, cxy], 1), torch.cat([cxy.T, cyy], 1)], 0)
    rows = math.sqrt(len(c)) * linalg.psd_power(c, 0.5, rcond=0)
    rule = make(seed, eta_q=eta / 0.5, s=s, check_every=10**9)
    whiten(rule, cxx)
    opt = torch.optim.SGD(rule.model.parameters(), lr=eta, momentum=0.0)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        rule.step(rows[:, :M], rows[:, M:])
        opt.step()
    vx = rule.w1.T.detach()
    sol = linalg.solve_rrr(cxx, cxy, cyy, K, s)
    return linalg.subspace_distance(vx, sol.vx), linalg.constraint_error(vx, cxx)


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/bmvr-synthetic.md")
    lines = ["| run | result | spec target | seconds |", "|---|---|---|---:|"]
    for batch, eta, dec, target in [
        (1, 0.005, False, "< 0.01"),
        (1, 0.005, True, "< 0.01"),
        (32, 0.05, False, "< 0.002"),
        (32, 0.05, True, "< 0.002"),
    ]:
        t = time.perf_counter()
        gap = online(batch, eta, dec)
        label = f"online B={batch}, η0={eta}, R {'on' if dec else 'off'}: L/L* − 1"
        lines.append(f"| {label} | {gap:.2e} | {target} | {time.perf_counter() - t:.0f} |")
        print(lines[-1], flush=True)
    for s, eta, steps, target in [
        (0.0, 0.05, 30000, "< 1e-12, < 1e-8"),
        (1.0, 0.02, 30000, "< 1e-10, < 1e-4"),
    ]:
        t = time.perf_counter()
        sub, con = gda(s, eta, steps)
        label = f"exact-covariance GDA s={s:g}, η={eta}, τ=0.5, {steps} steps: subspace, constraint"
        lines.append(
            f"| {label} | {sub:.1e}, {con:.1e} | {target} | {time.perf_counter() - t:.0f} |"
        )
        print(lines[-1], flush=True)
    out.write_text(
        "# BMVR on the synthetic problem of spec §10\n\n"
        "Written by `python benchmarks/bmvr_synthetic.py` (float64, seed 0, one thread).\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
