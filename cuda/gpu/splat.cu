// CUDA build of the Gaussian-splatting kernels: the same ops as cpu/splat.cpp on raw device pointers, sharing the
// math of fields_math.h. One thread per Gaussian for projection and binning (pairs sorted with CUB's radix sort
// on (tile << 32 | depth bits), stable, so ties keep the id order), one block per tile and one thread per pixel
// for the rasterizer; the backward pass replays each pixel back to front and adds into the per-Gaussian
// gradients atomically. No ATen here (compiles standalone with `nvcc -c`).
#include <cuda_runtime.h>

#include <cub/cub.cuh>
#include <stdexcept>
#include <string>

#include "common/kernels.h"
#include "gpu/launch.cuh"

namespace fields {
namespace cuda {
namespace {

__device__ __forceinline__ uint32_t sortable_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void project_forward_kernel(const float* means, const float* quats, const float* scales, int64_t n,
                                       SplatCamera cam, float* means2d, float* conics, float* depths,
                                       int32_t* radii, float* compensations) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  splat_project_gaussian(means + 3 * i, quats + 4 * i, scales + 3 * i, cam, means2d + 2 * i, conics + 3 * i,
                         depths[i], radii[i], compensations[i]);
}

__global__ void project_backward_kernel(const float* means, const float* quats, const float* scales, int64_t n,
                                        SplatCamera cam, const float* v_means2d, const float* v_conics,
                                        const float* v_depths, const float* v_compensations, float* v_means,
                                        float* v_quats, float* v_scales, float* v_viewmats) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  splat_project_gaussian_backward(means + 3 * i, quats + 4 * i, scales + 3 * i, cam, v_means2d + 2 * i,
                                  v_conics + 3 * i, v_depths[i], v_compensations[i], v_means + 3 * i,
                                  v_quats + 4 * i, v_scales + 3 * i,
                                  v_viewmats == nullptr ? nullptr : v_viewmats + 12 * i);
}

__global__ void tile_counts_kernel(const float* means2d, const float* conics, const float* opacities,
                                   const int32_t* radii, int64_t n, SplatTiles g, int64_t* counts) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  int64_t count = 0;
  if (radii[i] > 0) {
    const SplatTileEllipse e = splat_tile_ellipse(means2d[2 * i], means2d[2 * i + 1], conics + 3 * i, opacities[i],
                                                  radii[i], g);
    for (int ty = e.y0; ty <= e.y1; ++ty) {
      int tx0, tx1;
      if (splat_tile_row_span(e, ty, tx0, tx1)) count += tx1 - tx0 + 1;
    }
  }
  counts[i] = count;
}

__global__ void tile_keys_kernel(const float* means2d, const float* conics, const float* opacities,
                                 const int32_t* radii, const float* depths, int64_t n, SplatTiles g,
                                 const int64_t* gauss_offsets, uint64_t* keys, int32_t* vals) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n || radii[i] <= 0) return;
  const SplatTileEllipse e = splat_tile_ellipse(means2d[2 * i], means2d[2 * i + 1], conics + 3 * i, opacities[i],
                                                radii[i], g);
  int64_t k = gauss_offsets[i];
  const uint64_t depth_bits = sortable_bits(depths[i]);
  for (int ty = e.y0; ty <= e.y1; ++ty) {
    int tx0, tx1;
    if (!splat_tile_row_span(e, ty, tx0, tx1)) continue;
    for (int tx = tx0; tx <= tx1; ++tx) {
      keys[k] = (static_cast<uint64_t>(ty * g.grid_w + tx) << 32) | depth_bits;
      vals[k] = static_cast<int32_t>(i);
      ++k;
    }
  }
}

// tile_offsets[t] = first sorted pair whose tile is >= t (binary search), for t in [0, n_tiles].
__global__ void tile_offsets_kernel(const uint64_t* keys, int64_t m, int64_t n_tiles, int64_t* tile_offsets) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t > n_tiles) return;
  int64_t lo = 0, hi = m;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (static_cast<int64_t>(keys[mid] >> 32) < t)
      lo = mid + 1;
    else
      hi = mid;
  }
  tile_offsets[t] = lo;
}

// This thread's pixel (block = tile, thread = pixel of the tile): index and centre; false outside the image.
__device__ __forceinline__ bool block_pixel(const SplatTiles& g, int64_t& pix, float& cx, float& cy) {
  const int px = static_cast<int>(blockIdx.x % g.grid_w) * g.tile + static_cast<int>(threadIdx.x) % g.tile;
  const int py = static_cast<int>(blockIdx.x / g.grid_w) * g.tile + static_cast<int>(threadIdx.x) / g.tile;
  if (px >= g.width || py >= g.height) return false;
  pix = static_cast<int64_t>(py) * g.width + px;
  cx = static_cast<float>(px) + 0.5f;
  cy = static_cast<float>(py) + 0.5f;
  return true;
}

// Save: keep each pixel's final transmittance and last Gaussian for the backward; otherwise (viewing) finish the
// pixel: the first n_background channels on the background, the rest as alpha-weighted means.
template <bool Save>
__global__ void rasterize_forward_kernel(const float* __restrict__ means2d, const float* __restrict__ conics,
                                         const float* __restrict__ colors, const float* __restrict__ opacities,
                                         int C, const int32_t* __restrict__ ids, const int64_t* tile_offsets,
                                         SplatTiles g, float* image, float* alpha, float* final_T, int32_t* last,
                                         const float* __restrict__ background, int n_background) {
  const int64_t t = blockIdx.x;
  int64_t pix;
  float cx, cy;
  if (!block_pixel(g, pix, cx, cy)) return;
  float T = 1.0f, acc_a = 0.0f;
  int32_t lst = -1;
  for (int ch = 0; ch < C; ++ch) image[pix * C + ch] = 0.0f;
  for (int64_t k = tile_offsets[t]; k < tile_offsets[t + 1]; ++k) {
    const int32_t gid = ids[k];
    const float power = splat_power(means2d[2 * gid] - cx, means2d[2 * gid + 1] - cy, conics[3 * gid],
                                    conics[3 * gid + 1], conics[3 * gid + 2]);
    const float al = splat_cap(splat_raw_alpha(opacities[gid], power));
    if (!(power <= 0.0f && al >= kSplatAlphaMin)) continue;
    const float test_T = T * (1.0f - al);
    if (test_T < kSplatTMin) break;
    const float w = al * T;
    for (int ch = 0; ch < C; ++ch) image[pix * C + ch] += w * colors[static_cast<int64_t>(gid) * C + ch];
    acc_a += w;
    T = test_T;
    lst = static_cast<int32_t>(k);
  }
  alpha[pix] = acc_a;
  if (Save) {
    final_T[pix] = T;
    last[pix] = lst;
  } else {
    for (int ch = 0; ch < C; ++ch)
      image[pix * C + ch] = ch < n_background ? splat_on_background(image[pix * C + ch], acc_a, background[ch])
                                              : splat_weighted_mean(image[pix * C + ch], acc_a);
  }
}

__global__ void rasterize_backward_kernel(const float* __restrict__ means2d, const float* __restrict__ conics,
                                          const float* __restrict__ colors, const float* __restrict__ opacities,
                                          int C, const int32_t* __restrict__ ids, const int64_t* tile_offsets,
                                          SplatTiles g, const float* final_T, const int32_t* last,
                                          const float* v_image, const float* v_alpha, float* v_means2d,
                                          float* v_conics, float* v_colors, float* v_opacities, float* scratch) {
  const int64_t t = blockIdx.x;
  int64_t pix;
  float cx, cy;
  if (!block_pixel(g, pix, cx, cy)) return;
  float* B = scratch + pix * (C + 1);  // colour behind, per channel (+ alpha channel)
  for (int ch = 0; ch <= C; ++ch) B[ch] = 0.0f;
  float T = final_T[pix];
  const float ga = v_alpha[pix];
  for (int64_t k = last[pix]; k >= tile_offsets[t]; --k) {
    const int32_t gid = ids[k];
    const float dx = means2d[2 * gid] - cx, dy = means2d[2 * gid + 1] - cy;
    const float a = conics[3 * gid], b = conics[3 * gid + 1], c = conics[3 * gid + 2], o = opacities[gid];
    const float power = splat_power(dx, dy, a, b, c);
    const float raw = splat_raw_alpha(o, power);
    const float al = splat_cap(raw);
    if (!(power <= 0.0f && al >= kSplatAlphaMin)) continue;
    T = T / (1.0f - al);
    const float w = al * T;
    float ds = 0.0f;
    for (int ch = 0; ch <= C; ++ch) {
      const float cv = ch < C ? colors[static_cast<int64_t>(gid) * C + ch] : 1.0f;
      const float gr = ch < C ? v_image[pix * C + ch] : ga;
      if (ch < C) atomicAdd(v_colors + static_cast<int64_t>(gid) * C + ch, w * gr);
      ds += gr * (cv - B[ch]);
      B[ch] = al * cv + (1.0f - al) * B[ch];
    }
    if (!(raw <= kSplatAlphaMax)) continue;
    const float v_raw = T * ds, v_power = raw * v_raw;
    atomicAdd(v_opacities + gid, raw / o * v_raw);
    atomicAdd(v_means2d + 2 * gid, v_power * -(a * dx + b * dy));
    atomicAdd(v_means2d + 2 * gid + 1, v_power * -(c * dy + b * dx));
    atomicAdd(v_conics + 3 * gid, -0.5f * dx * dx * v_power);
    atomicAdd(v_conics + 3 * gid + 1, -dx * dy * v_power);
    atomicAdd(v_conics + 3 * gid + 2, -0.5f * dy * dy * v_power);
  }
}

}  // namespace

void splat_project_forward(const float* means, const float* quats, const float* scales, int64_t n, SplatCamera cam,
                           float* means2d, float* conics, float* depths, int32_t* radii, float* compensations,
                           void* stream) {
  project_forward_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      means, quats, scales, n, cam, means2d, conics, depths, radii, compensations);
  check_launch("splat_project_forward");
}

void splat_project_backward(const float* means, const float* quats, const float* scales, int64_t n, SplatCamera cam,
                            const float* v_means2d, const float* v_conics, const float* v_depths,
                            const float* v_compensations, float* v_means, float* v_quats, float* v_scales,
                            float* v_viewmats, void* stream) {
  project_backward_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      means, quats, scales, n, cam, v_means2d, v_conics, v_depths, v_compensations, v_means, v_quats, v_scales,
      v_viewmats);
  check_launch("splat_project_backward");
}

void splat_tile_counts(const float* means2d, const float* conics, const float* opacities, const int32_t* radii,
                       int64_t n, SplatTiles g, int64_t* counts, void* stream) {
  tile_counts_kernel<<<blocks_for(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(means2d, conics, opacities,
                                                                                          radii, n, g, counts);
  check_launch("splat_tile_counts");
}

void splat_tile_bin(const float* means2d, const float* conics, const float* opacities, const int32_t* radii,
                    const float* depths, int64_t n, SplatTiles g, const int64_t* gauss_offsets, int64_t m,
                    int32_t* ids, int64_t* tile_offsets, void* stream) {
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const int64_t n_tiles = static_cast<int64_t>(g.grid_w) * g.grid_h;
  uint64_t *keys = nullptr, *keys_sorted = nullptr;
  int32_t* vals = nullptr;
  void* temp = nullptr;
  size_t temp_bytes = 0;
  int end_bit = 32;
  while (end_bit < 64 && (static_cast<uint64_t>(n_tiles) >> (end_bit - 32)) != 0) ++end_bit;
  check(cudaMallocAsync(&keys, sizeof(uint64_t) * m, st), "splat_tile_bin alloc");
  check(cudaMallocAsync(&keys_sorted, sizeof(uint64_t) * m, st), "splat_tile_bin alloc");
  check(cudaMallocAsync(&vals, sizeof(int32_t) * m, st), "splat_tile_bin alloc");
  tile_keys_kernel<<<blocks_for(n), kThreads, 0, st>>>(means2d, conics, opacities, radii, depths, n, g,
                                                gauss_offsets, keys, vals);
  check_launch("splat_tile_bin keys");
  check(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys, keys_sorted, vals, ids, m, 0, end_bit, st),
        "splat_tile_bin sort");
  check(cudaMallocAsync(&temp, temp_bytes, st), "splat_tile_bin alloc");
  check(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, keys_sorted, vals, ids, m, 0, end_bit, st),
        "splat_tile_bin sort");
  tile_offsets_kernel<<<blocks_for(n_tiles + 1), kThreads, 0, st>>>(keys_sorted, m, n_tiles, tile_offsets);
  check_launch("splat_tile_bin offsets");
  cudaFreeAsync(temp, st);
  cudaFreeAsync(vals, st);
  cudaFreeAsync(keys_sorted, st);
  cudaFreeAsync(keys, st);
}

void splat_rasterize_forward(const float* means2d, const float* conics, const float* colors, const float* opacities,
                             int channels, const int32_t* ids, const int64_t* tile_offsets, SplatTiles g,
                             float* image, float* alpha, float* final_T, int32_t* last, void* stream) {
  const unsigned n_tiles = static_cast<unsigned>(g.grid_w) * g.grid_h;
  rasterize_forward_kernel<true><<<n_tiles, g.tile * g.tile, 0, static_cast<cudaStream_t>(stream)>>>(
      means2d, conics, colors, opacities, channels, ids, tile_offsets, g, image, alpha, final_T, last, nullptr, 0);
  check_launch("splat_rasterize_forward");
}

void splat_rasterize_render(const float* means2d, const float* conics, const float* colors, const float* opacities,
                            int channels, const int32_t* ids, const int64_t* tile_offsets, SplatTiles g,
                            const float* background, int n_background, float* image, float* alpha, void* stream) {
  const unsigned n_tiles = static_cast<unsigned>(g.grid_w) * g.grid_h;
  rasterize_forward_kernel<false><<<n_tiles, g.tile * g.tile, 0, static_cast<cudaStream_t>(stream)>>>(
      means2d, conics, colors, opacities, channels, ids, tile_offsets, g, image, alpha, nullptr, nullptr,
      background, n_background);
  check_launch("splat_rasterize_render");
}

void splat_rasterize_backward(const float* means2d, const float* conics, const float* colors,
                              const float* opacities, int channels, const int32_t* ids, const int64_t* tile_offsets,
                              SplatTiles g, const float* final_T, const int32_t* last, const float* v_image,
                              const float* v_alpha, float* v_means2d, float* v_conics, float* v_colors,
                              float* v_opacities, void* stream) {
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  const unsigned n_tiles = static_cast<unsigned>(g.grid_w) * g.grid_h;
  float* scratch = nullptr;
  check(cudaMallocAsync(&scratch, sizeof(float) * static_cast<size_t>(g.width) * g.height * (channels + 1), st),
        "splat_rasterize_backward alloc");
  rasterize_backward_kernel<<<n_tiles, g.tile * g.tile, 0, st>>>(means2d, conics, colors, opacities, channels, ids,
                                                                  tile_offsets, g, final_T, last, v_image, v_alpha,
                                                                  v_means2d, v_conics, v_colors, v_opacities,
                                                                  scratch);
  check_launch("splat_rasterize_backward");
  cudaFreeAsync(scratch, st);
}

}  // namespace cuda
}  // namespace fields
