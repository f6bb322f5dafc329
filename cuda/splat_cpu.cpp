// CPU build of the Gaussian-splatting kernels (C++17 + OpenMP): projection per Gaussian, tile binning with a
// per-tile depth sort, and the tile rasterizer forward and backward. Tiles are distributed over threads; inside
// a tile the pixels are SIMD lanes (row by row, so a row of 16 pixels is one AVX-512 vector) and the Gaussians
// are the sequential loop, touching only the rows where a Gaussian can reach alpha >= 1/255. The backward pass
// replays each tile back to front (3DGS), writes one gradient slot per (tile, Gaussian) pair, and sums the
// slots per Gaussian afterwards, so no atomics are needed and the result is deterministic.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels.h"

namespace fields {
namespace cpu {
namespace {

struct TileView {
  int x0, y0, nx, ny;  // first pixel and extent (edge tiles are cut by the image border)
};

inline TileView tile_view(const SplatTiles& g, int64_t t) {
  TileView v;
  v.x0 = static_cast<int>(t % g.grid_w) * g.tile;
  v.y0 = static_cast<int>(t / g.grid_w) * g.tile;
  v.nx = std::min(g.tile, g.width - v.x0);
  v.ny = std::min(g.tile, g.height - v.y0);
  return v;
}

// Local rows [r0, r1] of a tile where the Gaussian can reach alpha >= 1/255 (with a one-pixel margin); false if
// it reaches none. alpha >= 1/255 needs d^T conic d <= 2 ln(255 o), an ellipse of half height sqrt(k cov_yy).
inline bool gaussian_rows(float my, float a, float b, float c, float o, const TileView& v, int& r0, int& r1) {
  if (!(o >= kSplatAlphaMin)) return false;
  r0 = 0;
  r1 = v.ny - 1;
  const float det = a * c - b * b;
  if (!(det > 0.0f)) return true;
  const float h = std::sqrt(2.0f * std::log(255.0f * o) * a / det);
  if (!(h < 1e6f)) return true;
  r0 = std::max(r0, static_cast<int>(std::floor(my - h)) - 1 - v.y0);
  r1 = std::min(r1, static_cast<int>(std::ceil(my + h)) + 1 - v.y0);
  return r0 <= r1;
}

inline uint32_t sortable_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Per-thread scratch of one tile: pixel state as structure of arrays, one lane per pixel.
struct TileScratch {
  int lanes, channels;
  std::vector<float> px, T, w, acc, aux;  // acc: (channels + 1) x lanes, the last row is the alpha channel
  std::vector<int32_t> last, done;

  TileScratch(int tile, int ch)
      : lanes(tile * tile), channels(ch), px(tile), T(lanes), w(lanes), acc(static_cast<size_t>(ch + 1) * lanes),
        aux(static_cast<size_t>(ch + 1) * lanes), last(lanes), done(lanes) {}
};

}  // namespace

void splat_project_forward(const float* means, const float* quats, const float* scales, int64_t n, SplatCamera cam,
                           float* means2d, float* conics, float* depths, int32_t* radii) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    splat_project_gaussian(means + 3 * i, quats + 4 * i, scales + 3 * i, cam, means2d + 2 * i, conics + 3 * i,
                           depths[i], radii[i]);
}

void splat_project_backward(const float* means, const float* quats, const float* scales, int64_t n, SplatCamera cam,
                            const float* v_means2d, const float* v_conics, const float* v_depths, float* v_means,
                            float* v_quats, float* v_scales) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    splat_project_gaussian_backward(means + 3 * i, quats + 4 * i, scales + 3 * i, cam, v_means2d + 2 * i,
                                    v_conics + 3 * i, v_depths[i], v_means + 3 * i, v_quats + 4 * i,
                                    v_scales + 3 * i);
}

void splat_tile_counts(const float* means2d, const int32_t* radii, int64_t n, SplatTiles g, int64_t* counts) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (radii[i] <= 0) {
      counts[i] = 0;
      continue;
    }
    int x0, x1, y0, y1;
    splat_tile_rect(means2d[2 * i], means2d[2 * i + 1], radii[i], g, x0, x1, y0, y1);
    counts[i] = static_cast<int64_t>(x1 - x0 + 1) * (y1 - y0 + 1);
  }
}

void splat_tile_bin(const float* means2d, const int32_t* radii, const float* depths, int64_t n, SplatTiles g,
                    const int64_t* gauss_offsets, int64_t m, int32_t* ids, int64_t* tile_offsets) {
  const int64_t n_tiles = static_cast<int64_t>(g.grid_w) * g.grid_h;
  std::unique_ptr<int32_t[]> pair_tile(new int32_t[m]);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (radii[i] <= 0) continue;
    int x0, x1, y0, y1;
    splat_tile_rect(means2d[2 * i], means2d[2 * i + 1], radii[i], g, x0, x1, y0, y1);
    int64_t k = gauss_offsets[i];
    for (int ty = y0; ty <= y1; ++ty)
      for (int tx = x0; tx <= x1; ++tx) pair_tile[k++] = ty * g.grid_w + tx;
  }
  // Bucket the pairs by tile in Gaussian order, then sort each tile by (depth, id).
  std::vector<int64_t> pos(n_tiles + 1, 0);
  for (int64_t k = 0; k < m; ++k) ++pos[pair_tile[k] + 1];
  for (int64_t t = 0; t < n_tiles; ++t) pos[t + 1] += pos[t];
  std::memcpy(tile_offsets, pos.data(), sizeof(int64_t) * (n_tiles + 1));
  for (int64_t i = 0; i < n; ++i) {
    if (radii[i] <= 0) continue;
    int x0, x1, y0, y1;
    splat_tile_rect(means2d[2 * i], means2d[2 * i + 1], radii[i], g, x0, x1, y0, y1);
    for (int64_t k = gauss_offsets[i], e = k + static_cast<int64_t>(x1 - x0 + 1) * (y1 - y0 + 1); k < e; ++k)
      ids[pos[pair_tile[k]]++] = static_cast<int32_t>(i);
  }
#pragma omp parallel
  {
    std::vector<uint64_t> keys;
#pragma omp for schedule(dynamic, 4)
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int64_t b = tile_offsets[t], e = tile_offsets[t + 1];
      keys.resize(e - b);
      for (int64_t k = b; k < e; ++k)
        keys[k - b] = (static_cast<uint64_t>(sortable_bits(depths[ids[k]])) << 32) | static_cast<uint32_t>(ids[k]);
      std::sort(keys.begin(), keys.end());
      for (int64_t k = b; k < e; ++k) ids[k] = static_cast<int32_t>(keys[k - b] & 0xffffffffu);
    }
  }
}

void splat_rasterize_forward(const float* means2d, const float* conics, const float* colors, const float* opacities,
                             int channels, const int32_t* ids, const int64_t* tile_offsets, SplatTiles g,
                             float* image, float* alpha, float* final_T, int32_t* last) {
  const int64_t n_tiles = static_cast<int64_t>(g.grid_w) * g.grid_h;
  const int ts = g.tile, C = channels;
#pragma omp parallel
  {
    TileScratch s(ts, C);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tiles; ++t) {
      const TileView v = tile_view(g, t);
      const int L = s.lanes;
      for (int col = 0; col < ts; ++col) s.px[col] = static_cast<float>(v.x0 + col) + 0.5f;
      int alive = 0;
      for (int l = 0; l < L; ++l) {
        const bool inside = (l % ts) < v.nx && (l / ts) < v.ny;
        s.T[l] = 1.0f;
        s.last[l] = -1;
        s.done[l] = inside ? 0 : 1;
        alive += inside;
      }
      std::fill(s.acc.begin(), s.acc.end(), 0.0f);
      for (int64_t k = tile_offsets[t]; k < tile_offsets[t + 1] && alive > 0; ++k) {
        const int32_t gid = ids[k];
        const float mx = means2d[2 * gid], my = means2d[2 * gid + 1];
        const float a = conics[3 * gid], b = conics[3 * gid + 1], c = conics[3 * gid + 2], o = opacities[gid];
        int r0, r1;
        if (!gaussian_rows(my, a, b, c, o, v, r0, r1)) continue;
        int n_add = 0, n_stop = 0;
        const int32_t kk = static_cast<int32_t>(k);
        for (int row = r0; row <= r1; ++row) {
          const float dy = my - (static_cast<float>(v.y0 + row) + 0.5f);
          float* __restrict T = s.T.data() + row * ts;
          float* __restrict w = s.w.data() + row * ts;
          int32_t* __restrict lst = s.last.data() + row * ts;
          int32_t* __restrict dn = s.done.data() + row * ts;
          const float* __restrict px = s.px.data();
#pragma omp simd reduction(+ : n_add, n_stop)
          for (int col = 0; col < ts; ++col) {
            const float dx = mx - px[col];
            const float power = splat_power(dx, dy, a, b, c);
            const float al = splat_cap(splat_raw_alpha(o, power));
            const bool take = power <= 0.0f && al >= kSplatAlphaMin && dn[col] == 0;
            const float test_T = T[col] * (1.0f - al);
            const bool stop = take && test_T < kSplatTMin;
            const bool add = take && !stop;
            w[col] = add ? al * T[col] : 0.0f;
            T[col] = add ? test_T : T[col];
            lst[col] = add ? kk : lst[col];
            dn[col] = stop ? 1 : dn[col];
            n_add += add;
            n_stop += stop;
          }
        }
        alive -= n_stop;
        if (n_add == 0) continue;
        for (int ch = 0; ch <= C; ++ch) {
          const float cv = ch < C ? colors[static_cast<int64_t>(gid) * C + ch] : 1.0f;
          float* __restrict acc = s.acc.data() + static_cast<size_t>(ch) * L;
          const float* __restrict w = s.w.data();
#pragma omp simd
          for (int l = r0 * ts; l < (r1 + 1) * ts; ++l) acc[l] += w[l] * cv;
        }
      }
      for (int row = 0; row < v.ny; ++row)
        for (int col = 0; col < v.nx; ++col) {
          const int l = row * ts + col;
          const int64_t pix = static_cast<int64_t>(v.y0 + row) * g.width + v.x0 + col;
          for (int ch = 0; ch < C; ++ch) image[pix * C + ch] = s.acc[static_cast<size_t>(ch) * L + l];
          alpha[pix] = s.acc[static_cast<size_t>(C) * L + l];
          final_T[pix] = s.T[l];
          last[pix] = s.last[l];
        }
    }
  }
}

void splat_rasterize_backward(const float* means2d, const float* conics, const float* colors,
                              const float* opacities, int channels, const int32_t* ids, const int64_t* tile_offsets,
                              SplatTiles g, const float* final_T, const int32_t* last, const float* v_image,
                              const float* v_alpha, float* v_means2d, float* v_conics, float* v_colors,
                              float* v_opacities) {
  const int64_t n_tiles = static_cast<int64_t>(g.grid_w) * g.grid_h;
  const int ts = g.tile, C = channels, S = 6 + C;  // slot: mean2d (2), conic (3), opacity, colours
  const int64_t m = tile_offsets[n_tiles];
  std::unique_ptr<float[]> slots(new float[static_cast<size_t>(m) * S]);
#pragma omp parallel
  {
    TileScratch s(ts, C);  // acc: upstream gradient per channel, aux: colour behind (B) per channel
    std::vector<float> dsum(s.lanes), tn(s.lanes), al(s.lanes), gv(s.lanes);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tiles; ++t) {
      const TileView v = tile_view(g, t);
      const int L = s.lanes;
      for (int col = 0; col < ts; ++col) s.px[col] = static_cast<float>(v.x0 + col) + 0.5f;
      int32_t max_last = -1;
      for (int l = 0; l < L; ++l) {
        const int row = l / ts, col = l % ts;
        const bool inside = col < v.nx && row < v.ny;
        const int64_t pix = static_cast<int64_t>(v.y0 + row) * g.width + v.x0 + col;
        s.T[l] = inside ? final_T[pix] : 1.0f;
        s.last[l] = inside ? last[pix] : -1;
        max_last = std::max(max_last, s.last[l]);
        for (int ch = 0; ch <= C; ++ch) {
          s.acc[static_cast<size_t>(ch) * L + l] = !inside ? 0.0f : ch < C ? v_image[pix * C + ch] : v_alpha[pix];
          s.aux[static_cast<size_t>(ch) * L + l] = 0.0f;
        }
      }
      const int64_t b = tile_offsets[t], e = tile_offsets[t + 1];
      for (int64_t k = e - 1; k >= b; --k) {
        float* slot = slots.get() + static_cast<size_t>(k) * S;
        std::fill(slot, slot + S, 0.0f);
        if (k > max_last) continue;
        const int32_t gid = ids[k];
        const float mx = means2d[2 * gid], my = means2d[2 * gid + 1];
        const float a = conics[3 * gid], bb = conics[3 * gid + 1], c = conics[3 * gid + 2], o = opacities[gid];
        int r0, r1;
        if (!gaussian_rows(my, a, bb, c, o, v, r0, r1)) continue;
        const int l0 = r0 * ts, l1 = (r1 + 1) * ts;
        const int32_t kk = static_cast<int32_t>(k);
        int n_take = 0;
        // Pass 1: which lanes took this Gaussian, its alpha there and the transmittance before it.
        for (int row = r0; row <= r1; ++row) {
          const float dy = my - (static_cast<float>(v.y0 + row) + 0.5f);
          float* __restrict T = s.T.data() + row * ts;
          float* __restrict tnr = tn.data() + row * ts;
          float* __restrict alr = al.data() + row * ts;
          float* __restrict gvr = gv.data() + row * ts;
          float* __restrict ds = dsum.data() + row * ts;
          const int32_t* __restrict lst = s.last.data() + row * ts;
          const float* __restrict px = s.px.data();
#pragma omp simd reduction(+ : n_take)
          for (int col = 0; col < ts; ++col) {
            const float dx = mx - px[col];
            const float power = splat_power(dx, dy, a, bb, c);
            const float raw = splat_raw_alpha(o, power);
            const float alpha = splat_cap(raw);
            const bool take = power <= 0.0f && alpha >= kSplatAlphaMin && kk <= lst[col];
            const float Tb = T[col] / (1.0f - alpha);
            T[col] = take ? Tb : T[col];
            tnr[col] = take ? Tb : 0.0f;
            alr[col] = take ? alpha : 0.0f;
            gvr[col] = (take && raw <= kSplatAlphaMax) ? raw : 0.0f;  // d alpha / d(o G) = 1 below the cap
            ds[col] = 0.0f;
            n_take += take;
          }
        }
        if (n_take == 0) continue;
        // Pass 2: per channel, colour gradient and sum_c g_c (c_k - B_c), then B_c <- alpha c_k + (1 - alpha) B_c.
        for (int ch = 0; ch <= C; ++ch) {
          const float cv = ch < C ? colors[static_cast<int64_t>(gid) * C + ch] : 1.0f;
          const float* __restrict gr = s.acc.data() + static_cast<size_t>(ch) * L;
          float* __restrict B = s.aux.data() + static_cast<size_t>(ch) * L;
          const float* __restrict alr = al.data();
          const float* __restrict tnr = tn.data();
          float* __restrict ds = dsum.data();
          float vcol = 0.0f;
#pragma omp simd reduction(+ : vcol)
          for (int l = l0; l < l1; ++l) {
            vcol += alr[l] * tnr[l] * gr[l];
            ds[l] += gr[l] * (cv - B[l]);
            B[l] = alr[l] * cv + (1.0f - alr[l]) * B[l];
          }
          if (ch < C) slot[6 + ch] = vcol;
        }
        // Pass 3: through alpha = min(0.99, o exp(power)) to the mean, conic and opacity.
        float vmx = 0.0f, vmy = 0.0f, va = 0.0f, vb = 0.0f, vc = 0.0f, vo = 0.0f;
        for (int row = r0; row <= r1; ++row) {
          const float dy = my - (static_cast<float>(v.y0 + row) + 0.5f);
          const float* __restrict tnr = tn.data() + row * ts;
          const float* __restrict gvr = gv.data() + row * ts;
          const float* __restrict ds = dsum.data() + row * ts;
          const float* __restrict px = s.px.data();
#pragma omp simd reduction(+ : vmx, vmy, va, vb, vc, vo)
          for (int col = 0; col < ts; ++col) {
            const float dx = mx - px[col];
            const float v_raw = tnr[col] * ds[col];  // d loss / d alpha, zero where not taken
            const float v_power = gvr[col] * v_raw;  // raw = o exp(power): d raw / d power = raw
            vo += gvr[col] == 0.0f ? 0.0f : gvr[col] / o * v_raw;
            vmx += v_power * -(a * dx + bb * dy);
            vmy += v_power * -(c * dy + bb * dx);
            va += -0.5f * dx * dx * v_power;
            vb += -dx * dy * v_power;
            vc += -0.5f * dy * dy * v_power;
          }
        }
        slot[0] = vmx;
        slot[1] = vmy;
        slot[2] = va;
        slot[3] = vb;
        slot[4] = vc;
        slot[5] = vo;
      }
    }
  }
  for (int64_t k = 0; k < m; ++k) {
    const int64_t gid = ids[k];
    const float* slot = slots.get() + static_cast<size_t>(k) * S;
    v_means2d[2 * gid] += slot[0];
    v_means2d[2 * gid + 1] += slot[1];
    for (int j = 0; j < 3; ++j) v_conics[3 * gid + j] += slot[2 + j];
    v_opacities[gid] += slot[5];
    for (int ch = 0; ch < C; ++ch) v_colors[gid * C + ch] += slot[6 + ch];
  }
}

}  // namespace cpu
}  // namespace fields
