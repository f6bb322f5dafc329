"""Photos or a video -> a scene folder: input images, structure-from-motion, the folder's files, a summary.

Everything is built in a hidden staging folder next to the output and moved into place only when it worked,
so a failed run leaves nothing behind and an existing folder is replaced only with ``overwrite`` (and only if
it looks like an earlier output, so a mistyped path never deletes someone's files).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fields.process import ProcessError
from fields.process.images import copy_images, list_images, safe_names
from fields.process.scene_folder import write_scene
from fields.process.sfm import SfmOptions, SfmResult, run_sfm
from fields.process.video import count_frames, select_frames

OUTPUT_FILES = ("transforms.json", "sparse", "images", "sparse_pc.ply")  # what marks a folder as ours
MAX_LISTED = 10  # unregistered images named in a message


@dataclass
class Summary:
    """What a run did: images given and registered, model statistics, seconds per stage, frames read."""

    output: Path
    given: int
    registered: int
    unregistered: list[str]
    matcher: str
    reprojection_error: float
    points: int
    seconds: dict[str, float] = field(default_factory=dict)
    frames_read: int | None = None


def check_output(output: Path, source: Path, overwrite: bool) -> None:
    """Refuse to write over an existing non-empty folder unless ``overwrite``, and even then unless it holds an
    earlier output and not the input."""
    if not output.exists():
        return
    if not output.is_dir():
        raise ProcessError(f"{output}: exists and is not a folder")
    if not any(output.iterdir()):
        return
    if not overwrite:
        raise ProcessError(f"{output}: folder exists and is not empty; pass --overwrite to replace it or choose "
                           "another --output")
    if not any((output / name).exists() for name in OUTPUT_FILES):
        raise ProcessError(f"{output}: not an earlier `fields process` output (no transforms.json, sparse/ or "
                           "images/), so --overwrite will not delete it; choose another --output")
    if source.resolve().is_relative_to(output.resolve()):
        raise ProcessError(f"{output}: holds the input {source}; --overwrite would delete it; choose another --output")


def _names(names: list[str]) -> str:
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(names[:MAX_LISTED]) + more


def _advice(result: SfmResult, from_video: bool) -> str:
    tips = ["frames that overlap more (a higher --num-frames)" if from_video else "photos that overlap more"]
    if result.matcher != "exhaustive":
        tips.append("--matcher exhaustive")
    tips.append("a slower, steadier video" if from_video else "fewer and sharper photos (drop blurred ones)")
    return "try: " + "; ".join(tips)


def check_registration(result: SfmResult, source: Path, from_video: bool, console: Console) -> None:
    """Fail (ProcessError) when fewer than 3 images or fewer than half registered; warn about the rest."""
    given, done, missing = len(result.names), len(result.registered), result.unregistered
    if done < 3 or 2 * done < given:
        raise ProcessError(f"{source}: structure-from-motion registered only {done} of {given} images "
                           f"(not registered: {_names(missing)}); {_advice(result, from_video)}")
    if missing:
        console.print(f"[yellow]warning:[/yellow] {len(missing)} of {given} images did not register and are "
                      f"left out of transforms.json: {escape(_names(missing))}; {_advice(result, from_video)}",
                      highlight=False, soft_wrap=True)


def _progress(console: Console, show: bool) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=not show, transient=True)


def process(source: Path, output: Path, *, from_video: bool, sfm: SfmOptions, single_camera: bool = False,
            num_frames: int = 150, max_image_size: int = 3200, overwrite: bool = False,
            console: Console | None = None, show_progress: bool = True) -> Summary:
    """Turn a folder of photos (or, ``from_video``, a video file) into a scene folder at ``output``."""
    console = console or Console()
    source, output = Path(source), Path(output)
    if max_image_size < 16 or sfm.max_feature_size < 16:
        raise ProcessError(f"{source}: --max-image-size and --max-feature-size must be at least 16 pixels")
    check_output(output, source, overwrite)
    photos = None if from_video else list_images(source)
    total_frames = count_frames(source) if from_video else None
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    seconds: dict[str, float] = {}
    frames_read = None
    try:
        with _progress(console, show_progress) as progress:
            tic = time.perf_counter()
            if from_video:
                task = progress.add_task("reading frames", total=total_frames)
                selection = select_frames(source, staging / "images", num_frames, max_image_size, total_frames,
                                          lambda: progress.advance(task))
                names, frames_read = selection.names, selection.read
                seconds["frames"] = time.perf_counter() - tic
                progress.console.print(f"Kept {len(names)} of {frames_read} frames: the sharpest in each window "
                                       f"of {frames_read / len(names):.1f}")
            else:
                task = progress.add_task("copying images", total=len(photos))
                names = safe_names(photos)
                copy_images(photos, staging / "images", names, max_image_size, lambda: progress.advance(task))
                seconds["images"] = time.perf_counter() - tic
            result = run_sfm(staging / "images", names, staging / ".sfm", sfm, single_camera, from_video, progress)
        seconds.update(result.seconds)
        check_registration(result, source, from_video, console)
        tic = time.perf_counter()
        shutil.rmtree(staging / ".sfm")
        counts = write_scene(result.reconstruction, staging)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
        seconds["writing"] = time.perf_counter() - tic
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    model = result.reconstruction
    summary = Summary(output, len(names), len(result.registered), result.unregistered, result.matcher,
                      float(model.compute_mean_reprojection_error()), counts["points"], seconds, frames_read)
    print_summary(summary, console)
    return summary


def print_summary(s: Summary, console: Console) -> None:
    stages = ", ".join(f"{k} {v:.1f}" for k, v in s.seconds.items())
    console.print(f"Registered {s.registered} of {s.given} images ({s.matcher} matching); mean reprojection error "
                  f"{s.reprojection_error:.2f} px; {s.points} 3-D points", highlight=False, soft_wrap=True)
    console.print(f"Seconds: {stages} (total {sum(s.seconds.values()):.1f})", highlight=False, soft_wrap=True)
    console.print(f"Wrote {escape(str(s.output))}: images/, sparse/0/, transforms.json, sparse_pc.ply; train with "
                  f"`fields train --data {escape(str(s.output))}`", highlight=False, soft_wrap=True)
