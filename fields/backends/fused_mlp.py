"""Small ReLU MLPs on the fused native CPU kernel (``cuda/cpu/mlp.cpp``), with a plain-PyTorch oracle.

``relu_mlp(parts, weights, biases)`` is ``Linear -> ReLU -> ... -> Linear`` (a ReLU after the last layer too with
``relu_out``) on the column-wise concatenation of ``parts``. On float32 CPU tensors with the native build it runs
one fused forward and one fused backward (blocks of samples through all layers in cache, no per-layer [N, width]
temporaries besides the activations the backward needs). With AVX-512: about 1.3x less CPU time than torch's
per-layer ops for the hash grid's 64-wide nets, on par at width 128 (both measured before the micro-kernel's
tiles were unrolled, when g++ kept its accumulators on the stack); with AVX2 (no AVX-512, AMD Zen 3, 1 thread, 200k
rows): the hash grid's density net forward in 25 ms against torch's 102, its colour net in 56 against 215; the
unrolling took the colour net's forward from 98 to 56 ms and its forward+backward from 379 to 228. With ``bf16`` the products take
bfloat16 operands: on a CPU with AMX-BF16 on AMX tiles (the hash grid's MLPs forward+backward ~1.3x faster in a
lego step, 8.8 -> 6.7 ms, the same PSNR), else with AVX512-BF16 as dot products of bfloat16 pairs (Zen 4: ~1.8x
faster than float32, 18 -> 10 ms on 30k samples; lego +23% steps in 120 s, +0.2 dB). Elsewhere (CUDA tensors,
``FIELDS_NATIVE=0``, no compiler, CPU autocast to bfloat16) it is ``relu_mlp_reference``. ``ReLUMLP`` is the
``nn.Sequential`` form (same parameter names as before) that ``fields.backends.base.mlp`` builds.

``modulated_relu(h, gamma, beta)`` is CAM's activation, ``relu(gamma * layer_norm(h) + beta)``, on the fused
native kernel (``cuda/cpu/modulate.cpp``, float32 or bfloat16 ``h``) with ``modulated_relu_reference`` as oracle.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from renderers import native
from renderers.native.autograd import FusedMLP, ModulatedReLU


def relu_mlp_reference(parts: Sequence[torch.Tensor], weights: Sequence[torch.Tensor],
                       biases: Sequence[torch.Tensor], relu_out: bool = False) -> torch.Tensor:
    """The oracle: ``torch.cat(parts, -1)`` through the linear layers with a ReLU between them."""
    h = torch.cat(list(parts), -1) if len(parts) > 1 else parts[0]
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = F.linear(h, w, b)
        if relu_out or i < len(weights) - 1:
            h = torch.relu(h)
    return h


def relu_mlp(parts: Sequence[torch.Tensor], weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
             relu_out: bool = False, bf16: bool = False) -> torch.Tensor:
    """``relu_mlp_reference`` on the fused native kernel when it can run (float32 CPU tensors, native build).
    ``bf16``: where the native build multiplies bfloat16 (``torch.ops.fields.mlp_bf16()``: AMX tiles, reported by
    ``mlp_amx()``, or AVX512-BF16 dot products), every matrix product (forward, input and weight gradients) takes
    bfloat16 operands with float32 accumulation; biases, activations and outputs stay float32. Ignored elsewhere."""
    tensors = (*parts, *weights, *biases)
    on_cpu = all(t.device.type == "cpu" for t in tensors) and not torch.is_autocast_enabled("cpu")
    ops = native.ops_for(*tensors) if on_cpu else None
    if ops is None:
        return relu_mlp_reference(parts, weights, biases, relu_out)
    parts = [p.contiguous() for p in parts]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return FusedMLP.apply(relu_out, bf16, len(parts), *parts, *weights, *biases)
    return ops.mlp_fwd(parts, weights, biases, relu_out, False, bf16)[0]


LAYER_NORM_EPS = 1e-5
"""``F.layer_norm``'s default."""


def modulated_relu_reference(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The oracle: ``relu(gamma * layer_norm(h) + beta)``, the layer norm over each row of ``h`` [N, W] without
    a learned affine, ``gamma`` and ``beta`` [N, 1] one scalar per row."""
    return torch.relu(torch.addcmul(beta, F.layer_norm(h, (h.shape[-1],), eps=LAYER_NORM_EPS), gamma))


def modulated_relu(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``modulated_relu_reference`` on the fused native kernel when it can run (CPU, float32 or bfloat16 ``h``,
    one gamma and beta per row, native build); the result has ``h``'s dtype there."""
    if (h.device.type != "cpu" or h.dtype not in (torch.float32, torch.bfloat16) or native.native_ops() is None
            or gamma.device.type != "cpu" or not gamma.numel() == beta.numel() == h.shape[0]):
        return modulated_relu_reference(h, gamma, beta)
    return ModulatedReLU.apply(h.contiguous(), gamma, beta, LAYER_NORM_EPS)


class ReLUMLP(nn.Sequential):
    """``Linear, ReLU, ..., Linear`` run by ``relu_mlp``; ``forward(*parts)`` takes the input in column blocks
    (e.g. ``net(sh, geo)`` instead of ``net(torch.cat([sh, geo], -1))``)."""

    def __init__(self, dims: Sequence[int], bf16: bool = False):
        self.bf16 = bf16
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-2], dims[1:-1]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        mods.append(nn.Linear(dims[-2], dims[-1]))
        super().__init__(*mods)

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        linears = list(self)[::2]
        return relu_mlp(parts, [m.weight for m in linears], [m.bias for m in linears], bf16=self.bf16)
