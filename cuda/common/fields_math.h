// Shared math of the native kernels: inline functions compiled for the host (g++, the CPU build) and for the
// device (nvcc, the CUDA build). Every function mirrors one step of the plain-PyTorch reference in renderers/
// and fields/backends/encodings.py operation for operation in the same precision, so that the two builds and the
// reference agree (marching emits bit-identical samples; see renderers/marching.py). Build with FMA
// contraction off (-ffp-contract=off, nvcc --fmad=false): a fused multiply-add rounds differently from the
// reference's separate multiply and add.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FIELDS_HD __host__ __device__ __forceinline__
#define FIELDS_SIMD
#else
#define FIELDS_HD inline
#define FIELDS_SIMD _Pragma("omp simd")  // vectorise the next loop (g++ -fopenmp); nothing for nvcc
#endif

namespace fields {

// ---------------------------------------------------------------------------------------------------------
// Hash-grid encoding (Instant-NGP): vertex indices and trilinear weights of one point at one level.

constexpr uint32_t kPrime1 = 2654435761u;
constexpr uint32_t kPrime2 = 805459861u;

// Lower cell corner and fractional position along one axis; x == 1 stays in the last cell.
FIELDS_HD void cell_coord(float x, float res, int res_i, int& base, float& frac) {
  float pos = x * res;
  float b = floorf(pos);
  if (b > res - 1.0f) b = res - 1.0f;
  if (b < 0.0f) b = 0.0f;  // outside [0, 1] the reference is undefined; stay in the table
  frac = pos - b;
  base = static_cast<int>(b);
  (void)res_i;
}

// Per-axis index terms of the lower (lo) and upper (hi) vertex; combined by + (dense) or ^ (hashed).
struct AxisTerms {
  uint32_t lo[3], hi[3];
};

FIELDS_HD AxisTerms axis_terms(const int base[3], bool dense, uint32_t side) {
  AxisTerms t;
  const uint32_t stride[3] = {1u, dense ? side : kPrime1, dense ? side * side : kPrime2};
  for (int a = 0; a < 3; ++a) {
    t.lo[a] = static_cast<uint32_t>(base[a]) * stride[a];
    t.hi[a] = static_cast<uint32_t>(base[a] + 1) * stride[a];
  }
  return t;
}

// Row of vertex c (bit 0: x upper, bit 1: y upper, bit 2: z upper) inside its level's table.
FIELDS_HD uint32_t vertex_row(const AxisTerms& t, int c, bool dense, uint32_t table_size) {
  uint32_t tx = (c & 1) ? t.hi[0] : t.lo[0];
  uint32_t ty = (c & 2) ? t.hi[1] : t.lo[1];
  uint32_t tz = (c & 4) ? t.hi[2] : t.lo[2];
  return dense ? tx + ty + tz : ((tx ^ ty ^ tz) & (table_size - 1u));
}

// Trilinear weight of vertex c from the fractional position, in the reference's order (wx * wy) * wz.
FIELDS_HD float vertex_weight(const float frac[3], int c) {
  float wx = (c & 1) ? frac[0] : 1.0f - frac[0];
  float wy = (c & 2) ? frac[1] : 1.0f - frac[1];
  float wz = (c & 4) ? frac[2] : 1.0f - frac[2];
  return wx * wy * wz;
}

// d(weight of vertex c) / d(frac[axis]).
FIELDS_HD float vertex_weight_dfrac(const float frac[3], int c, int axis) {
  float w[3], dw[3];
  for (int a = 0; a < 3; ++a) {
    bool up = (c >> a) & 1;
    w[a] = up ? frac[a] : 1.0f - frac[a];
    dw[a] = up ? 1.0f : -1.0f;
  }
  w[axis] = dw[axis];
  return w[0] * w[1] * w[2];
}

FIELDS_HD bool level_is_dense(int res, int64_t table_size) {
  int64_t side = static_cast<int64_t>(res) + 1;
  return side * side * side <= table_size;
}

// ---------------------------------------------------------------------------------------------------------
// Ray-box intersection (slab method), exactly as renderers/marching.py:ray_aabb in float32.

FIELDS_HD void ray_aabb(const float o[3], const float d[3], const float lo[3], const float hi[3], float& t_near,
                        float& t_far) {
  t_near = -INFINITY;
  t_far = INFINITY;
  for (int a = 0; a < 3; ++a) {
    float dd = fabsf(d[a]) < 1e-12f ? 1e-12f : d[a];
    float inv = 1.0f / dd;
    float t0 = (lo[a] - o[a]) * inv;
    float t1 = (hi[a] - o[a]) * inv;
    t_near = fmaxf(t_near, fminf(t0, t1));
    t_far = fminf(t_far, fmaxf(t0, t1));
  }
}

// ---------------------------------------------------------------------------------------------------------
// The per-ray sample lattice (renderers/marching.py:lattice): constant steps, then geometric growth
// (cone stepping), then constant steps of max_step. cone_angle <= 0 is computed in float32 like the
// reference; the cone branch in float64, rounded to float32 at the end (also like the reference).

struct Lattice {
  float t0;
  float step;  // step_size rounded to float32, as torch does with a Python scalar
  double cone, growth, step_d, max_step, n1, n2, t1, t2;

  FIELDS_HD Lattice(float t0_, double step_size, double cone_angle, double max_step_) {
    t0 = t0_;
    step = static_cast<float>(step_size);
    step_d = step_size;
    cone = cone_angle;
    max_step = max_step_;
    growth = n1 = n2 = t1 = t2 = 0.0;
    if (cone > 0.0) {
      growth = log1p(cone);
      double t0d = t0;
      n1 = fmax(ceil((step_d / cone - t0d) / step_d), 0.0);
      t1 = t0d + n1 * step_d;
      n2 = fmax(ceil(log((max_step / cone) / t1) / growth), 0.0);
      t2 = t1 * exp(n2 * growth);
    }
  }

  // Position of lattice point k.
  FIELDS_HD float at(int64_t k) const {
    if (cone <= 0.0) return t0 + static_cast<float>(k) * step;
    double kd = static_cast<double>(k);
    double t;
    if (kd <= n1) {
      t = static_cast<double>(t0) + kd * step_d;
    } else if (kd <= n1 + n2) {
      t = t1 * exp((kd - n1) * growth);
    } else {
      t = t2 + (kd - n1 - n2) * max_step;
    }
    return static_cast<float>(t);
  }

  // A lattice index from which to continue marching once every midpoint before distance t is known to lie in
  // an empty cell: no later than the first point whose midpoint reaches t (with a margin for rounding).
  FIELDS_HD double resume_index(double t) const {
    if (cone <= 0.0) return ceil((t - static_cast<double>(t0)) / static_cast<double>(step) - 0.5 - 0.01);
    double k;  // real-valued index of the lattice point at t; the midpoint of point floor(k) - 1 is before t
    if (t <= t1) {
      k = (t - static_cast<double>(t0)) / step_d;
    } else if (t <= t2) {
      k = n1 + log(t / t1) / growth;
    } else {
      k = n1 + n2 + (t - t2) / max_step;
    }
    return floor(k - 0.01) - 1.0;
  }
};

// Occupancy-grid cell of a point, exactly as the reference computes it in float32; -1 outside the grid.
FIELDS_HD int64_t grid_cell(const float x[3], const float lo[3], const float hi[3], const int res[3], int cell[3]) {
  for (int a = 0; a < 3; ++a) {
    float u = (x[a] - lo[a]) / (hi[a] - lo[a]);
    float c = floorf(u * static_cast<float>(res[a]));
    if (!(c >= 0.0f && c < static_cast<float>(res[a]))) return -1;
    cell[a] = static_cast<int>(c);
  }
  return (static_cast<int64_t>(cell[0]) * res[1] + cell[1]) * res[2] + cell[2];
}

// Distance at which the ray leaves cell `cell` shrunk on every side by more than the float32 rounding error of
// the reference's cell computation, or -inf when the point at distance t is not inside that shrunk cell (then
// no jump is safe). Lattice points strictly before that distance are certainly classified into `cell`.
FIELDS_HD double shrunk_cell_exit(const float o[3], const float d[3], float t, const float lo[3], const float hi[3],
                                  const int res[3], const int cell[3]) {
  double t_exit = INFINITY;
  for (int a = 0; a < 3; ++a) {
    double extent = static_cast<double>(hi[a]) - lo[a], size = extent / res[a];
    // |x| <= |o| + |t d| <= 2|o| + |box|: a generous bound of the reference's rounding error, in cells.
    const double abs_lo = fabs(static_cast<double>(lo[a])), abs_hi = fabs(static_cast<double>(hi[a]));
    const double box = abs_lo > abs_hi ? abs_lo : abs_hi;
    double margin = 1e-4 + 8.0 * 1.2e-7 * res[a] * (2.0 * fabs(static_cast<double>(o[a])) + 3.0 * box) / extent;
    double x = static_cast<double>(o[a]) + static_cast<double>(t) * d[a];
    double c_lo = lo[a] + (cell[a] + margin) * size, c_hi = lo[a] + (cell[a] + 1 - margin) * size;
    if (!(x >= c_lo && x <= c_hi)) return -INFINITY;
    const double t_a = d[a] > 0.0f ? (c_hi - o[a]) / d[a] : d[a] < 0.0f ? (c_lo - o[a]) / d[a] : INFINITY;
    t_exit = t_a < t_exit ? t_a : t_exit;
  }
  return t_exit;
}

// Cells per side of a block of the coarse occupancy (MarchParams::coarse).
constexpr int kCoarseBlock = 4;

// Marching parameters shared by every ray of a call.
struct MarchParams {
  float lo[3], hi[3];
  int res[3];
  double step, near, far, cone, max_step;
  // Scene contraction (renderers/contraction.py): the grid covers the contracted cube [-2, 2]^3 of the box lo..hi
  // (the inner region [-1, 1]^3); rays run from `near`, constant steps to the inner box's exit, then `n_outer`
  // steps evenly spaced in disparity to infinity. 0 / 0 without contraction.
  int contract;
  int64_t n_outer;
  // Whether each block of kCoarseBlock^3 cells holds an occupied cell ([res / kCoarseBlock] per axis, same memory
  // as the grid), or null when a side is not a multiple of kCoarseBlock: empty space is jumped block by block.
  // Each build's march_rays derives it from the grid (coarse_shape, coarse_block).
  const uint8_t* coarse;
  int coarse_res[3];
};

// Sets p.coarse_res and returns true where every side of the grid is a multiple of kCoarseBlock (a coarse
// occupancy exists), else returns false.
FIELDS_HD bool coarse_shape(MarchParams& p) {
  for (int a = 0; a < 3; ++a)
    if (p.res[a] % kCoarseBlock != 0) return false;
  for (int a = 0; a < 3; ++a) p.coarse_res[a] = p.res[a] / kCoarseBlock;
  return true;
}

// Whether coarse block (bx, by, bz) holds an occupied cell of the grid `binary` ([res], z fastest).
FIELDS_HD uint8_t coarse_block(const uint8_t* binary, const MarchParams& p, int bx, int by, int bz) {
  uint8_t any = 0;
  for (int i = 0; i < kCoarseBlock; ++i)
    for (int j = 0; j < kCoarseBlock; ++j) {
      const uint8_t* row = binary + (static_cast<int64_t>(bx * kCoarseBlock + i) * p.res[1] + by * kCoarseBlock + j) *
                                        p.res[2] + static_cast<int64_t>(bz) * kCoarseBlock;
      for (int k = 0; k < kCoarseBlock; ++k) any |= row[k];
    }
  return any;
}

// Distance at which the ray may resume after finding the point at distance t in the empty cell `cell`: the exit of
// the enclosing coarse block when that block is empty too, else of the cell (-inf when no jump is safe).
FIELDS_HD double empty_exit(const float o[3], const float d[3], float t, const MarchParams& p, const int cell[3]) {
  if (p.coarse) {
    const int block[3] = {cell[0] / kCoarseBlock, cell[1] / kCoarseBlock, cell[2] / kCoarseBlock};
    if (!p.coarse[(static_cast<int64_t>(block[0]) * p.coarse_res[1] + block[1]) * p.coarse_res[2] + block[2]]) {
      const double t_block = shrunk_cell_exit(o, d, t, p.lo, p.hi, p.coarse_res, block);
      if (t_block > t) return t_block;
    }
  }
  return shrunk_cell_exit(o, d, t, p.lo, p.hi, p.res, cell);
}

// ---------------------------------------------------------------------------------------------------------
// Scene contraction (renderers/contraction.py: contract, contracted_cell), in the reference's float32 operations.

// Point x in the box's normalised frame (the box lo..hi -> [-1, 1]^3), contracted into [-2, 2]^3 (L-inf); returns
// the normalised point's L-inf norm (contraction's density_scale is 1 / max(it, 1)^2).
FIELDS_HD float contract_point(const float x[3], const float lo[3], const float hi[3], float u[3]) {
  float m = 0.0f;
  for (int a = 0; a < 3; ++a) {
    const float c = (lo[a] + hi[a]) * 0.5f, h = (hi[a] - lo[a]) * 0.5f;
    u[a] = (x[a] - c) / h;
    m = fabsf(u[a]) > m ? fabsf(u[a]) : m;  // fmaxf, NaN included, as a compare (g++ calls libm for fmaxf)
  }
  if (m > 1.0f) {
    const float s = (2.0f - 1.0f / m) / m;
    for (int a = 0; a < 3; ++a) u[a] = u[a] * s;
  }
  return m;
}

// Cell of the grid over the contracted cube [-2, 2]^3 holding world point x (clamped: every point has one);
// `inner` says whether x lies in the inner region (where cells are boxes of the world).
FIELDS_HD int64_t contracted_cell(const float x[3], const float lo[3], const float hi[3], const int res[3],
                                  int cell[3], bool& inner) {
  float u[3];
  contract_point(x, lo, hi, u);
  inner = true;
  for (int a = 0; a < 3; ++a) {
    inner = inner && fabsf(u[a]) <= 1.0f;
    float c = floorf((u[a] + 2.0f) * 0.25f * static_cast<float>(res[a]));
    c = c > 0.0f ? c : 0.0f;  // fminf(fmaxf(c, 0), res - 1), NaN included, as compares (no libm calls)
    c = c < static_cast<float>(res[a] - 1) ? c : static_cast<float>(res[a] - 1);
    cell[a] = static_cast<int>(c);
  }
  return (static_cast<int64_t>(cell[0]) * res[1] + cell[1]) * res[2] + cell[2];
}

// Whether cell (or coarse block, `res` = the coarse resolution) lies wholly inside the inner quarter..three quarters
// of its grid, where contraction is the identity and the cell is a box of the world.
FIELDS_HD bool cell_is_inner(const int cell[3], const int res[3]) {
  for (int a = 0; a < 3; ++a)
    if (res[a] % 4 != 0 || cell[a] < res[a] / 4 || cell[a] >= 3 * (res[a] / 4)) return false;
  return true;
}

// Lattice point k of a contracted ray (march_ray_contracted): t0 + k step up to k = n1, then b N / (N - j) for
// j = k - n1 (N = n_outer), in the reference's precision.
FIELDS_HD float contracted_lattice_at(int64_t k, float t0, float step, int64_t n1, float b, int64_t n_outer) {
  if (k <= n1) return t0 + static_cast<float>(k) * step;
  const double j = static_cast<double>(k - n1);
  return static_cast<float>(static_cast<double>(b) * static_cast<double>(n_outer) / (static_cast<double>(n_outer) - j));
}

// contracted_cell's index along one axis of contracted coordinate v, branch-free.
FIELDS_HD int32_t outer_cell_axis(float v, float res) {
  float g = floorf((v + 2.0f) * 0.25f * res);
  g = g < 0.0f ? 0.0f : g;
  g = g > res - 1.0f ? res - 1.0f : g;
  return static_cast<int32_t>(g);
}

// Outer lattice points classified together (march_ray_contracted): a multiple of the widest vector.
constexpr int kOuterBlock = 32;

// March one ray through a contracted grid (march_ray with p.contract): lattice points t0 + k step up to the first at
// or past the inner box's exit (n1 of them, ending at t1), then b N / (N - j) for j = 1..N-1 (b = max(t1, step),
// N = n_outer): evenly spaced in disparity, the last one before infinity. Empty inner cells and blocks are jumped
// as without contraction (they are boxes there); outer points are evaluated one by one (at most N).
template <class Emit>
FIELDS_HD int64_t march_ray_contracted(const float o[3], const float d[3], float jitter, const uint8_t* binary,
                                       const MarchParams& p, Emit& emit) {
  const float step = static_cast<float>(p.step);
  const float t0 = static_cast<float>(p.near) + jitter * step;
  const float far = static_cast<float>(p.far);
  float t_in, t_out;
  ray_aabb(o, d, p.lo, p.hi, t_in, t_out);
  float n1f = 0.0f;
  if (t_out > t0 && t_out > t_in) n1f = ceilf((t_out - t0) / step);
  const int64_t n1 = static_cast<int64_t>(n1f), n_outer = p.n_outer;
  const float t1 = t0 + n1f * step;
  const float b = fmaxf(t1, step);
  const int64_t count = n1 + n_outer - 1;  // the last lattice point (k = count) is the one before infinity
  // The grid over the contracted cube [-2, 2]^3 of the box is, in the inner region, a grid over the box grown to
  // twice its size about its centre: the frame in which inner cells are boxes of the world (for jumps).
  float wlo[3], whi[3];
  for (int a = 0; a < 3; ++a) {
    const float c = (p.lo[a] + p.hi[a]) * 0.5f, h = (p.hi[a] - p.lo[a]) * 0.5f;
    wlo[a] = c - 2.0f * h;
    whi[a] = c + 2.0f * h;
  }
  auto at = [&](int64_t k) -> float { return contracted_lattice_at(k, t0, step, n1, b, n_outer); };
  int64_t n = 0, k = 0;
  while (k < n1) {  // the inner lattice, empty cells and blocks jumped
    const float ts = at(k), te = at(k + 1);
    const float mid = 0.5f * (ts + te);
    if (!(mid < far)) return n;  // lattice points only grow
    const float x[3] = {o[0] + mid * d[0], o[1] + mid * d[1], o[2] + mid * d[2]};
    int cell[3];
    bool inner;
    const int64_t c = contracted_cell(x, p.lo, p.hi, p.res, cell, inner);
    if (binary[c]) {
      emit(k, ts, te);
      ++n;
      ++k;
      continue;
    }
    if (inner && cell_is_inner(cell, p.res)) {
      double t_exit = -INFINITY;
      if (p.coarse) {
        const int block[3] = {cell[0] / kCoarseBlock, cell[1] / kCoarseBlock, cell[2] / kCoarseBlock};
        if (cell_is_inner(block, p.coarse_res) &&
            !p.coarse[(static_cast<int64_t>(block[0]) * p.coarse_res[1] + block[1]) * p.coarse_res[2] + block[2]])
          t_exit = shrunk_cell_exit(o, d, mid, wlo, whi, p.coarse_res, block);
      }
      if (!(t_exit > mid)) t_exit = shrunk_cell_exit(o, d, mid, wlo, whi, p.res, cell);
      if (t_exit > mid) {
        // As Lattice::resume_index for constant steps, and never past the inner exit (outer points are all visited).
        double kk = ceil((t_exit - static_cast<double>(t0)) / static_cast<double>(step) - 0.5 - 0.01);
        if (kk > static_cast<double>(n1)) kk = static_cast<double>(n1);
        if (kk > static_cast<double>(k)) {
          k = static_cast<int64_t>(kk);
          continue;
        }
      }
    }
    ++k;
  }
  // The outer points k = n1 .. count - 1, every one visited: independent of each other, their cells are found a
  // block at a time in a branch-free loop that the host compiler vectorises (contracted_cell and the lattice
  // written out with selects, the same float32/float64 operations), then looked up and emitted in order. Scalar,
  // one point after the other, they were ~80% of marching an office_table view.
  float ts[kOuterBlock], te[kOuterBlock];
  int32_t cell_of[kOuterBlock];
  const double bn = static_cast<double>(b) * static_cast<double>(n_outer), nd = static_cast<double>(n_outer);
  float centre[3], half[3], res_f[3];
  for (int a = 0; a < 3; ++a) {
    centre[a] = (p.lo[a] + p.hi[a]) * 0.5f;
    half[a] = (p.hi[a] - p.lo[a]) * 0.5f;
    res_f[a] = static_cast<float>(p.res[a]);
  }
  for (; k < count; k += kOuterBlock) {
    const int64_t nb = count - k < kOuterBlock ? count - k : kOuterBlock;
    FIELDS_SIMD
    for (int64_t i = 0; i < nb; ++i) {
      const int64_t kk = k + i;
      const double j = static_cast<double>(kk - n1);
      // Every value is computed, then selected: g++ keeps a floating-point operation that only one side of a
      // branch needs out of a vectorised loop (it might trap).
      const float outer_start = static_cast<float>(bn / (nd - j)), inner_start = t0 + static_cast<float>(kk) * step;
      ts[i] = kk <= n1 ? inner_start : outer_start;  // kk == n1: the inner box's exit
      te[i] = static_cast<float>(bn / (nd - (j + 1.0)));
      const float mid = 0.5f * (ts[i] + te[i]);
      // contract_point and contracted_cell, axis by axis (inner loops would keep the loop from vectorising)
      const float u0 = (o[0] + mid * d[0] - centre[0]) / half[0], u1 = (o[1] + mid * d[1] - centre[1]) / half[1],
                  u2 = (o[2] + mid * d[2] - centre[2]) / half[2];
      float m = fabsf(u0);  // fmaxf(0, |u0|)
      m = fabsf(u1) > m ? fabsf(u1) : m;
      m = fabsf(u2) > m ? fabsf(u2) : m;
      const float scale = (2.0f - 1.0f / m) / m, s0 = u0 * scale, s1 = u1 * scale, s2 = u2 * scale;
      const bool shell = m > 1.0f;
      const int32_t c[3] = {outer_cell_axis(shell ? s0 : u0, res_f[0]), outer_cell_axis(shell ? s1 : u1, res_f[1]),
                            outer_cell_axis(shell ? s2 : u2, res_f[2])};
      cell_of[i] = (c[0] * p.res[1] + c[1]) * p.res[2] + c[2];
    }
    for (int64_t i = 0; i < nb; ++i) {
      if (!(0.5f * (ts[i] + te[i]) < far)) return n;  // lattice points only grow
      if (binary[cell_of[i]]) {
        emit(k + i, ts[i], te[i]);
        ++n;
      }
    }
  }
  return n;
}

// March one ray (renderers/marching.py:march_rays for a single ray): calls emit(k, t_start, t_end) for every
// lattice point whose midpoint lies before the far bound in an occupied cell, in order; returns how many.
// Empty cells (and empty coarse blocks) are jumped over (to the first lattice point whose midpoint may leave the
// shrunk cell or block), and every lattice point that is evaluated uses the reference's float32 arithmetic, so the
// samples are exactly the reference's.
template <class Emit>
FIELDS_HD int64_t march_ray(const float o[3], const float d[3], float jitter, const uint8_t* binary,
                            const MarchParams& p, Emit& emit) {
  if (p.contract) return march_ray_contracted(o, d, jitter, binary, p, emit);
  float t_near, t_far;
  ray_aabb(o, d, p.lo, p.hi, t_near, t_far);
  t_near = fmaxf(t_near, static_cast<float>(p.near));
  t_far = fminf(t_far, static_cast<float>(p.far));
  if (!(t_far > t_near)) return 0;
  float step = static_cast<float>(p.step);
  float t0 = t_near + jitter * step;
  float cf = ceilf((t_far - t0) / step);
  if (!(cf > 0.0f)) return 0;
  int64_t count = static_cast<int64_t>(cf);
  Lattice lat(t0, p.step, p.cone, p.max_step);
  int64_t n = 0;
  for (int64_t k = 0; k < count;) {
    float ts = lat.at(k), te = lat.at(k + 1);
    float mid = 0.5f * (ts + te);
    if (!(mid < t_far)) {
      if (p.cone <= 0.0) break;  // constant steps: later midpoints are no smaller (IEEE rounding is monotone)
      ++k;
      continue;
    }
    float x[3] = {o[0] + mid * d[0], o[1] + mid * d[1], o[2] + mid * d[2]};
    int cell[3];
    int64_t c = grid_cell(x, p.lo, p.hi, p.res, cell);
    if (c >= 0 && binary[c]) {
      emit(k, ts, te);
      ++n;
      ++k;
      continue;
    }
    if (c >= 0) {
      double t_exit = empty_exit(o, d, mid, p, cell);
      if (t_exit > mid) {
        double kk = lat.resume_index(t_exit);
        if (kk >= static_cast<double>(count)) break;
        if (kk > static_cast<double>(k)) {
          k = static_cast<int64_t>(kk);
          continue;
        }
      }
    }
    ++k;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------------------
// Compositing: alpha of one sample and transmittance after a float64 running optical depth.

FIELDS_HD float sample_alpha(float tau) { return -expm1f(-tau); }  // no cancellation for small tau

FIELDS_HD float transmittance_of(double depth_before) { return static_cast<float>(exp(-depth_before)); }

// One ray's samples [i0, i1): transmittance before each sample, from optical depths tau.
FIELDS_HD void transmittance_ray(const float* tau, int64_t i0, int64_t i1, float* out) {
  double depth = 0.0;
  for (int64_t i = i0; i < i1; ++i) {
    out[i] = transmittance_of(depth);
    depth += static_cast<double>(tau[i]);
  }
}

// One ray's weights w_i = T_i alpha_i and its colour, opacity and depth (sums in float64: rays can have
// thousands of samples).
FIELDS_HD void composite_ray_forward(const float* sigmas, const float* rgbs, const float* t_starts,
                                     const float* t_ends, int64_t i0, int64_t i1, float* weights, float* rgb,
                                     float* opacity, float* depth) {
  double optical = 0.0, acc[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
  for (int64_t i = i0; i < i1; ++i) {
    const float tau = sigmas[i] * (t_ends[i] - t_starts[i]);
    const float w = transmittance_of(optical) * sample_alpha(tau);
    optical += static_cast<double>(tau);
    weights[i] = w;
    for (int c = 0; c < 3; ++c) acc[c] += static_cast<double>(w * rgbs[3 * i + c]);
    acc[3] += static_cast<double>(w);
    acc[4] += static_cast<double>(w * (0.5f * (t_starts[i] + t_ends[i])));
  }
  for (int c = 0; c < 3; ++c) rgb[c] = static_cast<float>(acc[c]);
  *opacity = static_cast<float>(acc[3]);
  *depth = static_cast<float>(acc[4]);
}

// Pruning of a front-to-back image round (renderers/compositing.py:composite_round): a sample is kept where the
// transmittance before it reaches `stop_eps` (0: always), its opacity `alpha_thre` and its weight `weight_thre`
// (each only where positive).
struct RoundPruning {
  float stop_eps, alpha_thre, weight_thre;
};
// One live ray's samples of a front-to-back round (renderers/marching.py: round_samples): its samples first ..
// first + (o1 - o0) - 1 of the packed march copied to round slots o0 .. o1 - 1 with their sample index, ray, bounds,
// midpoint position o + t_mid d and direction, in Samples.positions' float32 operations (the position fused).
FIELDS_HD void round_samples_ray(const int64_t* ray_indices, const float* t_starts, const float* t_ends,
                                 const float* origins, const float* dirs, int64_t first, int64_t o0, int64_t o1,
                                 int64_t* idx, int64_t* ray, float* ts, float* te, float* x, float* d) {
  for (int64_t s = o0; s < o1; ++s) {
    const int64_t i = first + (s - o0), r = ray_indices[i];
    const float a = t_starts[i], b = t_ends[i], mid = (a + b) * 0.5f;
    idx[s] = i;
    ray[s] = r;
    ts[s] = a;
    te[s] = b;
    for (int k = 0; k < 3; ++k) {
      const float dk = dirs[3 * r + k];
      d[3 * s + k] = dk;
      x[3 * s + k] = fmaf(mid, dk, origins[3 * r + k]);  // one rounding, as torch.addcmul
    }
  }
}

// One ray's samples [i0, i1) of such a round, in composite_round_reference's float32/float64 operations: the
// transmittance before each is this round's own (transmittance_ray) times exp(-optical), the ray's optical depth
// before the round; weights w_i; kept samples add w_i to opacity and w_i * midpoint to depth (in order, float32,
// as index_add_); optical grows by every sample's tau (float64).
FIELDS_HD void composite_round_ray(const float* sigmas, const float* t_starts, const float* t_ends, int64_t i0,
                                   int64_t i1, RoundPruning prune, double* optical, float* opacity, float* depth,
                                   float* weights, uint8_t* keep) {
  const float before = static_cast<float>(exp(-*optical));
  double own = 0.0;
  for (int64_t i = i0; i < i1; ++i) {
    const float tau = sigmas[i] * (t_ends[i] - t_starts[i]);
    const float trans = transmittance_of(own) * before, alpha = sample_alpha(tau), w = trans * alpha;
    own += static_cast<double>(tau);
    *optical += static_cast<double>(tau);
    const bool k = trans >= prune.stop_eps && (prune.alpha_thre <= 0.0f || alpha >= prune.alpha_thre) &&
                   (prune.weight_thre <= 0.0f || w >= prune.weight_thre);
    weights[i] = w;
    keep[i] = k;
    if (k) {
      *opacity += w;
      *depth += w * 0.5f * (t_starts[i] + t_ends[i]);
    }
  }
}

// Gradients of one ray's samples. With G_i = dL/dw_i (from the weights, rgb, opacity and depth gradients):
// dL/dtau_k = G_k T_{k+1} - sum_{i > k} G_i w_i, since w_i depends on tau_k (k < i) through T_i.
FIELDS_HD void composite_ray_backward(const float* grad_weights, const float gr[3], float grad_opacity,
                                      float grad_depth, const float* sigmas, const float* rgbs,
                                      const float* t_starts, const float* t_ends, int64_t i0, int64_t i1,
                                      float* grad_sigmas, float* grad_rgbs) {
  auto g_of = [&](int64_t i) {
    float g = gr[0] * rgbs[3 * i] + gr[1] * rgbs[3 * i + 1] + gr[2] * rgbs[3 * i + 2] + grad_opacity +
              grad_depth * (0.5f * (t_starts[i] + t_ends[i]));
    return grad_weights ? g + grad_weights[i] : g;
  };
  double optical = 0.0, total = 0.0;
  for (int64_t i = i0; i < i1; ++i) {
    const float tau = sigmas[i] * (t_ends[i] - t_starts[i]);
    const float w = transmittance_of(optical) * sample_alpha(tau);
    optical += static_cast<double>(tau);
    total += static_cast<double>(g_of(i)) * w;
  }
  optical = 0.0;
  double prefix = 0.0;
  for (int64_t i = i0; i < i1; ++i) {
    const float dt = t_ends[i] - t_starts[i], tau = sigmas[i] * dt;
    const float w = transmittance_of(optical) * sample_alpha(tau);
    optical += static_cast<double>(tau);
    const double g = g_of(i);
    prefix += g * w;
    const double dtau = g * static_cast<double>(transmittance_of(optical)) - (total - prefix);
    grad_sigmas[i] = static_cast<float>(dtau * dt);
    for (int c = 0; c < 3; ++c) grad_rgbs[3 * i + c] = w * gr[c];
  }
}

// ---------------------------------------------------------------------------------------------------------
// Gaussian splatting (renderers/splatting.py): projection of one 3-D Gaussian with the EWA Jacobian, its
// backward, and the per-pixel compositing step. The same operations as the reference in float32; exp is a
// polynomial (Cephes expf, within 2 ulp of expf) so that the CPU build's per-pixel loops vectorise.

constexpr float kSplatAlphaMax = 0.99f;
constexpr float kSplatAlphaMin = 1.0f / 255.0f;
constexpr float kSplatTMin = 1e-4f;
constexpr float kSplatDilation = 0.3f;

// One pinhole camera: OpenCV world-to-camera rotation R (row-major) and translation t, intrinsics, and the
// view-space limits of x/z and y/z used inside the Jacobian (1.3x the image's half extents).
struct SplatCamera {
  float R[9], t[3];
  float fx, fy, cx, cy;
  float lim_xp, lim_xn, lim_yp, lim_yn;
  float near;
  int width, height;
};

// The tile grid of one image.
struct SplatTiles {
  int width, height, tile, grid_w, grid_h;
};

FIELDS_HD float splat_bits_to_float(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  union {
    int32_t i;
    float f;
  } u;
  u.i = bits;
  return u.f;
#endif
}

// exp(x) for x <= 0 (clamped below at -87, where it underflows to ~1e-38 anyway).
FIELDS_HD float splat_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2)
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  return y * splat_bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}

// The exponent -0.5 d^T conic d of a pixel at offset (dx, dy) = mean - pixel centre.
FIELDS_HD float splat_power(float dx, float dy, float a, float b, float c) {
  return -0.5f * (a * dx * dx + c * dy * dy) - b * dx * dy;
}

// o * exp(power) before the 0.99 cap; the pixel takes the Gaussian iff power <= 0 and the capped alpha >= 1/255.
FIELDS_HD float splat_raw_alpha(float o, float power) { return o * splat_exp(power); }
FIELDS_HD float splat_cap(float raw) { return raw < kSplatAlphaMax ? raw : kSplatAlphaMax; }
// A finished pixel's channel for viewing, as render_gaussians computes it from the forward's sums: a colour on
// the background (sum w c + (1 - alpha) bg), or another channel's alpha-weighted mean (depth; 0 where none hit).
FIELDS_HD float splat_on_background(float acc, float alpha, float bg) { return acc + (1.0f - alpha) * bg; }
FIELDS_HD float splat_weighted_mean(float acc, float alpha) { return alpha > 0.0f ? acc / alpha : 0.0f; }

// Rotation matrix (row-major) of a wxyz quaternion after normalisation (torch's normalize: q / max(|q|, 1e-12)).
FIELDS_HD void splat_rotmat(const float q[4], float qn[4], float& norm, float Rq[9]) {
  norm = sqrtf(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  const float d = norm > 1e-12f ? norm : 1e-12f;
  for (int k = 0; k < 4; ++k) qn[k] = q[k] / d;
  const float w = qn[0], x = qn[1], y = qn[2], z = qn[3];
  Rq[0] = 1.0f - 2.0f * (y * y + z * z);
  Rq[1] = 2.0f * (x * y - w * z);
  Rq[2] = 2.0f * (x * z + w * y);
  Rq[3] = 2.0f * (x * y + w * z);
  Rq[4] = 1.0f - 2.0f * (x * x + z * z);
  Rq[5] = 2.0f * (y * z - w * x);
  Rq[6] = 2.0f * (x * z - w * y);
  Rq[7] = 2.0f * (y * z + w * x);
  Rq[8] = 1.0f - 2.0f * (x * x + y * y);
}

// min(max(v, lo), hi) like torch.clamp, as compares (fminf/fmaxf are library calls in g++ without -ffast-math).
FIELDS_HD float splat_clamp(float v, float lo, float hi) {
  const float m = v < lo ? lo : v;
  return m > hi ? hi : m;
}

// Everything the projection computes for one Gaussian, kept for the backward pass.
struct SplatProjected {
  float p[3], zs, u, v, uc, vc;
  bool valid;
  float J00, J02, J11, J12;
  float W[6];   // J R, 2 x 3
  float qn[4], qnorm, Rq[9];
  float M[9];   // Rq diag(s)
  float A[6];   // W M; 2-D covariance = A A^T + dilation
  float a0, c0;  // diagonal of A A^T before the dilation
  float a, b, c, det;
  float ratio;  // det(A A^T) / det(A A^T + dilation): the squared anti-aliasing compensation
};

FIELDS_HD SplatProjected splat_project_core(const float m[3], const float q[4], const float s[3],
                                            const SplatCamera& cam) {
  SplatProjected P;
  for (int i = 0; i < 3; ++i)
    P.p[i] = cam.R[3 * i] * m[0] + cam.R[3 * i + 1] * m[1] + cam.R[3 * i + 2] * m[2] + cam.t[i];
  P.valid = P.p[2] > cam.near;
  P.zs = P.valid ? P.p[2] : 1.0f;
  P.u = P.p[0] / P.zs;
  P.v = P.p[1] / P.zs;
  P.uc = splat_clamp(P.u, -cam.lim_xn, cam.lim_xp);
  P.vc = splat_clamp(P.v, -cam.lim_yn, cam.lim_yp);
  P.J00 = cam.fx / P.zs;
  P.J02 = -cam.fx * P.uc / P.zs;
  P.J11 = cam.fy / P.zs;
  P.J12 = -cam.fy * P.vc / P.zs;
  for (int j = 0; j < 3; ++j) {
    P.W[j] = P.J00 * cam.R[j] + P.J02 * cam.R[6 + j];
    P.W[3 + j] = P.J11 * cam.R[3 + j] + P.J12 * cam.R[6 + j];
  }
  splat_rotmat(q, P.qn, P.qnorm, P.Rq);
  for (int k = 0; k < 3; ++k)
    for (int j = 0; j < 3; ++j) P.M[3 * k + j] = P.Rq[3 * k + j] * s[j];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      P.A[3 * i + j] = P.W[3 * i] * P.M[j] + P.W[3 * i + 1] * P.M[3 + j] + P.W[3 * i + 2] * P.M[6 + j];
  P.a0 = P.A[0] * P.A[0] + P.A[1] * P.A[1] + P.A[2] * P.A[2];
  P.b = P.A[0] * P.A[3] + P.A[1] * P.A[4] + P.A[2] * P.A[5];
  P.c0 = P.A[3] * P.A[3] + P.A[4] * P.A[4] + P.A[5] * P.A[5];
  P.a = P.a0 + kSplatDilation;
  P.c = P.c0 + kSplatDilation;
  P.det = P.a * P.c - P.b * P.b;
  P.ratio = (P.a0 * P.c0 - P.b * P.b) / P.det;
  return P;
}

// Screen-space mean, conic (inverse 2-D covariance), depth, 3-sigma radius (0: culled) and anti-aliasing
// compensation sqrt(det(cov2d) / det(cov2d + dilation)) (0 where that ratio is not positive) of one Gaussian.
FIELDS_HD void splat_project_gaussian(const float m[3], const float q[4], const float s[3], const SplatCamera& cam,
                                      float m2[2], float con[3], float& depth, int32_t& radius, float& comp) {
  const SplatProjected P = splat_project_core(m, q, s, cam);
  comp = P.ratio > 0.0f ? sqrtf(P.ratio) : 0.0f;
  con[0] = P.c / P.det;
  con[1] = -P.b / P.det;
  con[2] = P.a / P.det;
  m2[0] = cam.fx * P.u + cam.cx;
  m2[1] = cam.fy * P.v + cam.cy;
  depth = P.p[2];
  const float mid = 0.5f * (P.a + P.c);
  const float spread = mid * mid - P.det;
  const float lam = mid + sqrtf(spread < 0.1f ? 0.1f : spread);
  const float r = ceilf(3.0f * sqrtf(lam));
  const bool on_screen = (m2[0] + r >= 0.0f) && (m2[0] - r < static_cast<float>(cam.width)) &&
                         (m2[1] + r >= 0.0f) && (m2[1] - r < static_cast<float>(cam.height));
  radius = (P.valid && on_screen) ? static_cast<int32_t>(r) : 0;
}

// Gradients of the mean, quaternion and scales from those of means2d, conic, depth and compensation (every
// Gaussian, culled or not, exactly like autograd through the reference); where v_view is not null, also this
// Gaussian's share of the view matrix's gradient, [3, 4] row-major (R | t): through the camera-space point p =
// R m + t (means2d, depth, and the Jacobian J's dependence on p) and through the covariance's J R.
FIELDS_HD void splat_project_gaussian_backward(const float m[3], const float q[4], const float s[3],
                                               const SplatCamera& cam, const float v_m2[2], const float v_con[3],
                                               float v_depth, float v_comp, float v_m[3], float v_q[4],
                                               float v_s[3], float* v_view) {
  if (v_m2[0] == 0.0f && v_m2[1] == 0.0f && v_con[0] == 0.0f && v_con[1] == 0.0f && v_con[2] == 0.0f &&
      v_depth == 0.0f && v_comp == 0.0f) {
    // No gradient reaches it (it missed the image or the training window: most Gaussians of a crop's step): all
    // of its gradients are zero, without redoing its projection.
    for (int j = 0; j < 3; ++j) v_m[j] = v_s[j] = 0.0f;
    for (int k = 0; k < 4; ++k) v_q[k] = 0.0f;
    if (v_view != nullptr)
      for (int k = 0; k < 12; ++k) v_view[k] = 0.0f;
    return;
  }
  const SplatProjected P = splat_project_core(m, q, s, cam);
  const float a = P.a, b = P.b, c = P.c, id2 = 1.0f / (P.det * P.det);
  float va = (-c * c * v_con[0] + b * c * v_con[1] - b * b * v_con[2]) * id2;
  float vb = (2.0f * b * c * v_con[0] - (a * c + b * b) * v_con[1] + 2.0f * a * b * v_con[2]) * id2;
  float vc = (-b * b * v_con[0] + a * b * v_con[1] - a * a * v_con[2]) * id2;
  if (P.ratio > 0.0f) {  // ratio = (a0 c0 - b^2) / (a c - b^2), a = a0 + dilation, c = c0 + dilation
    const float v_ratio = 0.5f * v_comp / sqrtf(P.ratio) / P.det;
    va += v_ratio * (P.c0 - P.ratio * c);
    vc += v_ratio * (P.a0 - P.ratio * a);
    vb += v_ratio * -2.0f * b * (1.0f - P.ratio);
  }
  float vA[6];
  for (int j = 0; j < 3; ++j) {
    vA[j] = 2.0f * va * P.A[j] + vb * P.A[3 + j];
    vA[3 + j] = 2.0f * vc * P.A[3 + j] + vb * P.A[j];
  }
  float vW[6], vM[9];
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 3; ++k)
      vW[3 * i + k] = vA[3 * i] * P.M[3 * k] + vA[3 * i + 1] * P.M[3 * k + 1] + vA[3 * i + 2] * P.M[3 * k + 2];
  for (int k = 0; k < 3; ++k)
    for (int j = 0; j < 3; ++j) vM[3 * k + j] = P.W[k] * vA[j] + P.W[3 + k] * vA[3 + j];
  float V[9];  // gradient of Rq
  for (int j = 0; j < 3; ++j) {
    v_s[j] = vM[j] * P.Rq[j] + vM[3 + j] * P.Rq[3 + j] + vM[6 + j] * P.Rq[6 + j];
    for (int k = 0; k < 3; ++k) V[3 * k + j] = vM[3 * k + j] * s[j];
  }
  const float w = P.qn[0], x = P.qn[1], y = P.qn[2], z = P.qn[3];
  float vqn[4];
  vqn[0] = 2.0f * (-z * V[1] + y * V[2] + z * V[3] - x * V[5] - y * V[6] + x * V[7]);
  vqn[1] = 2.0f * (y * V[1] + z * V[2] + y * V[3] - 2.0f * x * V[4] - w * V[5] + z * V[6] + w * V[7] -
                   2.0f * x * V[8]);
  vqn[2] = 2.0f * (-2.0f * y * V[0] + x * V[1] + w * V[2] + x * V[3] + z * V[5] - w * V[6] + z * V[7] -
                   2.0f * y * V[8]);
  vqn[3] = 2.0f * (-2.0f * z * V[0] - w * V[1] + x * V[2] + w * V[3] - 2.0f * z * V[4] + y * V[5] + x * V[6] +
                   y * V[7]);
  const float dot = vqn[0] * w + vqn[1] * x + vqn[2] * y + vqn[3] * z;
  const float d = P.qnorm > 1e-12f ? P.qnorm : 1e-12f;
  for (int k = 0; k < 4; ++k) v_q[k] = P.qnorm > 1e-12f ? (vqn[k] - P.qn[k] * dot) / d : vqn[k] / d;
  // W = J R
  float vJ00 = 0.0f, vJ02 = 0.0f, vJ11 = 0.0f, vJ12 = 0.0f;
  for (int j = 0; j < 3; ++j) {
    vJ00 += vW[j] * cam.R[j];
    vJ02 += vW[j] * cam.R[6 + j];
    vJ11 += vW[3 + j] * cam.R[3 + j];
    vJ12 += vW[3 + j] * cam.R[6 + j];
  }
  const float zs = P.zs, iz = 1.0f / zs, iz2 = iz * iz;
  float vzs = (-cam.fx * vJ00 + cam.fx * P.uc * vJ02 - cam.fy * vJ11 + cam.fy * P.vc * vJ12) * iz2;
  const bool in_u = P.u >= -cam.lim_xn && P.u <= cam.lim_xp, in_v = P.v >= -cam.lim_yn && P.v <= cam.lim_yp;
  const float vu = cam.fx * v_m2[0] + (in_u ? -cam.fx * iz * vJ02 : 0.0f);
  const float vv = cam.fy * v_m2[1] + (in_v ? -cam.fy * iz * vJ12 : 0.0f);
  vzs += -(P.p[0] * vu + P.p[1] * vv) * iz2;
  const float vp[3] = {vu * iz, vv * iz, v_depth + (P.valid ? vzs : 0.0f)};
  for (int j = 0; j < 3; ++j) v_m[j] = cam.R[j] * vp[0] + cam.R[3 + j] * vp[1] + cam.R[6 + j] * vp[2];
  if (v_view == nullptr) return;
  // p = R m + t; W = J R: row 0 = J00 R0 + J02 R2, row 1 = J11 R1 + J12 R2
  for (int j = 0; j < 3; ++j) {
    v_view[j] = vp[0] * m[j] + P.J00 * vW[j];
    v_view[4 + j] = vp[1] * m[j] + P.J11 * vW[3 + j];
    v_view[8 + j] = vp[2] * m[j] + P.J02 * vW[j] + P.J12 * vW[3 + j];
  }
  for (int i = 0; i < 3; ++i) v_view[4 * i + 3] = vp[i];
}

// Inclusive tile range of a Gaussian's means2d +- radius square, clamped to the grid (visible Gaussians only).
FIELDS_HD void splat_tile_rect(float mx, float my, int32_t radius, const SplatTiles& g, int& x0, int& x1, int& y0,
                               int& y1) {
  const float r = static_cast<float>(radius), ts = static_cast<float>(g.tile);
  const float gw1 = static_cast<float>(g.grid_w - 1), gh1 = static_cast<float>(g.grid_h - 1);
  x0 = static_cast<int>(splat_clamp(floorf((mx - r) / ts), 0.0f, gw1));
  x1 = static_cast<int>(splat_clamp(floorf((mx + r) / ts), 0.0f, gw1));
  y0 = static_cast<int>(splat_clamp(floorf((my - r) / ts), 0.0f, gh1));
  y1 = static_cast<int>(splat_clamp(floorf((my + r) / ts), 0.0f, gh1));
}

// Which tiles of its square a Gaussian can reach, row by row of tiles. A pixel takes it only where o exp(-q / 2)
// >= 1/255 with q = d^T conic d, i.e. inside the ellipse q <= k = 2 ln(255 o) (widened by 0.1% + 1e-4 for the
// rasterizer's rounding and polynomial exp, as its per-tile footprint is). A tile whose pixel area that ellipse
// misses holds no pixel that takes the Gaussian, so binning leaves the pair out: the same image and gradients from
// fewer (tile, Gaussian) pairs (62% fewer on a trained real scene, whose faint and elongated Gaussians' squares
// are mostly empty). The plain-PyTorch twin is renderers.splatting.tile_row_spans (the same float32 operations).
struct SplatTileEllipse {
  float mx, my, b, inv_a, ak, det, ey, s, ts, inv_ts;  // s: dy of the leftmost point (the rightmost is at -s)
  int x0, x1, y0, y1;  // the means2d +- radius square's tile range
  bool empty;          // opacity below 1/255: no pixel takes it
  bool exact;          // false: a degenerate conic, every tile of the square is kept
};

FIELDS_HD SplatTileEllipse splat_tile_ellipse(float mx, float my, const float con[3], float o, int32_t radius,
                                              const SplatTiles& g) {
  SplatTileEllipse e;
  splat_tile_rect(mx, my, radius, g, e.x0, e.x1, e.y0, e.y1);
  e.mx = mx;
  e.my = my;
  e.ts = static_cast<float>(g.tile);
  e.inv_ts = 1.0f / e.ts;
  e.empty = !(o >= kSplatAlphaMin);
  const float a = con[0], c = con[2];
  e.b = con[1];
  // ln in double, rounded to float: the reference's torch.log gives the same float
  const float k = 2.0f * static_cast<float>(log(static_cast<double>(255.0f * o))) * 1.001f + 1e-4f;
  e.det = a * c - e.b * e.b;
  e.inv_a = 1.0f / a;
  e.ak = a * k;
  const float ex = sqrtf(k * c / e.det);
  e.ey = sqrtf(k * a / e.det);
  e.s = e.b * ex / c;
  e.exact = e.det > 0.0f && a > 0.0f && c > 0.0f && ex < 1e6f && e.ey < 1e6f;
  return e;
}

// The tiles [tx0, tx1] of tile row ty (within the square) whose pixel area the ellipse meets; false: none. Over
// the row's band of dy, the ellipse's left edge is convex in dy and its right edge concave, so each is extreme at
// the ellipse's leftmost / rightmost point's dy (+-b ex / c) clamped to the band.
FIELDS_HD bool splat_tile_row_span(const SplatTileEllipse& e, int ty, int& tx0, int& tx1) {
  tx0 = e.x0;
  tx1 = e.x1;
  if (e.empty) return false;
  if (!e.exact) return true;
  const float u0 = splat_clamp(static_cast<float>(ty) * e.ts - e.my, -e.ey, e.ey);
  const float u1 = splat_clamp(static_cast<float>(ty + 1) * e.ts - e.my, -e.ey, e.ey);
  if (!(u0 < u1)) return false;
  const float dl = splat_clamp(e.s, u0, u1), dr = splat_clamp(-e.s, u0, u1);
  const float hl = e.ak - e.det * dl * dl, hr = e.ak - e.det * dr * dr;
  const float xl = (-e.b * dl - sqrtf(hl > 0.0f ? hl : 0.0f)) * e.inv_a;
  const float xr = (-e.b * dr + sqrtf(hr > 0.0f ? hr : 0.0f)) * e.inv_a;
  const float fl = floorf((e.mx + xl) * e.inv_ts), fr = floorf((e.mx + xr) * e.inv_ts);
  const float lo = static_cast<float>(e.x0), hi = static_cast<float>(e.x1);
  if (fl > hi || fr < lo) return false;
  tx0 = static_cast<int>(fl > lo ? fl : lo);
  tx1 = static_cast<int>(fr < hi ? fr : hi);
  return true;
}

// ---------------------------------------------------------------------------------------------------------
// Spherical harmonics: the basis (tiny-cuda-nn's constants and sign convention, as sh_encode_reference in
// fields/backends/encodings.py computes it) and 3DGS's colour from a Gaussian's coefficients.

// o[bands^2]: the real SH basis of the direction (x, y, z) up to `bands` bands (1..4).
FIELDS_HD void sh_basis(float x, float y, float z, int bands, float* o) {
  o[0] = 0.28209479177387814f;
  if (bands <= 1) return;
  o[1] = -0.48860251190291987f * y;
  o[2] = 0.48860251190291987f * z;
  o[3] = -0.48860251190291987f * x;
  if (bands <= 2) return;
  const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  o[4] = 1.0925484305920792f * xy;
  o[5] = -1.0925484305920792f * yz;
  o[6] = 0.94617469575755997f * zz - 0.31539156525251999f;
  o[7] = -1.0925484305920792f * xz;
  o[8] = 0.54627421529603959f * (xx - yy);
  if (bands <= 3) return;
  o[9] = 0.59004358992664352f * y * (-3.0f * xx + yy);
  o[10] = 2.8906114426405538f * xy * z;
  o[11] = 0.45704579946446572f * y * (1.0f - 5.0f * zz);
  o[12] = 0.3731763325901154f * z * (5.0f * zz - 3.0f);
  o[13] = 0.45704579946446572f * x * (1.0f - 5.0f * zz);
  o[14] = 1.4453057213202769f * z * (xx - yy);
  o[15] = 0.59004358992664352f * x * (-xx + 3.0f * yy);
}

// One Gaussian's colour along direction d: sum_k basis_k (sh0 | shN rows)_k + 0.5 per channel, before the clamp
// at 0 (pre[3]); sh0 [3], shN [bands^2 - 1][3] (the rows in use), basis out [16].
FIELDS_HD void sh_color_pre(const float d[3], const float* sh0, const float* shN, int bands, float basis[16],
                            float pre[3]) {
  sh_basis(d[0], d[1], d[2], bands, basis);
  for (int c = 0; c < 3; ++c) pre[c] = basis[0] * sh0[c];
  for (int k = 1; k < bands * bands; ++k)
    for (int c = 0; c < 3; ++c) pre[c] += basis[k] * shN[3 * (k - 1) + c];
  for (int c = 0; c < 3; ++c) pre[c] += 0.5f;
}

// Gradients of rgb = max(pre, 0) (passed where pre >= 0, as torch's clamp_min) w.r.t. the coefficients (v_sh0 [3],
// v_shN [m][3]: zero beyond the bands^2 - 1 rows in use) and the direction (v_d [3]: the basis's partial
// derivatives, the direction's normalisation being the caller's). Writes every element of its outputs.
FIELDS_HD void sh_color_backward_one(const float d[3], const float* sh0, const float* shN, int m, int bands,
                                     const float v_rgb[3], float v_d[3], float* v_sh0, float* v_shN) {
  float basis[16], pre[3], g[3];
  sh_color_pre(d, sh0, shN, bands, basis, pre);
  for (int c = 0; c < 3; ++c) g[c] = pre[c] >= 0.0f ? v_rgb[c] : 0.0f;
  for (int c = 0; c < 3; ++c) v_sh0[c] = basis[0] * g[c];
  float gb[16];  // d loss / d basis_k (k >= 1: the constant basis_0 has no direction gradient)
  for (int k = 1; k < bands * bands; ++k) {
    const float* row = shN + 3 * (k - 1);
    gb[k] = g[0] * row[0] + g[1] * row[1] + g[2] * row[2];
    for (int c = 0; c < 3; ++c) v_shN[3 * (k - 1) + c] = basis[k] * g[c];
  }
  for (int j = 3 * (bands * bands - 1); j < 3 * m; ++j) v_shN[j] = 0.0f;
  const float x = d[0], y = d[1], z = d[2];
  float vx = 0.0f, vy = 0.0f, vz = 0.0f;
  if (bands > 1) {
    const float c1 = 0.48860251190291987f;
    vy += -c1 * gb[1];
    vz += c1 * gb[2];
    vx += -c1 * gb[3];
  }
  if (bands > 2) {
    const float c4 = 1.0925484305920792f, c6 = 0.94617469575755997f, c8 = 0.54627421529603959f;
    vx += c4 * y * gb[4] - c4 * z * gb[7] + 2.0f * c8 * x * gb[8];
    vy += c4 * x * gb[4] - c4 * z * gb[5] - 2.0f * c8 * y * gb[8];
    vz += -c4 * y * gb[5] + 2.0f * c6 * z * gb[6] - c4 * x * gb[7];
  }
  if (bands > 3) {
    const float c9 = 0.59004358992664352f, c10 = 2.8906114426405538f, c11 = 0.45704579946446572f;
    const float c12 = 0.3731763325901154f, c14 = 1.4453057213202769f;
    const float xx = x * x, yy = y * y, zz = z * z;
    vx += -6.0f * c9 * x * y * gb[9] + c10 * y * z * gb[10] + c11 * (1.0f - 5.0f * zz) * gb[13] +
          2.0f * c14 * x * z * gb[14] + 3.0f * c9 * (yy - xx) * gb[15];
    vy += 3.0f * c9 * (yy - xx) * gb[9] + c10 * x * z * gb[10] + c11 * (1.0f - 5.0f * zz) * gb[11] -
          2.0f * c14 * y * z * gb[14] + 6.0f * c9 * x * y * gb[15];
    vz += c10 * x * y * gb[10] - 10.0f * c11 * y * z * gb[11] + c12 * (15.0f * zz - 3.0f) * gb[12] -
          10.0f * c11 * x * z * gb[13] + c14 * (xx - yy) * gb[14];
  }
  v_d[0] = vx;
  v_d[1] = vy;
  v_d[2] = vz;
}

}  // namespace fields
