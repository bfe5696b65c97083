// Float32 helpers shared by the CPU kernels: function multi-versioning, a polynomial exp
// and blocked sums for normalisation statistics.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

// The extension is built without -march flags, so float32 hot loops are compiled for
// AVX-512 / AVX2 / baseline and the best is picked at load time (GCC target_clones).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PDG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PDG_CLONES
#endif

namespace pydiffgen {

// exp(x) for x in [-87, 87] (callers clamp): the Cephes expf polynomial with 2^n built
// from exponent bits; relative error ~1e-7 and, unlike std::exp, it vectorizes.
inline float exp_poly(float x) {
  const float t = x * 1.44269504088896341f + 12582912.0f;  // round to nearest via 1.5·2^23
  const float n = t - 12582912.0f;
  int32_t ti;
  std::memcpy(&ti, &t, sizeof(ti));
  const int32_t ni = ti - 0x4B400000;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (ni + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Adds Σx and Σx² of n floats to *sum and *sumsq: float partials over blocks of 512
// (vectorized), float64 across blocks, so the error does not grow with n.
static PDG_CLONES void add_sum_sumsq_f32(const float* x, int64_t n, double* sum, double* sumsq) {
  double s64 = 0, ss64 = 0;
  for (int64_t i0 = 0; i0 < n; i0 += 512) {
    const int64_t m = std::min<int64_t>(512, n - i0);
    float s = 0, ss = 0;
#pragma omp simd reduction(+ : s, ss)
    for (int64_t i = 0; i < m; ++i) {
      s += x[i0 + i];
      ss += x[i0 + i] * x[i0 + i];
    }
    s64 += s;
    ss64 += ss;
  }
  *sum += s64;
  *sumsq += ss64;
}

}  // namespace pydiffgen
