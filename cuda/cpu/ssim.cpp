// SSIM of an image against a target with its gradient, CPU only (C++17 + OpenMP); CUDA tensors use torch. The
// same map as kornia.metrics.ssim (renderers/imaging.py: ssim_map_reference): each of x, y, x^2, y^2, xy filtered
// by a separable Gaussian window (reflect padding, rows first), then per pixel and channel
// S = (2 mx my + c1)(2 sxy + c2) / ((mx^2 + my^2 + c1)(sxx + syy + c2) + eps), averaged over the channels.
//
// Why: torch runs it as ten depthwise convolutions with their paddings forward and six backward, ~20 ms of an
// 80 ms Gaussian training step on a 256x256 window (1 thread). Here the forward filters each plane once and keeps
// dS/dmx, dS/d(x^2 filtered), dS/d(xy filtered) per pixel; the backward filters those three planes with the
// window's adjoint (reflect padding folded back) and combines them with x and y.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "common/kernels.h"

namespace fields {
namespace cpu {
namespace {

// Mirror index of j into [0, n) (reflect: -1 -> 1, n -> n - 2), for |overhang| < n.
inline int64_t reflect(int64_t j, int64_t n) { return j < 0 ? -j : (j >= n ? 2 * (n - 1) - j : j); }

// out = the window along rows, then along columns, of the [h, w] plane in (reflect padding on both axes).
void filter_plane(const float* in, int64_t h, int64_t w, const float* k, int ks, float* tmp, float* out) {
  const int p = ks / 2;
  std::vector<float> row(static_cast<size_t>(w + 2 * p));
  for (int64_t i = 0; i < h; ++i) {
    const float* src = in + i * w;
    for (int64_t j = -p; j < w + p; ++j) row[j + p] = src[reflect(j, w)];
    float* dst = tmp + i * w;
    for (int64_t j = 0; j < w; ++j) dst[j] = 0.0f;
    for (int t = 0; t < ks; ++t) {
      const float kt = k[t];
      const float* r = row.data() + t;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) dst[j] += kt * r[j];
    }
  }
  for (int64_t i = 0; i < h; ++i) {
    float* dst = out + i * w;
    for (int64_t j = 0; j < w; ++j) dst[j] = 0.0f;
    for (int t = 0; t < ks; ++t) {
      const float kt = k[t];
      const float* r = tmp + reflect(i + t - p, h) * w;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) dst[j] += kt * r[j];
    }
  }
}

// The adjoint of filter_plane: g [h, w] -> out [h, w] (columns first, then rows; what the reflect padding read
// twice is added back to its source).
void filter_plane_adjoint(const float* g, int64_t h, int64_t w, const float* k, int ks, float* tmp, float* out) {
  const int p = ks / 2;
  std::fill(tmp, tmp + h * w, 0.0f);
  for (int64_t i = 0; i < h; ++i) {
    const float* src = g + i * w;
    for (int t = 0; t < ks; ++t) {
      const float kt = k[t];
      float* r = tmp + reflect(i + t - p, h) * w;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) r[j] += kt * src[j];
    }
  }
  std::vector<float> row(static_cast<size_t>(w + 2 * p));
  for (int64_t i = 0; i < h; ++i) {
    std::fill(row.begin(), row.end(), 0.0f);
    const float* src = tmp + i * w;
    for (int t = 0; t < ks; ++t) {
      const float kt = k[t];
      float* r = row.data() + t;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) r[j] += kt * src[j];
    }
    float* dst = out + i * w;
    for (int64_t j = 0; j < w; ++j) dst[j] = row[j + p];
    for (int q = 1; q <= p; ++q) {
      dst[q] += row[p - q];              // padded column -q read column q
      dst[w - 1 - q] += row[w - 1 + p + q];  // padded column w - 1 + q read column w - 1 - q
    }
  }
}

}  // namespace

void ssim_forward(const float* x, const float* y, int64_t h, int64_t w, int c, const float* k, int ks, float c1,
                  float c2, float eps, float* map, float* partials) {
  const int64_t hw = h * w;
  // planes [5][c][h * w]: x, y, x^2, y^2, xy of each channel, then filtered in place of their inputs
  std::vector<float> planes(static_cast<size_t>(5 * c * hw)), filtered(planes.size());
  for (int64_t q = 0; q < hw; ++q)
    for (int ch = 0; ch < c; ++ch) {
      const float a = x[q * c + ch], b = y[q * c + ch];
      planes[(0 * c + ch) * hw + q] = a;
      planes[(1 * c + ch) * hw + q] = b;
      planes[(2 * c + ch) * hw + q] = a * a;
      planes[(3 * c + ch) * hw + q] = b * b;
      planes[(4 * c + ch) * hw + q] = a * b;
    }
#pragma omp parallel
  {
    std::vector<float> tmp(static_cast<size_t>(hw));
#pragma omp for schedule(dynamic, 1)
    for (int pl = 0; pl < 5 * c; ++pl)
      filter_plane(planes.data() + pl * hw, h, w, k, ks, tmp.data(), filtered.data() + pl * hw);
  }
  const float inv_c = 1.0f / static_cast<float>(c);
#pragma omp parallel for schedule(static)
  for (int64_t q = 0; q < hw; ++q) {
    float sum = 0.0f;
    for (int ch = 0; ch < c; ++ch) {
      const float mx = filtered[(0 * c + ch) * hw + q], my = filtered[(1 * c + ch) * hw + q];
      const float exx = filtered[(2 * c + ch) * hw + q], eyy = filtered[(3 * c + ch) * hw + q];
      const float exy = filtered[(4 * c + ch) * hw + q];
      const float mxx = mx * mx, myy = my * my, mxy = mx * my;
      const float a1 = 2.0f * mxy + c1, a2 = 2.0f * (exy - mxy) + c2;
      const float b1 = mxx + myy + c1, b2 = (exx - mxx) + (eyy - myy) + c2;
      const float d = b1 * b2 + eps, s = a1 * a2 / d;
      sum += s;
      // dS/dmx (through a1, a2, b1, b2), dS/dexx (b2), dS/dexy (a2)
      const float r = s / d;
      partials[(0 * c + ch) * hw + q] = (2.0f * my * a2 - 2.0f * my * a1) / d - r * (2.0f * mx * b2 - 2.0f * mx * b1);
      partials[(1 * c + ch) * hw + q] = -r * b1;
      partials[(2 * c + ch) * hw + q] = 2.0f * a1 / d;
    }
    map[q] = sum * inv_c;
  }
}

void ssim_backward(const float* v_map, const float* x, const float* y, int64_t h, int64_t w, int c, const float* k,
                   int ks, const float* partials, float* v_x) {
  const int64_t hw = h * w;
  const float inv_c = 1.0f / static_cast<float>(c);
  std::vector<float> g(static_cast<size_t>(3 * c * hw)), back(g.size());
#pragma omp parallel for schedule(static)
  for (int64_t q = 0; q < hw; ++q) {
    const float v = v_map[q] * inv_c;
    for (int pl = 0; pl < 3 * c; ++pl) g[pl * hw + q] = v * partials[pl * hw + q];
  }
#pragma omp parallel
  {
    std::vector<float> tmp(static_cast<size_t>(hw));
#pragma omp for schedule(dynamic, 1)
    for (int pl = 0; pl < 3 * c; ++pl)
      filter_plane_adjoint(g.data() + pl * hw, h, w, k, ks, tmp.data(), back.data() + pl * hw);
  }
#pragma omp parallel for schedule(static)
  for (int64_t q = 0; q < hw; ++q)
    for (int ch = 0; ch < c; ++ch)
      v_x[q * c + ch] = back[(0 * c + ch) * hw + q] + 2.0f * x[q * c + ch] * back[(1 * c + ch) * hw + q] +
                        y[q * c + ch] * back[(2 * c + ch) * hw + q];
}

}  // namespace cpu
}  // namespace fields
