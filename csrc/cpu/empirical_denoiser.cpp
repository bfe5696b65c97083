// CPU kernel of pydiffgen::empirical_denoiser (schema in csrc/pydiffgen_C.cpp).
//
// Formula: D_M(y; σ) = Σ_i softmax_i(−‖y − x_i‖²/(2σ²)) x_i for y [M, D], train x [N, D],
// σ [M] (float64). Returns (out [M, D] in y's dtype, err [M] float64). A float32 train
// under float64 y is upcast tile by tile (exactly): the dense float64 pass never holds a
// float64 copy of the training set (1.2 GB at N = 50,000 CIFAR images).
//
// Algorithm (flash-decoding style, never an [M, N] matrix): for each training tile
// x_t [t, D] (t·D ≈ 4 M elements, rows in chunks so the [m, t] logits stay ≤ 2 M):
//   1. one pass: xc = x_t − μ (upcast) and sq = ‖xc‖² into reused buffers; S = yc·xcᵀ
//      (at::mm, ATen's GEMM);
//   2. one fused pass per row (at::parallel_for / OpenMP): S −= ½·sq, so that S/σ² equals
//      −‖y − x‖²/(2σ²) up to a per-row constant; tile max, new running max m',
//      p = exp(logit − m') written over S, sum of p (float64), rescale factor exp(m − m');
//   3. G = P·xc (at::mm);
//   4. fused pass: acc = acc·exp(m − m') + G in float64 (the merge state is float64).
//   Finally out = acc / sum + μ (a lone dominant point gives x_i to float64 rounding, so
//   x_i exactly once rounded to float32). Cost: the two GEMMs, one pass over the training
//   set, two over the [m, t] logits, O(M·N) exps.
//
// Numerics, and why this pass is float64 (measured on 2 cores, M = 512, N = 20000,
// d = 1024, σ = 20: float64 GEMMs take 1.9× the float32 ones; this kernel ≈ 1.1–1.2× the
// float64 GEMMs). The caller (pydiffgen.ops.empirical) runs it only on the rows its
// certified bf16 candidate pass leaves dense (σ comparable to the data's spread) and
// needs every row within 1e-6 relative of the float64 softmax. A float32 dense pass cannot
// be certified there, at any σ in [0.002, 80]:
//   - logits: with y = x + σ·n, ‖y − μ‖ ≈ σ√d, so the logit error u·√D·‖y − μ‖·R/σ² is
//     ≈ u·D·R/σ (u = 6e-8, R = max ‖x − μ‖ ≈ 18.5): 5.7e-5 at σ = 20, 1.4e-5 at σ = 80;
//     it moves D by (e^(2Δ) − 1)·B, B ≈ 2R ≈ 37, against ‖D‖ ≈ 0.5: ≈ 1e-2 relative
//     (the estimate after centring; the rigorous γ_D bound is √D = 32× larger);
//   - weights alone: rounding each p_i to float32 is a logit error u, so (e^(2u) − 1)·B
//     ≈ 4e-6 relative, and the float32 sum of a t-row tile adds up to γ_t·Σ|p|‖x − μ‖;
//   so even exact logits with a float32 P·x fail the 1e-7 budget (TOL in ops/lse.py) by
//   40×. Splitting into more float32 / bf16 GEMMs (Ozaki-style hi/lo slices) costs ≥ 3
//   GEMMs per product, no cheaper than float64. The float32 instantiation stays for
//   float32 callers that accept its estimate; the dense rows of the op always run here in
//   float64, the two GEMMs at float64 speed.
// μ is the mean of ≤ 8192 evenly strided training rows (the expansion is shift-invariant;
// any point near the centre removes the cancellation of ‖y‖² + ‖x‖² − 2⟨y, x⟩ for data far
// from the origin). err[r] = 2·u·√D·(‖y_r − μ‖·R + R²/2)/σ_r² estimates each row's logit
// error (docs/science.md#empirical-optimum-numerics). float32 exp is a Cephes-style
// polynomial (≈ 2 ulp, branch-free so the compiler vectorizes it) on arguments ≤ 0;
// float64 uses std::exp.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "fast_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

namespace pydiffgen {
namespace {

// exp(x) for x <= 0, and exactly 0 below −87 (where float32 exp underflows)
inline float exp_nonpos(float x) { return x < -87.0f ? 0.0f : exp_poly(x); }

inline double exp_nonpos(double x) { return std::exp(x); }

// xc[i] = x[i] − μ (in scalar_t) and sq[i] = ‖xc[i]‖² for rows x [tn, D] of in_t
template <typename in_t, typename scalar_t>
void centre_rows(const in_t* x, int64_t tn, int64_t D, const scalar_t* mu, scalar_t* xc,
                 scalar_t* sq) {
  at::parallel_for(0, tn, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const in_t* xi = x + i * D;
      scalar_t* ci = xc + i * D;
      scalar_t s = 0;
      for (int64_t c = 0; c < D; ++c) {
        ci[c] = static_cast<scalar_t>(xi[c]) - mu[c];
        s += ci[c] * ci[c];
      }
      sq[i] = s;
    }
  });
}

template <typename scalar_t>
void run(const at::Tensor& y, const at::Tensor& train, const at::Tensor& sigma, at::Tensor& out,
         at::Tensor& err) {
  const int64_t M = y.size(0), D = y.size(1), N = train.size(0);
  const int64_t step = std::max<int64_t>(1, N / 8192);
  const auto dt = y.scalar_type();  // train may be float32 under float64 y: per-tile upcast
  const at::Tensor mu = train.slice(0, 0, N, step).mean({0}, false, dt);  // [D]
  const at::Tensor yc = y.sub(mu).contiguous();                // [M, D]
  const at::Tensor yc_norm =
      at::linalg_vector_norm(yc, 2, at::IntArrayRef{1}, false, at::kDouble).contiguous();
  const double* sig = sigma.const_data_ptr<double>();

  // tiles of ≈ 4 M training elements (GEMM-efficient on 2+ cores), logits ≤ 2 M per chunk
  const int64_t t = std::min<int64_t>(N, std::clamp<int64_t>((int64_t{1} << 22) / D, 256, 8192));
  const int64_t m_chunk = std::min<int64_t>(M, std::max<int64_t>(16, (int64_t{1} << 21) / t));
  auto S_buf = at::empty({m_chunk * t}, y.options());
  auto G_buf = at::empty({m_chunk * D}, y.options());
  auto Xc_buf = at::empty({t * D}, y.options());
  std::vector<scalar_t> sq(t);
  const scalar_t* mu_p = mu.const_data_ptr<scalar_t>();
  auto acc = at::empty({m_chunk, D}, y.options().dtype(at::kDouble));
  std::vector<scalar_t> run_max(m_chunk);
  std::vector<double> run_sum(m_chunk), scale(m_chunk);
  double R2 = 0.0;

  for (int64_t m0 = 0; m0 < M; m0 += m_chunk) {
    const int64_t mm = std::min(m_chunk, M - m0);
    const at::Tensor ycm = yc.narrow(0, m0, mm);
    std::fill(run_max.begin(), run_max.end(), -std::numeric_limits<scalar_t>::infinity());
    std::fill(run_sum.begin(), run_sum.end(), 0.0);
    acc.zero_();
    double* A = acc.mutable_data_ptr<double>();
    for (int64_t n0 = 0; n0 < N; n0 += t) {
      const int64_t tn = std::min(t, N - n0);
      // xc = x_t − μ [tn, D] (upcast exactly when train is float32) and ‖xc‖² in one pass
      // into reused buffers: fresh 32 MB tiles cost their page faults, and a separate
      // upcast, subtraction and norm cost two more passes over the tile
      scalar_t* Xc = Xc_buf.mutable_data_ptr<scalar_t>();
      if (train.scalar_type() == dt) {
        centre_rows(train.const_data_ptr<scalar_t>() + n0 * D, tn, D, mu_p, Xc, sq.data());
      } else {
        centre_rows(train.const_data_ptr<float>() + n0 * D, tn, D, mu_p, Xc, sq.data());
      }
      if (m0 == 0) R2 = std::max<double>(R2, *std::max_element(sq.begin(), sq.begin() + tn));
      const at::Tensor xc = Xc_buf.narrow(0, 0, tn * D).view({tn, D});
      at::Tensor S = S_buf.narrow(0, 0, mm * tn).view({mm, tn});
      at::mm_out(S, ycm, xc.t());  // yc·xcᵀ [mm, tn]; −½‖xc‖² is added in the pass below
      scalar_t* Sp = S.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, mm, 1, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          scalar_t* row = Sp + r * tn;
          const scalar_t iv = static_cast<scalar_t>(1.0 / (sig[m0 + r] * sig[m0 + r]));
          scalar_t smax = -std::numeric_limits<scalar_t>::infinity();
          for (int64_t j = 0; j < tn; ++j) {  // S = yc·xc − ½‖xc‖²
            row[j] -= scalar_t(0.5) * sq[j];
            smax = row[j] > smax ? row[j] : smax;
          }
          const scalar_t new_max = std::max(run_max[r], smax * iv);
          // p in scalar_t; the sum in float64 over blocks of 8 partial sums (vectorizable)
          double psum = 0;
          int64_t j = 0;
          for (; j + 8 <= tn; j += 8) {
            scalar_t part = 0;
            for (int64_t q = 0; q < 8; ++q) {
              const scalar_t p = exp_nonpos(static_cast<scalar_t>(row[j + q] * iv - new_max));
              row[j + q] = p;
              part += p;
            }
            psum += part;
          }
          for (; j < tn; ++j) {
            const scalar_t p = exp_nonpos(static_cast<scalar_t>(row[j] * iv - new_max));
            row[j] = p;
            psum += p;
          }
          const double sc = std::exp(static_cast<double>(run_max[r]) - new_max);  // 0 first
          scale[r] = sc;
          run_sum[r] = run_sum[r] * sc + psum;
          run_max[r] = new_max;
        }
      });
      at::Tensor G = G_buf.narrow(0, 0, mm * D).view({mm, D});
      at::mm_out(G, S, xc);  // P·(x_t − μ)  [mm, D]; μ·Σp is added back at the end
      const scalar_t* Gp = G.const_data_ptr<scalar_t>();
      at::parallel_for(0, mm, 1, [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          double* a = A + r * D;
          const scalar_t* g = Gp + r * D;
          const double sc = scale[r];
          for (int64_t c = 0; c < D; ++c) a[c] = a[c] * sc + static_cast<double>(g[c]);
        }
      });
    }
    scalar_t* O = out.mutable_data_ptr<scalar_t>() + m0 * D;
    at::parallel_for(0, mm, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const double inv = 1.0 / run_sum[r];
        for (int64_t c = 0; c < D; ++c) {
          O[r * D + c] = static_cast<scalar_t>(A[r * D + c] * inv + mu_p[c]);
        }
      }
    });
  }
  // logit error estimate per row: 2·u·√D·(‖yc‖·R + R²/2)/σ²
  const double u = std::numeric_limits<scalar_t>::epsilon() / 2;
  const double R = std::sqrt(R2);
  const double* yn = yc_norm.const_data_ptr<double>();
  double* E = err.mutable_data_ptr<double>();
  for (int64_t r = 0; r < M; ++r) {
    E[r] = 2 * u * std::sqrt(static_cast<double>(D)) * (yn[r] * R + R2 / 2) / (sig[r] * sig[r]);
  }
}

std::tuple<at::Tensor, at::Tensor> empirical_denoiser_cpu(const at::Tensor& y_,
                                                          const at::Tensor& train_,
                                                          const at::Tensor& sigma_) {
  TORCH_CHECK(y_.dim() == 2 && train_.dim() == 2,
              "empirical_denoiser: y and train must be [M, D] and [N, D], got ", y_.sizes(),
              " and ", train_.sizes());
  TORCH_CHECK(y_.size(1) == train_.size(1), "empirical_denoiser: y has D=", y_.size(1),
              " but train has D=", train_.size(1));
  TORCH_CHECK(train_.size(0) >= 1, "empirical_denoiser: train is empty");
  TORCH_CHECK((y_.scalar_type() == at::kFloat || y_.scalar_type() == at::kDouble) &&
                  (train_.scalar_type() == y_.scalar_type() ||
                   train_.scalar_type() == at::kFloat),
              "empirical_denoiser (C++): y must be float32 or float64 and train y's dtype or "
              "float32, got ", y_.scalar_type(), " and ", train_.scalar_type());
  TORCH_CHECK(sigma_.dim() == 1 && sigma_.size(0) == y_.size(0),
              "empirical_denoiser: sigma must be [M] = [", y_.size(0), "], got ", sigma_.sizes());
  TORCH_CHECK(y_.device().is_cpu() && train_.device().is_cpu() && sigma_.device().is_cpu(),
              "empirical_denoiser (C++ CPU): every input must be on the CPU");
  const auto y = y_.contiguous();
  const auto train = train_.contiguous();
  const auto sigma = sigma_.to(at::kDouble).contiguous();
  auto out = at::empty(y.sizes(), y.options());
  auto err = at::zeros({y.size(0)}, y.options().dtype(at::kDouble));
  if (y.size(0) == 0) return {out, err};
  if (y.scalar_type() == at::kFloat) {
    run<float>(y, train, sigma, out, err);
  } else {
    run<double>(y, train, sigma, out, err);
  }
  return {out, err};
}

}  // namespace

TORCH_LIBRARY_IMPL(pydiffgen, CPU, m) {
  m.impl("empirical_denoiser", &empirical_denoiser_cpu);
}

}  // namespace pydiffgen
