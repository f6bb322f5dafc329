// CUDA build of the volume-rendering kernels: the same ops as cpu/volume.cpp on raw device pointers, sharing the
// math of common/fields_math.h. No ATen here (compiles standalone with `nvcc -c`); bindings.cpp passes torch's
// current stream. Build with --fmad=false so that marching reproduces the reference's float32 rounding exactly.
#include <cuda_runtime.h>

#include <cub/cub.cuh>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/kernels.h"
#include "gpu/launch.cuh"

namespace fields {
namespace cuda {
namespace {

// Device buffers of one call, from the stream-ordered pool, freed (in stream order) when the call returns or throws.
class Scratch {
 public:
  explicit Scratch(cudaStream_t stream) : stream_(stream) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    for (void* ptr : buffers_) cudaFreeAsync(ptr, stream_);
  }
  template <class T>
  T* get(int64_t count) {
    if (count <= 0) return nullptr;
    void* ptr = nullptr;
    check(cudaMallocAsync(&ptr, sizeof(T) * static_cast<size_t>(count), stream_), "device scratch");
    buffers_.push_back(ptr);
    return static_cast<T*>(ptr);
  }

 private:
  cudaStream_t stream_;
  std::vector<void*> buffers_;
};

struct LevelCorners {
  uint32_t row[8];
  float w[8];
  float frac[3];
  float res;
};

__device__ __forceinline__ LevelCorners level_corners(const float* x, const HashGrid& g, int l) {
  LevelCorners lc;
  const int r = g.res[l];
  lc.res = static_cast<float>(r);
  const bool dense = level_is_dense(r, g.table_size);
  int base[3];
  for (int a = 0; a < 3; ++a) cell_coord(x[a], lc.res, r, base[a], lc.frac[a]);
  const AxisTerms t = axis_terms(base, dense, static_cast<uint32_t>(r) + 1u);
  for (int c = 0; c < 8; ++c) {
    lc.row[c] = vertex_row(t, c, dense, static_cast<uint32_t>(g.table_size));
    lc.w[c] = vertex_weight(lc.frac, c);
  }
  return lc;
}

__global__ void hash_forward_kernel(const float* __restrict__ x, int64_t n, HashGrid g, float* __restrict__ out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int l = blockIdx.y;
  if (i >= n) return;
  const LevelCorners lc = level_corners(x + 3 * i, g, l);
  const float* tab = g.table + static_cast<int64_t>(l) * g.table_size * g.features;
  float* o = out + i * g.levels * g.features + static_cast<int64_t>(l) * g.features;
  for (int f = 0; f < g.features; ++f) {
    float acc = 0.0f;
    for (int c = 0; c < 8; ++c) acc += lc.w[c] * tab[static_cast<int64_t>(lc.row[c]) * g.features + f];
    o[f] = acc;
  }
}

__global__ void hash_backward_table_kernel(const float* __restrict__ grad_out, const float* __restrict__ x,
                                           int64_t n, HashGrid g, float* __restrict__ grad_table) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int l = blockIdx.y;
  if (i >= n) return;
  const LevelCorners lc = level_corners(x + 3 * i, g, l);
  float* gt = grad_table + static_cast<int64_t>(l) * g.table_size * g.features;
  const float* go = grad_out + i * g.levels * g.features + static_cast<int64_t>(l) * g.features;
  for (int f = 0; f < g.features; ++f) {
    const float gv = go[f];
    if (gv == 0.0f) continue;
    for (int c = 0; c < 8; ++c) atomicAdd(gt + static_cast<int64_t>(lc.row[c]) * g.features + f, lc.w[c] * gv);
  }
}

__global__ void hash_backward_x_kernel(const float* __restrict__ grad_out, const float* __restrict__ x, int64_t n,
                                       HashGrid g, float* __restrict__ grad_x) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  float gx[3] = {0.0f, 0.0f, 0.0f};
  for (int l = 0; l < g.levels; ++l) {
    const LevelCorners lc = level_corners(x + 3 * i, g, l);
    const float* tab = g.table + static_cast<int64_t>(l) * g.table_size * g.features;
    const float* go = grad_out + i * g.levels * g.features + static_cast<int64_t>(l) * g.features;
    for (int c = 0; c < 8; ++c) {
      float dot = 0.0f;
      for (int f = 0; f < g.features; ++f) dot += go[f] * tab[static_cast<int64_t>(lc.row[c]) * g.features + f];
      for (int a = 0; a < 3; ++a) gx[a] += lc.res * vertex_weight_dfrac(lc.frac, c, a) * dot;
    }
  }
  for (int a = 0; a < 3; ++a) grad_x[3 * i + a] = gx[a];
}

struct CountEmit {
  __device__ void operator()(int64_t, float, float) {}
};

struct FillEmit {
  int64_t ray, pos;
  int64_t* ray_indices;
  float *t_starts, *t_ends;
  __device__ void operator()(int64_t, float ts, float te) {
    ray_indices[pos] = ray;
    t_starts[pos] = ts;
    t_ends[pos] = te;
    ++pos;
  }
};

// One thread per coarse block (MarchParams::coarse).
__global__ void coarse_occupancy_kernel(const uint8_t* binary, MarchParams p, uint8_t* coarse) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int cy = p.coarse_res[1], cz = p.coarse_res[2];
  if (b >= static_cast<int64_t>(p.coarse_res[0]) * cy * cz) return;
  coarse[b] = coarse_block(binary, p, static_cast<int>(b / (static_cast<int64_t>(cy) * cz)),
                           static_cast<int>(b / cz % cy), static_cast<int>(b % cz));
}

__global__ void march_count_kernel(const float* origins, const float* dirs, const float* jitter, int64_t n_rays,
                                   const uint8_t* binary, MarchParams p, int64_t* counts) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= n_rays) return;
  CountEmit emit;
  counts[r] = march_ray(origins + 3 * r, dirs + 3 * r, jitter ? jitter[r] : 0.0f, binary, p, emit);
}

__global__ void march_fill_kernel(const float* origins, const float* dirs, const float* jitter, int64_t n_rays,
                                  const uint8_t* binary, MarchParams p, const int64_t* offsets,
                                  int64_t* ray_indices, float* t_starts, float* t_ends) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= n_rays) return;
  FillEmit emit{r, offsets[r], ray_indices, t_starts, t_ends};
  march_ray(origins + 3 * r, dirs + 3 * r, jitter ? jitter[r] : 0.0f, binary, p, emit);
}

__global__ void transmittance_kernel(const float* tau, const int64_t* offsets, int64_t n_rays, float* out) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r < n_rays) transmittance_ray(tau, offsets[r], offsets[r + 1], out);
}

__global__ void composite_forward_kernel(const float* sigmas, const float* rgbs, const float* t_starts,
                                         const float* t_ends, const int64_t* offsets, int64_t n_rays,
                                         float* weights, float* rgb, float* opacity, float* depth) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r < n_rays)
    composite_ray_forward(sigmas, rgbs, t_starts, t_ends, offsets[r], offsets[r + 1], weights, rgb + 3 * r,
                          opacity + r, depth + r);
}

__global__ void composite_backward_kernel(const float* grad_weights, const float* grad_rgb,
                                          const float* grad_opacity, const float* grad_depth, const float* sigmas,
                                          const float* rgbs, const float* t_starts, const float* t_ends,
                                          const int64_t* offsets, int64_t n_rays, float* grad_sigmas,
                                          float* grad_rgbs) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r < n_rays)
    composite_ray_backward(grad_weights, grad_rgb + 3 * r, grad_opacity[r], grad_depth[r], sigmas, rgbs,
                           t_starts, t_ends, offsets[r], offsets[r + 1], grad_sigmas, grad_rgbs);
}

__global__ void composite_round_kernel(const float* sigmas, const float* t_starts, const float* t_ends,
                                       const int64_t* offsets, const int64_t* rays, int64_t n_live,
                                       RoundPruning prune, double* optical, float* opacity, float* depth,
                                       float* weights, uint8_t* keep) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= n_live) return;
  const int64_t r = rays[j];
  composite_round_ray(sigmas, t_starts, t_ends, offsets[j], offsets[j + 1], prune, optical + r, opacity + r,
                      depth + r, weights, keep);
}

__global__ void round_samples_kernel(const int64_t* ray_indices, const float* t_starts, const float* t_ends,
                                     const float* origins, const float* dirs, const int64_t* first,
                                     const int64_t* offsets, int64_t n_live, int64_t* idx, int64_t* ray, float* ts,
                                     float* te, float* x, float* d) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j < n_live)
    round_samples_ray(ray_indices, t_starts, t_ends, origins, dirs, first[j], offsets[j], offsets[j + 1], idx, ray,
                      ts, te, x, d);
}

}  // namespace

void hash_encode_forward(const float* x, int64_t n, HashGrid g, float* out, void* stream) {
  dim3 grid(blocks_for(n), g.levels);
  hash_forward_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(x, n, g, out);
  check_launch("hash_encode_forward");
}

void hash_encode_backward(const float* grad_out, const float* x, int64_t n, HashGrid g, float* grad_table,
                          float* grad_x, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  cudaMemsetAsync(grad_table, 0, sizeof(float) * g.levels * g.table_size * g.features, s);
  dim3 grid(blocks_for(n), g.levels);
  hash_backward_table_kernel<<<grid, kThreads, 0, s>>>(grad_out, x, n, g, grad_table);
  check_launch("hash_encode_backward");
  if (grad_x != nullptr) {
    hash_backward_x_kernel<<<blocks_for(n), kThreads, 0, s>>>(grad_out, x, n, g, grad_x);
    check_launch("hash_encode_backward (x)");
  }
}

// Count the samples of every ray, scan the counts into offsets, allocate, then march again to fill: threads cannot
// grow buffers (the CPU build marches once into per-chunk vectors instead).
void march_rays(const float* origins, const float* dirs, const float* jitter, int64_t n_rays, const uint8_t* binary,
                MarchParams p, const AllocateSamples& allocate, void* stream) {
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  Scratch scratch{st};
  uint8_t* coarse = nullptr;
  const int64_t n_coarse =
      coarse_shape(p) ? static_cast<int64_t>(p.coarse_res[0]) * p.coarse_res[1] * p.coarse_res[2] : 0;
  if (n_coarse > 0) {
    coarse = scratch.get<uint8_t>(n_coarse);
    coarse_occupancy_kernel<<<blocks_for(n_coarse), kThreads, 0, st>>>(binary, p, coarse);
    check_launch("march_rays coarse");
  }
  p.coarse = coarse;
  int64_t total = 0;
  int64_t* offsets = nullptr;
  if (n_rays > 0) {
    int64_t* counts = scratch.get<int64_t>(n_rays);
    offsets = scratch.get<int64_t>(n_rays + 1);
    march_count_kernel<<<blocks_for(n_rays), kThreads, 0, st>>>(origins, dirs, jitter, n_rays, binary, p, counts);
    check_launch("march_rays count");
    check(cudaMemsetAsync(offsets, 0, sizeof(int64_t), st), "march_rays offsets");
    size_t temp_bytes = 0;
    check(cub::DeviceScan::InclusiveSum(nullptr, temp_bytes, counts, offsets + 1, n_rays, st), "march_rays scan");
    void* temp = scratch.get<uint8_t>(static_cast<int64_t>(temp_bytes));
    check(cub::DeviceScan::InclusiveSum(temp, temp_bytes, counts, offsets + 1, n_rays, st), "march_rays scan");
    check(cudaMemcpyAsync(&total, offsets + n_rays, sizeof(int64_t), cudaMemcpyDeviceToHost, st), "march_rays total");
    check(cudaStreamSynchronize(st), "march_rays total");
  }
  const PackedSamples out = allocate(total);
  if (total > 0) {
    march_fill_kernel<<<blocks_for(n_rays), kThreads, 0, st>>>(origins, dirs, jitter, n_rays, binary, p, offsets,
                                                               out.ray_indices, out.t_starts, out.t_ends);
    check_launch("march_rays fill");
  }
}

void transmittance(const float* tau, const int64_t* offsets, int64_t n_rays, float* out, void* stream) {
  transmittance_kernel<<<blocks_for(n_rays), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(tau, offsets, n_rays,
                                                                                               out);
  check_launch("transmittance");
}

void composite_forward(const float* sigmas, const float* rgbs, const float* t_starts, const float* t_ends,
                       const int64_t* offsets, int64_t n_rays, float* weights, float* rgb, float* opacity,
                       float* depth, void* stream) {
  composite_forward_kernel<<<blocks_for(n_rays), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      sigmas, rgbs, t_starts, t_ends, offsets, n_rays, weights, rgb, opacity, depth);
  check_launch("composite_forward");
}

void composite_backward(const float* grad_weights, const float* grad_rgb, const float* grad_opacity,
                        const float* grad_depth, const float* sigmas, const float* rgbs, const float* t_starts,
                        const float* t_ends, const int64_t* offsets, int64_t n_rays, float* grad_sigmas,
                        float* grad_rgbs, void* stream) {
  composite_backward_kernel<<<blocks_for(n_rays), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      grad_weights, grad_rgb, grad_opacity, grad_depth, sigmas, rgbs, t_starts, t_ends, offsets, n_rays,
      grad_sigmas, grad_rgbs);
  check_launch("composite_backward");
}

void composite_round(const float* sigmas, const float* t_starts, const float* t_ends, const int64_t* offsets,
                     const int64_t* rays, int64_t n_live, RoundPruning prune, double* optical, float* opacity,
                     float* depth, float* weights, uint8_t* keep, void* stream) {
  composite_round_kernel<<<blocks_for(n_live), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      sigmas, t_starts, t_ends, offsets, rays, n_live, prune, optical, opacity, depth, weights, keep);
  check_launch("composite_round");
}

void round_samples(const int64_t* ray_indices, const float* t_starts, const float* t_ends, const float* origins,
                   const float* dirs, const int64_t* first, const int64_t* offsets, int64_t n_live, int64_t* idx,
                   int64_t* ray, float* ts, float* te, float* x, float* d, void* stream) {
  round_samples_kernel<<<blocks_for(n_live), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      ray_indices, t_starts, t_ends, origins, dirs, first, offsets, n_live, idx, ray, ts, te, x, d);
  check_launch("round_samples");
}

}  // namespace cuda
}  // namespace fields
