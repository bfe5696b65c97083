"""The native code builds: the extension loaded and the CUDA torch bindings parse against
this torch's headers (the .cu sources compile to cubins in test_compile_cuda.py)."""

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from pydiffgen import _native

ROOT = Path(__file__).resolve().parents[1]
CUDA_BINDINGS = sorted(glob.glob(str(ROOT / "csrc" / "cuda" / "*.cpp")))
NVCC = shutil.which("nvcc")


def _cuda_include():
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if NVCC:
        candidates.insert(0, str(Path(NVCC).resolve().parents[1]))
    for root in candidates:
        if root and (Path(root) / "include" / "cuda_runtime.h").exists():
            return Path(root) / "include"
    return None


@pytest.mark.native
@pytest.mark.skipif(not _native.LOADED, reason=str(_native.WHY_NOT))
def test_extension_built():
    from pydiffgen import _C

    assert _C.WITH_CUDA in (0, 1)
    assert torch._C._dispatch_has_kernel_for_dispatch_key("pydiffgen::topk_merge", "CPU")
    for op in ("knn_candidates", "knn_rerank"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"pydiffgen::{op}", "CPU")
    if _native.has_cuda_ops():
        assert torch._C._dispatch_has_kernel_for_dispatch_key("pydiffgen::topk_merge", "CUDA")


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")
@pytest.mark.parametrize("source", CUDA_BINDINGS, ids=lambda p: Path(p).name)
def test_cuda_binding_parses(source, tmp_path):
    """csrc/cuda/*.cpp are compiled only in CUDA builds; parse them here so they cannot rot.

    A CPU torch ships the c10/cuda headers but not the generated cuda_cmake_macros.h, which
    is stubbed (it only holds build switches)."""
    cuda_inc = _cuda_include()
    if cuda_inc is None:
        pytest.skip("no CUDA toolkit headers (cuda_runtime.h) found")
    from torch.utils.cpp_extension import include_paths

    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    cmd = ["c++", "-std=c++20", "-fsyntax-only", "-Wall", *[f"-I{p}" for p in include_paths()],
           f"-I{tmp_path}", f"-I{cuda_inc}", f"-I{Path(source).parent}", source]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr[-4000:]}"
