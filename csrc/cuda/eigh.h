// Raw-pointer interface of the batched symmetric eigensolver (csrc/cuda/eigh.cu); no torch
// and no cuSOLVER types, so the torch binding (eigh_binding.cpp) needs neither.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace pydiffgen {
namespace cuda {

// syevjBatched (batched Jacobi) handles matrices up to this size.
constexpr int64_t kSyevjBatchedMaxN = 32;

// Which cuSOLVER routine eigh_run uses for n: "syevjBatched", "XsyevBatched" or "syevd".
const char* eigh_path(int64_t n);

// Workspace bytes on the device and on the host for `batch` n×n matrices (float, or
// double when is_double). Returns nullptr on success, else a message.
const char* eigh_workspace(bool is_double, int64_t n, int64_t batch, std::size_t* device_bytes,
                           std::size_t* host_bytes, cudaStream_t stream);

// A: batch contiguous n×n symmetric matrices (only the triangle that is the lower one in
// row-major order is read), overwritten with the eigenvectors: row j of matrix b (row-major)
// is the eigenvector of W[b, j]. W: [batch, n] eigenvalues, ascending. info: [batch] ints
// on the device, 0 = converged. Workspaces as sized by eigh_workspace. Returns nullptr on
// success, else a message. Enqueued on `stream`.
const char* eigh_run(bool is_double, void* A, void* W, int* info, int64_t n, int64_t batch,
                     void* device_work, std::size_t device_bytes, void* host_work,
                     std::size_t host_bytes, cudaStream_t stream);

}  // namespace cuda
}  // namespace pydiffgen
