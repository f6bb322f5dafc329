"""Gaussians as a volume density, for everything that queries points: the occupancy grid, mesh export and
distillation with a Gaussian teacher.

Each Gaussian becomes a density kernel ``k exp(-x^T Sigma^-1 x / 2)`` whose peak ``k = -log(1 - o) /
(sqrt(2 pi) s_min)`` makes a ray crossing its thinnest axis through the centre exactly as opaque as its
opacity ``o``; the density at a point is the sum of the kernels, its colour their density-weighted mean. So
that a query costs only the nearby Gaussians, they are binned into a uniform grid of cells by their 3-sigma
boxes (the finest grid whose (Gaussian, cell) list fits ``MAX_PAIRS``), and a point evaluates the Gaussians of
its own cell.
"""

from __future__ import annotations

import math

import torch

from fields.backends.gaussians.params import GaussianSet
from renderers.splatting import quat_to_rotmat


MAX_PAIRS = 1 << 22  # (Gaussian, cell) entries of the index; cells start small and grow until it holds fewer


class GaussianIndex:
    """Which Gaussians' 3-sigma boxes touch each cell of a uniform grid over the scene box."""

    def __init__(self, field: GaussianSet, min_opacity: float = 1 / 255):
        self.field = field
        self.key = self._key(field)
        with torch.no_grad():
            means, scales = field.means.detach(), field.scales.detach().exp()
            keep = (torch.sigmoid(field.opacities.detach()) >= min_opacity).nonzero()[:, 0]
            radius = 3 * scales[keep].max(-1).values
            lo_box, size = field.aabb[0], field.aabb[1] - field.aabb[0]
            cell = size.max() / 256  # as fine as the pair budget allows: fewer Gaussians per query
            while True:
                self.res = torch.clamp((size / cell).ceil().long(), 1, 256)
                self.cell = size / self.res
                lo = ((means[keep] - radius[:, None] - lo_box) / self.cell).floor().long()
                hi = ((means[keep] + radius[:, None] - lo_box) / self.cell).floor().long()
                lo, hi = torch.maximum(lo, lo.new_zeros(3)), torch.minimum(hi, self.res - 1)
                extent = (hi - lo + 1).clamp_min(0)
                counts = extent.prod(-1)
                if counts.sum() <= MAX_PAIRS or bool((self.res == 1).all()):
                    break
                cell = cell * 1.25
            gauss = torch.repeat_interleave(torch.arange(len(keep)), counts)
            within = torch.arange(len(gauss)) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
            e = extent[gauss]
            ijk = lo[gauss] + torch.stack([within // (e[:, 1] * e[:, 2]), (within // e[:, 2]) % e[:, 1],
                                           within % e[:, 2]], -1)
            cells = self._flat(ijk)
            order = cells.argsort()
            self.gaussians = keep[gauss[order]]
            bounds = torch.searchsorted(cells[order], torch.arange(int(self.res.prod()) + 1))
            self.starts, self.counts = bounds[:-1], bounds[1:] - bounds[:-1]

    @staticmethod
    def _key(field: GaussianSet) -> tuple:
        return tuple((p.data_ptr(), p._version, p.shape[0]) for p in
                     (field.means, field.scales, field.quats, field.opacities, field.sh0, field.shN))

    def matches(self, field: GaussianSet) -> bool:
        """Whether the Gaussians are unchanged since the index was built."""
        return field is self.field and self._key(field) == self.key

    def _flat(self, ijk: torch.Tensor) -> torch.Tensor:
        return (ijk[:, 0] * self.res[1] + ijk[:, 1]) * self.res[2] + ijk[:, 2]

    def query(self, x: torch.Tensor, d: torch.Tensor | None = None, with_color: bool = True,
              chunk: int = 1 << 14) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Density [N] at points ``x`` [N, 3] and, with ``with_color``, colour [N, 3] seen along ``d``."""
        parts = [self._query(xc, None if d is None else dc, with_color)
                 for xc, dc in zip(x.split(chunk), (d if d is not None else x).split(chunk))]
        sigma = torch.cat([p[0] for p in parts]) if parts else x.new_zeros(0)
        rgb = (torch.cat([p[1] for p in parts]) if parts else x.new_zeros(0, 3)) if with_color else None
        return sigma, rgb

    def _query(self, x: torch.Tensor, d: torch.Tensor | None, with_color: bool):
        f = self.field
        u = (x - f.aabb[0]) / self.cell
        inside = ((u >= 0) & (u < self.res)).all(-1)
        cell = self._flat(u.floor().long().clamp(torch.zeros_like(self.res), self.res - 1))
        n = torch.where(inside, self.counts[cell], 0)
        point = torch.repeat_interleave(torch.arange(len(x)), n)
        within = torch.arange(len(point)) - torch.repeat_interleave(n.cumsum(0) - n, n)
        g = self.gaussians[self.starts[cell][point] + within]
        inv_scales = torch.exp(-f.scales)  # per Gaussian once, then gathered per pair
        opacity = torch.sigmoid(f.opacities).clamp(max=0.99)
        peak = -torch.log1p(-opacity) * inv_scales.max(-1).values / math.sqrt(2 * math.pi)
        local = torch.einsum("nji,nj->ni", quat_to_rotmat(f.quats)[g], x[point] - f.means[g]) * inv_scales[g]
        w = peak[g] * torch.exp(-0.5 * (local * local).sum(-1))
        sigma = x.new_zeros(len(x)).index_add(0, point, w)
        if not with_color:
            return sigma, None
        c = f.sh_color(d[point], g) * w[:, None]
        rgb = x.new_zeros(len(x), 3).index_add(0, point, c) / sigma.clamp_min(1e-10)[:, None]
        return sigma, rgb.clamp(0, 1)
