// Batched symmetric eigendecomposition with cuSOLVER (pydiffgen.ops.eigh, backend "cusolver").
//
//   A_b = V_b diag(w_b) V_bᵀ for b = 0 … batch−1, w ascending, V orthonormal.
//
// Routines, by matrix size n:
//   n ≤ 32 (kSyevjBatchedMaxN): cusolverDn{S,D}syevjBatched — one-sided Jacobi, all matrices
//       in one launch; tolerance = machine precision of the type, up to 100 sweeps, sorted.
//   n > 32, cuSOLVER ≥ 11.7 (CUDA ≥ 12.8; CUDA 13 ships cuSOLVER 12): cusolverDnXsyevBatched —
//       one call for the whole batch (Householder tridiagonalisation + QR per matrix).
//   n > 32, older cuSOLVER: cusolverDn{S,D}syevd (divide and conquer) per matrix, in a loop on
//       the one stream (the workspace is reused, so the calls are serialised).
//
// Numerics: computed in the input precision (float or double; no TF32 or mixed precision in
// cuSOLVER's eigensolvers). Layout: torch's row-major n×n block read as column-major is its
// transpose; for a symmetric matrix that is the same matrix, and the row-major lower triangle
// (what torch.linalg.eigh reads) is the column-major upper one, hence CUBLAS_FILL_MODE_UPPER.
// The eigenvectors come back as the columns of a column-major matrix, i.e. the rows of the
// row-major block: the binding transposes. Handles: one per device and host thread, created on
// first use and kept (as torch does); its stream is set on every call.

#include <cusolverDn.h>

#include <unordered_map>

#include "eigh.h"

namespace pydiffgen {
namespace cuda {
namespace {

#if defined(CUSOLVER_VERSION) && CUSOLVER_VERSION >= 11700
constexpr bool kHasXsyevBatched = true;
#else
constexpr bool kHasXsyevBatched = false;
#endif

const char* status_message(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return nullptr;
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "cuSOLVER: not initialised";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "cuSOLVER: allocation failed";
    case CUSOLVER_STATUS_INVALID_VALUE: return "cuSOLVER: invalid value";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "cuSOLVER: architecture mismatch";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "cuSOLVER: execution failed";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "cuSOLVER: internal error";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "cuSOLVER: not supported";
    default: return "cuSOLVER: error";
  }
}

// The calling thread's handle for the current device, bound to `stream`.
const char* handle_for(cudaStream_t stream, cusolverDnHandle_t* out) {
  thread_local std::unordered_map<int, cusolverDnHandle_t> handles;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return "cudaGetDevice failed";
  auto it = handles.find(device);
  if (it == handles.end()) {
    cusolverDnHandle_t h = nullptr;
    if (const char* e = status_message(cusolverDnCreate(&h))) return e;
    it = handles.emplace(device, h).first;
  }
  if (const char* e = status_message(cusolverDnSetStream(it->second, stream))) return e;
  *out = it->second;
  return nullptr;
}

// RAII owners of the per-call parameter objects.
struct SyevjParams {
  syevjInfo_t p = nullptr;
  ~SyevjParams() { if (p) cusolverDnDestroySyevjInfo(p); }
};
struct XParams {
  cusolverDnParams_t p = nullptr;
  ~XParams() { if (p) cusolverDnDestroyParams(p); }
};

const char* make_syevj_params(bool is_double, SyevjParams* params) {
  if (const char* e = status_message(cusolverDnCreateSyevjInfo(&params->p))) return e;
  // tolerance: the unit roundoff of the type; sweeps: ample for n ≤ 32; sorted ascending
  const double tol = is_double ? 1.1102230246251565e-16 : 5.9604645e-08;
  if (const char* e = status_message(cusolverDnXsyevjSetTolerance(params->p, tol))) return e;
  if (const char* e = status_message(cusolverDnXsyevjSetMaxSweeps(params->p, 100))) return e;
  return status_message(cusolverDnXsyevjSetSortEig(params->p, 1));
}

constexpr cusolverEigMode_t kJobz = CUSOLVER_EIG_MODE_VECTOR;
constexpr cublasFillMode_t kUplo = CUBLAS_FILL_MODE_UPPER;  // = row-major lower, see above

}  // namespace

const char* eigh_path(int64_t n) {
  if (n <= kSyevjBatchedMaxN) return "syevjBatched";
  return kHasXsyevBatched ? "XsyevBatched" : "syevd";
}

const char* eigh_workspace(bool is_double, int64_t n, int64_t batch, std::size_t* device_bytes,
                           std::size_t* host_bytes, cudaStream_t stream) {
  *device_bytes = 0;
  *host_bytes = 0;
  if (n <= 0 || batch <= 0) return nullptr;
  if (n > 2147483647 || batch > 2147483647) return "matrix size or batch exceeds int32";
  cusolverDnHandle_t h = nullptr;
  if (const char* e = handle_for(stream, &h)) return e;
  const int ni = static_cast<int>(n);
  int lwork = 0;
  if (n <= kSyevjBatchedMaxN) {
    SyevjParams params;
    if (const char* e = make_syevj_params(is_double, &params)) return e;
    const int b = static_cast<int>(batch);
    cusolverStatus_t s = is_double
        ? cusolverDnDsyevjBatched_bufferSize(h, kJobz, kUplo, ni, nullptr, ni, nullptr, &lwork,
                                             params.p, b)
        : cusolverDnSsyevjBatched_bufferSize(h, kJobz, kUplo, ni, nullptr, ni, nullptr, &lwork,
                                             params.p, b);
    if (const char* e = status_message(s)) return e;
    *device_bytes = static_cast<std::size_t>(lwork) * (is_double ? 8 : 4);
    return nullptr;
  }
#if defined(CUSOLVER_VERSION) && CUSOLVER_VERSION >= 11700
  XParams params;
  if (const char* e = status_message(cusolverDnCreateParams(&params.p))) return e;
  const cudaDataType t = is_double ? CUDA_R_64F : CUDA_R_32F;
  return status_message(cusolverDnXsyevBatched_bufferSize(h, params.p, kJobz, kUplo, n, t,
                                                          nullptr, n, t, nullptr, t,
                                                          device_bytes, host_bytes, batch));
#else
  cusolverStatus_t s = is_double
      ? cusolverDnDsyevd_bufferSize(h, kJobz, kUplo, ni, nullptr, ni, nullptr, &lwork)
      : cusolverDnSsyevd_bufferSize(h, kJobz, kUplo, ni, nullptr, ni, nullptr, &lwork);
  if (const char* e = status_message(s)) return e;
  *device_bytes = static_cast<std::size_t>(lwork) * (is_double ? 8 : 4);
  return nullptr;
#endif
}

const char* eigh_run(bool is_double, void* A, void* W, int* info, int64_t n, int64_t batch,
                     void* device_work, std::size_t device_bytes, void* host_work,
                     std::size_t host_bytes, cudaStream_t stream) {
  if (n <= 0 || batch <= 0) return nullptr;
  if (n > 2147483647 || batch > 2147483647) return "matrix size or batch exceeds int32";
  cusolverDnHandle_t h = nullptr;
  if (const char* e = handle_for(stream, &h)) return e;
  const int ni = static_cast<int>(n);
  const std::size_t item = is_double ? 8 : 4;
  if (n <= kSyevjBatchedMaxN) {
    SyevjParams params;
    if (const char* e = make_syevj_params(is_double, &params)) return e;
    const int lwork = static_cast<int>(device_bytes / item);
    const int b = static_cast<int>(batch);
    cusolverStatus_t s = is_double
        ? cusolverDnDsyevjBatched(h, kJobz, kUplo, ni, static_cast<double*>(A), ni,
                                  static_cast<double*>(W), static_cast<double*>(device_work),
                                  lwork, info, params.p, b)
        : cusolverDnSsyevjBatched(h, kJobz, kUplo, ni, static_cast<float*>(A), ni,
                                  static_cast<float*>(W), static_cast<float*>(device_work),
                                  lwork, info, params.p, b);
    return status_message(s);
  }
#if defined(CUSOLVER_VERSION) && CUSOLVER_VERSION >= 11700
  XParams params;
  if (const char* e = status_message(cusolverDnCreateParams(&params.p))) return e;
  const cudaDataType t = is_double ? CUDA_R_64F : CUDA_R_32F;
  return status_message(cusolverDnXsyevBatched(h, params.p, kJobz, kUplo, n, t, A, n, t, W, t,
                                               device_work, device_bytes, host_work, host_bytes,
                                               info, batch));
#else
  (void)host_work;
  (void)host_bytes;
  const int lwork = static_cast<int>(device_bytes / item);
  for (int64_t b = 0; b < batch; ++b) {
    char* Ab = static_cast<char*>(A) + b * n * n * item;
    char* Wb = static_cast<char*>(W) + b * n * item;
    cusolverStatus_t s = is_double
        ? cusolverDnDsyevd(h, kJobz, kUplo, ni, reinterpret_cast<double*>(Ab), ni,
                           reinterpret_cast<double*>(Wb), static_cast<double*>(device_work),
                           lwork, info + b)
        : cusolverDnSsyevd(h, kJobz, kUplo, ni, reinterpret_cast<float*>(Ab), ni,
                           reinterpret_cast<float*>(Wb), static_cast<float*>(device_work),
                           lwork, info + b);
    if (const char* e = status_message(s)) return e;
  }
  return nullptr;
#endif
}

}  // namespace cuda
}  // namespace pydiffgen
