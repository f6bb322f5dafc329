"""Reading the files of a scene with errors that name the file and what is wrong with it.

Images are checked from their header before they are decoded (size limit, the size their camera expects,
room in memory for them at the size they are downscaled to), so a decompression bomb or a folder of huge photos
fails in milliseconds instead of exhausting memory. Each image is downscaled as soon as it is decoded. Image paths
must stay inside the scene folder (no ``..``, absolute paths or symlinks out of it) unless the caller allows it.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image

from scenes.images import Images
from scenes.memory import available_bytes, gigabytes
from scenes.scene import to_float, to_uint8

MAX_IMAGE_PIXELS = 1 << 26  # 67 megapixels (8192 x 8192): larger is a mistake or a decompression bomb
MAX_COORDINATE = 1e10  # camera positions beyond this lose all precision in float32 rendering
BYTES_PER_PIXEL = 4  # the 8-bit RGBA (one flat buffer of every image's pixels); each image is decoded and
# downscaled on its own, and training builds rays per batch from pixel indices, so nothing else grows with the
# number of pixels
AUTO_LONG_SIDE = 1600  # --downscale auto: the long side of the training images at most this many pixels


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
    except RecursionError:
        raise SceneError(f"{path}: not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise SceneError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def get_number(obj: dict, key: str, path: Path, where: str = "", positive: bool = False) -> float:
    """``obj[key]`` as a finite float (optionally > 0), or SceneError naming the file and key."""
    if key not in obj:
        raise SceneError(f"{path}: missing '{key}'{where}")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise SceneError(f"{path}: '{key}'{where} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise SceneError(f"{path}: '{key}'{where} must be positive, got {value!r}")
    return float(value)


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` of an exception, for one-line errors."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


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
    except (TypeError, ValueError, OverflowError):
        raise SceneError(f"{path}: 'transform_matrix'{where} must be a 4x4 list of numbers") from None
    if m.shape == (3, 4):
        m = np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]])
    if m.shape != (4, 4):
        raise SceneError(f"{path}: 'transform_matrix'{where} must be 4x4, got shape {list(m.shape)}")
    if problem := pose_problem(m):
        raise SceneError(f"{path}: 'transform_matrix'{where} {problem}")
    return m


def pose_problem(m: np.ndarray) -> str | None:
    """What is wrong with a 4x4 camera-to-world matrix (NaN/inf, not a rotation plus translation), or None."""
    if not np.isfinite(m).all():
        return "contains NaN or inf"
    if np.abs(m).max() > MAX_COORDINATE:
        return f"has entries beyond {MAX_COORDINATE:g} (rendering computes in float32)"
    rot = m[:3, :3]
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-2) or abs(np.linalg.det(rot) - 1) > 1e-2:
        return "is not a rigid transform (rotation not orthonormal)"
    if not np.allclose(m[3], [0, 0, 0, 1]):
        return "is not a rigid transform (last row is not 0 0 0 1)"
    return None


def resolve_image(root: Path, file_path: Any, json_path: Path, i: int, allow_outside: bool = False,
                  key: str = "file_path") -> Path:
    """The image file a frame names under ``key``; Blender omits the '.png' extension. A path that leads out of
    ``root`` (``..``, absolute, or through a symlink) is refused unless ``allow_outside``."""
    if not isinstance(file_path, str) or not file_path or "\0" in file_path:
        raise SceneError(f"{json_path}: '{key}' in frames[{i}] must be a non-empty string")
    path = root / file_path
    if not path.suffix or not path.exists():
        for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
            if path.with_name(path.name + ext).exists():
                path = path.with_name(path.name + ext)
                break
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise SceneError(f"{json_path}: '{key}' in frames[{i}] ({file_path!r}) cannot be resolved ({first_line(e)})") from None
    if not allow_outside and not inside:
        raise SceneError(f"{json_path}: '{key}' in frames[{i}] ({file_path!r}) leads outside the scene folder "
                         f"{root}; pass --allow-outside-data if that is intended")
    return path


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding it; SceneError if it is missing, unreadable
    or larger than ``MAX_IMAGE_PIXELS``."""
    if not path.is_file():
        raise SceneError(f"{path}: image file not found")
    bomb = (f"more than the {MAX_IMAGE_PIXELS >> 20} megapixel limit (a decompression bomb, or a photo to "
            "downscale before training)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we refuse it ourselves, below
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError:  # Pillow's own limit, above ours
        raise SceneError(f"{path}: image header claims {bomb}") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for empty, truncated or odd files
        raise SceneError(f"{path}: cannot read image ({first_line(e)})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise SceneError(f"{path}: image header claims {width}x{height} pixels, {bomb}")
    return width, height


def decode(path: Path) -> np.ndarray:
    """The pixels of an image file as straight RGBA [H, W, 4]: uint8 for 8-bit files (almost every photo),
    float32 in [0, 1] for 16-bit, float and 1-bit ones; grayscale is expanded and a missing alpha is opaque."""
    image_size(path)
    try:
        img = np.asarray(iio.imread(path))
    except Exception as e:  # noqa: BLE001 - imageio raises many types for broken files
        raise SceneError(f"{path}: cannot read image ({first_line(e)})") from None
    if img.dtype == np.uint8:
        opaque = 255
    elif img.dtype == np.bool_ or np.issubdtype(img.dtype, np.floating):  # 1-bit images (masks), float images
        img, opaque = img.astype(np.float32), 1.0
    elif img.dtype == np.uint16:
        img, opaque = img.astype(np.float32) / 65535.0, 1.0
    else:
        raise SceneError(f"{path}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4) or min(img.shape[:2]) == 0:
        raise SceneError(f"{path}: unsupported image shape {list(img.shape)}")
    if img.shape[2] in (1, 2):  # gray or gray + alpha
        img = np.concatenate([np.repeat(img[..., :1], 3, 2), img[..., 1:]], axis=2)
    if img.shape[2] == 3:
        img = np.concatenate([img, np.full_like(img[..., :1], opaque)], axis=2)
    return np.ascontiguousarray(img)


def read_as_float(img: np.ndarray) -> torch.Tensor:
    """Decoded pixels (``decode``) as float32 in [0, 1]."""
    t = torch.from_numpy(img)
    return to_float(t) if t.dtype == torch.uint8 else t


def read_image(path: Path) -> torch.Tensor:
    """An image as straight RGBA float32 [H, W, 4] in [0, 1]; grayscale and 16-bit are converted."""
    return read_as_float(decode(path))


def downscale_factor(downscale: int | str, width: int, height: int, folder: Path | None = None) -> int:
    """``--downscale`` as an integer factor for images of ``width`` x ``height``: ``'auto'`` is the smallest
    factor that brings the long side to ``AUTO_LONG_SIDE`` pixels or less, and says what it chose for
    ``folder``."""
    if downscale == "auto":
        factor = max(1, math.ceil(max(width, height) / AUTO_LONG_SIDE))
        if folder is not None:
            w, h = downscaled_size(width, height, factor)
            say_once(f"{folder}: --downscale auto: images of {width}x{height} train at {w}x{h} (factor {factor}; "
                     f"long side at most {AUTO_LONG_SIDE} px)")
        return factor
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise SceneError(f"--downscale must be a positive integer or 'auto', got {downscale!r}")
    return downscale


def downscale_factors(downscale: int | str, sizes: Sequence[tuple[int, int]], folder: Path | None = None) -> list[int]:
    """``downscale_factor`` for each image of ``sizes`` (width, height): ``'auto'`` chooses per image, so that
    photos of different sizes each end up with the long side within ``AUTO_LONG_SIDE``."""
    return [downscale_factor(downscale, w, h, folder) for w, h in sizes]


def downscaled_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """Image size after dividing by ``factor``, rounded down as nerfstudio does (1008 / 8 -> 126)."""
    return max(1, math.floor(width / factor + 1e-9)), max(1, math.floor(height / factor + 1e-9))


def say_once(message: str) -> None:
    """Print a loader's notice (e.g. the size ``--downscale auto`` chose) once per process, not once per split."""
    if message not in _SAID:
        _SAID.add(message)
        print(f"fields: {message}", flush=True)


_SAID: set[str] = set()


def read_images(paths: list[Path], sizes: Sequence[tuple[int, int]] | None = None,
                downscale: float | Sequence[float] = 1, source_factor: float = 1) -> Images:
    """Read images in parallel into one 8-bit RGBA buffer (``Images``), check that each has its ``sizes`` entry
    = (width, height) (default: whatever its header says; images may differ in size), and downscale each by
    ``downscale`` (one factor for all, or one per image) as soon as it is decoded (sizes rounded down). Sizes
    and the memory the downscaled images need are checked from the headers before anything is decoded;
    ``source_factor`` says how much smaller than the scene's full size the files already are (LLFF's
    ``images_N/``), so that the advice in the error is a ``--downscale`` for the full size.

    Downscaling averages colour over each output pixel's area: for opaque 8-bit photos with Pillow's box filter
    on the file's 8 bits (no full-size float copy), else on premultiplied float colour, so that edges do not pick
    up the colour of transparent pixels.
    """
    found = [image_size(p) for p in paths]
    sizes = found if sizes is None else [(int(w), int(h)) for w, h in sizes]
    for path, (w, h), (width, height) in zip(paths, found, sizes):
        if (w, h) != (width, height):
            raise SceneError(f"{path}: image is {w}x{h}, expected {width}x{height}")
    factors = [downscale] * len(paths) if isinstance(downscale, (int, float)) else list(downscale)
    out = [downscaled_size(w, h, f) for (w, h), f in zip(sizes, factors)]
    check_memory(paths, sizes, out, source_factor)
    images = Images.empty(out, (4,), torch.uint8)

    def load(i: int) -> None:
        (width, height), (out_w, out_h), target = sizes[i], out[i], images[i]
        img = decode(paths[i])
        if img.shape[:2] != (height, width):  # the decoder disagrees with the header
            raise SceneError(f"{paths[i]}: image is {img.shape[1]}x{img.shape[0]}, expected {width}x{height}")
        if img.shape[:2] == (out_h, out_w):
            target[...] = torch.from_numpy(img) if img.dtype == np.uint8 else to_uint8(torch.from_numpy(img))
        elif img.dtype == np.uint8 and bool((img[..., 3] == 255).all()):  # an opaque photo: resized in 8 bits,
            rgb = Image.fromarray(np.ascontiguousarray(img[..., :3]), "RGB")  # no full-size float copies
            factor = width // out_w
            exact = width == factor * out_w and height == factor * out_h  # one pass over whole blocks
            small = rgb.reduce(factor) if exact else rgb.resize((out_w, out_h), Image.Resampling.BOX)
            np.copyto(target.numpy()[..., :3], np.asarray(small))  # PIL's array is read-only: no tensor of it
            target[..., 3] = 255
        else:  # transparency: premultiplied in float (8-bit premultiplied colour loses the faint edges)
            target[...] = to_uint8(resample(read_as_float(img), out_w, out_h))

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(load, range(len(paths))))
    return images


def check_memory(paths: list[Path], sizes: list[tuple[int, int]], out: list[tuple[int, int]],
                 source_factor: float) -> None:
    """SceneError, with a ``--downscale`` that fits, where the images of ``sizes`` downscaled to ``out`` need more
    memory than is available."""
    need, free = sum(w * h for w, h in out) * BYTES_PER_PIXEL, available_bytes()
    if need <= free:
        return
    largest = max(out, key=lambda s: s[0] * s[1])
    shapes = f"of {largest[0]}x{largest[1]}" if len(set(out)) == 1 else f"of up to {largest[0]}x{largest[1]}"
    advice = math.ceil(source_factor * math.sqrt(sum(w * h for w, h in sizes) * BYTES_PER_PIXEL / free))
    raise SceneError(f"{paths[0].parent}: {len(paths)} images {shapes} need about {gigabytes(need)} of memory, "
                     f"more than the {gigabytes(free)} available; pass --downscale {advice} or larger")


def read_masks(paths: list[Path], sizes: Sequence[tuple[int, int]],
               downscale: float | Sequence[float] = 1) -> Images:
    """Masks [H_i, W_i] bool (True: use the pixel) from image files of ``sizes`` (white or any value >= 50% counts
    as kept; after downscaling, a pixel is kept where at least half its area was)."""
    images = read_images(paths, sizes, downscale)
    return Images(images.pixels[:, 0] >= 128, images.widths, images.heights)


def resample(img: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """A straight RGBA image [H, W, 4] reduced to ``width`` x ``height`` by averaging premultiplied colour over
    each output pixel's area."""
    if img.shape[:2] == (height, width):
        return img
    premult = torch.cat([img[..., :3] * img[..., 3:], img[..., 3:]], -1).permute(2, 0, 1)[None]
    premult = torch.nn.functional.adaptive_avg_pool2d(premult, (height, width))[0].permute(1, 2, 0)
    alpha = premult[..., 3:]
    rgb = torch.where(alpha > 0, premult[..., :3] / alpha.clamp_min(1e-8), torch.zeros_like(premult[..., :3]))
    return torch.cat([rgb, alpha], -1)
