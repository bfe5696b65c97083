"""The native code builds: the extension loaded, CUDA sources compile with nvcc (no GPU
needed), and the CUDA torch bindings parse against this torch's headers."""

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from pydiffgen import _native

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted(glob.glob(str(ROOT / "csrc" / "cuda" / "*.cu")))
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


def test_cuda_sources_exist():
    assert CUDA_SOURCES, "csrc/cuda/*.cu is empty"


def _library_includes(header: str) -> list[str]:
    """-I flags for a CUDA library header (cusolverDn.h ...): the toolkit's include folder
    or the pip CUDA wheels' (nvidia-cusolver, nvidia-cublas: site-packages/nvidia/*/include)."""
    import site

    roots = [_cuda_include()] + [
        p for sp in site.getsitepackages() for p in Path(sp).glob("nvidia/*/include")]
    return [f"-I{r}" for r in roots if r is not None and (Path(r) / header).exists()]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: Path(p).name)
def test_nvcc_compiles(source, tmp_path):
    extra = []
    if "<cusolverDn.h>" in Path(source).read_text():
        extra = _library_includes("cusolverDn.h")
        if not extra:
            pytest.skip("cuSOLVER headers not found (a full CUDA toolkit, or "
                        "pip install --no-deps nvidia-cusolver nvidia-cublas)")
    cmd = [NVCC, "-c", "-std=c++17", "-arch=sm_90a", "-I", str(Path(source).parent), *extra,
           source, "-o", str(tmp_path / (Path(source).stem + ".o"))]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stdout}\n{res.stderr}"


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
