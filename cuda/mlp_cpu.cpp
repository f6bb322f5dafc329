// Fused forward and backward of the small ReLU MLPs the field backends use, CPU only (C++17 + OpenMP, AVX-512
// or AVX2+FMA intrinsics when compiled with them, plain loops otherwise). The reference is fields/fused_mlp.py's
// relu_mlp_reference; CUDA tensors never reach this file (the Python wrapper runs the reference on them).
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
#include <torch/library.h>
#include <ATen/ATen.h>
#include <omp.h>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#define FIELDS_MLP_AVX2 1
#endif

#include <algorithm>
#include <cstring>
#include <tuple>
#include <vector>

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
// (zero, the bias row `bias`, or C itself), relu clamps the result at 0.
template <int RB, int NV>
inline void micro(const float* __restrict A, int sai, int sar, int nred, const float* __restrict B, int ldb,
                  float* __restrict C, int ldc, Init init, const float* __restrict bias, bool relu) {
#ifdef __AVX512F__
  __m512 acc[RB][NV];
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < NV; ++j)
      acc[i][j] = init == Init::kAccum  ? _mm512_loadu_ps(C + i * ldc + 16 * j)
                  : init == Init::kBias ? _mm512_loadu_ps(bias + 16 * j)
                                        : _mm512_setzero_ps();
  for (int r = 0; r < nred; ++r) {
    __m512 b[NV];
    for (int j = 0; j < NV; ++j) b[j] = _mm512_loadu_ps(B + r * ldb + 16 * j);
    for (int i = 0; i < RB; ++i) {
      const __m512 a = _mm512_set1_ps(A[i * sai + r * sar]);
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(a, b[j], acc[i][j]);
    }
  }
  const __m512 zero = _mm512_setzero_ps();
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < NV; ++j)
      _mm512_storeu_ps(C + i * ldc + 16 * j, relu ? _mm512_max_ps(acc[i][j], zero) : acc[i][j]);
#elif defined(FIELDS_MLP_AVX2)
  __m256 acc[RB][2 * NV];
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < 2 * NV; ++j)
      acc[i][j] = init == Init::kAccum  ? _mm256_loadu_ps(C + i * ldc + 8 * j)
                  : init == Init::kBias ? _mm256_loadu_ps(bias + 8 * j)
                                        : _mm256_setzero_ps();
  for (int r = 0; r < nred; ++r) {
    __m256 b[2 * NV];
    for (int j = 0; j < 2 * NV; ++j) b[j] = _mm256_loadu_ps(B + r * ldb + 8 * j);
    for (int i = 0; i < RB; ++i) {
      const __m256 a = _mm256_broadcast_ss(A + i * sai + r * sar);
      for (int j = 0; j < 2 * NV; ++j) acc[i][j] = _mm256_fmadd_ps(a, b[j], acc[i][j]);
    }
  }
  const __m256 zero = _mm256_setzero_ps();
  for (int i = 0; i < RB; ++i)
    for (int j = 0; j < 2 * NV; ++j)
      _mm256_storeu_ps(C + i * ldc + 8 * j, relu ? _mm256_max_ps(acc[i][j], zero) : acc[i][j]);
#else
  float acc[RB][16 * NV];
  for (int i = 0; i < RB; ++i)
    for (int c = 0; c < 16 * NV; ++c)
      acc[i][c] = init == Init::kAccum ? C[i * ldc + c] : init == Init::kBias ? bias[c] : 0.0f;
  for (int r = 0; r < nred; ++r)
    for (int i = 0; i < RB; ++i) {
      const float a = A[i * sai + r * sar];
      for (int c = 0; c < 16 * NV; ++c) acc[i][c] += a * B[r * ldb + c];
    }
  for (int i = 0; i < RB; ++i)
    for (int c = 0; c < 16 * NV; ++c) C[i * ldc + c] = relu ? std::max(acc[i][c], 0.0f) : acc[i][c];
#endif
}

// One column group of up to 4 vectors over `rows` rows of C (any count: a 1-row tile takes the tail).
template <int NV>
void micro_rows(const float* A, int sai, int sar, int nred, const float* B, int ldb, float* C, int ldc, int rows,
                Init init, const float* bias, bool relu) {
#ifdef FIELDS_MLP_AVX2
  constexpr int RB = 6;  // NV is 1: 12 accumulators + 2 loads + 1 broadcast of the 16 registers
#else
  constexpr int RB = NV >= 3 ? 4 : 8;  // <= 16 accumulators + NV loads: fits the 32 vector registers
#endif
  int i = 0;
  for (; i + RB <= rows; i += RB)
    micro<RB, NV>(A + i * sai, sai, sar, nred, B, ldb, C + i * ldc, ldc, init, bias, relu);
  for (; i + 2 <= rows; i += 2)
    micro<2, NV>(A + i * sai, sai, sar, nred, B, ldb, C + i * ldc, ldc, init, bias, relu);
  for (; i < rows; ++i) micro<1, NV>(A + i * sai, sai, sar, nred, B, ldb, C + i * ldc, ldc, init, bias, relu);
}

// C[rows, cols] (op)= A[rows, nred] @ B[nred, cols], cols a multiple of 16, split in groups of kGroupCols.
void gemm(const float* A, int sai, int sar, int nred, const float* B, int ldb, float* C, int ldc, int rows,
          int cols, Init init, const float* bias, bool relu) {
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

// Forward. Returns the output [N, M_last] and, when `save`, the post-ReLU activations of the hidden layers
// ([N padded to the block, M_l padded to 16]) that the backward reads.
std::tuple<Tensor, std::vector<Tensor>> mlp_fwd(const std::vector<Tensor>& inputs, const std::vector<Tensor>& weights,
                                                 const std::vector<Tensor>& biases, bool relu_out, bool save) {
  int64_t n;
  const Parts parts = make_parts(inputs, n);
  const Net net = make_net(weights, biases, relu_out, false);
  TORCH_CHECK(parts.total == net.in_dim(), "mlp: input has ", parts.total, " columns, first layer expects ",
              net.in_dim());
  const size_t n_layers = net.layers.size();
  const Layer& last = net.layers.back();
  Tensor out = at::empty({n, last.m}, inputs[0].options());
  std::vector<Tensor> hidden;
  const int64_t np = padded_rows(n);
  if (save)
    for (size_t l = 0; l + 1 < n_layers; ++l) hidden.push_back(at::empty({np, net.layers[l].mp}, out.options()));
  std::vector<float*> hp;
  for (Tensor& h : hidden) hp.push_back(h.data_ptr<float>());
  float* op = out.data_ptr<float>();
  const int64_t n_blocks = np / kRows;
#pragma omp parallel
  {
    std::vector<float> xs(kRows * pad16(parts.total)), s0(kRows * kMaxWidth), s1(kRows * kMaxWidth);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      const int64_t r0 = blk * kRows;
      const int nr = static_cast<int>(std::min<int64_t>(kRows, n - r0));
      gather_rows(parts, r0, nr, xs.data(), pad16(parts.total));
      const float* in = xs.data();
      int ldi = pad16(parts.total);
      for (size_t l = 0; l < n_layers; ++l) {
        const Layer& L = net.layers[l];
        float* dst = (save && l + 1 < n_layers) ? hp[l] + r0 * L.mp : (l % 2 ? s1.data() : s0.data());
        gemm(in, ldi, 1, L.k, L.wt.data(), L.mp, dst, L.mp, kRows, L.mp, Init::kBias, L.bias.data(),
             net.relu_after(l));
        in = dst;
        ldi = L.mp;
      }
      for (int i = 0; i < nr; ++i) std::memcpy(op + (r0 + i) * last.m, in + i * ldi, sizeof(float) * last.m);
    }
  }
  return {out, hidden};
}

// Backward. Gradients of the inputs that `need_input_grad` asks for (others: empty tensors), of every weight
// [M, K] and every bias [M]. `out` is the forward's output (its sign masks grad_out when relu_out).
std::tuple<std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>> mlp_bwd(
    const Tensor& grad_out_, const std::vector<Tensor>& inputs, const std::vector<Tensor>& hidden, const Tensor& out_,
    const std::vector<Tensor>& weights, const std::vector<Tensor>& biases, bool relu_out,
    const c10::List<bool>& need_input_grad_) {
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
  std::vector<const float*> hp;
  for (size_t l = 0; l + 1 < n_layers; ++l) {
    TORCH_CHECK(hidden[l].is_contiguous() && hidden[l].size(0) == np && hidden[l].size(1) == net.layers[l].mp,
                "mlp: saved activation ", l, " has the wrong shape");
    hp.push_back(hidden[l].data_ptr<float>());
  }
  std::vector<Tensor> grad_in;
  std::vector<float*> gip;
  bool any_input_grad = false;
  for (size_t q = 0; q < inputs.size(); ++q) {
    grad_in.push_back(need_input_grad[q] ? at::empty_like(inputs[q]) : at::empty({0}, inputs[q].options()));
    gip.push_back(need_input_grad[q] ? grad_in.back().data_ptr<float>() : nullptr);
    any_input_grad = any_input_grad || need_input_grad[q];
  }
  // Per-thread gradient accumulators: for each layer dW^T [k, mp] then db [mp].
  std::vector<size_t> acc_off;
  size_t acc_size = 0;
  for (const Layer& L : net.layers) {
    acc_off.push_back(acc_size);
    acc_size += static_cast<size_t>(L.k + 1) * L.mp;
  }
  const int n_threads = omp_get_max_threads();
  std::vector<float> acc(acc_size * n_threads, 0.0f);
  const float* gp = grad_out.data_ptr<float>();
  const float* outp = out.data_ptr<float>();
  const int64_t n_blocks = np / kRows;
  const int ldx = pad16(parts.total);
#pragma omp parallel num_threads(n_threads)
  {
    float* my = acc.data() + acc_size * omp_get_thread_num();
    std::vector<float> xs(kRows * ldx), g0(kRows * kMaxWidth), g1(kRows * kMaxWidth);
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
        const float* in = l == 0 ? xs.data() : hp[l - 1] + r0 * net.layers[l - 1].mp;
        const int ldi = l == 0 ? ldx : net.layers[l - 1].mp;
        float* dwt = my + acc_off[l];
        float* db = dwt + static_cast<size_t>(L.k) * L.mp;
        // dW^T[k, m] += sum_r in[r, k] g[r, m]; db[m] += sum_r g[r, m]
        gemm(in, 1, ldi, kRows, g, L.mp, dwt, L.mp, L.k, L.mp, Init::kAccum, nullptr, false);
        for (int i = 0; i < kRows; ++i)
          for (int c = 0; c < L.mp; ++c) db[c] += g[i * L.mp + c];
        if (l == 0 && !any_input_grad) break;
        // grad of this layer's input: g @ W, masked by the previous ReLU
        gemm(g, L.mp, 1, L.m, L.wp.data(), L.kp, gn, L.kp, kRows, L.kp, Init::kZero, nullptr, false);
        if (l > 0) relu_mask(gn, L.kp, in, ldi, kRows, L.kp);
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
      for (int i = 0; i < L.m; ++i) gbp[i] += dwt[static_cast<size_t>(L.k) * L.mp + i];
    }
    grad_w.push_back(gw);
    grad_b.push_back(gb);
  }
  return {grad_in, grad_w, grad_b};
}

}  // namespace

// Own fragment of the `fields` op library, so the shared bindings.cpp needs no edit for this CPU-only op.
TORCH_LIBRARY_FRAGMENT(fields, m) {
  m.def("mlp_fwd(Tensor[] inputs, Tensor[] weights, Tensor[] biases, bool relu_out, bool save)"
        " -> (Tensor, Tensor[])");
  m.def("mlp_bwd(Tensor grad_out, Tensor[] inputs, Tensor[] hidden, Tensor out, Tensor[] weights, Tensor[] biases,"
        " bool relu_out, bool[] need_input_grad) -> (Tensor[], Tensor[], Tensor[])");
}

TORCH_LIBRARY_IMPL(fields, CPU, m) {
  m.impl("mlp_fwd", &mlp_fwd);
  m.impl("mlp_bwd", &mlp_bwd);
}
