"""Front-to-back alpha compositing of packed samples: ``composite``, ``transmittance`` and ``composite_round`` (a
round of image rendering) run the native kernels when they are built, their ``*_reference`` (plain PyTorch, the
oracles) otherwise.

For ray samples sorted by ``t``: ``alpha_i = 1 - exp(-sigma_i * dt_i)``, transmittance
``T_i = exp(-sum_{j<i} sigma_j * dt_j)``, weight ``w_i = T_i * alpha_i``; the ray's colour is
``sum w_i c_i + (1 - sum w_i) * background``. The per-ray exclusive sum is one global cumulative sum in float64
minus each ray's offset, which keeps the transmittance accurate over many samples. ``distortion`` is mip-NeRF
360's distortion loss on the same packed samples, in O(samples) through such per-ray sums.
"""

from __future__ import annotations

import torch

from renderers import native
from renderers.native.autograd import Composite


def ray_starts(ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Index of each ray's first sample in the packed arrays, [n_rays] (rays without samples get their
    would-be position)."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    return counts.cumsum(0) - counts


def csr_offsets(ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """CSR offsets [n_rays + 1] of packed samples sorted by ray: ray ``r`` owns samples
    ``offsets[r]:offsets[r + 1]`` (the native kernels' layout)."""
    bounds = torch.arange(n_rays + 1, device=ray_indices.device, dtype=ray_indices.dtype)
    return torch.searchsorted(ray_indices, bounds)


def transmittance(tau: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Transmittance before each packed sample (see ``transmittance_reference``), natively when available."""
    ops = native.ops_for(tau)
    if ops is None or tau.requires_grad:
        return transmittance_reference(tau, ray_indices, n_rays)
    return ops.transmittance(tau, csr_offsets(ray_indices, n_rays))


def transmittance_reference(tau: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """``T_i = exp(-exclusive per-ray sum of tau)`` for packed optical depths ``tau = sigma * dt``."""
    if tau.numel() == 0:
        return tau
    incl = tau.double().cumsum(0)
    starts = ray_starts(ray_indices, n_rays)
    before = torch.cat([incl.new_zeros(1), incl])[starts]  # inclusive sum up to each ray's first sample
    excl = incl - tau.double() - before[ray_indices]
    return torch.exp(-excl).to(tau.dtype)


def composite(sigmas: torch.Tensor, rgbs: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
              ray_indices: torch.Tensor, n_rays: int) -> dict[str, torch.Tensor]:
    """Weights, rgb, opacity and depth (see ``composite_reference``): the native kernel when available
    (differentiable w.r.t. ``sigmas`` and ``rgbs``; the reference also when the ``t`` need gradients)."""
    ops = native.ops_for(sigmas, rgbs, t_starts, t_ends)
    if ops is None or t_starts.requires_grad or t_ends.requires_grad:
        return composite_reference(sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays)
    weights, rgb, opacity, depth = Composite.apply(sigmas, rgbs, t_starts, t_ends, csr_offsets(ray_indices, n_rays))
    return {"weights": weights, "rgb": rgb, "opacity": opacity, "depth": depth}


def composite_reference(sigmas: torch.Tensor, rgbs: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                        ray_indices: torch.Tensor, n_rays: int) -> dict[str, torch.Tensor]:
    """Weights per sample and accumulated colour, opacity and expected depth per ray (differentiable).

    Returns ``weights [S]``, ``rgb [n_rays, 3]`` (without background), ``opacity [n_rays]`` and
    ``depth [n_rays]`` (expected distance along the ray, not normalised by opacity).
    """
    tau = sigmas * (t_ends - t_starts)
    alphas = -torch.expm1(-tau)  # 1 - exp(-tau) without cancellation for small tau
    weights = transmittance_reference(tau, ray_indices, n_rays) * alphas
    t_mid = 0.5 * (t_starts + t_ends)
    rgb = rgbs.new_zeros(n_rays, 3).index_add(0, ray_indices, weights[:, None] * rgbs)
    opacity = weights.new_zeros(n_rays).index_add(0, ray_indices, weights)
    depth = weights.new_zeros(n_rays).index_add(0, ray_indices, weights * t_mid)
    return {"weights": weights, "rgb": rgb, "opacity": opacity, "depth": depth}


def composite_round(sigmas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor, offsets: torch.Tensor,
                    rays: torch.Tensor, optical: torch.Tensor, opacity: torch.Tensor, depth: torch.Tensor,
                    stop_eps: float, alpha_thre: float, weight_thre: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One round of front-to-back image rendering (see ``composite_round_reference``) in one native call where
    the build runs: the reference's ~20 tensor operations a round were a fifth of an office_table frame."""
    ops = native.ops_for(sigmas, t_starts, t_ends, opacity, depth)
    if ops is None:
        return composite_round_reference(sigmas, t_starts, t_ends, offsets, rays, optical, opacity, depth, stop_eps,
                                         alpha_thre, weight_thre)
    return ops.composite_round(sigmas, t_starts, t_ends, offsets, rays, optical, opacity, depth, float(stop_eps),
                               float(alpha_thre), float(weight_thre))


def composite_round_reference(sigmas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                              offsets: torch.Tensor, rays: torch.Tensor, optical: torch.Tensor, opacity: torch.Tensor,
                              depth: torch.Tensor, stop_eps: float, alpha_thre: float,
                              weight_thre: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [S] and the pruning's keep mask [S] of the next samples of rays ``rays`` [L] (ray ``rays[j]`` owns
    samples ``offsets[j]:offsets[j + 1]``, in order along it), each ray's optical depth so far ``optical`` [n_rays]
    (float64) carried into their transmittance. A sample is kept where the transmittance before it reaches
    ``stop_eps``, its opacity ``alpha_thre`` and its weight ``weight_thre`` (each only where positive). Updates in
    place: ``optical`` by every sample's optical depth, ``opacity`` and ``depth`` [n_rays] by the kept weights and
    weighted midpoints."""
    counts = offsets[1:] - offsets[:-1]
    ray = rays.repeat_interleave(counts)
    tau = sigmas * (t_ends - t_starts)
    before = torch.exp(-optical.index_select(0, ray)).float()
    own = torch.arange(len(rays), device=rays.device).repeat_interleave(counts)  # the round's rays, 0..L-1
    trans = transmittance_reference(tau, own, len(rays)) * before
    w = trans * -torch.expm1(-tau)
    keep = pruning_keeps(trans, tau, stop_eps, alpha_thre)
    if weight_thre > 0:
        keep &= w >= weight_thre
    k = keep.nonzero()[:, 0]
    kr, kw = ray.index_select(0, k), w.index_select(0, k)
    opacity.index_add_(0, kr, kw)
    depth.index_add_(0, kr, kw * 0.5 * (t_starts.index_select(0, k) + t_ends.index_select(0, k)))
    optical.index_add_(0, ray, tau.double())
    return w, keep


def pruning_keeps(trans: torch.Tensor, tau: torch.Tensor, stop_eps: float, alpha_thre: float) -> torch.Tensor:
    """Mask of samples that pruning keeps, given the transmittance before each and its optical depth: the
    transmittance reaches ``stop_eps`` and the opacity ``alpha_thre`` (each only where positive)."""
    keep = trans >= (stop_eps if stop_eps > 0 else 0.0)
    if alpha_thre > 0:
        keep &= -torch.expm1(-tau) >= alpha_thre
    return keep


def exclusive_ray_cumsum(x: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Per-ray exclusive cumulative sum of packed values ``x`` [S] (sorted by ray): one global cumulative sum in
    float64 minus each ray's offset (differentiable)."""
    incl = x.double().cumsum(0)
    before = torch.cat([incl.new_zeros(1), incl])[ray_starts(ray_indices, n_rays)]
    return (incl - x.double() - before[ray_indices]).to(x.dtype)


def distortion(weights: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor, ray_indices: torch.Tensor,
               n_rays: int) -> torch.Tensor:
    """mip-NeRF 360's distortion loss (eq. 15) per ray [n_rays], in O(samples), for packed samples sorted by ray
    and by ``t`` within a ray, with midpoints ``m`` and lengths ``dt``:
    ``sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 dt_i``. Since the midpoints increase along a ray, the double
    sum is ``2 sum_i w_i (m_i W_i - M_i)`` with the per-ray exclusive sums ``W_i = sum_{j<i} w_j`` and
    ``M_i = sum_{j<i} w_j m_j``. It pulls a ray's weights together into one short interval (against floaters
    and fog); distances are in ``t`` as given (world units along unit rays)."""
    if weights.numel() == 0:
        return weights.new_zeros(n_rays)
    mid, dt = 0.5 * (t_starts + t_ends), t_ends - t_starts
    w_before = exclusive_ray_cumsum(weights, ray_indices, n_rays)
    wm_before = exclusive_ray_cumsum(weights * mid, ray_indices, n_rays)
    per_sample = 2 * weights * (mid * w_before - wm_before) + weights.square() * dt / 3
    return per_sample.new_zeros(n_rays).index_add(0, ray_indices, per_sample)
