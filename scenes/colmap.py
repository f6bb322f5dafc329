"""Loader for a COLMAP workspace: ``images/`` and a model in ``sparse/0/`` or ``sparse/`` (``.bin`` or ``.txt``).

pycolmap reads the model. COLMAP stores world-to-camera poses in OpenCV axes (x right, y down, z forward); they
are inverted and turned to our camera-to-world OpenGL convention, then oriented, centred and scaled
(scenes/orient.py). Supported camera models: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV and
OPENCV_FISHEYE; each image may have its own camera and size. The SfM points come with the split (world frame)
and give the scene box and near/far. Every 8th image (sorted by name) is held out for testing, the LLFF /
mip-NeRF 360 convention.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from scenes.cameras import Cameras
from scenes.io import SceneError, downscale_factors, first_line, read_images, read_masks
from scenes.orient import place, scene_box
from scenes.scene import SceneSplit

# parameter layout of each model -> (fx, fy, cx, cy, distortion indices, fisheye)
MODELS = {
    "SIMPLE_PINHOLE": ((0, 0, 1, 2), (), False),
    "PINHOLE": ((0, 1, 2, 3), (), False),
    "SIMPLE_RADIAL": ((0, 0, 1, 2), (3,), False),  # k1
    "RADIAL": ((0, 0, 1, 2), (3, 4), False),  # k1 k2
    "OPENCV": ((0, 1, 2, 3), (4, 5, 6, 7), False),  # k1 k2 p1 p2
    "OPENCV_FISHEYE": ((0, 1, 2, 3), (4, 5, 6, 7), True),  # k1 k2 k3 k4 (equidistant)
}
OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0, 1.0])  # flips the camera's y and z axes


def model_folder(root: Path) -> Path | None:
    """``sparse/0`` or ``sparse`` when it holds a COLMAP model (cameras and images, binary or text)."""
    for folder in (root / "sparse" / "0", root / "sparse"):
        if any((folder / f"cameras.{ext}").is_file() and (folder / f"images.{ext}").is_file() for ext in ("bin", "txt")):
            return folder
    return None


def is_colmap(root: Path) -> bool:
    return model_folder(root) is not None


def read_model(folder: Path):
    """The pycolmap Reconstruction in ``folder``, or SceneError naming the folder."""
    import pycolmap  # imported here: only COLMAP scenes need it

    try:
        return pycolmap.Reconstruction(folder)
    except Exception as e:  # noqa: BLE001 - pycolmap raises ValueError/RuntimeError for missing or broken files
        raise SceneError(f"{folder}: cannot read the COLMAP model ({first_line(e)})") from None


def camera_params(camera, model_file: Path) -> tuple[list[float], bool]:
    """``[fx, fy, cx, cy, d0, d1, d2, d3]`` and whether the camera is a fisheye, for a pycolmap camera."""
    name = camera.model.name
    if name not in MODELS:
        raise SceneError(f"{model_file}: camera {camera.camera_id} uses the {name} model; supported: "
                         f"{', '.join(MODELS)} (undistort the images with COLMAP's image_undistorter, or use one of these)")
    (fx, fy, cx, cy), dist, fisheye = MODELS[name]
    p = [float(v) for v in camera.params]
    distortion = [p[i] for i in dist] + [0.0] * (4 - len(dist))
    return [p[fx], p[fy], p[cx], p[cy], *distortion], fisheye


def model_points(rec) -> tuple[np.ndarray, np.ndarray]:
    """SfM points [P, 3] (the model's frame) and their colours [P, 3] uint8, in the order of their ids."""
    pts = [rec.points3D[i] for i in sorted(rec.points3D)]
    if not pts:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.uint8)
    return np.array([p.xyz for p in pts]), np.array([p.color for p in pts], dtype=np.uint8)


def near_far(c2w: np.ndarray, params: np.ndarray, sizes: np.ndarray, points: np.ndarray) -> tuple[float, float] | None:
    """Nearest and farthest depth of the points each camera sees in its image (0.1 and 99.9 percentiles, as
    LLFF's poses_bounds), over all cameras; OpenGL poses [N, 4, 4], pinhole intrinsics, sizes [N, 2]."""
    if len(points) == 0:
        return None
    near, far = [], []
    for pose, (fx, fy, cx, cy), (w, h) in zip(c2w, params[:, :4], sizes):
        local = (points - pose[:3, 3]) @ pose[:3, :3]
        z = -local[:, 2]
        ok = z > 1e-6
        x, y, z = local[ok, 0] / z[ok] * fx + cx, -local[ok, 1] / z[ok] * fy + cy, z[ok]
        z = z[(x >= 0) & (x < w) & (y >= 0) & (y < h)]
        if len(z):
            near.append(np.percentile(z, 0.1))
            far.append(np.percentile(z, 99.9))
    return (float(min(near)), float(max(far))) if near else None


def split_indices(n: int, split: str, test_every: int) -> list[int]:
    """Every ``test_every``-th image is held out (test and val); the rest train."""
    if split == "train":
        return [i for i in range(n) if i % test_every != 0] or list(range(n))
    return [i for i in range(n) if i % test_every == 0]


def load_colmap(root: Path, split: str = "train", downscale: int | str = "auto", test_every: int = 8,
                background: tuple[float, float, float] = (1.0, 1.0, 1.0), allow_outside: bool = False) -> SceneSplit:
    """Load one split of a COLMAP workspace (registered images only, sorted by name)."""
    root = Path(root)
    folder = model_folder(root)
    if folder is None:
        raise SceneError(f"{root}: no COLMAP model (cameras and images .bin or .txt) in sparse/0 or sparse")
    ext = "bin" if (folder / "images.bin").is_file() else "txt"
    model_file = folder / f"images.{ext}"
    rec = read_model(folder)
    images = sorted((im for im in rec.images.values() if im.has_pose), key=lambda im: im.name)
    if not images:
        raise SceneError(f"{model_file}: the COLMAP model has no registered images")
    w2c = np.stack([np.concatenate([im.cam_from_world().matrix(), [[0.0, 0.0, 0.0, 1.0]]]) for im in images])
    c2w = np.linalg.inv(w2c) @ OPENCV_TO_OPENGL
    params, fisheye, sizes = [], [], []
    for im in images:
        p, f = camera_params(rec.cameras[im.camera_id], folder / f"cameras.{ext}")
        params.append(p)
        fisheye.append(f)
        sizes.append((rec.cameras[im.camera_id].width, rec.cameras[im.camera_id].height))
    params, sizes = np.array(params), np.array(sizes)
    xyz, rgb = model_points(rec)
    placement = place(c2w, xyz)

    idx = split_indices(len(images), split, test_every)
    files = [image_file(root, images[i].name, model_file, allow_outside) for i in idx]
    for i, path in zip(idx, files):
        if fisheye[i] != fisheye[idx[0]]:
            raise SceneError(f"{path}: fisheye and non-fisheye cameras in one scene are not supported ({model_file})")
    split_sizes = [(int(sizes[i][0]), int(sizes[i][1])) for i in idx]
    factors = downscale_factors(downscale, split_sizes, root)
    pixels = read_images(files, split_sizes, factors)
    names = [images[i].name for i in idx]
    masks = read_masks(mask_files(root, names), split_sizes, factors) if (root / "masks").is_dir() else None
    p = torch.tensor(params[idx], dtype=torch.float32)
    dist = p[:, 4:8] if bool((p[:, 4:8] != 0).any()) else None
    poses = torch.from_numpy(placement.poses(c2w[idx])).float()
    cams = Cameras(poses, p[:, 0], p[:, 1], p[:, 2], p[:, 3], torch.from_numpy(sizes[idx, 0]),
                   torch.from_numpy(sizes[idx, 1]), dist, fisheye[idx[0]])
    cams = cams.resized(pixels.widths, pixels.heights)

    bounds = near_far(c2w, params, sizes, xyz)
    world_points = placement.points(xyz)
    aabb = scene_box(placement.points(c2w[:, :3, 3]), world_points)
    return SceneSplit(root.name, split, cams, pixels, aabb, background, tuple(str(f) for f in files),
                      **placement.split_fields(), points=torch.from_numpy(world_points).float(),
                      point_colors=torch.from_numpy(rgb),
                      near_far=None if bounds is None else (bounds[0] * placement.scale, bounds[1] * placement.scale),
                      masks=masks)


def mask_files(root: Path, names: list[str]) -> list[Path]:
    """COLMAP's mask of each image ``images/<name>``: ``masks/<name>.png`` (its convention) or ``masks/<name>``."""
    out = []
    for name in names:
        candidates = [root / "masks" / f"{name}.png", root / "masks" / name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise SceneError(f"{candidates[0]}: mask not found; a workspace with a masks/ folder needs one mask per "
                             f"image (for {name})")
        out.append(found)
    return out


def image_file(root: Path, name: str, model_file: Path, allow_outside: bool) -> Path:
    """``images/<name>``: it must exist and stay inside the workspace unless ``allow_outside``."""
    path = root / "images" / name
    if not allow_outside and not path.resolve().is_relative_to(root.resolve()):
        raise SceneError(f"{model_file}: image '{name}' leads outside the scene folder {root}; pass "
                         "--allow-outside-data if that is intended")
    if not path.is_file():
        raise SceneError(f"{path}: image file not found (the COLMAP model {model_file} names it)")
    return path


def read_points_file(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """SfM points [P, 3] and colours [P, 3] uint8 from ``points3D.bin`` or ``points3D.txt`` alone (LLFF folders
    keep them without the rest of the model, which pycolmap needs); None when there is neither."""
    binary, text = folder / "points3D.bin", folder / "points3D.txt"
    try:
        if binary.is_file():
            return _points_binary(binary.read_bytes())
        if text.is_file():
            rows = [line.split() for line in text.read_text().splitlines() if line.strip() and not line.startswith("#")]
            data = np.array([[float(v) for v in row[1:7]] for row in rows]).reshape(-1, 6)
            return data[:, :3], data[:, 3:].clip(0, 255).astype(np.uint8)
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as e:
        raise SceneError(f"{binary if binary.is_file() else text}: not a COLMAP points3D file ({first_line(e)})") from None
    return None


def _points_binary(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP's points3D.bin: a uint64 count, then per point id (uint64), xyz (3 float64), rgb (3 uint8), error
    (float64), track length (uint64) and that many (image id, point2D index) uint32 pairs."""
    head = struct.Struct("<Q3d3BdQ")
    (count,), offset = struct.unpack_from("<Q", data), 8
    rows = []
    for _ in range(count):
        row = head.unpack_from(data, offset)
        rows.append(row[1:7])
        offset += head.size + 8 * row[8]
    if offset != len(data):
        raise ValueError(f"{len(data) - offset} bytes left after {count} points")
    table = np.array(rows, dtype=np.float64).reshape(-1, 6)
    return table[:, :3], table[:, 3:].astype(np.uint8)
