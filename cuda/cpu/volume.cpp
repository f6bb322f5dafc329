// CPU build of the volume-rendering kernels (C++17 + OpenMP): hash encoding, ray marching, compositing. Loops are
// written so that g++ -O3 -march=native vectorises the per-point arithmetic (blocks of points, structure-of-arrays
// scratch, no branches inside), and the hash-grid backward partitions the work by level, so every thread owns its
// levels' table rows and the gradient scatter needs no atomics.
#include <omp.h>

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>
#define FIELDS_HASH_AVX512 1
#elif defined(__AVX2__)
#include <immintrin.h>
#define FIELDS_HASH_AVX2 1
#endif

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/kernels.h"

namespace fields {
namespace cpu {
namespace {

constexpr int kBlock = 64;  // points per block: scratch stays in L1

// Vertex rows and trilinear weights of a block of points at one level (structure of arrays).
struct BlockCorners {
  uint32_t row[8][kBlock];
  float w[8][kBlock];
  float frac[3][kBlock];
};

template <bool Dense>
inline uint32_t combine(uint32_t tx, uint32_t ty, uint32_t tz, uint32_t mask) {
  return Dense ? tx + ty + tz : ((tx ^ ty ^ tz) & mask);
}

// Same arithmetic as fields_math.h (cell_coord, axis_terms, vertex_row, vertex_weight), unrolled per axis and
// per vertex so that the loop over points vectorises.
template <bool Dense>
inline void block_corners(const float* __restrict x, int64_t nb, float res_f, uint32_t side, uint32_t table_size,
                          BlockCorners& bc) {
  const uint32_t s1 = Dense ? side : kPrime1, s2 = Dense ? side * side : kPrime2, mask = table_size - 1u;
  const float top = res_f - 1.0f;
#pragma omp simd
  for (int i = 0; i < nb; ++i) {
    const float px = x[3 * i] * res_f, py = x[3 * i + 1] * res_f, pz = x[3 * i + 2] * res_f;
    // floor(p) clamped to [0, res - 1] as a truncation of the clamped value (equal for p >= 0; vectorises).
    const float bx = static_cast<float>(static_cast<int>(std::min(std::max(px, 0.0f), top)));
    const float by = static_cast<float>(static_cast<int>(std::min(std::max(py, 0.0f), top)));
    const float bz = static_cast<float>(static_cast<int>(std::min(std::max(pz, 0.0f), top)));
    const float fx = px - bx, fy = py - by, fz = pz - bz;
    bc.frac[0][i] = fx;
    bc.frac[1][i] = fy;
    bc.frac[2][i] = fz;
    const uint32_t ix = static_cast<uint32_t>(static_cast<int>(bx)), iy = static_cast<uint32_t>(static_cast<int>(by)),
                   iz = static_cast<uint32_t>(static_cast<int>(bz));
    const uint32_t x0 = ix, x1 = ix + 1u, y0 = iy * s1, y1 = (iy + 1u) * s1, z0 = iz * s2, z1 = (iz + 1u) * s2;
    bc.row[0][i] = combine<Dense>(x0, y0, z0, mask);
    bc.row[1][i] = combine<Dense>(x1, y0, z0, mask);
    bc.row[2][i] = combine<Dense>(x0, y1, z0, mask);
    bc.row[3][i] = combine<Dense>(x1, y1, z0, mask);
    bc.row[4][i] = combine<Dense>(x0, y0, z1, mask);
    bc.row[5][i] = combine<Dense>(x1, y0, z1, mask);
    bc.row[6][i] = combine<Dense>(x0, y1, z1, mask);
    bc.row[7][i] = combine<Dense>(x1, y1, z1, mask);
    const float wx0 = 1.0f - fx, wy0 = 1.0f - fy, wz0 = 1.0f - fz;
    bc.w[0][i] = wx0 * wy0 * wz0;
    bc.w[1][i] = fx * wy0 * wz0;
    bc.w[2][i] = wx0 * fy * wz0;
    bc.w[3][i] = fx * fy * wz0;
    bc.w[4][i] = wx0 * wy0 * fz;
    bc.w[5][i] = fx * wy0 * fz;
    bc.w[6][i] = wx0 * fy * fz;
    bc.w[7][i] = fx * fy * fz;
  }
}

inline void corners(const float* x, int64_t nb, float res_f, bool dense, uint32_t side, uint32_t table_size,
                    BlockCorners& bc) {
  if (dense)
    block_corners<true>(x, nb, res_f, side, table_size, bc);
  else
    block_corners<false>(x, nb, res_f, side, table_size, bc);
}

// corners() of a block, then a prefetch of the table rows they name on a hashed level: computed one block ahead,
// the rows arrive while the previous block is gathered (hash_encode forward 2.8 -> 2.3 ms on a lego batch; the
// same in the backward's scatter made it slower).
inline void corners_ahead(const float* x, int64_t nb, float res_f, bool dense, uint32_t side, uint32_t table_size,
                          const float* tab, int nf, BlockCorners& bc) {
  corners(x, nb, res_f, dense, side, table_size, bc);
  if (dense) return;  // coarse levels are small and stay in cache
  for (int c = 0; c < 8; ++c)
    for (int64_t i = 0; i < nb; ++i) __builtin_prefetch(tab + static_cast<int64_t>(bc.row[c][i]) * nf);
}

// Features of one level for points begin..nb-1 of a block: out[i * out_stride + f] = sum_c w_c * table[row_c, f]
// (begin > 0: the tail block_gather_pairs leaves).
template <int F>
inline void block_gather(const BlockCorners& bc, int64_t nb, const float* __restrict tab, int features,
                         float* __restrict out, int64_t out_stride, int begin = 0) {
  const int nf = F > 0 ? F : features;
  for (int f = 0; f < nf; ++f) {
    float acc[kBlock];
#pragma omp simd
    for (int i = 0; i < kBlock; ++i) acc[i] = 0.0f;
    for (int c = 0; c < 8; ++c) {
#pragma omp simd
      for (int i = begin; i < nb; ++i) acc[i] += bc.w[c][i] * tab[static_cast<int64_t>(bc.row[c][i]) * nf + f];
    }
    for (int i = begin; i < nb; ++i) out[i * out_stride + f] = acc[i];
  }
}

// Table gradient of one level for a block: grad[row_c, f] += w_c * go[i * stride + f], a whole row per corner
// (features innermost: one cache line touched per corner instead of one per corner and feature).
template <int F>
inline void block_scatter(const BlockCorners& bc, int64_t nb, const float* __restrict go, int64_t stride, int features,
                          float* __restrict grad) {
  const int nf = F > 0 ? F : features;
  for (int i = 0; i < nb; ++i)
    for (int c = 0; c < 8; ++c) {
      float* row = grad + static_cast<int64_t>(bc.row[c][i]) * nf;
      const float w = bc.w[c][i];
      for (int f = 0; f < nf; ++f) row[f] += w * go[i * stride + f];
    }
}

inline void level_params(const HashGrid& g, int l, float& res_f, bool& dense, uint32_t& side) {
  res_f = static_cast<float>(g.res[l]);
  dense = level_is_dense(g.res[l], g.table_size);
  side = static_cast<uint32_t>(g.res[l]) + 1u;
}

#ifdef FIELDS_HASH_AVX512
constexpr int kMaxLevels16 = 32;  // levels of the AVX-512 forward's per-block scratch

// The forward for two features a level on AVX-512: 16 points at a time through every level, each corner's feature
// pair fetched as one 64-bit gather (half the gathered elements of one 32-bit gather per feature) and split into
// the two features with a permute. The arithmetic is block_corners' and block_gather's, operation for operation
// (products and sums rounded separately, corners summed in the same order), so the output is bit-identical.
// office_table, one 960x540 view's 13.3 M samples, 1 thread: 1.32 -> 0.68 s.
inline void block16_two_features(const float* __restrict xin, int nb, const HashGrid& g, float* __restrict out) {
  alignas(64) float px_[16] = {0}, py_[16] = {0}, pz_[16] = {0};
  for (int i = 0; i < nb; ++i) {
    px_[i] = xin[3 * i];
    py_[i] = xin[3 * i + 1];
    pz_[i] = xin[3 * i + 2];
  }
  const __m512 X = _mm512_load_ps(px_), Y = _mm512_load_ps(py_), Z = _mm512_load_ps(pz_);
  alignas(64) float feats[2 * kMaxLevels16][16];
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  const __m512i ione = _mm512_set1_epi32(1);
  for (int l = 0; l < g.levels; ++l) {
    float res_f;
    bool dense;
    uint32_t side;
    level_params(g, l, res_f, dense, side);
    const __m512i s1 = _mm512_set1_epi32(static_cast<int>(dense ? side : kPrime1));
    const __m512i s2 = _mm512_set1_epi32(static_cast<int>(dense ? side * side : kPrime2));
    const __m512i mask = _mm512_set1_epi32(static_cast<int>(g.table_size - 1));
    const __m512 R = _mm512_set1_ps(res_f), top = _mm512_set1_ps(res_f - 1.0f);
    const __m512 px = _mm512_mul_ps(X, R), py = _mm512_mul_ps(Y, R), pz = _mm512_mul_ps(Z, R);
    const __m512i ix = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(px, zero), top));
    const __m512i iy = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(py, zero), top));
    const __m512i iz = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(pz, zero), top));
    const __m512 fx = _mm512_sub_ps(px, _mm512_cvtepi32_ps(ix)), fy = _mm512_sub_ps(py, _mm512_cvtepi32_ps(iy)),
                 fz = _mm512_sub_ps(pz, _mm512_cvtepi32_ps(iz));
    const __m512i xs[2] = {ix, _mm512_add_epi32(ix, ione)};
    const __m512i ys[2] = {_mm512_mullo_epi32(iy, s1), _mm512_mullo_epi32(_mm512_add_epi32(iy, ione), s1)};
    const __m512i zs[2] = {_mm512_mullo_epi32(iz, s2), _mm512_mullo_epi32(_mm512_add_epi32(iz, ione), s2)};
    const __m512 wx[2] = {_mm512_sub_ps(one, fx), fx}, wy[2] = {_mm512_sub_ps(one, fy), fy},
                 wz[2] = {_mm512_sub_ps(one, fz), fz};
    const double* tab = reinterpret_cast<const double*>(g.table + static_cast<int64_t>(l) * g.table_size * 2);
    __m512 a0 = zero, a1 = zero;
    for (int c = 0; c < 8; ++c) {
      const int cx = c & 1, cy = (c >> 1) & 1, cz = c >> 2;
      const __m512i row = dense ? _mm512_add_epi32(_mm512_add_epi32(xs[cx], ys[cy]), zs[cz])
                                : _mm512_and_si512(_mm512_xor_si512(_mm512_xor_si512(xs[cx], ys[cy]), zs[cz]), mask);
      const __m512 w = _mm512_mul_ps(_mm512_mul_ps(wx[cx], wy[cy]), wz[cz]);
      const __m512 lo = _mm512_castpd_ps(_mm512_i32gather_pd(_mm512_castsi512_si256(row), tab, 8));
      const __m512 hi = _mm512_castpd_ps(_mm512_i32gather_pd(_mm512_extracti32x8_epi32(row, 1), tab, 8));
      a0 = _mm512_add_ps(a0, _mm512_mul_ps(w, _mm512_permutex2var_ps(lo, even, hi)));
      a1 = _mm512_add_ps(a1, _mm512_mul_ps(w, _mm512_permutex2var_ps(lo, odd, hi)));
    }
    _mm512_store_ps(feats[2 * l], a0);
    _mm512_store_ps(feats[2 * l + 1], a1);
  }
  const int stride = 2 * g.levels;
  for (int i = 0; i < nb; ++i)
    for (int j = 0; j < stride; ++j) out[i * stride + j] = feats[j][i];
}
#endif

#ifdef FIELDS_HASH_AVX2
// block_gather<2> on AVX2: 8 points at a time, each corner's feature pair one 64-bit element of two 4-wide gathers
// (half the gathered elements of one 32-bit gather per feature), split into the two features with in-lane
// shuffles and a cross-lane permute. The arithmetic is block_gather's, operation for operation, so the output is
// bit-identical. office_table (Zen 3, 1 thread): ~1.4x faster on a rendered view's samples.
inline void block_gather_pairs(const BlockCorners& bc, int64_t nb, const float* __restrict tab, float* __restrict out,
                               int64_t out_stride) {
  const double* pairs = reinterpret_cast<const double*>(tab);
  int i = 0;
  for (; i + 8 <= nb; i += 8) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int c = 0; c < 8; ++c) {
      const __m256i row = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bc.row[c] + i));
      const __m256 w = _mm256_loadu_ps(bc.w[c] + i);
      // Points i..i+3 and i+4..i+7: [a0 b0 a1 b1 | a2 b2 a3 b3] and [a4 b4 a5 b5 | a6 b6 a7 b7].
      const __m256 lo = _mm256_castpd_ps(_mm256_i32gather_pd(pairs, _mm256_castsi256_si128(row), 8));
      const __m256 hi = _mm256_castpd_ps(_mm256_i32gather_pd(pairs, _mm256_extracti128_si256(row, 1), 8));
      // In-lane shuffles give [a0 a1 a4 a5 | a2 a3 a6 a7]; the 64-bit permute (0, 2, 1, 3) puts them in order.
      const __m256 fa = _mm256_castpd_ps(_mm256_permute4x64_pd(
          _mm256_castps_pd(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0))), _MM_SHUFFLE(3, 1, 2, 0)));
      const __m256 fb = _mm256_castpd_ps(_mm256_permute4x64_pd(
          _mm256_castps_pd(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1))), _MM_SHUFFLE(3, 1, 2, 0)));
      a0 = _mm256_add_ps(a0, _mm256_mul_ps(w, fa));
      a1 = _mm256_add_ps(a1, _mm256_mul_ps(w, fb));
    }
    alignas(32) float f0[8], f1[8];
    _mm256_store_ps(f0, a0);
    _mm256_store_ps(f1, a1);
    for (int k = 0; k < 8; ++k) {
      out[(i + k) * out_stride] = f0[k];
      out[(i + k) * out_stride + 1] = f1[k];
    }
  }
  block_gather<2>(bc, nb, tab, 2, out, out_stride, i);  // the tail (nb % 8 points)
}
#endif

}  // namespace

void hash_encode_forward(const float* x, int64_t n, HashGrid g, float* out) {
#ifdef FIELDS_HASH_AVX512
  // Row indices are int32 gather offsets (in 8-byte feature pairs): tables of up to 2^31 rows.
  if (g.features == 2 && g.levels <= kMaxLevels16 && g.table_size <= (int64_t{1} << 31)) {
    const int64_t n16 = (n + 15) / 16, stride = 2 * static_cast<int64_t>(g.levels);
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < n16; ++b)
      block16_two_features(x + 3 * b * 16, static_cast<int>(std::min<int64_t>(16, n - b * 16)), g,
                           out + b * 16 * stride);
    return;
  }
#endif
  const int64_t n_blocks = (n + kBlock - 1) / kBlock, stride = static_cast<int64_t>(g.levels) * g.features;
  const uint32_t table_size = static_cast<uint32_t>(g.table_size);
  // Level by level, each thread a contiguous run of blocks (both cores on every level: coarse levels are dense
  // and cheap, fine ones hashed and cache-missing), corners computed one block ahead.
#pragma omp parallel
  {
    BlockCorners bc[2];
    const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t b0 = n_blocks * tid / nt, b1 = n_blocks * (tid + 1) / nt;
    for (int l = 0; l < g.levels; ++l) {
      float res_f;
      bool dense;
      uint32_t side;
      level_params(g, l, res_f, dense, side);
      const float* tab = g.table + static_cast<int64_t>(l) * g.table_size * g.features;
      auto ahead = [&](int64_t a) {
        corners_ahead(x + 3 * a * kBlock, std::min<int64_t>(kBlock, n - a * kBlock), res_f, dense, side, table_size,
                      tab, g.features, bc[a & 1]);
      };
      if (b0 < b1) ahead(b0);
      for (int64_t b = b0; b < b1; ++b) {
        if (b + 1 < b1) ahead(b + 1);
        const int64_t i0 = b * kBlock, nb = std::min<int64_t>(kBlock, n - i0);
        float* o = out + i0 * stride + static_cast<int64_t>(l) * g.features;
        if (g.features == 2)
#ifdef FIELDS_HASH_AVX2
          block_gather_pairs(bc[b & 1], nb, tab, o, stride);
#else
          block_gather<2>(bc[b & 1], nb, tab, 2, o, stride);
#endif
        else if (g.features == 4)
          block_gather<4>(bc[b & 1], nb, tab, 4, o, stride);
        else
          block_gather<0>(bc[b & 1], nb, tab, g.features, o, stride);
      }
    }
  }
}

void hash_encode_backward(const float* grad_out, const float* x, int64_t n, HashGrid g, float* grad_table,
                          float* grad_x) {
  const int64_t n_blocks = (n + kBlock - 1) / kBlock, stride = static_cast<int64_t>(g.levels) * g.features;
  const int nf = g.features;
  // Table gradient: each thread owns whole levels, so the scatter-add below is race-free without atomics. The
  // owner zeroes its level just before scattering into it (in parallel and while it is in cache; a separate
  // zero fill of the whole table was 1.4 ms of a lego step).
#pragma omp parallel
  {
    BlockCorners bc;
#pragma omp for schedule(dynamic, 1)
    for (int l = 0; l < g.levels; ++l) {
      float res_f;
      bool dense;
      uint32_t side;
      level_params(g, l, res_f, dense, side);
      float* gt = grad_table + static_cast<int64_t>(l) * g.table_size * nf;
      std::fill(gt, gt + g.table_size * nf, 0.0f);
      for (int64_t b = 0; b < n_blocks; ++b) {
        const int64_t i0 = b * kBlock, nb = std::min<int64_t>(kBlock, n - i0);
        corners(x + 3 * i0, nb, res_f, dense, side, static_cast<uint32_t>(g.table_size), bc);
        const float* go = grad_out + i0 * stride + static_cast<int64_t>(l) * nf;
        if (nf == 2)
          block_scatter<2>(bc, nb, go, stride, 2, gt);
        else if (nf == 4)
          block_scatter<4>(bc, nb, go, stride, 4, gt);
        else
          block_scatter<0>(bc, nb, go, stride, nf, gt);
      }
    }
  }
  if (grad_x == nullptr) return;
  // Input gradient: per point, sum over levels of res * d(weights)/d(frac) . features.
#pragma omp parallel
  {
    BlockCorners bc;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t i0 = b * kBlock, nb = std::min<int64_t>(kBlock, n - i0);
      float gx[3][kBlock] = {};
      for (int l = 0; l < g.levels; ++l) {
        float res_f;
        bool dense;
        uint32_t side;
        level_params(g, l, res_f, dense, side);
        corners(x + 3 * i0, nb, res_f, dense, side, static_cast<uint32_t>(g.table_size), bc);
        const float* tab = g.table + static_cast<int64_t>(l) * g.table_size * nf;
        const float* go = grad_out + i0 * stride + static_cast<int64_t>(l) * nf;
        for (int i = 0; i < nb; ++i) {
          const float fr[3] = {bc.frac[0][i], bc.frac[1][i], bc.frac[2][i]};
          for (int c = 0; c < 8; ++c) {
            float dot = 0.0f;
            for (int f = 0; f < nf; ++f) dot += go[i * stride + f] * tab[static_cast<int64_t>(bc.row[c][i]) * nf + f];
            for (int a = 0; a < 3; ++a) gx[a][i] += res_f * vertex_weight_dfrac(fr, c, a) * dot;
          }
        }
      }
      for (int i = 0; i < nb; ++i)
        for (int a = 0; a < 3; ++a) grad_x[3 * (i0 + i) + a] = gx[a][i];
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Marching in one pass: every ray is marched once, its samples appended to its chunk (a run of consecutive rays),
// and the chunks are then copied in order into the caller's arrays. (The CUDA build marches twice instead, count
// then fill, because threads there cannot grow buffers; on a CPU the second pass would double the cost.)

namespace {
constexpr int64_t kRaysPerChunk = 32;
constexpr int64_t kChunksPerCopyTask = 16;  // chunks per thread of the merge at least

// Samples of a run of consecutive rays, in ray order.
struct MarchedChunk {
  std::vector<int64_t> ray;
  std::vector<float> t_start, t_end;
};

struct ChunkEmit {
  int64_t ray;
  MarchedChunk* chunk;
  void operator()(int64_t, float ts, float te) {
    chunk->ray.push_back(ray);
    chunk->t_start.push_back(ts);
    chunk->t_end.push_back(te);
  }
};

// Coarse occupancy (MarchParams::coarse): which blocks of kCoarseBlock^3 cells hold an occupied one (a lego ray
// crosses ~100 empty cells of a 64^3 grid; jumping them a block at a time halved marching). Empty where the grid's
// sides are not multiples of kCoarseBlock.
std::vector<uint8_t> coarse_occupancy(const uint8_t* binary, MarchParams& p) {
  if (!coarse_shape(p)) return {};
  const int cx = p.coarse_res[0], cy = p.coarse_res[1], cz = p.coarse_res[2];
  std::vector<uint8_t> coarse(static_cast<size_t>(cx) * cy * cz);
#pragma omp parallel for schedule(static)
  for (int bx = 0; bx < cx; ++bx)
    for (int by = 0; by < cy; ++by)
      for (int bz = 0; bz < cz; ++bz)
        coarse[(static_cast<size_t>(bx) * cy + by) * cz + bz] = coarse_block(binary, p, bx, by, bz);
  return coarse;
}
}  // namespace

void march_rays(const float* origins, const float* dirs, const float* jitter, int64_t n_rays, const uint8_t* binary,
                MarchParams p, const AllocateSamples& allocate) {
  const std::vector<uint8_t> coarse = coarse_occupancy(binary, p);
  p.coarse = coarse.empty() ? nullptr : coarse.data();
  const int64_t n_chunks = (n_rays + kRaysPerChunk - 1) / kRaysPerChunk;
  std::vector<MarchedChunk> chunks(n_chunks);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t r1 = std::min(n_rays, (ch + 1) * kRaysPerChunk);
    for (int64_t r = ch * kRaysPerChunk; r < r1; ++r) {
      ChunkEmit emit{r, &chunks[ch]};
      march_ray(origins + 3 * r, dirs + 3 * r, jitter ? jitter[r] : 0.0f, binary, p, emit);
    }
  }
  std::vector<int64_t> start(n_chunks + 1, 0);
  for (int64_t c = 0; c < n_chunks; ++c) start[c + 1] = start[c] + static_cast<int64_t>(chunks[c].ray.size());
  const PackedSamples out = allocate(start.back());
  const int64_t copy_tasks = (n_chunks + kChunksPerCopyTask - 1) / kChunksPerCopyTask;
  const int copy_threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), copy_tasks)));
#pragma omp parallel for schedule(static) num_threads(copy_threads) if (copy_threads > 1)
  for (int64_t c = 0; c < n_chunks; ++c) {
    const MarchedChunk& ch = chunks[c];
    std::copy(ch.ray.begin(), ch.ray.end(), out.ray_indices + start[c]);
    std::copy(ch.t_start.begin(), ch.t_start.end(), out.t_starts + start[c]);
    std::copy(ch.t_end.begin(), ch.t_end.end(), out.t_ends + start[c]);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Compositing, one ray per iteration (rays are independent; samples of a ray are contiguous).

void transmittance(const float* tau, const int64_t* offsets, int64_t n_rays, float* out) {
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t r = 0; r < n_rays; ++r) transmittance_ray(tau, offsets[r], offsets[r + 1], out);
}

void composite_forward(const float* sigmas, const float* rgbs, const float* t_starts, const float* t_ends,
                       const int64_t* offsets, int64_t n_rays, float* weights, float* rgb, float* opacity,
                       float* depth) {
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t r = 0; r < n_rays; ++r)
    composite_ray_forward(sigmas, rgbs, t_starts, t_ends, offsets[r], offsets[r + 1], weights, rgb + 3 * r,
                          opacity + r, depth + r);
}

void composite_round(const float* sigmas, const float* t_starts, const float* t_ends, const int64_t* offsets,
                     const int64_t* rays, int64_t n_live, RoundPruning prune, double* optical, float* opacity,
                     float* depth, float* weights, uint8_t* keep) {
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n_live; ++j) {
    const int64_t r = rays[j];
    composite_round_ray(sigmas, t_starts, t_ends, offsets[j], offsets[j + 1], prune, optical + r, opacity + r,
                        depth + r, weights, keep);
  }
}

void composite_backward(const float* grad_weights, const float* grad_rgb, const float* grad_opacity,
                        const float* grad_depth, const float* sigmas, const float* rgbs, const float* t_starts,
                        const float* t_ends, const int64_t* offsets, int64_t n_rays, float* grad_sigmas,
                        float* grad_rgbs) {
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t r = 0; r < n_rays; ++r)
    composite_ray_backward(grad_weights, grad_rgb + 3 * r, grad_opacity[r], grad_depth[r], sigmas, rgbs,
                           t_starts, t_ends, offsets[r], offsets[r + 1], grad_sigmas, grad_rgbs);
}

void round_samples(const int64_t* ray_indices, const float* t_starts, const float* t_ends, const float* origins,
                   const float* dirs, const int64_t* first, const int64_t* offsets, int64_t n_live, int64_t* idx,
                   int64_t* ray, float* ts, float* te, float* x, float* d) {
#pragma omp parallel for schedule(static) if (n_live > 4096)
  for (int64_t j = 0; j < n_live; ++j)
    round_samples_ray(ray_indices, t_starts, t_ends, origins, dirs, first[j], offsets[j], offsets[j + 1], idx, ray,
                      ts, te, x, d);
}

// ---------------------------------------------------------------------------------------------------------
// Scene contraction of a contracted field's inputs: one pass instead of torch's ~12 element-wise ones (a twentieth
// of an office_table frame), in contract_point's float32 operations, which are the reference's.

void contract_unit(const float* x, int64_t n, const float lo[3], const float hi[3], float* out, float* scale) {
#pragma omp parallel for schedule(static) if (n > 16384)
  for (int64_t i = 0; i < n; ++i) {
    float u[3];
    const float m = contract_point(x + 3 * i, lo, hi, u), mc = m > 1.0f ? m : 1.0f;
    for (int a = 0; a < 3; ++a) out[3 * i + a] = u[a] * 0.25f + 0.5f;
    scale[i] = 1.0f / (mc * mc);
  }
}

}  // namespace cpu
}  // namespace fields
