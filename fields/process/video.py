"""Frames from a video: ``num_frames`` windows of equal length over the clip, and from each the sharpest frame
(the largest variance of the Laplacian of its grey image: blur from motion or focus lowers it).

The clip is decoded once (imageio-ffmpeg), after ffmpeg has counted its frames, holding one frame per window
at a time, so memory stays at a few frames whatever the clip's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import imageio_ffmpeg
import numpy as np

from fields.process import ProcessError
from fields.process.images import save_frame

GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class FrameSelection:
    """What ``select_frames`` read and kept: ``kept[i]`` is the decoded frame index of ``names[i]``."""

    read: int
    kept: list[int]
    names: list[str]
    sharpness: list[float]


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image (uint8 or float RGB [H, W, 3])."""
    g = rgb.astype(np.float32) @ GREY
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(lap.var())


def _ffmpeg_problem(e: Exception) -> str:
    """The last line of ffmpeg's complaint (the one that says what is wrong), or the exception's first line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("===")]
    return lines[-1] if lines else type(e).__name__


def count_frames(video: Path) -> int:
    """Frames in the clip's first video stream (ffmpeg decodes it once to count)."""
    if not Path(video).is_file():
        raise ProcessError(f"{video}: video file not found")
    try:
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(video))
    except (RuntimeError, OSError, ValueError) as e:
        raise ProcessError(f"{video}: not a video ffmpeg can decode ({_ffmpeg_problem(e)})")
    if not frames:
        raise ProcessError(f"{video}: the video has no frames")
    return frames


def select_frames(video: Path, dest: Path, num_frames: int, max_size: int, total: int | None = None,
                  advance: Callable[[], None] = lambda: None) -> FrameSelection:
    """Write the sharpest frame of each of ``num_frames`` equal windows of the clip to ``dest`` as
    ``frame_<index>.png`` (the index of the frame in the clip, from 0), downsized to ``max_size``. Every frame
    is kept when the clip has fewer than ``num_frames``. ``total`` is the clip's frame count if already known
    (``count_frames``); ``advance`` is called once per decoded frame."""
    if num_frames < 1:
        raise ProcessError(f"{video}: --num-frames must be at least 1 (got {num_frames})")
    total = total or count_frames(video)
    windows = min(num_frames, total)
    dest.mkdir(parents=True, exist_ok=True)
    kept, names, scores = [], [], []
    best: tuple[float, int, np.ndarray] | None = None  # (sharpness, index, frame) of the current window

    def keep(score: float, index: int, frame: np.ndarray) -> None:
        name = f"frame_{index:05d}.png"
        save_frame(frame, dest / name, max_size)
        kept.append(index), names.append(name), scores.append(score)

    read = 0
    reader = imageio_ffmpeg.read_frames(str(video))
    try:
        meta = next(reader)
        width, height = meta["size"]
        for index, raw in enumerate(reader):
            frame = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
            read = index + 1
            window = min(index * windows // total, windows - 1)  # ffmpeg may decode a frame more than it counted
            if best is not None and window != min(best[1] * windows // total, windows - 1):
                keep(*best)
                best = None
            score = sharpness(frame)
            if best is None or score > best[0]:
                best = (score, index, frame.copy())
            advance()
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        raise ProcessError(f"{video}: not a video ffmpeg can decode ({_ffmpeg_problem(e)})")
    finally:
        reader.close()
    if best is not None:
        keep(*best)
    if not kept:
        raise ProcessError(f"{video}: no frame could be decoded")
    return FrameSelection(read, kept, names, scores)
