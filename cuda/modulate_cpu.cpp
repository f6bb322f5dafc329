// CAM's modulated activation, fused, CPU only (C++17 + OpenMP): y = relu(gamma * layer_norm(h) + beta), with the
// layer norm over each row of h without a learned affine and gamma, beta one scalar per row. The reference is
// fields/fused_mlp.py's modulated_relu_reference; CUDA tensors never reach this file.
//
// Why: in torch this is layer_norm, addcmul and relu, each a pass over [N, width], plus bfloat16 <-> float32
// casts around the layer norm under CPU autocast, and as many passes again backward; measured on a CAM field,
// these element-wise passes cost more than the network's matrix products. Here one pass per row goes each way,
// in the dtype of h (float32 or bfloat16; arithmetic in float32). The backward recomputes the normalised row
// from h and the saved mean and 1/std instead of keeping it.
#include <torch/library.h>
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

namespace {

using at::Tensor;

// Element conversions that vectorise (c10's bfloat16 conversions branch on NaN): bfloat16 is the top half of a
// float32, rounded to nearest even on the way down.
inline float to_float(float v) { return v; }
inline float to_float(c10::BFloat16 v) {
  uint32_t u = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <typename T>
inline T from_float(float v);
template <>
inline float from_float<float>(float v) { return v; }
template <>
inline c10::BFloat16 from_float<c10::BFloat16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  c10::BFloat16 out;
  out.x = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return out;
}

template <typename T>
void forward_rows(const T* h, const float* gamma, const float* beta, int64_t n, int64_t w, double eps, T* y,
                  float* mean, float* rstd) {
#pragma omp parallel
  {
    std::vector<float> row(w);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T* hi = h + i * w;
      // The mean as the first value plus the mean offset from it: exact for constant rows, whose normalised
      // values must be 0 (1/std is large there, and would amplify any rounding of the mean).
      const float h0 = to_float(hi[0]);
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < w; ++j) s += (row[j] = to_float(hi[j])) - h0;
      const float mu = h0 + s / static_cast<float>(w);
      float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
      for (int64_t j = 0; j < w; ++j) ss += (row[j] - mu) * (row[j] - mu);
      const float r = 1.0f / std::sqrt(ss / static_cast<float>(w) + static_cast<float>(eps));
      const float g = gamma[i], b = beta[i];
      T* yi = y + i * w;
      for (int64_t j = 0; j < w; ++j) yi[j] = from_float<T>(std::max(g * ((row[j] - mu) * r) + b, 0.0f));
      mean[i] = mu;
      rstd[i] = r;
    }
  }
}

// With n_j = (h_j - mu) r, z_j = gamma n_j + beta, dz_j = dy_j [z_j > 0]:
// dgamma = sum_j dz_j n_j, dbeta = sum_j dz_j, dh_j = r (gamma dz_j - gamma mean(dz) - n_j gamma mean(dz n)).
template <typename T>
void backward_rows(const T* dy, const T* h, const float* gamma, const float* beta, const float* mean,
                   const float* rstd, int64_t n, int64_t w, T* dh, float* dgamma, float* dbeta) {
#pragma omp parallel
  {
    std::vector<float> nrm(w), dz(w);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T* hi = h + i * w;
      const T* dyi = dy + i * w;
      const float mu = mean[i], r = rstd[i], g = gamma[i], b = beta[i];
      float sdz = 0.0f, sdzn = 0.0f;
#pragma omp simd reduction(+ : sdz, sdzn)
      for (int64_t j = 0; j < w; ++j) {
        const float v = (to_float(hi[j]) - mu) * r;
        const float d = g * v + b > 0.0f ? to_float(dyi[j]) : 0.0f;
        nrm[j] = v;
        dz[j] = d;
        sdz += d;
        sdzn += d * v;
      }
      dgamma[i] = sdzn;
      dbeta[i] = sdz;
      const float a = g * sdz / static_cast<float>(w), c = g * sdzn / static_cast<float>(w);
      T* dhi = dh + i * w;
      for (int64_t j = 0; j < w; ++j) dhi[j] = from_float<T>(r * (g * dz[j] - a - nrm[j] * c));
    }
  }
}

void check(const Tensor& h, const Tensor& gamma, const Tensor& beta) {
  TORCH_CHECK(h.dim() == 2 && h.is_contiguous(), "modulated_relu: h must be a contiguous [N, W] tensor");
  TORCH_CHECK(h.scalar_type() == at::kFloat || h.scalar_type() == at::kBFloat16,
              "modulated_relu: h must be float32 or bfloat16");
  for (const Tensor* t : {&gamma, &beta})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == h.size(0),
                "modulated_relu: gamma and beta must be contiguous float32 [N]");
}

std::tuple<Tensor, Tensor, Tensor> modulated_relu_fwd(const Tensor& h, const Tensor& gamma, const Tensor& beta,
                                                      double eps) {
  check(h, gamma, beta);
  const int64_t n = h.size(0), w = h.size(1);
  Tensor y = at::empty_like(h), mean = at::empty({n}, gamma.options()), rstd = at::empty({n}, gamma.options());
  auto run = [&](auto tag) {
    using T = decltype(tag);
    forward_rows<T>(h.data_ptr<T>(), gamma.data_ptr<float>(), beta.data_ptr<float>(), n, w, eps, y.data_ptr<T>(),
                    mean.data_ptr<float>(), rstd.data_ptr<float>());
  };
  h.scalar_type() == at::kFloat ? run(float()) : run(c10::BFloat16());
  return {y, mean, rstd};
}

std::tuple<Tensor, Tensor, Tensor> modulated_relu_bwd(const Tensor& dy_, const Tensor& h, const Tensor& gamma,
                                                      const Tensor& beta, const Tensor& mean, const Tensor& rstd) {
  check(h, gamma, beta);
  const Tensor dy = dy_.to(h.scalar_type()).contiguous();
  TORCH_CHECK(dy.sizes() == h.sizes(), "modulated_relu: grad must have h's shape");
  const int64_t n = h.size(0), w = h.size(1);
  Tensor dh = at::empty_like(h), dgamma = at::empty({n}, gamma.options()), dbeta = at::empty({n}, gamma.options());
  auto run = [&](auto tag) {
    using T = decltype(tag);
    backward_rows<T>(dy.data_ptr<T>(), h.data_ptr<T>(), gamma.data_ptr<float>(), beta.data_ptr<float>(),
                     mean.data_ptr<float>(), rstd.data_ptr<float>(), n, w, dh.data_ptr<T>(), dgamma.data_ptr<float>(),
                     dbeta.data_ptr<float>());
  };
  h.scalar_type() == at::kFloat ? run(float()) : run(c10::BFloat16());
  return {dh, dgamma, dbeta};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fields, m) {
  m.def("modulated_relu_fwd(Tensor h, Tensor gamma, Tensor beta, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("modulated_relu_bwd(Tensor grad, Tensor h, Tensor gamma, Tensor beta, Tensor mean, Tensor rstd)"
        " -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fields, CPU, m) {
  m.impl("modulated_relu_fwd", &modulated_relu_fwd);
  m.impl("modulated_relu_bwd", &modulated_relu_bwd);
}
