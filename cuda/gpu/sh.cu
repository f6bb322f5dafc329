// CUDA build of the spherical-harmonics colour kernels: the same ops as cpu/sh.cpp's sh_color on raw device
// pointers, one thread per Gaussian, sharing fields_math.h's sh_color_pre and sh_color_backward_one. No ATen here
// (compiles standalone with `nvcc -c`).
#include <cuda_runtime.h>

#include "common/kernels.h"
#include "gpu/launch.cuh"

namespace fields {
namespace cuda {
namespace {

__global__ void sh_color_forward_kernel(const float* dirs, const float* sh0, const float* shN, int64_t n, int m,
                                        int bands, float* rgb) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  float basis[16], pre[3];
  sh_color_pre(dirs + 3 * i, sh0 + 3 * i, shN + 3 * m * i, bands, basis, pre);
  for (int c = 0; c < 3; ++c) rgb[3 * i + c] = pre[c] > 0.0f ? pre[c] : 0.0f;
}

__global__ void sh_color_backward_kernel(const float* dirs, const float* sh0, const float* shN, const float* v_rgb,
                                         int64_t n, int m, int bands, float* v_dirs, float* v_sh0, float* v_shN) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  sh_color_backward_one(dirs + 3 * i, sh0 + 3 * i, shN + 3 * m * i, m, bands, v_rgb + 3 * i, v_dirs + 3 * i,
                        v_sh0 + 3 * i, v_shN + 3 * m * i);
}

}  // namespace

void sh_color_forward(const float* dirs, const float* sh0, const float* shN, int64_t n, int m, int bands, float* rgb,
                      void* stream) {
  sh_color_forward_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(dirs, sh0, shN, n, m,
                                                                                            bands, rgb);
  check_launch("sh_color_forward");
}

void sh_color_backward(const float* dirs, const float* sh0, const float* shN, const float* v_rgb, int64_t n, int m,
                       int bands, float* v_dirs, float* v_sh0, float* v_shN, void* stream) {
  sh_color_backward_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      dirs, sh0, shN, v_rgb, n, m, bands, v_dirs, v_sh0, v_shN);
  check_launch("sh_color_backward");
}

}  // namespace cuda
}  // namespace fields
