#!/usr/bin/env bash
# make wheel: dist/pydiffgen-*.whl built against PYTHON's torch, with the CUDA kernels for
# TORCH_CUDA_ARCH_LIST (default 8.0;9.0a: A100, H100/H200) where that torch has CUDA and
# nvcc exists, the CPU extension otherwise; then installs it into a fresh venv (sharing
# PYTHON's site-packages, so torch is not downloaded again) and reports its backends.
# Usage: bash tools/wheel.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:-python3}"
if "$PY" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)" \
    && command -v nvcc >/dev/null; then
  . tools/cuda_env.sh build/cuda-links "$PY"
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0a}"
  echo "== CUDA wheel (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
else
  echo "== CPU wheel (this torch has no CUDA or nvcc is missing)"
fi
rm -rf dist
t0=$(date +%s)
PYDIFFGEN_BUILD_EXT=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  "$PY" -m pip wheel -q --no-build-isolation --no-deps -w dist .
echo "built $(ls dist/*.whl) ($(du -k dist/*.whl | cut -f1) KB) in $(( $(date +%s) - t0 )) s"

venv="$(mktemp -d)/venv"
"$PY" -m venv --system-site-packages "$venv"
"$venv/bin/python" -m pip install -q --no-deps dist/pydiffgen-*.whl
(cd "$venv" && "$venv/bin/python" - <<'PY'
import json, pydiffgen
from pydiffgen import _native
print("installed", pydiffgen.__file__)
print("extension loaded:", _native.LOADED, "CUDA kernels:", _native.has_cuda_ops())
print(json.dumps(pydiffgen.available_backends(), indent=1))
PY
)
rm -rf "$(dirname "$venv")"
