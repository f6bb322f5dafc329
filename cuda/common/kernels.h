// Entry points of the native kernels on raw pointers and sizes, one set per build: fields::cpu (cpu/*.cpp, C++17 +
// OpenMP) and fields::cuda (gpu/*.cu, nvcc), plus the CPU-only ops. No ATen here: bindings.cpp checks shapes,
// allocates the tensors and dispatches on the device. All float tensors are float32 (or bfloat16 where a
// signature says so) and contiguous; `offsets` are the CSR offsets [n_rays + 1] of packed samples sorted by ray.
// (The fused MLP is the one op that works on tensors itself: cpu/mlp.h.)
#pragma once

#include <cstdint>
#include <functional>

#include "common/fields_math.h"

namespace fields {

struct HashGrid {
  const float* table;     // [L, T, F]
  const int32_t* res;     // [L] cells per side of each level (device memory for the CUDA build)
  int levels;
  int64_t table_size;     // T, a power of two
  int features;           // F
};

// The packed samples of a march, in arrays the caller allocates once the kernel knows how many there are.
struct PackedSamples {
  int64_t* ray_indices;  // [S], non-decreasing
  float* t_starts;       // [S]
  float* t_ends;         // [S]
};
using AllocateSamples = std::function<PackedSamples(int64_t count)>;

// A bfloat16 value as its bits (the top half of a float32), layout-compatible with torch's.
struct Bf16 {
  uint16_t bits;
};

#define FIELDS_KERNEL_DECLS(...)                                                                            \
  /* out [N, L * F] */                                                                                         \
  void hash_encode_forward(const float* x, int64_t n, HashGrid g, float* out __VA_ARGS__);                          \
  /* grad_table [L, T, F] overwritten (zeroed inside); grad_x [N, 3] or null */                                \
  void hash_encode_backward(const float* grad_out, const float* x, int64_t n, HashGrid g, float* grad_table,    \
                            float* grad_x __VA_ARGS__);                                                             \
  /* Packed samples in occupied cells of `binary` [res] (see renderers/marching.py), in `allocate(count)`'s */   \
  /* arrays; p.coarse is derived here from `binary` (empty blocks of cells are jumped) */                        \
  void march_rays(const float* origins, const float* dirs, const float* jitter, int64_t n_rays,                 \
                  const uint8_t* binary, MarchParams p, const AllocateSamples& allocate __VA_ARGS__);             \
  void transmittance(const float* tau, const int64_t* offsets, int64_t n_rays, float* out __VA_ARGS__);              \
  void composite_forward(const float* sigmas, const float* rgbs, const float* t_starts, const float* t_ends,     \
                         const int64_t* offsets, int64_t n_rays, float* weights, float* rgb, float* opacity,    \
                         float* depth __VA_ARGS__);                                                                 \
  void composite_backward(const float* grad_weights, const float* grad_rgb, const float* grad_opacity,          \
                          const float* grad_depth, const float* sigmas, const float* rgbs,                      \
                          const float* t_starts, const float* t_ends, const int64_t* offsets, int64_t n_rays,   \
                          float* grad_sigmas, float* grad_rgbs __VA_ARGS__);                                \
  /* A front-to-back image round over the live rays `rays` [n_live] (their samples: offsets [n_live + 1]): */   \
  /* weights [S] and keep [S] out; optical (float64), opacity and depth [n_rays] updated at `rays` */           \
  void composite_round(const float* sigmas, const float* t_starts, const float* t_ends, const int64_t* offsets, \
                       const int64_t* rays, int64_t n_live, RoundPruning prune, double* optical, float* opacity, \
                       float* depth, float* weights, uint8_t* keep __VA_ARGS__);                                 \
  /* The samples of a front-to-back round: live ray j's samples first[j].. to slots offsets[j]..offsets[j + 1] */ \
  /* of idx, ray [S] (int64), ts, te [S], x, d [S, 3] (round_samples_ray) */                                   \
  void round_samples(const int64_t* ray_indices, const float* t_starts, const float* t_ends,                    \
                     const float* origins, const float* dirs, const int64_t* first, const int64_t* offsets,     \
                     int64_t n_live, int64_t* idx, int64_t* ray, float* ts, float* te, float* x,               \
                     float* d __VA_ARGS__);                                                                       \
  /* Gaussian splatting. means2d [N, 2], conics [N, 3], depths [N], radii [N] (0: culled), */                 \
  /* compensations [N] (anti-aliasing opacity factor) */                                                        \
  void splat_project_forward(const float* means, const float* quats, const float* scales, int64_t n,           \
                             SplatCamera cam, float* means2d, float* conics, float* depths, int32_t* radii,    \
                             float* compensations __VA_ARGS__);                                                     \
  /* v_viewmats [N, 12]: each Gaussian's share of the [3, 4] view matrix's gradient, or null (not wanted) */    \
  void splat_project_backward(const float* means, const float* quats, const float* scales, int64_t n,          \
                              SplatCamera cam, const float* v_means2d, const float* v_conics,                  \
                              const float* v_depths, const float* v_compensations, float* v_means,             \
                              float* v_quats, float* v_scales, float* v_viewmats __VA_ARGS__);                 \
  /* number of tiles of its square each Gaussian can reach (splat_tile_row_span; 0 when culled) */              \
  void splat_tile_counts(const float* means2d, const float* conics, const float* opacities,                     \
                         const int32_t* radii, int64_t n, SplatTiles g, int64_t* counts __VA_ARGS__);              \
  /* ids [m] of the (tile, Gaussian) pairs sorted by tile, then depth, then id; tile_offsets [tiles + 1]; */      \
  /* gauss_offsets [n] = exclusive prefix sum of the counts */                                                  \
  void splat_tile_bin(const float* means2d, const float* conics, const float* opacities, const int32_t* radii,  \
                      const float* depths, int64_t n, SplatTiles g, const int64_t* gauss_offsets, int64_t m,    \
                      int32_t* ids, int64_t* tile_offsets __VA_ARGS__);                                             \
  /* image [H, W, C], alpha [H, W] (sum of weights), final_T [H, W], last [H, W] = position in ids of the */      \
  /* last Gaussian a pixel took (-1: none) */                                                                  \
  void splat_rasterize_forward(const float* means2d, const float* conics, const float* colors,                  \
                               const float* opacities, int channels, const int32_t* ids,                       \
                               const int64_t* tile_offsets, SplatTiles g, float* image, float* alpha,          \
                               float* final_T, int32_t* last __VA_ARGS__);                                          \
  /* the forward for viewing (no backward): image [H, W, C] with channels [0, n_background) composited on */    \
  /* background [n_background] (device memory) and the rest the alpha-weighted mean (0 where alpha is 0), */   \
  /* alpha [H, W]; nothing is saved per pixel */                                                                \
  void splat_rasterize_render(const float* means2d, const float* conics, const float* colors,                   \
                              const float* opacities, int channels, const int32_t* ids,                        \
                              const int64_t* tile_offsets, SplatTiles g, const float* background,              \
                              int n_background, float* image, float* alpha __VA_ARGS__);                            \
  /* gradients per Gaussian, zeroed by the caller */                                                           \
  void splat_rasterize_backward(const float* means2d, const float* conics, const float* colors,                 \
                                const float* opacities, int channels, const int32_t* ids,                      \
                                const int64_t* tile_offsets, SplatTiles g, const float* final_T,               \
                                const int32_t* last, const float* v_image, const float* v_alpha,               \
                                float* v_means2d, float* v_conics, float* v_colors, float* v_opacities __VA_ARGS__); \
  /* 3DGS colours rgb [N, 3] = max(basis(dirs) . (sh0 | shN rows) + 0.5, 0) with `bands` (1..4) SH bands: */     \
  /* sh0 [N, 1, 3], shN [N, m, 3] of which the first bands^2 - 1 rows are used */                                 \
  void sh_color_forward(const float* dirs, const float* sh0, const float* shN, int64_t n, int m, int bands,       \
                        float* rgb __VA_ARGS__);                                                                      \
  /* v_dirs [N, 3], v_sh0 [N, 1, 3], v_shN [N, m, 3] (zero in the rows not in use), every element written */  \
  void sh_color_backward(const float* dirs, const float* sh0, const float* shN, const float* v_rgb, int64_t n,    \
                         int m, int bands, float* v_dirs, float* v_sh0, float* v_shN __VA_ARGS__);

namespace cpu {
FIELDS_KERNEL_DECLS()

// CPU-only ops (CUDA tensors take the plain-PyTorch path).
// Real spherical harmonics of unit directions [N, 3]: out [N, degree^2], degree 1..4.
void sh_encode(const float* dirs, int64_t n, int degree, float* out);
// SSIM map [H, W] (channel mean) of images x, y [H, W, C] with the separable window k [ks] (reflect padding;
// H, W > ks / 2), and per pixel the partials [3, C, H, W] its backward needs; the backward gives v_x [H, W, C].
void ssim_forward(const float* x, const float* y, int64_t h, int64_t w, int c, const float* k, int ks, float c1,
                  float c2, float eps, float* map, float* partials);
void ssim_backward(const float* v_map, const float* x, const float* y, int64_t h, int64_t w, int c, const float* k,
                   int ks, const float* partials, float* v_x);
// World points [N, 3] -> the contracted cube of the box lo..hi mapped to [0, 1]^3, out [N, 3], and the
// contraction's stretch there, scale [N] (renderers/contraction.py: contract_unit, density_scale).
void contract_unit(const float* x, int64_t n, const float lo[3], const float hi[3], float* out, float* scale);
// y = relu(gamma * layer_norm(h) + beta) per row of h [N, W] (float32 or bfloat16), gamma and beta [N]; saves the
// rows' mean and 1/std [N] for the backward.
void modulated_relu_forward(const float* h, const float* gamma, const float* beta, int64_t n, int64_t w, double eps,
                            float* y, float* mean, float* rstd);
void modulated_relu_forward(const Bf16* h, const float* gamma, const float* beta, int64_t n, int64_t w, double eps,
                            Bf16* y, float* mean, float* rstd);
void modulated_relu_backward(const float* dy, const float* h, const float* gamma, const float* beta,
                             const float* mean, const float* rstd, int64_t n, int64_t w, float* dh, float* dgamma,
                             float* dbeta);
void modulated_relu_backward(const Bf16* dy, const Bf16* h, const float* gamma, const float* beta,
                             const float* mean, const float* rstd, int64_t n, int64_t w, Bf16* dh, float* dgamma,
                             float* dbeta);
// Flush-to-zero and denormals-are-zero on (or off) on every thread of the OpenMP pool and the calling thread;
// returns whether the calling thread had them on before.
bool flush_denormals(bool on);
}  // namespace cpu

namespace cuda {
FIELDS_KERNEL_DECLS(, void* stream)
}  // namespace cuda

#undef FIELDS_KERNEL_DECLS

}  // namespace fields
