"""Point-cloud export: the surface points of ``renderers.surface_points`` (where the training rays turn opaque)
as a coloured PLY, after a check that they fit in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from fields.export import ExportError, rgba8
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


def write_point_cloud(points: np.ndarray, colors: np.ndarray, path: Path) -> None:
    """Write coloured points as a PLY file."""
    trimesh.PointCloud(points, colors=rgba8(colors)).export(path, file_type="ply")
