#!/usr/bin/env bash
# The one script for the GPU machine: build the CUDA extension, run the gpu tests and the
# GPU benchmarks, write results under $OUT (or benchmarks/results), print a table last.
#   bash benchmarks/gpu.sh            # on a machine with a CUDA torch, nvcc and a GPU
# The machine has no network: nothing is installed here but this package (--no-deps).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$OUT_DIR"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}"
export PYDIFFGEN_BENCH_OUT="$OUT_DIR"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
status=0

python - <<'PY' 2>&1 | tee "$OUT_DIR/env.txt"
import platform, shutil, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
print("nvcc", shutil.which("nvcc"))
try:
    import triton; print("triton", triton.__version__)
except ImportError as e:
    print("triton missing:", e)
PY

echo "== build (PYDIFFGEN_BUILD_EXT=1, CUDA arch $TORCH_CUDA_ARCH_LIST)"
t0=$(date +%s)
if PYDIFFGEN_BUILD_EXT=1 python -m pip install --no-build-isolation --no-deps -e . \
    > "$OUT_DIR/build.log" 2>&1; then
  echo "build ok in $(( $(date +%s) - t0 )) s" | tee -a "$OUT_DIR/env.txt"
else
  echo "BUILD FAILED after $(( $(date +%s) - t0 )) s; last lines:"; tail -40 "$OUT_DIR/build.log"
  status=1
fi
python -c "import json, pydiffgen; print(json.dumps(pydiffgen.available_backends(), indent=1))" \
  2>&1 | tee -a "$OUT_DIR/env.txt"

echo "== pytest -m gpu (every gpu test), then tests/ops + build tests (Triton on the GPU)"
python -m pytest -m gpu -q -p no:cacheprovider tests \
  2>&1 | tee "$OUT_DIR/pytest_gpu.txt" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
python -m pytest -m "not gpu" -q -p no:cacheprovider tests/ops tests/test_build.py \
  2>&1 | tee -a "$OUT_DIR/pytest_gpu.txt" | tail -8
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== benchmarks"
python benchmarks/run_all.py --device cuda 2>&1 \
  | tee "$OUT_DIR/bench.txt" | grep -v "^note" | tail -60
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

echo "== summary"
python - "$OUT_DIR/summary.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["runs"]:
    print(f"{r['bench']:<12} {r['status']}")
for r in d["ratios"]:
    print(f"{r['bench']:<12} {r['case']:<32} {r['ours']:<16} vs {r['peer']:<18} "
          f"x{r['speedup']:.2f}")
PY
exit $status
