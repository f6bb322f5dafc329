"""Volume rendering of a radiance field through the occupancy grid.

The renderer knows no concrete field: like nerfacc it takes callables, in one mode: the field split in two,
``geometry_fn(x) -> (sigma, features)`` and ``color_fn(features, d) -> rgb``, so that the densities that prune
the marched samples are the ones the kept samples are shaded with (``density_fn(x) -> sigma`` alone serves the
no-grad pruning of ``sample_rays`` and the occupancy grid's updates).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch

from renderers.chunks import map_chunks
from renderers.compositing import composite, composite_round, csr_offsets, pruning_keeps, transmittance
from renderers.marching import Samples, march_rays, round_samples as round_samples_of
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
    image_stop_eps: float | None = None
    """Images only (``render_image``; training is unaffected): a ray stops once its transmittance falls below this
    (None: ``early_stop_eps``). Runs with scene contraction start with 1e-3: office_table (hash grid, 2500 steps,
    held-out views 1 and 4) lost nothing measurable for 2.6 fewer densities evaluated a ray (of 27); 1e-2 saved
    5.7 but lost 0.01-0.06 dB a view (the rest of the light comes from the background)."""
    image_weight_thre: float = 0.0
    """Images only: samples whose weight ``T * alpha`` is below this are left out of the composite (their density
    still dims the samples behind them), so their colour is never evaluated. Runs with scene contraction start with
    1e-3: on office_table 36% of the shaded samples (25 a ray) weighed less, for 0.004 dB."""

    def for_images(self) -> "RenderConfig":
        """These settings with ``image_stop_eps`` as ``early_stop_eps``: what ``render_image`` prunes with."""
        if self.image_stop_eps is None:
            return self
        return dataclasses.replace(self, early_stop_eps=self.image_stop_eps)

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
        trans = transmittance(tau, samples.ray_indices, samples.n_rays)
        return pruning_keeps(trans, tau, cfg.early_stop_eps, cfg.alpha_thre)


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


def front_to_back(samples: Samples, origins: torch.Tensor, dirs: torch.Tensor, geometry_fn: GeometryFn,
                  cfg: RenderConfig, round_samples: int = 16, weight_thre: float = 0.0,
                  opacity: torch.Tensor | None = None, depth: torch.Tensor | None = None):
    """Evaluate ``geometry_fn`` on each ray's samples front to back in rounds of ``round_samples``, leaving out
    rays whose transmittance fell below ``cfg.early_stop_eps`` (Instant-NGP's inference marching): the samples
    behind a surface are never evaluated. Yields per round ``(idx, part, d, feats, weights, keep)``: the round's
    sample indices into ``samples`` (sorted by ray and ``t``), those samples, their directions, the field's
    features, their weights and which of them pruning keeps (``visible``'s rule, and weights of at least
    ``weight_thre`` where positive); the kept ones' weights and weighted midpoints are added to ``opacity`` and
    ``depth`` [n_rays] where given (``composite_round``: one native call a round)."""
    n, dev = samples.n_rays, origins.device
    offsets = csr_offsets(samples.ray_indices, n)
    starts, counts = offsets[:-1], offsets[1:] - offsets[:-1]
    optical = torch.zeros(n, dtype=torch.float64, device=dev)  # optical depth before this round, per ray
    opacity = origins.new_zeros(n) if opacity is None else opacity
    depth = origins.new_zeros(n) if depth is None else depth
    alive = torch.ones(n, dtype=torch.bool, device=dev)
    max_optical = -math.log(cfg.early_stop_eps) if cfg.early_stop_eps > 0 else math.inf  # exp(-depth) >= eps
    for r0 in range(0, int(counts.max().item()) if n else 0, round_samples):
        live = (alive & (counts > r0)).nonzero()[:, 0]  # rays with samples left in this round, in order
        if len(live) == 0:
            break
        per_ray = (counts.index_select(0, live) - r0).clamp_max(round_samples)
        round_offsets = torch.cat([per_ray.new_zeros(1), per_ray.cumsum(0)])
        # their next samples, still sorted by ray and t
        idx, part, x, d = round_samples_of(samples, origins, dirs, starts.index_select(0, live) + r0, round_offsets)
        sigmas, feats = geometry_fn(x)
        weights, keep = composite_round(sigmas, part.t_starts, part.t_ends, round_offsets, live, optical, opacity,
                                        depth, cfg.early_stop_eps, cfg.alpha_thre, weight_thre)
        yield idx, part, d, feats, weights, keep
        alive &= optical <= max_optical


@torch.no_grad()
def visible_front_to_back(samples: Samples, origins: torch.Tensor, dirs: torch.Tensor, geometry_fn: GeometryFn,
                          cfg: RenderConfig) -> torch.Tensor:
    """Indices of the samples that pruning keeps, found front to back (densities evaluated only up to where each
    ray's transmittance runs out): what ``visible`` finds, for a fraction of the evaluations on a sharp field."""
    found = [idx[keep] for idx, _, _, _, _, keep in front_to_back(samples, origins, dirs, geometry_fn, cfg)]
    return torch.cat(found).sort().values if found else samples.ray_indices.new_zeros(0)


def shaded_samples(geometry_fn: GeometryFn, color_fn: ColorFn, grid: OccupancyGrid, origins: torch.Tensor,
                   dirs: torch.Tensor, cfg: RenderConfig, jitter: torch.Tensor | None = None,
                   ray_codes: torch.Tensor | None = None,
                   prune_first: bool = False) -> tuple[Samples, torch.Tensor, torch.Tensor, int]:
    """Kept samples with their densities and colours, and the number of samples marched.

    By default the pruning pass and the rendering pass share one geometry evaluation over all marched samples
    (with autograd when enabled; pruned samples then get zero gradient), the cheapest way while most marched
    samples are kept. With ``prune_first`` the kept samples are found front to back without autograd
    (``visible_front_to_back``) and the geometry is evaluated with autograd on them alone: far cheaper once the
    field is sharp and most marched samples lie behind surfaces. Both keep the same samples (up to float
    rounding of the transmittance). ``ray_codes`` [R, k]: per-ray inputs of the colour (a training image's
    appearance code), passed to ``color_fn`` for each kept sample."""
    samples = march(origins, dirs, grid, cfg, jitter)
    marched = len(samples)
    if marched and cfg.prunes() and prune_first:
        samples = samples.select(visible_front_to_back(samples, origins, dirs, geometry_fn, cfg))
        x, d = samples.positions(origins, dirs)
        sigmas, feats = geometry_fn(x)
    else:
        x, d = samples.positions(origins, dirs)
        sigmas, feats = geometry_fn(x)
        if marched and cfg.prunes():
            idx = visible(samples, sigmas, cfg).nonzero()[:, 0]
            samples, d = samples.select(idx), d.index_select(0, idx)
            sigmas, feats = SelectRows.apply(sigmas, idx), SelectRows.apply(feats, idx)
    if ray_codes is None:
        return samples, sigmas, color_fn(feats, d), marched
    return samples, sigmas, color_fn(feats, d, ray_codes.index_select(0, samples.ray_indices)), marched


def render_rays(geometry_fn: GeometryFn, color_fn: ColorFn, grid: OccupancyGrid, origins: torch.Tensor,
                dirs: torch.Tensor, cfg: RenderConfig, background: torch.Tensor,
                jitter: torch.Tensor | None = None, ray_codes: torch.Tensor | None = None,
                prune_first: bool = False) -> dict[str, torch.Tensor]:
    """Render rays; returns ``rgb`` (on ``background``, [R, 3] or [3]), ``depth``, ``opacity``, ``samples`` (the
    number kept), ``marched`` (the number marched) and the packed samples' ``weights``, ``t_starts``, ``t_ends``
    and ``ray_indices`` (for losses on them). Pruning as ``shaded_samples`` does; ``ray_codes`` [R, k] go to
    ``color_fn`` per sample (without them it is called with features and directions alone)."""
    samples, sigmas, rgbs, marched = shaded_samples(geometry_fn, color_fn, grid, origins, dirs, cfg, jitter,
                                                    ray_codes, prune_first)
    out = composite(sigmas, rgbs, samples.t_starts, samples.t_ends, samples.ray_indices, samples.n_rays)
    out.update(t_starts=samples.t_starts, t_ends=samples.t_ends, ray_indices=samples.ray_indices)
    out["rgb"] = out["rgb"] + (1.0 - out["opacity"][:, None]) * background
    out["samples"], out["marched"] = torch.tensor(len(samples)), torch.tensor(marched)
    return out


@torch.no_grad()
def render_rays_front_to_back(geometry_fn: GeometryFn, color_fn: ColorFn, grid: OccupancyGrid, origins: torch.Tensor,
                              dirs: torch.Tensor, cfg: RenderConfig, background: torch.Tensor,
                              round_samples: int = 8) -> dict[str, torch.Tensor]:
    """``render_rays`` without autograd, shading each ray's samples front to back (``front_to_back``): the
    samples behind a surface are marched but never evaluated. The same samples are kept and shaded as in
    ``render_rays`` (which evaluates every marched sample's density to find them), so the image is the same up to
    float rounding; only ``samples`` counts the densities evaluated rather than the kept ones. Samples lighter
    than ``cfg.image_weight_thre`` are left out (none by default). Rounds of 8 samples: on office_table 28.5
    densities a ray were evaluated against 31.2 in rounds of 16 (rays overshoot their last round by less), for
    ~5% less time; 4 evaluated fewer but cost more in per-round overhead."""
    samples = march(origins, dirs, grid, cfg)
    n = samples.n_rays
    rgb, opacity, depth = origins.new_zeros(n, 3), origins.new_zeros(n), origins.new_zeros(n)
    evaluated = 0
    for idx, part, d, feats, w, keep in front_to_back(samples, origins, dirs, geometry_fn, cfg, round_samples,
                                                      cfg.image_weight_thre, opacity, depth):
        evaluated += len(idx)
        k = keep.nonzero()[:, 0]
        if len(k):
            rgb.index_add_(0, part.ray_indices.index_select(0, k),
                           w.index_select(0, k)[:, None] * color_fn(feats.index_select(0, k), d.index_select(0, k)))
    return {"rgb": rgb + (1.0 - opacity[:, None]) * background, "depth": depth, "opacity": opacity,
            "samples": torch.tensor(evaluated)}


@torch.no_grad()
def render_image(geometry_fn: GeometryFn, color_fn: ColorFn, grid: OccupancyGrid, cams: Cameras, i: int,
                 cfg: RenderConfig, background: torch.Tensor, chunk: int = 8192,
                 rays: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Render camera ``i`` in chunks of rays (halved when memory runs out); returns ``rgb [H, W, 3]``,
    ``depth [H, W]``, ``opacity [H, W]`` on the CPU. The rays are cast on the grid's device (a field training on
    a GPU renders there). Pruned with ``cfg.for_images()``. ``rays``: the camera's rays [H * W, 3] mapped into the
    space the grid and field live in (``renderers.ndc``), where that is not the world."""
    dev, cfg = grid.aabb.device, cfg.for_images()
    origins, dirs = image_rays(cams, i) if rays is None else rays
    origins, dirs = origins.reshape(-1, 3).to(dev), dirs.reshape(-1, 3).to(dev)
    background = background.to(dev)
    parts = map_chunks(lambda o, d: render_rays_front_to_back(geometry_fn, color_fn, grid, o, d, cfg, background),
                       (origins, dirs), chunk)
    w, h = cams.size(i)
    return {k: torch.cat([p[k] for p in parts]).reshape(h, w, *parts[0][k].shape[1:]).cpu()
            for k in ("rgb", "depth", "opacity")}
