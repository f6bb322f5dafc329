"""Ray marching through the occupancy grid into packed samples: ``march_rays`` runs the native kernel when it is
built, ``march_rays_reference`` (plain PyTorch, the oracle) otherwise.

Samples of a ray lie on a fixed lattice that starts where the ray enters the box (``t0``, optionally jittered
by a fraction of a step for training): ``t_{k+1} = t_k + clamp(cone_angle * t_k, step_size, max_step)``, which
is a constant step for ``cone_angle = 0`` and grows geometrically with distance otherwise (Instant-NGP's cone
stepping). A sample ``[t_k, t_{k+1}]`` is emitted when its midpoint lies before the far bound and in an
occupied cell. Output is packed (nerfacc's layout): flat sample arrays sorted by ray, then by ``t``. Because
the lattice does not depend on which cells are empty, a native kernel that jumps over empty cells emits
exactly the same samples as this reference, which evaluates every lattice point. For that, the constant-step
lattice is float32 arithmetic and the cone-stepping branch is float64 rounded to float32, both reproducible
operation for operation in C++/CUDA.

With ``contract`` (``renderers.contraction``) the grid covers the contracted cube of the box and rays reach to
infinity: from ``near``, constant steps up to the first lattice point at or past the box's exit (``n1`` of them,
ending at ``t1``), then ``n_outer - 1`` points evenly spaced in disparity, ``b N / (N - j)`` with ``b = max(t1,
step)``, ``N = n_outer`` (mip-NeRF 360's sampling beyond the inner region: as many samples for the whole outside
world, however far it reaches, as a few hundred cells' worth of the box). ``cone_angle`` and ``max_step`` apply to
uncontracted marching only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from renderers import native
from renderers.contraction import contracted_cell


@dataclass
class Samples:
    """Packed samples along rays: sample ``i`` belongs to ray ``ray_indices[i]`` and spans ``[t_starts, t_ends]``."""

    ray_indices: torch.Tensor  # [S] int64, non-decreasing
    t_starts: torch.Tensor  # [S]
    t_ends: torch.Tensor  # [S]
    n_rays: int

    def __len__(self) -> int:
        return self.ray_indices.shape[0]

    def select(self, keep: torch.Tensor) -> "Samples":
        """The samples at ``keep``: a mask, or sorted indices (which keeps the packed order)."""
        idx = keep.nonzero()[:, 0] if keep.dtype == torch.bool else keep  # one nonzero, not one per tensor
        return Samples(self.ray_indices.index_select(0, idx), self.t_starts.index_select(0, idx),
                       self.t_ends.index_select(0, idx), self.n_rays)

    def positions(self, origins: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Midpoints [S, 3] and directions [S, 3] of the samples."""
        t_mid = (self.t_starts + self.t_ends).mul_(0.5)
        d = dirs.index_select(0, self.ray_indices)  # index_select: ~2x faster than [] for one int64 index
        return torch.addcmul(origins.index_select(0, self.ray_indices), t_mid[:, None], d), d


def round_samples(samples: Samples, origins: torch.Tensor, dirs: torch.Tensor, first: torch.Tensor,
                  offsets: torch.Tensor) -> tuple[torch.Tensor, Samples, torch.Tensor, torch.Tensor]:
    """The samples of one front-to-back round (see ``round_samples_reference``) in one native pass where the
    build runs and no gradient is wanted: the reference's ten-odd gathers and element-wise operations a round were
    the largest part of an office_table frame's per-round overhead."""
    tensors = (samples.t_starts, samples.t_ends, origins, dirs)
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    ops = None if wants_grad else native.ops_for(*tensors)
    if ops is None:
        return round_samples_reference(samples, origins, dirs, first, offsets)
    idx, ray, t_starts, t_ends, x, d = ops.round_samples(samples.ray_indices, samples.t_starts, samples.t_ends,
                                                         origins, dirs, first, offsets)
    return idx, Samples(ray, t_starts, t_ends, samples.n_rays), x, d


def round_samples_reference(samples: Samples, origins: torch.Tensor, dirs: torch.Tensor, first: torch.Tensor,
                            offsets: torch.Tensor) -> tuple[torch.Tensor, Samples, torch.Tensor, torch.Tensor]:
    """Indices [S], samples, midpoint positions and directions [S, 3] of a round: live ray ``j`` contributes its
    samples ``first[j]`` onwards, ``offsets[j + 1] - offsets[j]`` of them, in that order (CSR ``offsets``)."""
    counts = offsets[1:] - offsets[:-1]
    within = torch.arange(int(offsets[-1]), device=first.device) - offsets[:-1].repeat_interleave(counts)
    idx = first.repeat_interleave(counts) + within
    part = samples.select(idx)
    return idx, part, *part.positions(origins, dirs)


def ray_aabb(origins: torch.Tensor, dirs: torch.Tensor, aabb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances of rays through a box (slab method); ``t_far < t_near`` for a miss."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t0 = (aabb[0] - origins) * inv
    t1 = (aabb[1] - origins) * inv
    return torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)


def lattice(t0: torch.Tensor, k: torch.Tensor, step_size: float, cone_angle: float, max_step: float) -> torch.Tensor:
    """Position of lattice point ``k`` (float tensor) for rays starting at ``t0``; the closed form of the
    recursion in the module docstring (constant, then geometric, then constant at ``max_step``). The cone branch
    is computed in float64 and rounded once, so that the native kernel reproduces it exactly."""
    if cone_angle <= 0:
        return t0 + k * step_size
    dtype, t0, k = t0.dtype, t0.double(), k.double()
    growth = math.log1p(cone_angle)
    n1 = torch.ceil((step_size / cone_angle - t0) / step_size).clamp_min(0)
    t1 = t0 + n1 * step_size
    n2 = torch.ceil(torch.log((max_step / cone_angle) / t1) / growth).clamp_min(0)
    t2 = t1 * torch.exp(n2 * growth)
    geometric = t1 * torch.exp((k - n1) * growth)
    t = torch.where(k <= n1, t0 + k * step_size, torch.where(k <= n1 + n2, geometric, t2 + (k - n1 - n2) * max_step))
    return t.to(dtype)


def march_rays(origins: torch.Tensor, dirs: torch.Tensor, binary: torch.Tensor, aabb: torch.Tensor,
               step_size: float, near: float = 0.0, far: float = 1e10, cone_angle: float = 0.0,
               max_step: float = 1e10, jitter: torch.Tensor | None = None, contract: bool = False,
               n_outer: int = 0) -> Samples:
    """Packed samples in occupied cells (see ``march_rays_reference``): the native kernel when available, which
    jumps over empty cells and emits exactly the reference's samples."""
    ops = native.ops_for(origins, dirs, *(() if jitter is None else (jitter,)))
    if ops is None:
        return march_rays_reference(origins, dirs, binary, aabb, step_size, near, far, cone_angle, max_step, jitter,
                                    contract, n_outer)
    ray, t_start, t_end = ops.march_rays(origins, dirs, binary, aabb, float(step_size), float(near), float(far),
                                        float(cone_angle), float(max_step), jitter, contract, int(n_outer))
    return Samples(ray, t_start, t_end, origins.shape[0])


def march_rays_reference(origins: torch.Tensor, dirs: torch.Tensor, binary: torch.Tensor, aabb: torch.Tensor,
                         step_size: float, near: float = 0.0, far: float = 1e10, cone_angle: float = 0.0,
                         max_step: float = 1e10, jitter: torch.Tensor | None = None, contract: bool = False,
                         n_outer: int = 0) -> Samples:
    """Packed samples in occupied cells of ``binary`` ([R, R, R] bool over ``aabb``, or over its contracted cube
    with ``contract``) along unit-direction rays.

    ``jitter`` [n_rays] in [0, 1) shifts each ray's lattice by that fraction of a step (stratified sampling).
    """
    if contract:
        return _march_contracted_reference(origins, dirs, binary, aabb, step_size, near, far, jitter, n_outer)
    n_rays = origins.shape[0]
    t_near, t_far = ray_aabb(origins, dirs, aabb)
    t_near, t_far = t_near.clamp_min(near), t_far.clamp_max(far)
    t0 = t_near + (0.0 if jitter is None else jitter * step_size)
    # Every lattice point up to the far bound is a candidate; steps are never shorter than step_size.
    counts = torch.ceil((t_far - t0) / step_size).clamp_min(0).long()
    counts = torch.where(t_far > t_near, counts, torch.zeros_like(counts))
    dev = origins.device
    ray = torch.repeat_interleave(torch.arange(n_rays, device=dev), counts)
    k = (torch.arange(ray.shape[0], device=dev) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)).float()
    t_start = lattice(t0[ray], k, step_size, cone_angle, max_step)
    t_end = lattice(t0[ray], k + 1, step_size, cone_angle, max_step)
    mid = 0.5 * (t_start + t_end)
    x = origins[ray] + mid[:, None] * dirs[ray]
    res = torch.tensor(binary.shape, device=dev)
    u = (x - aabb[0]) / (aabb[1] - aabb[0])
    ijk = torch.floor(u * res).long()
    inside = ((ijk >= 0) & (ijk < res)).all(-1) & (mid < t_far[ray])
    ijk = ijk.clamp_min(0).minimum(res - 1)
    keep = inside & binary[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    return Samples(ray[keep], t_start[keep], t_end[keep], n_rays)


def _march_contracted_reference(origins: torch.Tensor, dirs: torch.Tensor, binary: torch.Tensor, aabb: torch.Tensor,
                                step_size: float, near: float, far: float, jitter: torch.Tensor | None,
                                n_outer: int) -> Samples:
    """``march_rays_reference`` with ``contract``: every lattice point of the module docstring's contracted lattice
    whose midpoint is before ``far`` and in an occupied cell of the grid over the contracted cube."""
    if n_outer < 2:
        raise ValueError("contracted marching needs n_outer >= 2")
    n_rays, dev = origins.shape[0], origins.device
    t0 = near + (torch.zeros(n_rays, device=dev) if jitter is None else jitter * step_size)
    t_in, t_out = ray_aabb(origins, dirs, aabb)
    n1 = torch.where((t_out > t0) & (t_out > t_in), torch.ceil((t_out - t0) / step_size), torch.zeros_like(t0))
    t1 = t0 + n1 * step_size
    b = t1.clamp_min(step_size)
    counts = n1.long() + (n_outer - 1)
    ray = torch.repeat_interleave(torch.arange(n_rays, device=dev), counts)
    k = torch.arange(ray.shape[0], device=dev) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)

    def at(k: torch.Tensor) -> torch.Tensor:
        inner = t0[ray] + k.float() * step_size
        j = (k - n1[ray].long()).double()
        outer = (b[ray].double() * n_outer / (n_outer - j)).float()
        return torch.where(k.double() <= n1[ray].double(), inner, outer)

    t_start, t_end = at(k), at(k + 1)
    mid = 0.5 * (t_start + t_end)
    x = origins[ray] + mid[:, None] * dirs[ray]
    ijk = contracted_cell(x, aabb, torch.tensor(binary.shape, device=dev))
    keep = (mid < far) & binary[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    return Samples(ray[keep], t_start[keep], t_end[keep], n_rays)
