"""What gets rendered: one object per kind of scene model, each with one ``render(cameras, index, background)``.

Evaluation, export, the viewer and distillation take such an object and never the loose pieces. A
``VolumeModel`` is a radiance field with its occupancy grid and render settings, drawn by ray marching; the
Gaussian backend has its own (``fields.backends.gaussians.SplatModel``), drawn by splatting, with the same
``field`` / ``grid`` / ``render_cfg`` so that point queries (mesh export, point clouds, distillation) work on
either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from renderers.ndc import NDC
from renderers.occupancy import OccupancyGrid
from renderers.render import RenderConfig, render_image, render_rays
from scenes.cameras import Cameras, image_rays


class VolumeField(Protocol):
    """What the volume renderer needs of a field: density alone, and density + colour split in two."""

    def density(self, x: torch.Tensor) -> torch.Tensor: ...

    def geometry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def color(self, features: torch.Tensor, d: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor: ...


class Renderable(Protocol):
    """Anything the viewer, evaluation and video export can draw."""

    pinhole_only: bool
    """Whether it projects through an ideal pinhole only (then images of distorted lenses are compared with it
    after ``scenes.undistort.undistorted``)."""

    def render(self, cams: Cameras, i: int, background: torch.Tensor) -> dict[str, torch.Tensor]:
        """Camera ``i`` of ``cams`` as ``rgb`` [H, W, 3], ``depth`` and ``opacity`` [H, W]; differentiable where
        the kind trains on whole images (splatting), without grad where it trains on rays (volumes)."""
        ...


@dataclass
class VolumeModel:
    """A radiance field, its occupancy grid and its render settings, drawn by ray marching; with ``ndc`` (a
    forward-facing capture) the field and grid live in that NDC space and every world ray is mapped into it."""

    field: VolumeField
    grid: OccupancyGrid
    render_cfg: RenderConfig
    ndc: NDC | None = None
    pinhole_only: ClassVar[bool] = False  # rays are cast through the real lens model (distortion, fisheye)

    def render(self, cams: Cameras, i: int, background: torch.Tensor) -> dict[str, torch.Tensor]:
        """Camera ``i`` of ``cams`` (no grad; CPU tensors): ``rgb`` [H, W, 3], ``depth`` (world units, with
        ``ndc`` too), ``opacity`` [H, W]."""
        if self.ndc is None:
            return render_image(self.field.geometry, self.field.color, self.grid, cams, i, self.render_cfg, background)
        origins, dirs = (t.reshape(-1, 3) for t in image_rays(cams, i))
        out = render_image(self.field.geometry, self.field.color, self.grid, cams, i, self.render_cfg, background,
                           rays=self.ndc.rays(origins, dirs))
        depth = self.ndc.world_depth(origins, dirs, out["depth"].flatten(), out["opacity"].flatten())
        return {**out, "depth": depth.reshape(out["depth"].shape)}

    def render_rays(self, origins: torch.Tensor, dirs: torch.Tensor, background: torch.Tensor,
                    jitter: torch.Tensor | None = None, codes: torch.Tensor | None = None,
                    prune_first: bool = False) -> dict[str, torch.Tensor]:
        """Rays [R, 3] rendered with autograd where enabled (training, distillation); ``codes`` [R, k]: each ray's
        appearance code (its training image's; None: the field's own choice for new views); ``prune_first``: find
        the kept samples front to back before the autograd pass; see ``render_rays``."""
        if self.ndc is None:
            return render_rays(self.field.geometry, self.field.color, self.grid, origins, dirs, self.render_cfg,
                               background, jitter, codes, prune_first)
        out = render_rays(self.field.geometry, self.field.color, self.grid, *self.ndc.rays(origins, dirs),
                          self.render_cfg, background, jitter, codes, prune_first)
        return {**out, "depth": self.ndc.world_depth(origins, dirs, out["depth"], out["opacity"])}

    @property
    def step_size(self) -> float:
        """The marching step over the grid's box."""
        return self.render_cfg.step_size(self.grid.aabb)
