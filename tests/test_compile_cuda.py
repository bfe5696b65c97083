"""Every csrc/cuda/*.cu compiles to a cubin for sm_90a and sm_80 (nvcc -cubin -Xptxas -v:
ptxas runs, unlike nvcc -c of a .o with PTX only) and no kernel spills registers; the
resource table is printed (benchmarks/RESULTS.md keeps it). No GPU needed."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compile_cuda", ROOT / "tools" / "compile_cuda.py")
compile_cuda = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compile_cuda)


def test_cuda_sources_exist():
    assert compile_cuda.SOURCES, "csrc/cuda/*.cu is empty"


@pytest.mark.skipif(compile_cuda.NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", compile_cuda.SOURCES, ids=lambda p: p.name)
def test_nvcc_cubin(source):
    why = compile_cuda.missing_headers(source)
    if why:
        pytest.skip(why)
    out = compile_cuda.compile_all([source])
    print(compile_cuda.markdown(out["rows"]))
    assert not out["errors"], "\n".join(out["errors"])
    assert {r["arch"] for r in out["rows"]} <= set(compile_cuda.ARCHS)
