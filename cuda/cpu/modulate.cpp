// CAM's modulated activation, fused, CPU only (C++17 + OpenMP): y = relu(gamma * layer_norm(h) + beta), with the
// layer norm over each row of h without a learned affine and gamma, beta one scalar per row. The reference is
// fields/backends/fused_mlp.py's modulated_relu_reference; CUDA tensors never reach this file.
//
// Why: in torch this is layer_norm, addcmul and relu, each a pass over [N, width], plus bfloat16 <-> float32
// casts around the layer norm under CPU autocast, and as many passes again backward; measured on a CAM field,
// these element-wise passes cost more than the network's matrix products. Here one pass per row goes each way,
// in the dtype of h (float32 or bfloat16; arithmetic in float32). The backward recomputes the normalised row
// from h and the saved mean and 1/std instead of keeping it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/kernels.h"

namespace fields {
namespace cpu {
namespace {

// Element conversions that vectorise (c10's bfloat16 conversions branch on NaN): bfloat16 is the top half of a
// float32, rounded to nearest even on the way down.
inline float to_float(float v) { return v; }
inline float to_float(Bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
template <typename T>
inline T from_float(float v);
template <>
inline float from_float<float>(float v) { return v; }
template <>
inline Bf16 from_float<Bf16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  Bf16 out;
  out.bits = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
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

}  // namespace

void modulated_relu_forward(const float* h, const float* gamma, const float* beta, int64_t n, int64_t w, double eps,
                            float* y, float* mean, float* rstd) {
  forward_rows(h, gamma, beta, n, w, eps, y, mean, rstd);
}

void modulated_relu_forward(const Bf16* h, const float* gamma, const float* beta, int64_t n, int64_t w, double eps,
                            Bf16* y, float* mean, float* rstd) {
  forward_rows(h, gamma, beta, n, w, eps, y, mean, rstd);
}

void modulated_relu_backward(const float* dy, const float* h, const float* gamma, const float* beta,
                             const float* mean, const float* rstd, int64_t n, int64_t w, float* dh, float* dgamma,
                             float* dbeta) {
  backward_rows(dy, h, gamma, beta, mean, rstd, n, w, dh, dgamma, dbeta);
}

void modulated_relu_backward(const Bf16* dy, const Bf16* h, const float* gamma, const float* beta,
                             const float* mean, const float* rstd, int64_t n, int64_t w, Bf16* dh, float* dgamma,
                             float* dbeta) {
  backward_rows(dy, h, gamma, beta, mean, rstd, n, w, dh, dgamma, dbeta);
}

}  // namespace cpu
}  // namespace fields
