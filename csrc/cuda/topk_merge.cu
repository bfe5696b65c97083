// CUDA kernel of pydiffgen::topk_merge (schema in csrc/pydiffgen_C.cpp; torch binding in
// topk_merge_binding.cpp). Device code and launcher take raw pointers: this file compiles
// with plain `nvcc -c` and needs no torch headers.
//
// Semantics (= pydiffgen.ops.reference.topk_merge): the best k of the union of the running
// list values/indices [M, k] and the tile [M, T] of keys offset .. offset+T-1, best first,
// in the lexicographic order on (value, key index): smaller (larger when `largest`) value
// first, equal values won by the lower index. Empty slots (±inf, -1) are ordinary elements.
//
// Algorithm: one block of 256 threads per row (grid-stride over rows). Shared memory holds
// a buffer of 2S (value, index) pairs, S = max(256, next_pow2(k)) <= 1024:
//   first half  = the best S elements seen so far, sorted best first (slots past the real
//                 elements hold padding that loses to everything: (worst ±inf, INT64_MAX));
//   second half = tile candidates that beat the current k-th best (the threshold),
//                 appended with a shared atomic counter while the block streams the tile
//                 256 scores at a time (coalesced loads, one compare per score).
// When the candidate half could overflow in the next window (or at the end of the row) it
// is padded, bitonic-sorted worst first, and bitonic-merged with the first half (one
// half-cleaner of stride S, then log2(S) stages on the first half only), the threshold is
// re-read, and streaming goes on. Once the list is good most scores are rejected by the
// single compare, so the cost approaches one read of the tile; the worst case (every score
// accepted) is O(T log^2 S / 256) per row. The running list is sorted on load, so it need
// not be sorted on input.
//
// Numerics: comparisons and copies only, exact in the scalar type (float or double; the
// binding converts the tile to the values' dtype as the reference does). Built without
// --use_fast_math: flush-to-zero would make distinct denormal scores compare equal. Inputs
// are assumed NaN-free (the public op rejects NaN); a NaN cannot cause out-of-bounds access.

#include <cstdint>

#ifndef PYDIFFGEN_CUDA_EMULATE
#include <cuda_runtime.h>
#include <math_constants.h>

#include "topk_merge.h"
#endif

namespace pydiffgen {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kPadIndex = INT64_MAX;

template <typename scalar_t>
__device__ __forceinline__ scalar_t pos_inf();
template <>
__device__ __forceinline__ float pos_inf<float>() { return CUDART_INF_F; }
template <>
__device__ __forceinline__ double pos_inf<double>() { return CUDART_INF; }

// true when (va, ia) ranks strictly before (vb, ib)
template <typename scalar_t, bool LARGEST>
__device__ __forceinline__ bool better(scalar_t va, int64_t ia, scalar_t vb, int64_t ib) {
  if (LARGEST ? (va > vb) : (va < vb)) return true;
  return va == vb && ia < ib;
}

// Order positions a < b: the better one first when best_first, else the worse one first.
template <typename scalar_t, bool LARGEST>
__device__ __forceinline__ void compare_swap(scalar_t* v, int64_t* id, int a, int b,
                                             bool best_first) {
  const scalar_t va = v[a], vb = v[b];
  const int64_t ia = id[a], ib = id[b];
  const bool swap = best_first ? better<scalar_t, LARGEST>(vb, ib, va, ia)
                               : better<scalar_t, LARGEST>(va, ia, vb, ib);
  if (swap) {
    v[a] = vb;
    v[b] = va;
    id[a] = ib;
    id[b] = ia;
  }
}

// Block-wide bitonic sort of n (a power of two) pairs in shared memory.
template <typename scalar_t, bool LARGEST>
__device__ void bitonic_sort(scalar_t* v, int64_t* id, int n, bool best_first) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < n / 2; t += blockDim.x) {
        const int a = 2 * t - (t & (stride - 1));
        // sub-sequences alternate direction; the last pass (size == n) sorts all one way
        const bool dir = ((a & size) == 0) == best_first;
        compare_swap<scalar_t, LARGEST>(v, id, a, a + stride, dir);
      }
      __syncthreads();
    }
  }
}

// v[0, S) sorted best first, v[S, 2S) sorted worst first (together bitonic): leave the best
// S, sorted best first, in v[0, S). Only the first half is merged after the first stage.
template <typename scalar_t, bool LARGEST>
__device__ void bitonic_merge_keep_best(scalar_t* v, int64_t* id, int S) {
  for (int t = threadIdx.x; t < S; t += blockDim.x) {
    compare_swap<scalar_t, LARGEST>(v, id, t, t + S, true);
  }
  __syncthreads();
  for (int stride = S >> 1; stride > 0; stride >>= 1) {
    for (int t = threadIdx.x; t < S / 2; t += blockDim.x) {
      const int a = 2 * t - (t & (stride - 1));
      compare_swap<scalar_t, LARGEST>(v, id, a, a + stride, true);
    }
    __syncthreads();
  }
}

#ifndef PYDIFFGEN_CUDA_EMULATE
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char smem[];
  return smem;
}
#endif

template <typename scalar_t, bool LARGEST>
__global__ void __launch_bounds__(kThreads)
    topk_merge_kernel(const scalar_t* __restrict__ values, const int64_t* __restrict__ indices,
                      const scalar_t* __restrict__ tile, scalar_t* __restrict__ out_values,
                      int64_t* __restrict__ out_indices, int64_t M, int k, int64_t T,
                      int64_t offset, int S) {
  int64_t* sid = reinterpret_cast<int64_t*>(dynamic_smem());  // [2S]
  scalar_t* sv = reinterpret_cast<scalar_t*>(sid + 2 * S);     // [2S]
  __shared__ int count;                                         // candidates in [S, 2S)
  const scalar_t pad_v = LARGEST ? -pos_inf<scalar_t>() : pos_inf<scalar_t>();
  const int window = blockDim.x;

  for (int64_t row = blockIdx.x; row < M; row += gridDim.x) {
    const scalar_t* in_v = values + row * k;
    const int64_t* in_i = indices + row * k;
    for (int j = threadIdx.x; j < S; j += blockDim.x) {
      sv[j] = j < k ? in_v[j] : pad_v;
      sid[j] = j < k ? in_i[j] : kPadIndex;
    }
    if (threadIdx.x == 0) count = 0;
    __syncthreads();
    bitonic_sort<scalar_t, LARGEST>(sv, sid, S, true);
    scalar_t thr_v = sv[k - 1];  // the current k-th best: a candidate must beat it
    int64_t thr_i = sid[k - 1];

    const scalar_t* scores = tile + row * T;
    for (int64_t base = 0; base < T; base += window) {
      const int64_t j = base + threadIdx.x;
      if (j < T) {
        const scalar_t x = scores[j];
        if (better<scalar_t, LARGEST>(x, offset + j, thr_v, thr_i)) {
          const int slot = S + atomicAdd(&count, 1);
          sv[slot] = x;
          sid[slot] = offset + j;
        }
      }
      __syncthreads();
      const int c = count;
      // every thread has read `count` before the next window's atomicAdd or the reset
      // below changes it, so the branch is block-uniform
      __syncthreads();
      const bool last = base + window >= T;
      if (c > S - window || (last && c > 0)) {
        for (int t = S + c + threadIdx.x; t < 2 * S; t += blockDim.x) {
          sv[t] = pad_v;
          sid[t] = kPadIndex;
        }
        if (threadIdx.x == 0) count = 0;
        __syncthreads();
        bitonic_sort<scalar_t, LARGEST>(sv + S, sid + S, S, false);
        bitonic_merge_keep_best<scalar_t, LARGEST>(sv, sid, S);
        thr_v = sv[k - 1];
        thr_i = sid[k - 1];
      }
    }
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
      out_values[row * k + j] = sv[j];
      out_indices[row * k + j] = sid[j];
    }
    __syncthreads();  // the buffer is reloaded for the next row
  }
}

inline int buffer_half(int64_t k) {
  int S = kThreads;
  while (S < k) S <<= 1;
  return S;
}

}  // namespace

#ifndef PYDIFFGEN_CUDA_EMULATE
template <typename scalar_t>
cudaError_t topk_merge_launch(const scalar_t* values, const int64_t* indices,
                              const scalar_t* tile, scalar_t* out_values, int64_t* out_indices,
                              int64_t M, int64_t k, int64_t T, int64_t offset, bool largest,
                              cudaStream_t stream) {
  if (M == 0 || k == 0) return cudaSuccess;
  if (k > kTopkMergeMaxK || k < 0 || T < 0) return cudaErrorInvalidValue;
  const int S = buffer_half(k);
  const size_t smem = 2 * static_cast<size_t>(S) * (sizeof(int64_t) + sizeof(scalar_t));
  const unsigned int grid = static_cast<unsigned int>(M < (int64_t{1} << 30) ? M : (1 << 30));
  if (largest) {
    topk_merge_kernel<scalar_t, true><<<grid, kThreads, smem, stream>>>(
        values, indices, tile, out_values, out_indices, M, static_cast<int>(k), T, offset, S);
  } else {
    topk_merge_kernel<scalar_t, false><<<grid, kThreads, smem, stream>>>(
        values, indices, tile, out_values, out_indices, M, static_cast<int>(k), T, offset, S);
  }
  return cudaGetLastError();
}

template cudaError_t topk_merge_launch<float>(const float*, const int64_t*, const float*, float*,
                                              int64_t*, int64_t, int64_t, int64_t, int64_t, bool,
                                              cudaStream_t);
template cudaError_t topk_merge_launch<double>(const double*, const int64_t*, const double*,
                                               double*, int64_t*, int64_t, int64_t, int64_t,
                                               int64_t, bool, cudaStream_t);
#endif

}  // namespace cuda
}  // namespace pydiffgen
