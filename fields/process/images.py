"""Input photos: find them, check that each decodes, and put copies (downsized when too large) in ``images/``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from fields.process import ProcessError

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
EXIF_ORIENTATION = 0x0112


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix, hidden files skipped), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ProcessError(f"{folder}: not a folder of photos")
    paths = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith("."))
    if not paths:
        raise ProcessError(f"{folder}: no images found (looked for {', '.join(SUFFIXES)} files)")
    return paths


def safe_names(paths: list[Path]) -> list[str]:
    """Names for the copies in ``images/``: white space becomes ``_`` (COLMAP's list of image pairs is split
    at spaces) and a name that would repeat another gets ``-2``, ``-3`` ... before its suffix."""
    names, taken = [], set()
    for path in paths:
        name = re.sub(r"\s", "_", path.name)
        stem, suffix, k = Path(name).stem, Path(name).suffix, 2
        while name.lower() in taken:
            name, k = f"{stem}-{k}{suffix}", k + 1
        taken.add(name.lower())
        names.append(name)
    return names


def fit_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """``(width, height)`` scaled down so that the long side is at most ``max_size`` (unchanged if it is)."""
    scale = max_size / max(width, height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def save_image(image: Image.Image, path: Path, max_size: int) -> tuple[int, int]:
    """Write ``image`` to ``path`` (format from the suffix; JPEG at quality 95), downsized to ``max_size``;
    returns the size written."""
    size = fit_size(*image.size, max_size)
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.convert("RGB").save(path, quality=95)
    else:
        image.save(path)
    return size


def save_frame(rgb: np.ndarray, path: Path, max_size: int) -> tuple[int, int]:
    """Write one video frame (uint8 [H, W, 3]) to ``path``, downsized to ``max_size``."""
    return save_image(Image.fromarray(rgb), path, max_size)


def copy_images(paths: list[Path], dest: Path, names: list[str], max_size: int,
                advance: Callable[[], None] = lambda: None) -> list[tuple[int, int]]:
    """Decode every photo (an unreadable one stops everything, named), then copy it into ``dest`` under its
    name in ``names`` byte for byte, or write a downsized copy when its long side exceeds ``max_size``. A photo
    whose EXIF orientation says it is rotated is written upright, so SfM and the scene loader see the same
    pixels. Returns the sizes."""
    dest.mkdir(parents=True, exist_ok=True)
    sizes = []
    for path, name in zip(paths, names):
        try:
            with Image.open(path) as image:
                image.load()
                rotated = image.getexif().get(EXIF_ORIENTATION, 1) != 1
                if rotated:
                    image = ImageOps.exif_transpose(image)
                if rotated or max(image.size) > max_size:
                    sizes.append(save_image(image, dest / name, max_size))
                else:
                    shutil.copyfile(path, dest / name)
                    sizes.append(image.size)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ProcessError(f"{path}: not a readable image ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
        advance()
    return sizes
