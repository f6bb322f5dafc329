"""Loader for nerfstudio / Instant-NGP ``transforms.json`` (one file, OpenCV intrinsics and distortion).

Intrinsics ``fl_x fl_y cx cy w h`` (or ``camera_angle_x``) and distortion ``k1 k2 p1 p2`` may sit at the top
level or be overridden per frame. Poses are oriented (mean camera up -> +Z), centred and scaled so the farthest
camera is at distance 1 (scenes/orient.py); the scene box is then ``[-aabb_scale, aabb_scale]^3``
(``aabb_scale`` defaults to 1). As in nerfstudio's dataparser, an ``applied_transform`` (the rotation a
converter such as ``fields process`` already applied to COLMAP's poses) is folded into the recorded transform,
so that ``from_dataset`` maps from the frame before it.
The split comes from ``{train,val,test}_filenames`` when the file has them, else every ``test_every``-th frame
is held out for testing (the LLFF convention).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from scenes.cameras import Cameras
from scenes.io import (SceneError, downscale_factor, get_frames, get_number, get_pose, read_images, read_json,
                       resolve_image)
from scenes.orient import place
from scenes.scene import SceneSplit

INTRINSICS = ("fl_x", "fl_y", "cx", "cy")
DISTORTION = ("k1", "k2", "p1", "p2")


def is_nerfstudio(root: Path) -> bool:
    return (root / "transforms.json").is_file()


def _frame_value(frame: dict, data: dict, key: str, path: Path, i: int, default=None, positive=False) -> float:
    if key in frame:
        return get_number(frame, key, path, f" in frames[{i}]", positive)
    if key in data:
        return get_number(data, key, path, positive=positive)
    if default is None:
        raise SceneError(f"{path}: missing '{key}' (neither at the top level nor in frames[{i}])")
    return default


def _intrinsics(frame: dict, data: dict, path: Path, i: int) -> tuple[list[float], int, int]:
    w = int(_frame_value(frame, data, "w", path, i, positive=True))
    h = int(_frame_value(frame, data, "h", path, i, positive=True))
    if "fl_x" in frame or "fl_x" in data:
        fx = _frame_value(frame, data, "fl_x", path, i, positive=True)
    else:
        angle = _frame_value(frame, data, "camera_angle_x", path, i, positive=True)
        fx = 0.5 * w / math.tan(0.5 * angle)
    fy = _frame_value(frame, data, "fl_y", path, i, default=fx, positive=True)
    cx = _frame_value(frame, data, "cx", path, i, default=w / 2)
    cy = _frame_value(frame, data, "cy", path, i, default=h / 2)
    dist = [_frame_value(frame, data, k, path, i, default=0.0) for k in DISTORTION]
    return [fx, fy, cx, cy, *dist], w, h


def _split_indices(data: dict, frames: list[dict], split: str, test_every: int, path: Path) -> list[int]:
    key = f"{split}_filenames"
    if key in data:
        names = data[key]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SceneError(f"{path}: '{key}' must be a list of file paths")
        wanted = {str(Path(n)) for n in names}
        idx = [i for i, f in enumerate(frames) if str(Path(str(f.get("file_path")))) in wanted]
        if not idx:
            raise SceneError(f"{path}: none of the files in '{key}' appear in 'frames'")
        return idx
    if split == "train":
        return [i for i in range(len(frames)) if i % test_every != 0] or list(range(len(frames)))
    return [i for i in range(len(frames)) if i % test_every == 0]


def _applied_transform(data: dict, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The rotation and translation of ``applied_transform`` (3x4), if the file has one."""
    if "applied_transform" not in data:
        return None
    try:
        m = np.asarray(data["applied_transform"], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        m = None
    if m is None or m.shape != (3, 4) or not np.isfinite(m).all():
        raise SceneError(f"{path}: 'applied_transform' must be a 3x4 list of numbers")
    rot = m[:, :3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-4) or abs(np.linalg.det(rot) - 1) > 1e-4:
        raise SceneError(f"{path}: 'applied_transform' must be a rotation and translation")
    return rot, m[:, 3]


def load_nerfstudio(root: Path, split: str = "train", downscale: int | str = 1, test_every: int = 8,
                    background: tuple[float, float, float] = (1.0, 1.0, 1.0), allow_outside: bool = False) -> SceneSplit:
    """Load one split of a ``transforms.json`` scene."""
    root = Path(root)
    path = root / "transforms.json"
    data = read_json(path)
    frames = get_frames(data, path)
    model = data.get("camera_model", "OPENCV")
    if model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
        raise SceneError(f"{path}: camera_model {model!r} is not supported (use OPENCV or PINHOLE)")
    poses = np.stack([get_pose(f, path, i) for i, f in enumerate(frames)])
    placement = place(poses)
    poses = placement.poses(poses)
    if (applied := _applied_transform(data, path)) is not None:
        placement = placement.after(*applied)
    half = get_number(data, "aabb_scale", path, positive=True) if "aabb_scale" in data else 1.0

    idx = _split_indices(data, frames, split, test_every, path)
    params, size = [], None
    for i in idx:
        p, w, h = _intrinsics(frames[i], data, path, i)
        if size is not None and (w, h) != size:
            raise SceneError(f"{path}: frames[{i}] is {w}x{h} but earlier frames are {size[0]}x{size[1]}; "
                             "all images of a split must have one size")
        size = (w, h)
        params.append(p)
    files = [resolve_image(root, frames[i].get("file_path"), path, i, allow_outside) for i in idx]
    images = read_images(files, size, downscale_factor(downscale, *size, root))
    p = torch.tensor(params, dtype=torch.float32)
    dist = p[:, 4:8] if bool((p[:, 4:8] != 0).any()) else None
    cams = Cameras(torch.from_numpy(poses[idx]).float(), p[:, 0], p[:, 1], p[:, 2], p[:, 3], size[0], size[1], dist)
    cams = cams.resized(images.shape[2], images.shape[1])
    aabb = torch.tensor([[-half] * 3, [half] * 3], dtype=torch.float32)
    return SceneSplit(root.name, split, cams, images, aabb, background, tuple(str(f) for f in files),
                      **placement.split_fields())
