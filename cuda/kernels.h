// Entry points of the native kernels on raw pointers and sizes, one set per build: fields::cpu (kernels_cpu.cpp,
// C++17 + OpenMP) and fields::cuda (kernels_cuda.cu, nvcc). No ATen here: bindings.cpp allocates the tensors,
// checks shapes and dispatches on the device. All float tensors are float32 and contiguous; `offsets` are the
// CSR offsets [n_rays + 1] of packed samples sorted by ray.
#pragma once

#include <cstdint>
#include <vector>

#include "fields_math.h"

namespace fields {

struct HashGrid {
  const float* table;     // [L, T, F]
  const int32_t* res;     // [L] cells per side of each level (device memory for the CUDA build)
  int levels;
  int64_t table_size;     // T, a power of two
  int features;           // F
};

#define FIELDS_KERNEL_DECLS(...)                                                                            \
  /* out [N, L * F] */                                                                                         \
  void hash_encode_forward(const float* x, int64_t n, HashGrid g, float* out __VA_ARGS__);                          \
  /* grad_table [L, T, F] overwritten (zeroed inside); grad_x [N, 3] or null */                                \
  void hash_encode_backward(const float* grad_out, const float* x, int64_t n, HashGrid g, float* grad_table,    \
                            float* grad_x __VA_ARGS__);                                                             \
  void transmittance(const float* tau, const int64_t* offsets, int64_t n_rays, float* out __VA_ARGS__);              \
  void composite_forward(const float* sigmas, const float* rgbs, const float* t_starts, const float* t_ends,     \
                         const int64_t* offsets, int64_t n_rays, float* weights, float* rgb, float* opacity,    \
                         float* depth __VA_ARGS__);                                                                 \
  void composite_backward(const float* grad_weights, const float* grad_rgb, const float* grad_opacity,          \
                          const float* grad_depth, const float* sigmas, const float* rgbs,                      \
                          const float* t_starts, const float* t_ends, const int64_t* offsets, int64_t n_rays,   \
                          float* grad_sigmas, float* grad_rgbs __VA_ARGS__);                                \
  /* Gaussian splatting. means2d [N, 2], conics [N, 3], depths [N], radii [N] (0: culled) */                  \
  void splat_project_forward(const float* means, const float* quats, const float* scales, int64_t n,           \
                             SplatCamera cam, float* means2d, float* conics, float* depths,                    \
                             int32_t* radii __VA_ARGS__);                                                           \
  void splat_project_backward(const float* means, const float* quats, const float* scales, int64_t n,          \
                              SplatCamera cam, const float* v_means2d, const float* v_conics,                  \
                              const float* v_depths, float* v_means, float* v_quats, float* v_scales __VA_ARGS__);  \
  /* number of tiles each Gaussian's square touches (0 when culled) */                                          \
  void splat_tile_counts(const float* means2d, const int32_t* radii, int64_t n, SplatTiles g,                   \
                         int64_t* counts __VA_ARGS__);                                                              \
  /* ids [m] of the (tile, Gaussian) pairs sorted by tile, then depth, then id; tile_offsets [tiles + 1]; */      \
  /* gauss_offsets [n] = exclusive prefix sum of the counts */                                                  \
  void splat_tile_bin(const float* means2d, const int32_t* radii, const float* depths, int64_t n, SplatTiles g, \
                      const int64_t* gauss_offsets, int64_t m, int32_t* ids, int64_t* tile_offsets __VA_ARGS__);    \
  /* image [H, W, C], alpha [H, W] (sum of weights), final_T [H, W], last [H, W] = position in ids of the */      \
  /* last Gaussian a pixel took (-1: none) */                                                                  \
  void splat_rasterize_forward(const float* means2d, const float* conics, const float* colors,                  \
                               const float* opacities, int channels, const int32_t* ids,                       \
                               const int64_t* tile_offsets, SplatTiles g, float* image, float* alpha,          \
                               float* final_T, int32_t* last __VA_ARGS__);                                          \
  /* gradients per Gaussian, zeroed by the caller */                                                           \
  void splat_rasterize_backward(const float* means2d, const float* conics, const float* colors,                 \
                                const float* opacities, int channels, const int32_t* ids,                      \
                                const int64_t* tile_offsets, SplatTiles g, const float* final_T,               \
                                const int32_t* last, const float* v_image, const float* v_alpha,               \
                                float* v_means2d, float* v_conics, float* v_colors, float* v_opacities __VA_ARGS__);

namespace cpu {
FIELDS_KERNEL_DECLS()

// Samples of a run of consecutive rays, in ray order.
struct MarchedChunk {
  std::vector<int64_t> ray;
  std::vector<float> t_start, t_end;
};
// Marching in one pass: every ray is marched once, its samples appended to its chunk (consecutive rays), and the
// caller concatenates the chunks in order. (The CUDA build marches twice instead, count then fill, because
// threads there cannot grow buffers; on a CPU the second pass would double the cost.)
std::vector<MarchedChunk> march_chunks(const float* origins, const float* dirs, const float* jitter, int64_t n_rays,
                                       const uint8_t* binary, MarchParams p);
}  // namespace cpu

namespace cuda {
FIELDS_KERNEL_DECLS(, void* stream)
/* samples per ray */
void march_count(const float* origins, const float* dirs, const float* jitter, int64_t n_rays, const uint8_t* binary,
                 MarchParams p, int64_t* counts, void* stream);
void march_fill(const float* origins, const float* dirs, const float* jitter, int64_t n_rays, const uint8_t* binary,
                MarchParams p, const int64_t* offsets, int64_t* ray_indices, float* t_starts, float* t_ends,
                void* stream);
}  // namespace cuda

#undef FIELDS_KERNEL_DECLS

}  // namespace fields
