"""Input encodings shared by the field backends.

- ``HashEncoding``: Instant-NGP's multiresolution hash encoding (Mueller et al. 2022); ``hash_encode`` runs the
  native kernel (``renderers.native``) when it is built and ``hash_encode_reference``, its plain-PyTorch
  oracle, otherwise.
- ``sh_encode``: real spherical harmonics of a unit direction, up to degree 4 (16 coefficients); a native CPU op
  when no gradient is needed, ``sh_encode_reference`` otherwise.
- ``sh_color``: 3D Gaussians' colours from their SH coefficients along view directions, differentiable; the native
  kernel (CPU and CUDA builds) or ``sh_color_reference``.
- ``trunc_exp``: exp with a clamped gradient, the usual density activation for hash grids.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from renderers import native
from renderers.native.autograd import HashEncode, ShColor

PRIMES = (1, 2654435761, 805459861)  # Instant-NGP's spatial hash primes (first is 1 for coherence)


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """``exp(x)`` whose gradient is clamped at ``exp(15)`` so large pre-activations cannot explode."""
    return _TruncExp.apply(x)


def level_resolutions(n_levels: int, base_resolution: int, max_resolution: int) -> list[int]:
    """Grid resolution of each level: a geometric series from ``base_resolution`` to ``max_resolution``."""
    if n_levels == 1:
        return [base_resolution]
    b = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (n_levels - 1))
    return [int(math.floor(base_resolution * b**level)) for level in range(n_levels)]


class _Gather(torch.autograd.Function):
    """``table[idx]`` whose backward is one 1-D ``index_add`` per feature column (several times faster on CPU
    than embedding's backward or a 2-D index_add)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.rows = table.shape[0]
        return table.index_select(0, idx)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (idx,) = ctx.saved_tensors
        grad = g.new_zeros(g.shape[1], ctx.rows)
        for f in range(g.shape[1]):
            grad[f].index_add_(0, idx, g[:, f].contiguous())
        return grad.t(), None


def _as_int32(v: int) -> int:
    """A uint32 constant as the int32 with the same bits (int32 products then wrap like uint32 ones)."""
    return v - (1 << 32) if v >= 1 << 31 else v


PRIMES32 = tuple(_as_int32(p) for p in PRIMES)


def hash_encode(x: torch.Tensor, table: torch.Tensor, resolutions: torch.Tensor) -> torch.Tensor:
    """Multiresolution hash encoding (see ``hash_encode_reference``): the native kernel when available."""
    ops = native.ops_for(x, table)
    if ops is None:
        return hash_encode_reference(x, table, resolutions)
    return HashEncode.apply(x.contiguous(), table, resolutions)


def hash_encode_reference(x: torch.Tensor, table: torch.Tensor, resolutions: torch.Tensor) -> torch.Tensor:
    """Multiresolution hash encoding of points ``x`` [N, 3] in [0, 1]^3 with ``table`` [L, T, F].

    Returns [N, L * F]: per level, trilinear interpolation of the features at the 8 surrounding vertices of a
    grid with ``resolutions[l]`` cells per side. Levels whose (res+1)^3 vertices fit in the table are indexed
    densely (x fastest); the others hash vertex ``(i, j, k)`` to ``(i * 1 ^ j * 2654435761 ^ k * 805459861)
    mod T`` in uint32 arithmetic, as Instant-NGP does. Differentiable w.r.t. ``table`` and ``x``.

    CPU notes: vertex terms are built per axis ([N, L, 2]) and combined by broadcasting, in int32, so the
    integer work is a fraction of the naive [N, L, 8, 3] int64 version.
    """
    n, (n_levels, table_size, n_feat) = x.shape[0], table.shape
    res = resolutions.to(x.dtype)
    pos = x[:, None, :] * res[None, :, None]  # [N, L, 3]
    base = torch.floor(pos).clamp(max=res[None, :, None] - 1)  # x == 1 stays in the last cell
    frac = pos - base
    # [N, L, 3, 2]: lower/upper vertex per axis
    ax = base.int()[..., None] + torch.arange(2, dtype=torch.int32, device=x.device)
    side = (resolutions + 1).int()
    dense_levels = (resolutions + 1) ** 3 <= table_size
    # Per-axis terms: dense levels use strides (1, side, side^2), hashed levels the primes.
    stride = torch.where(dense_levels[:, None], torch.stack([torch.ones_like(side), side, side * side], -1),
                         torch.tensor(PRIMES32, dtype=torch.int32, device=x.device))  # [L, 3]
    t = ax * stride[None, :, :, None]  # [N, L, 3, 2]
    tx, ty, tz = t[:, :, 0, :, None, None], t[:, :, 1, None, :, None], t[:, :, 2, None, None, :]
    dense_idx, hashed_idx = tx + ty + tz, (tx ^ ty ^ tz) & (table_size - 1)
    idx = torch.where(dense_levels[:, None, None, None], dense_idx, hashed_idx)
    idx = idx + (torch.arange(n_levels, dtype=torch.int32, device=x.device) * table_size)[:, None, None, None]
    feats = _Gather.apply(table.reshape(-1, n_feat), idx.reshape(-1)).reshape(n, n_levels, 8, n_feat)
    wa = torch.stack([1 - frac, frac], -1)  # [N, L, 3, 2]
    w = (wa[:, :, 0, :, None, None] * wa[:, :, 1, None, :, None] * wa[:, :, 2, None, None, :]).reshape(n, n_levels, 8)
    return (feats * w[..., None]).sum(2).reshape(n, n_levels * n_feat)


class HashEncoding(nn.Module):
    """Learnable multiresolution hash encoding; input in [0, 1]^3, output ``n_levels * n_features``."""

    def __init__(self, n_levels: int = 16, n_features: int = 2, log2_table_size: int = 19,
                 base_resolution: int = 16, max_resolution: int = 2048):
        super().__init__()
        res = level_resolutions(n_levels, base_resolution, max_resolution)
        self.register_buffer("resolutions", torch.tensor(res, dtype=torch.long), persistent=False)
        self.table = nn.Parameter(torch.empty(n_levels, 2**log2_table_size, n_features).uniform_(-1e-4, 1e-4))
        self.out_dim = n_levels * n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hash_encode(x, self.table, self.resolutions)


def sh_encode(d: torch.Tensor, degree: int = 4) -> torch.Tensor:
    """``sh_encode_reference`` on the native CPU op (``cuda/cpu/sh.cpp``, one pass per row) when ``d`` is float32 on
    the CPU, needs no gradient and the native build is there."""
    cpu_no_grad = d.device.type == "cpu" and d.dim() == 2 and not (d.requires_grad and torch.is_grad_enabled())
    ops = native.ops_for(d) if cpu_no_grad else None
    if ops is None:
        return sh_encode_reference(d, degree)
    return ops.sh_encode(d, degree)


def sh_color(dirs: torch.Tensor, sh0: torch.Tensor, shN: torch.Tensor, bands: int) -> torch.Tensor:
    """``sh_color_reference`` on the native kernel (one pass per Gaussian, forward and backward) when the build can
    run on these tensors: torch's broadcast product and sum over [N, 16, 3] cost 42 ms of CPU a step, forward and
    backward, for 80k Gaussians."""
    if native.ops_for(dirs, sh0, shN) is None:
        return sh_color_reference(dirs, sh0, shN, bands)
    return ShColor.apply(dirs, sh0, shN, bands)


def sh_color_reference(dirs: torch.Tensor, sh0: torch.Tensor, shN: torch.Tensor, bands: int) -> torch.Tensor:
    """3DGS's colour RGB [N, 3] (>= 0) of Gaussians with SH coefficients ``sh0`` [N, 1, 3] and ``shN`` [N, M, 3]
    seen along unit directions ``dirs`` [N, 3], with the first ``bands`` bands (1..4; shN's first bands^2 - 1
    rows): the basis dotted with the coefficients, plus 0.5, clamped at 0."""
    coeffs = torch.cat([sh0, shN[:, : bands * bands - 1]], 1)
    return ((sh_encode_reference(dirs, bands)[:, :, None] * coeffs).sum(1) + 0.5).clamp_min(0)


def sh_encode_reference(d: torch.Tensor, degree: int = 4) -> torch.Tensor:
    """Real spherical harmonics of unit directions ``d`` [N, 3]: degree**2 values per direction (degree 1..4),
    with the constants and sign convention of tiny-cuda-nn's SphericalHarmonics encoding."""
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree > 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree > 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [1.0925484305920792 * xy, -1.0925484305920792 * yz, 0.94617469575755997 * zz - 0.31539156525251999,
                -1.0925484305920792 * xz, 0.54627421529603959 * (xx - yy)]
    if degree > 3:
        out += [0.59004358992664352 * y * (-3.0 * xx + yy), 2.8906114426405538 * xy * z,
                0.45704579946446572 * y * (1.0 - 5.0 * zz), 0.3731763325901154 * z * (5.0 * zz - 3.0),
                0.45704579946446572 * x * (1.0 - 5.0 * zz), 1.4453057213202769 * z * (xx - yy),
                0.59004358992664352 * x * (-xx + 3.0 * yy)]
    return torch.stack(out, -1)
