"""Reading the files of a scene with errors that name the file and what is wrong with it."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch


class SceneError(ValueError):
    """A scene folder or file that cannot be used; the message names the file and the problem."""


def read_json(path: Path) -> dict:
    """Parse a JSON object, or raise SceneError naming the file."""
    if not path.is_file():
        raise SceneError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SceneError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SceneError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def get_number(obj: dict, key: str, path: Path, where: str = "", positive: bool = False) -> float:
    """``obj[key]`` as a finite float (optionally > 0), or SceneError naming the file and key."""
    if key not in obj:
        raise SceneError(f"{path}: missing '{key}'{where}")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SceneError(f"{path}: '{key}'{where} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise SceneError(f"{path}: '{key}'{where} must be positive, got {value!r}")
    return float(value)


def get_frames(data: dict, path: Path) -> list[dict]:
    """The non-empty ``frames`` list of a transforms file."""
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise SceneError(f"{path}: 'frames' must be a non-empty list")
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise SceneError(f"{path}: frames[{i}] must be an object")
    return frames


def get_pose(frame: dict, path: Path, i: int) -> np.ndarray:
    """A frame's 4x4 ``transform_matrix`` (camera-to-world), checked for shape, finiteness and rigidity."""
    where = f" in frames[{i}]"
    if "transform_matrix" not in frame:
        raise SceneError(f"{path}: missing 'transform_matrix'{where}")
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (TypeError, ValueError):
        raise SceneError(f"{path}: 'transform_matrix'{where} must be a 4x4 list of numbers") from None
    if m.shape == (3, 4):
        m = np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]])
    if m.shape != (4, 4):
        raise SceneError(f"{path}: 'transform_matrix'{where} must be 4x4, got shape {list(m.shape)}")
    if not np.isfinite(m).all():
        raise SceneError(f"{path}: 'transform_matrix'{where} contains NaN or inf")
    rot = m[:3, :3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-2) or abs(np.linalg.det(rot) - 1) > 1e-2:
        raise SceneError(f"{path}: 'transform_matrix'{where} is not a rigid transform (rotation not orthonormal)")
    return m


def resolve_image(root: Path, file_path: Any, json_path: Path, i: int) -> Path:
    """The image file a frame names; Blender omits the '.png' extension."""
    if not isinstance(file_path, str) or not file_path:
        raise SceneError(f"{json_path}: 'file_path' in frames[{i}] must be a non-empty string")
    path = root / file_path
    if not path.suffix or not path.exists():
        for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
            if path.with_name(path.name + ext).exists():
                return path.with_name(path.name + ext)
    return path


def read_image(path: Path) -> torch.Tensor:
    """An image as straight RGBA float32 [H, W, 4] in [0, 1]; grayscale and 16-bit are converted."""
    if not path.is_file():
        raise SceneError(f"{path}: image file not found")
    try:
        img = np.asarray(iio.imread(path))
    except Exception as e:  # imageio raises many types for broken files
        raise SceneError(f"{path}: cannot read image ({e})") from None
    if img.dtype == np.uint8:
        arr = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        arr = img.astype(np.float32) / 65535.0
    elif np.issubdtype(img.dtype, np.floating):
        arr = img.astype(np.float32)
    else:
        raise SceneError(f"{path}: unsupported pixel type {img.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or min(arr.shape[:2]) == 0:
        raise SceneError(f"{path}: unsupported image shape {list(img.shape)}")
    if arr.shape[2] in (1, 2):  # gray or gray + alpha
        arr = np.concatenate([np.repeat(arr[..., :1], 3, 2), arr[..., 1:]], axis=2)
    if arr.shape[2] == 3:
        arr = np.concatenate([arr, np.ones_like(arr[..., :1])], axis=2)
    return torch.from_numpy(np.ascontiguousarray(arr))


def read_images(paths: list[Path], size: tuple[int, int] | None = None, downscale: int = 1) -> torch.Tensor:
    """Read images in parallel, check each has ``size`` = (width, height) (default: the first image's size), and
    box-downscale them.

    Downscaling averages premultiplied colour, as Pillow does for RGBA, so edges do not pick up the colour of
    transparent pixels.
    """
    with ThreadPoolExecutor(max_workers=4) as pool:
        images = list(pool.map(read_image, paths))
    width, height = size if size is not None else (images[0].shape[1], images[0].shape[0])
    for path, img in zip(paths, images):
        if img.shape[:2] != (height, width):
            raise SceneError(f"{path}: image is {img.shape[1]}x{img.shape[0]}, expected {width}x{height}")
    stack = torch.stack(images)
    if downscale > 1:
        if width % downscale or height % downscale:
            raise SceneError(f"{paths[0].parent}: image size {width}x{height} is not divisible by --downscale {downscale}")
        premult = torch.cat([stack[..., :3] * stack[..., 3:], stack[..., 3:]], -1).permute(0, 3, 1, 2)
        premult = torch.nn.functional.avg_pool2d(premult, downscale).permute(0, 2, 3, 1)
        alpha = premult[..., 3:]
        stack = torch.cat([premult[..., :3] / alpha.clamp_min(1e-8), alpha], -1)
        stack[..., :3] = torch.where(alpha > 0, stack[..., :3], torch.zeros_like(stack[..., :3]))
    return stack.contiguous()
