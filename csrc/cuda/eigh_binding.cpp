// Torch binding of the batched cuSOLVER eigensolver (eigh.cu). Compiled only in CUDA builds
// of pydiffgen._C (setup.py adds csrc/cuda/*.cpp with the .cu files; it links -lcusolver).
// A [B, n, n] float/double -> (eigenvalues [B, n] ascending, eigenvectors [B, n, n] columns).

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "eigh.h"

namespace pydiffgen {
namespace {

std::tuple<at::Tensor, at::Tensor> eigh_cuda(const at::Tensor& A) {
  TORCH_CHECK(A.is_cuda(), "eigh (cuSOLVER): A must be a CUDA tensor");
  TORCH_CHECK(A.dim() == 3 && A.size(1) == A.size(2),
              "eigh (cuSOLVER): A must be [B, n, n], got ", A.sizes());
  TORCH_CHECK(A.scalar_type() == at::kFloat || A.scalar_type() == at::kDouble,
              "eigh (cuSOLVER): A must be float32 or float64, got ", A.scalar_type());
  const c10::cuda::CUDAGuard guard(A.device());
  const bool is_double = A.scalar_type() == at::kDouble;
  // cuSOLVER overwrites its input with the eigenvectors: work on a contiguous copy
  at::Tensor V = A.contiguous().clone();
  const int64_t B = V.size(0), n = V.size(1);
  at::Tensor w = at::empty({B, n}, V.options());
  if (B == 0 || n == 0) return {w, V};
  at::Tensor info = at::zeros({B}, V.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  std::size_t device_bytes = 0, host_bytes = 0;
  const char* err = cuda::eigh_workspace(is_double, n, B, &device_bytes, &host_bytes, stream);
  TORCH_CHECK(err == nullptr, "eigh (cuSOLVER ", cuda::eigh_path(n), "): ", err);
  at::Tensor device_work = at::empty({static_cast<int64_t>(std::max<std::size_t>(device_bytes, 1))},
                                     V.options().dtype(at::kByte));
  std::vector<char> host_work(std::max<std::size_t>(host_bytes, 1));
  err = cuda::eigh_run(is_double, V.data_ptr(), w.data_ptr(), info.data_ptr<int>(), n, B,
                       device_work.data_ptr(), device_bytes, host_work.data(), host_bytes,
                       stream);
  TORCH_CHECK(err == nullptr, "eigh (cuSOLVER ", cuda::eigh_path(n), "): ", err);
  // one host sync: report matrices the solver did not converge on (info > 0) or bad
  // arguments (info < 0) instead of returning garbage
  const at::Tensor info_cpu = info.cpu();
  const int* inf = info_cpu.const_data_ptr<int>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(inf[b] == 0, "eigh (cuSOLVER ", cuda::eigh_path(n), "): info = ", inf[b],
                " for matrix ", b, inf[b] > 0 ? " (did not converge)" : " (invalid argument)");
  }
  // column-major eigenvectors = rows of the row-major block: transpose to columns
  return {w, V.transpose(1, 2).contiguous()};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffgen, CUDA, m) {
  m.impl("eigh", &eigh_cuda);
}

}  // namespace pydiffgen
