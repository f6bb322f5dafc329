"""The ``fields process images | video`` subcommands (tyro dataclasses; ``fields/cli.py`` mounts them)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Union

import tyro
from rich.console import Console

from fields.process.sfm import SfmOptions

console = Console()
Flat = tyro.conf.OmitArgPrefixes


@dataclass
class OutputOptions:
    """Where and how the scene folder is written."""

    output: Path
    """Scene folder to write (images/, sparse/0/, transforms.json, sparse_pc.ply); `fields train --data` reads it."""
    overwrite: bool = False
    """Replace the output folder if it exists (only an earlier output of `fields process`)."""
    max_image_size: int = 3200
    """Images with a longer side than this (pixels) are downsized in images/; smaller ones are copied as they are."""
    quiet: bool = False
    """No progress bars."""


@dataclass
class Images:
    """Find the camera poses of a folder of photos (structure-from-motion, pycolmap) and write a scene folder."""

    folder: tyro.conf.Positional[Path]
    """Folder of photos (.jpg, .png, ...; not its subfolders)."""
    out: Annotated[OutputOptions, Flat]
    sfm: Annotated[SfmOptions, Flat] = dataclasses.field(default_factory=SfmOptions)
    single_camera: bool = False
    """All photos come from one camera with one zoom setting: fit one set of intrinsics to all of them."""

    def run(self) -> None:
        from fields.process.pipeline import process

        process(self.folder, self.out.output, from_video=False, sfm=self.sfm, single_camera=self.single_camera,
                max_image_size=self.out.max_image_size, overwrite=self.out.overwrite, console=console,
                show_progress=not self.out.quiet)


@dataclass
class Video:
    """Pick the sharpest frames of a video, find their camera poses (structure-from-motion, pycolmap, one shared
    camera) and write a scene folder."""

    video: tyro.conf.Positional[Path]
    """Video file (anything ffmpeg decodes: .mp4, .mov, ...)."""
    out: Annotated[OutputOptions, Flat]
    sfm: Annotated[SfmOptions, Flat] = dataclasses.field(default_factory=SfmOptions)
    num_frames: int = 150
    """Frames to keep: the clip is cut into this many equal stretches and the sharpest frame of each is kept."""

    def run(self) -> None:
        from fields.process.pipeline import process

        process(self.video, self.out.output, from_video=True, sfm=self.sfm, num_frames=self.num_frames,
                max_image_size=self.out.max_image_size, overwrite=self.out.overwrite, console=console,
                show_progress=not self.out.quiet)


@dataclass
class Process:
    """Photos or a video -> a scene folder with camera poses (structure-from-motion with pycolmap, in-process)."""

    what: tyro.conf.OmitSubcommandPrefixes[Union[
        Annotated[Images, tyro.conf.subcommand("images")],
        Annotated[Video, tyro.conf.subcommand("video")]]]
    """What to process."""

    def run(self) -> None:
        self.what.run()
