// CPU kernels of pydiffgen::groupnorm_film_silu_fwd / _bwd (schemas in csrc/pydiffgen_C.cpp).
//
// Formula (pydiffgen.ops.reference.groupnorm_film_silu), x [B, C, L] (L = H·W), G groups of
// Cg = C/G channels, N = Cg·L elements per (b, g):
//   μ, r = mean, 1/sqrt(var + eps) of x[b, g]           (biased variance)
//   x̂ = (x − μ)·r;  h = x̂·w_c + β_c;  z = h·(1 + s_bc) + t_bc;  y = z·sigmoid(z)
// Forward folds everything into one affine map per (b, c): z = a_bc·x + d_bc with
//   a = r·w·(1 + s),  d = (β − μ·r·w)(1 + s) + t.
// Backward, with dz = dy·σ(z)(1 + z(1 − σ(z))), per (b, c) sums S1 = Σ_L dz, S2 = Σ_L dz·x̂,
// k_bc = (1 + s_bc)·w_c and per group A = Σ_c k S1, Bg = Σ_c k S2:
//   dx = r·(k·dz − A/N − x̂·Bg/N)
//   dshift = S1, dscale = w·S2 + β·S1, dweight = Σ_b (1 + s)·S2, dbias = Σ_b (1 + s)·S1.
//
// Work split: at::parallel_for (OpenMP) over the B·G (batch, group) slabs; each slab
// (Cg·L contiguous elements) is read twice in the forward (statistics, output) and twice
// in the backward (dz and the sums into a per-thread float scratch, then dx), so the second
// read comes from cache. The float32 inner loops are `omp simd` functions compiled for
// AVX-512, AVX2 and the baseline (GCC target_clones), chosen by the CPU at load time.
//
// Numerics: Σx and Σx² accumulate in float32 over blocks of 512 elements (vectorized) and
// in float64 across blocks (var = E[x²] − μ², clamped at 0, loses accuracy only when
// |μ|/σ is large: ~1e3 for a 1e-3 relative error of var);
// bf16/fp16 inputs are upcast to float32 and the per-channel coefficients, dz and the
// sums S1, S2 use float32 (float64 accumulators for the sums); float64 inputs run in
// float64 throughout. sigmoid uses a Cephes-style exp polynomial (≈ 2 ulp, branch-free,
// vectorizable) with its argument clamped to ±87 (sigmoid is 0 / 1 to float precision there).
// Layout: contiguous NCHW; other layouts are copied to it (the Triton kernel handles
// strided / channels-last inputs natively).

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "fast_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace pydiffgen {
namespace {

// exp(x) clamped to |x| <= 87, where float32 exp is finite and nonzero
inline float exp_clamped(float x) { return exp_poly(std::clamp(x, -87.0f, 87.0f)); }

inline double exp_clamped(double x) { return std::exp(x); }

template <typename acc_t>
inline acc_t sigmoid(acc_t z) {
  return acc_t(1) / (acc_t(1) + exp_clamped(-z));
}

// ---- float32 hot loops (PDG_CLONES: see fast_math.h)

PDG_CLONES void apply_f32(const float* x, float* y, int64_t n, float a, float d) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float z = a * x[i] + d;
    y[i] = z / (1.0f + exp_clamped(-z));
  }
}

// dz = dy·σ(z)(1 + z(1 − σ(z))) with z = a·x + d; returns Σ dz and Σ dz·x̂, x̂ = (x − μ)·r
PDG_CLONES void dz_f32(const float* x, const float* dy, float* dz, int64_t n, float a, float d,
                       float mu, float r, double* s1_out, double* s2_out) {
  double s1 = 0, s2 = 0;
  for (int64_t i0 = 0; i0 < n; i0 += 512) {
    const int64_t m = std::min<int64_t>(512, n - i0);
    float p1 = 0, p2 = 0;
#pragma omp simd reduction(+ : p1, p2)
    for (int64_t i = 0; i < m; ++i) {
      const float xv = x[i0 + i];
      const float z = a * xv + d;
      const float sg = 1.0f / (1.0f + exp_clamped(-z));
      const float g = dy[i0 + i] * sg * (1.0f + z * (1.0f - sg));
      dz[i0 + i] = g;
      p1 += g;
      p2 += g * ((xv - mu) * r);
    }
    s1 += p1;
    s2 += p2;
  }
  *s1_out = s1;
  *s2_out = s2;
}

// dx = r·(k·dz − An − x̂·Bn)
PDG_CLONES void dx_f32(const float* x, const float* dz, float* dx, int64_t n, float k, float mu,
                       float r, float An, float Bn) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    dx[i] = r * (k * dz[i] - An - (x[i] - mu) * r * Bn);
  }
}

// float64 for float64 inputs, float32 for every other floating dtype
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

struct Shape {
  int64_t B, C, L, G, Cg;
};

Shape shape_of(const at::Tensor& x, int64_t num_groups, const char* who) {
  TORCH_CHECK(x.dim() >= 2, who, ": x must be [B, C, *], got ", x.sizes());
  TORCH_CHECK(num_groups >= 1 && x.size(1) % num_groups == 0, who, ": num_groups=", num_groups,
              " must divide the channel count ", x.size(1));
  Shape s;
  s.B = x.size(0);
  s.C = x.size(1);
  s.L = x.numel() / std::max<int64_t>(1, s.B * s.C);
  s.G = num_groups;
  s.Cg = s.C / num_groups;
  return s;
}

void check_params(const Shape& s, const at::Tensor& weight, const at::Tensor& bias,
                  const at::Tensor& scale, const at::Tensor& shift, const char* who) {
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == s.C && bias.dim() == 1 &&
                  bias.size(0) == s.C,
              who, ": weight and bias must be [C] = [", s.C, "], got ", weight.sizes(), " and ",
              bias.sizes());
  TORCH_CHECK(scale.dim() == 2 && scale.size(0) == s.B && scale.size(1) == s.C &&
                  shift.dim() == 2 && shift.size(0) == s.B && shift.size(1) == s.C,
              who, ": scale and shift must be [B, C] = [", s.B, ", ", s.C, "], got ",
              scale.sizes(), " and ", shift.sizes());
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const at::Tensor& w_, const at::Tensor& b_,
                    const at::Tensor& s_, const at::Tensor& t_, double eps, const Shape& sh,
                    at::Tensor& y, at::Tensor& mean_, at::Tensor& rstd_) {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* X = x.const_data_ptr<scalar_t>();
  const acc_t* W = w_.const_data_ptr<acc_t>();
  const acc_t* Bi = b_.const_data_ptr<acc_t>();
  const acc_t* S = s_.const_data_ptr<acc_t>();
  const acc_t* T = t_.const_data_ptr<acc_t>();
  scalar_t* Y = y.mutable_data_ptr<scalar_t>();
  acc_t* MEAN = mean_.mutable_data_ptr<acc_t>();
  acc_t* RSTD = rstd_.mutable_data_ptr<acc_t>();
  const int64_t L = sh.L, Cg = sh.Cg, C = sh.C, G = sh.G;
  const int64_t N = Cg * L;

  at::parallel_for(0, sh.B * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      const scalar_t* xs = X + bg * N;  // the (b, g) slab: Cg channels × L
      scalar_t* ys = Y + bg * N;
      double sum = 0, sumsq = 0;
#pragma omp simd reduction(+ : sum, sumsq)
      for (int64_t i = 0; i < N; ++i) {
        const double v = static_cast<double>(static_cast<acc_t>(xs[i]));
        sum += v;
        sumsq += v * v;
      }
      const double mu = sum / static_cast<double>(N);
      const double var = std::max(sumsq / static_cast<double>(N) - mu * mu, 0.0);
      const double r = 1.0 / std::sqrt(var + eps);
      MEAN[bg] = static_cast<acc_t>(mu);
      RSTD[bg] = static_cast<acc_t>(r);
      for (int64_t j = 0; j < Cg; ++j) {
        const int64_t c = g * Cg + j;
        const double one_s = 1.0 + static_cast<double>(S[b * C + c]);
        const acc_t a = static_cast<acc_t>(r * W[c] * one_s);
        const acc_t d = static_cast<acc_t>((Bi[c] - mu * r * W[c]) * one_s + T[b * C + c]);
        const scalar_t* xc = xs + j * L;
        scalar_t* yc = ys + j * L;
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) {
          const acc_t z = a * static_cast<acc_t>(xc[i]) + d;
          yc[i] = static_cast<scalar_t>(z * sigmoid<acc_t>(z));
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean_,
                     const at::Tensor& rstd_, const at::Tensor& w_, const at::Tensor& b_,
                     const at::Tensor& s_, const at::Tensor& t_, const Shape& sh, at::Tensor& dx,
                     at::Tensor& S1_, at::Tensor& S2_) {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* DY = dy.const_data_ptr<scalar_t>();
  const scalar_t* X = x.const_data_ptr<scalar_t>();
  const acc_t* MEAN = mean_.const_data_ptr<acc_t>();
  const acc_t* RSTD = rstd_.const_data_ptr<acc_t>();
  const acc_t* W = w_.const_data_ptr<acc_t>();
  const acc_t* Bi = b_.const_data_ptr<acc_t>();
  const acc_t* S = s_.const_data_ptr<acc_t>();
  const acc_t* T = t_.const_data_ptr<acc_t>();
  scalar_t* DX = dx.mutable_data_ptr<scalar_t>();
  acc_t* S1 = S1_.mutable_data_ptr<acc_t>();
  acc_t* S2 = S2_.mutable_data_ptr<acc_t>();
  const int64_t L = sh.L, Cg = sh.Cg, C = sh.C, G = sh.G;
  const int64_t N = Cg * L;

  at::parallel_for(0, sh.B * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dz_buf(N);  // this thread's dz for one slab (re-read from cache)
    acc_t* dz = dz_buf.data();
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      const scalar_t* xs = X + bg * N;
      const scalar_t* dys = DY + bg * N;
      scalar_t* dxs = DX + bg * N;
      const acc_t mu = MEAN[bg], r = RSTD[bg];
      double A = 0, Bg = 0;
      // pass 1: dz and the per-channel sums S1 = Σ dz, S2 = Σ dz·x̂
      for (int64_t j = 0; j < Cg; ++j) {
        const int64_t c = g * Cg + j;
        const acc_t one_s = acc_t(1) + S[b * C + c];
        const acc_t a = r * W[c] * one_s;  // z = a·x + d, as in the forward
        const acc_t d = (Bi[c] - mu * r * W[c]) * one_s + T[b * C + c];
        const scalar_t* xc = xs + j * L;
        const scalar_t* dyc = dys + j * L;
        acc_t* dzc = dz + j * L;
        double s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t i = 0; i < L; ++i) {
          const acc_t xv = static_cast<acc_t>(xc[i]);
          const acc_t z = a * xv + d;
          const acc_t sg = sigmoid<acc_t>(z);
          const acc_t dzi = static_cast<acc_t>(dyc[i]) * sg * (acc_t(1) + z * (acc_t(1) - sg));
          dzc[i] = dzi;
          s1 += dzi;
          s2 += dzi * ((xv - mu) * r);
        }
        S1[b * C + c] = static_cast<acc_t>(s1);
        S2[b * C + c] = static_cast<acc_t>(s2);
        const double k = static_cast<double>(one_s) * W[c];
        A += k * s1;
        Bg += k * s2;
      }
      // pass 2: dx = r·(k·dz − A/N − x̂·Bg/N)
      const acc_t An = static_cast<acc_t>(A / static_cast<double>(N));
      const acc_t Bn = static_cast<acc_t>(Bg / static_cast<double>(N));
      for (int64_t j = 0; j < Cg; ++j) {
        const int64_t c = g * Cg + j;
        const acc_t k = (acc_t(1) + S[b * C + c]) * W[c];
        const scalar_t* xc = xs + j * L;
        const acc_t* dzc = dz + j * L;
        scalar_t* dxc = dxs + j * L;
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) {
          const acc_t xhat = (static_cast<acc_t>(xc[i]) - mu) * r;
          dxc[i] = static_cast<scalar_t>(r * (k * dzc[i] - An - xhat * Bn));
        }
      }
    }
  });
}

// The float32 / bf16 / fp16 path: each (b, g) slab goes through the float32 hot loops
// (bf16 / fp16 slabs are converted to a per-thread float32 buffer first and back after).
template <typename scalar_t>
void forward_float(const at::Tensor& x, const at::Tensor& w_, const at::Tensor& b_,
                   const at::Tensor& s_, const at::Tensor& t_, double eps, const Shape& sh,
                   at::Tensor& y, at::Tensor& mean_, at::Tensor& rstd_) {
  constexpr bool direct = std::is_same_v<scalar_t, float>;
  const scalar_t* X = x.const_data_ptr<scalar_t>();
  const float* W = w_.const_data_ptr<float>();
  const float* Bi = b_.const_data_ptr<float>();
  const float* S = s_.const_data_ptr<float>();
  const float* T = t_.const_data_ptr<float>();
  scalar_t* Y = y.mutable_data_ptr<scalar_t>();
  float* MEAN = mean_.mutable_data_ptr<float>();
  float* RSTD = rstd_.mutable_data_ptr<float>();
  const int64_t L = sh.L, Cg = sh.Cg, C = sh.C, G = sh.G;
  const int64_t N = Cg * L;

  at::parallel_for(0, sh.B * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xbuf(direct ? 0 : N), ybuf(direct ? 0 : N);
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      const float* xs;
      float* ys;
      if constexpr (direct) {
        xs = X + bg * N;
        ys = Y + bg * N;
      } else {
        for (int64_t i = 0; i < N; ++i) xbuf[i] = static_cast<float>(X[bg * N + i]);
        xs = xbuf.data();
        ys = ybuf.data();
      }
      double sum = 0, sumsq = 0;
      add_sum_sumsq_f32(xs, N, &sum, &sumsq);
      const double mu = sum / static_cast<double>(N);
      const double var = std::max(sumsq / static_cast<double>(N) - mu * mu, 0.0);
      const double r = 1.0 / std::sqrt(var + eps);
      MEAN[bg] = static_cast<float>(mu);
      RSTD[bg] = static_cast<float>(r);
      for (int64_t j = 0; j < Cg; ++j) {
        const int64_t c = g * Cg + j;
        const double one_s = 1.0 + static_cast<double>(S[b * C + c]);
        const float a = static_cast<float>(r * W[c] * one_s);
        const float d = static_cast<float>((Bi[c] - mu * r * W[c]) * one_s + T[b * C + c]);
        apply_f32(xs + j * L, ys + j * L, L, a, d);
      }
      if constexpr (!direct) {
        for (int64_t i = 0; i < N; ++i) Y[bg * N + i] = static_cast<scalar_t>(ys[i]);
      }
    }
  });
}

template <typename scalar_t>
void backward_float(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& mean_,
                    const at::Tensor& rstd_, const at::Tensor& w_, const at::Tensor& b_,
                    const at::Tensor& s_, const at::Tensor& t_, const Shape& sh, at::Tensor& dx,
                    at::Tensor& S1_, at::Tensor& S2_) {
  constexpr bool direct = std::is_same_v<scalar_t, float>;
  const scalar_t* DY = dy.const_data_ptr<scalar_t>();
  const scalar_t* X = x.const_data_ptr<scalar_t>();
  const float* MEAN = mean_.const_data_ptr<float>();
  const float* RSTD = rstd_.const_data_ptr<float>();
  const float* W = w_.const_data_ptr<float>();
  const float* Bi = b_.const_data_ptr<float>();
  const float* S = s_.const_data_ptr<float>();
  const float* T = t_.const_data_ptr<float>();
  scalar_t* DX = dx.mutable_data_ptr<scalar_t>();
  float* S1 = S1_.mutable_data_ptr<float>();
  float* S2 = S2_.mutable_data_ptr<float>();
  const int64_t L = sh.L, Cg = sh.Cg, C = sh.C, G = sh.G;
  const int64_t N = Cg * L;

  at::parallel_for(0, sh.B * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> dz(N);  // this thread's dz for one slab (re-read from cache)
    std::vector<float> xbuf(direct ? 0 : N), dybuf(direct ? 0 : N), dxbuf(direct ? 0 : N);
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      const float *xs, *dys;
      float* dxs;
      if constexpr (direct) {
        xs = X + bg * N;
        dys = DY + bg * N;
        dxs = DX + bg * N;
      } else {
        for (int64_t i = 0; i < N; ++i) {
          xbuf[i] = static_cast<float>(X[bg * N + i]);
          dybuf[i] = static_cast<float>(DY[bg * N + i]);
        }
        xs = xbuf.data();
        dys = dybuf.data();
        dxs = dxbuf.data();
      }
      const float mu = MEAN[bg], r = RSTD[bg];
      double A = 0, Bg = 0;
      // pass 1: dz and the per-channel sums S1 = Σ dz, S2 = Σ dz·x̂
      for (int64_t j = 0; j < Cg; ++j) {
        const int64_t c = g * Cg + j;
        const float one_s = 1.0f + S[b * C + c];
        const float a = r * W[c] * one_s;  // z = a·x + d, as in the forward
        const float d = (Bi[c] - mu * r * W[c]) * one_s + T[b * C + c];
        double s1, s2;
        dz_f32(xs + j * L, dys + j * L, dz.data() + j * L, L, a, d, mu, r, &s1, &s2);
        S1[b * C + c] = static_cast<float>(s1);
        S2[b * C + c] = static_cast<float>(s2);
        const double k = static_cast<double>(one_s) * W[c];
        A += k * s1;
        Bg += k * s2;
      }
      // pass 2: dx = r·(k·dz − A/N − x̂·Bg/N)
      const float An = static_cast<float>(A / static_cast<double>(N));
      const float Bn = static_cast<float>(Bg / static_cast<double>(N));
      for (int64_t j = 0; j < Cg; ++j) {
        const int64_t c = g * Cg + j;
        const float k = (1.0f + S[b * C + c]) * W[c];
        dx_f32(xs + j * L, dz.data() + j * L, dxs + j * L, L, k, mu, r, An, Bn);
      }
      if constexpr (!direct) {
        for (int64_t i = 0; i < N; ++i) DX[bg * N + i] = static_cast<scalar_t>(dxs[i]);
      }
    }
  });
}

at::ScalarType acc_scalar_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> groupnorm_film_silu_fwd_cpu(
    const at::Tensor& x_, int64_t num_groups, const at::Tensor& weight, const at::Tensor& bias,
    const at::Tensor& scale, const at::Tensor& shift, double eps) {
  const char* who = "groupnorm_film_silu_fwd (C++)";
  const Shape sh = shape_of(x_, num_groups, who);
  check_params(sh, weight, bias, scale, shift, who);
  TORCH_CHECK(x_.is_floating_point(), who, ": x must be floating point, got ", x_.scalar_type());
  const auto acc = acc_scalar_type(x_);
  const auto x = x_.contiguous();
  const auto w = weight.to(acc).contiguous(), b = bias.to(acc).contiguous();
  const auto s = scale.to(acc).contiguous(), t = shift.to(acc).contiguous();
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto mean = at::empty({sh.B, sh.G}, x.options().dtype(acc));
  auto rstd = at::empty({sh.B, sh.G}, x.options().dtype(acc));
  if (x.numel() == 0) return {y, mean.zero_(), rstd.zero_()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gfs_fwd", [&] {
    if constexpr (std::is_same_v<scalar_t, double>) {
      forward_kernel<double>(x, w, b, s, t, eps, sh, y, mean, rstd);
    } else {
      forward_float<scalar_t>(x, w, b, s, t, eps, sh, y, mean, rstd);
    }
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
groupnorm_film_silu_bwd_cpu(const at::Tensor& grad, const at::Tensor& x_, const at::Tensor& mean,
                            const at::Tensor& rstd, int64_t num_groups, const at::Tensor& weight,
                            const at::Tensor& bias, const at::Tensor& scale,
                            const at::Tensor& shift) {
  const char* who = "groupnorm_film_silu_bwd (C++)";
  const Shape sh = shape_of(x_, num_groups, who);
  check_params(sh, weight, bias, scale, shift, who);
  TORCH_CHECK(grad.sizes() == x_.sizes(), who, ": grad must have x's shape ", x_.sizes(),
              ", got ", grad.sizes());
  const auto acc = acc_scalar_type(x_);
  const auto x = x_.contiguous();
  const auto dy = grad.to(x.scalar_type()).contiguous();
  const auto w = weight.to(acc).contiguous(), b = bias.to(acc).contiguous();
  const auto s = scale.to(acc).contiguous(), t = shift.to(acc).contiguous();
  const auto mu = mean.to(acc).contiguous(), r = rstd.to(acc).contiguous();
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto S1 = at::zeros({sh.B, sh.C}, x.options().dtype(acc));
  auto S2 = at::zeros({sh.B, sh.C}, x.options().dtype(acc));
  if (x.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gfs_bwd", [&] {
      if constexpr (std::is_same_v<scalar_t, double>) {
        backward_kernel<double>(dy, x, mu, r, w, b, s, t, sh, dx, S1, S2);
      } else {
        backward_float<scalar_t>(dy, x, mu, r, w, b, s, t, sh, dx, S1, S2);
      }
    });
  }
  const auto one_s = s.add(1);                                   // [B, C]
  auto dweight = one_s.mul(S2).sum(0);                           // [C]
  auto dbias = one_s.mul(S1).sum(0);                             // [C]
  auto dscale = S2.mul(w.unsqueeze(0)).add(S1.mul(b.unsqueeze(0)));  // [B, C]
  return {dx, dweight, dbias, dscale, S1};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffgen, CPU, m) {
  m.impl("groupnorm_film_silu_fwd", &groupnorm_film_silu_fwd_cpu);
  m.impl("groupnorm_film_silu_bwd", &groupnorm_film_silu_bwd_cpu);
}

}  // namespace pydiffgen
