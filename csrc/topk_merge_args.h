// Argument checks of pydiffgen::topk_merge shared by the CPU and CUDA bindings.
#pragma once

#include <ATen/core/Tensor.h>

namespace pydiffgen {

// values/indices [M, k] (float32|float64, int64), tile [M, T]; `where` names the backend.
inline void check_topk_merge_args(const at::Tensor& values, const at::Tensor& indices,
                                  const at::Tensor& tile, const char* where) {
  TORCH_CHECK(values.dim() == 2, "topk_merge: values must be [M, k], got ", values.sizes());
  TORCH_CHECK(tile.dim() == 2, "topk_merge: tile must be [M, T], got ", tile.sizes());
  TORCH_CHECK(indices.sizes() == values.sizes(), "topk_merge: indices ", indices.sizes(),
              " must have the shape of values ", values.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong, "topk_merge: indices must be int64, got ",
              indices.scalar_type());
  TORCH_CHECK(tile.size(0) == values.size(0), "topk_merge: tile has ", tile.size(0),
              " rows but values has ", values.size(0));
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble,
              "topk_merge (", where, "): values must be float32 or float64, got ",
              values.scalar_type());
}

}  // namespace pydiffgen
