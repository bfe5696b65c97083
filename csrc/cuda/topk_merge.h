// Raw-pointer launcher of the CUDA topk_merge kernel (csrc/cuda/topk_merge.cu); no torch
// types, so the .cu compiles with plain nvcc. The torch binding is topk_merge_binding.cpp.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace pydiffgen {
namespace cuda {

// Largest k the kernel handles: its shared-memory buffers hold 2 * 1024 (value, index).
constexpr int64_t kTopkMergeMaxK = 1024;

// values/indices [M, k], tile [M, T] (all contiguous, on the device), out_* [M, k].
// Returns cudaErrorInvalidValue for k > kTopkMergeMaxK, else the launch's error.
template <typename scalar_t>
cudaError_t topk_merge_launch(const scalar_t* values, const int64_t* indices,
                              const scalar_t* tile, scalar_t* out_values, int64_t* out_indices,
                              int64_t M, int64_t k, int64_t T, int64_t offset, bool largest,
                              cudaStream_t stream);

}  // namespace cuda
}  // namespace pydiffgen
