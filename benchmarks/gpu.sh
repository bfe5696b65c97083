#!/usr/bin/env bash
# The script for the GPU machine, in two stages that each fit one command (≤ 10 minutes,
# starting the machine included) by construction: every step runs under `timeout` with
# its own slice of the stage's limit, and the slices add up to less than the limit.
#   bash benchmarks/gpu.sh check   # environment, build (all cores), pytest -m gpu: ≤ 240 s
#   bash benchmarks/gpu.sh bench   # every GPU benchmark script, each in its slice: ≤ 360 s
#   bash benchmarks/gpu.sh --plan  # (any machine) the steps, their slices and the sums
# Results go under $OUT (or benchmarks/results): env.txt, build.log, pytest_gpu.txt,
# bench.txt (every case's line as it finishes: a cut-off run still reports), <bench>.json,
# summary.json and summary.txt. The machine has no network: nothing is installed but this
# package (--no-deps). Exit status 1 when a step fails or runs out of its slice.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results}"
CHECK_LIMIT=240
BENCH_LIMIT=360
# step: slice in seconds (the build: a 16-core H100 machine builds the extension in about
# a minute and a half; a bench slice bounds the whole script at its default sizes)
CHECK_STEPS=("env:10" "build:150" "pytest_gpu:70")
BENCH_STEPS=("bench_topk:30" "bench_knn:45" "bench_empirical:40" "bench_blocks:40"
             "bench_gaussian:25" "bench_jacobian:35" "bench_audit:30" "bench_train:45"
             "bench_distributed:25" "summary:10")

plan() {  # plan NAME LIMIT STEP...
  local name=$1 limit=$2 total=0
  shift 2
  echo "stage $name (limit $limit s)"
  for s in "$@"; do
    printf "  %-18s %4d s  %s\n" "${s%%:*}" "${s##*:}" "$(what "${s%%:*}")"
    total=$((total + ${s##*:}))
  done
  printf "  %-18s %4d s  (%s)\n" "total" "$total" \
    "$([ "$total" -le "$limit" ] && echo "fits $limit s" || echo "OVER $limit s")"
  [ "$total" -le "$limit" ]
}

what() {  # the sizes a step runs at
  case "$1" in
    env) echo "python, torch, CUDA, Triton versions; the GPU's name" ;;
    build) echo "pip install -e . (PYDIFFGEN_BUILD_EXT=1, MAX_JOBS=nproc, arch $ARCH)" ;;
    pytest_gpu) echo "pytest -m gpu: $(grep -rl 'mark.gpu' tests | wc -l | tr -d ' ') files" ;;
    summary) echo "summary.json / summary.txt from the benches' JSON" ;;
    bench_*) sed -n '1,/"""$/p' "benchmarks/$1.py" | sed -n '2,3p' | tr -s ' \n' ' ' \
               | cut -c1-90 ;;
  esac
}

slice() {  # slice STEP...: seconds of STEP in its list
  local want=$1
  shift
  for s in "$@"; do [ "${s%%:*}" = "$want" ] && echo "${s##*:}"; done
}

ARCH="${TORCH_CUDA_ARCH_LIST:-9.0a}"
stage="${1:---plan}"
if [ "$stage" = "--plan" ]; then
  plan check "$CHECK_LIMIT" "${CHECK_STEPS[@]}"; ok=$?
  plan bench "$BENCH_LIMIT" "${BENCH_STEPS[@]}" && exit $ok
  exit 1
fi

mkdir -p "$OUT_DIR"
export TORCH_CUDA_ARCH_LIST="$ARCH"
export PYDIFFGEN_BENCH_OUT="$OUT_DIR"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PYTHONUNBUFFERED=1
status=0

run() {  # run STEP LOG CMD...: CMD under the step's slice; its output to the terminal and LOG
  local step=$1 log=$2 t0=$SECONDS rc
  shift 2
  local s
  s=$(slice "$step" "${CHECK_STEPS[@]}" "${BENCH_STEPS[@]}")
  echo "== $step (slice $s s)"
  timeout -k 5 "$s" "$@" 2>&1 | tee -a "$OUT_DIR/$log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 124 ] && echo "!! $step ran out of its $s s slice"
  [ "$rc" -eq 0 ] || status=1
  echo "-- $step: exit $rc in $((SECONDS - t0)) s" | tee -a "$OUT_DIR/$log"
}

case "$stage" in
  check)
    : > "$OUT_DIR/env.txt"
    run env env.txt python - <<'PY'
import platform, shutil, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
print("nvcc", shutil.which("nvcc"))
try:
    import triton; print("triton", triton.__version__)
except ImportError as e:
    print("triton missing:", e)
PY
    . tools/cuda_env.sh build/cuda-links python >> "$OUT_DIR/env.txt"  # no pipe: it exports
    PYDIFFGEN_BUILD_EXT=1 run build build.log \
      python -m pip install --no-build-isolation --no-deps -e .
    python -c "import json, pydiffgen; print(json.dumps(pydiffgen.available_backends()))" \
      >> "$OUT_DIR/env.txt" 2>&1
    run pytest_gpu pytest_gpu.txt python -m pytest -m gpu -q -p no:cacheprovider tests
    ;;
  bench)
    for s in "${BENCH_STEPS[@]}"; do
      name=${s%%:*}
      [ "$name" = summary ] && continue
      run "$name" bench.txt python benchmarks/run_all.py --device cuda --only "$name"
      cp "$OUT_DIR/summary.json" "$OUT_DIR/summary_$name.json" 2>/dev/null
    done
    run summary summary.txt python benchmarks/run_all.py --collect
    ;;
  *)
    echo "usage: bash benchmarks/gpu.sh check | bench | --plan" >&2
    exit 2
    ;;
esac
exit $status
