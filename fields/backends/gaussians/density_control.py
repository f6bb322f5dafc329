"""Adaptive density control of 3D Gaussian Splatting as a strategy object (after gsplat's ``DefaultStrategy``).

Between ``densify_from`` and ``densify_until``, every step adds the norm of each visible Gaussian's view-space
mean gradient (in NDC units, as in 3DGS) to a running sum; every ``densify_every`` steps, Gaussians whose mean
gradient exceeds ``grow_grad2d`` are cloned (small ones) or split in two (large ones, children sampled from the
Gaussian and shrunk by 1.6), then too transparent (and, after the first opacity reset, too large) ones are
removed. Every ``reset_opacity_every`` steps opacities are clamped down to twice the pruning threshold.

Each edit resizes the parameters in place and applies the same row edit to the optimizer's per-parameter state
(Adam's moments: copied rows get zeros, removed rows go), so the optimizer stays consistent with the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable

import torch

from fields.backends.gaussians.params import PER_GAUSSIAN, STATS, GaussianSet
from renderers.splatting import quat_to_rotmat


@dataclass
class DensitySchedule:
    """When and how Gaussians are cloned, split, pruned and reset (the ``GaussiansConfig`` fields of the same
    names document each)."""

    densify_from: int
    densify_until: int
    densify_every: int
    grow_grad2d: float
    grow_scale3d: float
    prune_opacity: float
    prune_scale3d: float
    reset_opacity_every: int
    max_gaussians: int

    @classmethod
    def of(cls, settings: object) -> "DensitySchedule":
        """The schedule from any object with these attributes (the backend's config)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


@torch.no_grad()
def edit_gaussians(field: GaussianSet, optimizer: torch.optim.Optimizer | None,
                   rows: Callable[[torch.Tensor], torch.Tensor],
                   new_rows: dict[str, torch.Tensor] | None = None) -> None:
    """Replace every per-Gaussian tensor ``t`` by ``cat([rows(t), new_rows[name]])``; optimizer state rows
    follow ``rows`` and get zeros for the new rows. Statistics are reset."""
    new_rows = new_rows or {}
    with field.lock:
        for name in PER_GAUSSIAN:
            p = getattr(field, name)
            extra = new_rows.get(name, p.data[:0])
            state = optimizer.state.get(p, {}) if optimizer is not None else {}
            for key, v in state.items():
                if key != "step" and torch.is_tensor(v) and v.shape == p.shape:
                    state[key] = torch.cat([rows(v), v.new_zeros(extra.shape)])
            p.grad = None
            p.data = torch.cat([rows(p.data), extra])
        for name in STATS:
            getattr(field, name).data = field.means.new_zeros(len(field))


class DensityControl:
    """Clone, split, prune and opacity resets of ``field``'s Gaussians on ``schedule``."""

    def __init__(self, field: GaussianSet, schedule: DensitySchedule):
        self.field, self.cfg = field, schedule

    @torch.no_grad()
    def step(self, step: int, optimizer: torch.optim.Optimizer | None, info: dict) -> dict[str, int]:
        """Call after the optimizer step of training step ``step`` with the render's ``means2d`` (gradient
        retained), ``radii`` and image ``width``/``height``. Returns how many Gaussians were cloned, split and
        pruned (zeros on steps without a round)."""
        c = self.cfg
        done = {"cloned": 0, "split": 0, "pruned": 0}
        if step >= c.densify_until:
            return done
        self.accumulate(info)
        if step > c.densify_from and step % c.densify_every == 0:
            done["cloned"], done["split"] = self.grow(optimizer, step)
            done["pruned"] = self.prune(optimizer, step)
        if c.reset_opacity_every > 0 and step > 0 and step % c.reset_opacity_every == 0:
            self.reset_opacity(optimizer)
        return done

    def accumulate(self, info: dict) -> None:
        """Add the NDC-scaled view-space gradient norm of each visible Gaussian's mean (``info``: the render's
        ``means2d`` and ``radii``, image ``width``/``height`` and, for a crop, its ``grad_scale``). In data-parallel
        training (``info["sum_over_ranks"]``) the additions of every rank's image are summed, so that every rank
        holds the same statistics and takes the same densification decisions."""
        f, means2d = self.field, info.get("means2d")
        grad2d, count = torch.zeros_like(f.grad2d), torch.zeros_like(f.grad_count)
        if means2d is not None and means2d.grad is not None and means2d.shape[0] == len(f):
            # pixels -> NDC; times the rendered window's share of the image (a crop's mean loss weighs each pixel more)
            grad = means2d.grad * torch.tensor([info["width"] / 2, info["height"] / 2]) * info.get("grad_scale", 1.0)
            visible = info["radii"] > 0
            grad2d[visible] = grad[visible].norm(dim=-1)
            count[visible] = 1
        if info.get("sum_over_ranks") is not None:
            info["sum_over_ranks"](grad2d, count)
        f.grad2d += grad2d
        f.grad_count += count

    def grow(self, optimizer, step: int) -> tuple[int, int]:
        """Clone small and split large Gaussians with a high mean gradient (up to ``max_gaussians``)."""
        c, f = self.cfg, self.field
        grads = f.grad2d / f.grad_count.clamp_min(1)
        high = grads > c.grow_grad2d
        room = max(c.max_gaussians - len(f), 0)
        if int(high.sum()) > room:  # keep the largest gradients; a split adds one Gaussian, as a clone does
            keep = torch.zeros_like(high)
            keep[grads.topk(room).indices] = True
            high &= keep
        small = f.scales.exp().max(-1).values <= c.grow_scale3d * f.scene_scale
        clone, split = high & small, high & ~small
        n_clone, n_split = int(clone.sum()), int(split.sum())
        if n_clone:
            edit_gaussians(f, optimizer, lambda t: t,
                           {name: getattr(f, name).data[clone] for name in PER_GAUSSIAN})
            split = torch.cat([split, split.new_zeros(n_clone)])
        if n_split:
            self.split(optimizer, split, step)
        return n_clone, n_split

    def split(self, optimizer, mask: torch.Tensor, step: int) -> None:
        """Replace each Gaussian of ``mask`` by two sampled from it, with scales / 1.6."""
        f = self.field
        gen = torch.Generator().manual_seed(step)  # the same children on a resumed run
        scales = f.scales.data[mask].exp()
        offsets = torch.randn(2, len(scales), 3, generator=gen) * scales
        offsets = torch.einsum("nij,bnj->bni", quat_to_rotmat(f.quats.data[mask]), offsets)
        children = {name: getattr(f, name).data[mask].repeat(2, *[1] * (getattr(f, name).dim() - 1))
                    for name in PER_GAUSSIAN}
        children["means"] = (f.means.data[mask] + offsets).reshape(-1, 3)
        children["scales"] = (scales / 1.6).log().repeat(2, 1)
        edit_gaussians(f, optimizer, lambda t: t[~mask], children)

    def prune(self, optimizer, step: int) -> int:
        """Remove nearly transparent Gaussians and, after the first opacity reset, oversized ones."""
        c, f = self.cfg, self.field
        remove = torch.sigmoid(f.opacities.data) < c.prune_opacity
        if c.reset_opacity_every > 0 and step > c.reset_opacity_every:
            remove |= f.scales.data.exp().max(-1).values > c.prune_scale3d * f.scene_scale
        if bool(remove.all()):  # never remove every Gaussian: keep the most opaque one
            remove[f.opacities.data.argmax()] = False
        n = int(remove.sum())
        if n:
            edit_gaussians(f, optimizer, lambda t: t[~remove])
        return n

    def reset_opacity(self, optimizer) -> None:
        """Clamp opacities to 2 x ``prune_opacity`` and zero their optimizer moments (as 3DGS does)."""
        f, value = self.field, 2 * self.cfg.prune_opacity
        with f.lock:
            f.opacities.data.clamp_(max=math.log(value / (1 - value)))
            for key, v in (optimizer.state.get(f.opacities, {}) if optimizer is not None else {}).items():
                if key != "step" and torch.is_tensor(v) and v.shape == f.opacities.shape:
                    v.zero_()
