"""pydiffgen.ops.eigh: every backend against float64 LAPACK, up to sign and order in ties."""

import pytest
import torch

from pydiffgen import ops
from pydiffgen.errors import BackendError, InputError
from pydiffgen.ops import dispatch

# many small ops: one thread is fastest for them and immune to OpenMP spin-waits on a busy
# 2-core machine (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def _sym(B, n, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(B, n, n, generator=gen, dtype=torch.float64)
    return ((A + A.transpose(1, 2)) / 2).to(dtype=dtype, device=device)


def _check(A, w, V, rtol):
    """w ascending and equal to float64 LAPACK's; V orthonormal and A V = V diag(w)."""
    w_ref = torch.linalg.eigvalsh(A.cpu().double())
    scale = w_ref.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    assert bool(((w.cpu().double() - w_ref).abs() <= rtol * scale).all())
    assert bool((w[..., 1:] >= w[..., :-1]).all())
    Vd, Ad = V.cpu().double(), A.cpu().double()
    eye = torch.eye(A.shape[-1], dtype=torch.float64)
    assert (Vd.transpose(-1, -2) @ Vd - eye).abs().max() <= 50 * rtol
    resid = Ad @ Vd - Vd * w.cpu().double().unsqueeze(-2)
    assert resid.abs().max() <= 50 * rtol * scale.max()


@pytest.mark.parametrize("n", [1, 7, 33, 127])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["aten", "reference"])
def test_cpu_backends(n, dtype, backend):
    A = _sym(3, n, dtype)
    w, V = ops.eigh(A, backend=backend)
    assert w.shape == (3, n) and V.shape == (3, n, n) and w.dtype == V.dtype == dtype
    _check(A, w, V, 1e-5 if dtype == torch.float32 else 1e-12)


def test_float64_option_and_unbatched_and_empty():
    A = _sym(2, 20, torch.float32)
    w, V = ops.eigh(A, float64=True)
    assert w.dtype == torch.float32
    w_ref = torch.linalg.eigvalsh(A.double())
    assert (w.double() - w_ref).abs().max() <= 1e-6 * w_ref.abs().max()  # float32 rounding
    w1, V1 = ops.eigh(A[1])
    assert w1.shape == (20,) and V1.shape == (20, 20)
    _check(A[1:], w1[None], V1[None], 1e-5)
    w0, V0 = ops.eigh(torch.zeros(0, 5, 5))
    assert w0.shape == (0, 5) and V0.shape == (0, 5, 5)


def test_only_lower_triangle_is_read():
    A = _sym(2, 9, torch.float64)
    garbage = A + torch.triu(torch.randn(9, 9, dtype=torch.float64), diagonal=1)
    torch.testing.assert_close(ops.eigh(garbage)[0], ops.eigh(A)[0])


def test_bad_inputs():
    with pytest.raises(InputError, match="square"):
        ops.eigh(torch.zeros(2, 3, 4))
    with pytest.raises(InputError, match="float32 or float64"):
        ops.eigh(torch.zeros(2, 3, 3, dtype=torch.float16))
    with pytest.raises(InputError, match="NaN"):
        ops.eigh(torch.full((3, 3), float("nan")))
    with pytest.raises(BackendError, match="cusolver"):
        ops.eigh(torch.eye(3), backend="cusolver")
    with pytest.raises(BackendError, match="unknown backend"):
        ops.eigh(torch.eye(3), backend="magma")
    assert set(dispatch.op("eigh").reasons("cpu")) == {"cusolver", "aten", "reference"}


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 5, 32, 33, 100, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cusolver_matches_lapack(n, dtype):
    A = _sym(17, n, dtype, device="cuda")
    w, V = ops.eigh(A, backend="cusolver")
    assert w.device.type == "cuda" and w.dtype == dtype
    _check(A, w, V, 1e-5 if dtype == torch.float32 else 1e-11)


@pytest.mark.gpu
@pytest.mark.parametrize("n", [8, 40])
def test_cusolver_ties_and_subspaces(n):
    # repeated eigenvalues: compare eigenvalues and projectors onto each eigenspace
    gen = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(4, n, n, generator=gen, dtype=torch.float64))
    w_true = torch.tensor([float(i // 3) for i in range(n)], dtype=torch.float64)
    A = (Q * w_true) @ Q.transpose(1, 2)
    w, V = ops.eigh(A.cuda(), backend="cusolver")
    torch.testing.assert_close(w.cpu(), w_true.expand(4, n), atol=1e-10, rtol=0)
    for value in w_true.unique():
        sel = w_true == value
        P = V.cpu()[..., sel] @ V.cpu()[..., sel].transpose(1, 2)
        P_true = Q[..., sel] @ Q[..., sel].transpose(1, 2)
        torch.testing.assert_close(P, P_true, atol=1e-9, rtol=0)
    torch.testing.assert_close(ops.eigh(torch.eye(n, device="cuda"), backend="cusolver")[0],
                               torch.ones(n, device="cuda"))
