"""Video export: render a camera path through the occupancy grid and write H.264 mp4 files with imageio.

Each requested output (``rgb``, ``depth``) becomes its own mp4: the first at the path asked for, the others beside
it with their name as a suffix (``orbit.mp4``, ``orbit-depth.mp4``), so a user who names a file gets it. Depth is colour-mapped over one range for the
whole video (the distances from the path's cameras to the occupied cells), so colours do not flicker.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import imageio.v2 as imageio
import torch
from rich.progress import Progress

from fields.export import ExportError
from fields.run.scene_record import SceneRecord
from renderers.contraction import normalized
from renderers.imaging import depth_image, to_uint8
from renderers.model import VolumeModel
from renderers.ndc import NDC
from renderers.occupancy import OccupancyGrid
from scenes.camera_paths import CameraPath, default_path, derived_path
from scenes.cameras import Cameras
from scenes.memory import available_bytes, gigabytes

OUTPUTS = ("rgb", "depth")
BYTES_PER_FRAME_PIXEL = 128  # ray origins and directions, rgb/depth/opacity and their concatenated copies, uint8


def parse_outputs(text: str) -> list[str]:
    """``"rgb,depth"`` -> ``["rgb", "depth"]``; ExportError for an unknown or empty list."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown or not names:
        raise ExportError(f"--outputs '{text}': unknown output(s) {', '.join(unknown) or '(none given)'} "
                          f"(known: {', '.join(OUTPUTS)})")
    return list(dict.fromkeys(names))


def video_paths(path: Path, outputs: list[str]) -> dict[str, Path]:
    """The mp4 of each output: the first output at ``path`` (``.mp4`` added when it has no suffix), each other
    one beside it as ``<stem>-<output><suffix>``."""
    path = Path(path)
    if not path.suffix:
        path = path.with_name(path.name + ".mp4")
    return {name: path if i == 0 else path.with_name(f"{path.stem}-{name}{path.suffix}")
            for i, name in enumerate(outputs)}


def check_frame_memory(width: int, height: int) -> None:
    """ExportError with advice when one frame's rays and images would not fit in memory."""
    need, free = width * height * BYTES_PER_FRAME_PIXEL, available_bytes()
    if need > free:
        raise ExportError(f"frames of {width}x{height} need about {gigabytes(need)} of memory each, more than the "
                          f"{gigabytes(free)} available; lower --resolution (frame height)")


def depth_range(cams: Cameras, grid: OccupancyGrid, ndc: NDC | None = None) -> tuple[float, float]:
    """Nearest and farthest distance from any of the cameras to any occupied cell centre (of a contracted grid,
    those within four times the scene box: the far shell reaches to infinity; of a grid in NDC space ``ndc``,
    those within 20 near planes of the reference camera, in the world)."""
    idx = grid.binary.flatten().nonzero()[:, 0]
    centres = grid.cell_centers(idx)
    if grid.contracted:
        centres = centres[normalized(centres, grid.aabb).abs().amax(-1) <= 4]
    if ndc is not None:
        centres = ndc.to_world(centres[centres[:, 2] <= 0.9])  # z = 1 - 2 near / depth
    if centres.shape[0] == 0:
        return 0.0, 1.0
    lo, hi = float("inf"), 0.0
    for eye in cams.centers:
        d = (centres - eye).norm(dim=-1)
        lo, hi = min(lo, d.min().item()), max(hi, d.max().item())
    return lo, hi


def run_path(kind: str, model: VolumeModel, record: SceneRecord, n_frames: int,
             keyframes: int = 0) -> tuple[CameraPath, str]:
    """A derived camera path of a run and its kind: ``auto`` is ``default_path`` (the forward spiral for a
    forward-facing capture or NDC run, else the orbit). The forward spiral focuses by the scene's recorded
    near/far bounds, or where the run's record has none (written before it kept them), by the nearest and
    farthest occupied cells (``depth_range``)."""
    ndc = getattr(model, "ndc", None)
    if kind == "auto":
        kind = default_path(record.cameras, ndc is not None)
    near_far = record.near_far
    if kind == "forward-spiral" and near_far is None:
        near_far = depth_range(record.cameras, model.grid, ndc)
    return derived_path(record.cameras, kind, n_frames, keyframes, near_far), kind


def video_writer(path: Path, fps: float):
    """An imageio mp4 writer (H.264, yuv420p) that keeps the frame size as it is."""
    return imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=8,
                              macro_block_size=1, pixelformat="yuv420p")


@torch.no_grad()
def render_video(model: VolumeModel, cams: Cameras, fps: float,
                 background: tuple[float, float, float], outputs: dict[str, Path],
                 show_progress: bool = True, progress: Progress | None = None) -> None:
    """Render every camera of ``cams`` and write the frames of each output name to its mp4 path. Progress goes
    to ``progress`` when given (the caller shows or polls it), else to a console bar."""
    width, height = cams.size(0)
    if bool((cams.width != width).any() or (cams.height != height).any()):
        raise ExportError("video frames must share one size (the cameras of a path do)")
    if width % 2 or height % 2:
        raise ExportError(f"video frames must have even sizes for H.264 (got {width}x{height})")
    if fps <= 0:
        raise ExportError(f"--fps must be positive (got {fps})")
    check_frame_memory(width, height)
    lo, hi = depth_range(cams, model.grid, getattr(model, "ndc", None))
    bg = torch.tensor(background, dtype=torch.float32)
    writers = {name: video_writer(path, fps) for name, path in outputs.items()}
    try:
        bar = nullcontext(progress) if progress is not None else Progress(disable=not show_progress, transient=True)
        with bar as progress:
            task = progress.add_task("frames", total=len(cams))
            for i in range(len(cams)):
                out = model.render(cams, i, bg)
                for name, writer in writers.items():
                    img = out["rgb"] if name == "rgb" else depth_image(out["depth"], out["opacity"], lo, hi)
                    writer.append_data(to_uint8(img))
                progress.advance(task)
    finally:
        for writer in writers.values():
            writer.close()
