// Fused forward and backward of the small ReLU MLPs the field backends use, CPU only (C++17 + OpenMP, AVX-512
// or AVX2+FMA intrinsics when compiled with them, plain loops otherwise). The reference is
// fields/backends/fused_mlp.py's relu_mlp_reference; CUDA tensors never reach this file (the Python wrapper runs
// the reference on them).
//
// Why: torch runs each layer over the whole batch, so every [N, 64] activation, its ReLU, its ReLU backward
// and its bias-gradient sum stream through memory, and the weight-gradient GEMMs reduce over 30k rows. Here a
// block of 32 samples goes through all layers while it sits in L1, the (transposed, zero-padded) weights stay in
// cache, and every thread accumulates its own weight gradients, summed once at the end (no atomics).
//
// Layout: layer l maps K_l -> M_l columns; ReLU after every layer but the last (and after the last too when
// relu_out). The input may come in several column blocks ("parts", e.g. [sh, geo]), read as if concatenated.
// Internal buffers have rows padded to the block size and columns padded to 16 floats (one AVX-512 vector), with
// zeros in the padding, so the inner loops never need masks.
//
// bf16 mode (built where the CPU has AVX512-BF16): every matrix product (forward, input gradient, weight gradient)
// takes bfloat16 operands (layer inputs, weights, gradients rounded to nearest even) with float32 accumulation, on
// AMX tiles where the CPU has AMX-BF16 and the process may use them, else as AVX512-BF16 dot products of bfloat16
// pairs (AMD Zen 4 and later, Intel Cooper Lake: about twice the float32 FMA rate). Biases, ReLU, outputs and the
// bias gradients stay float32; hidden activations are saved as the bfloat16 copy the next layer reads. Elsewhere
// the flag is ignored (float32 throughout).
#include "cpu/mlp.h"

#include <omp.h>

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define FIELDS_MLP_BF16 1
#endif
#if defined(FIELDS_MLP_BF16) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#define FIELDS_MLP_AMX 1
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#define FIELDS_MLP_AVX2 1
#endif

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

namespace fields {
namespace cpu {
namespace {

using at::Tensor;

constexpr int kRows = 32;      // samples per block
constexpr int kMaxWidth = 512;  // widest layer input/output (checked)
#ifdef FIELDS_MLP_AVX2
constexpr int kGroupCols = 16;  // AVX2 has 16 vector registers: 6 rows x 2 vectors of accumulators per tile
#else
constexpr int kGroupCols = 64;  // AVX-512 has 32: up to 8 rows x 4 vectors
#endif

inline int pad16(int n) { return (n + 15) & ~15; }

enum class Init { kZero, kBias, kAccum };

// C[i, 0:16*NV) (op)= sum_r A[i*sai + r*sar] * B[r*ldb + 0:16*NV) for i < RB; Init says what C starts from
// (zero, the bias row `bias`, or C itself), relu clamps the result at 0. T = float: float32 operands. T = Pair
// (bf16 mode without AMX): each element of A and B is a pair of bfloat16 values along the reduction (r counts
// pairs), multiplied and summed pairwise by AVX512-BF16's dot product, into float32.
using Pair = uint32_t;

template <int RB, int NV, class T>
inline void micro(const T* __restrict A, int sai, int sar, int nred, const T* __restrict B, int ldb,
                  float* __restrict C, int ldc, Init init, const float* __restrict bias, bool relu) {
#ifdef __AVX512F__
  __m512 acc[RB][NV];
  #pragma GCC unroll 16
  for (int i = 0; i < RB; ++i)
    #pragma GCC unroll 16
    for (int j = 0; j < NV; ++j)
      acc[i][j] = init == Init::kAccum  ? _mm512_loadu_ps(C + i * ldc + 16 * j)
                  : init == Init::kBias ? _mm512_loadu_ps(bias + 16 * j)
                                        : _mm512_setzero_ps();
  for (int r = 0; r < nred; ++r) {
    if constexpr (std::is_same_v<T, float>) {
      __m512 b[NV];
      #pragma GCC unroll 16
      for (int j = 0; j < NV; ++j) b[j] = _mm512_loadu_ps(B + r * ldb + 16 * j);
      #pragma GCC unroll 16
      for (int i = 0; i < RB; ++i) {
        const __m512 a = _mm512_set1_ps(A[i * sai + r * sar]);
        #pragma GCC unroll 16
        for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
      }
    } else {
#ifdef FIELDS_MLP_BF16
      __m512i b[NV];
      #pragma GCC unroll 16
      for (int j = 0; j < NV; ++j) b[j] = _mm512_loadu_si512(B + r * ldb + 16 * j);
      #pragma GCC unroll 16
      for (int i = 0; i < RB; ++i) {
        const __m512i a = _mm512_set1_epi32(static_cast<int>(A[i * sai + r * sar]));
        #pragma GCC unroll 16
        for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)a, (__m512bh)b[j]);
      }
#endif
    }
  }
  const __m512 zero = _mm512_setzero_ps();
  #pragma GCC unroll 16
  for (int i = 0; i < RB; ++i)
    #pragma GCC unroll 16
    for (int j = 0; j < NV; ++j)
      _mm512_storeu_ps(C + i * ldc + 16 * j, relu ? _mm512_max_ps(acc[i][j], zero) : acc[i][j]);
#elif defined(FIELDS_MLP_AVX2)
  static_assert(std::is_same_v<T, float>, "bfloat16 pairs need AVX512-BF16");
  __m256 acc[RB][2 * NV];
  #pragma GCC unroll 16
  for (int i = 0; i < RB; ++i)
    #pragma GCC unroll 16
    for (int j = 0; j < 2 * NV; ++j)
      acc[i][j] = init == Init::kAccum  ? _mm256_loadu_ps(C + i * ldc + 8 * j)
                  : init == Init::kBias ? _mm256_loadu_ps(bias + 8 * j)
                                        : _mm256_setzero_ps();
  for (int r = 0; r < nred; ++r) {
    __m256 b[2 * NV];
    #pragma GCC unroll 16
    for (int j = 0; j < 2 * NV; ++j) b[j] = _mm256_loadu_ps(B + r * ldb + 8 * j);
    #pragma GCC unroll 16
    for (int i = 0; i < RB; ++i) {
      const __m256 a = _mm256_broadcast_ss(A + i * sai + r * sar);
      #pragma GCC unroll 16
      for (int j = 0; j < 2 * NV; ++j) acc[i][j] = _mm256_fmadd_ps(a, b[j], acc[i][j]);
    }
  }
  const __m256 zero = _mm256_setzero_ps();
  #pragma GCC unroll 16
  for (int i = 0; i < RB; ++i)
    #pragma GCC unroll 16
    for (int j = 0; j < 2 * NV; ++j)
      _mm256_storeu_ps(C + i * ldc + 8 * j, relu ? _mm256_max_ps(acc[i][j], zero) : acc[i][j]);
#else
  static_assert(std::is_same_v<T, float>, "bfloat16 pairs need AVX512-BF16");
  float acc[RB][16 * NV];
  #pragma GCC unroll 16
  for (int i = 0; i < RB; ++i)
    for (int c = 0; c < 16 * NV; ++c)
      acc[i][c] = init == Init::kAccum ? C[i * ldc + c] : init == Init::kBias ? bias[c] : 0.0f;
  for (int r = 0; r < nred; ++r)
    #pragma GCC unroll 16
    for (int i = 0; i < RB; ++i) {
      const float a = A[i * sai + r * sar];
      for (int c = 0; c < 16 * NV; ++c) acc[i][c] += a * B[r * ldb + c];
    }
  #pragma GCC unroll 16
  for (int i = 0; i < RB; ++i)
    for (int c = 0; c < 16 * NV; ++c) C[i * ldc + c] = relu ? std::max(acc[i][c], 0.0f) : acc[i][c];
#endif
}

// One column group of up to 4 vectors over `rows` rows of C (any count: a 1-row tile takes the tail).
template <int NV, class T>
void micro_rows(const T* A, int sai, int sar, int nred, const T* B, int ldb, float* C, int ldc, int rows,
                Init init, const float* bias, bool relu) {
#ifdef FIELDS_MLP_AVX2
  constexpr int RB = 6;  // NV is 1: 12 accumulators + 2 loads + 1 broadcast of the 16 registers
#else
  constexpr int RB = NV >= 3 ? 4 : 8;  // <= 16 accumulators + NV loads: fits the 32 vector registers
#endif
  int i = 0;
  for (; i + RB <= rows; i += RB)
    micro<RB, NV, T>(A + i * sai, sai, sar, nred, B, ldb, C + i * ldc, ldc, init, bias, relu);
  for (; i + 2 <= rows; i += 2)
    micro<2, NV, T>(A + i * sai, sai, sar, nred, B, ldb, C + i * ldc, ldc, init, bias, relu);
  for (; i < rows; ++i) micro<1, NV, T>(A + i * sai, sai, sar, nred, B, ldb, C + i * ldc, ldc, init, bias, relu);
}

// C[rows, cols] (op)= A[rows, nred] @ B[nred, cols], cols a multiple of 16, split in groups of kGroupCols.
template <class T>
void gemm(const T* A, int sai, int sar, int nred, const T* B, int ldb, float* C, int ldc, int rows, int cols,
          Init init, const float* bias, bool relu) {
  for (int c = 0; c < cols; c += kGroupCols) {
    const float* bc = bias ? bias + c : nullptr;
    switch (std::min(cols - c, kGroupCols) / 16) {
      case 4: micro_rows<4>(A, sai, sar, nred, B + c, ldb, C + c, ldc, rows, init, bc, relu); break;
      case 3: micro_rows<3>(A, sai, sar, nred, B + c, ldb, C + c, ldc, rows, init, bc, relu); break;
      case 2: micro_rows<2>(A, sai, sar, nred, B + c, ldb, C + c, ldc, rows, init, bc, relu); break;
      default: micro_rows<1>(A, sai, sar, nred, B + c, ldb, C + c, ldc, rows, init, bc, relu); break;
    }
  }
}

struct Layer {
  int k, m, kp, mp;        // widths and their 16-padded strides
  std::vector<float> wt;   // W^T [k, mp] (forward)
  std::vector<float> wp;   // W [m, kp] (input gradient)
  std::vector<float> bias; // [mp]
};

struct Net {
  std::vector<Layer> layers;
  bool relu_out;
  int in_dim() const { return layers.front().k; }
  bool relu_after(size_t l) const { return l + 1 < layers.size() || relu_out; }
};

Net make_net(const std::vector<Tensor>& weights, const std::vector<Tensor>& biases, bool relu_out,
             bool for_backward) {
  TORCH_CHECK(!weights.empty() && weights.size() == biases.size(), "mlp: one bias per weight expected");
  Net net{{}, relu_out};
  for (size_t l = 0; l < weights.size(); ++l) {
    Tensor w = weights[l].contiguous(), b = biases[l].contiguous();
    TORCH_CHECK(w.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && w.device().is_cpu(),
                "mlp: weights and biases must be float32 CPU tensors");
    TORCH_CHECK(w.dim() == 2 && b.dim() == 1 && b.size(0) == w.size(0), "mlp: weight ", l, " must be [M, K]"
                " with a bias [M]");
    TORCH_CHECK(l == 0 || w.size(1) == weights[l - 1].size(0), "mlp: layer ", l, " input width ", w.size(1),
                " != previous output width ", weights[l - 1].size(0));
    Layer L;
    L.k = static_cast<int>(w.size(1));
    L.m = static_cast<int>(w.size(0));
    L.kp = pad16(L.k);
    L.mp = pad16(L.m);
    TORCH_CHECK(L.kp <= kMaxWidth && L.mp <= kMaxWidth, "mlp: layers wider than ", kMaxWidth, " unsupported");
    const float* wd = w.data_ptr<float>();
    L.bias.assign(L.mp, 0.0f);
    std::memcpy(L.bias.data(), b.data_ptr<float>(), sizeof(float) * L.m);
    if (for_backward) {
      L.wp.assign(static_cast<size_t>(L.m) * L.kp, 0.0f);
      for (int i = 0; i < L.m; ++i)
        std::memcpy(&L.wp[static_cast<size_t>(i) * L.kp], wd + i * L.k, sizeof(float) * L.k);
    } else {
      L.wt.assign(static_cast<size_t>(L.k) * L.mp, 0.0f);
      for (int i = 0; i < L.m; ++i)
        for (int j = 0; j < L.k; ++j) L.wt[static_cast<size_t>(j) * L.mp + i] = wd[i * L.k + j];
    }
    net.layers.push_back(std::move(L));
  }
  return net;
}

struct Parts {
  std::vector<const float*> ptr;
  std::vector<int> cols;
  int total = 0;
};

Parts make_parts(const std::vector<Tensor>& inputs, int64_t& n) {
  TORCH_CHECK(!inputs.empty(), "mlp: no input");
  Parts p;
  n = inputs[0].size(0);
  for (const Tensor& t : inputs) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu() && t.dim() == 2 && t.is_contiguous(),
                "mlp: inputs must be contiguous float32 CPU [N, K] tensors");
    TORCH_CHECK(t.size(0) == n, "mlp: inputs have different numbers of rows");
    p.ptr.push_back(t.data_ptr<float>());
    p.cols.push_back(static_cast<int>(t.size(1)));
    p.total += static_cast<int>(t.size(1));
  }
  return p;
}

// Rows [r0, r0 + nr) of the concatenated inputs into xs [kRows, ld], zeros elsewhere.
void gather_rows(const Parts& p, int64_t r0, int nr, float* xs, int ld) {
  std::fill(xs, xs + kRows * ld, 0.0f);
  int c0 = 0;
  for (size_t q = 0; q < p.ptr.size(); ++q) {
    const int k = p.cols[q];
    for (int i = 0; i < nr; ++i) std::memcpy(xs + i * ld + c0, p.ptr[q] + (r0 + i) * k, sizeof(float) * k);
    c0 += k;
  }
}

// g[i, c] = 0 where the ReLU output h[i, c] is 0 (i < rows, c < cols).
inline void relu_mask(float* __restrict g, int ldg, const float* __restrict h, int ldh, int rows, int cols) {
#ifdef __AVX512F__
  if (cols % 16 == 0) {  // g++ leaves the scalar loop below unvectorised (branches per element)
    for (int i = 0; i < rows; ++i)
      for (int c = 0; c < cols; c += 16) {
        const __mmask16 on = _mm512_cmp_ps_mask(_mm512_loadu_ps(h + i * ldh + c), _mm512_setzero_ps(), _CMP_GT_OQ);
        _mm512_storeu_ps(g + i * ldg + c, _mm512_maskz_mov_ps(on, _mm512_loadu_ps(g + i * ldg + c)));
      }
    return;
  }
#elif defined(FIELDS_MLP_AVX2)
  if (cols % 8 == 0) {
    for (int i = 0; i < rows; ++i)
      for (int c = 0; c < cols; c += 8) {
        const __m256 on = _mm256_cmp_ps(_mm256_loadu_ps(h + i * ldh + c), _mm256_setzero_ps(), _CMP_GT_OQ);
        _mm256_storeu_ps(g + i * ldg + c, _mm256_and_ps(on, _mm256_loadu_ps(g + i * ldg + c)));
      }
    return;
  }
#endif
  for (int i = 0; i < rows; ++i)
    for (int c = 0; c < cols; ++c) g[i * ldg + c] = h[i * ldh + c] > 0.0f ? g[i * ldg + c] : 0.0f;
}

int64_t padded_rows(int64_t n) { return (n + kRows - 1) / kRows * kRows; }

// Adds the bias row to rows x cols of C (stride ldc) and applies the ReLU when asked.
inline void bias_relu(float* C, int ldc, const float* bias, int rows, int cols, bool relu) {
  for (int i = 0; i < rows; ++i) {
    float* c = C + static_cast<size_t>(i) * ldc;
#pragma omp simd
    for (int j = 0; j < cols; ++j) c[j] = relu ? std::max(c[j] + bias[j], 0.0f) : c[j] + bias[j];
  }
}

// How bf16 mode runs here: on AMX tiles, as AVX512-BF16 dot products of pairs, or not at all (float32).
enum class Mode { kFloat32, kAMX, kDot };

#ifdef FIELDS_MLP_BF16
namespace bf {

using bf16 = uint16_t;

inline int pad32(int n) { return (n + 31) & ~31; }

inline bf16 to_bf16(float f) {  // round to nearest even, as _mm512_cvtne2ps_pbh
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<bf16>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// rows x cols float32 (stride lds) -> bf16 (stride ldd), zero-padded to cols_out (a multiple of 32) columns.
inline void rows_to_bf16(const float* src, int lds, int cols, bf16* dst, int ldd, int cols_out, int rows) {
  for (int i = 0; i < rows; ++i)
    for (int c = 0; c < cols_out; c += 32) {
      const int left = cols - c;
      const __mmask16 m0 = left >= 16 ? 0xffff : left > 0 ? static_cast<__mmask16>((1u << left) - 1u) : 0;
      const __mmask16 m1 = left >= 32 ? 0xffff : left > 16 ? static_cast<__mmask16>((1u << (left - 16)) - 1u) : 0;
      const __m512 lo = _mm512_maskz_loadu_ps(m0, src + i * lds + c);
      const __m512 hi = _mm512_maskz_loadu_ps(m1, src + i * lds + c + 16);
      _mm512_storeu_si512(dst + i * ldd + c, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
    }
}

// Rows 2j and 2j+1 of src (float32, stride lds, cols a multiple of 16) as bf16 pairs: dst[j, c] (32-bit, stride
// ldd) = (src[2j, c], src[2j + 1, c]), for j < kRows / 2. This is the B layout of a product reducing over rows.
inline void row_pairs(const float* src, int lds, int cols, uint32_t* dst, int ldd) {
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                              6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int j = 0; j < kRows / 2; ++j)
    for (int c = 0; c < cols; c += 16) {
      const __m512bh both = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + (2 * j + 1) * lds + c),
                                                _mm512_loadu_ps(src + 2 * j * lds + c));
      _mm512_storeu_si512(dst + j * ldd + c, _mm512_permutexvar_epi16(interleave, reinterpret_cast<__m512i>(both)));
    }
}

// row_pairs of bfloat16 rows (the activations the forward saved in bf16 mode).
inline void row_pairs_bf16(const bf16* src, int lds, int cols, uint32_t* dst, int ldd) {
  for (int j = 0; j < kRows / 2; ++j)
    for (int c = 0; c < cols; c += 16) {
      const auto* even = reinterpret_cast<const __m256i*>(src + 2 * j * lds + c);
      const auto* odd = reinterpret_cast<const __m256i*>(src + (2 * j + 1) * lds + c);
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(even));
      const __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256(odd));
      _mm512_storeu_si512(dst + j * ldd + c, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
}

// g[i, c] = 0 where the saved bfloat16 ReLU output h[i, c] is 0 (i < kRows, c < cols, a multiple of 16).
inline void relu_mask_bf16(float* g, int ldg, const bf16* h, int ldh, int cols) {
  for (int i = 0; i < kRows; ++i)
    for (int c = 0; c < cols; c += 16) {
      // ReLU outputs are >= 0: positive as int16 exactly when positive as bfloat16
      const auto* hv = reinterpret_cast<const __m256i*>(h + i * ldh + c);
      const __mmask16 on = _mm256_cmpgt_epi16_mask(_mm256_loadu_si256(hv), _mm256_setzero_si256());
      _mm512_storeu_ps(g + i * ldg + c, _mm512_maskz_mov_ps(on, _mm512_loadu_ps(g + i * ldg + c)));
    }
}

// Rows from r0 of a saved bfloat16 activation.
inline bf16* bf16_rows(const Tensor& h, int64_t r0) {
  return reinterpret_cast<bf16*>(h.data_ptr<at::BFloat16>()) + r0 * h.size(1);
}

// B operand of C[., N] = A[., K] @ B[K, N] for the dot-product kernel (`micro` with Pair operands): pair row p,
// column n holds (B(2p, n), B(2p + 1, n)) as two bfloat16 words, low first, for n < pad16(N), pad32(K) / 2 pair
// rows, zeros outside K x N.
template <class At>
std::vector<bf16> pair_b(int K, int N, At at) {
  const int cols = pad16(N);
  std::vector<bf16> out(static_cast<size_t>(pad32(K)) * cols, 0);
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < N; ++n) out[(static_cast<size_t>(k / 2) * cols + n) * 2 + k % 2] = to_bf16(at(k, n));
  return out;
}

}  // namespace bf
#endif

#ifdef FIELDS_MLP_AMX
namespace amx {

using bf::bf16;
using bf::pad32;
constexpr int kTileRows = 16;        // rows of every tile; a block of kRows samples is two row halves
constexpr int kTileElems = 16 * 32;  // bf16 elements of a 16 x 64-byte tile

// Whether this process may use AMX tile data (Linux asks for it once per process).
bool ready() {
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
  return ok;
}

// Every tile 16 rows x 64 bytes: C tiles 0-3 (16 x 16 float32), A tile 4 (16 x 32 bf16), B tiles 5-7.
void configure() {
  struct alignas(64) {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
  } cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = kTileRows;
  }
  _tile_loadconfig(&cfg);
}

// B operand of C[., N] = A[., K] @ B[K, N] in AMX's pair-interleaved layout, one tile per (16 columns, 32 rows of
// the reduction): tile (ng, kc) holds element (r, c, e) = B(32 kc + 2 r + e, 16 ng + c), zeros outside K x N.
template <class At>
std::vector<bf16> pack_b(int K, int N, At at) {
  const int kcs = pad32(K) / 32, ngs = pad16(N) / 16;
  std::vector<bf16> out(static_cast<size_t>(kcs) * ngs * kTileElems, 0);
  for (int ng = 0; ng < ngs; ++ng)
    for (int kc = 0; kc < kcs; ++kc)
      for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c)
          for (int e = 0; e < 2; ++e) {
            const int k = 32 * kc + 2 * r + e, n = 16 * ng + c;
            if (k < K && n < N)
              out[(static_cast<size_t>(ng) * kcs + kc) * kTileElems + r * 32 + 2 * c + e] = bf::to_bf16(at(k, n));
          }
  return out;
}

// C[16, 16 G) = A[16, 32 kcs) @ B (G column groups of packed tiles starting at B).
template <int G>
inline void tile_group(const bf16* A, int lda, const bf16* B, int kcs, float* C, int ldc) {
  _tile_zero(0);
  if constexpr (G > 1) _tile_zero(1);
  if constexpr (G > 2) _tile_zero(2);
  if constexpr (G > 3) _tile_zero(3);
  for (int kc = 0; kc < kcs; ++kc) {
    _tile_loadd(4, A + 32 * kc, 2 * lda);
    _tile_loadd(5, B + static_cast<size_t>(kc) * kTileElems, 64);
    _tile_dpbf16ps(0, 4, 5);
    if constexpr (G > 1) {
      _tile_loadd(6, B + static_cast<size_t>(kcs + kc) * kTileElems, 64);
      _tile_dpbf16ps(1, 4, 6);
    }
    if constexpr (G > 2) {
      _tile_loadd(7, B + static_cast<size_t>(2 * kcs + kc) * kTileElems, 64);
      _tile_dpbf16ps(2, 4, 7);
    }
    if constexpr (G > 3) {
      _tile_loadd(5, B + static_cast<size_t>(3 * kcs + kc) * kTileElems, 64);
      _tile_dpbf16ps(3, 4, 5);
    }
  }
  _tile_stored(0, C, 4 * ldc);
  if constexpr (G > 1) _tile_stored(1, C + 16, 4 * ldc);
  if constexpr (G > 2) _tile_stored(2, C + 32, 4 * ldc);
  if constexpr (G > 3) _tile_stored(3, C + 48, 4 * ldc);
}

// C[kRows, 16 ngs) (float32, ldc) = A[kRows, 32 kcs) (bf16, lda) @ packed B.
void gemm(const bf16* A, int lda, const bf16* B, int kcs, int ngs, float* C, int ldc) {
  for (int h = 0; h < kRows; h += kTileRows) {
    const bf16* a = A + static_cast<size_t>(h) * lda;
    float* c = C + static_cast<size_t>(h) * ldc;
    int ng = 0;
    for (; ng + 4 <= ngs; ng += 4)
      tile_group<4>(a, lda, B + static_cast<size_t>(ng) * kcs * kTileElems, kcs, c + 16 * ng, ldc);
    const bf16* b = B + static_cast<size_t>(ng) * kcs * kTileElems;
    switch (ngs - ng) {
      case 3: tile_group<3>(a, lda, b, kcs, c + 16 * ng, ldc); break;
      case 2: tile_group<2>(a, lda, b, kcs, c + 16 * ng, ldc); break;
      case 1: tile_group<1>(a, lda, b, kcs, c + 16 * ng, ldc); break;
      default: break;
    }
  }
}

// 16 x 16 transpose of 32-bit elements: dst[c, r] = src[r, c] (strides in elements).
inline void transpose16(const uint32_t* src, int lds, uint32_t* dst, int ldd) {
  __m512i r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(src + i * lds);
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_si512(dst + i * ldd, r[i]);
}

// dW^T[kp, mp] (float32, stride mp) += X^T G over the block's kRows samples, from X's row pairs xp [kRows / 2, kp]
// (row_pairs or row_pairs_bf16) and G [kRows, mp] float32 (stride ldg; kp, mp multiples of 16). X^T's rows are the
// transposed row pairs, G's pairs are the B operand as they are. xt, gp: scratch of kp * 16, kRows / 2 * mp words.
void weight_grad(const uint32_t* xp, int kp, const float* G, int ldg, int mp, float* dwt, uint32_t* xt, uint32_t* gp) {
  for (int c = 0; c < kp; c += 16) transpose16(xp + c, kp, xt + c * 16, 16);
  bf::row_pairs(G, ldg, mp, gp, mp);
  for (int t = 0; t < kp; t += 16) {
    _tile_loadd(4, xt + t * 16, 64);
    for (int ng = 0; ng < mp; ng += 16) {
      float* c = dwt + static_cast<size_t>(t) * mp + ng;
      _tile_loadd(0, c, 4 * mp);
      _tile_loadd(5, gp + ng, 4 * mp);
      _tile_dpbf16ps(0, 4, 5);
      _tile_stored(0, c, 4 * mp);
    }
  }
}

}  // namespace amx
#endif

Mode mode_for(bool bf16) {
#ifdef FIELDS_MLP_AMX
  if (bf16 && amx::ready()) return Mode::kAMX;
#endif
#ifdef FIELDS_MLP_BF16
  if (bf16) return Mode::kDot;
#endif
  return Mode::kFloat32;
}

#ifdef FIELDS_MLP_BF16
namespace bf {

// One layer's weights W [m, k] as the bfloat16 products read them: `fwd` for x @ W^T (reduction over k), `bwd`
// for g @ W (over m); AMX tiles or dot-product pairs, by mode (either stored as bfloat16 words).
struct PackedLayer {
  std::vector<bf16> fwd, bwd;
};

std::vector<PackedLayer> pack(const std::vector<Tensor>& weights, bool for_backward, Mode mode) {
  std::vector<PackedLayer> out;
  for (const Tensor& w_ : weights) {
    const Tensor w = w_.contiguous();
    const float* wd = w.data_ptr<float>();
    const int m = static_cast<int>(w.size(0)), k = static_cast<int>(w.size(1));
    const auto fwd_at = [&](int kk, int mm) { return wd[static_cast<size_t>(mm) * k + kk]; };
    const auto bwd_at = [&](int mm, int kk) { return wd[static_cast<size_t>(mm) * k + kk]; };
    PackedLayer p;
#ifdef FIELDS_MLP_AMX
    if (mode == Mode::kAMX) {
      if (for_backward)
        p.bwd = amx::pack_b(m, k, bwd_at);
      else
        p.fwd = amx::pack_b(k, m, fwd_at);
      out.push_back(std::move(p));
      continue;
    }
#endif
    if (for_backward)
      p.bwd = pair_b(m, k, bwd_at);
    else
      p.fwd = pair_b(k, m, fwd_at);
    out.push_back(std::move(p));
  }
  return out;
}

// dst[kRows, 16 ngs) (init: zero, or the bias row then the ReLU when `relu`) = a @ B: `a` kRows bfloat16 rows of
// k columns (stride pad32(k)), B packed by `pack` for a reduction over k.
inline void product(Mode mode, const bf16* a, int k, const bf16* B, int ngs, float* dst, const float* bias,
                    bool relu) {
#ifdef FIELDS_MLP_AMX
  if (mode == Mode::kAMX) {
    amx::gemm(a, pad32(k), B, pad32(k) / 32, ngs, dst, 16 * ngs);
    if (bias) bias_relu(dst, 16 * ngs, bias, kRows, 16 * ngs, relu);
    return;
  }
#endif
  const int pairs = pad32(k) / 2;
  gemm(reinterpret_cast<const Pair*>(a), pairs, 1, pairs, reinterpret_cast<const Pair*>(B), 16 * ngs, dst, 16 * ngs,
       kRows, 16 * ngs, bias ? Init::kBias : Init::kZero, bias, relu);
}

// dW^T[kp, mp] (float32, stride mp) += X^T G over the block's kRows samples, from X's row pairs xp [kRows / 2, kp]
// (row_pairs or row_pairs_bf16; k real columns) and G [kRows, mp] float32. xt, gp: scratch of kp * 16 and
// kRows / 2 * mp words.
inline void weight_product(Mode mode, const Pair* xp, int k, int kp, const float* G, int mp, float* dwt, Pair* xt,
                           Pair* gp) {
#ifdef FIELDS_MLP_AMX
  if (mode == Mode::kAMX) {
    amx::weight_grad(xp, kp, G, mp, mp, dwt, xt, gp);
    return;
  }
#endif
  row_pairs(G, mp, mp, gp, mp);
  gemm(xp, 1, kp, kRows / 2, gp, mp, dwt, mp, k, mp, Init::kAccum, nullptr, false);
}

}  // namespace bf
#endif

// The activation of an m-wide hidden layer that the forward saves for the backward: float32 [rows, m padded to 16],
// or in bf16 mode the bfloat16 copy the next layer reads anyway [rows, m padded to 32] (the weight gradients round
// it to bfloat16 too, and its sign is the ReLU mask): half the memory traffic.
Tensor saved_activation(int64_t rows, int m, bool lowp) {
  return lowp ? at::empty({rows, (m + 31) & ~31}, at::kBFloat16) : at::empty({rows, pad16(m)}, at::kFloat);
}

}  // namespace

// Whether bf16 mode runs on AMX here (built for a CPU with AMX-BF16 and the OS lets the process use it).
bool mlp_amx() { return mode_for(true) == Mode::kAMX; }

// Whether bf16 mode runs in bfloat16 here at all (AMX, or AVX512-BF16 dot products).
bool mlp_bf16() { return mode_for(true) != Mode::kFloat32; }

// Forward. Returns the output [N, M_last] and, when `save`, the post-ReLU activations of the hidden layers
// ([N padded to the block, M_l padded to 16], bfloat16 and padded to 32 in bf16 mode) that the backward reads.
std::tuple<Tensor, std::vector<Tensor>> mlp_fwd(const std::vector<Tensor>& inputs, const std::vector<Tensor>& weights,
                                                 const std::vector<Tensor>& biases, bool relu_out, bool save,
                                                 bool bf16) {
  int64_t n;
  const Parts parts = make_parts(inputs, n);
  const Net net = make_net(weights, biases, relu_out, false);
  TORCH_CHECK(parts.total == net.in_dim(), "mlp: input has ", parts.total, " columns, first layer expects ",
              net.in_dim());
  const size_t n_layers = net.layers.size();
  const Layer& last = net.layers.back();
  Tensor out = at::empty({n, last.m}, inputs[0].options());
  const Mode mode = mode_for(bf16);
  const bool lowp = mode != Mode::kFloat32;
  std::vector<Tensor> hidden;
  const int64_t np = padded_rows(n);
  if (save)
    for (size_t l = 0; l + 1 < n_layers; ++l) hidden.push_back(saved_activation(np, net.layers[l].m, lowp));
  std::vector<float*> hp;
  for (Tensor& h : hidden) hp.push_back(lowp ? nullptr : h.data_ptr<float>());
  float* op = out.data_ptr<float>();
  const int64_t n_blocks = np / kRows;
#ifdef FIELDS_MLP_BF16
  const std::vector<bf::PackedLayer> packed = lowp ? bf::pack(weights, false, mode) : std::vector<bf::PackedLayer>();
#endif
#pragma omp parallel
  {
    std::vector<float> xs(kRows * pad16(parts.total)), s0(kRows * kMaxWidth), s1(kRows * kMaxWidth);
#ifdef FIELDS_MLP_BF16
    std::vector<bf::bf16> xb0(lowp ? kRows * bf::pad32(std::max(parts.total, kMaxWidth)) : 0), xb1(xb0.size());
#endif
#ifdef FIELDS_MLP_AMX
    if (mode == Mode::kAMX) amx::configure();
#endif
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      const int64_t r0 = blk * kRows;
      const int nr = static_cast<int>(std::min<int64_t>(kRows, n - r0));
      gather_rows(parts, r0, nr, xs.data(), pad16(parts.total));
      const float* in = xs.data();
      int ldi = pad16(parts.total);
#ifdef FIELDS_MLP_BF16
      const bf::bf16* a = xb0.data();
      if (lowp) bf::rows_to_bf16(xs.data(), ldi, parts.total, xb0.data(), bf::pad32(parts.total),
                                 bf::pad32(parts.total), kRows);
#endif
      for (size_t l = 0; l < n_layers; ++l) {
        const Layer& L = net.layers[l];
        float* dst = (save && !lowp && l + 1 < n_layers) ? hp[l] + r0 * L.mp : (l % 2 ? s1.data() : s0.data());
        if (!lowp) {
          gemm(in, ldi, 1, L.k, L.wt.data(), L.mp, dst, L.mp, kRows, L.mp, Init::kBias, L.bias.data(),
               net.relu_after(l));
        } else {
#ifdef FIELDS_MLP_BF16
          bf::product(mode, a, L.k, packed[l].fwd.data(), L.mp / 16, dst, L.bias.data(), net.relu_after(l));
          if (l + 1 < n_layers) {  // the next layer's input, which the backward reads when saved
            bf::bf16* next = save ? bf::bf16_rows(hidden[l], r0) : l % 2 ? xb0.data() : xb1.data();
            bf::rows_to_bf16(dst, L.mp, L.mp, next, bf::pad32(L.m), bf::pad32(L.m), kRows);
            a = next;
          }
#endif
        }
        in = dst;
        ldi = L.mp;
      }
      for (int i = 0; i < nr; ++i) std::memcpy(op + (r0 + i) * last.m, in + i * ldi, sizeof(float) * last.m);
    }
#ifdef FIELDS_MLP_AMX
    if (mode == Mode::kAMX) _tile_release();
#endif
  }
  return {out, hidden};
}

// Backward. Gradients of the inputs that `need_input_grad` asks for (others: empty tensors), of every weight
// [M, K] and every bias [M]. `out` is the forward's output (its sign masks grad_out when relu_out).
std::tuple<std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>> mlp_bwd(
    const Tensor& grad_out_, const std::vector<Tensor>& inputs, const std::vector<Tensor>& hidden, const Tensor& out_,
    const std::vector<Tensor>& weights, const std::vector<Tensor>& biases, bool relu_out,
    const c10::List<bool>& need_input_grad_, bool bf16) {
  const std::vector<bool> need_input_grad = need_input_grad_.vec();
  int64_t n;
  const Parts parts = make_parts(inputs, n);
  const Net net = make_net(weights, biases, relu_out, true);
  const size_t n_layers = net.layers.size();
  TORCH_CHECK(hidden.size() + 1 == n_layers, "mlp: backward needs the forward's saved activations");
  TORCH_CHECK(need_input_grad.size() == inputs.size(), "mlp: one need_input_grad flag per input");
  const Layer& last = net.layers.back();
  Tensor grad_out = grad_out_.to(at::kFloat).contiguous(), out = out_.contiguous();
  TORCH_CHECK(grad_out.sizes() == out.sizes() && out.size(0) == n && out.size(1) == last.m,
              "mlp: grad_out must be [N, ", last.m, "]");
  const int64_t np = padded_rows(n);
  const Mode mode = mode_for(bf16);
  const bool lowp = mode != Mode::kFloat32;
  std::vector<const float*> hp;
  for (size_t l = 0; l + 1 < n_layers; ++l) {
    const Tensor want = saved_activation(0, net.layers[l].m, lowp);
    TORCH_CHECK(hidden[l].is_contiguous() && hidden[l].size(0) == np && hidden[l].size(1) == want.size(1) &&
                    hidden[l].scalar_type() == want.scalar_type(),
                "mlp: saved activation ", l, " has the wrong shape or dtype");
    hp.push_back(lowp ? nullptr : hidden[l].data_ptr<float>());
  }
  std::vector<Tensor> grad_in;
  std::vector<float*> gip;
  bool any_input_grad = false;
  for (size_t q = 0; q < inputs.size(); ++q) {
    grad_in.push_back(need_input_grad[q] ? at::empty_like(inputs[q]) : at::empty({0}, inputs[q].options()));
    gip.push_back(need_input_grad[q] ? grad_in.back().data_ptr<float>() : nullptr);
    any_input_grad = any_input_grad || need_input_grad[q];
  }
  // Per-thread gradient accumulators: for each layer dW^T [kp, mp] then db [mp].
  std::vector<size_t> acc_off;
  size_t acc_size = 0;
  for (const Layer& L : net.layers) {
    acc_off.push_back(acc_size);
    acc_size += static_cast<size_t>(L.kp + 1) * L.mp;
  }
  const int n_threads = omp_get_max_threads();
  std::vector<float> acc(acc_size * n_threads, 0.0f);
  const float* gp = grad_out.data_ptr<float>();
  const float* outp = out.data_ptr<float>();
  const int64_t n_blocks = np / kRows;
  const int ldx = pad16(parts.total);
#ifdef FIELDS_MLP_BF16
  const std::vector<bf::PackedLayer> packed = lowp ? bf::pack(weights, true, mode) : std::vector<bf::PackedLayer>();
#endif
#pragma omp parallel num_threads(n_threads)
  {
    float* my = acc.data() + acc_size * omp_get_thread_num();
    std::vector<float> xs(kRows * ldx), g0(kRows * kMaxWidth), g1(kRows * kMaxWidth);
#ifdef FIELDS_MLP_BF16
    std::vector<bf::bf16> gb(lowp ? kRows * kMaxWidth : 0);
    std::vector<Pair> xp(lowp ? kRows / 2 * kMaxWidth : 0), xt(lowp ? 16 * kMaxWidth : 0), gpairs(xp.size());
#endif
#ifdef FIELDS_MLP_AMX
    if (mode == Mode::kAMX) amx::configure();
#endif
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      const int64_t r0 = blk * kRows;
      const int nr = static_cast<int>(std::min<int64_t>(kRows, n - r0));
      gather_rows(parts, r0, nr, xs.data(), ldx);
      float* g = g0.data();
      float* gn = g1.data();
      std::fill(g, g + kRows * last.mp, 0.0f);
      for (int i = 0; i < nr; ++i) std::memcpy(g + i * last.mp, gp + (r0 + i) * last.m, sizeof(float) * last.m);
      if (relu_out) relu_mask(g, last.mp, outp + r0 * last.m, last.m, nr, last.m);
      for (size_t l = n_layers; l-- > 0;) {
        const Layer& L = net.layers[l];
        const float* in = l == 0 ? xs.data() : lowp ? nullptr : hp[l - 1] + r0 * net.layers[l - 1].mp;
        const int ldi = l == 0 ? ldx : net.layers[l - 1].mp;
        float* dwt = my + acc_off[l];
        float* db = dwt + static_cast<size_t>(L.kp) * L.mp;
        // dW^T[k, m] += sum_r in[r, k] g[r, m]; db[m] += sum_r g[r, m]
        if (!lowp) {
          gemm(in, 1, ldi, kRows, g, L.mp, dwt, L.mp, L.k, L.mp, Init::kAccum, nullptr, false);
        } else {
#ifdef FIELDS_MLP_BF16
          if (l == 0)
            bf::row_pairs(in, ldi, L.kp, xp.data(), L.kp);
          else
            bf::row_pairs_bf16(bf::bf16_rows(hidden[l - 1], r0), bf::pad32(L.k), L.kp, xp.data(), L.kp);
          bf::weight_product(mode, xp.data(), L.k, L.kp, g, L.mp, dwt, xt.data(), gpairs.data());
#endif
        }
        for (int i = 0; i < kRows; ++i)
          for (int c = 0; c < L.mp; ++c) db[c] += g[i * L.mp + c];
        if (l == 0 && !any_input_grad) break;
        // grad of this layer's input: g @ W, masked by the previous ReLU
        if (!lowp) {
          gemm(g, L.mp, 1, L.m, L.wp.data(), L.kp, gn, L.kp, kRows, L.kp, Init::kZero, nullptr, false);
          if (l > 0) relu_mask(gn, L.kp, in, ldi, kRows, L.kp);
        } else {
#ifdef FIELDS_MLP_BF16
          bf::rows_to_bf16(g, L.mp, L.mp, gb.data(), bf::pad32(L.m), bf::pad32(L.m), kRows);
          bf::product(mode, gb.data(), L.m, packed[l].bwd.data(), L.kp / 16, gn, nullptr, false);
          if (l > 0) bf::relu_mask_bf16(gn, L.kp, bf::bf16_rows(hidden[l - 1], r0), bf::pad32(L.k), L.kp);
#endif
        }
        std::swap(g, gn);
      }
      if (any_input_grad) {
        const int ldg = net.layers[0].kp;
        int c0 = 0;
        for (size_t q = 0; q < parts.ptr.size(); ++q) {
          const int k = parts.cols[q];
          if (gip[q])
            for (int i = 0; i < nr; ++i) std::memcpy(gip[q] + (r0 + i) * k, g + i * ldg + c0, sizeof(float) * k);
          c0 += k;
        }
      }
    }
#ifdef FIELDS_MLP_AMX
    if (mode == Mode::kAMX) _tile_release();
#endif
  }
  std::vector<Tensor> grad_w, grad_b;
  for (size_t l = 0; l < n_layers; ++l) {
    const Layer& L = net.layers[l];
    Tensor gw = at::zeros({L.m, L.k}, out.options()), gb = at::zeros({L.m}, out.options());
    float* gwp = gw.data_ptr<float>();
    float* gbp = gb.data_ptr<float>();
    for (int t = 0; t < n_threads; ++t) {
      const float* dwt = acc.data() + acc_size * t + acc_off[l];
      for (int j = 0; j < L.k; ++j)
        for (int i = 0; i < L.m; ++i) gwp[i * L.k + j] += dwt[static_cast<size_t>(j) * L.mp + i];
      for (int i = 0; i < L.m; ++i) gbp[i] += dwt[static_cast<size_t>(L.kp) * L.mp + i];
    }
    grad_w.push_back(gw);
    grad_b.push_back(gb);
  }
  return {grad_in, grad_w, grad_b};
}

}  // namespace cpu
}  // namespace fields
