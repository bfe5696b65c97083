// Torch binding of the CUDA topk_merge kernel (topk_merge.cu). Compiled only in CUDA builds
// of pydiffgen._C (setup.py adds csrc/cuda/*.cpp with the .cu files): it needs a CUDA torch.
// Checks and conversions mirror csrc/cpu/topk_merge.cpp; see topk_merge.cu for the kernel.

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../topk_merge_args.h"

#include <tuple>

#include "topk_merge.h"

namespace pydiffgen {
namespace {

std::tuple<at::Tensor, at::Tensor> topk_merge_cuda(const at::Tensor& values,
                                                   const at::Tensor& indices,
                                                   const at::Tensor& tile, int64_t offset,
                                                   bool largest) {
  check_topk_merge_args(values, indices, tile, "CUDA");
  TORCH_CHECK(values.is_cuda() && indices.device() == values.device() &&
                  tile.device() == values.device(),
              "topk_merge (CUDA): every input must be on one CUDA device");
  TORCH_CHECK(values.size(1) <= cuda::kTopkMergeMaxK, "topk_merge (CUDA): k=", values.size(1),
              " exceeds the kernel's limit ", cuda::kTopkMergeMaxK);

  const c10::cuda::CUDAGuard guard(values.device());
  const auto v = values.contiguous();
  const auto i = indices.contiguous();
  const auto t = tile.to(values.scalar_type()).contiguous();
  const int64_t M = v.size(0), k = v.size(1), T = t.size(1);
  auto out_v = at::empty({M, k}, v.options());
  auto out_i = at::empty({M, k}, i.options());
  if (M == 0 || k == 0) return {out_v, out_i};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  cudaError_t err = cudaSuccess;
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "topk_merge_cuda", [&] {
    err = cuda::topk_merge_launch<scalar_t>(
        v.const_data_ptr<scalar_t>(), i.const_data_ptr<int64_t>(), t.const_data_ptr<scalar_t>(),
        out_v.mutable_data_ptr<scalar_t>(), out_i.mutable_data_ptr<int64_t>(), M, k, T, offset,
        largest, stream);
  });
  TORCH_CHECK(err == cudaSuccess, "topk_merge (CUDA) launch failed: ", cudaGetErrorString(err));
  return {out_v, out_i};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffgen, CUDA, m) {
  m.impl("topk_merge", &topk_merge_cuda);
}

}  // namespace pydiffgen
