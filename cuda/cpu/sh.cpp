// Real spherical harmonics of unit directions, CPU only (C++17 + OpenMP): out [N, degree^2] in one pass per row,
// the constants, sign convention and arithmetic order of fields/backends/encodings.py's sh_encode_reference
// (tiny-cuda-nn's SphericalHarmonics). Forward only: the directions of a radiance field's samples need no
// gradient; the wrapper runs the reference when they do (3D Gaussians' view directions). CUDA tensors use torch.
//
// Why: torch builds the encoding from ~30 element-wise passes over [N] and a stack into [N, 16] with strided
// writes: 1.2 ms of a 29 ms lego hash-grid step, for what one pass computes in a tenth of that.
#include <omp.h>

#include <algorithm>

#include "common/kernels.h"

namespace fields {
namespace cpu {
namespace {

constexpr int64_t kRowsPerThread = 4096;  // at least, per thread

// Row i of the encoding: degree^2 values of direction (x, y, z).
inline void sh_row(float x, float y, float z, int degree, float* o) {
  o[0] = 0.28209479177387814f;
  if (degree <= 1) return;
  o[1] = -0.48860251190291987f * y;
  o[2] = 0.48860251190291987f * z;
  o[3] = -0.48860251190291987f * x;
  if (degree <= 2) return;
  const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  o[4] = 1.0925484305920792f * xy;
  o[5] = -1.0925484305920792f * yz;
  o[6] = 0.94617469575755997f * zz - 0.31539156525251999f;
  o[7] = -1.0925484305920792f * xz;
  o[8] = 0.54627421529603959f * (xx - yy);
  if (degree <= 3) return;
  o[9] = 0.59004358992664352f * y * (-3.0f * xx + yy);
  o[10] = 2.8906114426405538f * xy * z;
  o[11] = 0.45704579946446572f * y * (1.0f - 5.0f * zz);
  o[12] = 0.3731763325901154f * z * (5.0f * zz - 3.0f);
  o[13] = 0.45704579946446572f * x * (1.0f - 5.0f * zz);
  o[14] = 1.4453057213202769f * z * (xx - yy);
  o[15] = 0.59004358992664352f * x * (-xx + 3.0f * yy);
}

}  // namespace

void sh_encode(const float* dirs, int64_t n, int degree, float* out) {
  const int width = degree * degree;
  const int64_t tasks = (n + kRowsPerThread - 1) / kRowsPerThread;
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), tasks)));
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t i = 0; i < n; ++i) sh_row(dirs[3 * i], dirs[3 * i + 1], dirs[3 * i + 2], degree, out + i * width);
}

}  // namespace cpu
}  // namespace fields
