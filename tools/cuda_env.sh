# Sourced by tools/gpu_check.sh and benchmarks/gpu.sh before building the CUDA extension:
# CUDA_HOME from nvcc, and, where the toolkit lacks cuSOLVER / cuBLAS (an nvcc-only
# install), the headers and libraries of torch's pip CUDA wheels (site-packages/nvidia/*),
# whose libraries carry only versioned names (libcusolver.so.12): unversioned links for
# the linker's -lcusolver -lcublas go in $1 (a scratch folder).
# Usage: . tools/cuda_env.sh SCRATCH_DIR [PYTHON]
_scratch="$1"; _py="${2:-python}"
if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
  CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
  [ -e /usr/local/cuda/include/cuda_runtime.h ] && CUDA_HOME=/usr/local/cuda
  export CUDA_HOME
fi
if [ -n "${CUDA_HOME:-}" ] && [ ! -e "$CUDA_HOME/include/cusolverDn.h" ]; then
  _nv="$("$_py" -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null)"
  _inc="$(dirname "$(ls "$_nv"/*/include/cusolverDn.h 2>/dev/null | head -1)" 2>/dev/null)"
  if [ -n "$_inc" ]; then
    _lib="$(dirname "$_inc")/lib"
    mkdir -p "$_scratch"
    for _l in cusolver cublas; do
      _f="$(ls "$_lib"/lib$_l.so.* 2>/dev/null | head -1)"
      [ -n "$_f" ] && ln -sf "$_f" "$_scratch/lib$_l.so"
    done
    export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -I$_inc"
    export CPATH="$_inc${CPATH:+:$CPATH}"
    export LIBRARY_PATH="$_scratch:$_lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
    echo "cuda_env: cuSOLVER/cuBLAS from $_inc (links in $_scratch)"
  fi
fi
