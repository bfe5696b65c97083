"""Batched symmetric eigendecomposition: ``eigh(A [B, n, n]) -> (w [B, n] ascending,
V [B, n, n] with eigenvectors as columns)``, A = V diag(w) Vᵀ.

Only the lower triangle of A is read (LAPACK/cuSOLVER convention, uplo = L), so a matrix
that is symmetric up to rounding gives the decomposition of its lower triangle mirrored.

Backends in priority order:
  CUDA: cusolver (pydiffgen._C: cuSOLVER syevjBatched for n ≤ 32, cusolverDnXsyevBatched
        where cuSOLVER has it, else syevd per matrix over a few streams) → aten → reference;
  CPU:  aten (torch.linalg.eigh: LAPACK syevd through ATen) → reference.
``reference`` is torch.linalg.eigh in float64 on the CPU, cast back: the ground truth.
``float64=True`` computes in float64 on any backend and returns A's dtype.
Eigenvectors are determined up to sign (and within a repeated eigenvalue up to a rotation
of that eigenspace), so compare decompositions through V diag(w) Vᵀ or |Vᵀ V'|.
"""

from __future__ import annotations

import torch

from .. import _native
from .._checks import check_tensor
from ..errors import InputError
from . import dispatch
from ._register import register

_DTYPES = (torch.float32, torch.float64)


def eigh(A: torch.Tensor, backend: str | None = None, *, float64: bool = False):
    """Eigenvalues (ascending, ``[B, n]``) and eigenvectors (columns, ``[B, n, n]``) of
    symmetric ``A [B, n, n]`` (or ``[n, n]``, giving ``[n]`` and ``[n, n]``)."""
    A = check_tensor(A, "A", nonempty=False)
    if A.ndim not in (2, 3) or A.shape[-1] != A.shape[-2]:
        raise InputError(f"A must be [n, n] or [B, n, n] (square), got shape {tuple(A.shape)}")
    if A.dtype not in _DTYPES:
        raise InputError(f"A must be float32 or float64, got {A.dtype}")
    single = A.ndim == 2
    A3 = A.unsqueeze(0) if single else A
    dtype = A.dtype
    work = A3.double() if float64 else A3
    if work.numel() == 0:
        n = A3.shape[-1]
        w, V = work.new_empty(A3.shape[0], n), work.new_empty(A3.shape[0], n, n)
    else:
        impl = dispatch.op("eigh").select(A.device.type, backend)
        w, V = impl.fn(work.contiguous())
    w, V = w.to(dtype), V.to(dtype)
    return (w[0], V[0]) if single else (w, V)


def reference_eigh(A):
    """float64 LAPACK on the CPU: the ground truth other backends are tested against."""
    w, V = torch.linalg.eigh(A.detach().cpu().double())
    return w.to(device=A.device, dtype=A.dtype), V.to(device=A.device, dtype=A.dtype)


def _aten(A):
    return torch.linalg.eigh(A)


def _cusolver(A):
    return torch.ops.pydiffgen.eigh(A)


def _fake(A):
    B, n, _ = A.shape
    return A.new_empty(B, n), A.new_empty(B, n, n)


if _native.cpu_why_not("eigh") is None:
    register("eigh", fake=_fake)

_op = dispatch.op("eigh")
_op.register("cusolver", ("cuda",), _cusolver, _native.cuda_why_not)
_op.register("aten", ("cpu", "cuda"), _aten)
_op.register("reference", ("cpu", "cuda"), reference_eigh)
