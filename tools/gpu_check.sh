#!/usr/bin/env bash
# make gpu-check: the GPU machines' versions on a machine without a GPU. In a venv with
# Python 3.12 (or the nearest found), torch 2.11 (PyPI's Linux x86_64 build: CUDA 13.0)
# and Triton 3.6: compile every Triton kernel for sm_90 / sm_80, every .cu to a cubin,
# build the full CUDA extension as a wheel (TORCH_CUDA_ARCH_LIST="8.0;9.0a": the link
# step runs), install it and import pydiffgen._C with its CUDA kernels (no GPU needed).
# The wheels are downloaded once into $GPU_VENV/wheels and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${GPU_VENV:-$HOME/.cache/pydiffgen/gpu-venv}"
TORCH="${GPU_TORCH:-torch==2.11.0}"
TRITON="${GPU_TRITON:-triton==3.6.0}"
REQS=("$TORCH" "$TRITON" numpy "setuptools>=69,<82" wheel ninja pytest safetensors tqdm
      matplotlib pillow scikit-learn scikit-image)
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  PY="${GPU_PYTHON:-$(command -v python3.12 || command -v python3.13 || command -v python3.11 \
      || command -v python3)}"
  step "venv $VENV with $("$PY" --version)"
  "$PY" -m venv "$VENV"
fi
PY="$VENV/bin/python"
step "download (${REQS[*]}) into $VENV/wheels"
"$PY" -m pip download -q --progress-bar off -d "$VENV/wheels" "${REQS[@]}"
echo "wheels: $(du -sm "$VENV/wheels" | cut -f1) MB"
step "install"
"$PY" -m pip install -q --no-index --find-links "$VENV/wheels" "${REQS[@]}"
"$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch',
torch.__version__, 'CUDA', torch.version.cuda, 'triton', triton.__version__)"

step "CUDA sources: nvcc -cubin -Xptxas -v for sm_90a and sm_80"
"$PY" tools/compile_cuda.py --json "$VENV/compile_cuda.json"

step "CUDA extension wheel (PYDIFFGEN_BUILD_EXT=1, TORCH_CUDA_ARCH_LIST=8.0;9.0a)"
. tools/cuda_env.sh "$VENV/cuda-links" "$PY"
rm -rf "$VENV/dist"
b0=$(date +%s)
PYDIFFGEN_BUILD_EXT=1 TORCH_CUDA_ARCH_LIST="8.0;9.0a" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$VENV/dist" .
echo "extension built in $(( $(date +%s) - b0 )) s: $(ls "$VENV"/dist/*.whl)"
"$PY" -m pip install -q --force-reinstall --no-deps "$VENV"/dist/pydiffgen-*.whl

step "import pydiffgen._C (CUDA kernels registered, no GPU)"
(cd "$VENV" && "$PY" - <<'PY'
import json, torch, pydiffgen
from pydiffgen import _C, _native
assert _C.WITH_CUDA == 1, "pydiffgen._C was built without its CUDA kernels"
for op in ("topk_merge", "eigh"):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"pydiffgen::{op}", "CUDA"), op
print("pydiffgen", pydiffgen.__file__, "_C", _C.__file__, "WITH_CUDA", _C.WITH_CUDA)
print(json.dumps(pydiffgen.available_backends(), indent=1))
PY
)

step "Triton $TRITON: compile every kernel for sm_90 and sm_80 (the installed package)"
(cd "$VENV" && TRITON_CACHE_DIR="$VENV/triton-cache" "$PY" "$OLDPWD/tools/compile_triton.py" \
  --json "$VENV/compile_triton.json")
step "gpu-check passed"
