"""Triton score tile (kernels/l2_tile.py) vs torch; on CPU it runs in the Triton interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 when no GPU is present), so sizes stay small."""

import pytest
import torch

from pydiffgen.kernels import TRITON_WHY_NOT, interpreted

if TRITON_WHY_NOT is not None:
    pytest.skip(TRITON_WHY_NOT, allow_module_level=True)

from pydiffgen.kernels.l2_tile import score_tile  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not interpreted():
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)


def _torch_scores(q, x, metric):
    ip = q @ x.T
    return (x * x).sum(1)[None, :] - 2 * ip if metric == "l2" else ip


def _check(q, x, metric, **kw):
    got = score_tile(q, x, metric=metric, **kw)
    assert got.dtype == torch.float32 and got.shape == (q.shape[0], x.shape[0])
    exact = _torch_scores(q.double(), x.double(), metric)
    torch_err = (_torch_scores(q.float(), x.float(), metric).double() - exact).abs().max()
    err = (got.double() - exact).abs().max()
    # flash-attention style rule: at most 2x the error of the same-precision torch result
    scale = exact.abs().max().clamp_min(1.0)
    assert err <= 2 * torch_err + 1e-6 * scale, (err, torch_err)


@pytest.mark.parametrize("M,N", [(1, 1), (7, 33), (33, 127), (127, 7), (1, 127)])
@pytest.mark.parametrize("D", [3, 64, 65])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_score_tile_matches_torch(M, N, D, metric):
    q = torch.randn(M, D, device=DEVICE)
    x = torch.randn(N, D, device=DEVICE)
    _check(q, x, metric)


def test_score_tile_given_norms_strides_and_out():
    q = torch.randn(65, 2 * 33, device=DEVICE)[:, ::2]  # non-contiguous features
    x = torch.randn(33, 40, device=DEVICE).T  # [40, 33] column-major keys
    x_sq = (x * x).sum(1)
    out = torch.full((40, 65), float("nan"), device=DEVICE).T  # strided output
    got = score_tile(q, x, x_sq, "l2", out=out)
    assert got.data_ptr() == out.data_ptr()
    want = x_sq[None, :] - 2 * q @ x.T
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    _check(q.double(), x.double(), "l2")  # float64 inputs are cast to float32


def test_score_tile_small_blocks_and_edges():
    q = torch.randn(7, 65, device=DEVICE)
    x = torch.randn(33, 65, device=DEVICE)
    _check(q, x, "l2", block_m=16, block_n=16, block_d=16)
    assert score_tile(q[:0], x).shape == (0, 33)
    assert score_tile(q, x[:0]).shape == (7, 0)
    with pytest.raises(ValueError, match="metric"):
        score_tile(q, x, metric="cosine")
    with pytest.raises(ValueError, match="share D"):
        score_tile(q, x[:, :3])


def test_custom_op_opcheck():
    from pydiffgen.ops import knn as _  # noqa: F401 - registers pydiffgen::knn_score_tile

    q = torch.randn(7, 5, device=DEVICE)
    x = torch.randn(9, 5, device=DEVICE)
    torch.library.opcheck(torch.ops.pydiffgen.knn_score_tile.default,
                          (q, x, (x * x).sum(1), True))


_AOT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pydiffgen.kernels.l2_tile import score_tile_kernel
sig = {n: "*fp32" for n in ("q_ptr", "x_ptr", "x_sq_ptr", "out_ptr")}
sig.update({n: "i32" for n in ("M", "N", "D", "stride_qm", "stride_qd", "stride_xn",
                               "stride_xd", "stride_om", "stride_on")})
for prec in ("ieee", "tf32", "tf32x3"):
    for with_norm in (True, False):
        consts = {"ALPHA": -2.0 if with_norm else 1.0, "WITH_NORM": with_norm,
                  "PRECISION": prec, "BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_D": 32}
        sig.update({n: "constexpr" for n in consts})
        src = ASTSource(fn=score_tile_kernel, signature=sig, constexprs=consts)
        assert triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["cubin"]
print("compiled")
"""


def test_compiles_for_hopper_without_gpu():
    """Lower the kernel to an sm_90 cubin ahead of time (no GPU needed), so code that the
    interpreter accepts but the compiler rejects is caught on CPU machines too."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    res = subprocess.run([sys.executable, "-c", _AOT], capture_output=True, text=True,
                         env=env, timeout=600)
    if res.returncode and ("ImportError" in res.stderr or "TypeError" in res.stderr):
        pytest.skip(f"this Triton's ahead-of-time API differs: {res.stderr[-300:]}")
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-3000:]
