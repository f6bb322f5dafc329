"""Point-cloud export: surface points from the expected depth of training rays that the field renders opaque.

Random pixels of the training views are rendered through the occupancy grid; a ray whose opacity reaches
``min_opacity`` contributes the point at its expected depth with its rendered colour (on a black background,
divided by opacity, so no background colour leaks in).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh
from rich.progress import Progress

from fields.backends.base import Field
from fields.export import ExportError, rgba8
from renderers.occupancy import OccupancyGrid
from renderers.render import RenderConfig, render_rays
from scenes.cameras import Cameras, pixel_rays
from scenes.memory import available_bytes, gigabytes

BYTES_PER_POINT = 128  # positions and colours while collected, concatenated, and as trimesh copies them


def check_point_memory(num_points: int) -> None:
    """ExportError for a point count below 1 or too large for memory (with the largest that fits)."""
    if num_points < 1:
        raise ExportError(f"--num-points must be at least 1 (got {num_points})")
    need, free = num_points * BYTES_PER_POINT, available_bytes()
    if need > free:
        raise ExportError(f"--num-points {num_points} needs about {gigabytes(need)} of memory, more than the "
                          f"{gigabytes(free)} available; use --num-points {free // BYTES_PER_POINT} or fewer")


@torch.no_grad()
def point_cloud(field: Field, grid: OccupancyGrid, render_cfg: RenderConfig, cams: Cameras, num_points: int,
                min_opacity: float = 0.95, chunk: int = 8192, max_rays_per_point: int = 50, seed: int = 0,
                show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``num_points`` points [N, 3] and colours [N, 3] in [0, 1] seen by the training cameras."""
    check_point_memory(num_points)
    if not 0 < min_opacity <= 1:
        raise ExportError(f"--min-opacity must be in (0, 1] (got {min_opacity})")
    gen = torch.Generator().manual_seed(seed)
    points, colors, found, tried = [], [], 0, 0
    black = torch.zeros(3)
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task("points", total=num_points)
        while found < num_points and tried < max_rays_per_point * num_points:
            cam = torch.randint(0, len(cams), (chunk,), generator=gen)
            px = torch.rand(chunk, generator=gen) * cams.width
            py = torch.rand(chunk, generator=gen) * cams.height
            origins, dirs = pixel_rays(cams, cam, px, py)
            out = render_rays(field, grid, origins, dirs, render_cfg, black, field.density)
            keep = out["opacity"] >= min_opacity
            opacity = out["opacity"][keep, None]
            points.append(origins[keep] + dirs[keep] * (out["depth"][keep, None] / opacity))
            colors.append((out["rgb"][keep] / opacity).clamp(0, 1))
            found += int(keep.sum())
            tried += chunk
            progress.update(task, completed=min(found, num_points))
    if found == 0:
        raise ExportError(f"no training ray reached opacity {min_opacity} in {tried} rays: the field looks empty; "
                          "train longer or lower --min-opacity")
    return torch.cat(points)[:num_points].numpy(), torch.cat(colors)[:num_points].numpy()


def write_point_cloud(points: np.ndarray, colors: np.ndarray, path: Path) -> None:
    """Write coloured points as a PLY file."""
    trimesh.PointCloud(points, colors=rgba8(colors)).export(path, file_type="ply")
