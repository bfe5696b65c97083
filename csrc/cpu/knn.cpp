// CPU kernels of pydiffgen::knn_candidates and pydiffgen::knn_rerank (schemas in
// csrc/pydiffgen_C.cpp); the Python side is pydiffgen/ops/knn.py.
//
// Exact k-nearest-neighbour search as a certified low-precision candidate pass followed by
// a float64 re-rank. Every metric is cast as "smaller score is better":
//   l2:          s(q, x) = ‖x*‖² − 2⟨q*, x*⟩   (= ‖q − x‖² − ‖q*‖², q* = q − μ, x* = x − μ)
//   ip / cosine: s(q, x) = −⟨q*, x*⟩         (cosine: q* = q/‖q‖, x* = x/‖x‖; ip: q* = q)
//
// knn_prepare, once per key set and pass (pydiffgen.ops.KnnIndex keeps the result):
//   x_p = x* in float32 (float64 in the fp64 pass); its level m = mean_c x_p,c (rounded to
//   x_p's dtype) and r̃ = x_p − m rounded to the GEMM dtype (bfloat16 / float32 / float64;
//   q8: r̃ = s·ι with ι int8 and one float32 scale s per row, for float data on CPUs with
//   int8 dot products); x̂ = m·1 + r̃ is what the pass scores with. 8-bit data: x̃ = uint8
//   − 128 in int8, exact, no level. Also the per-key terms of the bound (‖r̃‖, dx, a_j, s;
//   the level (m, S = Σr̃, σ)). Why the level: image rows share a large mean level (a
//   patch's brightness), ‖x_p − m‖ ≈ 0.3‖x_p‖ on photographs, and the rounding errors,
//   hence the bound, scale with ‖r̃_q‖‖r̃_x‖, not ‖q*‖‖x*‖: about 12× fewer near-ties
//   survive the pass, and the level itself is scored in float32 (L below).
// knn_candidates, per tile x̃_t [t, D] of the prepared keys (the whole loop is here):
//   1. prepare the queries once, as the keys;
//   2. G̃ = r̃_q·r̃_xᵀ for a chunk of queries (one ATen GEMM: oneDNN / MKL, multithreaded;
//      q8: the exact int32 GEMM of the ι's, scaled by s_q·s_x in float32);
//   3. fused pass over the rows (at::parallel_for): s̃ = a_j − w·(G̃ + L), L = m_q·K_x +
//      S_q·m_x with K_x = D·m_x + S_x, so G̃ + L ≈ ⟨q̂, x̂⟩ (a_j = ‖x_p‖², w = 2 for l2;
//      a_j = 0, w = 1 otherwise), a rigorous bound e ≥ |s̃ − s| (below), and per row
//        τ  = the k-th smallest upper bound s̃ + e seen so far (a k-heap of values),
//        C  = every key with lower bound s̃ − e ≤ τ (pruned as τ falls).
//      A block of 64 scores is skipped at once when none is below τ + (the tile's largest
//      e for this row), so most of the tile costs one vectorized compare.
//   Returns the candidates, their lower bounds, τ and an overflow flag per row.
//   Why exact: the true k-th best score T ≤ τ (k keys have s ≤ s̃ + e ≤ τ), and a key of the
//   true top k has s̃ − e ≤ s ≤ T ≤ τ, so it is in C. τ only decreases, so a key rejected
//   earlier stays rejected. A row whose C outgrows `capacity` is flagged: the caller redoes it
//   at the next precision (bf16 → fp32 → fp64, where capacity is unbounded).
//
// The bound e (one row q, one key x; u = 2^-24 the float32 unit roundoff, u_acc the unit
// roundoff of the accumulation: float32, or float64 in the fp64 pass):
//   x* differs from the prepared x_p by the rounding of the preparation, elementwise
//   |x*_i − x_p,i| ≤ u_p |x_p,i| (u_p = 1.01u + (D+4)·2^-53: one float32 rounding of a
//   float64 (x − μ) or x/‖x‖ whose own relative error is ≤ (D+4)·2^-53); so with
//   Δx = x* − x̂:  ‖Δx‖ ≤ dx := ‖d‖ + u_p‖x_p‖ + (the float64 rounding of d, level_row),
//   d = x_p − m·1 − r̃ computed in float64, and |ΣΔx| ≤ σ := |Σd| + (its roundings); same
//   for q. Exact identity, x̂ = m_x·1 + r̃_x, q̂ = m_q·1 + r̃_q:
//     ⟨q*, x*⟩ = ⟨q̂, x̂⟩ + ⟨Δq, x̂⟩ + ⟨q̂, Δx⟩ + ⟨Δq, Δx⟩,
//     ⟨q̂, x̂⟩ = ⟨r̃_q, r̃_x⟩ + D·m_q·m_x + m_q·Σr̃_x + m_x·Σr̃_q   (= G + L exactly),
//     ⟨Δq, x̂⟩ = m_x·ΣΔq + ⟨Δq, r̃_x⟩,  ⟨q̂, Δx⟩ = m_q·ΣΔx + ⟨r̃_q, Δx⟩,
//   and Cauchy–Schwarz gives
//     |⟨q*, x*⟩ − ⟨q̂, x̂⟩| ≤ dq·(‖r̃_x‖ + dx) + ‖r̃_q‖·dx + |m_x|·σ_q + |m_q|·σ_x
//   (σ also covers the float64 error of S = Σr̃; with m = 0 this is the bound without level).
//   The GEMM: products of bfloat16 (8-bit significands) are exact in float32 and any order
//   of float32 summation errs by ≤ γ_D Σ|q̃_i x̃_i| ≤ γ_D ‖q̃‖‖x̃‖, γ_D = (D+2)u/(1 − (D+2)u)
//   (Higham, Thm 3.1, for any summation tree; float32/float64 GEMMs: products rounded too,
//   hence D+2). The bf16 GEMM's output is rounded once to bfloat16, adding
//   ≤ 2^-8/(1 − 2^-8)·|G̃| (all with ‖r̃_q‖‖r̃_x‖ in place of ‖q̃‖‖x̃‖).
//   ASSUMPTION (true of oneDNN and of ATen's fallback kernel): the
//   bf16 GEMM accumulates in float32 and rounds the final sum once. Denormals flushed to
//   zero (AVX-512 BF16 does) cost ≤ D·2^-126 per product sum: η = 2^-100 covers it.
//   ‖x*‖² vs the float32 a_j: ≤ (3u_p + 2u)·a_j. Evaluating s̃ = a − w·(G̃ + L) and s̃ ± e
//   in float32: ≤ u(a + w|G̃| + w|L| + e) per operation; L itself (K_x rounded to float32,
//   two products, a sum) ≤ 4u(|m_q||K_x| + |S_q||m_x|).
//   Together:  e = (1 + 64u)·[ w·(dq + γ‖r̃_q‖)·(‖r̃_x‖ + dx) + w‖r̃_q‖·dx
//                             + (w·u_out + 3w·u)·|G̃| + (3u_p + 4u)·a + η
//                             + w·(|m_x|σ_q + |m_q|σ_x) + 8w·u·(|m_q||K_x| + |S_q||m_x|) ]
//   whose own float32 evaluation (≤ 14 roundings) and the rounding of its float64 inputs
//   (A, B, P, dx, σ, m, K, constants) to float32 (each ≤ u) are covered by (1 + 64u):
//   (1 − u)^24 > 1/(1 + 64u).
//   int8 pass (uint8 inputs): int32 accumulation of |x'_i q'_i| ≤ 2^14 is exact for
//   D < 2^17 and scores are formed in float64 (exact below 2^53), so e = 0.
//   q8 pass (float inputs): x̃ = s·ι is exact in float64 (24-bit s times 7-bit ι), so dx
//   and ‖x̃‖ are as above; the int32 dot of ι's is exact for D < 2^17 (γ = 0) and
//   G̃ = s_q·(s_x·G) adds three float32 roundings (int → float, two products): u_out = 4u.
//
// knn_rerank: per row, every candidate's score is recomputed directly in float64
// (l2: Σ(q_i − x_i)², not the expansion; cosine: ⟨q, x⟩/(‖q‖‖x‖); ip: ⟨q, x⟩); the best k
// with ties to the lower index, as the float64 brute-force reference orders them.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_int_mm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <limits>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "fast_math.h"

namespace pydiffgen {
namespace {

enum Metric : int64_t { kL2 = 0, kIP = 1, kCosine = 2 };
enum Precision : int64_t { kInt8 = 0, kBF16 = 1, kFP32 = 2, kFP64 = 3, kQ8 = 4 };

// The per-row and per-block loops must be inlined into their AVX-512 / AVX2 clones
// (PDG_CLONES), or they run as the baseline (SSE2) code
#if defined(__GNUC__)
#define PDG_INLINE inline __attribute__((always_inline))
#define PDG_INLINE_LAMBDA __attribute__((always_inline))
#else
#define PDG_INLINE inline
#define PDG_INLINE_LAMBDA
#endif

constexpr double kU32 = 0x1p-24;
constexpr double kU64 = 0x1p-53;
constexpr int64_t kBlock = 64;

// Rows prepared for the GEMM: x̃ (GEMM dtype) and the per-row quantities of the bound.
struct Prepared {
  at::Tensor gemm;   // [n, D] bf16 / f32 / f64 / int8
  at::Tensor norm;   // [n] float64 ‖r̃‖ (float modes; r̃ = x̃ without its level, below)
  at::Tensor delta;  // [n] float64 dx ≥ ‖x* − x̂‖ (level_row)
  at::Tensor add;    // [n] float64 a_j (l2: ‖x_p‖²; int8 ip: −128·Σx'; else 0)
  at::Tensor scale;  // [n] float32 s of the q8 pass (x̃ = s·ι, ι int8); empty otherwise
  at::Tensor level;  // [n, 3] float64 (m, S, σ): the row's level m (x̂ = m·1 + r̃), S = Σr̃,
                     // σ ≥ |Σ(x* − x̂)|; zeros in the int8 pass
};

// Round-to-nearest-even float32 → bfloat16 on the bits (inputs are finite), vectorizable.
inline uint16_t bf16_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  b += 0x7FFFu + ((b >> 16) & 1u);
  return static_cast<uint16_t>(b >> 16);
}
template <typename Gt, typename P>
inline Gt round_to(P v) {
  return static_cast<Gt>(v);
}
template <>
inline c10::BFloat16 round_to<c10::BFloat16, float>(float v) {
  return c10::BFloat16(bf16_bits(v), c10::BFloat16::from_bits());
}
inline float widen_bits(c10::BFloat16 v) {
  const uint32_t b = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}
template <typename P, typename Gt>
inline P back(Gt v) {
  return static_cast<P>(v);
}
template <>
inline float back<float, c10::BFloat16>(c10::BFloat16 v) {
  return widen_bits(v);
}

// x* rounded once to P: l2 x − μ (for T = P the subtraction itself is the one correctly
// rounded operation; for T = double, P = float the float64 difference is rounded again,
// which the (D+4)·2^-53 part of u_p covers); cosine x·(1/‖x‖) in float64, then rounded.
template <typename T, typename P>
PDG_INLINE P prep_value(T v, int64_t metric, const P* mu_p, const double* mu_d, int64_t c,
                    double scale) {
  if (metric == kL2) {
    if constexpr (std::is_same_v<T, P>) {
      return v - mu_p[c];
    } else {
      return static_cast<P>(static_cast<double>(v) - mu_d[c]);
    }
  }
  if (metric == kCosine) return static_cast<P>(static_cast<double>(v) * scale);
  return static_cast<P>(v);
}

// x_p = x* of one row xi [D] rounded once to P, one loop per metric so each vectorizes.
template <typename T, typename P>
PDG_INLINE void prep_row(const T* __restrict__ xi, int64_t D, int64_t metric, const P* mu_p,
                     const double* mu_d, P* __restrict__ xp) {
  if (metric == kL2) {
    for (int64_t c = 0; c < D; ++c) xp[c] = prep_value<T, P>(xi[c], kL2, mu_p, mu_d, c, 1.0);
  } else if (metric == kCosine) {
    double ss = 0;
    for (int64_t c = 0; c < D; ++c) ss += static_cast<double>(xi[c]) * xi[c];
    const double scale = 1.0 / std::max(std::sqrt(ss), 1e-300);
    for (int64_t c = 0; c < D; ++c) xp[c] = static_cast<P>(static_cast<double>(xi[c]) * scale);
  } else {
    for (int64_t c = 0; c < D; ++c) xp[c] = static_cast<P>(xi[c]);
  }
}

// The per-row results of the preparation (all float64): ‖r̃‖, dx, a, and the level terms.
struct RowStats {
  double norm, delta, add, mean, sum, sigma;
};

// Level m, r̃ and the float64 sums of the bound for one row, from x_p (xp [D], already x*
// rounded once to P) and the rounding of r = x_p − m to the GEMM dtype by round_one(r, c)
// (which stores r̃_c and returns it as a float64).
//   m = the row's mean, rounded to P: image rows share a large mean level, and removing it
//       before rounding makes the rounding error relative to ‖x_p − m‖, not ‖x_p‖;
//   d_c = (x_p,c − m) − r̃_c in float64: each of the two subtractions errs by ≤ 2^-53 of its
//       result, so ‖d_true‖ ≤ ‖d‖ + 2^-52(‖x_p‖ + √D|m| + ‖d‖);
//   dx = ‖d‖ + u_p‖x_p‖ + 2^-51(‖x_p‖ + √D|m| + ‖d‖)  ≥ ‖x* − x̂‖, x̂ = m·1 + r̃;
//   S = Σr̃ (float64, error ≤ D·2^-53·√D‖r̃‖) and
//   σ = |Σd| + √D·(u_p‖x_p‖ + 2^-51(‖x_p‖ + √D|m| + D‖d‖ + D‖r̃‖))  ≥ |Σ(x* − x̂)| + |S − Σr̃|.
template <typename P>
PDG_INLINE P mean_of(const P* __restrict__ xp, int64_t D) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < D; ++c) sum += static_cast<double>(xp[c]);
  return static_cast<P>(sum / static_cast<double>(D));
}

// (float64 sums in any order: the bounds below hold for every summation order)
template <typename P, typename F>
PDG_INLINE RowStats level_row(const P* __restrict__ xp, int64_t D, int64_t metric, double u_p, P m,
                          F&& round_one) {
  const double md = static_cast<double>(m);
  double g2 = 0, d2 = 0, p2 = 0, rs = 0, ds = 0;
#pragma omp simd reduction(+ : g2, d2, p2, rs, ds)
  for (int64_t c = 0; c < D; ++c) {
    const double xpd = static_cast<double>(xp[c]);
    const double xgd = round_one(static_cast<P>(xp[c] - m), c);
    const double d = (xpd - md) - xgd;
    g2 += xgd * xgd;
    d2 += d * d;
    p2 += xpd * xpd;
    rs += xgd;
    ds += d;
  }
  // float64 norms of float values err by ≤ (D+2)·2^-53 relatively: inflate by 1e-9
  const double inflate = 1 + 1e-9, sqD = std::sqrt(static_cast<double>(D));
  const double np = std::sqrt(p2), nd = std::sqrt(d2), ng = std::sqrt(g2);
  const double slack = 0x1p-51 * (np + sqD * std::abs(md) + nd);
  RowStats r;
  r.norm = ng * inflate;
  r.delta = (nd + u_p * np + slack) * inflate;
  r.add = metric == kL2 ? p2 : 0.0;
  r.mean = md;
  r.sum = rs;
  r.sigma = (std::abs(ds) +
             sqD * (u_p * np + 0x1p-51 * (np + sqD * std::abs(md) + D * nd + D * ng))) *
            inflate;
  return r;
}

// One row of a float pass (x̃ in bf16 / float32 / float64): x_p = x* rounded once to P,
// then level_row with round to nearest (bf16 on the bits, vectorizable; inputs finite).
template <typename T, typename P, typename Gt>
PDG_INLINE RowStats prepare_row_impl(const T* xi, int64_t D, int64_t metric, const P* mu_p,
                                 const double* mu_d, double u_p, P* xp, Gt* gi) {
  prep_row<T, P>(xi, D, metric, mu_p, mu_d, xp);
  return level_row<P>(xp, D, metric, u_p, mean_of(xp, D), [gi](P r, int64_t c) PDG_INLINE_LAMBDA {
    if constexpr (std::is_same_v<Gt, c10::BFloat16>) {
      uint32_t bits;
      std::memcpy(&bits, &r, sizeof(bits));
      const uint32_t b = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
      float f;
      std::memcpy(&f, &b, sizeof(f));
      reinterpret_cast<uint16_t*>(gi)[c] = static_cast<uint16_t>(b >> 16);
      return static_cast<double>(f);
    } else {
      const Gt g = static_cast<Gt>(r);
      gi[c] = g;
      return static_cast<double>(g);
    }
  });
}

// One row of the q8 pass: x̃ = m + s·ι, ι ∈ [−127, 127]^D in int8 and one float32
// s = max|x_p − m|/127. Any ι keeps the bound valid (it is computed from x̃ itself); rounding
// to nearest makes it tight. s·ι_c is exact in float64 (24 × 7 bits), and the int32 GEMM of
// ι's is exact for D < 2^17 (127²·D < 2^31).
template <typename T>
PDG_INLINE RowStats prepare_row_q8_impl(const T* xi, int64_t D, int64_t metric, const float* mu_p,
                                    const double* mu_d, double u_p, float* xp, int8_t* oi,
                                    float* scale) {
  constexpr float kRound = 12582912.0f;  // 1.5·2^23: (v + R) − R rounds |v| < 2^22 to nearest
  prep_row<T, float>(xi, D, metric, mu_p, mu_d, xp);
  const float m = mean_of(xp, D);
  float amax = 0;
#pragma omp simd reduction(max : amax)
  for (int64_t c = 0; c < D; ++c) amax = std::max(amax, std::abs(xp[c] - m));
  // a row too small for a normal s keeps ι = 0 (x̃ = m: still a bound)
  const float s = amax >= 127 * std::numeric_limits<float>::min() ? amax / 127 : 1.0f;
  const float inv = 1.0f / s;
  *scale = s;
  int8_t* __restrict__ o = oi;  // int8 stores could alias x_p's floats: they do not
  return level_row<float>(xp, D, metric, u_p, m, [o, s, inv](float r, int64_t c) PDG_INLINE_LAMBDA {
    const float q = std::clamp((r * inv + kRound) - kRound, -127.0f, 127.0f);
    o[c] = static_cast<int8_t>(q);
    return static_cast<double>(q) * s;
  });
}

// AVX-512 / AVX2 clones of the per-row preparation (the build has no -march flags)
#define PDG_PREPARE_ROW(T, P, Gt)                                                              \
  PDG_CLONES RowStats prepare_row(const T* xi, int64_t D, int64_t metric, const P* mu_p,       \
                                  const double* mu_d, double u_p, P* xp, Gt* gi) {             \
    return prepare_row_impl<T, P, Gt>(xi, D, metric, mu_p, mu_d, u_p, xp, gi);               \
  }
PDG_PREPARE_ROW(float, float, c10::BFloat16)
PDG_PREPARE_ROW(double, float, c10::BFloat16)
PDG_PREPARE_ROW(float, float, float)
PDG_PREPARE_ROW(double, float, float)
PDG_PREPARE_ROW(float, double, double)
PDG_PREPARE_ROW(double, double, double)
#undef PDG_PREPARE_ROW
PDG_CLONES RowStats prepare_row(const float* xi, int64_t D, int64_t metric, const float* mu_p,
                                const double* mu_d, double u_p, float* xp, int8_t* oi,
                                float* scale) {
  return prepare_row_q8_impl<float>(xi, D, metric, mu_p, mu_d, u_p, xp, oi, scale);
}
PDG_CLONES RowStats prepare_row(const double* xi, int64_t D, int64_t metric, const float* mu_p,
                                const double* mu_d, double u_p, float* xp, int8_t* oi,
                                float* scale) {
  return prepare_row_q8_impl<double>(xi, D, metric, mu_p, mu_d, u_p, xp, oi, scale);
}

// Every row of x [n, D] (rows in parallel) into the prepared tensors of p: x̃ (GEMM dtype
// Gt; q8: ι and s), ‖r̃‖, dx, a and level [n, 3] = (m, S, σ).
template <typename T, typename P, typename Gt>
void prepare_rows(const T* x, const P* mu_p, const double* mu_d, int64_t n, int64_t D,
                  int64_t metric, double u_p, Prepared& p) {
  Gt* out = p.gemm.mutable_data_ptr<Gt>();
  float* scale = p.scale.defined() ? p.scale.mutable_data_ptr<float>() : nullptr;
  double* norm = p.norm.mutable_data_ptr<double>();
  double* delta = p.delta.mutable_data_ptr<double>();
  double* add = p.add.mutable_data_ptr<double>();
  double* level = p.level.mutable_data_ptr<double>();
  // small blocks run inline: a parallel region costs more than ~64 K elements of work
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(D, 1));
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
    std::vector<P> buf(D);  // x_p of one row
    for (int64_t i = b; i < e; ++i) {
      RowStats r;
      if constexpr (std::is_same_v<Gt, int8_t>) {
        r = prepare_row(x + i * D, D, metric, mu_p, mu_d, u_p, buf.data(), out + i * D,
                        scale + i);
      } else {
        r = prepare_row(x + i * D, D, metric, mu_p, mu_d, u_p, buf.data(), out + i * D);
      }
      norm[i] = r.norm;
      delta[i] = r.delta;
      add[i] = r.add;
      level[3 * i] = r.mean;
      level[3 * i + 1] = r.sum;
      level[3 * i + 2] = r.sigma;
    }
  });
}

template <typename T, typename P, typename Gt>
void prepare_typed(const at::Tensor& x, const at::Tensor& mu, int64_t metric, double u_p,
                   Prepared& p) {
  const at::Tensor mu_p = mu.numel() ? mu.to(c10::CppTypeToScalarType<P>::value) : mu;
  prepare_rows<T, P, Gt>(x.const_data_ptr<T>(), mu.numel() ? mu_p.const_data_ptr<P>() : nullptr,
                         mu.numel() ? mu.const_data_ptr<double>() : nullptr, x.size(0),
                         x.size(1), metric, u_p, p);
}

// x̃ and the per-row quantities of the bound, for a contiguous block of rows x [n, D];
// mu is float64 (l2) or empty.
Prepared prepare(const at::Tensor& x, const at::Tensor& mu, int64_t metric, int64_t precision,
                 bool is_query) {
  Prepared p;
  const int64_t n = x.size(0), D = x.size(1);
  const auto dopt = x.options().dtype(at::kDouble);
  if (precision == kInt8) {
    // x' = x − 128 in int8 (exact); l2: a = ‖x'‖²; ip keys: ⟨q, x⟩ = ⟨q', x'⟩ + 128Σx' +
    // (terms constant per query), so s = −⟨q', x'⟩ − 128Σx'. Integers, exact in float64.
    p.gemm = at::empty({n, D}, x.options().dtype(at::kChar));
    p.norm = at::zeros({n}, dopt);
    p.delta = p.norm;
    p.add = at::empty({n}, dopt);
    p.level = at::zeros({n, 3}, dopt);  // no level: the int8 pass is exact
    const uint8_t* X = x.const_data_ptr<uint8_t>();
    int8_t* O = p.gemm.mutable_data_ptr<int8_t>();
    double* A = p.add.mutable_data_ptr<double>();
    at::parallel_for(0, n, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(D, 1)),
                     [&](int64_t b, int64_t e) {
                       for (int64_t i = b; i < e; ++i) {
                         int64_t sq = 0, sum = 0;
                         for (int64_t c = 0; c < D; ++c) {
                           const int32_t v = static_cast<int32_t>(X[i * D + c]) - 128;
                           O[i * D + c] = static_cast<int8_t>(v);
                           sq += v * v;
                           sum += v;
                         }
                         A[i] = metric == kL2 ? static_cast<double>(sq)
                                : is_query    ? 0.0
                                              : -128.0 * static_cast<double>(sum);
                       }
                     });
    return p;
  }
  const double u_p = (precision == kFP64 ? 1.01 * kU64 : 1.01 * kU32) + (D + 4) * kU64;
  const auto gemm_dtype = precision == kQ8     ? at::kChar
                          : precision == kBF16 ? at::kBFloat16
                          : precision == kFP32 ? at::kFloat
                                               : at::kDouble;
  p.gemm = at::empty({n, D}, x.options().dtype(gemm_dtype));
  p.norm = at::empty({n}, dopt);
  p.delta = at::empty({n}, dopt);
  p.add = at::empty({n}, dopt);
  const bool in64 = x.scalar_type() == at::kDouble;
  p.level = at::empty({n, 3}, dopt);
  if (precision == kQ8) {
    p.scale = at::empty({n}, x.options().dtype(at::kFloat));
    in64 ? prepare_typed<double, float, int8_t>(x, mu, metric, u_p, p)
         : prepare_typed<float, float, int8_t>(x, mu, metric, u_p, p);
  } else if (precision == kBF16) {
    in64 ? prepare_typed<double, float, c10::BFloat16>(x, mu, metric, u_p, p)
         : prepare_typed<float, float, c10::BFloat16>(x, mu, metric, u_p, p);
  } else if (precision == kFP32) {
    in64 ? prepare_typed<double, float, float>(x, mu, metric, u_p, p)
         : prepare_typed<float, float, float>(x, mu, metric, u_p, p);
  } else {
    in64 ? prepare_typed<double, double, double>(x, mu, metric, u_p, p)
         : prepare_typed<float, double, double>(x, mu, metric, u_p, p);
  }
  return p;
}

// Per-row running state of the candidate pass.
template <typename S>
struct RowState {
  std::vector<S> heap;                        // max-heap of the k smallest upper bounds
  std::vector<std::pair<S, int64_t>> cands;   // (lower bound, key index)
  bool overflow = false;
};

template <typename S>
inline S tau_of(const RowState<S>& st, int64_t k) {
  return static_cast<int64_t>(st.heap.size()) < k ? std::numeric_limits<S>::infinity()
                                                  : st.heap.front();
}

template <typename S>
void prune(RowState<S>& st, S tau) {
  auto& c = st.cands;
  c.erase(std::remove_if(c.begin(), c.end(), [tau](const auto& e) { return e.first > tau; }),
          c.end());
}

// The float copies of one tile's key terms that the hot loops read (index j of the tile).
template <typename S>
struct TileTerms {
  std::vector<S> add, cs, p, d, m, K, am, sg, ak;
};

// One row's terms of the score and of its bound (the bound at the top of the file):
//   s_j = a_j − w·(s_q·(c_j·G̃_j) + m_q·K_j + S_q·m_j),  K_j = D·m_j + S_j,
//   e_j = safety·(A·p_j + B·dx_j + Cg·|s_q·c_j·G̃_j| + Ca·|a_j| + η
//                 + Em·|m_j| + Es·σ_j + Ek·|K_j|),
// Em = w·σ_q + Cl·|S_q|, Es = w·|m_q|, Ek = Cl·|m_q|.
template <typename S>
struct RowTerms {
  S ws, qs, mq, Sq, A, B, Cg, Ca, eta, Em, Es, Ek, safety;
};

// The hot loop of the selection, per block of nb ≤ 64 scores of one row (from key j0 of the
// tile): the scores s_j into out, and whether any is ≤ thr. Float scores (q8, bf16, fp32
// passes) get AVX-512 / AVX2 clones (PDG_CLONES); the widening of G̃ is exact.
template <typename O, typename S>
PDG_INLINE S widen(O v) {
  if constexpr (std::is_same_v<O, uint16_t>) {
    const uint32_t b = static_cast<uint32_t>(v) << 16;  // bfloat16 bits → float
    float f;
    std::memcpy(&f, &b, sizeof(f));
    return f;
  } else {
    return static_cast<S>(v);
  }
}
template <typename O, typename S>
PDG_INLINE bool block_scores_impl(const O* __restrict__ g, const TileTerms<S>& x, int64_t j0,
                              const RowTerms<S>& q, S thr, S* __restrict__ out, int64_t nb) {
  // locals and restrict pointers: out must not be taken to alias the terms, or the loop
  // reloads them every iteration and does not vectorize
  const S* __restrict__ add = x.add.data() + j0;
  const S* __restrict__ cs = x.cs.data() + j0;
  const S* __restrict__ m = x.m.data() + j0;
  const S* __restrict__ K = x.K.data() + j0;
  const S ws = q.ws, qs = q.qs, mq = q.mq, Sq = q.Sq;
  int any = 0;  // an int reduction vectorizes, a bool one does not
#pragma omp simd reduction(| : any)
  for (int64_t j = 0; j < nb; ++j) {
    const S s = add[j] - ws * (qs * (cs[j] * widen<O, S>(g[j])) + (mq * K[j] + Sq * m[j]));
    out[j] = s;
    any |= static_cast<int>(s <= thr);
  }
  return any != 0;
}
// ... and, for a block where some score passed, the bounds lo/hi = s ∓ e of every score
template <typename O, typename S>
PDG_INLINE void block_bounds_impl(const O* __restrict__ g, const TileTerms<S>& x, int64_t j0,
                              const RowTerms<S>& q, const S* __restrict__ s,
                              S* __restrict__ lo, S* __restrict__ hi, int64_t nb) {
  const S* __restrict__ add = x.add.data() + j0;
  const S* __restrict__ cs = x.cs.data() + j0;
  const S* __restrict__ p = x.p.data() + j0;
  const S* __restrict__ d = x.d.data() + j0;
  const S* __restrict__ am = x.am.data() + j0;
  const S* __restrict__ sg = x.sg.data() + j0;
  const S* __restrict__ ak = x.ak.data() + j0;
  const S qs = q.qs, A = q.A, B = q.B, Cg = q.Cg, Ca = q.Ca, eta = q.eta, Em = q.Em,
          Es = q.Es, Ek = q.Ek, safety = q.safety;
  for (int64_t j = 0; j < nb; ++j) {
    const S ga = std::abs(qs * (cs[j] * widen<O, S>(g[j])));
    const S err = safety * (A * p[j] + B * d[j] + Cg * ga + Ca * std::abs(add[j]) + eta +
                            Em * am[j] + Es * sg[j] + Ek * ak[j]);
    lo[j] = s[j] - err;
    hi[j] = s[j] + err;
  }
}
#define PDG_BLOCK(O)                                                                         \
  PDG_CLONES bool block_scores(const O* g, const TileTerms<float>& x, int64_t j0,            \
                               const RowTerms<float>& q, float thr, float* out, int64_t nb) { \
    return block_scores_impl(g, x, j0, q, thr, out, nb);                                     \
  }                                                                                          \
  PDG_CLONES void block_bounds(const O* g, const TileTerms<float>& x, int64_t j0,            \
                               const RowTerms<float>& q, const float* s, float* lo,          \
                               float* hi, int64_t nb) {                                      \
    block_bounds_impl(g, x, j0, q, s, lo, hi, nb);                                           \
  }
PDG_BLOCK(int32_t)
PDG_BLOCK(uint16_t)
PDG_BLOCK(float)
#undef PDG_BLOCK
// double scores (fp64 pass, exact int8 pass): the generic loops
template <typename O, typename S>
bool block_scores(const O* g, const TileTerms<S>& x, int64_t j0, const RowTerms<S>& q, S thr,
                  S* out, int64_t nb) {
  return block_scores_impl(g, x, j0, q, thr, out, nb);
}
template <typename O, typename S>
void block_bounds(const O* g, const TileTerms<S>& x, int64_t j0, const RowTerms<S>& q,
                  const S* s, S* lo, S* hi, int64_t nb) {
  block_bounds_impl(g, x, j0, q, s, lo, hi, nb);
}

// The constants of the bound for one pass (run_candidates).
struct PassBound {
  double w, Cg, Ca, Cl, eta, g_grow;
  bool exact;
};

// The prepared queries' per-row terms: A = w(dq + γ‖r̃_q‖), B = w‖r̃_q‖, s_q (q8), level.
struct QueryTerms {
  std::vector<double> A, B, qscale;
  const double* level;  // [M, 3] (m, S, σ)
};

// One tile's key terms in float copies, and its maxima for the block pre-check
// (xa, xn, xd, xl: the tile's a, ‖r̃‖, dx, level [t, 3]; xs: q8 scales or null).
template <typename S>
TileTerms<S> tile_terms(int64_t t, int64_t D, const double* xa, const double* xn,
                        const double* xd, const double* xl, const float* xs,
                        std::array<double, 7>& mx) {
  TileTerms<S> x;
  x.add.assign(xa, xa + t);
  x.d.assign(xd, xd + t);
  x.cs.assign(t, S(1));
  // q8: G̃ = s_q·s_x·(ι_q·ι_x) (exact int32 dot, then ≤ 3 float32 roundings: u_out);
  // the other passes multiply by 1 (exact)
  if (xs != nullptr) std::copy(xs, xs + t, x.cs.begin());
  x.p.resize(t), x.m.resize(t), x.K.resize(t), x.am.resize(t), x.sg.resize(t), x.ak.resize(t);
  mx.fill(0.0);  // p, dx, |a|, ‖r̃‖, |m|, σ, |K|
  for (int64_t j = 0; j < t; ++j) {
    const double m = xl[3 * j], K = static_cast<double>(D) * m + xl[3 * j + 1];
    x.p[j] = static_cast<S>(xn[j] + xd[j]);
    x.m[j] = static_cast<S>(m);
    x.K[j] = static_cast<S>(K);
    x.am[j] = std::abs(x.m[j]);
    x.sg[j] = static_cast<S>(xl[3 * j + 2]);
    x.ak[j] = std::abs(x.K[j]);
    const double v[7] = {xn[j] + xd[j], xd[j], std::abs(xa[j]), xn[j], std::abs(m),
                         xl[3 * j + 2], std::abs(K)};
    for (int i = 0; i < 7; ++i) mx[i] = std::max(mx[i], v[i]);
  }
  return x;
}

// Score type S: float for the q8/bf16/fp32 passes, double for fp64 and int8.
template <typename O, typename S>
void select_tile(const O* G, int64_t m, int64_t t, int64_t D, int64_t n0, int64_t row0,
                 int64_t k, int64_t capacity, const double* add, const double* xnorm,
                 const double* xdelta, const double* xlevel, const float* xscale,
                 const QueryTerms& qt, const PassBound& pb, std::vector<RowState<S>>& state) {
  std::array<double, 7> mx;  // tile maxima: p, dx, |a|, ‖r̃‖, |m|, σ, |K|
  const TileTerms<S> x = tile_terms<S>(t, D, add, xnorm, xdelta, xlevel, xscale, mx);
  const S inf = std::numeric_limits<S>::infinity();
  const double w = pb.w;
  at::parallel_for(0, m, std::max<int64_t>(1, (int64_t{1} << 16) / t), [&](int64_t b, int64_t e_) {
    std::vector<S> s_blk(kBlock), lo_blk(kBlock), hi_blk(kBlock);
    for (int64_t r = b; r < e_; ++r) {
      RowState<S>& st = state[row0 + r];
      if (st.overflow) continue;
      const O* g = G + r * t;
      // bfloat16 scores by their bits (the clones take plain integer types)
      const auto* gbits = [&] {
        if constexpr (std::is_same_v<O, c10::BFloat16>) {
          return reinterpret_cast<const uint16_t*>(g);
        } else {
          return g;
        }
      }();
      const int64_t i = row0 + r;
      const double Ar = qt.A[i], Br = qt.B[i], mq = qt.level[3 * i], Sq = qt.level[3 * i + 1];
      const double Em = w * qt.level[3 * i + 2] + pb.Cl * std::abs(Sq);
      const double Es = w * std::abs(mq), Ek = pb.Cl * std::abs(mq);
      const S qs = qt.qscale.empty() ? S(1) : static_cast<S>(qt.qscale[i]);
      const RowTerms<S> q{static_cast<S>(w), qs,
                          static_cast<S>(mq), static_cast<S>(Sq), static_cast<S>(Ar),
                          static_cast<S>(Br), static_cast<S>(pb.Cg), static_cast<S>(pb.Ca),
                          static_cast<S>(pb.eta), static_cast<S>(Em), static_cast<S>(Es),
                          static_cast<S>(Ek), static_cast<S>(1 + 64 * kU32)};
      // largest e of this row over the tile: |G̃| ≤ ‖q̃‖‖x̃‖(1 + γ)(1 + u_out) = B/w·n_max·g_grow
      const double e_max =
          pb.exact ? 0.0
                   : (1 + 64 * kU32) * (Ar * mx[0] + Br * mx[1] +
                                        pb.Cg * (Br / w) * mx[3] * pb.g_grow + pb.Ca * mx[2] +
                                        pb.eta + Em * mx[4] + Es * mx[5] + Ek * mx[6]);
      if (!std::isfinite(e_max)) {
        st.overflow = true;  // data too large for this precision: the next pass redoes it
        continue;
      }
      for (int64_t j0 = 0; j0 < t; j0 += kBlock) {
        const int64_t j1 = std::min(t, j0 + kBlock), nb = j1 - j0;
        const S tau = tau_of(st, k);
        // lower bounds above τ + e_max (with margin for this sum's rounding) cannot qualify
        const S thr = tau == inf ? inf
                                 : static_cast<S>(tau + e_max * 1.0001 + std::abs(tau) * 1e-6);
        if (!block_scores(gbits + j0, x, j0, q, thr, s_blk.data(), nb)) continue;
        if (pb.exact) {
          std::copy(s_blk.begin(), s_blk.begin() + nb, lo_blk.begin());
          std::copy(s_blk.begin(), s_blk.begin() + nb, hi_blk.begin());
        } else {
          block_bounds(gbits + j0, x, j0, q, s_blk.data(), lo_blk.data(), hi_blk.data(), nb);
        }
        for (int64_t j = 0; j < nb; ++j) {
          const S lo = lo_blk[j], hi = hi_blk[j];
          // lo > τ: hi ≥ lo > τ leaves the heap as it is, and the key is no candidate
          if (lo > tau_of(st, k)) continue;
          auto& h = st.heap;
          if (static_cast<int64_t>(h.size()) < k) {
            h.push_back(hi);
            std::push_heap(h.begin(), h.end());
          } else if (hi < h.front()) {
            std::pop_heap(h.begin(), h.end());
            h.back() = hi;
            std::push_heap(h.begin(), h.end());
          }
          if (lo <= tau_of(st, k)) st.cands.emplace_back(lo, n0 + j0 + j);
        }
        if (static_cast<int64_t>(st.cands.size()) > 2 * capacity) {
          prune(st, tau_of(st, k));
          if (static_cast<int64_t>(st.cands.size()) > capacity) {
            st.overflow = true;
            st.cands.clear();
            st.cands.shrink_to_fit();
            break;
          }
        }
      }
    }
  });
}

// The point both sides subtract (l2 float passes), rounded to float32 first so that float32
// and float64 rows (queries and keys of different dtypes) subtract the same point; any
// point keeps the ranking. Empty otherwise.
at::Tensor centre_point(const at::Tensor& centre, int64_t metric, int64_t precision) {
  return metric == kL2 && precision != kInt8
             ? centre.to(at::kFloat).to(at::kDouble).contiguous()
             : centre.new_empty({0}, at::kDouble);
}

// float passes read float32 / float64 rows (half, bfloat16 and uint8 widen exactly to float32)
at::Tensor rows_for(const at::Tensor& t, int64_t precision) {
  return precision != kInt8 && t.scalar_type() != at::kDouble ? t.to(at::kFloat).contiguous()
                                                              : t.contiguous();
}

void check_codes(const char* op, int64_t metric, int64_t precision) {
  TORCH_CHECK(metric >= kL2 && metric <= kCosine, op, ": metric code ", metric,
              " is not 0 (l2), 1 (ip) or 2 (cosine)");
  TORCH_CHECK(precision >= kInt8 && precision <= kQ8, op, ": precision code ", precision,
              " is not 0 (int8), 1 (bf16), 2 (fp32), 3 (fp64) or 4 (q8)");
}

template <typename S>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> run_candidates(
    const at::Tensor& q, const Prepared& keys, const at::Tensor& mu, int64_t k, int64_t metric,
    int64_t precision, int64_t tile_elems, int64_t capacity, int64_t offset) {
  const int64_t M = q.size(0), D = q.size(1), N = keys.gemm.size(0);
  const bool exact = precision == kInt8, q8 = precision == kQ8;
  const double w = metric == kL2 ? 2.0 : 1.0;
  const double u_acc = precision == kFP64 ? kU64 : kU32;
  const double u_p = exact ? 0.0
                           : (precision == kFP64 ? 1.01 * kU64 : 1.01 * kU32) + (D + 4) * kU64;
  // q8: the int32 dot of ι's is exact (γ = 0); its three float32 scalings are u_out
  const double gamma = exact || q8 ? 0.0 : (D + 2) * u_acc / (1 - (D + 2) * u_acc);
  const double u_out = precision == kBF16 ? 0x1p-8 / (1 - 0x1p-8) : q8 ? 4 * kU32 : 0.0;
  // Cg: the rounding of s̃'s evaluation proportional to |G̃| (G̃ + L, a − w·(·), s̃ ± e);
  // Cl: that of the level term L = m_q·K_x + S_q·m_x (K_x's rounding, 2 products, 4 sums)
  const PassBound pb{w,
                     exact ? 0.0 : w * u_out + 3 * w * u_acc,
                     exact ? 0.0 : 3 * u_p + 4 * u_acc,
                     exact ? 0.0 : 8 * w * u_acc,
                     exact ? 0.0 : 0x1p-100,
                     (1 + gamma) * (1 + u_out) * (1 + 1e-6),
                     exact};

  // queries once: q̃ and per-row coefficients A = w(dq + γ‖r̃_q‖), B = w‖r̃_q‖ (and s_q for
  // q8), their level terms
  const Prepared pq = prepare(q, mu, metric, precision, true);
  QueryTerms qt{std::vector<double>(M), std::vector<double>(M), {},
                pq.level.const_data_ptr<double>()};
  {
    const double* qn = pq.norm.const_data_ptr<double>();
    const double* qd = pq.delta.const_data_ptr<double>();
    for (int64_t r = 0; r < M; ++r) {
      qt.A[r] = w * (qd[r] + gamma * qn[r]);
      qt.B[r] = w * qn[r];
    }
    if (q8) {
      const float* sq = pq.scale.const_data_ptr<float>();
      qt.qscale.assign(sq, sq + M);
    }
  }
  // tiles: ≈ 4 M key elements (GEMM-efficient), ≤ tile_elems scores per query chunk
  const int64_t t = std::min<int64_t>(N, std::clamp<int64_t>((int64_t{1} << 22) / D, 256, 8192));
  const int64_t m_chunk = std::min<int64_t>(M, std::max<int64_t>(1, tile_elems / t));
  const auto out_dtype = exact || q8          ? at::kInt
                         : precision == kBF16 ? at::kBFloat16
                         : precision == kFP32 ? at::kFloat
                                              : at::kDouble;
  auto G_buf = at::empty({m_chunk * t}, q.options().dtype(out_dtype));
  std::vector<RowState<S>> state(M);
  for (auto& st : state) st.heap.reserve(k);
  const double* xn_all = keys.norm.const_data_ptr<double>();
  const double* xd_all = keys.delta.const_data_ptr<double>();
  const double* xa_all = keys.add.const_data_ptr<double>();
  const double* xl_all = keys.level.const_data_ptr<double>();
  const float* xs_all = q8 ? keys.scale.const_data_ptr<float>() : nullptr;

  for (int64_t n0 = 0; n0 < N; n0 += t) {
    const int64_t tn = std::min(t, N - n0);
    const at::Tensor xg = keys.gemm.narrow(0, n0, tn);
    const double *xn = xn_all + n0, *xd = xd_all + n0, *xa = xa_all + n0;
    const double* xl = xl_all + 3 * n0;
    const float* xs = q8 ? xs_all + n0 : nullptr;
    for (int64_t m0 = 0; m0 < M; m0 += m_chunk) {
      const int64_t mm = std::min(m_chunk, M - m0);
      at::Tensor G = G_buf.narrow(0, 0, mm * tn).view({mm, tn});
      const at::Tensor qm = pq.gemm.narrow(0, m0, mm);
      if (exact || q8) {
        at::_int_mm_out(G, qm, xg.t());
      } else {
        at::mm_out(G, qm, xg.t());
      }
      const int64_t off = offset + n0;
      auto select = [&](auto* g) {
        using O = std::remove_const_t<std::remove_pointer_t<decltype(g)>>;
        select_tile<O, S>(g, mm, tn, D, off, m0, k, capacity, xa, xn, xd, xl, xs, qt, pb, state);
      };
      if (exact || q8) {
        select(G.const_data_ptr<int32_t>());
      } else if (precision == kBF16) {
        select(G.const_data_ptr<c10::BFloat16>());
      } else if (precision == kFP32) {
        select(G.const_data_ptr<float>());
      } else {
        select(G.const_data_ptr<double>());
      }
    }
  }

  // final prune and padded output
  int64_t C = 1;
  for (auto& st : state) {
    if (!st.overflow) prune(st, tau_of(st, k));
    C = std::max<int64_t>(C, static_cast<int64_t>(st.cands.size()));
  }
  auto cand = at::full({M, C}, -1, q.options().dtype(at::kLong));
  auto lo = at::full({M, C}, std::numeric_limits<double>::infinity(),
                     q.options().dtype(at::kDouble));
  auto tau = at::empty({M}, q.options().dtype(at::kDouble));
  auto over = at::empty({M}, q.options().dtype(at::kBool));
  int64_t* cp = cand.mutable_data_ptr<int64_t>();
  double* lp = lo.mutable_data_ptr<double>();
  double* tp = tau.mutable_data_ptr<double>();
  bool* op = over.mutable_data_ptr<bool>();
  for (int64_t r = 0; r < M; ++r) {
    const auto& st = state[r];
    tp[r] = static_cast<double>(tau_of(st, k));
    op[r] = st.overflow;
    for (size_t j = 0; j < st.cands.size(); ++j) {
      lp[r * C + j] = static_cast<double>(st.cands[j].first);
      cp[r * C + j] = st.cands[j].second;
    }
  }
  return {cand, lo, tau, over};
}

// Keys prepared once for a pass (the reusable part of a search: pydiffgen.ops.KnnIndex).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> knn_prepare_cpu(
    const at::Tensor& keys, const at::Tensor& centre, int64_t metric, int64_t precision) {
  TORCH_CHECK(keys.dim() == 2, "knn_prepare: keys must be [N, D], got ", keys.sizes());
  TORCH_CHECK(keys.device().is_cpu(), "knn_prepare (C++ CPU): keys must be on the CPU");
  check_codes("knn_prepare", metric, precision);
  TORCH_CHECK(precision != kInt8 || (keys.scalar_type() == at::kByte && metric != kCosine),
              "knn_prepare: the int8 pass needs uint8 keys and metric l2 or ip");
  TORCH_CHECK(precision == kInt8 || keys.is_floating_point() || keys.scalar_type() == at::kByte,
              "knn_prepare: float passes need floating-point or uint8 keys, got ",
              keys.scalar_type());
  TORCH_CHECK(metric != kL2 || precision == kInt8 || centre.numel() == keys.size(1),
              "knn_prepare: l2 needs a centre of D=", keys.size(1), " values");
  TORCH_CHECK(precision != kInt8 && precision != kQ8 || keys.size(1) < int64_t{1} << 17,
              "knn_prepare: the int8 passes are exact only for D < 2^17");
  Prepared p = prepare(rows_for(keys, precision), centre_point(centre, metric, precision), metric,
                       precision, false);
  if (!p.scale.defined()) p.scale = keys.new_empty({0}, at::kFloat);
  return {p.gemm, p.norm, p.delta, p.add, p.scale, p.level};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> knn_candidates_cpu(
    const at::Tensor& queries, const at::Tensor& key_gemm, const at::Tensor& key_norm,
    const at::Tensor& key_delta, const at::Tensor& key_add, const at::Tensor& key_scale,
    const at::Tensor& key_level,
    const at::Tensor& centre, int64_t k, int64_t metric, int64_t precision, int64_t tile_elems,
    int64_t capacity, int64_t offset) {
  check_codes("knn_candidates", metric, precision);
  const int64_t N = key_gemm.size(0);
  TORCH_CHECK(queries.dim() == 2 && key_gemm.dim() == 2,
              "knn_candidates: queries and prepared keys must be [M, D] and [N, D], got ",
              queries.sizes(), " and ", key_gemm.sizes());
  TORCH_CHECK(queries.size(1) == key_gemm.size(1), "knn_candidates: queries have D=",
              queries.size(1), " but keys have D=", key_gemm.size(1));
  TORCH_CHECK(queries.device().is_cpu() && key_gemm.device().is_cpu(),
              "knn_candidates (C++ CPU): inputs must be on the CPU");
  const auto want = precision == kInt8 || precision == kQ8 ? at::kChar
                    : precision == kBF16                  ? at::kBFloat16
                    : precision == kFP32                  ? at::kFloat
                                                          : at::kDouble;
  TORCH_CHECK(key_gemm.scalar_type() == want && key_gemm.is_contiguous(),
              "knn_candidates: prepared keys of this pass are contiguous ", want, ", got ",
              key_gemm.scalar_type(), " (prepare them with knn_prepare)");
  for (const at::Tensor* v : {&key_norm, &key_delta, &key_add}) {
    TORCH_CHECK(v->scalar_type() == at::kDouble && v->dim() == 1 && v->size(0) == N &&
                    v->is_contiguous(),
                "knn_candidates: prepared norm / delta / add must be float64 [N]");
  }
  TORCH_CHECK(precision != kQ8 || (key_scale.scalar_type() == at::kFloat &&
                                   key_scale.numel() == N && key_scale.is_contiguous()),
              "knn_candidates: the q8 pass needs float32 key scales [N]");
  TORCH_CHECK(k >= 1 && capacity >= k, "knn_candidates: need 1 <= k <= capacity, got k=", k,
              " capacity=", capacity);
  TORCH_CHECK(precision != kInt8 || (queries.scalar_type() == at::kByte && metric != kCosine),
              "knn_candidates: the int8 pass needs uint8 queries and metric l2 or ip");
  TORCH_CHECK(precision == kInt8 || queries.is_floating_point() ||
                  queries.scalar_type() == at::kByte,
              "knn_candidates: float passes need floating-point or uint8 queries, got ",
              queries.scalar_type());
  TORCH_CHECK(metric != kL2 || precision == kInt8 || centre.numel() == key_gemm.size(1),
              "knn_candidates: l2 needs a centre of D=", key_gemm.size(1), " values");
  if (queries.size(0) == 0 || N == 0) {
    const auto o = queries.options();
    const int64_t M = queries.size(0);
    return {at::full({M, 1}, -1, o.dtype(at::kLong)),
            at::full({M, 1}, std::numeric_limits<double>::infinity(), o.dtype(at::kDouble)),
            at::full({M}, std::numeric_limits<double>::infinity(), o.dtype(at::kDouble)),
            at::zeros({M}, o.dtype(at::kBool))};
  }
  TORCH_CHECK(key_level.scalar_type() == at::kDouble && key_level.dim() == 2 &&
                  key_level.size(0) == N && key_level.size(1) == 3 && key_level.is_contiguous(),
              "knn_candidates: prepared level must be float64 [N, 3]");
  const Prepared keys{key_gemm, key_norm, key_delta, key_add, key_scale, key_level};
  const auto q = rows_for(queries, precision);
  const auto mu = centre_point(centre, metric, precision);
  const int64_t te = std::max<int64_t>(tile_elems, 1);
  if (precision == kFP64 || precision == kInt8) {
    return run_candidates<double>(q, keys, mu, k, metric, precision, te, capacity, offset);
  }
  return run_candidates<float>(q, keys, mu, k, metric, precision, te, capacity, offset);
}

// Direct float64 score of one candidate row: l2 Σ(q − x)², else (⟨q, x⟩, ‖x‖²); 8 lanes
// so the loop vectorizes without reassociation flags.
template <typename T, bool L2>
inline std::pair<double, double> direct(const double* q, const T* x, int64_t D) {
  double acc[8] = {}, xx[8] = {};
  int64_t c = 0;
  for (; c + 8 <= D; c += 8) {
    for (int l = 0; l < 8; ++l) {
      const double a = q[c + l], v = static_cast<double>(x[c + l]);
      if constexpr (L2) {
        acc[l] += (a - v) * (a - v);
      } else {
        acc[l] += a * v;
        xx[l] += v * v;
      }
    }
  }
  for (; c < D; ++c) {
    const double a = q[c], v = static_cast<double>(x[c]);
    if constexpr (L2) {
      acc[0] += (a - v) * (a - v);
    } else {
      acc[0] += a * v;
      xx[0] += v * v;
    }
  }
  double s = 0, n2 = 0;
  for (int l = 0; l < 8; ++l) {
    s += acc[l];
    n2 += xx[l];
  }
  return {s, n2};
}

// float32 / float64 keys (the common case) get AVX-512 / AVX2 clones of the same loop
PDG_CLONES double direct_l2(const double* q, const float* x, int64_t D) {
  return direct<float, true>(q, x, D).first;
}
PDG_CLONES double direct_l2(const double* q, const double* x, int64_t D) {
  return direct<double, true>(q, x, D).first;
}
double direct_l2(const double* q, const uint8_t* x, int64_t D) {
  return direct<uint8_t, true>(q, x, D).first;
}

template <typename T>
double score_of(const double* q, double qn, const T* x, int64_t D, int64_t metric) {
  if (metric == kL2) return direct_l2(q, x, D);
  const auto [dot, n2] = direct<T, false>(q, x, D);
  return metric == kCosine ? dot / (qn * std::max(std::sqrt(n2), 1e-300)) : dot;
}

// With the candidates' certified lower bounds (knn_candidates' lo, in its score units s:
// l2 ‖q − x‖² − ‖q − μ‖², cosine −cos) the re-rank scores the candidates of a row in
// order of lower bound and stops at the first whose bound exceeds the k-th exact score T
// so far (plus its float64 rounding): that key and all after it have s > T ≥ the true k-th
// best, so none can be in the top k, even on ties. Candidates must be distinct per row.
// ip keeps every candidate (its rounding is relative to ‖q‖‖x‖, not to the scores).
std::tuple<at::Tensor, at::Tensor> knn_rerank_cpu(const at::Tensor& queries,
                                                  const at::Tensor& keys, const at::Tensor& cand,
                                                  int64_t k, int64_t metric,
                                                  const std::optional<at::Tensor>& lower,
                                                  const std::optional<at::Tensor>& centre) {
  TORCH_CHECK(queries.dim() == 2 && keys.dim() == 2 && cand.dim() == 2,
              "knn_rerank: queries [M, D], keys [U, D], cand [M, C] expected");
  TORCH_CHECK(queries.size(1) == keys.size(1) && cand.size(0) == queries.size(0),
              "knn_rerank: shapes disagree: queries ", queries.sizes(), ", keys ", keys.sizes(),
              ", cand ", cand.sizes());
  TORCH_CHECK(cand.scalar_type() == at::kLong, "knn_rerank: cand must be int64");
  TORCH_CHECK(metric >= kL2 && metric <= kCosine, "knn_rerank: bad metric code ", metric);
  const bool early = lower.has_value() && metric != kIP;
  TORCH_CHECK(!lower.has_value() || (lower->sizes() == cand.sizes() &&
                                     lower->scalar_type() == at::kDouble),
              "knn_rerank: lower must be float64 shaped like cand");
  TORCH_CHECK(!early || metric != kL2 || (centre.has_value() && centre->numel() == queries.size(1)),
              "knn_rerank: lower bounds of l2 need the centre they were computed with");
  const at::Tensor lo_t = early ? lower->contiguous() : at::Tensor();
  const at::Tensor mu_t = early && metric == kL2 ? centre->to(at::kFloat).to(at::kDouble).contiguous()
                                                 : at::Tensor();
  const double* LO = early ? lo_t.const_data_ptr<double>() : nullptr;
  const double* MU = mu_t.defined() ? mu_t.const_data_ptr<double>() : nullptr;
  const auto kt = keys.scalar_type();
  TORCH_CHECK(kt == at::kFloat || kt == at::kDouble || kt == at::kByte,
              "knn_rerank: keys must be float32, float64 or uint8, got ", kt);
  const int64_t M = queries.size(0), D = queries.size(1), C = cand.size(1), U = keys.size(0);
  const at::Tensor qd = queries.to(at::kDouble).contiguous();
  const at::Tensor x = keys.contiguous();
  const at::Tensor ci = cand.contiguous();
  auto out_v = at::empty({M, k}, qd.options());
  auto out_i = at::full({M, k}, -1, ci.options());
  const double* Q = qd.const_data_ptr<double>();
  const int64_t* I = ci.const_data_ptr<int64_t>();
  const void* X = x.const_data_ptr();
  double* OV = out_v.mutable_data_ptr<double>();
  int64_t* OI = out_i.mutable_data_ptr<int64_t>();
  const bool largest = metric != kL2;
  std::atomic<bool> bad_index{false};
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(C * D, 1));
  at::parallel_for(0, M, grain, [&](int64_t b, int64_t e) {
    std::vector<std::pair<double, int64_t>> scored, order;
    std::vector<double> heap;  // max-heap of the k smallest exact s so far (early stop)
    for (int64_t r = b; r < e; ++r) {
      const double* q = Q + r * D;
      double qn = 0, qq = 0;  // ‖q‖ (cosine), ‖q − μ‖² (l2 with bounds)
      if (metric == kCosine) {
        for (int64_t c = 0; c < D; ++c) qn += q[c] * q[c];
        qn = std::max(std::sqrt(qn), 1e-300);
      }
      if (MU != nullptr) {
        for (int64_t c = 0; c < D; ++c) qq += (q[c] - MU[c]) * (q[c] - MU[c]);
      }
      // the candidates in the order they are scored: by lower bound, or as given
      order.clear();
      for (int64_t j = 0; j < C; ++j) {
        if (I[r * C + j] >= 0) order.emplace_back(early ? LO[r * C + j] : 0.0, I[r * C + j]);
      }
      if (early) std::sort(order.begin(), order.end());
      scored.clear();
      heap.clear();
      for (const auto& [lo, i] : order) {
        if (i >= U) {
          bad_index = true;
          continue;
        }
        if (early && static_cast<int64_t>(heap.size()) == k) {
          const double T = heap.front();
          // float64 rounding of s: (D + 2)·2^-53 of the magnitudes it is formed from
          const double err = (D + 8) * 0x1p-52 * (metric == kL2 ? std::abs(T) + 2 * qq : 2.0);
          if (lo > T + err) break;
        }
        const double sc =
            kt == at::kFloat    ? score_of(q, qn, static_cast<const float*>(X) + i * D, D, metric)
            : kt == at::kDouble ? score_of(q, qn, static_cast<const double*>(X) + i * D, D, metric)
                                : score_of(q, qn, static_cast<const uint8_t*>(X) + i * D, D, metric);
        scored.emplace_back(sc, i);
        if (early) {
          const double s_exact = metric == kL2 ? sc - qq : -sc;
          if (static_cast<int64_t>(heap.size()) < k) {
            heap.push_back(s_exact);
            std::push_heap(heap.begin(), heap.end());
          } else if (s_exact < heap.front()) {
            std::pop_heap(heap.begin(), heap.end());
            heap.back() = s_exact;
            std::push_heap(heap.begin(), heap.end());
          }
        }
      }
      std::sort(scored.begin(), scored.end(), [largest](const auto& a, const auto& b2) {
        if (a.first != b2.first) return largest ? a.first > b2.first : a.first < b2.first;
        return a.second < b2.second;
      });
      scored.erase(std::unique(scored.begin(), scored.end()), scored.end());
      const int64_t n = std::min<int64_t>(k, static_cast<int64_t>(scored.size()));
      for (int64_t j = 0; j < k; ++j) {
        OV[r * k + j] = j < n ? scored[j].first : std::numeric_limits<double>::quiet_NaN();
        OI[r * k + j] = j < n ? scored[j].second : -1;
      }
    }
  });
  TORCH_CHECK(!bad_index, "knn_rerank: a candidate index is >= the number of keys ", U);
  return {out_v, out_i};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffgen, CPU, m) {
  m.impl("knn_prepare", &knn_prepare_cpu);
  m.impl("knn_candidates", &knn_candidates_cpu);
  m.impl("knn_rerank", &knn_rerank_cpu);
}

}  // namespace pydiffgen
