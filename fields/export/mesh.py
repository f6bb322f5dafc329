"""Mesh export: density on a grid over the scene box, marching cubes, optional clean-up, vertex colours.

The density is evaluated only where the run's occupancy grid (dilated by one cell) says there is content;
elsewhere it is taken as zero, which is what the renderer assumes too. The iso-level defaults to the density
at which one marching step of the run's renderer becomes ``opacity`` opaque, so it follows the field's own
scale rather than a constant tuned for one scene. Faces that no training camera sees are dropped (see
``fields/export/visibility.py``): inside a solid the field's density is never supervised, and marching cubes
would otherwise close hollow interiors with surfaces nobody observed. Vertex colours come from the field
looking at each vertex along its inverted normal, i.e. as a camera facing the surface would see it.

GLB files are written y-up, as glTF requires (our world frame is z-up): ``write_mesh`` rotates the mesh by
``Z_UP_TO_Y_UP`` for GLB only; PLY and OBJ keep the run's world coordinates.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from rich.progress import Progress
from skimage import measure

from fields.backends.base import Field
from fields.export import ExportError, import_open3d, rgba8
from fields.export.visibility import seen_faces
from renderers.chunks import map_chunks
from renderers.model import VolumeModel
from renderers.render import RenderConfig
from scenes.cameras import Cameras
from scenes.memory import available_bytes, gigabytes

FORMATS = ("ply", "obj", "glb")
BYTES_PER_VOXEL = 16  # the float32 density grid, and skimage's float64 copy of it for marching cubes
# World z-up -> glTF y-up (x stays, z becomes y, y becomes -z): a rotation, so handedness and winding are kept.
Z_UP_TO_Y_UP = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])


def default_threshold(render_cfg: RenderConfig, aabb: torch.Tensor, opacity: float = 0.05) -> float:
    """The density at which one marching step (``render_cfg.step_size``) reaches ``opacity``:
    ``1 - exp(-sigma * step) = opacity``."""
    return -math.log1p(-opacity) / render_cfg.step_size(aabb)


def lattice_points(aabb: torch.Tensor, resolution: int) -> list[torch.Tensor]:
    """Coordinates of ``resolution`` evenly spaced samples per axis, from one face of the box to the other."""
    return [torch.linspace(aabb[0, a].item(), aabb[1, a].item(), resolution) for a in range(3)]


@torch.no_grad()
def density_volume(model: VolumeModel, resolution: int, chunk: int = 1 << 17,
                   progress: Progress | None = None) -> np.ndarray:
    """The field's density [R, R, R] (x, y, z order) at the lattice points, zero in empty cells of the grid and on
    the box's faces."""
    if resolution < 2:
        raise ExportError(f"mesh resolution must be at least 2 (got {resolution})")
    field, grid = model.field, model.grid
    xs, ys, zs = lattice_points(field.aabb, resolution)
    # Dilate by one cell so that lattice points just outside an occupied cell are still evaluated.
    occupied = torch.nn.functional.max_pool3d(grid.binary[None, None].float(), 3, 1, 1)[0, 0] > 0
    volume = torch.zeros(resolution, resolution, resolution)
    task = progress.add_task("density", total=resolution) if progress is not None else None
    for i, x in enumerate(xs):  # one x-slice at a time keeps memory flat at any resolution
        yy, zz = torch.meshgrid(ys, zs, indexing="ij")
        pts = torch.stack([torch.full_like(yy, x.item()), yy, zz], -1).reshape(-1, 3)
        ijk = grid.cells(pts)[0]
        keep = occupied[ijk[:, 0], ijk[:, 1], ijk[:, 2]].nonzero()[:, 0]
        if keep.numel():
            sigma = torch.cat(map_chunks(field.density, (pts[keep],), chunk))
            volume[i].view(-1)[keep] = sigma.float()
        if task is not None:
            progress.advance(task)
    volume[[0, -1]] = 0  # closes surfaces that reach the box instead of leaving them open there
    volume[:, [0, -1]] = 0
    volume[:, :, [0, -1]] = 0
    return volume.numpy()


def marching_cubes(volume: np.ndarray, threshold: float, aabb: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (world units) and faces of the ``threshold`` iso-surface of a lattice over ``aabb``, oriented
    so that face normals point out of the dense region."""
    lo, hi = float(volume.min()), float(volume.max())
    if not lo < threshold < hi:
        raise ExportError(f"no surface: the density never crosses the threshold {threshold:.4g} "
                          f"(it ranges over [{lo:.4g}, {hi:.4g}]); pass a --threshold in that range")
    box = aabb.numpy().astype(np.float64)
    spacing = (box[1] - box[0]) / (np.array(volume.shape) - 1)
    verts, faces, _, _ = measure.marching_cubes(volume, level=threshold, spacing=tuple(spacing))
    return verts + box[0], faces[:, ::-1].astype(np.int64)  # skimage winds them inwards for dense insides


def clean(vertices: np.ndarray, faces: np.ndarray, min_component: float = 0.05,
          target_faces: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Drop connected components with fewer than ``min_component`` times the faces of the largest one (floaters),
    and optionally simplify to ``target_faces`` by quadric decimation (open3d)."""
    o3d = import_open3d()
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(faces))
    mesh.remove_duplicated_vertices()
    mesh.remove_degenerate_triangles()
    clusters, sizes, _ = mesh.cluster_connected_triangles()
    clusters, sizes = np.asarray(clusters), np.asarray(sizes)
    if sizes.size:
        mesh.remove_triangles_by_mask(sizes[clusters] < min_component * sizes.max())
    mesh.remove_unreferenced_vertices()
    if target_faces is not None and len(mesh.triangles) > target_faces:
        mesh = mesh.simplify_quadric_decimation(target_number_of_triangles=int(target_faces))
        mesh.remove_unreferenced_vertices()
    return np.asarray(mesh.vertices), np.asarray(mesh.triangles).astype(np.int64)


@torch.no_grad()
def vertex_colors(field: Field, vertices: np.ndarray, normals: np.ndarray, chunk: int = 1 << 16,
                  progress: Progress | None = None) -> np.ndarray:
    """Colours [V, 3] in [0, 1] seen by a camera looking at each vertex along its inverted normal."""
    x = torch.tensor(np.asarray(vertices), dtype=torch.float32)
    d = -torch.nn.functional.normalize(torch.tensor(np.asarray(normals), dtype=torch.float32), dim=-1)
    task = progress.add_task("colours", total=len(x)) if progress is not None else None

    def colour(xc: torch.Tensor, dc: torch.Tensor) -> torch.Tensor:
        if task is not None:
            progress.advance(task, len(xc))
        return field(xc, dc)[1].clamp(0, 1)

    out = map_chunks(colour, (x, d), chunk)
    return torch.cat(out).numpy() if out else np.zeros((0, 3), np.float32)


@dataclass
class MeshSettings:
    """How a mesh is extracted; see ``fields export mesh --help`` for each option."""

    resolution: int = 256
    threshold: float | None = None
    opacity: float = 0.05
    clean: bool = True
    min_component: float = 0.05
    target_faces: int | None = None
    seen_only: bool = True


def check_mesh_memory(resolution: int) -> None:
    """ExportError with the largest resolution that fits, when the density grid would not fit in memory."""
    need, free = resolution**3 * BYTES_PER_VOXEL, available_bytes()
    if need > free:
        fits = int((free / BYTES_PER_VOXEL) ** (1 / 3))
        raise ExportError(f"mesh --resolution {resolution} needs about {gigabytes(need)} of memory, more than the "
                          f"{gigabytes(free)} available; use --resolution {fits} or lower")


def extract_mesh(model: VolumeModel, settings: MeshSettings, cameras: Cameras | None, show_progress: bool = True,
                 progress: Progress | None = None) -> tuple[trimesh.Trimesh, float]:
    """A vertex-coloured mesh of the model's surface (its field's density, in occupied cells of its grid) and the
    density threshold used. With
    ``settings.seen_only`` only faces that some of ``cameras`` (the training cameras) sees are kept.
    Progress goes to ``progress`` when given (the caller shows or polls it), else to a console bar."""
    check_mesh_memory(settings.resolution)
    if getattr(model, "ndc", None) is not None:
        raise ExportError("mesh export of a run trained in NDC (a forward-facing capture) is not supported: its "
                          "field lives in the reference camera's NDC space; train with --contraction on for a mesh")
    if settings.target_faces is not None and settings.target_faces < 4:
        raise ExportError(f"--target-faces must be at least 4 (got {settings.target_faces})")
    if not 0 < settings.opacity < 1:
        raise ExportError(f"--opacity must be in (0, 1) (got {settings.opacity})")
    if settings.seen_only and cameras is None:
        raise ExportError("keeping only the faces the training cameras see needs the cameras (or --no-seen-only)")
    threshold = settings.threshold
    if threshold is None:
        threshold = default_threshold(model.render_cfg, model.field.aabb, settings.opacity)
    field = model.field
    bar = nullcontext(progress) if progress is not None else Progress(disable=not show_progress, transient=True)
    with bar as progress:
        volume = density_volume(model, settings.resolution, progress=progress)
        vertices, faces = marching_cubes(volume, threshold, field.aabb)
        if settings.seen_only:
            voxel = ((field.aabb[1] - field.aabb[0]).max().item()) / (settings.resolution - 1)
            faces = faces[seen_faces(vertices, faces, cameras, 2 * voxel, progress)]
            if not len(faces):
                raise ExportError("no surface: none of the mesh's faces is seen by a training camera")
        if settings.clean or settings.target_faces is not None:
            vertices, faces = clean(vertices, faces, settings.min_component, settings.target_faces)
        mesh = trimesh.Trimesh(vertices, faces, process=False)
        colors = vertex_colors(field, mesh.vertices, mesh.vertex_normals, progress=progress)
    mesh.visual.vertex_colors = rgba8(colors)
    return mesh, threshold


def write_mesh(mesh: trimesh.Trimesh, path: Path) -> None:
    """Write ``mesh`` as PLY, OBJ or GLB, chosen by the file's suffix; GLB is rotated to glTF's y-up."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ExportError(f"{path}: unknown mesh format '{fmt}' (known: {', '.join(FORMATS)})")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if fmt == "glb":
        mesh = mesh.copy()
        mesh.apply_transform(Z_UP_TO_Y_UP)
    mesh.export(path, file_type=fmt)
