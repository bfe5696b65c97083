"""Eigen-spectra of denoiser Jacobians: the adaptive shrinkage basis of Kadkhodaie et al.

With J(y) ≈ symmetric, a bias-free denoiser computes D(y) = J(y) y = Σ_k λ_k ⟨y, e_k⟩ e_k
(Kadkhodaie, Guth, Simoncelli & Mallat, ICLR 2024, §4): eigenvalues λ_k are shrinkage
factors, eigenvectors e_k form the geometry-adaptive harmonic basis (GAHB). J of a
trained network is only nearly symmetric, so the spectrum is that of its symmetric part
S = (J + Jᵀ)/2, and ``asymmetry`` = ‖J − Jᵀ‖_F/‖J‖_F says how much is left out.

Two paths:

- dense (``k=None``): full J (:func:`pydiffgen.analysis.jacobian`), S, then
  :func:`pydiffgen.ops.eigh`; trace and asymmetry exact.
- matrix-free (``k`` given): the top-k eigenpairs of S from products S V only
  (JVP + VJP, never a d×d matrix): a block Krylov (block Lanczos) method with full
  re-orthogonalisation, Rayleigh–Ritz on the whole basis each step (exact residuals, no
  extra products), the next block being the residuals of the current top Ritz vectors,
  and a thick restart that keeps the best 2·block Ritz vectors when the basis reaches
  ``max_dim``. Converged when every top-k pair has ‖S v − θ v‖ ≤ tol·max|θ| (then
  |λ − θ| ≤ that bound, usually far less). Trace and asymmetry are estimated from
  ``probes`` Rademacher vectors z (Hutchinson): tr J ≈ mean zᵀJz and
  ‖A‖_F² = E‖A z‖², so asymmetry ≈ (Σ‖Jz − Jᵀz‖² / Σ‖Jz‖²)^½; with ``probes=0`` both
  are NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_positive_float, check_positive_int
from ..errors import InputError
from .jacobian import (
    _check_seed,
    check_denoiser_inputs,
    default_chunk,
    jacobian,
    linearize,
)

__all__ = ["JacobianSpectrum", "jacobian_spectrum"]


@dataclass
class JacobianSpectrum:
    """Eigen-decomposition of the (symmetrised) Jacobians of a batch.

    eigenvalues [B, n] descending (the shrinkage factors, largest first);
    eigenvectors [B, d, n] (column j belongs to eigenvalue j; unit norm, sign arbitrary);
    trace [B] (tr J, the effective dimension); asymmetry [B] (‖J − Jᵀ‖_F/‖J‖_F);
    residuals [B, n] (‖S v − λ v‖ per pair; matrix-free path only, else None);
    exact: True for the dense path, False where trace and asymmetry are estimates.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    trace: torch.Tensor
    asymmetry: torch.Tensor
    residuals: torch.Tensor | None = None
    exact: bool = True


def jacobian_spectrum(denoiser, y, sigma, k: int | None = None, *, symmetrize: bool = True,
                      method: str = "auto", chunk: int | None = None, block: int | None = None,
                      tol: float = 1e-4, max_dim: int | None = None, max_iters: int = 200,
                      probes: int = 32, seed: int = 0, backend: str | None = None
                      ) -> JacobianSpectrum:
    """Spectrum of J(y) for every image of the batch y [B, *F]; see the module docstring.

    ``k=None``: all d eigenpairs from the dense Jacobian. ``k``: the top k, matrix-free.
    ``symmetrize=False`` decomposes J itself, for denoisers whose J is symmetric (e.g. the
    empirical optimum, Cov_w/σ²): the dense path checks it (relative asymmetry ≤ 1e-5 in
    float64, 1e-3 otherwise) and the matrix-free path uses J V alone (no VJPs), trusting it.
    ``method``, ``chunk``: as in :func:`jacobian`. Matrix-free only: ``block`` (vectors per
    Krylov step, default k + 8), ``tol``, ``max_dim`` (basis size before a restart,
    default max(6·block, 64) capped at d), ``max_iters``, ``probes`` and ``seed`` (start
    block and trace probes). ``backend``: of :func:`pydiffgen.ops.eigh` (dense path).
    """
    y, sigma = check_denoiser_inputs(denoiser, y, sigma)
    B, d = y.shape[0], math.prod(y.shape[1:])
    _check_seed(seed)
    if k is None:
        return _dense_spectrum(denoiser, y, sigma, symmetrize, method, chunk, backend)
    k = check_positive_int(k, "k")
    if k > d:
        raise InputError(f"k must be at most d = {d} (pixels per image), got {k}")
    block = k + 8 if block is None else check_positive_int(block, "block")
    block = min(max(block, k), d)
    max_dim = min(d, max(6 * block, 64)) if max_dim is None else check_positive_int(max_dim,
                                                                                   "max_dim")
    if max_dim < 2 * block and max_dim < d:
        raise InputError(f"max_dim must be at least 2·block = {2 * block}, got {max_dim}")
    tol = check_positive_float(tol, "tol")
    max_iters = check_positive_int(max_iters, "max_iters")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
        raise InputError(f"probes must be a non-negative integer, got {probes!r}")
    chunk = default_chunk(B, d, y) if chunk is None else chunk
    chunk = check_positive_int(chunk, "chunk")

    with linearize(denoiser, y, sigma, method) as lin:
        op = lin.sym if symmetrize else lin.jvp

        def apply(V):  # [B, m, d] -> [B, m, d], m split into passes of ≤ chunk vectors
            return torch.cat([op(V[:, s : s + chunk]) for s in range(0, V.shape[1], chunk)], 1)

        gen = torch.Generator().manual_seed(seed)
        w, X, res = block_krylov_topk(apply, B, d, k, block, max_dim, tol, max_iters, gen, y)
        trace, asym = _probe_trace_asymmetry(lin, probes, seed, chunk)
    return JacobianSpectrum(w.to(y.dtype), X.transpose(1, 2).to(y.dtype), trace, asym,
                            residuals=res.to(y.dtype), exact=False)


def _dense_spectrum(denoiser, y, sigma, symmetrize, method, chunk, backend):
    from ..ops import eigh

    J = jacobian(denoiser, y, sigma, chunk=chunk, method=method)  # [B, d, d]
    trace = J.diagonal(dim1=1, dim2=2).sum(-1)  # [B]
    asym = torch.linalg.matrix_norm(J - J.transpose(1, 2)) / torch.linalg.matrix_norm(
        J).clamp_min(torch.finfo(J.dtype).tiny)
    if symmetrize:
        S = (J + J.transpose(1, 2)) / 2
    else:
        limit = 1e-5 if J.dtype == torch.float64 else 1e-3
        if bool((asym > limit).any()):
            raise InputError(
                f"symmetrize=False needs a symmetric Jacobian, but ‖J − Jᵀ‖/‖J‖ reaches "
                f"{float(asym.max()):.2e} (> {limit:g}); use symmetrize=True"
            )
        S = J
    del J
    w, V = eigh(S, backend=backend)  # ascending
    return JacobianSpectrum(w.flip(-1), V.flip(-1), trace, asym)


# --------------------------------------------------------------------------- block Krylov


def _orthonormalize(W: torch.Tensor, V: torch.Tensor | None, gen) -> torch.Tensor:
    """Rows of W [B, p, d] made orthonormal and orthogonal to the rows of V [B, m, d].

    Two rounds of (project out V, QR): the second repairs directions QR made up for
    (numerically) dependent rows, e.g. residuals that have converged to zero."""
    for _ in range(2):
        if V is not None:
            W = W - (W @ V.transpose(1, 2)) @ V
            W = W - (W @ V.transpose(1, 2)) @ V
        Q, R = torch.linalg.qr(W.transpose(1, 2))  # Q [B, d, p]
        # rows that were (near) zero: replace with fresh random directions, then redo
        diag = R.diagonal(dim1=1, dim2=2).abs()  # [B, p]
        weak = diag <= 1e-10 * diag.amax(dim=1, keepdim=True).clamp_min(1e-300)
        W = Q.transpose(1, 2)
        if bool(weak.any()):
            noise = torch.randn(W.shape, generator=gen, dtype=torch.float64).to(W)
            W = torch.where(weak.unsqueeze(-1), noise, W)
    return W


def block_krylov_topk(apply, B, d, k, block, max_dim, tol, max_iters, gen, like):
    """Top-k eigenpairs of a symmetric operator on [B, m, d] blocks (block Lanczos with
    full re-orthogonalisation, Rayleigh–Ritz and thick restart).

    Returns eigenvalues [B, k] descending, eigenvectors [B, k, d] (rows), residual norms
    [B, k]."""
    start = torch.randn((B, block, d), generator=gen, dtype=torch.float64)
    V = _orthonormalize(start.to(like), None, gen)  # [B, m, d] orthonormal rows
    AV = apply(V)  # [B, m, d]
    for _ in range(max_iters):
        H = (V @ AV.transpose(1, 2)).double()  # [B, m, m] = Vᵀ S V
        H = (H + H.transpose(1, 2)) / 2
        theta, Y = torch.linalg.eigh(H)  # ascending
        theta, Y = theta.flip(-1), Y.flip(-1)  # descending
        p = min(block, V.shape[1])
        Yp = Y[:, :, :p].transpose(1, 2).to(V.dtype)  # [B, p, m]
        X, AX = Yp @ V, Yp @ AV  # Ritz vectors and their images [B, p, d]
        R = AX - theta[:, :p, None].to(V.dtype) * X  # residuals
        res = R.double().norm(dim=-1)  # [B, p]
        scale = theta.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
        if bool((res[:, :k] <= tol * scale).all()) or V.shape[1] >= d:
            break
        if V.shape[1] + block > max_dim:
            keep = min(2 * block, V.shape[1])
            Yk = Y[:, :, :keep].transpose(1, 2).to(V.dtype)
            V, AV = Yk @ V, Yk @ AV  # thick restart on the best Ritz vectors
        W = _orthonormalize(R[:, : min(block, d - V.shape[1])], V, gen)
        V, AV = torch.cat([V, W], 1), torch.cat([AV, apply(W)], 1)
    return theta[:, :k], X[:, :k], res[:, :k]


def _probe_trace_asymmetry(lin, probes: int, seed: int, chunk: int):
    """Hutchinson estimates of tr J and ‖J − Jᵀ‖_F/‖J‖_F from Rademacher probes."""
    if probes == 0:
        nan = torch.full((lin.B,), math.nan, dtype=lin.y.dtype, device=lin.y.device)
        return nan, nan.clone()
    from .jacobian import _rademacher

    z_all = _rademacher(lin.B, probes, lin.d, seed + 1, lin.y)
    tr = torch.zeros(lin.B, dtype=torch.float64, device=lin.y.device)
    diff2 = torch.zeros_like(tr)
    norm2 = torch.zeros_like(tr)
    for s in range(0, probes, chunk):
        z = z_all[:, s : s + chunk]  # [B, c, d]
        Jz, JTz = lin.jvp(z), lin.vjp(z)
        tr += (z * Jz).double().sum((1, 2))
        diff2 += (Jz - JTz).double().square().sum((1, 2))
        norm2 += Jz.double().square().sum((1, 2))
    asym = (diff2 / norm2.clamp_min(1e-300)).sqrt()
    return (tr / probes).to(lin.y.dtype), asym.to(lin.y.dtype)
