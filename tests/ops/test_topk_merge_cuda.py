"""CUDA topk_merge: on a GPU vs the reference; without one, the kernel's logic is run on
the CPU by csrc/cuda/emulate (one thread per CUDA thread, barriers for __syncthreads)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from pydiffgen.ops import dispatch, reference, topk_merge
from pydiffgen.ops.topk import CUDA_MAX_K

ROOT = Path(__file__).resolve().parents[2]
EMULATOR = ROOT / "csrc" / "cuda" / "emulate" / "topk_merge_emulate.cpp"


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
def test_cuda_kernel_emulated_on_cpu(tmp_path):
    exe = tmp_path / "topk_merge_emulate"
    build = ["c++", "-std=c++20", "-O1", "-pthread", str(EMULATOR), "-o", str(exe)]
    res = subprocess.run(build, capture_output=True, text=True, timeout=300)
    if res.returncode and "barrier" in res.stderr:
        pytest.skip(f"the C++ compiler lacks <barrier> (C++20): {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr[-4000:]
    # 32 threads per block: several windows fill the candidate buffer before each flush
    run = subprocess.run([str(exe), "32"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stdout + run.stderr


def _cuda_backend_or_skip():
    why = dispatch.op("topk_merge").reasons("cuda")["cuda"]
    if why != "ok":
        pytest.skip(f"cuda backend: {why}")


def _running(M, k, dtype, largest, n_seen, device, ties=False):
    fill = float("-inf") if largest else float("inf")
    v = torch.full((M, k), fill, dtype=dtype, device=device)
    i = torch.full((M, k), -1, dtype=torch.int64, device=device)
    if n_seen:
        s = torch.randint(0, 4, (M, n_seen), device=device).to(dtype) if ties else \
            torch.randn(M, n_seen, dtype=dtype, device=device)
        v, i = reference.topk_merge(v, i, s, 0, largest)
    return v, i


@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 7, 127])
@pytest.mark.parametrize("k", [1, 5, 64, 1000, 1024])
@pytest.mark.parametrize("T", [0, 1, 33, 1025, 5000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_cuda_matches_reference(M, k, T, dtype, largest, ties):
    _cuda_backend_or_skip()
    n_seen = k // 2 if T % 2 else 2 * k
    v, i = _running(M, k, dtype, largest, n_seen, "cuda", ties)
    tile = torch.randint(0, 4, (M, T), device="cuda").to(dtype) if ties else \
        torch.randn(M, T, dtype=dtype, device="cuda")
    got = topk_merge(v, i, tile, n_seen, largest, backend="cuda")
    want = reference.topk_merge(v, i, tile, n_seen, largest)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


@pytest.mark.gpu
def test_cuda_non_contiguous_large_k_and_opcheck():
    _cuda_backend_or_skip()
    v, i = _running(33, 20, torch.float32, False, 50, "cuda", ties=True)
    tile = torch.randint(0, 4, (33, 400), device="cuda").float()[:, ::2]
    got = topk_merge(v.T.contiguous().T, i.T.contiguous().T, tile, 50, False, backend="cuda")
    want = reference.topk_merge(v, i, tile.contiguous(), 50, False)
    assert torch.equal(got[1], want[1])
    # above the kernel's k limit the backend hands over to the reference
    v, i = _running(3, CUDA_MAX_K + 5, torch.float32, True, 10, "cuda")
    tile = torch.randn(3, 3000, device="cuda")
    got = topk_merge(v, i, tile, 10, True, backend="cuda")
    assert torch.equal(got[1], reference.topk_merge(v, i, tile, 10, True)[1])
    v, i = _running(7, 5, torch.float32, False, 9, "cuda")
    torch.library.opcheck(torch.ops.pydiffgen.topk_merge.default,
                          (v, i, torch.randn(7, 33, device="cuda"), 9, False))


@pytest.mark.gpu
def test_cuda_repeated_merges_equal_topk():
    _cuda_backend_or_skip()
    M, N, k = 50, 100_000, 100
    scores = torch.randn(M, N, device="cuda")
    v, i = _running(M, k, torch.float32, False, 0, "cuda")
    for n0 in range(0, N, 8192):
        v, i = topk_merge(v, i, scores[:, n0 : n0 + 8192], n0, False, backend="cuda")
    want = torch.sort(scores, dim=1, stable=True)
    assert torch.equal(i, want.indices[:, :k]) and torch.equal(v, want.values[:, :k])
