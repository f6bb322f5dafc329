"""Loader for nerfstudio / Instant-NGP ``transforms.json`` (one file, OpenCV intrinsics and distortion).

Intrinsics ``fl_x fl_y cx cy w h`` (or ``camera_angle_x``) and distortion ``k1 k2 p1 p2`` may sit at the top
level or be overridden per frame, ``w h`` included: frames may differ in size (``camera_model`` OPENCV, PINHOLE,
SIMPLE_PINHOLE, or OPENCV_FISHEYE with ``k1 k2 k3 k4``). Poses are oriented (mean camera up -> +Z), centred
and scaled so the farthest camera is at distance 1 (scenes/orient.py); the scene box is then ``[-aabb_scale, aabb_scale]^3``
(``aabb_scale`` defaults to 1). As in nerfstudio's dataparser, an ``applied_transform`` (the rotation a
converter such as ``fields process`` already applied to COLMAP's poses) is folded into the recorded transform,
so that ``from_dataset`` maps from the frame before it. The SfM points of ``ply_file_path`` (in the poses'
frame) come with the split and, unless the file sets ``aabb_scale``, give the scene box.
The split comes from ``{train,val,test}_filenames`` when the file has them, else every ``test_every``-th frame
is held out for testing (the LLFF convention).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from scenes.cameras import Cameras
from scenes.colmap import near_far
from scenes.images import Images
from scenes.io import (SceneError, downscale_factors, first_line, get_frames, get_number, get_pose, read_images,
                       read_json, read_masks, resolve_image)
from scenes.orient import place, scene_box
from scenes.scene import SceneSplit

DISTORTION = {"OPENCV": ("k1", "k2", "p1", "p2"), "PINHOLE": (), "SIMPLE_PINHOLE": (),
              "OPENCV_FISHEYE": ("k1", "k2", "k3", "k4")}


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


def _intrinsics(frame: dict, data: dict, path: Path, i: int, model: str) -> tuple[list[float], int, int]:
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
    dist = [_frame_value(frame, data, k, path, i, default=0.0) for k in DISTORTION[model]]
    return [fx, fy, cx, cy, *dist, *[0.0] * (4 - len(dist))], w, h


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
    if not isinstance(model, str) or model not in DISTORTION:
        raise SceneError(f"{path}: camera_model {model!r} is not supported (use {', '.join(DISTORTION)})")
    poses = np.stack([get_pose(f, path, i) for i, f in enumerate(frames)])
    points = _read_points(root, data, path, allow_outside)
    placement = place(poses, None if points is None else points[0])
    world = placement.poses(poses)

    idx = _split_indices(data, frames, split, test_every, path)
    params, sizes = [], []
    for i in idx:
        p, w, h = _intrinsics(frames[i], data, path, i, model)
        params.append(p)
        sizes.append((w, h))
    files = [resolve_image(root, frames[i].get("file_path"), path, i, allow_outside) for i in idx]
    factors = downscale_factors(downscale, sizes, root)
    images = read_images(files, sizes, factors)
    masks = _read_masks(root, frames, idx, path, sizes, factors, allow_outside)
    p = torch.tensor(params, dtype=torch.float32)
    dist = p[:, 4:8] if bool((p[:, 4:8] != 0).any()) else None
    size = torch.tensor(sizes)
    cams = Cameras(torch.from_numpy(world[idx]).float(), p[:, 0], p[:, 1], p[:, 2], p[:, 3], size[:, 0], size[:, 1],
                   dist, model == "OPENCV_FISHEYE")
    cams = cams.resized(images.widths, images.heights)
    extra = {}
    if points is not None:
        bounds = near_far(poses[idx], np.array(params), np.array(sizes), points[0])
        extra = {"points": torch.from_numpy(placement.points(points[0])).float(),
                 "point_colors": torch.from_numpy(points[1]),
                 "near_far": None if bounds is None else (bounds[0] * placement.scale, bounds[1] * placement.scale)}
    if "aabb_scale" in data or points is None:
        half = get_number(data, "aabb_scale", path, positive=True) if "aabb_scale" in data else 1.0
        aabb = torch.tensor([[-half] * 3, [half] * 3], dtype=torch.float32)
    else:
        aabb = scene_box(world[:, :3, 3], extra["points"].numpy())
    if (applied := _applied_transform(data, path)) is not None:
        placement = placement.after(*applied)
    return SceneSplit(root.name, split, cams, images, aabb, background, tuple(str(f) for f in files),
                      **placement.split_fields(), **extra, masks=masks)


def _read_masks(root: Path, frames: list[dict], idx: list[int], path: Path, sizes: list[tuple[int, int]],
                factors: list[int], allow_outside: bool) -> Images | None:
    """The frames' ``mask_path`` images (nerfstudio: black pixels are ignored), or None where no frame has one."""
    named = [i for i in idx if "mask_path" in frames[i]]
    if not named:
        return None
    if len(named) != len(idx):
        missing = next(i for i in idx if "mask_path" not in frames[i])
        raise SceneError(f"{path}: frames[{missing}] has no 'mask_path' but other frames do; give every frame a "
                         "mask or none")
    files = [resolve_image(root, frames[i]["mask_path"], path, i, allow_outside, key="mask_path") for i in idx]
    return read_masks(files, sizes, factors)


def _read_points(root: Path, data: dict, path: Path, allow_outside: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """The SfM points [P, 3] and colours [P, 3] uint8 of the PLY named by ``ply_file_path`` (in the frame of the
    poses, as ``ns-process-data`` and ``fields process`` write it), or None without one."""
    if "ply_file_path" not in data:
        return None
    name = data["ply_file_path"]
    ply = root / name if isinstance(name, str) and name and "\0" not in name else None
    if ply is None:
        raise SceneError(f"{path}: 'ply_file_path' must be a non-empty string")
    if not allow_outside and not ply.resolve().is_relative_to(root.resolve()):
        raise SceneError(f"{path}: 'ply_file_path' ({name!r}) leads outside the scene folder {root}; pass "
                         "--allow-outside-data if that is intended")
    if not ply.is_file():
        raise SceneError(f"{ply}: point cloud file not found (named by {path}'s 'ply_file_path')")
    import trimesh  # only scenes with a point cloud need it

    try:
        cloud = trimesh.load(ply, file_type="ply", process=False)
        xyz = np.asarray(cloud.vertices, dtype=np.float64).reshape(-1, 3)
        colors = getattr(cloud, "colors", None)
        rgb = (np.asarray(colors)[:, :3] if colors is not None and len(colors) == len(xyz)
               else np.full((len(xyz), 3), 128)).astype(np.uint8)
    except Exception as e:  # noqa: BLE001 - trimesh raises many types for broken files
        raise SceneError(f"{ply}: cannot read the point cloud ({first_line(e)})") from None
    if not np.isfinite(xyz).all():
        raise SceneError(f"{ply}: point cloud contains NaN or inf")
    return (xyz, rgb) if len(xyz) else None
