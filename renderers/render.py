"""Volume rendering of a radiance field through the occupancy grid.

The renderer knows no concrete field: like nerfacc it takes callables, in one mode: the field split in two,
``geometry_fn(x) -> (sigma, features)`` and ``color_fn(features, d) -> rgb``, so that the densities that prune
the marched samples are the ones the kept samples are shaded with (``density_fn(x) -> sigma`` alone serves the
no-grad pruning of ``sample_rays`` and the occupancy grid's updates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from renderers.chunks import map_chunks
from renderers.compositing import composite, ray_starts, transmittance
from renderers.marching import Samples, march_rays
from renderers.occupancy import OccupancyGrid
from scenes.cameras import Cameras, image_rays

DensityFn = Callable[[torch.Tensor], torch.Tensor]
GeometryFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``x -> (sigma, features)``: the view-independent part of a field."""
ColorFn = Callable[..., torch.Tensor]
"""``(features, d) -> rgb``: the rest of it, on features from ``GeometryFn``; called ``(features, d, codes)``
when rays carry codes (``render_rays``'s ``ray_codes``, gathered per sample)."""


@dataclass
class RenderConfig:
    """How rays are sampled: marching step, cone stepping, near/far bounds and sample pruning."""

    samples_per_diagonal: int = 512
    """Marching step = box diagonal / this (nerfacc uses 1024 for 800px images; 200px needs fewer)."""
    cone_angle: float = 0.0
    """Step growth with distance (0 for object scenes; ~1/256 for unbounded ones)."""
    near: float = 0.0
    """Nearest distance along a ray that is sampled."""
    far: float = 1e10
    """Farthest distance along a ray that is sampled."""
    early_stop_eps: float = 1e-4
    """Drop samples once transmittance falls below this (a no-grad density pass decides; 0 disables)."""
    alpha_thre: float = 0.0
    """Drop samples whose opacity is below this (0 disables)."""
    outer_samples: int = 128
    """With scene contraction: lattice points per ray beyond the scene box, evenly spaced in disparity out to
    infinity (the box itself is marched at the constant step)."""

    def prunes(self) -> bool:
        """Whether samples are pruned by density at all."""
        return self.early_stop_eps > 0 or self.alpha_thre > 0

    def step_size(self, aabb: torch.Tensor) -> float:
        return (aabb[1] - aabb[0]).norm().item() / self.samples_per_diagonal


def march(origins: torch.Tensor, dirs: torch.Tensor, grid: OccupancyGrid, cfg: RenderConfig,
          jitter: torch.Tensor | None = None) -> Samples:
    """All samples of the rays in occupied cells (no pruning). The sample distances take no gradient (rays
    moved by a learned camera correction get theirs through the sample positions)."""
    return march_rays(origins.detach(), dirs.detach(), grid.binary, grid.aabb, cfg.step_size(grid.aabb), cfg.near,
                      cfg.far, cfg.cone_angle, jitter=jitter, contract=grid.contracted, n_outer=cfg.outer_samples)


def visible(samples: Samples, sigmas: torch.Tensor, cfg: RenderConfig) -> torch.Tensor:
    """Mask of the samples that pruning (``cfg.early_stop_eps``, ``cfg.alpha_thre``) keeps, given densities."""
    with torch.no_grad():
        tau = sigmas.detach() * (samples.t_ends - samples.t_starts)
        keep = transmittance(tau, samples.ray_indices, samples.n_rays) >= cfg.early_stop_eps
        if cfg.alpha_thre > 0:
            keep &= (1 - torch.exp(-tau)) >= cfg.alpha_thre
    return keep


def sample_rays(origins: torch.Tensor, dirs: torch.Tensor, grid: OccupancyGrid, cfg: RenderConfig,
                density_fn: DensityFn | None = None, jitter: torch.Tensor | None = None) -> Samples:
    """March rays through occupied cells, then prune invisible samples with a cheap no-grad density pass."""
    samples = march(origins, dirs, grid, cfg, jitter)
    if density_fn is None or len(samples) == 0 or not cfg.prunes():
        return samples
    with torch.no_grad():
        return samples.select(visible(samples, density_fn(samples.positions(origins, dirs)[0]), cfg))


class SelectRows(torch.autograd.Function):
    """``x.index_select(0, idx)`` for indices without repeats (pruning's kept samples). The backward copies the
    gradient into zeros (index_copy) instead of index_select's accumulating index_add, which runs as a serial
    scatter on CPU (1.5 ms of a 33 ms lego step; a boolean mask's index_put is slower still)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.rows = x.shape[0]
        return x.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (idx,) = ctx.saved_tensors
        return grad.new_zeros((ctx.rows, *grad.shape[1:])).index_copy_(0, idx, grad), None


def shaded_samples(geometry_fn: GeometryFn, color_fn: ColorFn, grid: OccupancyGrid, origins: torch.Tensor,
                   dirs: torch.Tensor, cfg: RenderConfig, jitter: torch.Tensor | None = None,
                   ray_codes: torch.Tensor | None = None) -> tuple[Samples, torch.Tensor, torch.Tensor]:
    """Kept samples with their densities and colours, from one geometry pass over all marched samples.

    The pruning pass and the rendering pass share ``geometry_fn``'s evaluation (with autograd when enabled;
    pruned samples then get zero gradient), so only the colour is computed on kept samples alone. Same result
    as ``sample_rays`` with ``density_fn`` then ``radiance_fn`` on the kept samples, without evaluating the
    geometry twice. ``ray_codes`` [R, k]: per-ray inputs of the colour (a training image's appearance code),
    passed to ``color_fn`` for each kept sample."""
    samples = march(origins, dirs, grid, cfg, jitter)
    x, d = samples.positions(origins, dirs)
    sigmas, feats = geometry_fn(x)
    if len(samples) and cfg.prunes():
        idx = visible(samples, sigmas, cfg).nonzero()[:, 0]
        samples, d = samples.select(idx), d.index_select(0, idx)
        sigmas, feats = SelectRows.apply(sigmas, idx), SelectRows.apply(feats, idx)
    if ray_codes is None:
        return samples, sigmas, color_fn(feats, d)
    return samples, sigmas, color_fn(feats, d, ray_codes.index_select(0, samples.ray_indices))


def render_rays(geometry_fn: GeometryFn, color_fn: ColorFn, grid: OccupancyGrid, origins: torch.Tensor,
                dirs: torch.Tensor, cfg: RenderConfig, background: torch.Tensor,
                jitter: torch.Tensor | None = None, ray_codes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Render rays; returns ``rgb`` (on ``background``, [R, 3] or [3]), ``depth``, ``opacity``, ``samples`` (their
    number) and the packed samples' ``weights``, ``t_starts``, ``t_ends`` and ``ray_indices`` (for losses on
    them). Pruning reuses the geometry evaluation (``shaded_samples``); ``ray_codes`` [R, k] go to ``color_fn`` per
    sample (without them it is called with features and directions alone)."""
    samples, sigmas, rgbs = shaded_samples(geometry_fn, color_fn, grid, origins, dirs, cfg, jitter, ray_codes)
    out = composite(sigmas, rgbs, samples.t_starts, samples.t_ends, samples.ray_indices, samples.n_rays)
    out.update(t_starts=samples.t_starts, t_ends=samples.t_ends, ray_indices=samples.ray_indices)
    out["rgb"] = out["rgb"] + (1.0 - out["opacity"][:, None]) * background
    out["samples"] = torch.tensor(len(samples))
    return out


@torch.no_grad()
def render_rays_front_to_back(geometry_fn: GeometryFn, color_fn: ColorFn, grid: OccupancyGrid, origins: torch.Tensor,
                              dirs: torch.Tensor, cfg: RenderConfig, background: torch.Tensor,
                              round_samples: int = 16) -> dict[str, torch.Tensor]:
    """``render_rays`` without autograd, evaluating each ray's samples front to back in rounds of
    ``round_samples`` and stopping a ray once its transmittance falls below ``cfg.early_stop_eps`` (Instant-NGP's
    inference marching): the samples behind a surface are marched but never evaluated. The same samples are kept
    and shaded as in ``render_rays`` (which evaluates every marched sample's density to find them), so the image
    is the same up to float rounding; only ``samples`` counts the densities evaluated rather than the kept ones."""
    samples = march(origins, dirs, grid, cfg)
    n, ray = samples.n_rays, samples.ray_indices
    dev = origins.device
    rgb, opacity, depth = origins.new_zeros(n, 3), origins.new_zeros(n), origins.new_zeros(n)
    rank = torch.arange(len(samples), device=dev) - ray_starts(ray, n)[ray]  # position along its ray
    optical = torch.zeros(n, dtype=torch.float64, device=dev)  # optical depth before this round, per ray
    alive = torch.ones(n, dtype=torch.bool, device=dev)
    evaluated = 0
    rounds = int(rank.max().item()) + 1 if len(samples) else 0
    limit = cfg.early_stop_eps if cfg.early_stop_eps > 0 else 0.0
    for r0 in range(0, rounds, round_samples):
        idx = ((rank >= r0) & (rank < r0 + round_samples) & alive[ray]).nonzero()[:, 0]
        if len(idx) == 0:
            break
        part = samples.select(idx)
        x, d = part.positions(origins, dirs)
        sigmas, feats = geometry_fn(x)
        evaluated += len(idx)
        tau = sigmas * (part.t_ends - part.t_starts)
        trans = transmittance(tau, part.ray_indices, n) * torch.exp(-optical)[part.ray_indices].float()
        alphas = -torch.expm1(-tau)
        keep = trans >= limit
        if cfg.alpha_thre > 0:
            keep &= alphas >= cfg.alpha_thre
        k = keep.nonzero()[:, 0]
        if len(k):
            w, kr = (trans * alphas)[k], part.ray_indices[k]
            rgb.index_add_(0, kr, w[:, None] * color_fn(feats[k], d[k]))
            opacity.index_add_(0, kr, w)
            depth.index_add_(0, kr, w * 0.5 * (part.t_starts[k] + part.t_ends[k]))
        optical.index_add_(0, part.ray_indices, tau.double())
        alive &= torch.exp(-optical) >= limit
    return {"rgb": rgb + (1.0 - opacity[:, None]) * background, "depth": depth, "opacity": opacity,
            "samples": torch.tensor(evaluated)}


@torch.no_grad()
def render_image(geometry_fn: GeometryFn, color_fn: ColorFn, grid: OccupancyGrid, cams: Cameras, i: int,
                 cfg: RenderConfig, background: torch.Tensor, chunk: int = 8192) -> dict[str, torch.Tensor]:
    """Render camera ``i`` in chunks of rays (halved when memory runs out); returns ``rgb [H, W, 3]``,
    ``depth [H, W]``, ``opacity [H, W]`` on the CPU. The rays are cast on the grid's device (a field training on
    a GPU renders there)."""
    dev = grid.aabb.device
    origins, dirs = image_rays(cams, i)
    origins, dirs = origins.reshape(-1, 3).to(dev), dirs.reshape(-1, 3).to(dev)
    background = background.to(dev)
    parts = map_chunks(lambda o, d: render_rays_front_to_back(geometry_fn, color_fn, grid, o, d, cfg, background),
                       (origins, dirs), chunk)
    h, w = cams.height, cams.width
    return {k: torch.cat([p[k] for p in parts]).reshape(h, w, *parts[0][k].shape[1:]).cpu()
            for k in ("rgb", "depth", "opacity")}
