// CPU kernels of pydiffgen::bf_batchnorm_relu_fwd / _bwd (schemas in csrc/pydiffgen_C.cpp):
// bias-free batch norm in training mode followed by ReLU (Mohan et al. 2020).
//
// Formula (pydiffgen.ops.reference.bf_batchnorm_relu), x [B, C, L] (L = H·W), N = B·L:
//   μ_c = mean_{B,L} x,  std_c = sqrt(Var_{B,L}[x_c] + eps)   (biased variance)
//   y = ReLU(x · γ_c / std_c)                                  (NO mean subtraction of x)
// The op also returns μ and std (the module updates running_std from std).
// Backward with m = [x·γ/std > 0], P_c = Σ dy·m·x and incoming grads ḡ_μ, ḡ_std:
//   dγ = P/std;  d_std = ḡ_std − P·γ/std²;
//   dx = dy·m·γ/std + d_std·(x − μ)/(N·std) + ḡ_μ/N.
//
// Work split: at::parallel_for over channels; a channel is B strided runs of L contiguous
// elements, each run handled by float32 `omp simd` loops compiled for AVX-512 / AVX2 /
// baseline (GCC target_clones). Numerics: Σx, Σx² and P in float32 over blocks of 512
// elements, float64 across blocks (var = E[x²] − μ², clamped at 0); bf16 / fp16 runs are
// converted to float32; float64 inputs run in float64. Contiguous NCHW (others are copied).

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "fast_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace pydiffgen {
namespace {

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// ---- float32 hot loops (PDG_CLONES: see fast_math.h)

PDG_CLONES void relu_scale_f32(const float* x, float* y, int64_t n, float k) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float z = x[i] * k;
    y[i] = z > 0.0f ? z : 0.0f;
  }
}

// Σ dy·x over the elements where x·k > 0
PDG_CLONES double masked_dot_f32(const float* x, const float* dy, int64_t n, float k) {
  double P = 0;
  for (int64_t i0 = 0; i0 < n; i0 += 512) {
    const int64_t m = std::min<int64_t>(512, n - i0);
    float p = 0;
#pragma omp simd reduction(+ : p)
    for (int64_t i = 0; i < m; ++i) {
      p += x[i0 + i] * k > 0.0f ? dy[i0 + i] * x[i0 + i] : 0.0f;
    }
    P += p;
  }
  return P;
}

PDG_CLONES void bn_dx_f32(const float* x, const float* dy, float* dx, int64_t n, float k,
                          float cx, float mu, float c0) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float g = x[i] * k > 0.0f ? dy[i] * k : 0.0f;
    dx[i] = g + cx * (x[i] - mu) + c0;
  }
}

// A row of L elements as float32: the row itself for float32, else a converted copy.
template <typename scalar_t>
const float* as_float(const scalar_t* p, int64_t n, std::vector<float>& buf) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return p;
  } else {
    buf.resize(n);
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(p[i]);
    return buf.data();
  }
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const at::Tensor& gain, double eps, int64_t B,
                    int64_t C, int64_t L, at::Tensor& y, at::Tensor& mean_, at::Tensor& std_) {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* X = x.const_data_ptr<scalar_t>();
  const acc_t* GAIN = gain.const_data_ptr<acc_t>();
  scalar_t* Y = y.mutable_data_ptr<scalar_t>();
  acc_t* MEAN = mean_.mutable_data_ptr<acc_t>();
  acc_t* STD = std_.mutable_data_ptr<acc_t>();
  const double N = static_cast<double>(B * L);
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xbuf, ybuf;
    for (int64_t c = begin; c < end; ++c) {
      double sum = 0, sumsq = 0;
      for (int64_t b = 0; b < B; ++b) {
        const scalar_t* xr = X + (b * C + c) * L;
        if constexpr (std::is_same_v<scalar_t, double>) {
#pragma omp simd reduction(+ : sum, sumsq)
          for (int64_t i = 0; i < L; ++i) {
            sum += xr[i];
            sumsq += xr[i] * xr[i];
          }
        } else {
          add_sum_sumsq_f32(as_float(xr, L, xbuf), L, &sum, &sumsq);
        }
      }
      const double mu = sum / N;
      const double sd = std::sqrt(std::max(sumsq / N - mu * mu, 0.0) + eps);
      MEAN[c] = static_cast<acc_t>(mu);
      STD[c] = static_cast<acc_t>(sd);
      const acc_t k = static_cast<acc_t>(GAIN[c] / sd);
      for (int64_t b = 0; b < B; ++b) {
        const scalar_t* xr = X + (b * C + c) * L;
        scalar_t* yr = Y + (b * C + c) * L;
        if constexpr (std::is_same_v<scalar_t, double>) {
          for (int64_t i = 0; i < L; ++i) yr[i] = std::max(xr[i] * k, 0.0);
        } else if constexpr (std::is_same_v<scalar_t, float>) {
          relu_scale_f32(xr, yr, L, k);
        } else {
          ybuf.resize(L);
          relu_scale_f32(as_float(xr, L, xbuf), ybuf.data(), L, k);
          for (int64_t i = 0; i < L; ++i) yr[i] = static_cast<scalar_t>(ybuf[i]);
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& dy, const at::Tensor& gmean, const at::Tensor& gstd,
                     const at::Tensor& x, const at::Tensor& mean_, const at::Tensor& std_,
                     const at::Tensor& gain, int64_t B, int64_t C, int64_t L, at::Tensor& dx,
                     at::Tensor& dgain) {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* DY = dy.const_data_ptr<scalar_t>();
  const scalar_t* X = x.const_data_ptr<scalar_t>();
  const acc_t* GM = gmean.const_data_ptr<acc_t>();
  const acc_t* GS = gstd.const_data_ptr<acc_t>();
  const acc_t* MEAN = mean_.const_data_ptr<acc_t>();
  const acc_t* STD = std_.const_data_ptr<acc_t>();
  const acc_t* GAIN = gain.const_data_ptr<acc_t>();
  scalar_t* DX = dx.mutable_data_ptr<scalar_t>();
  acc_t* DG = dgain.mutable_data_ptr<acc_t>();
  const double N = static_cast<double>(B * L);
  at::parallel_for(0, C, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xbuf, dybuf, dxbuf;
    for (int64_t c = begin; c < end; ++c) {
      const acc_t sd = STD[c], mu = MEAN[c];
      const acc_t k = GAIN[c] / sd;
      double P = 0;
      for (int64_t b = 0; b < B; ++b) {
        const scalar_t* xr = X + (b * C + c) * L;
        const scalar_t* dyr = DY + (b * C + c) * L;
        if constexpr (std::is_same_v<scalar_t, double>) {
          for (int64_t i = 0; i < L; ++i) P += xr[i] * k > 0 ? dyr[i] * xr[i] : 0.0;
        } else {
          P += masked_dot_f32(as_float(xr, L, xbuf), as_float(dyr, L, dybuf), L, k);
        }
      }
      DG[c] = static_cast<acc_t>(P / sd);
      const double dstd = static_cast<double>(GS[c]) - P * GAIN[c] / (static_cast<double>(sd) * sd);
      const acc_t cx = static_cast<acc_t>(dstd / (N * sd));  // coefficient of (x − μ)
      const acc_t c0 = static_cast<acc_t>(GM[c] / N);
      for (int64_t b = 0; b < B; ++b) {
        const scalar_t* xr = X + (b * C + c) * L;
        const scalar_t* dyr = DY + (b * C + c) * L;
        scalar_t* dxr = DX + (b * C + c) * L;
        if constexpr (std::is_same_v<scalar_t, double>) {
          for (int64_t i = 0; i < L; ++i) {
            const double g = xr[i] * k > 0 ? dyr[i] * k : 0.0;
            dxr[i] = g + cx * (xr[i] - mu) + c0;
          }
        } else if constexpr (std::is_same_v<scalar_t, float>) {
          bn_dx_f32(xr, dyr, dxr, L, k, cx, mu, c0);
        } else {
          dxbuf.resize(L);
          bn_dx_f32(as_float(xr, L, xbuf), as_float(dyr, L, dybuf), dxbuf.data(), L, k, cx, mu,
                    c0);
          for (int64_t i = 0; i < L; ++i) dxr[i] = static_cast<scalar_t>(dxbuf[i]);
        }
      }
    }
  });
}

at::ScalarType acc_scalar_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_shapes(const at::Tensor& x, const at::Tensor& gain, const char* who) {
  TORCH_CHECK(x.dim() >= 2, who, ": x must be [B, C, *], got ", x.sizes());
  TORCH_CHECK(x.is_floating_point(), who, ": x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(gain.dim() == 1 && gain.size(0) == x.size(1), who, ": gain must be [C] = [",
              x.size(1), "], got ", gain.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bf_batchnorm_relu_fwd_cpu(const at::Tensor& x_,
                                                                         const at::Tensor& gain,
                                                                         double eps) {
  check_shapes(x_, gain, "bf_batchnorm_relu_fwd (C++)");
  const auto acc = acc_scalar_type(x_);
  const auto x = x_.contiguous();
  const int64_t B = x.size(0), C = x.size(1);
  const int64_t L = x.numel() / std::max<int64_t>(1, B * C);
  const auto g = gain.to(acc).contiguous();
  auto y = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto mean = at::empty({C}, x.options().dtype(acc));
  auto sd = at::empty({C}, x.options().dtype(acc));
  TORCH_CHECK(B * L > 0, "bf_batchnorm_relu_fwd (C++): batch statistics need at least one "
              "element per channel, got x of shape ", x.sizes());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bfbn_fwd", [&] {
    forward_kernel<scalar_t>(x, g, eps, B, C, L, y, mean, sd);
  });
  return {y, mean, sd};
}

std::tuple<at::Tensor, at::Tensor> bf_batchnorm_relu_bwd_cpu(
    const at::Tensor& grad, const at::Tensor& grad_mean, const at::Tensor& grad_std,
    const at::Tensor& x_, const at::Tensor& mean, const at::Tensor& sd, const at::Tensor& gain) {
  const char* who = "bf_batchnorm_relu_bwd (C++)";
  check_shapes(x_, gain, who);
  TORCH_CHECK(grad.sizes() == x_.sizes(), who, ": grad must have x's shape ", x_.sizes(),
              ", got ", grad.sizes());
  const auto acc = acc_scalar_type(x_);
  const auto x = x_.contiguous();
  const int64_t B = x.size(0), C = x.size(1);
  const int64_t L = x.numel() / std::max<int64_t>(1, B * C);
  const auto dy = grad.to(x.scalar_type()).contiguous();
  const auto gm = grad_mean.to(acc).contiguous(), gs = grad_std.to(acc).contiguous();
  const auto mu = mean.to(acc).contiguous(), s = sd.to(acc).contiguous();
  const auto g = gain.to(acc).contiguous();
  auto dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  auto dgain = at::empty({C}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bfbn_bwd", [&] {
    backward_kernel<scalar_t>(dy, gm, gs, x, mu, s, g, B, C, L, dx, dgain);
  });
  return {dx, dgain};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffgen, CPU, m) {
  m.impl("bf_batchnorm_relu_fwd", &bf_batchnorm_relu_fwd_cpu);
  m.impl("bf_batchnorm_relu_bwd", &bf_batchnorm_relu_bwd_cpu);
}

}  // namespace pydiffgen
