// CPU kernel of pydiffgen::topk_merge (schema in csrc/pydiffgen_C.cpp).
//
// Semantics (= pydiffgen.ops.reference.topk_merge): merge the scores tile[M, T] of keys
// offset .. offset+T-1 into the running best values/indices [M, k] and return the best k
// of the union, best first (ascending, or descending when `largest`), where "better" is
// the lexicographic order on (value, key index): a smaller (larger) value wins, and equal
// values are won by the lower key index. Empty running slots (±inf, index -1) are ordinary
// elements of that order, so they beat any tile score equal to ±inf.
//
// Algorithm, per row (rows in parallel with at::parallel_for / OpenMP):
//   1. build a k-sized heap whose root is the WORST of the running list (O(k));
//   2. stream the tile in blocks of 64: a vectorized pre-check skips blocks in which no
//      score can even tie the root (most blocks, once the list is good); in the others a
//      score enters only if it beats the root, replacing it and sifting down (O(log k));
//   3. sort_heap gives the k best, best first.
//   Cost O(k + T + A log k + k log k) with A <= T accepted scores: O(T log k) worst case,
//   never a sort of the whole k + T union. The running list need not be sorted.
//
// Numerics: only comparisons and copies, so results are exact in the values' dtype
// (float32 or float64; a tile of another dtype is converted to it first, as the
// reference does). Inputs are assumed NaN-free (the public op rejects NaN); a NaN cannot
// make this kernel read or write out of bounds, it only makes that row's order undefined.
// Non-contiguous inputs are made contiguous; outputs are new contiguous tensors.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../topk_merge_args.h"

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

namespace pydiffgen {
namespace {

template <typename scalar_t, bool LARGEST>
struct Better {
  // true when (va, ia) ranks strictly before (vb, ib)
  inline bool operator()(scalar_t va, int64_t ia, scalar_t vb, int64_t ib) const {
    if (LARGEST ? (va > vb) : (va < vb)) return true;
    return va == vb && ia < ib;
  }
};

// Max-heap on "worseness": heap[0] is the worst element kept so far.
template <typename scalar_t, bool LARGEST>
inline void sift_down(scalar_t* hv, int64_t* hi, int64_t n, int64_t pos) {
  const Better<scalar_t, LARGEST> better;
  scalar_t v = hv[pos];
  int64_t i = hi[pos];
  while (true) {
    int64_t child = 2 * pos + 1;
    if (child >= n) break;
    // pick the worse child
    if (child + 1 < n && better(hv[child], hi[child], hv[child + 1], hi[child + 1])) ++child;
    // stop when the sifted element is at least as bad as the worse child
    if (!better(v, i, hv[child], hi[child])) break;
    hv[pos] = hv[child];
    hi[pos] = hi[child];
    pos = child;
  }
  hv[pos] = v;
  hi[pos] = i;
}

constexpr int64_t kBlock = 64;  // scores pre-checked at once against the current worst

template <typename scalar_t, bool LARGEST>
void merge_rows(const scalar_t* values, const int64_t* indices, const scalar_t* tile,
                scalar_t* out_v, int64_t* out_i, int64_t M, int64_t k, int64_t T,
                int64_t offset) {
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, k + T));
  at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
    const Better<scalar_t, LARGEST> better;
    std::vector<std::pair<scalar_t, int64_t>> sorted(k);
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* hv = out_v + r * k;  // the heap lives in the output row
      int64_t* hi = out_i + r * k;
      std::copy(values + r * k, values + (r + 1) * k, hv);
      std::copy(indices + r * k, indices + (r + 1) * k, hi);
      for (int64_t p = k / 2 - 1; p >= 0; --p) sift_down<scalar_t, LARGEST>(hv, hi, k, p);

      const scalar_t* row = tile + r * T;
      scalar_t worst_v = hv[0];
      int64_t worst_i = hi[0];
      for (int64_t b0 = 0; b0 < T; b0 += kBlock) {
        const int64_t b1 = std::min(T, b0 + kBlock);
        // vectorizable pre-check: skip the block when no score can even tie the worst
        bool any = false;
        for (int64_t j = b0; j < b1; ++j) {
          any |= LARGEST ? (row[j] >= worst_v) : (row[j] <= worst_v);
        }
        if (!any) continue;
        for (int64_t j = b0; j < b1; ++j) {
          const scalar_t v = row[j];
          if (better(v, offset + j, worst_v, worst_i)) {
            hv[0] = v;
            hi[0] = offset + j;
            sift_down<scalar_t, LARGEST>(hv, hi, k, 0);
            worst_v = hv[0];
            worst_i = hi[0];
          }
        }
      }
      // heap -> best first
      for (int64_t j = 0; j < k; ++j) sorted[j] = {hv[j], hi[j]};
      std::sort(sorted.begin(), sorted.end(), [&](const auto& a, const auto& b) {
        return better(a.first, a.second, b.first, b.second);
      });
      for (int64_t j = 0; j < k; ++j) {
        hv[j] = sorted[j].first;
        hi[j] = sorted[j].second;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> topk_merge_cpu(const at::Tensor& values,
                                                  const at::Tensor& indices,
                                                  const at::Tensor& tile, int64_t offset,
                                                  bool largest) {
  check_topk_merge_args(values, indices, tile, "C++");
  TORCH_CHECK(values.device().is_cpu() && indices.device().is_cpu() && tile.device().is_cpu(),
              "topk_merge (C++ CPU): every input must be on the CPU");

  const auto v = values.contiguous();
  const auto i = indices.contiguous();
  const auto t = tile.to(values.scalar_type()).contiguous();
  const int64_t M = v.size(0), k = v.size(1), T = t.size(1);
  auto out_v = at::empty({M, k}, v.options());
  auto out_i = at::empty({M, k}, i.options());
  if (M == 0 || k == 0) return {out_v, out_i};

  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "topk_merge_cpu", [&] {
    if (largest) {
      merge_rows<scalar_t, true>(v.const_data_ptr<scalar_t>(), i.const_data_ptr<int64_t>(),
                                 t.const_data_ptr<scalar_t>(), out_v.mutable_data_ptr<scalar_t>(),
                                 out_i.mutable_data_ptr<int64_t>(), M, k, T, offset);
    } else {
      merge_rows<scalar_t, false>(v.const_data_ptr<scalar_t>(), i.const_data_ptr<int64_t>(),
                                  t.const_data_ptr<scalar_t>(), out_v.mutable_data_ptr<scalar_t>(),
                                  out_i.mutable_data_ptr<int64_t>(), M, k, T, offset);
    }
  });
  return {out_v, out_i};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffgen, CPU, m) {
  m.impl("topk_merge", &topk_merge_cpu);
}

}  // namespace pydiffgen
