// Spherical harmonics on the CPU (C++17 + OpenMP), one pass per row; the math is fields_math.h's (sh_basis,
// sh_color_pre, sh_color_backward_one), shared with gpu/sh.cu.
// - sh_encode (CPU only): the basis of unit directions, out [N, degree^2], for a radiance field's samples, which
//   need no gradient (the wrapper runs the reference when they do; CUDA tensors use torch). torch builds it from
//   ~30 element-wise passes over [N] and a stack into [N, 16]: 1.2 ms of a 29 ms lego hash-grid step, for what one
//   pass computes in a tenth of that.
// - sh_color forward and backward: 3D Gaussians' colours from their coefficients along their view directions, with
//   the gradients of coefficients and directions. In torch (basis [N, 16, 1] * coefficients [N, 16, 3], summed)
//   that took 42 ms of CPU a step for 80k Gaussians, forward and backward.
#include <omp.h>

#include <algorithm>

#include "common/kernels.h"

namespace fields {
namespace cpu {
namespace {

constexpr int64_t kRowsPerThread = 4096;  // at least, per thread

// Threads for n rows of per-row work: at least kRowsPerThread rows each.
inline int threads_for(int64_t n) {
  const int64_t tasks = (n + kRowsPerThread - 1) / kRowsPerThread;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), tasks)));
}

}  // namespace

void sh_encode(const float* dirs, int64_t n, int degree, float* out) {
  const int width = degree * degree;
  const int threads = threads_for(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i) sh_basis(dirs[3 * i], dirs[3 * i + 1], dirs[3 * i + 2], degree, out + i * width);
}

void sh_color_forward(const float* dirs, const float* sh0, const float* shN, int64_t n, int m, int bands,
                      float* rgb) {
  const int threads = threads_for(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i) {
    float basis[16], pre[3];
    sh_color_pre(dirs + 3 * i, sh0 + 3 * i, shN + 3 * m * i, bands, basis, pre);
    for (int c = 0; c < 3; ++c) rgb[3 * i + c] = pre[c] > 0.0f ? pre[c] : 0.0f;
  }
}

void sh_color_backward(const float* dirs, const float* sh0, const float* shN, const float* v_rgb, int64_t n, int m,
                       int bands, float* v_dirs, float* v_sh0, float* v_shN) {
  const int threads = threads_for(n);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i)
    sh_color_backward_one(dirs + 3 * i, sh0 + 3 * i, shN + 3 * m * i, m, bands, v_rgb + 3 * i, v_dirs + 3 * i,
                          v_sh0 + 3 * i, v_shN + 3 * m * i);
}

}  // namespace cpu
}  // namespace fields
