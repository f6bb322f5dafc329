// The fused ReLU MLP of cpu/mlp.cpp, CPU only. Unlike the kernels of common/kernels.h it works on tensors itself:
// the activations its forward saves for its backward have a layout of its own (rows padded to its block size,
// columns to its vector width, bfloat16 in bf16 mode), so it allocates and checks them where they are defined.
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

namespace fields {
namespace cpu {

// Forward: the output [N, M_last] and, when `save`, the hidden activations the backward reads.
std::tuple<at::Tensor, std::vector<at::Tensor>> mlp_fwd(const std::vector<at::Tensor>& inputs,
                                                         const std::vector<at::Tensor>& weights,
                                                         const std::vector<at::Tensor>& biases, bool relu_out,
                                                         bool save, bool bf16);
// Backward: gradients of the inputs `need_input_grad` asks for (others empty), of every weight and every bias.
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_bwd(
    const at::Tensor& grad_out, const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& hidden,
    const at::Tensor& out, const std::vector<at::Tensor>& weights, const std::vector<at::Tensor>& biases,
    bool relu_out, const c10::List<bool>& need_input_grad, bool bf16);
// Whether bf16 mode runs on AMX tiles here.
bool mlp_amx();
// Whether bf16 mode multiplies in bfloat16 here at all (AMX, or AVX512-BF16 dot products).
bool mlp_bf16();

}  // namespace cpu
}  // namespace fields
