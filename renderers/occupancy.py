"""Instant-NGP-style occupancy grid: which cells of the scene box can hold content.

A density EMA per cell and a boolean mask derived from it. A cell counts as occupied when the opacity of one
marching step through it, ``sigma * step_size``, reaches ``min(occ_thre, mean)`` (nerfacc's rule: the threshold
is on opacity per step, not raw density, which kept the whole box occupied). ``occ_thre`` decides which cells
are marched at all; ``RenderConfig.alpha_thre`` separately drops marched samples too faint to matter. During warm-up every cell is
re-evaluated; afterwards a random quarter of the cells plus up to as many occupied ones, as in Instant-NGP.
A ``contracted`` grid tiles the contracted cube of its box (``renderers.contraction``): the box itself gets the
middle half of the cells along each axis and the whole world beyond it the rest. Its cells are judged by
density per unit of contracted length (world density over ``density_scale``): the opacity of one marcher step
there, up to hundreds of box steps long in the world far out (``renderers.contraction``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from renderers.contraction import contracted_cell, density_scale, uncontract


class OccupancyGrid(nn.Module):
    """A single-cascade occupancy grid over an axis-aligned box. All state lives in buffers (checkpointed)."""

    def __init__(self, aabb: torch.Tensor, resolution: int = 128, contracted: bool = False):
        super().__init__()
        self.resolution = int(resolution)
        self.contracted = bool(contracted)
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).clone())
        n = self.resolution**3
        self.register_buffer("occs", torch.zeros(n))  # EMA of per-step opacity, flat in x-major (x, y, z) order
        self.register_buffer("binary", torch.ones(self.resolution, self.resolution, self.resolution, dtype=torch.bool))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @property
    def cell_size(self) -> torch.Tensor:
        return (self.aabb[1] - self.aabb[0]) / self.resolution

    def cell_centers(self, idx: torch.Tensor, jitter: torch.Tensor | None = None) -> torch.Tensor:
        """World positions inside cells ``idx`` (flat indices); ``jitter`` in [0, 1)^3 picks the point."""
        r = self.resolution
        ijk = torch.stack([idx // (r * r), (idx // r) % r, idx % r], -1).float()
        frac = 0.5 if jitter is None else jitter
        if self.contracted:  # a point of the contracted cube [-2, 2]^3, strictly inside it, back in the world
            return uncontract(((ijk + frac) / r * 4 - 2).clamp(-2 + 1e-6, 2 - 1e-6), self.aabb)
        return self.aabb[0] + (ijk + frac) * self.cell_size

    def update_every_n_steps(self, step: int, density_fn: Callable[[torch.Tensor], torch.Tensor], step_size: float,
                             n: int, warmup_steps: int, generator: torch.Generator | None = None) -> None:
        """Update at every ``n``-th training step, re-evaluating every cell during the first ``warmup_steps``
        (nerfacc's ``OccGridEstimator.update_every_n_steps``)."""
        if step % n == 0:
            self.update(density_fn, step_size, warmup=step < warmup_steps, generator=generator)

    @torch.no_grad()
    def update(self, density_fn: Callable[[torch.Tensor], torch.Tensor], step_size: float,
               occ_thre: float = 0.01, ema_decay: float = 0.95, warmup: bool = True,
               generator: torch.Generator | None = None, chunk: int = 1 << 18) -> None:
        """Re-estimate occupancy from ``density_fn`` at one jittered point per chosen cell. Random draws come
        from ``generator`` on the CPU (the same cells on every device)."""
        n, dev = self.occs.numel(), self.occs.device
        if warmup:
            idx = torch.arange(n, device=dev)
        else:
            rand = torch.randint(0, n, (n // 4,), generator=generator).to(dev)
            occupied = self.binary.flatten().nonzero()[:, 0]
            if occupied.numel() > n // 4:
                occupied = occupied[torch.randint(0, occupied.numel(), (n // 4,), generator=generator).to(dev)]
            idx = torch.cat([rand, occupied])
        x = self.cell_centers(idx, torch.rand(idx.shape[0], 3, generator=generator).to(dev))
        occ = torch.cat([density_fn(c) for c in x.split(chunk)]) * self.step_lengths(x, step_size)
        self.occs[idx] = torch.maximum(self.occs[idx] * ema_decay, occ)
        thre = min(self.occs.double().mean().item(), occ_thre)  # float64: a uniform field's mean is exact
        # >= keeps a uniform field (every cell at the mean) occupied instead of emptying the box before training
        self.binary.copy_((self.occs.double() >= thre).reshape(self.binary.shape))
        self.updates += 1

    def step_lengths(self, x: torch.Tensor, step_size: float) -> torch.Tensor | float:
        """About how long (world units) a marching step at points ``x`` [N, 3] is, for a box step of ``step_size``:
        that step everywhere, or with contraction ``step_size / density_scale`` [N] (one box step of the
        contracted cube; the marcher's samples beyond the box are about that long)."""
        return step_size / density_scale(x, self.aabb) if self.contracted else step_size

    def occupied_fraction(self) -> float:
        return self.binary.float().mean().item()

    def cells(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell indices [N, 3] of points ``x`` [N, 3] (clamped into the grid) and whether each point lies in the
        grid at all (always, when contracted)."""
        if self.contracted:
            ijk = contracted_cell(x, self.aabb, torch.tensor(self.binary.shape, device=x.device))
            return ijk, torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        u = (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        return (u * self.resolution).long().clamp(0, self.resolution - 1), ((u >= 0) & (u < 1)).all(-1)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Whether points ``x`` [N, 3] fall in occupied cells (False outside the box unless contracted)."""
        ijk, inside = self.cells(x)
        return self.binary[ijk[:, 0], ijk[:, 1], ijk[:, 2]] & inside
