"""Offline reduced-rank regression (RRR), Bio-RRR and CCA in closed form: the reference for BMVR.

Data are centred per feature; ``Cxx = XᵀX/T``, ``Cxy = XᵀY/T``, ``Cyy = YᵀY/T``.
For ``s`` in [0, 1], ``S = s·Cyy + (1−s)·I`` and the rank-k problem is

    min_{Vx, Vy} E‖y − S·Vy·Vxᵀ·x‖²_{S⁻¹}   s.t.  Vxᵀ·Cxx·Vx = I_k

(s = 0: reduced-rank regression; s = 1: canonical correlation analysis). With
``M = Cxx^{-1/2}·Cxy·S^{-1/2} = U·diag(σ)·Wᵀ`` the optimum is ``Vx* = Cxx^{-1/2}·U[:, :k]``,
``Vy* = S⁻¹·Cyx·Vx*`` and ``L* = Tr(S⁻¹·Cyy) − Σ_{i≤k} σ_i²`` (Bio-RRR, arXiv 2010.12660).

A singular ``Cxx`` (constant pixels) is handled on its range: inverse powers drop eigenvalues
below ``rcond·λmax``, so directions the data never excite get no weight and cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RRRSolution:
    """The closed-form optimum. ``sigma`` holds all singular values of M, largest first."""

    vx: Tensor  # m × k
    vy: Tensor  # n × k
    sigma: Tensor
    loss: float  # L*
    s: float


def covariances(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(Cxx, Cxy, Cyy) of already centred rows ``x`` (T × m) and ``y`` (T × n)."""
    t = x.shape[0]
    return x.T @ x / t, x.T @ y / t, y.T @ y / t


def psd_power(c: Tensor, p: float, rcond: float = 1e-10) -> Tensor:
    """``C^p`` of a symmetric PSD matrix; for p < 0 a pseudo-power on the range of C."""
    lam, vec = torch.linalg.eigh(c)
    keep = lam > rcond * lam.abs().max()
    lam_p = torch.where(keep, lam.clamp_min(0) ** p if p > 0 else lam.clamp_min(1e-300) ** p, 0)
    return (vec * lam_p) @ vec.T


def s_matrix(cyy: Tensor, s: float) -> Tensor:
    """``S = s·Cyy + (1−s)·I``."""
    return s * cyy + (1 - s) * torch.eye(cyy.shape[0], dtype=cyy.dtype, device=cyy.device)


def solve_rrr(
    cxx: Tensor, cxy: Tensor, cyy: Tensor, k: int, s: float = 0.0, rcond: float = 1e-10
) -> RRRSolution:
    """Closed-form rank-``k`` Bio-RRR optimum (s = 0 RRR, s = 1 CCA) via one SVD."""
    if not 0 <= s <= 1:
        raise ValueError(f"s must lie in [0, 1], got {s}")
    smat = s_matrix(cyy, s)
    cxx_ih = psd_power(cxx, -0.5, rcond)
    m_mat = cxx_ih @ cxy @ psd_power(smat, -0.5, rcond)
    u, sigma, _ = torch.linalg.svd(m_mat, full_matrices=False)
    if k > sigma.numel():
        raise ValueError(f"rank k={k} exceeds min(m, n)={sigma.numel()}")
    vx = cxx_ih @ u[:, :k]
    s_inv = torch.linalg.pinv(smat, rtol=rcond, hermitian=True)
    vy = s_inv @ cxy.T @ vx
    loss = float(torch.trace(s_inv @ cyy) - (sigma[:k] ** 2).sum())
    return RRRSolution(vx, vy, sigma, loss, s)


def ridge_rrr_loss(
    cxx: Tensor, cxy: Tensor, cyy: Tensor, k: int, ridge: float, s: float = 0.0
) -> float:
    """True objective (on ``Cxx``) of the rank-``k`` optimum solved with ``Cxx + ridge·I``.

    The ridge solution ignores input directions with variance ≪ ``ridge``; an online rule with
    a decaying rate has learned next to nothing in them either, so this is a reachable reference
    line. ``ridge → 0`` recovers ``solve_rrr(...).loss``."""
    eye = torch.eye(cxx.shape[0], dtype=cxx.dtype, device=cxx.device)
    sol = solve_rrr(cxx + ridge * eye, cxy, cyy, k, s)
    return rrr_loss(sol.vx, sol.vy, cxx, cxy, cyy, s)


def rrr_loss(
    vx: Tensor, vy: Tensor, cxx: Tensor, cxy: Tensor, cyy: Tensor, s: float = 0.0
) -> float:
    """``E‖y − S·Vy·Vxᵀ·x‖²_{S⁻¹}`` from covariances (for s = 0 the plain squared error)."""
    smat = s_matrix(cyy, s)
    s_inv = torch.linalg.pinv(smat, hermitian=True)
    # Tr(BᵀSB·Cxx) with B = Vy·Vxᵀ, in k×k products (cheap for large m)
    return float(
        torch.trace(s_inv @ cyy)
        - 2 * torch.trace(vy.T @ cxy.T @ vx)
        + torch.trace((vy.T @ smat @ vy) @ (vx.T @ cxx @ vx))
    )


def bound(
    vx: Tensor, vy: Tensor, q: Tensor, cxx: Tensor, cxy: Tensor, cyy: Tensor, s: float = 0.0
) -> float:
    """The min–max objective L̃ that BMVR descends in (Vx, Vy) and ascends in Q."""
    smat = s_matrix(cyy, s)
    s_inv = torch.linalg.pinv(smat, hermitian=True)
    eye = torch.eye(vx.shape[1], dtype=vx.dtype, device=vx.device)
    return float(
        torch.trace(s_inv @ cyy)
        - 2 * torch.trace(vy.T @ cxy.T @ vx)
        + torch.trace(vy.T @ smat @ vy)
        + torch.trace(q @ q.T @ (vx.T @ cxx @ vx - eye))
    )


def constraint_error(vx: Tensor, cxx: Tensor) -> float:
    """``‖Vxᵀ·Cxx·Vx − I‖_F``: how far the hidden outputs are from unit covariance."""
    eye = torch.eye(vx.shape[1], dtype=vx.dtype, device=vx.device)
    return float(torch.linalg.matrix_norm(vx.T @ cxx @ vx - eye))


def projector(v: Tensor) -> Tensor:
    """Orthogonal projector ``V(VᵀV)⁻¹Vᵀ`` onto the column space of V."""
    q, _ = torch.linalg.qr(v)
    return q @ q.T


def subspace_distance(a: Tensor, b: Tensor) -> float:
    """``‖P(A) − P(B)‖²_F``: 0 iff the column spaces agree, 2k when they are orthogonal."""
    return float(torch.linalg.matrix_norm(projector(a) - projector(b)) ** 2)


def rank_k_projection_of_ols(cxx: Tensor, cxy: Tensor, k: int) -> Tensor:
    """``P_k·B_ols`` with ``B_ols = Cyx·Cxx⁻¹`` and ``P_k`` the top-k eigenvectors of
    ``B_ols·Cxx·B_olsᵀ``: the classical RRR map, an independent route to s = 0's optimum."""
    b_ols = torch.linalg.solve(cxx, cxy).T
    _, vec = torch.linalg.eigh(b_ols @ cxx @ b_ols.T)
    top = vec[:, -k:]
    return top @ top.T @ b_ols


def random_orthogonal(d: int, gen: torch.Generator) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def synthetic_problem(seed: int = 0, t: int = 5000) -> tuple[Tensor, Tensor]:
    """The BMVR spec's test problem (float64): m = 10, n = 6, ``x = O·diag(0.5…1.5)·g``,
    ``y = U·diag(3, 2, .5, .3, .2, .1)·Wᵀ·x + 0.5·ε``; both centred, X scaled to λmax(Ĉxx) = 1.
    Singular values come out near 3.05, 1.81, 0.51: a clear gap after k = 2."""
    m, n = 10, 6
    gen = torch.Generator().manual_seed(seed)
    o = random_orthogonal(m, gen)
    scale = torch.diag(torch.linspace(0.5, 1.5, m, dtype=torch.float64))
    x = torch.randn(t, m, generator=gen, dtype=torch.float64) @ (o @ scale).T
    u, w = random_orthogonal(n, gen), random_orthogonal(m, gen)[:, :n]
    b = u @ torch.diag(torch.tensor([3, 2, 0.5, 0.3, 0.2, 0.1], dtype=torch.float64)) @ w.T
    y = x @ b.T + 0.5 * torch.randn(t, n, generator=gen, dtype=torch.float64)
    x, y = x - x.mean(0), y - y.mean(0)
    return x / torch.linalg.eigvalsh(x.T @ x / t)[-1].sqrt(), y
