"""Surface points of a rendered scene: where training rays turn opaque, at their expected depth, with the colour
rendered there. Point-cloud export writes them; seeding Gaussians from a trained field starts from them.

Random pixels of the given cameras are rendered through the occupancy grid; a ray whose opacity reaches
``min_opacity`` contributes the point at its expected depth with its rendered colour (on a black background,
divided by opacity, so no background colour leaks in).
"""

from __future__ import annotations

import numpy as np
import torch
from rich.progress import Progress

from renderers.model import VolumeModel
from scenes.cameras import Cameras, pixel_rays


class SurfacePointsError(ValueError):
    """No surface to sample (an empty field) or settings that cannot work; the message says which."""


@torch.no_grad()
def surface_points(model: VolumeModel, cams: Cameras, num_points: int, min_opacity: float = 0.95, chunk: int = 8192,
                   max_rays_per_point: int = 50, seed: int = 0, region: torch.Tensor | None = None,
                   show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``num_points`` points [N, 3] and colours [N, 3] in [0, 1] seen by ``cams`` (inside the box ``region``
    [2, 3] when given)."""
    if not 0 < min_opacity <= 1:
        raise SurfacePointsError(f"--min-opacity must be in (0, 1] (got {min_opacity})")
    gen = torch.Generator().manual_seed(seed)
    points, colors, found, tried = [], [], 0, 0
    black = torch.zeros(3)
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task("points", total=num_points)
        while found < num_points and tried < max_rays_per_point * num_points:
            cam = torch.randint(0, len(cams), (chunk,), generator=gen)
            px = torch.rand(chunk, generator=gen) * cams.width[cam]  # each camera at its own size
            py = torch.rand(chunk, generator=gen) * cams.height[cam]
            origins, dirs = pixel_rays(cams, cam, px, py)
            out = model.render_rays(origins, dirs, black)
            where = origins + dirs * (out["depth"] / out["opacity"].clamp_min(1e-12))[:, None]
            keep = out["opacity"] >= min_opacity
            if region is not None:
                keep &= ((where >= region[0]) & (where <= region[1])).all(-1)
            opacity = out["opacity"][keep, None]
            points.append(where[keep])
            colors.append((out["rgb"][keep] / opacity).clamp(0, 1))
            found += int(keep.sum())
            tried += chunk
            progress.update(task, completed=min(found, num_points))
    if found == 0:
        raise SurfacePointsError(f"no training ray reached opacity {min_opacity} in {tried} rays: the field looks "
                                 "empty; train longer or lower --min-opacity")
    return torch.cat(points)[:num_points].numpy(), torch.cat(colors)[:num_points].numpy()
