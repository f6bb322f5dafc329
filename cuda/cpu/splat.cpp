// CPU build of the Gaussian-splatting kernels (C++17 + OpenMP): projection per Gaussian, tile binning with a
// per-tile depth sort, and the tile rasterizer forward and backward. Tiles are distributed over threads; inside
// a tile the pixels are SIMD lanes (row by row, so a row of 16 pixels is one AVX-512 vector) and the Gaussians
// are the sequential loop, touching only the rows where a Gaussian can reach alpha >= 1/255. The backward pass
// replays each tile back to front (3DGS), writes one gradient slot per (tile, Gaussian) pair, and sums the
// slots per Gaussian afterwards, so no atomics are needed and the result is deterministic. The forward for viewing
// (splat_rasterize_render) is the same loop with the pixels finished in the tile and nothing saved for backward.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/kernels.h"

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

// One projected Gaussian as the rasterizer reads it.
struct Splat {
  float mx, my, a, b, c, o;
  const float* color;

  Splat(int32_t gid, const float* means2d, const float* conics, const float* opacities, const float* colors, int C)
      : mx(means2d[2 * gid]), my(means2d[2 * gid + 1]), a(conics[3 * gid]), b(conics[3 * gid + 1]),
        c(conics[3 * gid + 2]), o(opacities[gid]), color(colors + static_cast<int64_t>(gid) * C) {}
};

// An upper bound of ln(x) for x >= 1, within 0.31 of it and much cheaper than logf: x = 2^e m with m in [1, 2),
// and ln(m) <= m - 1 (the tangent at 1 of a concave function).
inline float log_upper(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, 4);
  const float e = static_cast<float>(((bits >> 23) & 0xff) - 127);
  bits = (bits & 0x007fffff) | 0x3f800000;
  float m;
  std::memcpy(&m, &bits, 4);
  return 0.69314718f * e + (m - 1.0f);
}

// Where in a tile a Gaussian can reach alpha >= 1/255: that needs d^T conic d <= k = 2 ln(255 o), an ellipse.
// Its rows [r0, r1] (local, with a one-pixel margin), and per row whether the ellipse's span meets the tile's
// pixel centres (with a one-pixel margin; k is widened by 0.1% so rounding never drops a pixel that passes).
struct Footprint {
  float mx, my, a, b, c, inv_a, k, dx_lo, dx_hi, y_first;
  int r0, r1;
  bool exact;  // false: degenerate conic, every row of the tile is processed

  bool init(const Splat& sp, const TileView& v) {
    if (!(sp.o >= kSplatAlphaMin)) return false;
    mx = sp.mx, my = sp.my, a = sp.a, b = sp.b, c = sp.c;
    const float det = sp.a * sp.c - sp.b * sp.b;
    k = 2.0f * log_upper(255.0f * sp.o) * 1.001f + 1e-4f;
    // dx = mx - px over the tile's pixel centres, one pixel wider on each side
    dx_lo = mx - (static_cast<float>(v.x0 + v.nx) + 0.5f);
    dx_hi = mx - (static_cast<float>(v.x0) - 0.5f);
    y_first = static_cast<float>(v.y0) + 0.5f;
    r0 = 0;
    r1 = v.ny - 1;
    exact = det > 0.0f && a > 0.0f;
    if (!exact) return true;
    inv_a = 1.0f / a;
    const float h = std::sqrt(k * a / det);
    if (!(h < 1e6f)) {
      exact = false;
      return true;
    }
    r0 = std::max(r0, static_cast<int>(std::floor(my - h)) - 1 - v.y0);
    r1 = std::min(r1, static_cast<int>(std::ceil(my + h)) + 1 - v.y0);
    return r0 <= r1;
  }

  // Whether q(dx) = a dx^2 + 2 b dy dx + c dy^2 <= k somewhere on [dx_lo, dx_hi]: q is smallest at -b dy / a,
  // or at the nearest end of the interval when that lies outside (no square root, no division).
  bool row(int r) const {
    if (!exact) return true;
    const float dy = my - (y_first + static_cast<float>(r));
    float e = -b * dy * inv_a;
    e = e < dx_lo ? dx_lo : (e > dx_hi ? dx_hi : e);
    return a * e * e + 2.0f * b * dy * e + c * dy * dy <= k;
  }
};

// Gaussians are visited in depth order, i.e. at random places of their arrays: ask for the data of the one
// kPrefetch steps ahead while working on this one (the loads are otherwise cache misses in a long dependency chain).
constexpr int kPrefetch = 12;

inline void prefetch_gaussian(int32_t gid, const float* means2d, const float* conics, const float* opacities,
                              const float* colors, int C) {
  __builtin_prefetch(means2d + 2 * static_cast<int64_t>(gid));
  __builtin_prefetch(conics + 3 * static_cast<int64_t>(gid));
  __builtin_prefetch(opacities + gid);
  __builtin_prefetch(colors + static_cast<int64_t>(gid) * C);
}

inline uint32_t sortable_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Per-thread scratch of one tile: pixel state as structure of arrays, one lane per pixel.
struct TileScratch {
  int lanes, channels;
  std::vector<float> T, w, acc, aux;      // acc, aux: (channels + 1) x lanes, the last row is the alpha channel
  std::vector<float> lane_x, lane_y;      // the pixel centre of each lane
  std::vector<int32_t> last, done;
  std::vector<int32_t> row_live;  // forward: pixels of the row still compositing (as of the last count_live);
                                  // backward: the row's max last

  TileScratch(int tile, int ch)
      : lanes(tile * tile), channels(ch), T(lanes), w(lanes), acc(static_cast<size_t>(ch + 1) * lanes),
        aux(static_cast<size_t>(ch + 1) * lanes), lane_x(lanes), lane_y(lanes), last(lanes), done(lanes),
        row_live(tile) {}

  // The pixel centres of tile v's lanes (row-major, ts lanes a row).
  void place(const TileView& v, int ts) {
    for (int l = 0; l < lanes; ++l) {
      lane_x[l] = static_cast<float>(v.x0 + l % ts) + 0.5f;
      lane_y[l] = static_cast<float>(v.y0 + l / ts) + 0.5f;
    }
  }
};

// The forward recounts each row's pixels still compositing (row_live, whose rows are then skipped, and the tile's
// total, 0 ending the tile) once every kRecount Gaussians rather than per row processed: that count is a horizontal
// sum of the row's lanes, which cost ~10 % of the forward; a pixel that stops in between is kept out by its done
// flag, so the result is the same.
constexpr int kRecount = 8;

// Recounts s.row_live from the done flags; returns the tile's pixels still compositing.
inline int count_live(TileScratch& s, int ts) {
  int alive = 0;
  for (int row = 0; row < ts; ++row) {
    const int32_t* __restrict dn = s.done.data() + row * ts;
    int live = 0;
#pragma omp simd reduction(+ : live)
    for (int col = 0; col < ts; ++col) live += dn[col] == 0;
    s.row_live[row] = live;
    alive += live;
  }
  return alive;
}

}  // namespace

void splat_project_forward(const float* means, const float* quats, const float* scales, int64_t n, SplatCamera cam,
                           float* means2d, float* conics, float* depths, int32_t* radii, float* compensations) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    splat_project_gaussian(means + 3 * i, quats + 4 * i, scales + 3 * i, cam, means2d + 2 * i, conics + 3 * i,
                           depths[i], radii[i], compensations[i]);
}

void splat_project_backward(const float* means, const float* quats, const float* scales, int64_t n, SplatCamera cam,
                            const float* v_means2d, const float* v_conics, const float* v_depths,
                            const float* v_compensations, float* v_means, float* v_quats, float* v_scales,
                            float* v_viewmats) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    splat_project_gaussian_backward(means + 3 * i, quats + 4 * i, scales + 3 * i, cam, v_means2d + 2 * i,
                                    v_conics + 3 * i, v_depths[i], v_compensations[i], v_means + 3 * i,
                                    v_quats + 4 * i, v_scales + 3 * i,
                                    v_viewmats == nullptr ? nullptr : v_viewmats + 12 * i);
}

void splat_tile_counts(const float* means2d, const float* conics, const float* opacities, const int32_t* radii,
                       int64_t n, SplatTiles g, int64_t* counts) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    counts[i] = 0;
    if (radii[i] <= 0) continue;
    const SplatTileEllipse e = splat_tile_ellipse(means2d[2 * i], means2d[2 * i + 1], conics + 3 * i, opacities[i],
                                                  radii[i], g);
    for (int ty = e.y0; ty <= e.y1; ++ty) {
      int tx0, tx1;
      if (splat_tile_row_span(e, ty, tx0, tx1)) counts[i] += tx1 - tx0 + 1;
    }
  }
}

void splat_tile_bin(const float* means2d, const float* conics, const float* opacities, const int32_t* radii,
                    const float* depths, int64_t n, SplatTiles g, const int64_t* gauss_offsets, int64_t m,
                    int32_t* ids, int64_t* tile_offsets) {
  // The CPU build fills tile buckets directly: the counts (gauss_offsets, m their total) only say which Gaussians
  // reach a tile.
  const int64_t n_tiles = static_cast<int64_t>(g.grid_w) * g.grid_h;
  // 1. Gaussians that reach a tile (a count > 0 in gauss_offsets), with their tile spans (one per row of tiles of
  // their square, tx0 | tx1 << 16, empty rows as tx0 > tx1) in `spans` and (first span, y0, y1) packed in `rows`,
  // in (depth, id) order: a stable LSD radix sort of the depth keys that starts in id order. The rows travel with
  // the ids so that the passes below read memory sequentially. The spans (an ellipse each) are filled in parallel.
  std::vector<int32_t> order, order_tmp;
  std::vector<uint32_t> key, key_tmp;
  std::vector<uint64_t> rows, rows_tmp;
  uint64_t n_spans = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t count = (i + 1 < n ? gauss_offsets[i + 1] : m) - gauss_offsets[i];
    if (count <= 0) continue;
    int x0, x1, y0, y1;
    splat_tile_rect(means2d[2 * i], means2d[2 * i + 1], radii[i], g, x0, x1, y0, y1);
    order.push_back(static_cast<int32_t>(i));
    key.push_back(sortable_bits(depths[i]));
    rows.push_back(n_spans | static_cast<uint64_t>(y0) << 32 | static_cast<uint64_t>(y1) << 48);
    n_spans += static_cast<uint64_t>(y1 - y0 + 1);
  }
  std::vector<uint32_t> spans(n_spans);
#pragma omp parallel for schedule(static) if (order.size() > 4096)
  for (int64_t v = 0; v < static_cast<int64_t>(order.size()); ++v) {
    const int64_t i = order[v];
    const SplatTileEllipse e = splat_tile_ellipse(means2d[2 * i], means2d[2 * i + 1], conics + 3 * i, opacities[i],
                                                  radii[i], g);
    uint32_t* span = spans.data() + (rows[v] & 0xffffffffu);
    for (int ty = e.y0; ty <= e.y1; ++ty) {
      int tx0, tx1;
      *span++ = splat_tile_row_span(e, ty, tx0, tx1) ? static_cast<uint32_t>(tx0) | static_cast<uint32_t>(tx1) << 16
                                                     : 1u;
    }
  }
  const int64_t nv = static_cast<int64_t>(order.size());
  order_tmp.resize(nv);
  key_tmp.resize(nv);
  rows_tmp.resize(nv);
  for (int shift = 0; shift < 32; shift += 8) {
    int64_t count[257] = {0};
    for (int64_t i = 0; i < nv; ++i) ++count[((key[i] >> shift) & 0xffu) + 1];
    if (nv == 0 || count[((key[0] >> shift) & 0xffu) + 1] == nv) continue;  // one digit for all: nothing to move
    for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
    for (int64_t i = 0; i < nv; ++i) {
      const int64_t dst = count[(key[i] >> shift) & 0xffu]++;
      key_tmp[dst] = key[i];
      order_tmp[dst] = order[i];
      rows_tmp[dst] = rows[i];
    }
    key.swap(key_tmp);
    order.swap(order_tmp);
    rows.swap(rows_tmp);
  }
  // 2. A parallel counting sort of the (tile, Gaussian) pairs by tile, each thread a contiguous part of that
  // order: buckets come out sorted by depth, then id.
  const int n_threads = std::max(1, std::min<int>(omp_get_max_threads(), static_cast<int>(nv / 4096) + 1));
  std::vector<int64_t> counts(static_cast<size_t>(n_threads) * n_tiles, 0);
  auto for_tiles = [&](uint64_t r, auto&& fn) {
    const uint32_t* span = spans.data() + (r & 0xffffffffu);
    const int y0 = (r >> 32) & 0xffff, y1 = (r >> 48) & 0xffff;
    for (int ty = y0; ty <= y1; ++ty, ++span) {
      const int tx0 = *span & 0xffff, tx1 = *span >> 16;
      for (int tx = tx0; tx <= tx1; ++tx) fn(ty * g.grid_w + tx);
    }
  };
#pragma omp parallel num_threads(n_threads)
  {
    const int th = omp_get_thread_num();
    const int64_t i0 = nv * th / n_threads, i1 = nv * (th + 1) / n_threads;
    int64_t* cnt = counts.data() + static_cast<size_t>(th) * n_tiles;
    for (int64_t i = i0; i < i1; ++i) for_tiles(rows[i], [&](int tile) { ++cnt[tile]; });
#pragma omp barrier
#pragma omp single
    {
      int64_t pos = 0;
      for (int64_t t = 0; t < n_tiles; ++t) {
        tile_offsets[t] = pos;
        for (int h = 0; h < n_threads; ++h) {
          const int64_t c = counts[static_cast<size_t>(h) * n_tiles + t];
          counts[static_cast<size_t>(h) * n_tiles + t] = pos;  // now this thread's write position
          pos += c;
        }
      }
      tile_offsets[n_tiles] = pos;
    }
    for (int64_t i = i0; i < i1; ++i) {
      const int32_t gid = order[i];
      for_tiles(rows[i], [&](int tile) { ids[cnt[tile]++] = gid; });
    }
  }
}

namespace {

// Calls fn(CT, TS) with the channel count (1 to 4) and the 16-pixel tile as compile-time constants
// (std::integral_constant), or 0 for "given at run time".
template <class Fn>
void with_shape(int channels, int tile, Fn&& fn) {
  using std::integral_constant;
  if (tile != 16) return fn(integral_constant<int, 0>{}, integral_constant<int, 0>{});
  const integral_constant<int, 16> ts;
  switch (channels) {
    case 1:
      return fn(integral_constant<int, 1>{}, ts);
    case 2:
      return fn(integral_constant<int, 2>{}, ts);
    case 3:
      return fn(integral_constant<int, 3>{}, ts);
    case 4:
      return fn(integral_constant<int, 4>{}, ts);
    default:
      return fn(integral_constant<int, 0>{}, ts);
  }
}

// Forward of every tile; CT > 0 fixes the channel count and TS > 0 the tile size at compile time (the per-lane
// channel loop unrolls, a tile row is exactly one vector). Save: keep each pixel's final transmittance and last
// Gaussian for the backward; otherwise (viewing) the image is finished in the tile instead: the first
// n_background channels on the background, the rest as alpha-weighted means.
template <int CT, int TS, bool Save>
void rasterize_forward_impl(const float* means2d, const float* conics, const float* colors, const float* opacities,
                            int channels, const int32_t* ids, const int64_t* tile_offsets, SplatTiles g,
                            float* image, float* alpha, float* final_T, int32_t* last, const float* background,
                            int n_background) {
  const int64_t n_tiles = static_cast<int64_t>(g.grid_w) * g.grid_h;
  const int ts = TS > 0 ? TS : g.tile, C = CT > 0 ? CT : channels;
#pragma omp parallel
  {
    TileScratch s(ts, C);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tiles; ++t) {
      const TileView v = tile_view(g, t);
      const int L = s.lanes;
      s.place(v, ts);
      for (int l = 0; l < L; ++l) {
        const bool inside = (l % ts) < v.nx && (l / ts) < v.ny;
        s.T[l] = 1.0f;
        s.last[l] = -1;
        s.done[l] = inside ? 0 : 1;
      }
      for (int row = 0; row < ts; ++row) s.row_live[row] = row < v.ny ? v.nx : 0;  // pixels still compositing
      std::fill(s.acc.begin(), s.acc.end(), 0.0f);
      const int64_t e = tile_offsets[t + 1];
      for (int64_t k = tile_offsets[t]; k < e; ++k) {
        if ((k - tile_offsets[t]) % kRecount == 0 && k > tile_offsets[t] && count_live(s, ts) == 0) break;
        if (k + kPrefetch < e) prefetch_gaussian(ids[k + kPrefetch], means2d, conics, opacities, colors, C);
        const Splat sp(ids[k], means2d, conics, opacities, colors, C);
        Footprint fp;
        if (!fp.init(sp, v)) continue;
        const float mx = sp.mx, my = sp.my, a = sp.a, b = sp.b, c = sp.c, o = sp.o;
        const float* __restrict cv = sp.color;
        const int32_t kk = static_cast<int32_t>(k);
        // The rows it can reach are consecutive (the ellipse's rows within the tile's columns form an interval), so
        // they are one run of lanes for one loop: its iterations are independent, and the exp chains of successive
        // vectors overlap (a loop per row ran each row's chain alone, latency bound). Finished rows are trimmed from
        // the run's ends; inside it their lanes are done and take nothing, as are those of a row fp.row rejects.
        int r0 = fp.r0, r1 = fp.r1;
        while (r0 <= r1 && (s.row_live[r0] == 0 || !fp.row(r0))) ++r0;
        while (r1 >= r0 && (s.row_live[r1] == 0 || !fp.row(r1))) --r1;
        if (r0 > r1) continue;
        {
          float* __restrict T = s.T.data();
          float* __restrict acc = s.acc.data();
          int32_t* __restrict lst = s.last.data();
          int32_t* __restrict dn = s.done.data();
          const float* __restrict lx = s.lane_x.data();
          const float* __restrict ly = s.lane_y.data();
          // The lane predicates are int32 masks and the alpha test reads the uncapped alpha (the same test, as
          // 1/255 < 0.99): with bools, g++ 12 folds the capped test into a select of booleans that it cannot
          // vectorise, and the whole loop ran scalar (6.7x slower; test_splat_pixel_loops_vectorise guards it).
#pragma omp simd
          for (int l = r0 * ts; l < (r1 + 1) * ts; ++l) {
            const float dx = mx - lx[l];
            const float dy = my - ly[l];
            const float power = splat_power(dx, dy, a, b, c);
            const float raw = splat_raw_alpha(o, power);
            const float al = splat_cap(raw);
            const int32_t take = static_cast<int32_t>(power <= 0.0f) & static_cast<int32_t>(raw >= kSplatAlphaMin) &
                                 static_cast<int32_t>(dn[l] == 0);
            const float test_T = T[l] * (1.0f - al);
            const int32_t stop = take & static_cast<int32_t>(test_T < kSplatTMin);
            const int32_t add = take & (stop ^ 1);
            const float w = add ? al * T[l] : 0.0f;
            for (int ch = 0; ch < C; ++ch) acc[ch * L + l] += w * cv[ch];
            acc[C * L + l] += w;
            T[l] = add ? test_T : T[l];
            if (Save) lst[l] = add ? kk : lst[l];
            dn[l] |= stop;
          }
        }
      }
      for (int row = 0; row < v.ny; ++row)
        for (int col = 0; col < v.nx; ++col) {
          const int l = row * ts + col;
          const int64_t pix = static_cast<int64_t>(v.y0 + row) * g.width + v.x0 + col;
          const float al = s.acc[static_cast<size_t>(C) * L + l];
          alpha[pix] = al;
          if (Save) {
            for (int ch = 0; ch < C; ++ch) image[pix * C + ch] = s.acc[static_cast<size_t>(ch) * L + l];
            final_T[pix] = s.T[l];
            last[pix] = s.last[l];
          } else {
            for (int ch = 0; ch < C; ++ch) {
              const float a = s.acc[static_cast<size_t>(ch) * L + l];
              image[pix * C + ch] = ch < n_background ? splat_on_background(a, al, background[ch])
                                                      : splat_weighted_mean(a, al);
            }
          }
        }
    }
  }
}

}  // namespace

void splat_rasterize_forward(const float* means2d, const float* conics, const float* colors, const float* opacities,
                             int channels, const int32_t* ids, const int64_t* tile_offsets, SplatTiles g,
                             float* image, float* alpha, float* final_T, int32_t* last) {
  with_shape(channels, g.tile, [&](auto ct, auto ts) {
    rasterize_forward_impl<decltype(ct)::value, decltype(ts)::value, true>(
        means2d, conics, colors, opacities, channels, ids, tile_offsets, g, image, alpha, final_T, last, nullptr, 0);
  });
}

void splat_rasterize_render(const float* means2d, const float* conics, const float* colors, const float* opacities,
                            int channels, const int32_t* ids, const int64_t* tile_offsets, SplatTiles g,
                            const float* background, int n_background, float* image, float* alpha) {
  with_shape(channels, g.tile, [&](auto ct, auto ts) {
    rasterize_forward_impl<decltype(ct)::value, decltype(ts)::value, false>(
        means2d, conics, colors, opacities, channels, ids, tile_offsets, g, image, alpha, nullptr, nullptr,
        background, n_background);
  });
}

namespace {

// Backward of every tile; CT > 0 fixes the channel count at compile time. Per Gaussian, back to front, one
// fused pass over its rows: undo the transmittance, the colour behind it (B, per channel) and the gradients of
// its mean, conic and opacity (SIMD reductions over the lanes); the colour gradients are reduced afterwards
// from the lane weights.
template <int CT, int TS>
void rasterize_backward_impl(const float* means2d, const float* conics, const float* colors,
                             const float* opacities, int channels, const int32_t* ids, const int64_t* tile_offsets,
                             SplatTiles g, const float* final_T, const int32_t* last, const float* v_image,
                             const float* v_alpha, float* slots) {
  const int64_t n_tiles = static_cast<int64_t>(g.grid_w) * g.grid_h;
  const int ts = TS > 0 ? TS : g.tile, C = CT > 0 ? CT : channels, S = 6 + C;
#pragma omp parallel
  {
    TileScratch s(ts, C);  // acc: upstream gradient per channel (+ alpha), aux: colour behind (B) per channel
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tiles; ++t) {
      const TileView v = tile_view(g, t);
      const int L = s.lanes;
      int32_t max_last = -1;
      s.place(v, ts);
      for (int l = 0; l < L; ++l) {
        const int row = l / ts, col = l % ts;
        const bool inside = col < v.nx && row < v.ny;
        const int64_t pix = static_cast<int64_t>(v.y0 + row) * g.width + v.x0 + col;
        s.T[l] = inside ? final_T[pix] : 1.0f;
        s.last[l] = inside ? last[pix] : -1;
        max_last = std::max(max_last, s.last[l]);
        s.row_live[row] = col == 0 ? s.last[l] : std::max(s.row_live[row], s.last[l]);  // the row's max last
        for (int ch = 0; ch <= C; ++ch) {
          s.acc[static_cast<size_t>(ch) * L + l] = !inside ? 0.0f : ch < C ? v_image[pix * C + ch] : v_alpha[pix];
          s.aux[static_cast<size_t>(ch) * L + l] = 0.0f;
        }
      }
      const int64_t b = tile_offsets[t], e = tile_offsets[t + 1];
      for (int64_t k = e - 1; k >= b; --k) {
        float* slot = slots + static_cast<size_t>(k) * S;
        std::fill(slot, slot + S, 0.0f);
        if (k > max_last) continue;
        if (k - kPrefetch >= b) prefetch_gaussian(ids[k - kPrefetch], means2d, conics, opacities, colors, C);
        const Splat sp(ids[k], means2d, conics, opacities, colors, C);
        Footprint fp;
        if (!fp.init(sp, v)) continue;
        const float mx = sp.mx, my = sp.my, a = sp.a, bb = sp.b, c = sp.c, o = sp.o;
        const float* __restrict cv = sp.color;
        const int32_t kk = static_cast<int32_t>(k);
        const float inv_o = 1.0f / o;
        // As in the forward, the rows it can reach are one run of lanes for one loop (a loop per row paid the
        // seven horizontal reductions of its gradients on every row). The run's ends are trimmed to rows where some
        // lane takes it; inside, a lane of a row that fp.row rejects or whose pixels all stopped before it fails
        // the per-lane test and contributes nothing.
        int r0 = fp.r0, r1 = fp.r1;
        while (r0 <= r1 && (kk > s.row_live[r0] || !fp.row(r0))) ++r0;
        while (r1 >= r0 && (kk > s.row_live[r1] || !fp.row(r1))) --r1;
        if (r0 > r1) continue;
        float vmx = 0.0f, vmy = 0.0f, va = 0.0f, vb = 0.0f, vc = 0.0f, vo = 0.0f;
        int n_take = 0;
        const int l0 = r0 * ts, l1 = (r1 + 1) * ts;
        {
          float* __restrict w = s.w.data();
          float* __restrict T = s.T.data();
          float* __restrict B = s.aux.data();
          const float* __restrict G = s.acc.data();
          const int32_t* __restrict lst = s.last.data();
          const float* __restrict lx = s.lane_x.data();
          const float* __restrict ly = s.lane_y.data();
#pragma omp simd reduction(+ : vmx, vmy, va, vb, vc, vo, n_take)
          for (int l = l0; l < l1; ++l) {
            const float dx = mx - lx[l];
            const float dy = my - ly[l];
            const float power = splat_power(dx, dy, a, bb, c);
            const float raw = splat_raw_alpha(o, power);
            const float alpha = splat_cap(raw);
            const int32_t take = static_cast<int32_t>(power <= 0.0f) & static_cast<int32_t>(raw >= kSplatAlphaMin) &
                                 static_cast<int32_t>(kk <= lst[l]);
            const float Tb = T[l] / (1.0f - alpha);
            T[l] = take ? Tb : T[l];
            const float tn = take ? Tb : 0.0f, al = take ? alpha : 0.0f;
            w[l] = al * tn;
            // sum_c g_c (c_k - B_c) and B_c <- alpha c_k + (1 - alpha) B_c (the alpha channel has colour 1)
            float ds = 0.0f;
            for (int ch = 0; ch < C; ++ch) {
              const float bc = B[ch * L + l];
              ds += G[ch * L + l] * (cv[ch] - bc);
              B[ch * L + l] = al * cv[ch] + (1.0f - al) * bc;
            }
            const float ba = B[C * L + l];
            ds += G[C * L + l] * (1.0f - ba);
            B[C * L + l] = al + (1.0f - al) * ba;
            const float v_raw = tn * ds;                                                  // d loss / d alpha
            const float graw = (take && raw <= kSplatAlphaMax) ? raw : 0.0f;              // 0 above the cap
            const float v_power = graw * v_raw;                                           // raw = o exp(power)
            vo += graw * inv_o * v_raw;
            vmx += v_power * -(a * dx + bb * dy);
            vmy += v_power * -(c * dy + bb * dx);
            va += -0.5f * dx * dx * v_power;
            vb += -dx * dy * v_power;
            vc += -0.5f * dy * dy * v_power;
            n_take += take;
          }
        }
        if (n_take == 0) continue;
        slot[0] = vmx;
        slot[1] = vmy;
        slot[2] = va;
        slot[3] = vb;
        slot[4] = vc;
        slot[5] = vo;
        for (int ch = 0; ch < C; ++ch) {
          const float* __restrict G = s.acc.data() + static_cast<size_t>(ch) * L;
          const float* __restrict w = s.w.data();
          float vcol = 0.0f;
#pragma omp simd reduction(+ : vcol)
          for (int l = l0; l < l1; ++l) vcol += w[l] * G[l];
          slot[6 + ch] = vcol;
        }
      }
    }
  }
}

}  // namespace

void splat_rasterize_backward(const float* means2d, const float* conics, const float* colors,
                              const float* opacities, int channels, const int32_t* ids, const int64_t* tile_offsets,
                              SplatTiles g, const float* final_T, const int32_t* last, const float* v_image,
                              const float* v_alpha, float* v_means2d, float* v_conics, float* v_colors,
                              float* v_opacities) {
  const int64_t n_tiles = static_cast<int64_t>(g.grid_w) * g.grid_h, m = tile_offsets[n_tiles];
  const int C = channels, S = 6 + C;  // slot of a (tile, Gaussian) pair: mean2d (2), conic (3), opacity, colours
  // Kept between calls (per calling thread): a fresh buffer of this size costs its page faults every step.
  thread_local std::vector<float> slot_buffer;
  if (slot_buffer.size() < static_cast<size_t>(m) * S) slot_buffer.resize(static_cast<size_t>(m) * S);
  float* slots = slot_buffer.data();
  with_shape(channels, g.tile, [&](auto ct, auto ts) {
    rasterize_backward_impl<decltype(ct)::value, decltype(ts)::value>(means2d, conics, colors, opacities, channels,
                                                                      ids, tile_offsets, g, final_T, last, v_image,
                                                                      v_alpha, slots);
  });
  for (int64_t k = 0; k < m; ++k) {
    if (k + kPrefetch < m) {  // the gradients are scattered in depth order: fetch ahead
      const int64_t ahead = ids[k + kPrefetch];
      __builtin_prefetch(v_means2d + 2 * ahead, 1);
      __builtin_prefetch(v_conics + 3 * ahead, 1);
      __builtin_prefetch(v_opacities + ahead, 1);
      __builtin_prefetch(v_colors + ahead * C, 1);
    }
    const int64_t gid = ids[k];
    const float* slot = slots + static_cast<size_t>(k) * S;
    v_means2d[2 * gid] += slot[0];
    v_means2d[2 * gid + 1] += slot[1];
    for (int j = 0; j < 3; ++j) v_conics[3 * gid + j] += slot[2 + j];
    v_opacities[gid] += slot[5];
    for (int ch = 0; ch < C; ++ch) v_colors[gid * C + ch] += slot[6 + ch];
  }
}

}  // namespace cpu
}  // namespace fields
