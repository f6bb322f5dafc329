"""Loader for the NeRF "Blender" format: ``transforms_{train,val,test}.json`` with ``camera_angle_x``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scenes.cameras import Cameras
from scenes.io import (SceneError, downscale_factors, get_frames, get_number, get_pose, image_size, read_images,
                       read_json, resolve_image)
from scenes.scene import SceneSplit

# NeRF-synthetic objects fit in this box (the convention of nerfacc and Instant-NGP for these scenes).
DEFAULT_AABB = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))


def is_blender(root: Path) -> bool:
    return (root / "transforms_train.json").is_file()


def load_blender(root: Path, split: str = "train", downscale: int | str = 1,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0), allow_outside: bool = False) -> SceneSplit:
    """Load one split. Each image's size comes from its file; ``camera_angle_x`` gives the focal lengths.

    An optional top-level ``aabb`` ([[xmin, ymin, zmin], [xmax, ymax, zmax]]) overrides the default box; the
    embedded procedural scene writes one.
    """
    root = Path(root)
    path = root / f"transforms_{split}.json"
    data = read_json(path)
    fov_x = get_number(data, "camera_angle_x", path, positive=True)
    if fov_x >= np.pi:
        raise SceneError(f"{path}: 'camera_angle_x' must be below pi radians, got {fov_x}")
    frames = get_frames(data, path)
    poses = np.stack([get_pose(f, path, i) for i, f in enumerate(frames)])
    files = [resolve_image(root, f.get("file_path"), path, i, allow_outside) for i, f in enumerate(frames)]

    sizes = [image_size(f) for f in files]  # each image's own (camera_angle_x spans each one's width)
    images = read_images(files, sizes, downscale_factors(downscale, sizes, root))
    aabb = torch.tensor(_read_aabb(data, path), dtype=torch.float32)
    size = torch.tensor(sizes)
    cams = Cameras.from_fov(torch.from_numpy(poses).float(), size[:, 0], size[:, 1], fov_x)
    cams = cams.resized(images.widths, images.heights)
    return SceneSplit(root.name, split, cams, images, aabb, background, tuple(str(f) for f in files))


def _read_aabb(data: dict, path: Path):
    if "aabb" not in data:
        return DEFAULT_AABB
    try:
        box = np.asarray(data["aabb"], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        box = None
    if box is None or box.shape != (2, 3) or not np.isfinite(box).all() or (box[1] <= box[0]).any():
        raise SceneError(f"{path}: 'aabb' must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with max > min")
    return box.tolist()
