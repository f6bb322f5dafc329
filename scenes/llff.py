"""Loader for LLFF scenes: ``poses_bounds.npy`` with images in ``images/`` or downscaled copies in ``images_N/``.

Each row of ``poses_bounds.npy`` is a 3x5 matrix, flattened row by row, then the near and far bound: columns
0-2 are the camera's axes in LLFF's [down, right, back] order, column 3 its centre, column 4 the (height,
width, focal) of the images the poses were made for. Our OpenGL axes are [right, up, back] = [col 1, -col 0,
col 2] (NeRF's ``load_llff.py``). Images are the folder's files sorted by name, one per row. The intrinsics are
scaled from the row's height, width and focal to its image's size as loaded (images may differ in size), with
the principal point at the centre. ``sparse/0/points3D.bin`` (or ``.txt``), which LLFF scenes often keep, gives
SfM points in the same frame. Every 8th image is held out for testing.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from scenes.cameras import Cameras
from scenes.colmap import read_points_file, split_indices
from scenes.io import (AUTO_LONG_SIDE, SceneError, downscale_factor, downscaled_size, first_line, image_size,
                       pose_problem, read_images, say_once)
from scenes.orient import place, scene_box
from scenes.scene import SceneSplit

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def is_llff(root: Path) -> bool:
    return (root / "poses_bounds.npy").is_file()


def read_poses_bounds(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Camera-to-world OpenGL poses [N, 4, 4], (height, width, focal) [N, 3] and (near, far) [N, 2]."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SceneError(f"{path}: not a readable .npy array ({first_line(e)})") from None
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != 17 or not np.issubdtype(arr.dtype, np.number):
        raise SceneError(f"{path}: expected an N x 17 array of numbers (a 3x5 pose, then near and far, per image), "
                         f"got {arr.dtype} of shape {list(arr.shape)}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise SceneError(f"{path}: row {int(np.where(~np.isfinite(arr).all(1))[0][0])} contains NaN or inf")
    llff = arr[:, :15].reshape(-1, 3, 5)
    c2w = np.tile(np.eye(4), (len(arr), 1, 1))
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2] = llff[:, :, 1], -llff[:, :, 0], llff[:, :, 2]
    c2w[:, :3, 3] = llff[:, :, 3]
    for i, pose in enumerate(c2w):
        if problem := pose_problem(pose):
            raise SceneError(f"{path}: the pose in row {i} {problem}")
    hwf, bounds = llff[:, :, 4], arr[:, 15:]
    if (hwf <= 0).any():
        raise SceneError(f"{path}: height, width and focal must be positive (row {int(np.where((hwf <= 0).any(1))[0][0])})")
    if (bounds[:, 0] <= 0).any() or (bounds[:, 1] <= bounds[:, 0]).any():
        row = int(np.where((bounds[:, 0] <= 0) | (bounds[:, 1] <= bounds[:, 0]))[0][0])
        raise SceneError(f"{path}: row {row} needs 0 < near < far, got near {bounds[row, 0]}, far {bounds[row, 1]}")
    return c2w, hwf, bounds


def points_fit(xyz: np.ndarray, c2w: np.ndarray, hwf: np.ndarray, bounds: np.ndarray) -> bool:
    """Whether SfM points belong to these poses: of the points inside each camera's view, nearly all (median
    over cameras 80%) lie between half its near and 1.5 times its far bound, as LLFF computed them from them."""
    if len(xyz) == 0:
        return False
    fractions = []
    for pose, (h, w, f), (near, far) in zip(c2w, hwf, bounds):
        local = (xyz - pose[:3, 3]) @ pose[:3, :3]
        z = -local[:, 2]
        front = z > 1e-9
        x, y = local[front, 0] / z[front] * f, local[front, 1] / z[front] * f
        z = z[front][(np.abs(x) < w / 2) & (np.abs(y) < h / 2)]
        fractions.append(((z > 0.5 * near) & (z < 1.5 * far)).mean() if len(z) else 0.0)
    return float(np.median(fractions)) > 0.8


def image_folders(root: Path) -> dict[int, Path]:
    """``{1: images/, N: images_N/}`` for the image folders present."""
    found = {1: root / "images"} if (root / "images").is_dir() else {}
    for sub in root.iterdir():
        if sub.is_dir() and (m := re.fullmatch(r"images_(\d+)", sub.name)) and int(m.group(1)) > 0:
            found[int(m.group(1))] = sub
    return found


def choose_folder(root: Path, downscale: int | str, width: int, height: int) -> tuple[Path, float]:
    """The image folder to read for ``--downscale`` (relative to the poses' full ``width`` x ``height``) and the
    factor still to apply to its images: ``images_N/`` when it exists, else the nearest finer folder downscaled
    further, else the finest folder there is (said once)."""
    folders = image_folders(root)
    if not folders:
        raise SceneError(f"{root}: poses_bounds.npy but no images/ or images_N/ folder")
    factor = downscale_factor(downscale, width, height)
    if factor in folders:
        return folders[factor], 1.0
    finer = [m for m in folders if m < factor]
    if finer:
        return folders[max(finer)], factor / max(finer)
    smallest = min(folders)
    if downscale != "auto":
        say_once(f"{root}: no images_{factor}/ and nothing finer; using {folders[smallest].name}/ (--downscale {smallest})")
    return folders[smallest], 1.0


def load_llff(root: Path, split: str = "train", downscale: int | str = "auto", test_every: int = 8,
              background: tuple[float, float, float] = (1.0, 1.0, 1.0), allow_outside: bool = False) -> SceneSplit:
    """Load one split of an LLFF scene."""
    root = Path(root)
    path = root / "poses_bounds.npy"
    c2w, hwf, bounds = read_poses_bounds(path)
    full_w, full_h = int(round(hwf[:, 1].max())), int(round(hwf[:, 0].max()))  # the largest images' size
    folder, residual = choose_folder(root, downscale, full_w, full_h)
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) != len(c2w):
        raise SceneError(f"{path}: {len(c2w)} poses but {len(files)} images in {folder}")
    if not allow_outside:
        for f in files:
            if not f.resolve().is_relative_to(root.resolve()):
                raise SceneError(f"{f}: leads outside the scene folder {root}; pass --allow-outside-data if that is intended")
    sizes = [image_size(f) for f in files]
    out = [downscaled_size(w, h, residual) for w, h in sizes]
    if downscale == "auto":
        shown = ", ".join(f"{w}x{h}" for w, h in dict.fromkeys(out))
        say_once(f"{root}: --downscale auto: training at {shown} from {folder.name}/ (long side at most "
                 f"{AUTO_LONG_SIDE} px)")

    points = read_points_file(root / "sparse" / "0")
    if points is not None and not points_fit(points[0], c2w, hwf, bounds):
        say_once(f"{root / 'sparse' / '0'}: its points3D do not lie between the near and far bounds of "
                 f"{path.name}'s cameras (another reconstruction?); not used")
        points = None
    xyz = None if points is None else points[0]
    placement = place(c2w, xyz)
    idx = split_indices(len(c2w), split, test_every)
    pixels = read_images([files[i] for i in idx], [sizes[i] for i in idx], residual,
                         source_factor=hwf[idx[0], 1] / sizes[idx[0]][0])
    w, h = pixels.widths.double().numpy(), pixels.heights.double().numpy()
    fx = torch.tensor(hwf[idx, 2] * w / hwf[idx, 1], dtype=torch.float32)
    fy = torch.tensor(hwf[idx, 2] * h / hwf[idx, 0], dtype=torch.float32)
    cams = Cameras(torch.from_numpy(placement.poses(c2w[idx])).float(), fx, fy, torch.tensor(w / 2).float(),
                   torch.tensor(h / 2).float(), pixels.widths, pixels.heights)
    world_cams = placement.points(c2w[:, :3, 3])
    if xyz is not None:
        world_points = placement.points(xyz)
        aabb = scene_box(world_cams, world_points)
    else:  # what the cameras see: their axes from the near to the far bound
        axis = -c2w[:, :3, 2]
        seen = np.concatenate([c2w[:, :3, 3] + axis * bounds[:, :1], c2w[:, :3, 3] + axis * bounds[:, 1:]])
        aabb = scene_box(world_cams, placement.points(seen))
    extra = {} if xyz is None else {"points": torch.from_numpy(world_points).float(),
                                    "point_colors": torch.from_numpy(points[1])}
    return SceneSplit(root.name, split, cams, pixels, aabb, background, tuple(str(files[i]) for i in idx),
                      **placement.split_fields(), **extra,
                      near_far=(float(bounds[:, 0].min() * placement.scale), float(bounds[:, 1].max() * placement.scale)))
