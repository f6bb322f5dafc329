"""Every autograd Function around the native ops (``torch.ops.fields``), in one place.

Each one runs a native forward op and its native backward op; none of them decides whether the native path can run
(float32, a device the build supports, the build loaded): the public functions that apply them check that with
``loader.ops_for`` first and run their plain-PyTorch reference otherwise (see the package docstring for where each
lives). Gradients that autograd hands over as ``None`` are passed to the kernels as zeros.
"""

from __future__ import annotations

import torch


def _dense(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``grad`` made contiguous, or zeros shaped like ``like`` where autograd gave no gradient."""
    return torch.zeros_like(like) if grad is None else grad.contiguous()


class HashEncode(torch.autograd.Function):
    """Native hash encoding; backward returns the table gradient and, when ``x`` requires it, the input's."""

    @staticmethod
    def forward(ctx, x, table, resolutions):
        ctx.save_for_backward(x, table, resolutions)
        return torch.ops.fields.hash_encode_fwd(x, table, resolutions)

    @staticmethod
    def backward(ctx, grad_out):
        x, table, resolutions = ctx.saved_tensors
        grad_table, grad_x = torch.ops.fields.hash_encode_bwd(grad_out.contiguous(), x, table, resolutions,
                                                              ctx.needs_input_grad[0])
        return (grad_x if ctx.needs_input_grad[0] else None), grad_table, None


class Composite(torch.autograd.Function):
    """Native packed compositing: weights, rgb, opacity, depth; differentiable w.r.t. sigmas and rgbs.
    ``offsets`` are the CSR offsets of the packed samples (``renderers.compositing.csr_offsets``)."""

    @staticmethod
    def forward(ctx, sigmas, rgbs, t_starts, t_ends, offsets):
        out = torch.ops.fields.composite_fwd(sigmas, rgbs, t_starts, t_ends, offsets)
        ctx.save_for_backward(sigmas, rgbs, t_starts, t_ends, offsets)
        return out

    @staticmethod
    def backward(ctx, g_weights, g_rgb, g_opacity, g_depth):
        sigmas, rgbs, t_starts, t_ends, offsets = ctx.saved_tensors
        n_rays = offsets.numel() - 1

        def dense(g, *shape):
            return torch.zeros(*shape, dtype=sigmas.dtype, device=sigmas.device) if g is None else g.contiguous()

        grad_sigmas, grad_rgbs = torch.ops.fields.composite_bwd(
            None if g_weights is None else g_weights.contiguous(), dense(g_rgb, n_rays, 3),
            dense(g_opacity, n_rays), dense(g_depth, n_rays), sigmas, rgbs, t_starts, t_ends, offsets)
        return grad_sigmas, grad_rgbs, None, None, None


class FusedMLP(torch.autograd.Function):
    """The fused ReLU MLP (CPU): ``apply(relu_out, bf16, n_parts, *parts, *weights, *biases)``; the forward saves
    the hidden activations its backward reads."""

    @staticmethod
    def forward(ctx, relu_out: bool, bf16: bool, n_parts: int, *tensors: torch.Tensor) -> torch.Tensor:
        parts, n_layers = tensors[:n_parts], (len(tensors) - n_parts) // 2
        weights, biases = tensors[n_parts:n_parts + n_layers], tensors[n_parts + n_layers:]
        out, hidden = torch.ops.fields.mlp_fwd(parts, weights, biases, relu_out, True, bf16)
        ctx.relu_out, ctx.bf16, ctx.n_parts, ctx.n_hidden = relu_out, bf16, n_parts, len(hidden)
        ctx.save_for_backward(*parts, *weights, *biases, out, *hidden)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        saved = ctx.saved_tensors
        n_parts, n_layers = ctx.n_parts, ctx.n_hidden + 1
        parts, rest = saved[:n_parts], saved[n_parts:]
        weights, biases = rest[:n_layers], rest[n_layers:2 * n_layers]
        out, hidden = rest[2 * n_layers], rest[2 * n_layers + 1:]
        need = [bool(n) for n in ctx.needs_input_grad[3:3 + n_parts]]
        grad_parts, grad_w, grad_b = torch.ops.fields.mlp_bwd(grad_out, parts, hidden, out, weights, biases,
                                                              ctx.relu_out, need, ctx.bf16)
        return (None, None, None, *(g if n else None for g, n in zip(grad_parts, need)), *grad_w, *grad_b)


class ModulatedReLU(torch.autograd.Function):
    """``relu(gamma * layer_norm(h) + beta)`` (CPU, float32 or bfloat16 ``h``, one gamma and beta per row);
    the backward recomputes the normalised rows from the saved mean and 1/std."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
        g, b = gamma.reshape(-1).float().contiguous(), beta.reshape(-1).float().contiguous()
        y, mean, rstd = torch.ops.fields.modulated_relu_fwd(h, g, b, eps)
        ctx.save_for_backward(h, g, b, mean, rstd)
        ctx.shapes = gamma.shape, beta.shape
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dh, dgamma, dbeta = torch.ops.fields.modulated_relu_bwd(grad, *ctx.saved_tensors)
        return dh, dgamma.reshape(ctx.shapes[0]), dbeta.reshape(ctx.shapes[1]), None


class ProjectGaussians(torch.autograd.Function):
    """Native projection of 3-D Gaussians (means2d, conics, depths, radii, anti-aliasing compensations); backward
    gives the means', quaternions' and scales' gradients and, where ``viewmat`` requires grad (a camera being
    refined), the view matrix's (summed over the Gaussians; not computed otherwise). ``viewmat`` [3, 4] is the
    OpenCV world-to-camera matrix on the CPU, ``intrinsics`` (fx, fy, cx, cy, width, height, near)."""

    @staticmethod
    def forward(ctx, means, quats, scales, viewmat, intrinsics):
        means2d, conics, depths, radii, comps = torch.ops.fields.splat_project_fwd(means, quats, scales, viewmat,
                                                                                  *intrinsics)
        ctx.save_for_backward(means, quats, scales, viewmat)
        ctx.intrinsics = intrinsics
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii, comps

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii, v_comps):
        means, quats, scales, viewmat = ctx.saved_tensors
        wants_view = ctx.needs_input_grad[3]
        v_means, v_quats, v_scales, v_view = torch.ops.fields.splat_project_bwd(
            _dense(v_means2d, means[:, :2]), _dense(v_conics, means), _dense(v_depths, means[:, 0]),
            _dense(v_comps, means[:, 0]), means, quats, scales, viewmat, *ctx.intrinsics, wants_view)
        return v_means, v_quats, v_scales, v_view.to(viewmat.device) if wants_view else None, None


class RasterizeGaussians(torch.autograd.Function):
    """Native tile rasterizer on binned Gaussians (``splat_bin``'s ids and tile offsets, ``size`` = (width, height,
    tile_size)); saves each pixel's final transmittance and last Gaussian for the back-to-front backward pass."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, ids, offsets, size):
        image, alpha, final_T, last = torch.ops.fields.splat_rasterize_fwd(means2d, conics, colors, opacities, ids,
                                                                          offsets, *size)
        ctx.save_for_backward(means2d, conics, colors, opacities, ids, offsets, final_T, last)
        ctx.size = size
        return image, alpha

    @staticmethod
    def backward(ctx, v_image, v_alpha):
        means2d, conics, colors, opacities, ids, offsets, final_T, last = ctx.saved_tensors
        v_image = _dense(v_image, final_T[..., None].expand(-1, -1, colors.shape[1]))
        grads = torch.ops.fields.splat_rasterize_bwd(v_image, _dense(v_alpha, final_T), means2d, conics, colors,
                                                     opacities, ids, offsets, final_T, last, *ctx.size)
        return (*grads, None, None, None)


class ShColor(torch.autograd.Function):
    """Native 3DGS colour from spherical harmonics: ``rgb = max(basis(dirs) . (sh0 | shN[:, :bands^2 - 1]) + 0.5,
    0)``; backward gives the directions' and both coefficient tensors' gradients (shN's unused rows get zeros)."""

    @staticmethod
    def forward(ctx, dirs, sh0, shN, bands):
        ctx.save_for_backward(dirs, sh0, shN)
        ctx.bands = bands
        return torch.ops.fields.sh_color_fwd(dirs, sh0, shN, bands)

    @staticmethod
    def backward(ctx, v_rgb):
        dirs, sh0, shN = ctx.saved_tensors
        v_dirs, v_sh0, v_shN = torch.ops.fields.sh_color_bwd(v_rgb.contiguous(), dirs, sh0, shN, ctx.bands)
        return v_dirs if ctx.needs_input_grad[0] else None, v_sh0, v_shN, None


class Ssim(torch.autograd.Function):
    """Native SSIM map [H, W] of ``x`` against the target ``y`` (both [H, W, C]) with the 1-D window ``window``;
    backward gives ``x``'s gradient only (the target is data)."""

    @staticmethod
    def forward(ctx, x, y, window, c1, c2, eps):
        ssim_map, partials = torch.ops.fields.ssim_fwd(x, y, window, c1, c2, eps)
        ctx.save_for_backward(x, y, window, partials)
        return ssim_map

    @staticmethod
    def backward(ctx, v_map):
        x, y, window, partials = ctx.saved_tensors
        return torch.ops.fields.ssim_bwd(v_map.contiguous(), x, y, window, partials), None, None, None, None, None
