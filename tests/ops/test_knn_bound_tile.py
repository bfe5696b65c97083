"""kernels/knn_bound_tile.py lowers to an sm_90 cubin (no GPU needed): code the interpreter
accepts but the compiler rejects (bf16 tl.dot, constexpr floats) is caught on CPU."""

import os
import subprocess
import sys

import pytest

from pydiffgen.kernels import TRITON_WHY_NOT

_AOT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from pydiffgen.kernels.knn_bound_tile import bound_tile_kernel
for rows, w in (("*bf16", 2.0), ("*bf16", 1.0), ("*i8", 2.0)):
    sig = {"q_ptr": rows, "x_ptr": rows}
    sig.update({n: "*fp32" for n in ("a_ptr", "p_ptr", "dx_ptr", "A_ptr", "B_ptr", "lo_ptr",
                                     "hi_ptr")})
    sig.update({n: "i32" for n in ("M", "N", "D", "stride_qm", "stride_xn", "stride_om")})
    consts = {"W": w, "CG": 1e-7, "CA": 3e-7, "ETA": 2.0**-100, "SAFETY": 1 + 64 * 2.0**-24,
              "INPUT_PRECISION": "ieee", "IS_INT8": rows == "*i8", "BLOCK_M": 128,
              "BLOCK_N": 128, "BLOCK_D": 64}
    sig.update({n: "constexpr" for n in consts})
    src = ASTSource(fn=bound_tile_kernel, signature=sig, constexprs=consts)
    opts = {"num_warps": 8, "num_stages": 3}
    assert triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts).asm["cubin"]
print("compiled")
"""


@pytest.mark.skipif(TRITON_WHY_NOT is not None, reason=str(TRITON_WHY_NOT))
def test_bound_tile_compiles_for_hopper_without_gpu():
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    res = subprocess.run([sys.executable, "-c", _AOT], capture_output=True, text=True,
                         env=env, timeout=600)
    if res.returncode and ("ImportError" in res.stderr or "TypeError" in res.stderr):
        pytest.skip(f"this Triton's ahead-of-time API differs: {res.stderr[-300:]}")
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-3000:]
