"""The ``fields export mesh | video | pointcloud | splats`` subcommands (tyro dataclasses; ``fields/cli.py``
mounts them).

Each loads the run, prints what it is about to do, shows progress bars while it works, and writes into
``<run>/exports/`` unless ``--output`` names a file or folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import tyro
from rich.console import Console

from fields.export import ExportError, output_path
from fields.run.folder import load_run

console = Console()
RunDir = tyro.conf.Positional[Path]


@dataclass
class Mesh:
    """Extract a vertex-coloured triangle mesh: density on a grid, marching cubes, clean-up (open3d)."""

    run_dir: RunDir
    """Run folder (or its config.yaml)."""
    resolution: int = 256
    """Grid samples per side of the scene box."""
    threshold: float | None = None
    """Density iso-level (default: the density at which one marching step reaches --opacity)."""
    opacity: float = 0.05
    """Opacity per marching step that defines the default threshold (the outer edge of the surface: low enough
    for briefly trained fields, and a sharp surface of a well-trained one is crossed within a step anyway)."""
    format: Literal["ply", "obj", "glb"] = "ply"
    """File format (ignored when --output names a file with a suffix)."""
    clean: bool = True
    """Drop small floating components (open3d)."""
    min_component: float = 0.05
    """With --clean: drop components with fewer faces than this fraction of the largest one."""
    target_faces: int | None = None
    """Simplify to about this many faces (open3d quadric decimation)."""
    seen_only: bool = True
    """Keep only faces some training camera sees (drops hollow interiors and hidden floaters that marching
    cubes closes but no image observed)."""
    crop: tuple[float, float, float, float, float, float] | None = None
    """Mesh only this box (x_min y_min z_min x_max y_max z_max, world units). Default: the scene box; for a run in
    NDC (a forward-facing capture) the box of the bulk of the scene's SfM points, or without them the reference
    camera's frustum out to the 90th percentile of the occupied cells' depths."""
    output: Path | None = None
    """Output file or folder (default: <run>/exports/; GLB is written y-up as glTF requires)."""
    quiet: bool = False
    """No progress bars."""

    def run(self) -> None:
        from fields.export.mesh import MeshSettings, check_mesh_memory, extract_mesh, write_mesh  # heavy imports
        from fields.export.region import crop_box, export_region

        check_mesh_memory(self.resolution)  # before loading the run: fail at once
        crop = crop_box(self.crop)
        run = load_run(self.run_dir)
        region = export_region(run.model, run.record, crop)
        settings = MeshSettings(self.resolution, self.threshold, self.opacity, self.clean, self.min_component,
                                self.target_faces, self.seen_only, region)
        cameras = run.record.cameras if self.seen_only else None
        tic = time.perf_counter()
        mesh, threshold = extract_mesh(run.model, settings, cameras, not self.quiet)
        source = "given" if self.threshold is not None else f"one marching step {self.opacity:.0%} opaque"
        console.print(f"Density threshold {threshold:.4g} ({source})")
        path = output_path(run.path, self.output, f"mesh-step-{run.step:06d}.{self.format}")
        if not path.suffix:
            path = path.with_suffix(f".{self.format}")
        write_mesh(mesh, path)
        console.print(f"Mesh: {len(mesh.vertices)} vertices, {len(mesh.faces)} faces in "
                      f"{time.perf_counter() - tic:.1f} s -> {path}")


@dataclass
class Video:
    """Render a camera path (orbit, spiral, forward spiral, through the training views, or a nerfstudio
    camera_path JSON) to mp4."""

    run_dir: RunDir
    """Run folder (or its config.yaml)."""
    path: str = "auto"
    """auto | orbit | spiral | forward-spiral | interpolate | PATH.json (a nerfstudio camera_path file, poses in
    this run's world frame unless --dataparser-transforms is given). forward-spiral: NeRF's spiral in front of a
    forward-facing capture (LLFF), focused between the scene's near and far bounds. auto: forward-spiral for
    forward-facing captures (and runs in NDC), orbit for the rest."""
    dataparser_transforms: Path | None = None
    """With a PATH.json made by nerfstudio for a nerfstudio-format dataset: the dataparser_transforms.json of
    that nerfstudio run, to map the path from nerfstudio's oriented, centred and scaled frame into ours.
    (Blender-format scenes need none: nerfstudio leaves their poses as they are, like fields.)"""
    seconds: float = 6.0
    """Length of derived paths (a JSON path keeps its own frames)."""
    fps: float = 30.0
    """Frames per second (a JSON path's own fps wins)."""
    resolution: int | None = None
    """Frame height in pixels, width by aspect ratio (default: the training images' / the JSON's)."""
    outputs: str = "rgb"
    """Comma-separated outputs, one mp4 each: rgb, depth. The first is written to --output, the others beside it
    with their name as a suffix (orbit.mp4, orbit-depth.mp4)."""
    keyframes: int = 0
    """With --path interpolate: go through this many evenly spaced training cameras (0: all of them)."""
    output: Path | None = None
    """Output file (the first of --outputs; .mp4 added without a suffix) or folder (default: <run>/exports/)."""
    quiet: bool = False
    """No progress bars."""

    def run(self) -> None:
        from scenes.camera_paths import PATH_TYPES, load_camera_path, resized
        from fields.export.video import parse_outputs, render_video, run_path, video_paths

        outputs = parse_outputs(self.outputs)
        if self.resolution is not None and self.resolution < 2:
            raise ExportError(f"--resolution must be at least 2 pixels (got {self.resolution})")
        is_file = self.path.lower().endswith(".json")
        if not is_file and self.path not in ("auto", *PATH_TYPES):
            raise ExportError(f"--path '{self.path}': unknown camera path (known: auto, {', '.join(PATH_TYPES)}, "
                              "or a nerfstudio camera_path .json file)")
        cam_path = None
        if is_file and self.dataparser_transforms is None:
            cam_path = load_camera_path(Path(self.path))  # a bad file fails before the run loads
        run = load_run(self.run_dir)
        fps = self.fps
        if is_file and cam_path is None:
            cam_path = load_camera_path(Path(self.path), self.dataparser_transforms,
                                        run.record.from_dataset, run.record.from_dataset_rotation)
        if cam_path is not None:
            fps = cam_path.fps or fps
            name = Path(self.path).stem
        else:
            n_frames = round(self.seconds * self.fps)
            if n_frames < 1:
                raise ExportError(f"--seconds {self.seconds} at --fps {self.fps} gives no frames")
            cam_path, name = run_path(self.path, run.model, run.record, n_frames, self.keyframes)
        cams = resized(cam_path.cameras, self.resolution)
        paths = video_paths(output_path(run.path, self.output, f"video-{name}-step-{run.step:06d}.mp4"), outputs)
        width, height = cams.size(0)  # a path's frames share one size
        console.print(f"Rendering {len(cams)} frames at {width}x{height}, {fps:g} fps")
        tic = time.perf_counter()
        render_video(run.model, cams, fps, run.config.scene.background, paths,
                     not self.quiet)
        console.print(f"Video in {time.perf_counter() - tic:.1f} s -> {', '.join(str(p) for p in paths.values())}")


@dataclass
class PointCloud:
    """Write a coloured point cloud (PLY) from the expected depth of training rays where the field is opaque."""

    run_dir: RunDir
    """Run folder (or its config.yaml)."""
    num_points: int = 200_000
    """Number of points."""
    min_opacity: float = 0.95
    """Only rays at least this opaque give a point."""
    crop: tuple[float, float, float, float, float, float] | None = None
    """Keep only points in this box (x_min y_min z_min x_max y_max z_max, world units). Default: the foreground, as
    for meshes: the scene box of a run with scene contraction (not the walls and sky around it), the SfM points'
    box (or the frustum out to most occupied cells) of a run in NDC, everything otherwise."""
    output: Path | None = None
    """Output file or folder (default: <run>/exports/)."""
    quiet: bool = False
    """No progress bars."""

    def run(self) -> None:
        from fields.export.pointcloud import check_point_memory, write_point_cloud
        from fields.export.region import crop_box, export_region
        from renderers.surface_points import surface_points

        check_point_memory(self.num_points)
        crop = crop_box(self.crop)
        run = load_run(self.run_dir)
        region = export_region(run.model, run.record, crop)
        tic = time.perf_counter()
        points, colors = surface_points(run.model, run.record.cameras, self.num_points, self.min_opacity,
                                        region=region, show_progress=not self.quiet)
        path = output_path(run.path, self.output, f"pointcloud-step-{run.step:06d}.ply")
        write_point_cloud(points, colors, path)
        console.print(f"Point cloud: {len(points)} points in {time.perf_counter() - tic:.1f} s -> {path}")


@dataclass
class Splats:
    """Write the Gaussians of a gaussians run as a standard 3DGS PLY (the INRIA format splat viewers read) and a
    .splat file beside it (the web viewers' format)."""

    run_dir: RunDir
    """Run folder (or its config.yaml) of a `--field gaussians` run."""
    output: Path | None = None
    """Output file or folder (default: <run>/exports/)."""
    splat: bool = True
    """Also write the web viewers' .splat file (32 bytes per Gaussian, DC colour only) beside the PLY."""

    def run(self) -> None:
        from fields.backends.gaussians import GaussianField
        from fields.export.splats import write_dot_splat, write_splats

        run = load_run(self.run_dir)
        if not isinstance(run.field, GaussianField):
            raise ExportError(f"{run.path}: a '{run.config.field}' run has no Gaussians to export; train with "
                              "--field gaussians (or distill this run into Gaussians)")
        path = output_path(run.path, self.output, f"splats-step-{run.step:06d}.ply")
        write_splats(path, run.field.gaussians())
        console.print(f"Splats: {len(run.field)} Gaussians (SH degree {run.field.cfg.sh_degree}) -> {path}")
        if self.splat:
            write_dot_splat(path.with_suffix(".splat"), run.field.gaussians())
            console.print(f"Web-viewer splats (DC colour only) -> {path.with_suffix('.splat')}")


@dataclass
class Export:
    """Export a trained run as a mesh, a video, a point cloud or (gaussians runs) a 3DGS splat PLY."""

    what: tyro.conf.OmitSubcommandPrefixes[Union[
        Annotated[Mesh, tyro.conf.subcommand("mesh")],
        Annotated[Video, tyro.conf.subcommand("video")],
        Annotated[PointCloud, tyro.conf.subcommand("pointcloud")],
        Annotated[Splats, tyro.conf.subcommand("splats")]]]
    """What to export."""

    def run(self) -> None:
        self.what.run()
